"""Wire schema of topic flywheel.feedback: one JSON event per message, keyed by interaction_id."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})
EVENT_TYPES = ("interaction", "thumbs", "edit", "regenerate", "rating", "comparison")

Id = Annotated[str, Field(min_length=1, max_length=200)]
Text = Annotated[str, Field(max_length=200_000)]
# JSON numbers the store can write back: pydantic reads any size of integer, orjson writes 64 bits.
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class _Wire(BaseModel):
    # strict: a number sent as a string is a producer bug and must be rejected, not coerced.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class User(_Wire):
    id_hash: Id
    consent_training: bool


class Message(_Wire):
    role: Literal["system", "user", "assistant", "tool"]
    content: Text
    name: str | None = None


class SamplingParams(_Wire):
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: Int64 | None = None
    seed: Int64 | None = None


class InteractionPayload(_Wire):
    """A served response: the conversation up to the response, and the response itself."""

    messages: Annotated[list[Message], Field(min_length=1)]
    response: Text
    sampling: SamplingParams = SamplingParams()
    tags: list[Annotated[str, Field(max_length=64)]] = []
    finish_reason: str | None = None


class ThumbsPayload(_Wire):
    value: Literal["up", "down"]
    reason: Text | None = None


class EditPayload(_Wire):
    edited_response: Text


class RegeneratePayload(_Wire):
    new_interaction_id: Id


class RatingPayload(_Wire):
    score: Int64
    scale: Int64 = 5
    dimension: str | None = None

    @model_validator(mode="after")
    def _score_on_scale(self) -> RatingPayload:
        if not 1 <= self.score <= self.scale:
            raise ValueError(f"score {self.score} is outside 1..{self.scale}")
        return self


class ComparisonPayload(_Wire):
    """An explicit A/B judgement between two responses to the same prompt."""

    chosen_interaction_id: Id
    rejected_interaction_id: Id
    # The two interaction ids in the order the user saw them (position-bias audits need it).
    presented_order: Annotated[list[Id], Field(min_length=2, max_length=2)]
    strength: Literal["much", "slightly", "tie"]

    @model_validator(mode="after")
    def _order_names_both(self) -> ComparisonPayload:
        pair = {self.chosen_interaction_id, self.rejected_interaction_id}
        if len(pair) != 2 or set(self.presented_order) != pair:
            raise ValueError("presented_order must list the chosen and rejected interaction ids once each")
        return self


class BaseEvent(_Wire):
    event_id: UUID
    schema_version: Literal[1]
    occurred_at: AwareDatetime
    app_id: Id
    interaction_id: Id
    model_version: Id
    prompt_version: Id
    user: User
    type: str

    def referenced_interactions(self) -> tuple[str, ...]:
        """Interactions that must be stored before this event can be."""
        return () if self.type == "interaction" else (self.interaction_id,)


class Interaction(BaseEvent):
    type: Literal["interaction"]
    payload: InteractionPayload


class Thumbs(BaseEvent):
    type: Literal["thumbs"]
    payload: ThumbsPayload


class Edit(BaseEvent):
    type: Literal["edit"]
    payload: EditPayload


class Regenerate(BaseEvent):
    type: Literal["regenerate"]
    payload: RegeneratePayload


class Rating(BaseEvent):
    type: Literal["rating"]
    payload: RatingPayload


class Comparison(BaseEvent):
    type: Literal["comparison"]
    payload: ComparisonPayload

    @model_validator(mode="after")
    def _subject_is_compared(self) -> Comparison:
        p = self.payload
        if self.interaction_id not in (p.chosen_interaction_id, p.rejected_interaction_id):
            raise ValueError("interaction_id must be one of the compared interactions")
        return self

    def referenced_interactions(self) -> tuple[str, ...]:
        return (self.payload.chosen_interaction_id, self.payload.rejected_interaction_id)


FeedbackEvent = Interaction | Thumbs | Edit | Regenerate | Rating | Comparison

EVENT_CLASSES: dict[str, type[BaseEvent]] = {
    "interaction": Interaction,
    "thumbs": Thumbs,
    "edit": Edit,
    "regenerate": Regenerate,
    "rating": Rating,
    "comparison": Comparison,
}


def to_wire(event: FeedbackEvent) -> dict[str, Any]:
    """The JSON-ready dict of an event, as it travels and as it is stored."""
    return event.model_dump(mode="json", exclude_none=True)
