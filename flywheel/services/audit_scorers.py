"""AuditScorers: in a selection run, the judge and the reward model score the users' pairs and the bias probes."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from flywheel.domain.events import BiasProbesScored, InternalEvent, UserPairsScored
from flywheel.domain.pairwise import scored_pair
from flywheel.ports import HardCaseStore
from sampling.probes import MIN_ACCURACY, BiasProbe, ProbeAudit, audit_probes, probe_set_version
from sampling.selection import score_group
from sampling.verifiers import CHECKS, Scorer

log = logging.getLogger("flywheel.audit")

MAX_PAIRS = 500  # the users' pairs scored in one run at most: the judge's time per run stays bounded


@dataclass(frozen=True, kw_only=True)
class Auditing:
    """What a selection run audits its scorers with: the probe set (empty: no probe audit), the accuracy below
    which a scorer is flagged, and whether to score the users' pairs of its hard cases."""

    probes: Sequence[BiasProbe] = ()
    min_accuracy: float = MIN_ACCURACY
    user_pairs: bool = True
    max_pairs: int = MAX_PAIRS


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditOutcome:
    pairs_scored: int
    probe_audits: tuple[ProbeAudit, ...]

    @property
    def flagged(self) -> list[str]:
        return [a.scorer for a in self.probe_audits if a.flagged]


def audited(scorers: Sequence[Scorer]) -> list[Scorer]:
    """The scorers whose judgement is audited: the models (reward model, judge), not the checks of a task."""
    return [s for s in scorers if s.name not in CHECKS]


def run_id(group_ids: Sequence[str], scorers: Sequence[Scorer]) -> str:
    """A selection run is named by the groups it selected and the scorers that judged them."""
    what = "\x1f".join(sorted(group_ids)) + "\x1e" + "\x1f".join(sorted(f"{s.name}@{s.version}" for s in scorers))
    return hashlib.sha256(what.encode()).hexdigest()[:32]


async def audit_scorers(store: HardCaseStore, scorers: Sequence[Scorer], auditing: Auditing, *, run: str,
                        prompt_keys: Sequence[str]) -> AuditOutcome:
    """Score the users' pairs about `prompt_keys` (both sides, by every audited scorer) and the probe set, and
    record a UserPairsScored event and one BiasProbesScored per scorer. The scorers must be loaded."""
    models = audited(scorers)
    if not models:
        return AuditOutcome(pairs_scored=0, probe_audits=())
    events: list[InternalEvent] = []
    pairs = await store.user_pairs(sorted(set(prompt_keys)), auditing.max_pairs) if auditing.user_pairs else []
    scored = _score_pairs(models, pairs)
    if scored:
        events.append(UserPairsScored(run_id=run, scorers=tuple(sorted(f"{s.name}@{s.version}" for s in models)),
                                      pairs=scored))
    audits: list[ProbeAudit] = []
    if auditing.probes:
        previous = await store.probe_audits()
        version = probe_set_version(auditing.probes)
        values: dict[str, list[tuple[float | None, float | None]]] = {s.name: [] for s in models}
        for probe in auditing.probes:
            for s in models:
                better, worse = _values(s, probe.prompt, [probe.better, probe.worse], probe.probe_id)
                values[s.name].append((better, worse))
        for s in models:
            audits.append(audit_probes(s.name, s.version, auditing.probes, values[s.name],
                                       previous=previous.get(s.name), min_accuracy=auditing.min_accuracy,
                                       probe_set=version))
        events += [BiasProbesScored(run_id=run, audit=asdict(a)) for a in audits]
    if events:
        await store.record(events)
    return AuditOutcome(pairs_scored=len(scored), probe_audits=tuple(audits))


def _score_pairs(models: Sequence[Scorer], pairs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each pair with every model's values of its two sides; a prompt's distinct texts are scored once."""
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for p in pairs:
        if p["chosen"] != p["rejected"]:  # the same text on both sides orders nothing
            by_prompt.setdefault(p["prompt_key"], []).append(p)
    out = []
    for key in sorted(by_prompt):
        group = by_prompt[key]
        texts = sorted({t for p in group for t in (p["chosen"], p["rejected"])})
        scored = {s.name: dict(zip(texts, _values(s, group[0]["prompt"], texts, key), strict=True)) for s in models}
        for p in group:
            out.append(scored_pair(p, {name: (v[p["chosen"]], v[p["rejected"]]) for name, v in scored.items()}))
    return out


# What a scorer raises for one input it cannot take (a judge server's 400 for a prompt longer than its context,
# an engine's refusal): that input gets no score, and the audit goes on. A scorer that cannot judge the probes
# fails them, so it is flagged rather than silently passed.
_CANNOT_SCORE = (RuntimeError, ValueError, OSError)


def _values(scorer: Scorer, prompt: Sequence[dict[str, Any]], texts: list[str], what: str) -> list[float | None]:
    """One scorer's values of `texts` (None: no score), in order."""
    try:
        [*candidates] = score_group([scorer], prompt, texts)
    except _CANNOT_SCORE as e:
        log.warning("scorer %s could not score %s for the audit: %s", scorer.name, what, e)
        return [None] * len(texts)
    return [c.value(scorer.name) for c in candidates]
