"""The hard-case loop on the real engine: sample from real read models → vLLM candidate groups (n per request)
→ selection by the tiny reward model through `flywheel select` → a round whose groups.jsonl holds them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from flywheel.bootstrap import hard_cases, round_ops  # noqa: E402
from flywheel.domain.commands import BuildRound  # noqa: E402
from flywheel.services.generate import generate_candidates  # noqa: E402
from flywheel.services.sample import sample_hard_cases  # noqa: E402
from flywheel.settings import Settings  # noqa: E402
from flywheel.simulator import generate  # noqa: E402
from sampling.adapters import tiny_model  # noqa: E402
from sampling.adapters.vllm import VLLMGenerator  # noqa: E402
from sampling.generation import SamplingSpec  # noqa: E402
from sampling.hardcases import SamplerConfig  # noqa: E402
from store.db import connect_sync  # noqa: E402
from tests.conftest import settings_env  # noqa: E402
from tests.integration.test_signals_store import ingest_all  # noqa: E402
from tests.store_helpers import in_store  # noqa: E402

pytestmark = pytest.mark.vllm



def test_sample_generate_select_build_on_the_real_engine(
    settings: Settings, run_cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    url = settings.database_url
    ingest_all(url, [m.value for m in generate(1200, seed=4) if m.expected_reason is None], [400])
    sampled = in_store(url, lambda conn: sample_hard_cases(hard_cases(conn), SamplerConfig(
        budget=4, max_cluster_share=0.5)))
    assert len(sampled.result.chosen) == 4

    policy = tiny_model.ensure(tmp_path_factory.getbasetemp() / "tiny-model", seed=0)
    engine = VLLMGenerator(policy, "tiny-policy@seed0", kv_cache_memory_bytes=256 * 2**20)
    engine.load()
    try:
        spec = SamplingSpec(n=3, max_tokens=12, seed=5)
        out = in_store(url, lambda conn: generate_candidates(hard_cases(conn), engine, spec, batch=2))
        again = in_store(url, lambda conn: generate_candidates(hard_cases(conn), engine, spec))
    finally:
        engine.unload()
    assert (out.groups_new, out.candidates) == (4, 12) and again.groups_new == 0  # a re-run adds nothing
    with connect_sync(url) as conn:
        groups = conn.execute("SELECT prompt_key, jsonb_array_length(candidates), sampling ->> 'seed'"
                              " FROM candidate_groups ORDER BY position").fetchall()
    assert {g[0] for g in groups} == {c.prompt_key for c in sampled.result.chosen}
    assert all(n == 3 for _, n, _ in groups) and len({seed for *_, seed in groups}) == 4

    env_settings = settings.model_copy(update={"reward_model": str(tiny_model.reward_model_dir(policy))})
    selected = subprocess.run(
        [sys.executable, "-m", "flywheel", "select", "--min-margin", "0", "--sft-threshold", "-100", "--json"],
        env=settings_env(env_settings),
        capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(selected.stdout)
    assert report["groups"] == 4 and report["sft_samples"] == 4  # every best-of-3 clears a threshold of -100

    published = in_store(url, lambda conn: round_ops(conn, tmp_path / "rounds").build(BuildRound()))
    lines = [json.loads(line) for f in published.path.glob("*/groups.jsonl") for line in f.read_text().splitlines()]
    assert len(lines) == 4 and all(len(g["candidates"]) == 3 for g in lines)
    assert all(c["scores"][0]["scorer"] == "reward_model" for g in lines for c in g["candidates"])
