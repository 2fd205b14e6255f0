"""Generation workers: a Faust agent owning one engine, consuming generation requests in batches.

Scale-out is Kafka's: `flywheel generation-worker` processes in one consumer group share the request
topic's partitions; each batch of requests is one engine call (n samples per request) and one
transaction appending CandidatesGenerated events, whose ids are named by what they say, so a
redelivered request is a no-op. An engine call that fails transiently (sampling.generation.TransientEngineError:
an overloaded, restarting or unreachable server) is retried with exponential backoff. A request that cannot be
read, or whose engine call failed otherwise or kept failing, is dead-lettered with a reason, in the store's
dead-letter table (which `flywheel stats` counts) and on the dead-letter topic; never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import faust
import orjson

from flywheel.domain.events import CandidatesGenerated
from flywheel.ports import EventLog
from flywheel.settings import Endpoints, Settings
from sampling.generation import CandidateGroup, Generator, SamplingSpec, TransientEngineError, retry_delays
from store import keys
from store.db import connect
from store.ingest import DeadLetter, Incoming, Publish, record_dead_letters
from store.unit_of_work import PostgresLog
from streams.datadir import faust_datadir
from streams.metrics import GenerationMetrics

log = logging.getLogger("flywheel.generation")

BAD_REQUEST = "bad_generation_request"
GENERATION_FAILED = "generation_failed"


def request(sample_id: str, rank: int, case: dict[str, Any], spec: SamplingSpec) -> bytes:
    """One generation request: hard case number `rank` of a sample, sampled with spec.prompt_seed(rank)."""
    return orjson.dumps({"sample_id": sample_id, "rank": rank, "case": case, "spec": spec.to_payload(),
                         "seed": spec.prompt_seed(rank)})


def _read(value: bytes) -> tuple[str, dict[str, Any], SamplingSpec, int]:
    r = orjson.loads(value)
    p = r["spec"]
    spec = SamplingSpec(n=p["n"], temperature=p["temperature"], top_p=p["top_p"], max_tokens=p["max_tokens"],
                        logprobs=p.get("logprobs"))
    if not r["case"]["messages"] or not r["case"]["prompt_key"]:
        raise ValueError("empty case")
    return str(r["sample_id"]), r["case"], spec, int(r["seed"])


def create_generation_app(settings: Settings, endpoints: Endpoints, make_generator: Callable[[], Generator], *,
                          candidate_log: Callable[[], AbstractAsyncContextManager[EventLog]] | None = None,
                          dead_letters: Publish | None = None, metrics: GenerationMetrics | None = None) -> faust.App:
    """A Faust app whose consumer group is settings.generation_group, with one engine per agent from
    `make_generator`. `candidate_log`: where the groups are recorded, opened once per run of the agent (default:
    the store on endpoints.database_url, each record committed on its own); `dead_letters`: where a request that
    cannot be read or generated goes (default: the dead-letter topic, waiting for the broker's ack); `metrics`: what
    the worker counts (requests by outcome, candidates, tokens, engine errors and durations)."""
    metrics = metrics or GenerationMetrics()
    app = faust.App(
        settings.generation_group, broker=f"kafka://{endpoints.kafka_bootstrap}", store="memory://",
        broker_credentials=settings.kafka_security().faust_credentials(),
        datadir=faust_datadir(settings, settings.generation_group),
        web_enabled=False, topic_allow_declare=False, consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.kafka_session_timeout,
        broker_heartbeat_interval=min(3.0, settings.kafka_session_timeout / 3),
        # an engine call can take minutes: the consumer must not be thrown out of the group meanwhile
        broker_max_poll_interval=3600.0, stream_processing_timeout=3600.0, producer_acks=-1,
    )
    requests = app.topic(settings.generation_topic, key_serializer="raw", value_serializer="raw")
    deadletter = app.topic(settings.deadletter_topic, key_serializer="raw", value_serializer="raw")

    async def publish(letters: Sequence[DeadLetter]) -> None:
        sent = [await deadletter.send(key=d.source.key, value=d.envelope()) for d in letters]
        await asyncio.gather(*sent)

    async def store_and_publish(letters: Sequence[DeadLetter]) -> None:
        """In the dead-letter table (what `flywheel stats` counts) and on the topic, committed once the broker
        acked: a redelivered request's letter is stored once."""
        conn = await connect(endpoints.database_url, autocommit=True)
        try:
            async with conn.transaction():
                # A request's bytes are sealed under the key of the user a letter names, as ingest's are.
                ring = await keys.load(conn, [d.user for d in letters], create=False, lock=False)
                await record_dead_letters(conn, letters, publish, ring)
        finally:
            await conn.close()

    @contextlib.asynccontextmanager
    async def store_log() -> AsyncIterator[EventLog]:
        conn = await connect(endpoints.database_url, autocommit=True)
        try:
            yield PostgresLog(conn)
        finally:
            await conn.close()

    open_log, send_dead = candidate_log or store_log, dead_letters or store_and_publish
    delays = retry_delays(settings.generation_retries, settings.generation_retry_seconds)

    async def engine_call(generator: Generator, prompts: list[Any], spec: SamplingSpec,
                          seeds: list[int]) -> list[CandidateGroup]:
        """One engine call, retried with backoff while the engine fails transiently."""
        for attempt in range(len(delays) + 1):
            try:
                with metrics.engine_seconds.time():
                    return await asyncio.to_thread(generator.generate, prompts, spec, seeds)
            except TransientEngineError as e:
                if attempt == len(delays):
                    raise
                metrics.engine_errors.labels("retried").inc()
                log.warning("engine call failed (%s): retry %d of %d in %.1fs", e, attempt + 1, len(delays),
                            delays[attempt])
                await asyncio.sleep(delays[attempt])
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def dead(reason: str, detail: str, messages: Sequence[Incoming]) -> None:
        """The ingest worker's dead letters (reason, where from, original bytes), acked before going on."""
        log.error("dead-lettering %d generation request(s): %s: %s", len(messages), reason, detail)
        await send_dead([DeadLetter(reason, detail, m) for m in messages])
        metrics.requests.labels("dead_lettered").inc(len(messages))

    async def serve(generator: Generator, candidates: EventLog, events: Sequence[faust.EventT]) -> None:
        """One batch of requests: one engine call per distinct sampling spec, one record per call."""
        readable: dict[str, list[tuple[Incoming, str, dict[str, Any], int]]] = {}
        specs: dict[str, SamplingSpec] = {}
        for event in events:
            m = event.message
            message = Incoming(m.topic, m.partition, m.offset, m.key, event.value)
            try:
                sample_id, case, spec, seed = _read(message.value)
            except (ValueError, KeyError, TypeError) as e:
                await dead(BAD_REQUEST, f"{type(e).__name__}: {e}", [message])
                continue
            key = orjson.dumps(spec.to_payload(), option=orjson.OPT_SORT_KEYS).decode()
            readable.setdefault(key, []).append((message, sample_id, case, seed))
            specs[key] = spec
        for key, batch in readable.items():
            try:
                groups = await engine_call(generator, [c["messages"] for _, _, c, _ in batch], specs[key],
                                           [seed for *_, seed in batch])
            except Exception as e:  # the engine refused these prompts, or kept failing: dead-letter them, serve on
                metrics.engine_errors.labels("dead_lettered").inc()
                await dead(GENERATION_FAILED, f"{type(e).__name__}: {e}", [v for v, *_ in batch])
                continue
            payloads = [g.to_event_payload() for g in groups]
            await candidates.record([CandidatesGenerated.for_case(sample_id, case, p)
                                     for (_, sample_id, case, _), p in zip(batch, payloads, strict=True)])
            metrics.requests.labels("generated").inc(len(batch))
            metrics.candidates.inc(sum(len(p["candidates"]) for p in payloads))
            metrics.completion_tokens.inc(sum(p["completion_tokens"] for p in payloads))

    @app.agent(requests, name="generate")
    async def generate(stream: faust.StreamT) -> None:
        generator = make_generator()
        await asyncio.to_thread(generator.load)
        async with open_log() as candidates:
            try:
                # take_events: take() with the messages (for dead letters); faust.Stream has it, StreamT does not say so
                async for events in stream.take_events(settings.generation_batch, within=1.0):  # type: ignore[attr-defined]
                    await serve(generator, candidates, events)
            finally:
                generator.unload()

    return app
