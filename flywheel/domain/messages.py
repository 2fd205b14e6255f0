"""Chat messages as apps send them (text, parts or tool calls) read as text, checked for order, and in TRL's form.

Every reader that compares or measures messages (the prompt key, dedup, the quality and contamination gates, the
hard-case sampler, the judge) reads them through `message_text`, so a conversation means the same to all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson


def content_text(content: Any) -> str:
    """The text of a message's content: a string as it is, the text parts of a list joined by newlines, "" for
    null (an assistant turn that only calls tools)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text") or "") if isinstance(p, Mapping) else str(p) for p in content)
    return str(content)


def arguments_value(arguments: Any) -> Any:
    """A tool call's arguments as TRL takes them: the JSON object the wire's text encodes; text that does not encode
    an object stays text, and a value that is not text stays as it is."""
    if not isinstance(arguments, str):
        return arguments
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    return value if isinstance(value, dict) else arguments


def _call_text(call: Mapping[str, Any]) -> str:
    function = call.get("function") or {}
    value = arguments_value(function.get("arguments"))
    # Canonical JSON: the same call reads the same whatever the spacing or key order it was written with.
    arguments = value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return f"{function.get('name') or ''}({arguments})"


def message_text(message: Mapping[str, Any]) -> str:
    """What a message says, as text: its content (content_text), then one line per tool call, `name(arguments)`.
    A message without tool calls reads as its content alone."""
    text = content_text(message.get("content"))
    calls = message.get("tool_calls")
    if not calls:
        return text
    lines = [_call_text(c) for c in calls]
    return "\n".join([text, *lines] if text else lines)


def turns_text(turns: Sequence[Mapping[str, Any]] | None) -> str:
    """The texts of a run of messages (message_text), joined by newlines."""
    if not turns:
        return ""
    if len(turns) == 1:
        return message_text(turns[0])
    return "\n".join([message_text(t) for t in turns])


def role_order_problem(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the roles of a conversation are out of order, or None when they are not.

    System messages come first, before any other. A tool message answers a call: it follows the assistant
    message that made the call (or another answer to it), and its `tool_call_id`, when it has one, names a call
    of that message not answered yet. Tool call ids are unique in the conversation. A tool message without an id
    (how apps wrote a tool's output before tool calls were part of the schema) follows an assistant message.
    """
    seen_other = False
    call_ids: set[str] = set()
    open_calls: set[str] | None = None  # the calls of the assistant message the current run of tool messages answers
    for n, m in enumerate(messages):
        role = m.get("role")
        if role == "system":
            if seen_other:
                return f"messages.{n}: a system message after other roles (system messages come first)"
            continue
        seen_other = True
        if role == "tool":
            if open_calls is None:
                return f"messages.{n}: a tool message that answers no assistant message before it"
            call_id = m.get("tool_call_id")
            if call_id is not None:
                if call_id not in open_calls:
                    answered = "already answered" if call_id in call_ids else "not a call"
                    return f"messages.{n}: tool_call_id {call_id!r} is {answered} of the assistant message before it"
                open_calls.discard(call_id)
            continue
        open_calls = None
        if role == "assistant":
            ids = [str(c.get("id")) for c in m.get("tool_calls") or ()]
            for call_id in ids:
                if call_id in call_ids:
                    return f"messages.{n}: tool call id {call_id!r} is used twice"
                call_ids.add(call_id)
            open_calls = set(ids)
    return None


def trl_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages in TRL's conversational form, fresh dicts. A message without tool calls or a tool call id is
    copied as it is. A tool call's `arguments` becomes the JSON value it encodes (TRL and chat templates take an
    object; text that does not encode one stays text), and a tool message gets the `name` of the call it answers when it
    has none. Ids are kept: some chat templates print them."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for m in messages:
        message = dict(m)
        calls = m.get("tool_calls")
        if calls:
            message["tool_calls"] = [_trl_call(c, names) for c in calls]
        call_id = m.get("tool_call_id")
        if call_id is not None and "name" not in message and call_id in names:
            message["name"] = names[call_id]
        out.append(message)
    return out


def _trl_call(call: Mapping[str, Any], names: dict[str, str]) -> dict[str, Any]:
    function = dict(call.get("function") or {})
    if "arguments" in function:
        function["arguments"] = arguments_value(function["arguments"])
    if call.get("id") is not None and function.get("name") is not None:
        names[str(call["id"])] = str(function["name"])
    return {**call, "function": function}
