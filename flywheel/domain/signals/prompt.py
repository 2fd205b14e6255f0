"""The prompt key: which conversation a response answers (and with which tools), the same whatever order or nulls
its fields come in, and whether its text comes as a string or as text parts."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from flywheel.domain.messages import content_text


def _canonical_message(message: Mapping[str, Any]) -> dict[str, Any]:
    # An absent optional field and an explicit null are the same message; text parts say what their text says.
    canonical = {k: v for k, v in message.items() if v is not None}
    if isinstance(canonical.get("content"), list):
        canonical["content"] = content_text(canonical["content"])
    return canonical


def prompt_key(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None) -> str:
    """A stable hash of the conversation and the tools the model was offered: key order, null fields and text
    parts (read as content_text) do not change it, any text does. Without tools, the hash of the messages alone."""
    canonical: list[Any] = [_canonical_message(m) for m in messages]
    keyed = [canonical, list(tools)] if tools else canonical
    return hashlib.sha256(orjson.dumps(keyed, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
