"""What the dedup gate compares: a digest of a row's normalised prompt and answers (and a KTO row's label)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson

from flywheel.domain.rounds.quarantine import normalise
from flywheel.domain.rounds.rows import Row


def content_digest(row: Row) -> bytes:
    """What dedup compares, per kind: the roles of the prompt messages, the prompt text and the answers after
    `normalise` (as contamination sees them: case, punctuation and whitespace do not count), and the label for
    KTO (the same completion labelled both ways is two rows). Margins, scores and lineage do not count."""
    return digest(row.kind, row.prompt_roles(), row.label(), normalise(row.prompt_text()),
                  [normalise(a) for a in row.answer_texts()])


def digest(kind: str, roles: Sequence[Any], label: bool | None, prompt: str, answers: list[str]) -> bytes:
    """content_digest from its parts: `label` counts for KTO only."""
    parts: list[Any] = [kind, roles, prompt, answers]
    if kind == "kto":
        parts.append(label)
    return hashlib.sha256(orjson.dumps(parts)).digest()[:16]
