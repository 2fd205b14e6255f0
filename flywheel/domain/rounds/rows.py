"""Round input rows: one TRL record with its origin, and converters from signal records and candidate groups."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from flywheel.domain.messages import message_text, trl_messages, turns_text

Kind = Literal["sft", "dpo", "kto", "group"]
KINDS: tuple[Kind, ...] = ("sft", "dpo", "kto", "group")

# The `source` of rows made from a candidate group and its selection (signal rows carry their rule name).
SOURCE_RSFT = "rsft"
SOURCE_RM_SELECTION = "rm_selection"
SOURCE_CANDIDATE_GROUP = "candidate_group"

# Store kinds of signal records that are never training rows.
_NOT_TRAINING = ("hard_case", "disagreement")


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One training record (`body`, in TRL conversational format) with where it came from.

    body by kind: sft {"messages"}; dpo {"prompt", "chosen", "rejected", "margin"}; kto {"prompt", "completion",
    "label"}; group {"prompt", "candidates": [{"index", "text", "scores", "finish_reason"}]}. Messages are in TRL's
    form (flywheel.domain.messages.trl_messages), and a conversation the app offered tools in has them as "tools".
    """

    kind: Kind
    key: str  # stable id: signal id, selection id or group id
    position: int  # newest event-log position the row was derived from
    app_id: str
    model_version: str
    prompt_version: str | None
    tags: tuple[str, ...]
    consent: bool
    source: str  # signal rule name, or rsft / rm_selection / candidate_group
    lineage: dict[str, Any]
    body: dict[str, Any]
    # The key of this row's exact copies later in the stream (sent as `Repeat`s), when it has any.
    copy_key: bytes | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown row kind {self.kind!r}")

    @property
    def primary_tag(self) -> str:
        return self.tags[0] if self.tags else ""

    @property
    def stratum(self) -> tuple[str, str, str]:
        return (self.app_id, self.model_version, self.primary_tag)

    def prompt_messages(self) -> list[dict[str, Any]]:
        """The conversation before the answer: an SFT sample's messages without the final assistant turn."""
        return prompt_messages_of(self.kind, self.body)

    def prompt_text(self) -> str:
        """The prompt messages' texts (flywheel.domain.messages.message_text) joined by newlines."""
        return turns_text(self.prompt_messages())

    def prompt_roles(self) -> tuple[Any, ...]:
        """The prompt messages' roles (dedup tells a system prompt from a user turn)."""
        return roles_of(self.prompt_messages())

    def label(self) -> bool | None:
        """A KTO row's label; None for the other kinds."""
        return label_of(self.kind, self.body)

    def truncated(self) -> bool:
        """A model stopped an answer at its token limit (lineage finish_reasons holds "length")."""
        return truncated_of(self.lineage)

    def answer_texts(self) -> list[str]:
        """The texts a model is trained to produce (or to rank): empty when the record has none."""
        return answer_texts_of(self.kind, self.body)


# What Row's methods read, as functions of a row's parts: flywheel.domain.rounds.Prepare reads a signal record's
# parts without making a Row of them first.


def prompt_messages_of(kind: str, body: Mapping[str, Any]) -> list[dict[str, Any]]:
    if kind == "sft":
        messages = body.get("messages") or []
        if messages and messages[-1].get("role") == "assistant":
            return list(messages[:-1])
        return list(messages)
    return list(body.get("prompt") or ())


def roles_of(messages: Sequence[Mapping[str, Any]]) -> tuple[Any, ...]:
    return tuple([m.get("role") for m in messages])


def label_of(kind: str, body: Mapping[str, Any]) -> bool | None:
    return bool(body.get("label")) if kind == "kto" else None


def truncated_of(lineage: Mapping[str, Any]) -> bool:
    finish_reasons = lineage.get("finish_reasons")
    return bool(finish_reasons and "length" in finish_reasons)


def answer_texts_of(kind: str, body: Mapping[str, Any]) -> list[str]:
    if kind == "sft":
        messages = body.get("messages") or ()
        if messages and messages[-1].get("role") == "assistant":
            return [message_text(messages[-1])]
        return []
    if kind == "dpo":
        return [turns_text(body.get("chosen")), turns_text(body.get("rejected"))]
    if kind == "kto":
        return [turns_text(body.get("completion"))]
    return [str(c.get("text") or "") for c in body.get("candidates") or ()]


def _assistant(text: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": text}]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Origin:
    """The fields every row made from one record shares."""

    position: int
    app_id: str
    model_version: str
    prompt_version: str | None
    tags: tuple[str, ...]
    consent: bool

    def row(self, *, kind: Kind, key: str, source: str, lineage: dict[str, Any], body: dict[str, Any],
            copy_key: bytes | None = None) -> Row:
        return Row(kind=kind, key=key, position=self.position, app_id=self.app_id, model_version=self.model_version,
                   prompt_version=self.prompt_version, tags=self.tags, consent=self.consent, source=source,
                   lineage=lineage, body=body, copy_key=copy_key)


# ---- converters ----


class SignalFields(NamedTuple):
    """A Row's fields as a signal record gives them (all but its position and copy key)."""

    kind: Kind
    key: str
    app_id: str
    model_version: str
    prompt_version: str | None
    tags: tuple[str, ...]
    consent: bool
    source: str
    lineage: dict[str, Any]
    body: dict[str, Any]


def row_from_signal(kind: str, data: Mapping[str, Any], position: int, *, copy_key: bytes | None = None
                    ) -> Row | None:
    """The row of one signal record as the store holds it (the JSON of flywheel.domain.signals.PreferencePair,
    KTOLabel or SFTSample; store kind "pair"/"dpo", "kto", "sft"); `copy_key` when exact copies of it follow.

    None for a record that is not a training row: a tied or not (yet) accepted pair, a hard case, a
    disagreement. Raises ValueError for an unknown kind.
    """
    fields = signal_fields(kind, data)
    if fields is None:
        return None
    return Row(kind=fields.kind, key=fields.key, position=position, app_id=fields.app_id,
               model_version=fields.model_version, prompt_version=fields.prompt_version, tags=fields.tags,
               consent=fields.consent, source=fields.source, lineage=fields.lineage, body=fields.body,
               copy_key=copy_key)


def signal_fields(kind: str, data: Mapping[str, Any]) -> SignalFields | None:
    """What row_from_signal makes a Row of (None where it makes none)."""
    if kind in _NOT_TRAINING:
        return None
    if kind not in ("pair", "dpo", "kto", "sft"):
        raise ValueError(f"unknown signal kind {kind!r}")
    if kind in ("pair", "dpo") and (data.get("tie") or data.get("status") != "accepted"):
        return None
    rule = str(data["rule"])
    lineage = {
        "source_event_ids": list(data.get("source_event_ids") or ()),
        "rule": rule,
        "rule_version": data.get("rule_version"),
        "confidence": data.get("confidence"),
        "disagreement": bool(data.get("disagreement", False)),
    }
    # The finish reasons of the served answers, in the order of answer_texts_of, when one was cut at max_tokens: the
    # quality gate then removes the row as truncated (truncated_of), so no written row carries them.
    finish_reasons = [data.get("chosen_finish_reason"), data.get("rejected_finish_reason")] \
        if kind in ("pair", "dpo") else [data.get("finish_reason")]
    if "length" in finish_reasons:
        lineage["finish_reasons"] = finish_reasons
    row_kind: Kind
    if kind in ("pair", "dpo"):
        lineage.update({
            "preference_reason": data.get("preference_reason"),
            "chosen_interaction_id": data.get("chosen_interaction_id"),
            "rejected_interaction_id": data.get("rejected_interaction_id"),
            "chosen_model_version": data.get("chosen_model_version"),
            "chosen_prompt_version": data.get("chosen_prompt_version"),
            "dimension": data.get("dimension"),
        })
        row_kind, key = "dpo", data["pair_id"]
        body = {"prompt": trl_messages(data["prompt"]), "chosen": _assistant(str(data["chosen"])),
                "rejected": _assistant(str(data["rejected"])), "margin": float(data["margin"])}
    elif kind == "kto":
        lineage.update({"preference_reason": data.get("preference_reason"),
                        "interaction_id": data.get("interaction_id"), "dimension": data.get("dimension")})
        row_kind, key = "kto", data["label_id"]
        body = {"prompt": trl_messages(data["prompt"]), "completion": _assistant(str(data["completion"])),
                "label": bool(data["desirable"])}
    else:
        lineage["interaction_id"] = data.get("interaction_id")
        row_kind, key = "sft", data["sample_id"]
        body = {"messages": trl_messages(data["messages"])}
    if data.get("tools"):
        body["tools"] = [dict(t) for t in data["tools"]]
    return SignalFields(row_kind, str(key), str(data["app_id"]), str(data["model_version"]),
                        data.get("prompt_version"), tuple([str(t) for t in data.get("tags") or ()]),
                        bool(data["consent"]), rule, lineage, body)


SCORER_SEPARATOR = "+"  # between the scorer names of a set of selecting scorers (manifest data_sources.selected_by)


def selecting_scorers(source: str, lineage: Mapping[str, Any]) -> tuple[str, ...]:
    """The scorers that selected a generated row (an RSFT sample or a best-vs-worst pair): every scorer with a
    value on its candidates, as selection ranks by all of them. () for any other row."""
    if source == SOURCE_RSFT:
        scores = lineage.get("scores") or ()
    elif source == SOURCE_RM_SELECTION:
        scores = [*(lineage.get("chosen_scores") or ()), *(lineage.get("rejected_scores") or ())]
    else:
        return ()
    return tuple(sorted({str(s["scorer"]) for s in scores if s.get("value") is not None}))


def rows_from_group(group: Mapping[str, Any], position: int) -> list[Row]:
    """The rows of one candidate group: the scored group itself (kind "group", for RM/GRPO), its RSFT sample
    (kind "sft", source "rsft") and its best-vs-worst pair (kind "dpo", source "rm_selection"), when selected.

    `group` is a candidate_groups row: group_id, prompt, candidates [{index, text, finish_reason, ...}],
    model_version, generator, and the selection (scores [{index, scores}], sft, pair, margin, reasons,
    best_index, worst_index) either at the top level or under "selection". Optional: app_id, prompt_version,
    tags, consent, prompt_key, sample_id, sampling. A group without a selection gives no rows: its candidates
    have no scores yet. Consent defaults to True because the hard-case sampler never samples a prompt without
    consent; a caller that knows otherwise passes "consent".
    """
    selection = group.get("selection", group)
    if not selection or selection.get("scores") is None:
        return []
    group_id = str(group["group_id"])
    origin = _Origin(position=position, app_id=str(group.get("app_id") or ""),
                     model_version=str(group["model_version"]), prompt_version=group.get("prompt_version"),
                     tags=tuple(str(t) for t in group.get("tags") or ()), consent=bool(group.get("consent", True)))
    base_lineage = {
        "source_event_ids": [group_id],
        "group_id": group_id,
        "generator": group.get("generator"),
        "prompt_key": group.get("prompt_key"),
        "sample_id": group.get("sample_id"),
    }
    scores = {int(s["index"]): list(s.get("scores") or ()) for s in selection["scores"]}
    candidates = sorted(((int(c.get("index", i)), c) for i, c in enumerate(group["candidates"])),
                        key=lambda ic: ic[0])
    finish = {i: c.get("finish_reason") for i, c in candidates}
    prompt = trl_messages(group["prompt"])
    rows = [origin.row(
        kind="group", key=group_id, source=SOURCE_CANDIDATE_GROUP,
        lineage={**base_lineage, "sampling": group.get("sampling"), "margin": selection.get("margin"),
                 "best_index": selection.get("best_index"), "worst_index": selection.get("worst_index"),
                 "reasons": list(selection.get("reasons") or ())},
        body={"prompt": prompt, "candidates": [
            {"index": i, "text": str(c.get("text") or ""), "scores": scores.get(i, []),
             "finish_reason": c.get("finish_reason")}
            for i, c in candidates]},
    )]
    sft = selection.get("sft")
    if sft:
        index = int(sft["candidate_index"])
        rows.append(origin.row(
            kind="sft", key=str(sft["sample_id"]), source=SOURCE_RSFT,
            lineage={**base_lineage, "rule": sft.get("rule"), "rule_version": sft.get("rule_version"),
                     "candidate_index": index, "value": sft.get("value"), "scores": list(sft.get("scores") or ()),
                     "finish_reasons": [finish.get(index)]},
            body={"messages": trl_messages(sft["messages"])},
        ))
    pair = selection.get("pair")
    if pair:
        chosen, rejected = int(pair["chosen_index"]), int(pair["rejected_index"])
        rows.append(origin.row(
            kind="dpo", key=str(pair["pair_id"]), source=SOURCE_RM_SELECTION,
            lineage={**base_lineage, "rule": pair.get("rule"), "rule_version": pair.get("rule_version"),
                     "chosen_index": chosen, "rejected_index": rejected,
                     "chosen_scores": list(pair.get("chosen_scores") or ()),
                     "rejected_scores": list(pair.get("rejected_scores") or ()),
                     "finish_reasons": [finish.get(chosen), finish.get(rejected)]},
            body={"prompt": trl_messages(pair["prompt"]), "chosen": _assistant(str(pair["chosen"])),
                  "rejected": _assistant(str(pair["rejected"])), "margin": float(pair["margin"])},
        ))
    return rows
