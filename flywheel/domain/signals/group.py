"""A prompt group: every response to one conversation and the feedback about them, as the rules read them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from fractions import Fraction
from typing import TYPE_CHECKING, TypeVar

from flywheel.domain.signals.config import SignalConfig
from flywheel.domain.signals.score import bounds, normalised_score

if TYPE_CHECKING:
    from flywheel.domain.signals.records import FeedbackRecord, InteractionRecord

FEEDBACK_TYPES = ("thumbs", "edit", "regenerate", "rating", "comparison")


_R = TypeVar("_R", "InteractionRecord", "FeedbackRecord")


def by_position(records: Iterable[_R]) -> list[_R]:
    """Records in event-log order, each event once, whatever order and repetition they came in."""
    seen: dict[str, _R] = {}
    for r in sorted(records, key=lambda r: (r.position, r.event_id)):
        seen.setdefault(r.event_id, r)
    return list(seen.values())


class PromptGroup:
    """The sorted, de-duplicated inputs of one derive call and the lookups every rule needs."""

    def __init__(self, interactions: Iterable[InteractionRecord], feedback: Iterable[FeedbackRecord],
                 config: SignalConfig) -> None:
        self.config = config
        self.interactions: dict[str, InteractionRecord] = {}
        for i in by_position(interactions):
            self.interactions.setdefault(i.interaction_id, i)  # ingest refuses duplicates; first one wins
        self.keys = {iid: i.prompt_key for iid, i in self.interactions.items()}
        # Feedback about an interaction outside the group cannot be judged: it has no prompt here.
        self.feedback = [f for f in by_position(feedback)
                         if f.type in FEEDBACK_TYPES and all(r in self.interactions for r in references(f))]
        self.interaction_positions = {iid: i.position for iid, i in self.interactions.items()}
        self.positions = {i.event_id: i.position for i in self.interactions.values()}
        self.positions.update({f.event_id: f.position for f in self.feedback})
        self.by_interaction: dict[str, list[FeedbackRecord]] = defaultdict(list)
        for f in self.feedback:
            self.by_interaction[f.interaction_id].append(f)
        self.low, self.high = bounds(config)
        self.substantive_edits: dict[str, bool] = {}  # edit event id -> substantive (two rules ask)

    def sources(self, interactions: Iterable[InteractionRecord | None],
                events: Iterable[FeedbackRecord]) -> tuple[str, ...]:
        """The event ids of these interactions and feedback events, in event-log order."""
        ids = {i.event_id for i in interactions if i is not None} | {f.event_id for f in events}
        return tuple(sorted(ids, key=lambda e: (self.positions[e], e)))

    def same_prompt(self, a: str, b: str) -> bool:
        """Whether two different interactions answer the same conversation."""
        return a != b and self.keys[a] == self.keys[b]

    def score(self, f: FeedbackRecord) -> Fraction | None:
        """A rating's normalised score."""
        return normalised_score(int(f.payload["score"]), int(f.payload.get("scale", 5)))


def references(f: FeedbackRecord) -> tuple[str, ...]:
    """The interactions a feedback event needs in the group to be judged."""
    if f.type == "comparison":
        return (str(f.payload["chosen_interaction_id"]), str(f.payload["rejected_interaction_id"]))
    return (f.interaction_id,)  # a regeneration's new interaction may not be here yet: its rule then waits
