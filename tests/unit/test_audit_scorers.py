"""The scorers' audit in a selection run on a fake store: which scorers are audited, what is recorded, the round
label of a manifest, and the report's sections."""

from __future__ import annotations

import asyncio
from typing import Any

from flywheel.domain.events import BiasProbesScored, CandidatesSelected, UserPairsScored
from flywheel.domain.pairwise import FIRST, SECOND, USERS, judgements_of, orient
from flywheel.domain.rounds.manifest import with_scorer_audits
from flywheel.domain.rounds.report import scorer_audit_sections
from flywheel.services.audit_scorers import Auditing
from flywheel.services.select import Scoring, select_candidates
from sampling.probes import shipped_probes
from sampling.selection import SelectionConfig
from sampling.verifiers import JsonFormatVerifier

PROMPT = [{"role": "user", "content": "Say hi"}]


class Store:
    def __init__(self, previous: dict[str, dict[str, Any]] | None = None) -> None:
        self.recorded: list[Any] = []
        self.previous = previous or {}
        self.asked: list[tuple[list[str], int]] = []

    async def unselected(self, sample_id: str | None) -> list[dict[str, Any]]:
        done = {e.group_id for e in self.recorded if isinstance(e, CandidatesSelected)}
        return [g for g in [{"group_id": "g1", "prompt_key": "k1", "prompt": PROMPT, "model_version": "m1",
                             "candidates": [{"index": 0, "text": "hi"}, {"index": 1, "text": "hello there"}]}]
                if g["group_id"] not in done]

    async def user_pairs(self, prompt_keys: list[str], limit: int) -> list[dict[str, Any]]:
        self.asked.append((list(prompt_keys), limit))
        return [{"pair_id": "p1", "prompt_key": "k1", "prompt": PROMPT, "chosen": "hi", "rejected": "hello there!!",
                 "tie": False, "rule": "comparison_pair", "app_id": "chat", "model_version": "m1"}]

    async def probe_audits(self) -> dict[str, dict[str, Any]]:
        return self.previous

    async def record(self, events: list[Any]) -> list[str]:
        self.recorded.extend(events)
        return [e.event_id for e in events]


class Length:
    name, version = "reward_model", "rm1"

    def score(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[float]:
        return [float(len(c)) for c in completions]


def _run(store: Store, auditing: Auditing | None) -> Any:
    plan = Scoring(config=SelectionConfig(scorer="reward_model"), scorers=[Length(), JsonFormatVerifier()],
                   auditing=auditing)
    return asyncio.run(select_candidates(store, plan))  # type: ignore[arg-type]


def test_a_run_scores_the_users_pairs_and_the_probes_with_its_models_only() -> None:
    store = Store()
    out = _run(store, Auditing(probes=shipped_probes(), min_accuracy=0.8))

    assert store.asked == [(["k1"], 500)]
    [scored] = [e for e in store.recorded if isinstance(e, UserPairsScored)]
    assert scored.scorers == ("reward_model@rm1",)  # the JSON check judges a task, not quality: not audited
    [pair] = scored.pairs
    first, second, chosen_first = orient("hi", "hello there!!")
    assert pair["chosen_first"] is chosen_first
    assert pair["scores"]["reward_model"] == [float(len(first)), float(len(second))]
    answers = {j.rater: j.value for j in judgements_of(scored, "3")}
    # the user chose the short one, the length-loving reward model the long one: they answer differently
    assert answers[USERS] != answers["reward_model"] and {answers[USERS], answers["reward_model"]} == {FIRST, SECOND}
    [probes] = [e for e in store.recorded if isinstance(e, BiasProbesScored)]
    assert probes.audit["scorer"] == "reward_model" and probes.audit["flagged"]
    assert out.audit["flagged"] == ["reward_model"] and out.audit["pairs_scored"] == 1


def test_drift_is_read_against_the_stored_previous_audit() -> None:
    first = Store()
    _run(first, Auditing(probes=shipped_probes()))
    [audit] = [e.audit for e in first.recorded if isinstance(e, BiasProbesScored)]
    store = Store(previous={"reward_model": {**audit, "accuracy": 1.0}})
    _run(store, Auditing(probes=shipped_probes()))
    [again] = [e.audit for e in store.recorded if isinstance(e, BiasProbesScored)]
    assert again["previous_accuracy"] == 1.0 and again["drift"] == audit["accuracy"] - 1.0


def test_without_auditing_a_run_records_only_its_selections() -> None:
    store = Store()
    out = _run(store, None)
    assert all(isinstance(e, CandidatesSelected) for e in store.recorded) and out.audit == {}
    assert store.asked == []


def test_the_audit_events_have_stable_ids() -> None:
    scored = UserPairsScored(run_id="r1", scorers=("llm_judge@j1",), pairs=[])
    probed = BiasProbesScored(run_id="r1", audit={"scorer": "llm_judge", "version": "j1"})
    assert scored.event_id == "e92b96d6-6842-5e7c-bb2b-db59837ba71d"
    assert probed.event_id == "3fc35262-7808-596c-9ca6-b0b6cca72144"
    assert UserPairsScored.of(scored.payload()) == scored and BiasProbesScored.of(probed.payload()) == probed


def _agreement(items: int) -> dict[str, Any]:
    kappa = {"value": 0.5, "band": "moderate", "low": 0.2, "high": 0.8, "items": items}
    return {"items": items, "raters": ["llm_judge", "users"], "judgements": 2 * items,
            "rater_pairs": [{"raters": ["llm_judge", "users"], "items": items, "agreement_rate": 0.7,
                             "cohen_kappa": kappa}], "krippendorff_alpha": kappa}


def test_a_manifest_labels_the_judgements_no_earlier_round_covers_as_its_own() -> None:
    audits = {"scorer_agreement": {"round": {"2": _agreement(5), "next": _agreement(7)},
                                   "app_id": {"chat": _agreement(12)}},
              "bias_probes": [], "flagged_scorers": ["reward_model"]}
    manifest, relabelled = with_scorer_audits({"round": 3, "files": {}}, audits)
    assert list(manifest["scorer_audits"]["agreement"]["round"]) == ["2", "3"]
    assert manifest["scorer_audits"]["flagged_scorers"] == ["reward_model"] and manifest["files"] == {}
    assert relabelled["scorer_agreement"]["round"]["3"]["items"] == 7
    assert with_scorer_audits({"round": 3, "files": {}}, audits)[0] == manifest  # pure


def test_the_report_shows_intervals_and_flags_and_escapes_names() -> None:
    probe = {"scorer": "<rm>", "version": "v1", "accuracy": 0.5, "correct": 18, "probes": 36, "drift": -0.25,
             "by_category": {"refusal": 0.5}, "flagged": True, "min_accuracy": 0.8}
    html = "".join(scorer_audit_sections({"scorer_agreement": {"app_id": {"<chat>": _agreement(9)}},
                                          "bias_probes": [probe]}))
    assert "0.50 [0.20, 0.80] (moderate)" in html and "&lt;chat&gt;" in html and "<chat>" not in html
    assert "FLAGGED (below 0.80)" in html and "-0.25" in html and "&lt;rm&gt;" in html
    empty = "".join(scorer_audit_sections({}))
    assert "no pair was judged by users and a scorer" in empty and "no scorer has been audited" in empty


class ShortContext:
    """A judge whose server refuses any text longer than 100 characters, as a model with a short context does."""

    name, version = "llm_judge", "j1"

    def score(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[float]:
        if any(len(c) > 100 for c in completions):
            raise RuntimeError("chat completion failed: HTTP 400: prompt too long")
        return [10.0 - len(c) / 20 for c in completions]


def test_an_input_a_scorer_cannot_take_is_no_score_and_the_audit_goes_on() -> None:
    store = Store()
    plan = Scoring(config=SelectionConfig(scorer="reward_model"), scorers=[Length(), ShortContext()],
                   auditing=Auditing(probes=shipped_probes()))
    asyncio.run(select_candidates(store, plan))  # type: ignore[arg-type]
    audits = {e.audit["scorer"]: e.audit for e in store.recorded if isinstance(e, BiasProbesScored)}
    judge = audits["llm_judge"]
    long_probes = sum(1 for p in shipped_probes() if max(len(p.better), len(p.worse)) > 100)
    assert judge["no_score"] == long_probes > 0 and judge["flagged"]  # it could not judge them: it did not pass
    assert judge["correct"] == len(shipped_probes()) - len(judge["wrong"])
    [scored] = [e for e in store.recorded if isinstance(e, UserPairsScored)]
    assert scored.pairs[0]["scores"]["llm_judge"] != [None, None]  # the short pair was graded
