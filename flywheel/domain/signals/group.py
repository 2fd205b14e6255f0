"""A prompt group: every response to one conversation and the feedback about them, as the rules read them.

A group grows as the log does: `add` takes the events appended to it and returns the Change, the part of the
group whose records those events may have altered, so a projector re-derives that part and not the whole.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
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
    for r in sorted(records, key=_log_order):
        seen.setdefault(r.event_id, r)
    return list(seen.values())


def _log_order(r: InteractionRecord | FeedbackRecord) -> tuple[int, str]:
    return (r.position, r.event_id)


PairKey = tuple[str, str]  # two compared interactions, the earlier in the log first


@dataclass(frozen=True, slots=True)
class Change:
    """What some new events may have altered in a group: the records of these interactions (disagreements,
    hard cases) and of these feedback events (what each event's rules derive)."""

    interactions: tuple[str, ...]
    feedback: tuple[FeedbackRecord, ...]


class PromptGroup:
    """The inputs of one group, in log order and each event once, and the lookups every rule needs; `add`
    keeps them as the group grows."""

    def __init__(self, interactions: Iterable[InteractionRecord], feedback: Iterable[FeedbackRecord],
                 config: SignalConfig) -> None:
        self.config = config
        self.low, self.high = bounds(config)
        self.interactions: dict[str, InteractionRecord] = {}
        self.keys: dict[str, str] = {}
        self.interaction_positions: dict[str, int] = {}
        # Event id -> log position and event time, of the group's interactions and judged feedback.
        self.positions: dict[str, int] = {}
        self.occurred: dict[str, datetime] = {}
        self.feedback: list[FeedbackRecord] = []  # the feedback that can be judged here, in log order
        self.by_interaction: dict[str, list[FeedbackRecord]] = defaultdict(list)  # feedback about a response
        self.naming: dict[str, list[FeedbackRecord]] = defaultdict(list)  # feedback naming it in any way
        self.ratings: dict[tuple[str, str | None], list[FeedbackRecord]] = defaultdict(list)  # by rater, dimension
        self.comparisons: dict[PairKey, list[FeedbackRecord]] = defaultdict(list)  # with a winner, by pair
        self.compared: dict[str, set[PairKey]] = defaultdict(set)  # the pairs a response is in
        self.substantive_edits: dict[str, bool] = {}  # edit event id -> substantive (two rules ask)
        self._seen: set[str] = set()
        # Feedback about an interaction outside the group cannot be judged (yet): it has no prompt here.
        self._waiting: dict[str, list[FeedbackRecord]] = defaultdict(list)
        self.add(interactions, feedback)

    def __len__(self) -> int:
        """How many events the group holds, judged or waiting."""
        return len(self._seen)

    def everything(self) -> Change:
        """The whole group as a change: what derive reads on a group seen for the first time."""
        return Change(tuple(self.interactions), tuple(self.feedback))

    def add(self, interactions: Iterable[InteractionRecord], feedback: Iterable[FeedbackRecord]) -> Change:
        """Take new events in (repeats are ignored) and return what they may have changed: every interaction
        they name, every feedback event naming one of those (its record reads their judgements), and the
        ratings that a new rating joins the window of (see rating.rating_pairs)."""
        touched: set[str] = set()
        feedback = list(feedback)
        for i in by_position(r for r in interactions if r.event_id not in self._seen):
            self._seen.add(i.event_id)
            if i.interaction_id in self.interactions:
                continue  # ingest refuses duplicates; the first one wins
            self.interactions[i.interaction_id] = i
            self.keys[i.interaction_id] = i.prompt_key
            self.interaction_positions[i.interaction_id] = i.position
            self.positions[i.event_id], self.occurred[i.event_id] = i.position, i.occurred_at
            touched.add(i.interaction_id)
        arrived = [f for f in feedback if f.event_id not in self._seen and f.type in FEEDBACK_TYPES]
        self._seen.update(f.event_id for f in feedback)
        released = [f for iid in touched for f in self._waiting.pop(iid, ())]
        for f in by_position([*arrived, *released]):
            missing = next((r for r in references(f) if r not in self.interactions), None)
            if missing is not None:
                self._waiting[missing].append(f)
                continue
            self._judge(f)
            touched.update(named(f))
        return self._change(touched)

    def _judge(self, f: FeedbackRecord) -> None:
        insort(self.feedback, f, key=_log_order)
        insort(self.by_interaction[f.interaction_id], f, key=_log_order)
        for iid in named(f):
            insort(self.naming[iid], f, key=_log_order)
        self.positions[f.event_id], self.occurred[f.event_id] = f.position, f.occurred_at
        if f.type == "rating" and self.score(f) is not None:
            insort(self.ratings[rater(f)], f, key=_log_order)
        elif f.type == "comparison" and f.payload["strength"] != "tie":
            key = self.pair_key(str(f.payload["chosen_interaction_id"]), str(f.payload["rejected_interaction_id"]))
            insort(self.comparisons[key], f, key=_log_order)
            for iid in key:
                self.compared[iid].add(key)

    def _change(self, touched: set[str]) -> Change:
        events: dict[str, FeedbackRecord] = {}
        for iid in touched:
            events.update((f.event_id, f) for f in self.naming.get(iid, ()))
        window = self.config.rating_pair_window
        for f in [f for f in events.values() if f.type == "rating" and self.score(f) is not None]:
            ratings = self.ratings[rater(f)]
            n = bisect_right(ratings, _log_order(f), key=_log_order)
            events.update((later.event_id, later) for later in ratings[n:n + window])
        return Change(tuple(iid for iid in touched if iid in self.interactions), tuple(events.values()))

    def window(self, f: FeedbackRecord) -> list[FeedbackRecord]:
        """The ratings a rating is compared with: the same rater's `rating_pair_window` latest ratings on
        its dimension in this group before it."""
        ratings = self.ratings[rater(f)]
        n = bisect_right(ratings, _log_order(f), key=_log_order) - 1
        return ratings[max(0, n - self.config.rating_pair_window):n]

    def pair_key(self, a: str, b: str) -> PairKey:
        """Two compared interactions in log order."""
        first, second = sorted((a, b), key=lambda i: (self.interactions[i].position, i))
        return (first, second)

    def sources(self, interactions: Iterable[InteractionRecord | None],
                events: Iterable[FeedbackRecord]) -> tuple[str, ...]:
        """The event ids of these interactions and feedback events, in event-log order."""
        ids = {i.event_id for i in interactions if i is not None} | {f.event_id for f in events}
        return tuple(sorted(ids, key=lambda e: (self.positions[e], e)))

    def newest(self, event_ids: Iterable[str]) -> tuple[int, datetime]:
        """The log position and event time of the latest of these events: when a record was last sourced."""
        newest = max(event_ids, key=self.positions.__getitem__)
        return self.positions[newest], self.occurred[newest]

    def same_prompt(self, a: str, b: str) -> bool:
        """Whether two different interactions answer the same conversation."""
        return a != b and self.keys[a] == self.keys[b]

    def score(self, f: FeedbackRecord) -> Fraction | None:
        """A rating's normalised score."""
        return normalised_score(int(f.payload["score"]), int(f.payload.get("scale", 5)))


def rater(f: FeedbackRecord) -> tuple[str, str | None]:
    """Whose scale a rating is on: its user's, on its dimension (people use a scale differently)."""
    return (f.user_id_hash, f.payload.get("dimension"))


def references(f: FeedbackRecord) -> tuple[str, ...]:
    """The interactions a feedback event needs in the group to be judged."""
    if f.type == "comparison":
        return (str(f.payload["chosen_interaction_id"]), str(f.payload["rejected_interaction_id"]))
    return (f.interaction_id,)  # a regeneration's new interaction may not be here yet: its rule then waits


def named(f: FeedbackRecord) -> tuple[str, ...]:
    """Every interaction whose records this event's records may read: those it needs, and a regeneration's
    new response."""
    if f.type == "regenerate":
        return (f.interaction_id, str(f.payload["new_interaction_id"]))
    return references(f)
