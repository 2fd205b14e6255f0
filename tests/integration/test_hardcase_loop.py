"""Hard cases sampled from real read models, candidate groups and their selection in the log (real Postgres)."""

from __future__ import annotations

from typing import Any

import pytest

from flywheel.bootstrap import hard_cases
from flywheel.domain.events import CandidatesGenerated
from flywheel.domain.signals import SignalConfig
from flywheel.services.sample import sample_hard_cases
from flywheel.services.select import Scoring, select_candidates
from flywheel.settings import Endpoints
from flywheel.simulator import generate
from sampling.generation import Candidate, CandidateGroup, SamplingSpec
from sampling.hardcases import SamplerConfig
from sampling.selection import SelectionConfig
from sampling.verifiers import JsonFormatVerifier
from store.db import connect_sync
from store.projections import check, record
from tests.integration.test_signals_store import ingest_all
from tests.store_helpers import in_store, sampled_cases

pytestmark = pytest.mark.integration



def query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with connect_sync(url) as conn:
        return conn.execute(sql, params).fetchall()


def test_sample_generate_select_through_the_log(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    ingest_all(url, [m.value for m in generate(1500, seed=3) if m.expected_reason is None], [500])
    config = SamplerConfig(budget=12, seed=1, max_cluster_share=0.25)

    first = in_store(url, lambda conn: sample_hard_cases(hard_cases(conn), config))
    assert first.new and 0 < len(first.result.chosen) <= 12
    again = in_store(url, lambda conn: sample_hard_cases(hard_cases(conn), config))
    assert (again.sample_id, again.new) == (first.sample_id, False)  # same config, seed, watermark: one event
    assert [c.prompt_key for c in again.result.chosen] == [c.prompt_key for c in first.result.chosen]
    # every chosen prompt really drew objections inside the watermark, and every user consented
    keys = [c.prompt_key for c in first.result.chosen]
    rows = query(url, "SELECT DISTINCT i.prompt_key FROM interactions i JOIN feedback f USING (interaction_id)"
                      " WHERE i.prompt_key = ANY(%s) AND (f.type IN ('regenerate', 'edit')"
                      " OR f.payload ->> 'value' = 'down' OR f.type IN ('rating', 'comparison'))", [keys])
    assert {r[0] for r in rows} == set(keys)
    assert query(url, "SELECT count(*) FROM interactions WHERE prompt_key = ANY(%s) AND NOT consent_training",
                 [keys]) == [(0,)]
    [(payload,)] = query(url, "SELECT data -> 'payload' FROM events WHERE event_id = %s::uuid", [first.sample_id])
    assert payload["watermark"] == first.result.watermark and len(payload["chosen"]) == len(keys)
    # In the log each case's conversation is sealed under the key of a user who wrote it; the store opens it.
    assert all("messages" not in c and c["sealed"] and c["sealed_for"] for c in payload["chosen"])
    chosen = sampled_cases(url, first.sample_id)
    assert [c["prompt_key"] for c in chosen] == keys
    assert all(c["messages"] for c in chosen)

    # Two candidate groups as a generator would return them: one with a clear winner, one all-equal.
    spec = SamplingSpec(n=3, seed=7)
    texts = [['{"answer": 42}', "forty-two, I think", "{broken"], ["same", "same", "same"]]
    groups = [CandidateGroup(prompt=tuple(c["messages"]), candidates=tuple(
        Candidate(text=t, token_count=len(t.split()), cumulative_logprob=None, finish_reason="stop") for t in ts),
        spec=spec, seed=spec.prompt_seed(i), model_version="m-test", prompt_tokens=10, generator="vllm")
        for i, (c, ts) in enumerate(zip(chosen, texts, strict=False))]
    events = [CandidatesGenerated.for_case(first.sample_id, c, g.to_event_payload())
              for c, g in zip(chosen, groups, strict=False)]
    assert len(in_store(url, lambda conn: record(conn, events))) == 2
    assert in_store(url, lambda conn: record(conn, events)) == []  # a re-run appends nothing

    selection = SelectionConfig(sft_threshold=1.0, min_margin=0.5, length_guard_margin=0.5)
    plan = Scoring(config=selection, scorers=[JsonFormatVerifier()])
    out = in_store(url, lambda conn: select_candidates(hard_cases(conn), plan))
    assert (out.groups, out.sft_samples, out.pairs) == (2, 1, 1)
    assert out.reasons == {"all_vetoed": 1}  # "same" x3 is not JSON: every one fails the check
    rows = query(url, "SELECT selection #>> '{pair,chosen}', selection #>> '{pair,rejected}', margin,"
                      " selection -> 'reasons' FROM candidate_groups WHERE selected_position IS NOT NULL"
                      " ORDER BY position")
    # among the equally bad, the longer one is the rejected (the tie-break leans against length bias)
    assert rows[0][:3] == ('{"answer": 42}', "forty-two, I think", 1.0) and rows[1][3] == ["all_vetoed"]
    assert in_store(url, lambda conn: select_candidates(hard_cases(conn), plan)).groups == 0

    drifts = {d.table: (d.missing, d.extra) for d in in_store(url, lambda conn: check(conn, SignalConfig()))}
    assert drifts["candidate_groups"] == (0, 0) and all(v == (0, 0) for v in drifts.values())
