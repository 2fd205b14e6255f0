"""Generation workers: a Faust agent owning one engine, consuming generation requests in batches.

Scale-out is Kafka's: `flywheel generation-worker` processes in one consumer group share the request
topic's partitions; each batch of requests is one engine call (n samples per request) and one
transaction appending CandidatesGenerated events, whose ids are named by what they say, so a
redelivered request is a no-op. A request that cannot be read or generated is dead-lettered with a
reason, never dropped.
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
from sampling.generation import Generator, SamplingSpec
from store.db import connect
from store.ingest import DeadLetter, Incoming, Publish
from store.unit_of_work import PostgresLog
from streams.datadir import faust_datadir

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
                          dead_letters: Publish | None = None) -> faust.App:
    """A Faust app whose consumer group is settings.generation_group, with one engine per agent from
    `make_generator`. `candidate_log`: where the groups are recorded, opened once per run of the agent (default:
    the store on endpoints.database_url, each record committed on its own); `dead_letters`: where a request that
    cannot be read or generated goes (default: the dead-letter topic, waiting for the broker's ack)."""
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

    @contextlib.asynccontextmanager
    async def store_log() -> AsyncIterator[EventLog]:
        conn = await connect(endpoints.database_url, autocommit=True)
        try:
            yield PostgresLog(conn)
        finally:
            await conn.close()

    open_log, send_dead = candidate_log or store_log, dead_letters or publish

    async def dead(reason: str, detail: str, messages: Sequence[Incoming]) -> None:
        """The ingest worker's dead letters (reason, where from, original bytes), acked before going on."""
        log.error("dead-lettering %d generation request(s): %s: %s", len(messages), reason, detail)
        await send_dead([DeadLetter(reason, detail, m) for m in messages])

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
                groups = await asyncio.to_thread(generator.generate, [c["messages"] for _, _, c, _ in batch],
                                                 specs[key], [seed for *_, seed in batch])
            except Exception as e:  # the engine refused these prompts: dead-letter them, keep serving
                await dead(GENERATION_FAILED, f"{type(e).__name__}: {e}", [v for v, *_ in batch])
                continue
            await candidates.record([CandidatesGenerated.for_case(sample_id, case, g.to_event_payload())
                                     for (_, sample_id, case, _), g in zip(batch, groups, strict=True)])

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
