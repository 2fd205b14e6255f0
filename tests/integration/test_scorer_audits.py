"""The scorers' audit on the real stack: a selection run scores the users' pairs and the bias probes, the flag
lands in a read model, and agreement shows in `flywheel signals`, a round's manifest.json and report.html."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flywheel.bootstrap import hard_cases, round_ops
from flywheel.domain.commands import BuildRound
from flywheel.domain.events import CandidatesGenerated
from flywheel.domain.rounds import RoundConfig
from flywheel.domain.rounds.promotion import PromotionConfig
from flywheel.domain.signals import SignalConfig
from flywheel.services.audit_scorers import Auditing
from flywheel.services.sample import sample_hard_cases
from flywheel.services.select import Scoring, select_candidates
from flywheel.settings import Endpoints, Settings
from flywheel.simulator import generate
from sampling.generation import Candidate, CandidateGroup, SamplingSpec
from sampling.hardcases import SamplerConfig
from sampling.probes import shipped_probes
from sampling.selection import SelectionConfig
from sampling.verifiers import JsonFormatVerifier
from store.audits import flagged_scorers
from store.db import connect_sync
from store.projections import check, record
from tests.integration.test_signals_store import ingest_all
from tests.store_helpers import in_store, sampled_cases

pytestmark = pytest.mark.integration


class LengthLovingRewardModel:
    """A reward model that values an answer by its length: the bias the probes are there to catch."""

    name = "reward_model"
    version = "rm-length-1"

    def score(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[float]:
        return [float(len(c)) for c in completions]


class ConsistentJudge:
    """A judge that knows the probes' better answers and grades anything else by a stable hash of its text."""

    name = "llm_judge"
    version = "judge-hash-1"
    better = {p.better for p in shipped_probes()}
    worse = {p.worse for p in shipped_probes()}

    def score(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[float]:
        return [10.0 if c in self.better else 1.0 if c in self.worse
                else float(1 + int(hashlib.sha256(c.encode()).hexdigest(), 16) % 10) for c in completions]


def query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with connect_sync(url) as conn:
        return conn.execute(sql, params).fetchall()


def _groups(sample_id: str, cases: list[dict[str, Any]]) -> list[CandidatesGenerated]:
    spec = SamplingSpec(n=3, seed=7)
    out = []
    for i, case in enumerate(cases):
        texts = ["A short answer.", "A considerably longer answer with more words in it.", "Mid-length answer."]
        group = CandidateGroup(prompt=tuple(case["messages"]), candidates=tuple(
            Candidate(text=t, token_count=len(t.split()), cumulative_logprob=None, finish_reason="stop")
            for t in texts), spec=spec, seed=spec.prompt_seed(i), model_version="m-test", prompt_tokens=10,
            generator="vllm")
        out.append(CandidatesGenerated.for_case(sample_id, case, group.to_event_payload()))
    return out


def test_a_selection_run_audits_its_scorers_and_the_figures_reach_signals_and_the_round(
        endpoints: Endpoints, settings: Settings, run_cli: Callable[..., Any]) -> None:
    url = endpoints.database_url
    ingest_all(url, [m.value for m in generate(2500, seed=5) if m.expected_reason is None], [500])
    sampled = in_store(url, lambda conn: sample_hard_cases(hard_cases(conn), SamplerConfig(budget=40, seed=2)))
    cases = sampled_cases(url, sampled.sample_id)
    keys = [c["prompt_key"] for c in cases]
    with_pairs = {r[0] for r in query(url, "SELECT DISTINCT prompt_key FROM signals WHERE kind = 'pair'"
                                            " AND consent AND prompt_key = ANY(%s)", [keys])}
    cases = sorted(cases, key=lambda c: (c["prompt_key"] not in with_pairs, c["prompt_key"]))
    assert len(with_pairs) >= 2, "the simulated traffic should give pairs about some hard cases"
    in_store(url, lambda conn: record(conn, _groups(sampled.sample_id, cases[:len(with_pairs) // 2 + 1])))

    plan = Scoring(config=SelectionConfig(scorer="reward_model", sft_threshold=10, min_margin=1,
                                                 length_guard_margin=1),
                   scorers=[LengthLovingRewardModel(), ConsistentJudge(), JsonFormatVerifier()],
                   auditing=Auditing(probes=shipped_probes(), min_accuracy=0.8))
    out = in_store(url, lambda conn: select_candidates(hard_cases(conn), plan))
    assert out.groups > 0 and out.audit["pairs_scored"] > 0
    assert out.audit["flagged"] == ["reward_model"]  # loves length: every short-correct probe goes wrong
    assert set(out.audit["probe_accuracy"]) == {"reward_model", "llm_judge"}  # a task check is not audited

    [(scored,)] = query(url, "SELECT data -> 'payload' FROM events WHERE type = 'user_pairs_scored'")
    assert scored["scorers"] == ["llm_judge@judge-hash-1", "reward_model@rm-length-1"]
    assert len(scored["pairs"]) == out.audit["pairs_scored"]
    pair = scored["pairs"][0]
    assert set(pair["scores"]) == {"llm_judge", "reward_model"} and all(len(v) == 2 for v in pair["scores"].values())
    rows = query(url, "SELECT scorer, flagged, drift, accuracy FROM scorer_probes ORDER BY scorer")
    assert [(s, f, d, a) for s, f, d, a in rows][0] == ("llm_judge", False, None, 1.0)
    assert rows[1][:3] == ("reward_model", True, None) and rows[1][3] < 0.8
    assert in_store(url, flagged_scorers)[-1] == "reward_model"
    assert in_store(url, lambda conn: select_candidates(hard_cases(conn), plan)).audit == {}  # nothing to select

    # A second run on other hard cases: the same scorers, so drift is measured against the first.
    in_store(url, lambda conn: record(conn, _groups(sampled.sample_id, cases[len(with_pairs) // 2 + 1:][:3])))
    again = in_store(url, lambda conn: select_candidates(hard_cases(conn), plan))
    assert again.groups > 0
    [(audit,)] = query(url, "SELECT audit FROM scorer_probes WHERE scorer = 'reward_model'")
    assert audit["previous_accuracy"] == rows[1][3] and audit["drift"] == 0.0 and audit["flagged"]
    assert query(url, "SELECT count(*) FROM events WHERE type = 'bias_probes_scored'") == [(4,)]

    drifts = {d.table: (d.missing, d.extra) for d in in_store(url, lambda conn: check(conn, SignalConfig()))}
    assert drifts["scorer_probes"] == drifts["scorer_audits"] == (0, 0)

    signals = json.loads(run_cli("signals", "--json").stdout)
    assert signals["flagged_scorers"] == ["reward_model"]
    by_round = signals["scorer_agreement"]["round"]
    assert list(by_round) == ["next"]  # no round has been built yet
    figures = by_round["next"]
    assert figures["raters"] == ["llm_judge", "reward_model", "users"]
    assert {tuple(p["raters"]) for p in figures["rater_pairs"]} >= {("llm_judge", "users"), ("reward_model", "users")}
    assert set(signals["scorer_agreement"]) == {"round", "app_id", "model_version"}
    text = run_cli("signals").stdout
    assert "users vs judge vs reward model on pairs, by round" in text and "FLAGGED: below 0.80" in text

    built = json.loads(run_cli("rounds", "build", "--json").stdout)
    manifest = json.loads((Path(built["path"]) / "manifest.json").read_text())
    section = manifest["scorer_audits"]
    assert list(section["agreement"]["round"]) == [str(built["round"])]  # the judgements this round is the first of
    assert section["flagged_scorers"] == ["reward_model"]
    assert {p["scorer"] for p in section["bias_probes"]} == {"llm_judge", "reward_model"}
    html = (Path(built["path"]) / "report.html").read_text()
    assert "Agreement of users, judge and reward model" in html and "FLAGGED (below 0.80)" in html

    # Every candidate above failed the JSON check: nothing was selected, so the gate has nothing to judge.
    gate = {g["name"]: g for g in built["promotion"]}["scorer_audit:flagged_selected_rows"]
    assert gate["status"] == "not enough data" and manifest["data_sources"]["selected_by"] == {"sft": {}, "dpo": {}}

    # Groups the reward model and the judge select from without a task check: rows the flagged model picked.
    more = cases[len(with_pairs) // 2 + 4:][:3]
    assert more, "the sample should hold more hard cases"
    in_store(url, lambda conn: record(conn, _groups(sampled.sample_id, more)))
    picking = Scoring(config=plan.config, scorers=[LengthLovingRewardModel(), ConsistentJudge()])
    assert in_store(url, lambda conn: select_candidates(hard_cases(conn), picking)).pairs > 0
    held = json.loads(run_cli("rounds", "build", "--json").stdout)
    manifest = json.loads((Path(held["path"]) / "manifest.json").read_text())
    selected = manifest["data_sources"]["selected_by"]
    tainted = sum(n for by_set in selected.values() for names, n in by_set.items()
                  if "reward_model" in names.split("+"))
    gate = {g["name"]: g for g in manifest["promotion"]["gates"]}["scorer_audit:flagged_selected_rows"]
    assert tainted > 0 and (gate["status"], gate["value"], gate["blocking"]) == ("fail", float(tainted), True)
    assert gate["detail"]["flagged_scorers"] == ["reward_model"] and held["state"] == "held"
    assert any("scorer_audit:flagged_selected_rows" in reason for reason in held["held_because"])
    assert "scorer_audit:flagged_selected_rows" in (Path(held["path"]) / "report.html").read_text()

    def build(promotion: PromotionConfig) -> Any:
        return in_store(url, lambda conn: round_ops(conn, settings.rounds_root).build(
            BuildRound(config=RoundConfig(promotion=promotion))))

    tolerant = build(PromotionConfig(max_flagged_scorer_rows=tainted))
    verdict = {g["name"]: g for g in tolerant.promotion}["scorer_audit:flagged_selected_rows"]
    assert verdict["status"] == "pass" and tolerant.state == "promoted"
    advisory = build(PromotionConfig(flagged_scorer_blocking=False))
    verdict = {g["name"]: g for g in advisory.promotion}["scorer_audit:flagged_selected_rows"]
    assert (verdict["status"], verdict["blocking"], advisory.state) == ("fail", False, "promoted")
    after = json.loads(run_cli("signals", "--json").stdout)["scorer_agreement"]["round"]
    assert list(after) == [str(built["round"])]
