"""What the round cut takes besides a Row: a row's exact copy, a row the first gates removed, a row past them."""

from __future__ import annotations

from typing import Any, NamedTuple

from flywheel.domain.rounds.rows import Kind, Row

# Removed.gate of a row whose kind the config leaves out (counted under excluded_kinds, not under a gate).
EXCLUDED = "excluded"


class Repeat(NamedTuple):
    """An exact copy of an earlier row of the stream, the one whose `copy_key` it carries: the same kind, consent,
    tags and body (only lineage and origin differ), so every gate up to dedup judges it as it judged that row, and
    dedup removes it if that row got so far. Sent instead of the row itself: nothing of it needs reading."""

    kind: Kind
    copy_key: bytes
    position: int


class Removed(NamedTuple):
    """A row removed by the first gates (its kind left out, consent; see `Prepare`): what counts it."""

    kind: Kind
    gate: str  # EXCLUDED or CONSENT
    copy_key: bytes | None
    position: int


class Prepared(NamedTuple):
    """A row past the first gates as the later gates and the writer need it: its PII check, its texts, what dedup,
    quality, the cap and the counters read, and its line as written. A few strings, where a Row is nested dicts,
    made where the rows are read (see `Prepare`), which takes work off the cut. A named tuple, as Removed and
    Repeat are: one is made per row, and a tuple is made faster than a frozen dataclass."""

    kind: Kind
    key: str
    position: int
    copy_key: bytes | None
    app_id: str
    model_version: str
    prompt_version: str | None
    tags: tuple[str, ...]
    source: str
    pii: bool  # whether the PII gate finds PII in any string of the body or in a tag (pii.pii_texts)
    prompt: str  # Row.prompt_text()
    answers: tuple[str, ...]  # Row.answer_texts()
    roles: tuple[Any, ...]  # Row.prompt_roles()
    label: bool | None  # Row.label(): dedup keeps a completion labelled both ways
    truncated: bool  # Row.truncated()
    line: bytes  # the record's line in its file
    scorers: tuple[str, ...] = ()  # rows.selecting_scorers: who selected a generated SFT sample or DPO pair

    @property
    def stratum(self) -> tuple[str, str, str]:
        return (self.app_id, self.model_version, self.tags[0] if self.tags else "")


# What the cut takes: a row, or what stands for one.
Entry = Row | Repeat | Prepared | Removed
