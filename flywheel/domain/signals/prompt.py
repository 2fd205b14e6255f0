"""The prompt key: which conversation a response answers, the same whatever order or nulls its fields come in."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson


def _canonical_message(message: Mapping[str, Any]) -> dict[str, Any]:
    # An absent optional field and an explicit null are the same message.
    return {k: v for k, v in message.items() if v is not None}


def prompt_key(messages: Sequence[Mapping[str, Any]]) -> str:
    """A stable hash of the conversation: key order and null fields do not change it, any text does."""
    canonical = [_canonical_message(m) for m in messages]
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
