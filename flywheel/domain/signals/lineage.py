"""What a derived record carries about where it came from, and the pair and label makers the rules share."""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from flywheel.domain.signals.records import FeedbackRecord, InteractionRecord, KTOLabel, PairStatus, PreferencePair
from flywheel.domain.signals.rules import RULES, record_id

if TYPE_CHECKING:
    from flywheel.domain.signals.group import PromptGroup


def tags(*records: InteractionRecord | None) -> tuple[str, ...]:
    """The union of the interactions' tags, sorted."""
    return tuple(sorted({t for r in records if r is not None for t in r.tags}))


def consent(records: Iterable[InteractionRecord | None], events: Iterable[FeedbackRecord]) -> bool:
    """True only when every judged interaction and every judging event consented to training."""
    return all(r.consent_training for r in records if r is not None) and all(f.consent_training for f in events)


def prompt(record: InteractionRecord) -> tuple[dict[str, Any], ...]:
    """The conversation up to the response, as fresh dicts."""
    return tuple(dict(m) for m in record.messages)


def pair(g: PromptGroup, *, rule: str, reason: str, rejected: InteractionRecord, chosen: InteractionRecord | None,
         chosen_text: str, events: Sequence[FeedbackRecord], margin: float, confidence: float, user: str,
         disputed: Container[str], tie: bool = False, status: PairStatus = "accepted",
         decided_after: datetime | None = None, dimension: str | None = None) -> PreferencePair:
    """A pair of `rule` judged by `user`, its lineage read from the interactions and events behind it."""
    sources = g.sources([rejected, chosen], events)
    involved = {rejected.interaction_id} | ({chosen.interaction_id} if chosen is not None else set())
    return PreferencePair(
        pair_id=record_id(rule, sources), rule=rule, rule_version=RULES[rule], prompt=prompt(rejected),
        chosen=chosen_text, rejected=rejected.response,
        chosen_interaction_id=None if chosen is None else chosen.interaction_id,
        rejected_interaction_id=rejected.interaction_id, margin=float(margin), tie=tie, status=status,
        decided_after=decided_after, confidence=confidence, preference_reason=reason, source_event_ids=sources,
        app_id=rejected.app_id, model_version=rejected.model_version, prompt_version=rejected.prompt_version,
        chosen_model_version=None if chosen is None else chosen.model_version,
        chosen_prompt_version=None if chosen is None else chosen.prompt_version,
        tags=tags(rejected, chosen), disagreement=any(i in disputed for i in involved),
        consent=consent([rejected, chosen], events), user_id_hash=user, dimension=dimension, tools=rejected.tools,
        chosen_finish_reason=None if chosen is None else chosen.finish_reason,
        rejected_finish_reason=rejected.finish_reason,
    )


def label(g: PromptGroup, *, rule: str, reason: str, f: FeedbackRecord, desirable: bool, confidence: float,
          disputed: Container[str], dimension: str | None = None) -> KTOLabel:
    """A label of `rule` on the response that `f` is about, its lineage read from the two."""
    record = g.interactions[f.interaction_id]
    sources = g.sources([record], [f])
    return KTOLabel(
        label_id=record_id(rule, sources), rule=rule, rule_version=RULES[rule], prompt=prompt(record),
        completion=record.response, desirable=desirable, interaction_id=record.interaction_id,
        user_id_hash=f.user_id_hash, confidence=confidence, preference_reason=reason, source_event_ids=sources,
        app_id=record.app_id, model_version=record.model_version, prompt_version=record.prompt_version,
        tags=tags(record), disagreement=record.interaction_id in disputed, consent=consent([record], [f]),
        dimension=dimension, tools=record.tools, finish_reason=record.finish_reason,
    )
