"""The records of the signal rules: interactions and feedback in; pairs, labels, samples, hard cases out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from flywheel.domain.signals.prompt import prompt_key

if TYPE_CHECKING:
    from flywheel.domain.wire import Comparison, Edit, Interaction, Rating, Regenerate, Thumbs

HARD_CASE_REASONS = ("thumbs_down", "low_rating", "edited", "regenerated", "disagreement")

PairStatus = Literal["accepted", "pending"]


# ---- inputs: rows of the interactions and feedback read models ----


@dataclass(frozen=True, slots=True, kw_only=True)
class InteractionRecord:
    """One served response: the conversation up to it, the response, and what produced it."""

    interaction_id: str
    event_id: str
    position: int
    app_id: str
    model_version: str
    prompt_version: str
    user_id_hash: str
    consent_training: bool
    occurred_at: datetime
    messages: tuple[dict[str, Any], ...]  # the conversation up to the response (wire messages, nulls left out)
    response: str
    tags: tuple[str, ...]
    prompt_key: str = ""  # prompt_key(messages, tools), computed when not given (the store passes its column)
    tools: tuple[dict[str, Any], ...] = ()  # the tools the model was offered (wire `tools`), if any
    finish_reason: str | None = None  # why the server stopped the response: "stop", "length" (cut at max_tokens)...

    def __post_init__(self) -> None:
        if not self.prompt_key:
            object.__setattr__(self, "prompt_key", prompt_key(self.messages, self.tools))

    @classmethod
    def from_event(cls, event: Interaction, position: int) -> InteractionRecord:
        """The record of a parsed wire event stored at `position` of the event log."""
        p = event.payload
        return cls(
            interaction_id=event.interaction_id, event_id=str(event.event_id), position=position,
            app_id=event.app_id, model_version=event.model_version, prompt_version=event.prompt_version,
            user_id_hash=event.user.id_hash, consent_training=event.user.consent_training,
            occurred_at=event.occurred_at,
            messages=tuple(m.model_dump(mode="json", exclude_none=True) for m in p.messages),
            response=p.response, tags=tuple(p.tags),
            tools=tuple(t.model_dump(mode="json", exclude_none=True) for t in p.tools or ()),
            finish_reason=p.finish_reason,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackRecord:
    """One feedback event about an interaction; `payload` is the wire payload of its type."""

    event_id: str
    position: int
    type: str
    interaction_id: str
    user_id_hash: str
    consent_training: bool
    occurred_at: datetime
    payload: dict[str, Any]

    @classmethod
    def from_event(cls, event: Thumbs | Edit | Regenerate | Rating | Comparison, position: int) -> FeedbackRecord:
        """The record of a parsed wire feedback event stored at `position` of the event log."""
        payload = event.payload.model_dump(mode="json", exclude_none=True)
        return cls(
            event_id=str(event.event_id), position=position, type=event.type, interaction_id=event.interaction_id,
            user_id_hash=event.user.id_hash, consent_training=event.user.consent_training,
            occurred_at=event.occurred_at, payload=payload,
        )


# ---- outputs ----


@dataclass(frozen=True, slots=True, kw_only=True)
class PreferencePair:
    """Chosen over rejected for one prompt, with the rule that said so and the events it read."""

    pair_id: str
    rule: str
    rule_version: int
    prompt: tuple[dict[str, Any], ...]
    chosen: str
    rejected: str
    chosen_interaction_id: str | None  # None for an edit: the chosen text was written by the user
    rejected_interaction_id: str
    margin: float
    tie: bool
    status: PairStatus
    # For a pending regenerate pair: the event time from which it counts as accepted if nothing contrary
    # happened by then. derive has no clock; the round builder decides against its own watermark.
    decided_after: datetime | None
    confidence: float
    preference_reason: str
    source_event_ids: tuple[str, ...]  # sorted by position in the event log
    app_id: str
    model_version: str  # of the rejected (judged) response
    prompt_version: str
    chosen_model_version: str | None  # of the chosen response when it is an interaction (A/B, regenerations)
    chosen_prompt_version: str | None
    tags: tuple[str, ...]
    disagreement: bool
    consent: bool  # False when any judged interaction or any judging user did not consent to training
    user_id_hash: str  # the judging user
    dimension: str | None = None  # rating pairs only
    tools: tuple[dict[str, Any], ...] = ()  # the tools offered with the prompt
    # Why the server stopped each served response ("length": cut at max_tokens); None for an edit's chosen text.
    chosen_finish_reason: str | None = None
    rejected_finish_reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class KTOLabel:
    """A binary desirable/undesirable label on one completion."""

    label_id: str
    rule: str
    rule_version: int
    prompt: tuple[dict[str, Any], ...]
    completion: str
    desirable: bool
    interaction_id: str
    user_id_hash: str
    confidence: float
    preference_reason: str
    source_event_ids: tuple[str, ...]
    app_id: str
    model_version: str
    prompt_version: str
    tags: tuple[str, ...]
    disagreement: bool
    consent: bool
    dimension: str | None = None  # rating labels only
    tools: tuple[dict[str, Any], ...] = ()  # the tools offered with the prompt
    finish_reason: str | None = None  # why the server stopped the completion ("length": cut at max_tokens)


@dataclass(frozen=True, slots=True, kw_only=True)
class SFTSample:
    """A conversation ending in a target response written or approved by a user."""

    sample_id: str
    rule: str
    rule_version: int
    messages: tuple[dict[str, Any], ...]  # the prompt, then {"role": "assistant", "content": target}
    interaction_id: str
    source_event_ids: tuple[str, ...]
    app_id: str
    model_version: str
    prompt_version: str
    tags: tuple[str, ...]
    confidence: float
    disagreement: bool
    consent: bool
    user_id_hash: str
    tools: tuple[dict[str, Any], ...] = ()  # the tools offered with the prompt


@dataclass(frozen=True, slots=True, kw_only=True)
class HardCase:
    """An interaction worth sampling again: users rejected, rewrote or disputed it."""

    case_id: str
    interaction_id: str
    reason: str  # one of HARD_CASE_REASONS
    source_event_ids: tuple[str, ...]
    app_id: str
    model_version: str
    prompt_version: str
    consent: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Disagreement:
    """Conflicting judgements of one interaction (or of one A/B pair), kept side by side and never resolved."""

    disagreement_id: str
    interaction_id: str
    # For a comparison conflict: the other response of the pair (interaction_id is the earlier one in the log);
    # None for conflicting judgements of a single response.
    other_interaction_id: str | None
    kinds: tuple[str, ...]  # e.g. ("thumbs_down", "thumbs_up") or ("edit", "thumbs_up"), sorted
    user_count: int
    source_event_ids: tuple[str, ...]
    consent: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Signals:
    """Everything derived from one prompt group, each tuple in a deterministic order."""

    pairs: tuple[PreferencePair, ...] = ()
    kto_labels: tuple[KTOLabel, ...] = ()
    sft_samples: tuple[SFTSample, ...] = ()
    hard_cases: tuple[HardCase, ...] = ()
    disagreements: tuple[Disagreement, ...] = ()


# Any record derive makes of a group.
Record = PreferencePair | KTOLabel | SFTSample | HardCase | Disagreement
