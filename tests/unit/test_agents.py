"""The Faust agents under agent.test_context(), with their ports faked: no Postgres, no broker."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import faust
import orjson
import pytest

from flywheel.domain.events import CandidatesGenerated
from flywheel.domain.log import StoredEvent
from flywheel.domain.tracking import TrackedBeyondLogEnd
from flywheel.domain.validation import BAD_JSON, OVERSIZE, Accepted, InvalidEvent
from flywheel.settings import Endpoints, Settings
from sampling.generation import (
    Candidate,
    CandidateGroup,
    Messages,
    SamplingSpec,
    TransientEngineError,
    retry_delays,
)
from store.ingest import BatchOutcome, BrokerView, DeadLetter, Decoded
from streams.app import create_app
from streams.generation_worker import BAD_REQUEST, GENERATION_FAILED, create_generation_app, request
from streams.metrics import GenerationMetrics, Metrics
from tests.factories import interaction, raw, thumbs

T = TypeVar("T")
# Nothing listens there, so the store would refuse at once; the guard below fails any other connection attempt.
NOWHERE = Endpoints("postgresql://nobody@127.0.0.1:9/none", "127.0.0.1:9")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Kafka clients and asyncio connect through socket.socket: a connection attempt here is a bug."""

    def refuse(self: socket.socket, address: Any) -> None:
        raise AssertionError(f"a unit test tried to connect to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def _settings(home: Path, **overrides: Any) -> Settings:
    # Batches are always filled in these tests, so a long `within` only keeps a slow machine from splitting them.
    values: dict[str, Any] = {
        "home": home, "database_url": NOWHERE.database_url, "kafka_bootstrap": NOWHERE.kafka_bootstrap,
        "feedback_topic": "feedback", "deadletter_topic": "deadletter", "generation_topic": "generation",
        "batch_size": 3, "batch_timeout": 5.0, "generation_batch": 2, "max_event_bytes": 4096,
    }
    return Settings(**{**values, **overrides})


async def _until(done: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(asyncio.wait_for(main(), timeout=10))


async def _ignore(agent: Any, exc: BaseException) -> None:
    """An agent's error handler for tests that look for the error elsewhere."""


# The ingest agent


class FakeIngestion:
    """The ingest use case as the agent drives it: records what it is handed, and answers `outcome` or `error`."""

    def __init__(self, outcome: BatchOutcome | None = None, error: BaseException | None = None) -> None:
        self.outcome, self.error = outcome or BatchOutcome(), error
        self.views: list[BrokerView] = []
        self.batches: list[tuple[list[Decoded], BrokerView]] = []
        self.opened = self.closed = 0

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[FakeIngestion]:
        self.opened += 1
        try:
            yield self
        finally:
            self.closed += 1

    async def broker_view(self, batch: Sequence[Decoded]) -> BrokerView:
        view = BrokerView(topic_ids={"feedback": f"id-{len(self.views)}"})
        self.views.append(view)
        return view

    async def ingest(self, batch: Sequence[Decoded], broker: BrokerView) -> BatchOutcome:
        self.batches.append((list(batch), broker))
        if self.error is not None:
            raise self.error
        return self.outcome


def _ingest_agent(home: Path, fake: FakeIngestion, metrics: Metrics | None = None,
                  **overrides: Any) -> tuple[faust.App, faust.types.AgentT]:
    app = create_app(_settings(home, **overrides), NOWHERE, metrics, ingestion=fake.open)
    return app, app.agents["ingest"]


def test_a_batch_of_feedback_reaches_the_use_case_decoded_in_order(tmp_path: Path) -> None:
    fake = FakeIngestion()
    sent = [interaction("i1"), thumbs("i1"), thumbs("i1", "down")]

    async def main() -> None:
        _, agent = _ingest_agent(tmp_path, fake)
        # The feedback topic itself as the test channel: its schema decodes the raw bytes, as in the worker.
        async with agent.test_context(channel=agent.channel) as test:
            for e in sent:
                await test.put(raw(e), key=e["interaction_id"].encode())
            await _until(lambda: len(fake.batches) == 1, "the batch")

    _run(main)
    [(batch, broker)] = fake.batches
    assert [(d.message.topic, d.message.offset, d.message.key) for d in batch] == [
        ("feedback", 0, b"i1"), ("feedback", 1, b"i1"), ("feedback", 2, b"i1")]
    assert [d.message.value for d in batch] == [raw(e) for e in sent]
    assert all(isinstance(d.result, Accepted) for d in batch)
    assert [d.result.data["event_id"] for d in batch if isinstance(d.result, Accepted)] == [
        e["event_id"] for e in sent]
    assert broker is fake.views[0]  # stored with the broker's view of this very batch
    assert (fake.opened, fake.closed) == (1, 1)


def test_bad_messages_are_handed_on_with_their_reason_and_original_bytes(tmp_path: Path) -> None:
    fake = FakeIngestion()
    oversize = raw(interaction("i2", prompt="x" * 5000))

    async def main() -> None:
        _, agent = _ingest_agent(tmp_path, fake, batch_size=4)
        async with agent.test_context(channel=agent.channel) as test:
            await test.put(b"{not json", key=b"k1")
            await test.put(raw(interaction("i1")), key=b"i1")
            await test.put(oversize, key=b"i2")
            await test.put(None, key=b"k3")  # a tombstone is no event either
            await _until(lambda: len(fake.batches) == 1, "the batch")

    _run(main)
    [(batch, _)] = fake.batches
    rejects = [(d.message.offset, d.message.value, d.result.reason) for d in batch
               if isinstance(d.result, InvalidEvent)]
    assert rejects == [(0, b"{not json", BAD_JSON), (2, oversize, OVERSIZE), (3, b"", BAD_JSON)]
    assert isinstance(batch[1].result, Accepted)  # the good one in between is not held back by them


def test_what_the_use_case_reports_reaches_the_metrics(tmp_path: Path) -> None:
    outcome = BatchOutcome(stored=Counter({"interaction": 1, "thumbs": 1}), dead=Counter({BAD_JSON: 1}))
    fake, metrics = FakeIngestion(outcome), Metrics()

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    async def main() -> None:
        _, agent = _ingest_agent(tmp_path, fake, metrics)
        async with agent.test_context(channel=agent.channel) as test:
            for value in (raw(interaction("i1")), raw(thumbs("i1")), b"{not json"):
                await test.put(value, key=b"i1")
            await _until(lambda: sample("flywheel_batch_seconds_count") == 1, "the batch to be observed")

    _run(main)
    assert sample("flywheel_events_ingested_total", type="thumbs") == 1
    assert sample("flywheel_events_ingested_total", type="interaction") == 1
    assert sample("flywheel_events_dead_lettered_total", reason=BAD_JSON) == 1


def test_an_error_of_the_use_case_stops_the_agent_and_is_not_swallowed(tmp_path: Path) -> None:
    error = RuntimeError("the store went away")
    fake = FakeIngestion(error=error)
    raised: list[BaseException] = []

    async def on_error(agent: Any, exc: BaseException) -> None:
        raised.append(exc)

    async def main() -> None:
        _, agent = _ingest_agent(tmp_path, fake, batch_size=1)
        async with agent.test_context(channel=agent.channel, on_error=on_error) as test:
            await test.put(raw(interaction("i1")), key=b"i1")
            await _until(lambda: bool(raised), "the agent's error")
            with pytest.raises(RuntimeError, match="the store went away"):
                await test.put(raw(interaction("i2")), key=b"i2")

    _run(main)
    assert raised == [error]
    assert len(fake.batches) == 1  # nothing read on past the failed batch
    assert fake.closed == 1


def test_a_tracked_offset_beyond_the_log_end_crashes_the_worker(tmp_path: Path) -> None:
    error = TrackedBeyondLogEnd("feedback", 0, tracked=9, log_end=3)
    fake = FakeIngestion(error=error)

    async def main() -> faust.App:
        app, agent = _ingest_agent(tmp_path, fake, batch_size=1)
        async with agent.test_context(channel=agent.channel, on_error=_ignore) as test:
            await test.put(raw(interaction("i1")), key=b"i1")
            await _until(lambda: app.crashed, "the app to crash")
        return app

    app = _run(main)
    assert app.crash_reason is error  # a person must decide: the worker does not carry on


# The generation agent


class FakeGenerator:
    """Answers spec.n candidates per prompt; refuses (raises) a batch holding a prompt in `refuse`."""

    name = "fake"
    model_version = "fake-1"

    def __init__(self, refuse: Sequence[str] = ()) -> None:
        self.refuse = set(refuse)
        self.calls: list[tuple[list[str], SamplingSpec, list[int]]] = []
        self.loaded = self.unloaded = False

    def load(self) -> None:
        self.loaded = True

    def unload(self) -> None:
        self.unloaded = True

    def generate(self, prompts: Sequence[Messages], spec: SamplingSpec,
                 seeds: Sequence[int] | None = None) -> list[CandidateGroup]:
        assert seeds is not None
        if not self.loaded or self.unloaded:
            raise RuntimeError("the engine is not loaded")
        texts = [p[-1]["content"] for p in prompts]
        self.calls.append((texts, spec, list(seeds)))
        if self.refuse & set(texts):
            raise ValueError("prompt longer than the model's context")
        return [CandidateGroup(prompt=tuple(p), candidates=tuple(
            Candidate(text=f"answer {j}", token_count=2, cumulative_logprob=None, finish_reason="stop")
            for j in range(spec.n)), spec=spec, seed=seed, model_version=self.model_version, prompt_tokens=3,
            generator=self.name) for p, seed in zip(prompts, seeds, strict=True)]


class FakeLog:
    """The event log the groups are recorded in."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.records: list[list[Any]] = []
        self.opened = self.closed = 0

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[FakeLog]:
        self.opened += 1
        try:
            yield self
        finally:
            self.closed += 1

    async def head(self) -> int:
        return sum(map(len, self.records))

    async def record(self, events: Sequence[Any]) -> list[StoredEvent]:
        if self.error is not None:
            raise self.error
        self.records.append(list(events))
        return []


class Letters:
    """The dead-letter topic."""

    def __init__(self) -> None:
        self.sent: list[DeadLetter] = []

    async def __call__(self, letters: Sequence[DeadLetter]) -> None:
        self.sent.extend(letters)


def _case(prompt: str) -> dict[str, Any]:
    return {"prompt_key": f"key-{prompt}", "messages": [{"role": "user", "content": prompt}], "app_id": "support-bot",
            "tags": ["billing"]}


def _generation_agent(home: Path, generator: FakeGenerator, events: FakeLog, letters: Letters,
                      metrics: GenerationMetrics | None = None, **overrides: Any) -> faust.types.AgentT:
    app = create_generation_app(_settings(home, **overrides), NOWHERE, lambda: generator, candidate_log=events.open,
                                dead_letters=letters, metrics=metrics)
    return app.agents["generate"]


class FlakyGenerator(FakeGenerator):
    """Fails transiently (an overloaded or restarting server) on its first `failures` calls, then answers."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def generate(self, prompts: Sequence[Messages], spec: SamplingSpec,
                 seeds: Sequence[int] | None = None) -> list[CandidateGroup]:
        if self.failures:
            self.failures -= 1
            self.calls.append(([p[-1]["content"] for p in prompts], spec, list(seeds or ())))
            raise TransientEngineError("chat completion failed: HTTP 503: overloaded")
        return super().generate(prompts, spec, seeds)


def _count(metrics: GenerationMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_an_engine_that_fails_transiently_is_retried_with_backoff_until_it_answers(tmp_path: Path) -> None:
    generator, events, letters, metrics = FlakyGenerator(failures=2), FakeLog(), Letters(), GenerationMetrics()

    async def main() -> None:
        agent = _generation_agent(tmp_path, generator, events, letters, metrics, generation_batch=1,
                                  generation_retries=3, generation_retry_seconds=0.01)
        async with agent.test_context(channel=agent.channel) as test:
            await test.put(request("s", 0, _case("q0"), SamplingSpec(n=2)), key=b"key-q0")
            await _until(lambda: len(events.records) == 1, "the group after the retries")

    _run(main)
    assert [texts for texts, *_ in generator.calls] == [["q0"]] * 3 and letters.sent == []
    assert [e.prompt_key for e in events.records[0]] == ["key-q0"]
    assert _count(metrics, "flywheel_generation_engine_errors_total", outcome="retried") == 2
    assert _count(metrics, "flywheel_generation_requests_total", outcome="generated") == 1
    assert _count(metrics, "flywheel_generation_candidates_total") == 2
    assert _count(metrics, "flywheel_generation_completion_tokens_total") == 4


def test_an_engine_that_keeps_failing_has_its_requests_dead_lettered_after_the_retries(tmp_path: Path) -> None:
    generator, events, letters, metrics = FlakyGenerator(failures=100), FakeLog(), Letters(), GenerationMetrics()

    async def main() -> None:
        agent = _generation_agent(tmp_path, generator, events, letters, metrics, generation_batch=1,
                                  generation_retries=2, generation_retry_seconds=0.01)
        async with agent.test_context(channel=agent.channel) as test:
            await test.put(request("s", 0, _case("q0"), SamplingSpec(n=1)), key=b"key-q0")
            await _until(lambda: bool(letters.sent), "the dead letter")
            generator.failures = 0  # the engine is back: the next request is served
            await test.put(request("s", 1, _case("q1"), SamplingSpec(n=1)), key=b"key-q1")
            await _until(lambda: len(events.records) == 1, "the next request's group")

    _run(main)
    [letter] = letters.sent
    assert (letter.reason, letter.detail) == (GENERATION_FAILED,
                                              "TransientEngineError: chat completion failed: HTTP 503: overloaded")
    assert [texts for texts, *_ in generator.calls] == [["q0"]] * 3 + [["q1"]]  # the first try and two retries
    assert _count(metrics, "flywheel_generation_engine_errors_total", outcome="retried") == 2
    assert _count(metrics, "flywheel_generation_engine_errors_total", outcome="dead_lettered") == 1
    assert _count(metrics, "flywheel_generation_requests_total", outcome="dead_lettered") == 1
    assert _count(metrics, "flywheel_generation_requests_total", outcome="generated") == 1


def test_the_backoff_doubles_up_to_a_minute() -> None:
    assert retry_delays(4, 1.0) == [1.0, 2.0, 4.0, 8.0]
    assert retry_delays(3, 40.0) == [40.0, 60.0, 60.0] and retry_delays(0, 1.0) == []


def test_each_request_becomes_one_recorded_group_from_one_engine_call(tmp_path: Path) -> None:
    generator, events, letters = FakeGenerator(), FakeLog(), Letters()
    spec = SamplingSpec(n=3, seed=100)

    async def main() -> None:
        agent = _generation_agent(tmp_path, generator, events, letters)
        async with agent.test_context(channel=agent.channel) as test:
            for rank, prompt in enumerate(["q0", "q1"]):
                await test.put(request("sample-1", rank, _case(prompt), spec), key=f"key-{prompt}".encode())
            await _until(lambda: len(events.records) == 1, "the groups to be recorded")

    _run(main)
    # The request carries each prompt's seed; the spec it is sampled with is the rest of the sampling.
    assert [(texts, s.to_payload(), seeds) for texts, s, seeds in generator.calls] == [
        (["q0", "q1"], spec.to_payload(), [spec.prompt_seed(0), spec.prompt_seed(1)])]
    [recorded] = events.records
    assert all(isinstance(e, CandidatesGenerated) for e in recorded)
    assert [(e.sample_id, e.prompt_key, e.app_id, e.tags) for e in recorded] == [
        ("sample-1", "key-q0", "support-bot", ("billing",)), ("sample-1", "key-q1", "support-bot", ("billing",))]
    assert [(e.group["seed"], len(e.group["candidates"])) for e in recorded] == [
        (spec.prompt_seed(0), 3), (spec.prompt_seed(1), 3)]
    assert letters.sent == []
    assert generator.unloaded and (events.opened, events.closed) == (1, 1)


def test_a_request_that_cannot_be_read_is_dead_lettered_and_the_rest_generated(tmp_path: Path) -> None:
    generator, events, letters = FakeGenerator(), FakeLog(), Letters()
    broken = b'{"sample_id": "s", "rank": 0}'

    async def main() -> None:
        agent = _generation_agent(tmp_path, generator, events, letters)
        async with agent.test_context(channel=agent.channel) as test:
            await test.put(broken, key=b"x")
            await test.put(request("sample-1", 0, _case("q0"), SamplingSpec(n=1)), key=b"key-q0")
            await _until(lambda: len(events.records) == 1, "the readable request's group")

    _run(main)
    [letter] = letters.sent
    assert (letter.reason, letter.source.value, letter.source.key, letter.source.offset) == (
        BAD_REQUEST, broken, b"x", 0)
    assert letter.detail.startswith("KeyError")  # says what was missing
    assert [texts for texts, *_ in generator.calls] == [["q0"]]
    assert [e.prompt_key for e in events.records[0]] == ["key-q0"]


def test_requests_the_generator_refuses_are_dead_lettered_and_it_serves_on(tmp_path: Path) -> None:
    generator, events, letters = FakeGenerator(refuse=["too long"]), FakeLog(), Letters()
    small, large = SamplingSpec(n=1), SamplingSpec(n=2)

    async def main() -> None:
        agent = _generation_agent(tmp_path, generator, events, letters)
        async with agent.test_context(channel=agent.channel) as test:
            # One batch, two sampling specs: two engine calls, of which the engine refuses one.
            await test.put(request("s", 0, _case("too long"), small), key=b"key-too long")
            await test.put(request("s", 1, _case("q1"), large), key=b"key-q1")
            await _until(lambda: len(events.records) == 1, "the accepted request's group")
            await test.put(request("s", 2, _case("q2"), small), key=b"key-q2")
            await test.put(request("s", 3, _case("q3"), small), key=b"key-q3")
            await _until(lambda: len(events.records) == 2, "the next batch's groups")

    _run(main)
    [letter] = letters.sent
    assert (letter.reason, letter.source.offset) == (GENERATION_FAILED, 0)
    assert letter.detail == "ValueError: prompt longer than the model's context"
    assert orjson.loads(letter.source.value)["case"]["prompt_key"] == "key-too long"
    assert [texts for texts, *_ in generator.calls] == [["too long"], ["q1"], ["q2", "q3"]]
    assert [[e.prompt_key for e in r] for r in events.records] == [["key-q1"], ["key-q2", "key-q3"]]


def test_an_error_of_the_event_log_stops_the_agent_and_unloads_the_engine(tmp_path: Path) -> None:
    error = ConnectionError("the store went away")
    generator, events, letters = FakeGenerator(), FakeLog(error=error), Letters()
    raised: list[BaseException] = []

    async def on_error(agent: Any, exc: BaseException) -> None:
        raised.append(exc)

    async def main() -> None:
        agent = _generation_agent(tmp_path, generator, events, letters, generation_batch=1)
        async with agent.test_context(channel=agent.channel, on_error=on_error) as test:
            await test.put(request("s", 0, _case("q0"), SamplingSpec(n=1)), key=b"key-q0")
            await _until(lambda: bool(raised), "the agent's error")

    _run(main)
    assert raised == [error]
    assert letters.sent == []  # a failed record is not the request's fault: redelivered, not dead-lettered
    assert generator.unloaded and events.closed == 1
