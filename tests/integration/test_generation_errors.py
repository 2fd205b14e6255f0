"""A real `flywheel generation-worker` process against a server that speaks the OpenAI chat API as vLLM does (a
stand-in in this process: vLLM needs its own virtualenv): transient errors are retried with backoff; an engine that
keeps failing has its requests dead-lettered in the store, where `flywheel stats` counts them; the worker's metrics
endpoint says so. And `flywheel generate --json` on the same server, without workers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from flywheel.settings import Settings
from flywheel.simulator import generate
from store.db import connect_sync
from tests.conftest import settings_env, wait_until
from tests.integration.test_metrics_endpoints import free_port, sample, scrape
from tests.integration.test_signals_store import ingest_all

pytestmark = pytest.mark.integration

MODEL = "stand-in"


class Server:
    """Fails the first `failures` chat completions with 503 (an overloaded server), then answers each with `n`
    choices of three tokens."""

    def __init__(self, failures: int) -> None:
        self.failures, self.completions, self.refused = failures, 0, 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(200, {"data": [{"id": MODEL}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    refuse = server.failures > 0
                    if refuse:
                        server.failures -= 1
                        server.refused += 1
                    else:
                        server.completions += 1
                if refuse:
                    self._send(503, {"error": "overloaded"})
                    return
                self._send(200, {"choices": [{"index": i, "message": {"content": f"answer {i}"}, "token_ids": [1, 2, 3],
                                              "finish_reason": "stop"} for i in range(body["n"])],
                                 "prompt_token_ids": [7, 8]})

        lock = threading.Lock()
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


@pytest.fixture
def serve() -> Iterator[Callable[[int], Server]]:
    servers: list[Server] = []

    def start(failures: int) -> Server:
        servers.append(Server(failures))
        return servers[-1]

    yield start
    for s in servers:
        s.http.shutdown()


def _worker_settings(settings: Settings, server: Server, retries: int, batch: int = 4) -> Settings:
    tag = settings.consumer_group
    return settings.model_copy(update={
        "generation_topic": f"gen-{tag}", "generation_group": f"gen-{tag}", "generator_url": server.url,
        "generator_model": MODEL, "generation_batch": batch, "generation_retries": retries,
        "generation_retry_seconds": 0.2, "generation_metrics_port": free_port()})


def _cli(settings: Settings, *args: str) -> Any:
    done = subprocess.run([sys.executable, "-m", "flywheel", *args, "--json"], env=settings_env(settings),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _requests_sent(settings: Settings, budget: int) -> str:
    ingest_all(settings.database_url, [m.value for m in generate(900, seed=2) if m.expected_reason is None], [300])
    sampled = _cli(settings, "sample", "--budget", str(budget), "--max-cluster-share", "0.5")
    assert sampled["chosen"] == budget
    assert _cli(settings, "generate", "--via-kafka", "-n", "2")["requests"] == budget
    return str(sampled["sample_id"])


def _count(settings: Settings, sql: str, params: list[Any]) -> Callable[[], bool]:
    """A predicate holding the count `sql` gives (in .last); true once it is above 0."""
    def check() -> bool:
        with connect_sync(settings.database_url) as conn:
            row = conn.execute(sql, params).fetchone()
        check.last = row  # type: ignore[attr-defined]
        return bool(row and row[0])

    return check


def test_transient_engine_errors_are_retried_and_the_requests_served(
    settings: Settings, serve: Callable[[int], Server], start_worker: Callable[..., subprocess.Popen[bytes]],
) -> None:
    server = serve(2)
    worker = _worker_settings(settings, server, retries=3, batch=1)  # one request per engine call
    sample_id = _requests_sent(worker, budget=3)
    start_worker("generation-worker", worker)
    groups = _count(worker, "SELECT count(*) FROM candidate_groups WHERE sample_id = %s::uuid HAVING count(*) = 3",
                    [sample_id])
    wait_until(groups, timeout=120, what="3 candidate groups after the engine recovered")
    assert server.refused == 2
    port = worker.generation_metrics_port
    wait_until(sample(port, "flywheel_generation_requests_total", outcome="generated"), timeout=30,
               what="the generated requests on the endpoint")
    seen = scrape(port)
    assert seen[("flywheel_generation_requests_total", (("outcome", "generated"),))] == 3
    assert seen[("flywheel_generation_engine_errors_total", (("outcome", "retried"),))] == 2
    assert seen[("flywheel_generation_candidates_total", ())] == 6
    assert seen[("flywheel_generation_completion_tokens_total", ())] == 18
    assert _cli(worker, "stats")["dead_lettered"]["total"] == 0


def test_an_engine_that_keeps_failing_dead_letters_into_the_store_and_stats(
    settings: Settings, serve: Callable[[int], Server], start_worker: Callable[..., subprocess.Popen[bytes]],
) -> None:
    server = serve(10**6)
    worker = _worker_settings(settings, server, retries=2)
    _requests_sent(worker, budget=3)
    start_worker("generation-worker", worker)
    dead = _count(worker, "SELECT count(*) FROM dead_letters WHERE reason = 'generation_failed' HAVING count(*) = 3",
                  [])
    wait_until(dead, timeout=120, what="3 generation requests in the dead-letter table")
    with connect_sync(worker.database_url) as conn:
        topics, details = zip(*conn.execute("SELECT topic, detail FROM dead_letters").fetchall(), strict=True)
    assert set(topics) == {worker.generation_topic}
    assert all(d == "TransientEngineError: chat completion failed: HTTP 503: {\"error\": \"overloaded\"}"
               for d in details), details
    stats = _cli(worker, "stats")
    assert stats["dead_lettered"]["by_reason"] == {"generation_failed": 3}
    port = worker.generation_metrics_port
    wait_until(sample(port, "flywheel_generation_requests_total", outcome="dead_lettered"), timeout=30,
               what="the dead-lettered requests on the endpoint")
    seen = scrape(port)
    assert seen[("flywheel_generation_requests_total", (("outcome", "dead_lettered"),))] == 3
    calls = seen[("flywheel_generation_engine_errors_total", (("outcome", "dead_lettered"),))]
    # each engine call is tried three times (two retries) before its requests are dead-lettered
    assert seen[("flywheel_generation_engine_errors_total", (("outcome", "retried"),))] == 2 * calls
    # Each try of a call posts its prompts together and stops at the first refusal (posts not yet sent are
    # cancelled), so at least one post per try: three tries per call.
    assert server.completions == 0 and server.refused >= 3 * calls


def test_generate_in_process_answers_in_json(settings: Settings, serve: Callable[[int], Server]) -> None:
    server = serve(0)
    engine = _worker_settings(settings, server, retries=0)
    ingest_all(engine.database_url, [m.value for m in generate(900, seed=2) if m.expected_reason is None], [300])
    sampled = _cli(engine, "sample", "--budget", "3", "--max-cluster-share", "0.5")
    out = _cli(engine, "generate", "-n", "2")
    assert out == {"sample_id": sampled["sample_id"], "prompts": 3, "groups_new": 3, "candidates": 6,
                   "completion_tokens": 18}
    assert server.completions == 3
