"""SelectCandidates: score every unselected candidate group, keep the best (RSFT) and best-vs-worst pairs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import orjson

from flywheel.domain.events import CandidatesSelected
from flywheel.domain.rounds import QuarantineIndex, RoundConfig
from flywheel.ports import HardCaseStore, Progress
from flywheel.services.audit_scorers import Auditing, audit_scorers, audited, run_id
from sampling.judge import JudgeScorer
from sampling.selection import (
    Score,
    ScoredCandidate,
    Selection,
    SelectionConfig,
    length_bias,
    score_group,
    select,
    threshold_problem,
)
from sampling.verifiers import Scorer


class JudgeIsPolicy(ValueError):
    """The judge would grade candidates its own model generated."""


@runtime_checkable
class Loadable(Protocol):
    """A scorer that holds a model: loaded for a run that has groups to score, unloaded after."""

    def load(self) -> None: ...

    def unload(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class Scoring:
    """What `select` judges with: scorers for every group, more for some (`scorers_for(prompt)`: the verifiers of
    a checkable prompt, whose names are `check_names`), and the selection rules' config."""

    config: SelectionConfig
    scorers: Sequence[Scorer] = ()
    scorers_for: Callable[[list[dict[str, Any]]], Sequence[Scorer]] | None = None
    check_names: frozenset[str] = field(default_factory=frozenset)
    judge_may_be_policy: bool = False  # let the judge grade groups its own model generated
    auditing: Auditing | None = None  # score the users' pairs and the bias probes too (None: no audit)
    # each check's (where it is written, prompt, answer or tests), refused when it is an evaluation item
    check_texts: Sequence[tuple[str, str, str]] = ()
    round_config: RoundConfig | None = None  # its contamination settings match checks against the quarantine list

    @property
    def names(self) -> frozenset[str]:
        """Every scorer name a group may be scored by."""
        return frozenset(s.name for s in self.scorers) | self.check_names


@dataclass(frozen=True, slots=True, kw_only=True)
class SelectOutcome:
    groups: int
    sft_samples: int
    pairs: int
    reasons: dict[str, int]
    length_bias: dict[str, Any]
    not_judged: int = 0  # groups no configured scorer (or not the deciding one) applies to: left unselected
    audit: dict[str, Any] = field(default_factory=dict)  # pairs scored, probe accuracy per scorer, flagged ones


def selector_version(scorers: Sequence[Scorer], config: SelectionConfig) -> str:
    """Which scorers (name and version) and thresholds judged a group: part of the selection's identity."""
    return orjson.dumps({"scorers": sorted(f"{s.name}@{s.version}" for s in scorers), "config": asdict(config)},
                        option=orjson.OPT_SORT_KEYS).decode()


def score_payload(score: Score) -> dict[str, Any]:
    """A score as the log holds it: scorer, version, value (null: no score) and reason, then only those of veto,
    rationale, judge_model and rubric_hash that say something, so a reward model's scores keep their shape."""
    payload = asdict(score)
    for name in _SAID_ONLY_WHEN_SET:
        if not payload[name]:
            del payload[name]
    return payload


_SAID_ONLY_WHEN_SET = ("veto", "rationale", "judge_model", "rubric_hash")


def selection_payload(selection: Selection) -> dict[str, Any]:
    sft = None if selection.sft is None else {**asdict(selection.sft),
                                               "scores": [score_payload(s) for s in selection.sft.scores]}
    pair = None if selection.pair is None else {
        **asdict(selection.pair), "chosen_scores": [score_payload(s) for s in selection.pair.chosen_scores],
        "rejected_scores": [score_payload(s) for s in selection.pair.rejected_scores]}
    return {
        "scores": [{"index": c.index, "scores": [score_payload(s) for s in c.scores]} for c in selection.candidates],
        "sft": sft,
        "pair": pair,
        "margin": selection.margin,
        "best_index": selection.best_index,
        "worst_index": selection.worst_index,
        "reasons": list(selection.reasons),
        "decided_by": selection.decided_by,
        "ranks": [{"index": i, "rank": r} for i, r in sorted(selection.ranks.items())],
        "vetoed": list(selection.vetoed),
    }


async def select_candidates(
    store: HardCaseStore, scoring: Scoring, *, sample_id: str | None = None, progress: Progress | None = None,
) -> SelectOutcome:
    """Score every candidate group without a selection, apply RSFT and best-vs-worst selection, and
    record one CandidatesSelected event per group (the full scored group stays for RM/GRPO use).
    A group that no scorer applies to (or not the deciding one) is not judged, so a later run with other
    scorers can. Before any model is loaded or anything recorded, every group is checked: its deciding scorer
    must be known and the thresholds on its scale (else ValueError), and a judge must not grade a group its own
    model generated unless `scoring.judge_may_be_policy` (else JudgeIsPolicy).
    With `scoring.auditing`, a run that selected groups also has its judge and reward model score the users' pairs
    about those groups' prompts and the bias probes, while the models are loaded (flywheel.services.audit_scorers)."""
    if scoring.check_texts:
        await _refuse_quarantined_checks(store, scoring)
    config = scoring.config
    planned: list[tuple[dict[str, Any], list[Scorer]]] = []
    not_judged = 0
    for group in await store.unselected(sample_id):
        group_scorers = [*scoring.scorers, *(scoring.scorers_for(group["prompt"]) if scoring.scorers_for else ())]
        names = {s.name for s in group_scorers}
        if not names or (config.scorer is not None and config.scorer not in names):
            not_judged += 1
            if progress:
                progress(1)
            continue
        _check(group, group_scorers, scoring)
        planned.append((group, group_scorers))

    selections: list[Selection] = []
    models = [s for s in scoring.scorers if isinstance(s, Loadable)] if planned else []
    for s in models:
        s.load()
    try:
        for group, group_scorers in planned:
            scored: tuple[ScoredCandidate, ...] = score_group(group_scorers, group["prompt"],
                                                              [c["text"] for c in group["candidates"]])
            selection = select(group["prompt"], scored, config)
            version = selector_version(group_scorers, config)
            await store.record([CandidatesSelected(group_id=group["group_id"], selector_version=version,
                                                   selection=selection_payload(selection))])
            selections.append(selection)
            if progress:
                progress(1)
        audit: dict[str, Any] = {}
        if planned and scoring.auditing is not None and audited(scoring.scorers):
            done = await audit_scorers(
                store, scoring.scorers, scoring.auditing,
                run=run_id([g["group_id"] for g, _ in planned], scoring.scorers),
                prompt_keys=[g["prompt_key"] for g, _ in planned])
            audit = {"pairs_scored": done.pairs_scored, "flagged": done.flagged,
                     "probe_accuracy": {a.scorer: a.accuracy for a in done.probe_audits}}
    finally:
        for s in models:
            s.unload()
    reasons: dict[str, int] = {}
    for sel in selections:
        for r in sel.reasons:
            reasons[r] = reasons.get(r, 0) + 1
    return SelectOutcome(groups=len(selections), sft_samples=sum(s.sft is not None for s in selections),
                         pairs=sum(s.pair is not None for s in selections), reasons=reasons,
                         length_bias=asdict(length_bias(selections)), not_judged=not_judged, audit=audit)


class QuarantinedCheck(ValueError):
    """A check is an evaluation item: selecting with it would train on what the evaluation measures."""


async def _refuse_quarantined_checks(store: HardCaseStore, scoring: Scoring) -> None:
    """QuarantinedCheck naming every check whose prompt or answer holds a quarantine item (as a round build
    finds them): the candidates it picks become training rows, so its reference answer would leak into
    training."""
    quarantine = await store.quarantine()
    if not quarantine.items.items:
        return
    index = QuarantineIndex.for_config(quarantine.items, scoring.round_config or RoundConfig())
    leaks = []
    for where, prompt, answer in scoring.check_texts:
        found = sorted({*(f"{i} (prompt)" for i in index.hits(prompt)), *(f"{i} (answer)" for i in index.hits(answer))})
        if found:
            leaks.append(f"{where} matches quarantine item {', '.join(found)}")
    if leaks:
        raise QuarantinedCheck("refusing checks that are evaluation items (their answers would leak into "
                               "training): " + "; ".join(leaks))


def _check(group: dict[str, Any], scorers: Sequence[Scorer], scoring: Scoring) -> None:
    deciding = scoring.config.deciding(s.name for s in scorers)
    if deciding is not None and (problem := threshold_problem(scoring.config, deciding)):
        raise ValueError(f"{problem}: state the thresholds on the deciding scorer's own scale")
    if scoring.judge_may_be_policy:
        return
    for s in scorers:
        if isinstance(s, JudgeScorer) and s.model_version == group.get("model_version"):
            raise JudgeIsPolicy(
                f"the judge ({s.judge_model}, version {s.model_version}) generated the candidates of group "
                f"{group['group_id']}: a model grading its own answers favours them. Configure another judge "
                "(FLYWHEEL_JUDGE_MODEL / FLYWHEEL_JUDGE_URL), or allow it with FLYWHEEL_JUDGE_MAY_BE_POLICY=true")
