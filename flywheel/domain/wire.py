"""Wire schema of topic flywheel.feedback: one JSON event per message, keyed by interaction_id.

Versioning: a field added as optional stays schema_version 1 (workers are upgraded before producers, since a
worker rejects a field it does not know). A breaking change is a new schema_version, whose models replace these,
and an upcaster from each older version to the next (WireFormat), so old producers' events are read as new ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, model_validator
from pydantic_core import PydanticCustomError

from flywheel.domain.messages import role_order_problem

SCHEMA_VERSION = 1
# Feedback about a response; and every type the topic carries: feedback and a user's erasure.
FEEDBACK_TYPES = ("interaction", "thumbs", "edit", "regenerate", "rating", "comparison")
EVENT_TYPES = (*FEEDBACK_TYPES, "erasure")

Id = Annotated[str, Field(min_length=1, max_length=200)]
Text = Annotated[str, Field(max_length=200_000)]
# Names of functions and of their parameters (OpenAI allows 64 characters; room for other servers' names).
Name = Annotated[str, Field(min_length=1, max_length=200)]
# The error type of a conversation whose roles are out of order (flywheel.domain.validation: reason role_order).
ROLE_ORDER_ERROR = "role_order"
# JSON numbers the store can write back: pydantic reads any size of integer, orjson writes 64 bits.
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class _Wire(BaseModel):
    # strict: a number sent as a string is a producer bug and must be rejected, not coerced.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class User(_Wire):
    id_hash: Id
    consent_training: bool


class TextPart(_Wire):
    """One part of a message's content given as a list of parts (OpenAI style); only text parts are accepted."""

    type: Literal["text"]
    text: Text


class FunctionCall(_Wire):
    name: Name
    arguments: Text  # JSON text, as the model wrote it


class ToolCall(_Wire):
    """A call an assistant message makes; the tool message with its `id` as `tool_call_id` answers it."""

    id: Id
    type: Literal["function"]
    function: FunctionCall


class Message(_Wire):
    """One turn. `content` is text or a list of text parts; an assistant message that calls tools may leave it out
    or null. `tool_calls` only on assistant messages, `tool_call_id` (the call answered) only on tool messages
    (checked with the conversation: InteractionPayload)."""

    role: Literal["system", "user", "assistant", "tool"]
    content: Text | Annotated[list[TextPart], Field(min_length=1, max_length=1000)] | None = None
    name: str | None = None
    tool_calls: Annotated[list[ToolCall], Field(min_length=1, max_length=128)] | None = None
    tool_call_id: Id | None = None


class FunctionDefinition(_Wire):
    name: Name
    description: Text | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema object
    strict: bool | None = None


class Tool(_Wire):
    """A tool the app offered the model (OpenAI's `tools` request field)."""

    type: Literal["function"]
    function: FunctionDefinition


class SamplingParams(_Wire):
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: Int64 | None = None
    seed: Int64 | None = None


class InteractionPayload(_Wire):
    """A served response: the conversation up to the response, and the response itself; `tools`, the tools the
    model was offered. Roles come in order (flywheel.domain.messages.role_order_problem)."""

    messages: Annotated[list[Message], Field(min_length=1)]
    response: Text
    sampling: SamplingParams = SamplingParams()
    tags: list[Annotated[str, Field(max_length=64)]] = []
    finish_reason: str | None = None  # as the server said: "stop", "length" (cut at max_tokens), ...
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None

    @model_validator(mode="after")
    def _roles_in_order(self) -> InteractionPayload:
        # One pass over the conversation for all of it: a validator per message cost a fifth of parsing an event.
        plain = True
        for n, m in enumerate(self.messages):
            if m.tool_calls is not None or m.tool_call_id is not None or m.role != "user" and m.role != "assistant":
                plain = False
                if m.tool_calls is not None and m.role != "assistant":
                    raise ValueError(f"messages.{n}: tool_calls on a {m.role} message (only an assistant calls tools)")
                if m.tool_call_id is not None and m.role != "tool":
                    raise ValueError(f"messages.{n}: tool_call_id on a {m.role} message (only a tool message answers "
                                     "a call)")
            if m.content is None and m.tool_calls is None:
                # Reported as a missing field, as a message without content always was.
                raise PydanticCustomError("missing", f"messages.{n}.content: field required (null only beside "
                                                     "tool_calls)")
        if plain:
            return self  # only user and assistant turns without tool calls: nothing is out of order
        problem = role_order_problem([
            {"role": m.role, "tool_call_id": m.tool_call_id,
             "tool_calls": None if m.tool_calls is None else [{"id": c.id} for c in m.tool_calls]}
            for m in self.messages])
        if problem is not None:
            raise PydanticCustomError(ROLE_ORDER_ERROR, problem)
        return self


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


class ErasurePayload(_Wire):
    reason: Text


class ErasureUser(_Wire):
    id_hash: Id
    consent_training: bool | None = None


class Erasure(BaseEvent):
    """A user's erasure, asked for by an app: keyed by user.id_hash; about no interaction, model or prompt. Every
    personal field of the user becomes unreadable and leaves every later round (store.erase)."""

    type: Literal["erasure"]
    interaction_id: Id | None = None  # type: ignore[assignment]  # about no interaction
    model_version: Id | None = None  # type: ignore[assignment]
    prompt_version: Id | None = None  # type: ignore[assignment]
    user: ErasureUser  # type: ignore[assignment]  # no consent to state
    payload: ErasurePayload

    def referenced_interactions(self) -> tuple[str, ...]:
        return ()


FeedbackEvent = Interaction | Thumbs | Edit | Regenerate | Rating | Comparison | Erasure

EVENT_CLASSES: dict[str, type[BaseEvent]] = {
    "interaction": Interaction,
    "thumbs": Thumbs,
    "edit": Edit,
    "regenerate": Regenerate,
    "rating": Rating,
    "comparison": Comparison,
    "erasure": Erasure,
}


def to_wire(event: FeedbackEvent) -> dict[str, Any]:
    """The JSON-ready dict of an event, as it travels and as it is stored."""
    return event.model_dump(mode="json", exclude_none=True)


Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True, slots=True, kw_only=True)
class WireFormat:
    """The wire format a worker reads: the current `version`'s models by type, and `upcasters`, keyed by an older
    version, each turning an event of that version into one of the next (as event-sourcing libraries upcast
    stored events). An event of any version in `readable` is read as the current version."""

    version: int
    classes: Mapping[str, type[BaseEvent]]
    upcasters: Mapping[int, Upcaster] = field(default_factory=dict)

    @property
    def readable(self) -> frozenset[int]:
        return frozenset({self.version, *self.upcasters})

    def upcast(self, event: dict[str, Any]) -> dict[str, Any]:
        """An event of a readable older version as the current version would say it (a new dict)."""
        version = event["schema_version"]
        while version != self.version:
            event = self.upcasters[version](dict(event))
            if event.get("schema_version") != version + 1:
                raise ValueError(f"the upcaster from schema_version {version} must give {version + 1}, "
                                 f"gave {event.get('schema_version')!r}")
            version += 1
        return event


WIRE = WireFormat(version=SCHEMA_VERSION, classes=EVENT_CLASSES)
SCHEMA_ID = "urn:flywheel:wire:feedback"


def json_schema(wire: WireFormat = WIRE) -> dict[str, Any]:
    """The wire format as JSON Schema (draft 2020-12), generated from the models: one of the event types, told
    apart by `type`. Checks beyond a schema (roles in order, a rating on its scale, a comparison naming its
    subject) are the models' and dead-letter an event as the README says."""
    members = tuple(wire.classes[t] for t in sorted(wire.classes))
    union = Annotated[Union[members], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007
    schema = TypeAdapter(union).json_schema(ref_template="#/$defs/{model}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"Flywheel feedback event, schema_version {wire.version}",
        "description": "One JSON object per message on the feedback topic (default flywheel.feedback), keyed by "
                       "its interaction_id as UTF-8. Generated from flywheel/domain/wire.py by `flywheel schema`.",
        **schema,
    }
