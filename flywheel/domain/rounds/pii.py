"""What the PII gate checks of a row: every string of its body and its tags, each on its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flywheel.domain import redact
from flywheel.domain.rounds.rows import Row

_CONTAINERS = (dict, list, tuple)  # a tuple, not a union: isinstance checks it faster
_SEQUENCES = (list, tuple)


def _strings(value: dict[str, Any] | list[Any] | tuple[Any, ...], out: list[str]) -> list[str]:
    """Every non-empty string inside a dict, list or tuple and the ones nested in it, in order."""
    # A body is a dict of lists of message dicts of strings: those two levels are walked here rather than by a
    # call per container, which was most of the walk's time.
    for v in value.values() if isinstance(value, dict) else value:
        if isinstance(v, str):
            if v:
                out.append(v)
        elif isinstance(v, _SEQUENCES):
            for w in v:
                if isinstance(w, dict):
                    for x in w.values():
                        if isinstance(x, str):
                            if x:
                                out.append(x)
                        elif isinstance(x, _CONTAINERS):
                            _strings(x, out)
                elif isinstance(w, str):
                    if w:
                        out.append(w)
                elif isinstance(w, _SEQUENCES):
                    _strings(w, out)
        elif isinstance(v, dict):
            _strings(v, out)
    return out


def has_pii(row: Row, check: Callable[[str], bool] = redact.has_pii) -> bool:
    """True when `check` (by default `flywheel.domain.redact.has_pii`) holds for any string of the body or any tag.

    Each string is checked on its own, so the builder can pass a cached `check`: rows repeat the same prompts,
    system prompts and answers many times over.
    """
    return any(map(check, pii_texts(row)))


def pii_texts(row: Row) -> tuple[str, ...]:
    """The strings `has_pii` checks: every non-empty string of the body, then every non-empty tag."""
    return texts_of(row.body, row.tags)


def texts_of(body: dict[str, Any], tags: tuple[str, ...]) -> tuple[str, ...]:
    """pii_texts of a row's body and tags."""
    texts = _strings(body, [])
    texts.extend(t for t in tags if t)
    return tuple(texts)
