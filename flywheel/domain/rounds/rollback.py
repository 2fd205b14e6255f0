"""Rollback decisions: the slice of events a rollback quarantines, and whether a row falls in one."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

SLICE_FIELDS = ("app_id", "model_version", "prompt_version", "since", "until")
MARKER = "ROLLED_BACK"  # the file a rolled-back round's directory holds (its files stay, for forensics)


def parse_slice(specs: Sequence[str]) -> dict[str, str] | None:
    """`app_id=support`, `since=2026-11-01T00:00:00+00:00` … → a slice filter; raises ValueError when bad."""
    if not specs:
        return None
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or name not in SLICE_FIELDS or not value:
            raise ValueError(f"bad --quarantine {spec!r}: use one of {', '.join(f'{f}=VALUE' for f in SLICE_FIELDS)}")
        if name in ("since", "until"):
            at = datetime.fromisoformat(value)
            if at.tzinfo is None:
                raise ValueError(f"{name} needs a time zone: {value!r}")
            value = at.isoformat()
        out[name] = value
    return out


def in_slice(occurred_at: datetime | None, app_id: str | None, model_version: str | None, prompt_version: str | None,
             slices: Sequence[dict[str, Any]]) -> bool:
    """Whether a row (of an event at `occurred_at`, from that app, model and prompt version) falls in a slice
    excluded by a rollback: all of a slice's filters must match."""
    if occurred_at is None:
        raise ValueError("a row read without its time cannot be placed in a rollback slice")
    for s in slices:
        if "app_id" in s and app_id != s["app_id"]:
            continue
        if "model_version" in s and model_version != s["model_version"]:
            continue
        if "prompt_version" in s and prompt_version != s["prompt_version"]:
            continue
        if "since" in s and occurred_at < datetime.fromisoformat(s["since"]):
            continue
        if "until" in s and occurred_at >= datetime.fromisoformat(s["until"]):
            continue
        return True
    return False
