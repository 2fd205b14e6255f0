"""The first gates (kind, consent) on a row, run where the rows are read: a `Prepared` or a `Removed` of it."""

from __future__ import annotations

import functools
from typing import Any

import orjson

from flywheel.domain import redact
from flywheel.domain.messages import turns_text
from flywheel.domain.rounds.config import RoundConfig
from flywheel.domain.rounds.entries import EXCLUDED, Prepared, Removed
from flywheel.domain.rounds.gates import CONSENT
from flywheel.domain.rounds.pii import texts_of
from flywheel.domain.rounds.rows import (
    Kind,
    Row,
    answer_texts_of,
    label_of,
    prompt_messages_of,
    roles_of,
    selecting_scorers,
    signal_fields,
    truncated_of,
)

# Distinct texts a build remembers the PII check and the reading of: rows repeat the same prompts, system prompts
# and answers many times over, mostly close together. Bounded, so memory does not grow with the round.
CACHE_SIZE = 4096


class Prepare:
    """The first gates (kind, consent) on a row, and a `Prepared` of a row they leave in: pure, so it runs
    wherever the rows are read (flywheel.services.build_round runs it in the process reading them, beside the
    builder's) with the same outcome as in `build`."""

    def __init__(self, config: RoundConfig, *, cache_size: int = CACHE_SIZE) -> None:
        self.kinds = frozenset(config.kinds)
        self._cache_size = cache_size
        # One object for each of the few values rows repeat (apps, versions, rules, tags, roles): pickled once per
        # chunk instead of once per row, which took a third off pickling the 100k-event round's chunks.
        self._same: dict[Any, Any] = {}
        # Checked here, where rows are read, rather than in the builder process: it was the busier of the two.
        self._has_pii = functools.lru_cache(maxsize=cache_size)(redact.has_pii)

    def __call__(self, row: Row) -> Prepared | Removed:
        return self._entry(row.kind, row.key, row.position, row.copy_key, row.app_id, row.model_version,
                           row.prompt_version, row.tags, row.consent, row.source, row.lineage, row.body)

    def signal(self, kind: str, data: dict[str, Any], position: int, copy_key: bytes | None
               ) -> Prepared | Removed | None:
        """`self(row_from_signal(kind, data, position, copy_key=copy_key))`, or None where that row is None, without
        the Row in between (a frozen dataclass made and read once per record read by a round cost a tenth of
        the reading process's time)."""
        f = signal_fields(kind, data)
        if f is None:
            return None
        return self._entry(f.kind, f.key, position, copy_key, f.app_id, f.model_version, f.prompt_version, f.tags,
                           f.consent, f.source, f.lineage, f.body)

    def without_consent(self, kind: Kind, copy_key: bytes | None, position: int) -> Removed:
        """What the first gates make of a row without consent, whatever else it holds (so it need not be read)."""
        return Removed(kind=kind, gate=EXCLUDED if kind not in self.kinds else CONSENT, copy_key=copy_key,
                       position=position)

    def _entry(self, kind: Kind, key: str, position: int, copy_key: bytes | None, app_id: str, model_version: str,
               prompt_version: str | None, tags: tuple[str, ...], consent: bool, source: str,
               lineage: dict[str, Any], body: dict[str, Any]) -> Prepared | Removed:
        if not consent:
            return self.without_consent(kind, copy_key, position)
        if kind not in self.kinds:
            return Removed(kind=kind, gate=EXCLUDED, copy_key=copy_key, position=position)
        if len(self._same) > self._cache_size:  # bounded, should rows not repeat them after all
            self._same.clear()
        same = self._same.setdefault
        app_id, model_version, prompt_version = same(app_id, app_id), same(model_version, model_version), \
            same(prompt_version, prompt_version)
        tags, source = same(tags, tags), same(source, source)
        messages = prompt_messages_of(kind, body)
        roles = roles_of(messages)
        record = dict(body)  # the line: the body, its source and its lineage
        record["source"] = source
        record["lineage"] = {**lineage, "id": key, "kind": kind, "app_id": app_id, "model_version": model_version,
                             "prompt_version": prompt_version, "tags": list(tags), "position": position}
        # Positional, in Prepared's field order: one is made per row, and keywords make that much slower.
        return Prepared(
            kind, key, position, copy_key, app_id, model_version, prompt_version, tags, source,
            any(map(self._has_pii, texts_of(body, tags))),
            turns_text(messages), tuple(answer_texts_of(kind, body)), same(roles, roles), label_of(kind, body),
            truncated_of(lineage), orjson.dumps(record, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE),
            same(scorers, scorers) if (scorers := selecting_scorers(source, lineage)) else ())
