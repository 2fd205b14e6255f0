"""Signal rules: one prompt group's interactions and feedback in; preference pairs, KTO labels, SFT samples out."""

from __future__ import annotations

import functools
import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import orjson
from rapidfuzz.distance import Levenshtein

if TYPE_CHECKING:
    from flywheel.domain.wire import Comparison, Edit, Interaction, Rating, Regenerate, Thumbs

# Every rule has a name and an integer version; bump the version whenever a rule's output changes meaning.
EDIT_PAIR = "edit_pair"
EDIT_SFT = "edit_sft"
REGENERATE_PAIR = "regenerate_pair"
THUMBS_LABEL = "thumbs_label"
RATING_LABEL = "rating_label"
RATING_PAIR = "rating_pair"
COMPARISON_PAIR = "comparison_pair"
RULES: Mapping[str, int] = {
    EDIT_PAIR: 1,
    EDIT_SFT: 1,
    REGENERATE_PAIR: 1,
    THUMBS_LABEL: 1,
    RATING_LABEL: 1,
    RATING_PAIR: 1,
    COMPARISON_PAIR: 1,
}
HARD_CASE_REASONS = ("thumbs_down", "low_rating", "edited", "regenerated", "disagreement")
FEEDBACK_TYPES = ("thumbs", "edit", "regenerate", "rating", "comparison")
OVERALL = "overall"  # the aspect of thumbs, edits, regenerations and ratings without a dimension

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
    messages: tuple[dict[str, Any], ...]  # the conversation up to the response (role/content dicts)
    response: str
    tags: tuple[str, ...]
    prompt_key: str = ""  # prompt_key(messages), computed when not given (the store passes its column)

    def __post_init__(self) -> None:
        if not self.prompt_key:
            object.__setattr__(self, "prompt_key", prompt_key(self.messages))

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


# ---- configuration ----


@dataclass(frozen=True, kw_only=True)
class SignalConfig:
    """Thresholds, margins and confidences of the signal rules; `version()` names a set of values."""

    # Normalised Levenshtein distance (0..1, after folding case and whitespace) below which an edit is trivial.
    edit_min_distance: float = 0.15
    # A regenerated response nobody objected to within this many seconds counts as accepted.
    regenerate_window_seconds: float = 600
    # The two rating thresholds are written on a 1..rating_scale scale and compared on the normalised
    # score (score - 1) / (scale - 1), so a 7-point or 10-point rating is judged like a 5-point one.
    rating_scale: int = 5
    rating_desirable_min: int = 4
    rating_undesirable_max: int = 2
    rating_pair_min_gap: float = 0.5  # on the normalised 0..1 score: 2 points on a 5-point scale
    margin_edit: float = 1.0
    margin_regenerate: float = 0.5
    margin_much: float = 1.0
    margin_slightly: float = 0.5
    confidence_edit: float = 0.9
    confidence_regenerate_accepted: float = 0.6  # a thumbs-up (or high overall rating) on the new response
    confidence_regenerate_silent: float = 0.4  # nothing said against the new response within the window
    confidence_thumbs: float = 0.8
    confidence_rating: float = 0.7
    confidence_rating_pair: float = 0.6
    confidence_comparison_much: float = 0.9
    confidence_comparison_slightly: float = 0.7
    confidence_comparison_tie: float = 0.6

    def __post_init__(self) -> None:
        values = asdict(self)
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number")
            if (name.startswith("confidence_") or name in ("edit_min_distance", "rating_pair_min_gap")) and not (
                0.0 <= value <= 1.0
            ):
                raise ValueError(f"{name} must be within 0..1")
            if value < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.rating_scale < 2:
            raise ValueError("rating_scale must be >= 2")
        if not 1 <= self.rating_undesirable_max < self.rating_desirable_min <= self.rating_scale:
            raise ValueError("need 1 <= rating_undesirable_max < rating_desirable_min <= rating_scale")

    def version(self) -> str:
        """A short hash of the values: equal configs (600 or 600.0) give the same version."""
        canonical = {k: float(v) for k, v in sorted(asdict(self).items())}
        return hashlib.sha256(orjson.dumps(canonical)).hexdigest()[:12]


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


# ---- helpers ----


def _canonical_message(message: Mapping[str, Any]) -> dict[str, Any]:
    # An absent optional field and an explicit null are the same message.
    return {k: v for k, v in message.items() if v is not None}


def prompt_key(messages: Sequence[Mapping[str, Any]]) -> str:
    """A stable hash of the conversation: key order and null fields do not change it, any text does."""
    canonical = [_canonical_message(m) for m in messages]
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def edit_distance(before: str, after: str) -> float:
    """Normalised Levenshtein distance (0..1) after folding case and whitespace runs."""
    return float(Levenshtein.normalized_distance(_fold(before), _fold(after)))


@functools.lru_cache(maxsize=1024)  # a few scales and scores recur: a Fraction is slow to make, and immutable
def normalised_score(score: int, scale: int) -> Fraction | None:
    """(score - 1) / (scale - 1) as an exact fraction; None for a one-point scale, which says nothing."""
    if scale < 2 or not 1 <= score <= scale:
        return None
    return Fraction(score - 1, scale - 1)


@functools.lru_cache(maxsize=64)
def _bounds(config: SignalConfig) -> tuple[Fraction, Fraction]:
    """The normalised scores at and below which a rating is undesirable, at and above which desirable."""
    return (Fraction(config.rating_undesirable_max - 1, config.rating_scale - 1),
            Fraction(config.rating_desirable_min - 1, config.rating_scale - 1))


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def _record_id(rule: str, source_event_ids: Sequence[str]) -> str:
    return _digest(rule, str(RULES[rule]), *source_event_ids)


_R = TypeVar("_R", InteractionRecord, FeedbackRecord)


def _by_position(records: Iterable[_R]) -> list[_R]:
    """Records in event-log order, each event once, whatever order and repetition they came in."""
    seen: dict[str, _R] = {}
    for r in sorted(records, key=lambda r: (r.position, r.event_id)):
        seen.setdefault(r.event_id, r)
    return list(seen.values())


# ---- derivation ----


@dataclass(frozen=True, slots=True)
class _Judgement:
    """One feedback event read as for or against one interaction, within one aspect."""

    aspect: str
    positive: bool
    kind: str
    event: FeedbackRecord


class _Group:
    """The sorted, de-duplicated inputs of one derive call and the lookups every rule needs."""

    def __init__(self, interactions: Iterable[InteractionRecord], feedback: Iterable[FeedbackRecord],
                 config: SignalConfig) -> None:
        self.config = config
        self.interactions: dict[str, InteractionRecord] = {}
        for i in _by_position(interactions):
            self.interactions.setdefault(i.interaction_id, i)  # ingest refuses duplicates; first one wins
        self.keys = {iid: i.prompt_key for iid, i in self.interactions.items()}
        # Feedback about an interaction outside the group cannot be judged: it has no prompt here.
        self.feedback = [f for f in _by_position(feedback)
                         if f.type in FEEDBACK_TYPES and all(r in self.interactions for r in _references(f))]
        self.interaction_positions = {iid: i.position for iid, i in self.interactions.items()}
        self.positions = {i.event_id: i.position for i in self.interactions.values()}
        self.positions.update({f.event_id: f.position for f in self.feedback})
        self.by_interaction: dict[str, list[FeedbackRecord]] = defaultdict(list)
        for f in self.feedback:
            self.by_interaction[f.interaction_id].append(f)
        self.low, self.high = _bounds(config)
        self._substantive: dict[str, bool] = {}  # edit event id -> substantive (two rules ask)

    def sources(self, interactions: Iterable[InteractionRecord | None],
                events: Iterable[FeedbackRecord]) -> tuple[str, ...]:
        ids = {i.event_id for i in interactions if i is not None} | {f.event_id for f in events}
        return tuple(sorted(ids, key=lambda e: (self.positions[e], e)))

    def order_key(self, record: Record) -> bytes:
        return order_key(record, self.positions, self.interaction_positions)

    def same_prompt(self, a: str, b: str) -> bool:
        return a != b and self.keys[a] == self.keys[b]

    def score(self, f: FeedbackRecord) -> Fraction | None:
        return normalised_score(int(f.payload["score"]), int(f.payload.get("scale", 5)))

    def substantive(self, f: FeedbackRecord) -> bool:
        known = self._substantive.get(f.event_id)
        if known is None:
            known = self._substantive[f.event_id] = self._is_substantive(f)
        return known

    def _is_substantive(self, f: FeedbackRecord) -> bool:
        original = self.interactions[f.interaction_id].response
        edited = str(f.payload["edited_response"])
        if _fold(original) == _fold(edited):
            return False
        return edit_distance(original, edited) >= self.config.edit_min_distance


def _references(f: FeedbackRecord) -> tuple[str, ...]:
    if f.type == "comparison":
        return (str(f.payload["chosen_interaction_id"]), str(f.payload["rejected_interaction_id"]))
    return (f.interaction_id,)  # a regeneration's new interaction may not be here yet: its rule then waits


def _tags(*records: InteractionRecord | None) -> tuple[str, ...]:
    return tuple(sorted({t for r in records if r is not None for t in r.tags}))


def _consent(records: Iterable[InteractionRecord | None], events: Iterable[FeedbackRecord]) -> bool:
    return all(r.consent_training for r in records if r is not None) and all(f.consent_training for f in events)


def _prompt(record: InteractionRecord) -> tuple[dict[str, Any], ...]:
    return tuple(dict(m) for m in record.messages)


def derive(interactions: Sequence[InteractionRecord], feedback: Sequence[FeedbackRecord],
           config: SignalConfig) -> Signals:
    """Everything the signal rules make of one prompt group.

    A pure function of the SET of inputs: input order and repeated rows do not change the output, which is
    sorted by event-log position. Conflicting judgements are all kept and marked, never resolved.
    """
    g = _Group(interactions, feedback, config)
    judgements = _judgements(g)
    disagreements = _disagreements(g, judgements)
    disputed = {d.interaction_id for d in disagreements} | {
        d.other_interaction_id for d in disagreements if d.other_interaction_id is not None}

    pairs: list[PreferencePair] = []
    labels: list[KTOLabel] = []
    samples: list[SFTSample] = []
    for f in g.feedback:
        if f.type == "edit":
            _edit(g, f, disputed, pairs, samples)
        elif f.type == "regenerate":
            _regenerate(g, f, disputed, pairs)
        elif f.type == "thumbs":
            _thumbs(g, f, disputed, labels)
        elif f.type == "rating":
            _rating_label(g, f, disputed, labels)
        elif f.type == "comparison":
            _comparison(g, f, disputed, pairs)
    _rating_pairs(g, disputed, pairs)

    ordered = g.order_key
    return Signals(
        pairs=tuple(sorted(pairs, key=ordered)),
        kto_labels=tuple(sorted(labels, key=ordered)),
        sft_samples=tuple(sorted(samples, key=ordered)),
        hard_cases=tuple(sorted(_hard_cases(g, judgements, disagreements), key=ordered)),
        disagreements=tuple(sorted(disagreements, key=ordered)),
    )


Record = PreferencePair | KTOLabel | SFTSample | HardCase | Disagreement


def order_key(record: Record, positions: Mapping[str, int], interaction_positions: Mapping[str, int]) -> bytes:
    """Where a record stands in derive's order among the records of its kind, as bytes that sort as that order
    does: by the log positions of its sources (a hard case: of its interaction), then its rule and id. It names
    positions, never an index, so a record keeps its key while its group grows (the signals read model
    rewrites only the rows that changed). `positions`: event id -> log position of the group's events."""
    if isinstance(record, HardCase):
        return (interaction_positions[record.interaction_id].to_bytes(8, "big") + _text_key(record.interaction_id)
                + HARD_CASE_REASONS.index(record.reason).to_bytes(1, "big"))
    # Each position behind a 1 and the tuple closed by a 0: a tuple sorts before the longer ones it begins.
    sources = b"".join(b"\x01" + positions[e].to_bytes(8, "big") for e in record.source_event_ids) + b"\x00"
    if isinstance(record, Disagreement):
        return sources + _text_key(record.disagreement_id)
    record_id = {PreferencePair: "pair_id", KTOLabel: "label_id", SFTSample: "sample_id"}[type(record)]
    return sources + _text_key(record.rule) + _text_key(getattr(record, record_id))


def _text_key(text: str) -> bytes:
    # UTF-8 sorts as code points do; stored text never holds NUL (Postgres refuses it), so NUL ends a string.
    return text.encode() + b"\x00"


def _judgements(g: _Group) -> dict[str, list[_Judgement]]:
    """Feedback read as for or against the single response it is about (comparisons are relative: not here)."""
    out: dict[str, list[_Judgement]] = defaultdict(list)
    for f in g.feedback:
        if f.type == "thumbs":
            up = f.payload["value"] == "up"
            out[f.interaction_id].append(_Judgement(OVERALL, up, "thumbs_up" if up else "thumbs_down", f))
        elif f.type == "edit" and g.substantive(f):
            out[f.interaction_id].append(_Judgement(OVERALL, False, "edit", f))
        elif f.type == "regenerate":
            out[f.interaction_id].append(_Judgement(OVERALL, False, "regenerate", f))
        elif f.type == "rating":
            score = g.score(f)
            if score is None or g.low < score < g.high:
                continue
            dimension = f.payload.get("dimension")
            positive = score >= g.high
            kind = "rating_high" if positive else "rating_low"
            # A low "tone" rating does not contradict a thumbs-up; a low overall rating does.
            aspect = OVERALL if dimension is None else f"dimension:{dimension}"
            out[f.interaction_id].append(
                _Judgement(aspect, positive, kind if dimension is None else f"{kind}:{dimension}", f))
    return out


def _disagreements(g: _Group, judgements: Mapping[str, list[_Judgement]]) -> tuple[Disagreement, ...]:
    found: list[Disagreement] = []
    for iid, js in judgements.items():
        by_aspect: dict[str, list[_Judgement]] = defaultdict(list)
        for j in js:
            by_aspect[j.aspect].append(j)
        conflicting = [j for aspect_js in by_aspect.values() if len({j.positive for j in aspect_js}) == 2
                       for j in aspect_js]
        if not conflicting:
            continue
        record = g.interactions[iid]
        events = [j.event for j in conflicting]
        sources = g.sources([], events)
        found.append(Disagreement(
            disagreement_id=_digest("disagreement", iid, *sources), interaction_id=iid, other_interaction_id=None,
            kinds=tuple(sorted({j.kind for j in conflicting})), user_count=len({f.user_id_hash for f in events}),
            source_event_ids=sources, consent=_consent([record], events)))

    # Opposite winners of the same A/B pair; a tie next to a preference is a weaker claim, not a conflict.
    by_pair: dict[tuple[str, str], list[FeedbackRecord]] = defaultdict(list)
    for f in g.feedback:
        if f.type == "comparison" and f.payload["strength"] != "tie":
            a, b = sorted((str(f.payload["chosen_interaction_id"]), str(f.payload["rejected_interaction_id"])),
                          key=lambda i: (g.interactions[i].position, i))
            by_pair[(a, b)].append(f)
    for (a, b), events in by_pair.items():
        if len({str(f.payload["chosen_interaction_id"]) for f in events}) < 2:
            continue
        sources = g.sources([], events)
        found.append(Disagreement(
            disagreement_id=_digest("disagreement", a, b, *sources), interaction_id=a, other_interaction_id=b,
            kinds=("comparison_chosen", "comparison_rejected"), user_count=len({f.user_id_hash for f in events}),
            source_event_ids=sources, consent=_consent([g.interactions[a], g.interactions[b]], events)))
    return tuple(found)  # derive sorts them (order_key)


def _pair(g: _Group, *, rule: str, reason: str, rejected: InteractionRecord, chosen: InteractionRecord | None,
          chosen_text: str, events: Sequence[FeedbackRecord], margin: float, confidence: float, user: str,
          disputed: set[str], tie: bool = False, status: PairStatus = "accepted",
          decided_after: datetime | None = None, dimension: str | None = None) -> PreferencePair:
    sources = g.sources([rejected, chosen], events)
    involved = {rejected.interaction_id} | ({chosen.interaction_id} if chosen is not None else set())
    return PreferencePair(
        pair_id=_record_id(rule, sources), rule=rule, rule_version=RULES[rule], prompt=_prompt(rejected),
        chosen=chosen_text, rejected=rejected.response,
        chosen_interaction_id=None if chosen is None else chosen.interaction_id,
        rejected_interaction_id=rejected.interaction_id, margin=float(margin), tie=tie, status=status,
        decided_after=decided_after, confidence=confidence, preference_reason=reason, source_event_ids=sources,
        app_id=rejected.app_id, model_version=rejected.model_version, prompt_version=rejected.prompt_version,
        chosen_model_version=None if chosen is None else chosen.model_version,
        chosen_prompt_version=None if chosen is None else chosen.prompt_version,
        tags=_tags(rejected, chosen), disagreement=bool(involved & disputed),
        consent=_consent([rejected, chosen], events), user_id_hash=user, dimension=dimension,
    )


def _edit(g: _Group, f: FeedbackRecord, disputed: set[str], pairs: list[PreferencePair],
          samples: list[SFTSample]) -> None:
    if not g.substantive(f):
        return
    original = g.interactions[f.interaction_id]
    edited = str(f.payload["edited_response"])
    pairs.append(_pair(g, rule=EDIT_PAIR, reason="edited_substantively", rejected=original, chosen=None,
                       chosen_text=edited, events=[f], margin=g.config.margin_edit,
                       confidence=g.config.confidence_edit, user=f.user_id_hash, disputed=disputed))
    sources = g.sources([original], [f])
    samples.append(SFTSample(
        sample_id=_record_id(EDIT_SFT, sources), rule=EDIT_SFT, rule_version=RULES[EDIT_SFT],
        messages=(*_prompt(original), {"role": "assistant", "content": edited}),
        interaction_id=original.interaction_id, source_event_ids=sources, app_id=original.app_id,
        model_version=original.model_version, prompt_version=original.prompt_version, tags=_tags(original),
        confidence=g.config.confidence_edit, disagreement=original.interaction_id in disputed,
        consent=_consent([original], [f]), user_id_hash=f.user_id_hash,
    ))


def _regenerate(g: _Group, f: FeedbackRecord, disputed: set[str], pairs: list[PreferencePair]) -> None:
    original = g.interactions[f.interaction_id]
    new = g.interactions.get(str(f.payload["new_interaction_id"]))
    if new is None or not g.same_prompt(original.interaction_id, new.interaction_id):
        return  # the new response is not here (yet): nothing to pair
    deadline = new.occurred_at + timedelta(seconds=g.config.regenerate_window_seconds)
    accepting: list[FeedbackRecord] = []
    for later in g.by_interaction.get(new.interaction_id, []):
        score = g.score(later) if later.type == "rating" else None
        thumbs = later.payload.get("value") if later.type == "thumbs" else None
        contrary = later.type == "regenerate" or thumbs == "down" or (score is not None and score <= g.low)
        if contrary and later.occurred_at <= deadline:
            return  # the user went on regenerating or objected: the new response was not accepted either
        if thumbs == "up" or (score is not None and score >= g.high and later.payload.get("dimension") is None):
            accepting.append(later)
    c = g.config
    if accepting:
        pairs.append(_pair(g, rule=REGENERATE_PAIR, reason="regenerated_then_accepted", rejected=original,
                           chosen=new, chosen_text=new.response, events=[f, *accepting],
                           margin=c.margin_regenerate, confidence=c.confidence_regenerate_accepted,
                           user=f.user_id_hash, disputed=disputed))
    else:
        pairs.append(_pair(g, rule=REGENERATE_PAIR, reason="regenerated_then_silent", rejected=original,
                           chosen=new, chosen_text=new.response, events=[f], margin=c.margin_regenerate,
                           confidence=c.confidence_regenerate_silent, user=f.user_id_hash, disputed=disputed,
                           status="pending", decided_after=deadline))


def _label(g: _Group, *, rule: str, reason: str, f: FeedbackRecord, desirable: bool, confidence: float,
           disputed: set[str], dimension: str | None = None) -> KTOLabel:
    record = g.interactions[f.interaction_id]
    sources = g.sources([record], [f])
    return KTOLabel(
        label_id=_record_id(rule, sources), rule=rule, rule_version=RULES[rule], prompt=_prompt(record),
        completion=record.response, desirable=desirable, interaction_id=record.interaction_id,
        user_id_hash=f.user_id_hash, confidence=confidence, preference_reason=reason, source_event_ids=sources,
        app_id=record.app_id, model_version=record.model_version, prompt_version=record.prompt_version,
        tags=_tags(record), disagreement=record.interaction_id in disputed, consent=_consent([record], [f]),
        dimension=dimension,
    )


def _thumbs(g: _Group, f: FeedbackRecord, disputed: set[str], labels: list[KTOLabel]) -> None:
    up = f.payload["value"] == "up"
    labels.append(_label(g, rule=THUMBS_LABEL, reason="thumbs_up" if up else "thumbs_down", f=f, desirable=up,
                         confidence=g.config.confidence_thumbs, disputed=disputed))


def _rating_label(g: _Group, f: FeedbackRecord, disputed: set[str], labels: list[KTOLabel]) -> None:
    score = g.score(f)
    if score is None or g.low < score < g.high:
        return  # the middle of the scale is neither desirable nor undesirable
    high = score >= g.high
    labels.append(_label(g, rule=RATING_LABEL, reason="rating_high" if high else "rating_low", f=f,
                         desirable=high, confidence=g.config.confidence_rating, disputed=disputed,
                         dimension=f.payload.get("dimension")))


def _rating_pairs(g: _Group, disputed: set[str], pairs: list[PreferencePair]) -> None:
    # Only ratings by the same user on the same dimension are compared: people use a scale differently.
    by_rater: dict[tuple[str, str | None], list[tuple[FeedbackRecord, Fraction]]] = defaultdict(list)
    for f in g.feedback:
        if f.type == "rating" and (score := g.score(f)) is not None:
            by_rater[(f.user_id_hash, f.payload.get("dimension"))].append((f, score))
    min_gap = Fraction(repr(float(g.config.rating_pair_min_gap)))
    for (user, dimension), rated in by_rater.items():
        for n, (fa, sa) in enumerate(rated):
            for fb, sb in rated[n + 1:]:
                if not g.same_prompt(fa.interaction_id, fb.interaction_id) or abs(sa - sb) < min_gap:
                    continue
                (hi, _), (lo, _) = ((fa, sa), (fb, sb)) if sa > sb else ((fb, sb), (fa, sa))
                chosen, rejected = g.interactions[hi.interaction_id], g.interactions[lo.interaction_id]
                pairs.append(_pair(g, rule=RATING_PAIR, reason="rating_gap", rejected=rejected, chosen=chosen,
                                   chosen_text=chosen.response, events=[fa, fb], margin=float(abs(sa - sb)),
                                   confidence=g.config.confidence_rating_pair, user=user, disputed=disputed,
                                   dimension=dimension))


def _comparison(g: _Group, f: FeedbackRecord, disputed: set[str], pairs: list[PreferencePair]) -> None:
    chosen = g.interactions[str(f.payload["chosen_interaction_id"])]
    rejected = g.interactions[str(f.payload["rejected_interaction_id"])]
    if not g.same_prompt(chosen.interaction_id, rejected.interaction_id):
        return  # an A/B of two different prompts prefers nothing
    c = g.config
    strength = str(f.payload["strength"])
    margin, confidence = {
        "much": (c.margin_much, c.confidence_comparison_much),
        "slightly": (c.margin_slightly, c.confidence_comparison_slightly),
    }.get(strength, (0.0, c.confidence_comparison_tie))
    pairs.append(_pair(g, rule=COMPARISON_PAIR, reason=f"explicit_comparison_{strength}", rejected=rejected,
                       chosen=chosen, chosen_text=chosen.response, events=[f], margin=margin,
                       confidence=confidence, user=f.user_id_hash, disputed=disputed, tie=strength == "tie"))


def _hard_cases(g: _Group, judgements: Mapping[str, list[_Judgement]],
                disagreements: Sequence[Disagreement]) -> tuple[HardCase, ...]:
    events: dict[tuple[str, str], set[str]] = defaultdict(set)
    reason_of = {"thumbs_down": "thumbs_down", "edit": "edited", "regenerate": "regenerated"}
    for iid, js in judgements.items():
        for j in js:
            if j.positive:
                continue
            reason = reason_of.get(j.kind, "low_rating")
            events[(iid, reason)].add(j.event.event_id)
    for d in disagreements:
        for disputed in (d.interaction_id, d.other_interaction_id):
            if disputed is not None:
                events[(disputed, "disagreement")].update(d.source_event_ids)
    by_id = {f.event_id: f for f in g.feedback}
    cases = []
    for (iid, reason), ids in events.items():
        record = g.interactions[iid]
        sources = g.sources([], [by_id[e] for e in ids])
        cases.append(HardCase(
            case_id=_digest("hard_case", reason, iid, *sources), interaction_id=iid, reason=reason,
            source_event_ids=sources, app_id=record.app_id, model_version=record.model_version,
            prompt_version=record.prompt_version, consent=_consent([record], [by_id[e] for e in ids]),
        ))
    return tuple(cases)  # derive sorts them (order_key)
