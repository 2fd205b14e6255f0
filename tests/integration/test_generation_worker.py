"""Generation workers through Kafka: `flywheel generate --via-kafka` → `flywheel generation-worker` (one engine,
batched requests) → CandidatesGenerated events; a malformed request is dead-lettered with its reason."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Callable

import pytest

pytest.importorskip("vllm")

from kafka import KafkaConsumer, KafkaProducer  # noqa: E402

from flywheel.bootstrap import hard_cases  # noqa: E402
from flywheel.services.sample import sample_hard_cases  # noqa: E402
from flywheel.settings import Settings  # noqa: E402
from flywheel.simulator import generate  # noqa: E402
from sampling.adapters import tiny_model  # noqa: E402
from sampling.hardcases import SamplerConfig  # noqa: E402
from store.db import connect_sync  # noqa: E402
from tests.conftest import wait_until  # noqa: E402
from tests.integration.test_signals_store import ingest_all  # noqa: E402
from tests.store_helpers import in_store  # noqa: E402

pytestmark = pytest.mark.vllm


def test_requests_through_kafka_become_candidate_groups(
    settings: Settings, run_cli: Callable[..., subprocess.CompletedProcess[str]],
    start_worker: Callable[..., subprocess.Popen[bytes]], tmp_path_factory: pytest.TempPathFactory,
) -> None:
    url = settings.database_url
    ingest_all(url, [m.value for m in generate(1200, seed=6) if m.expected_reason is None], [600])
    sampled = in_store(url, lambda conn: sample_hard_cases(hard_cases(conn), SamplerConfig(
        budget=5, max_cluster_share=0.5)))
    policy = tiny_model.ensure(tmp_path_factory.getbasetemp() / "tiny-model", seed=0)
    worker_settings = settings.model_copy(update={"generator_model": str(policy), "generation_batch": 8})

    sent = json.loads(run_cli("generate", "--via-kafka", "-n", "2", "--max-tokens", "8", "--json").stdout)
    assert sent == {"sample_id": sampled.sample_id, "requests": 5}
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    producer.send(settings.generation_topic, key=b"x", value=b'{"sample_id": "s", "rank": 0}').get(30)
    producer.close()
    worker = start_worker("generation-worker", worker_settings)

    def groups() -> bool:
        with connect_sync(url) as conn:
            rows = conn.execute("SELECT count(*), count(DISTINCT sampling ->> 'seed') FROM candidate_groups"
                                " WHERE sample_id = %s::uuid", [sampled.sample_id]).fetchone()
        groups.last = rows  # type: ignore[attr-defined]
        return rows == (5, 5)

    wait_until(groups, timeout=400, what="5 candidate groups from the generation worker")
    assert worker.poll() is None
    with connect_sync(url) as conn:
        counts = conn.execute("SELECT jsonb_array_length(candidates) FROM candidate_groups").fetchall()
        logged = conn.execute("SELECT data -> 'payload' FROM events WHERE type = 'candidates_generated'").fetchall()
    assert counts == [(2,)] * 5
    # In the log, each group's prompt and candidates are sealed under the key of its case's user.
    assert len(logged) == 5 and all("prompt" not in p and "candidates" not in p and p["sealed_for"] and p["sealed"]
                                    for (p,) in logged)

    consumer = KafkaConsumer(settings.deadletter_topic, bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    letters = [json.loads(m.value) for m in consumer]
    consumer.close()
    assert [d["reason"] for d in letters] == ["bad_generation_request"]
    assert "KeyError" in letters[0]["detail"]  # the detail says what was missing
    assert base64.b64decode(letters[0]["original_b64"]) == b'{"sample_id": "s", "rank": 0}'
    assert (letters[0]["topic"], base64.b64decode(letters[0]["key_b64"])) == (settings.generation_topic, b"x")
