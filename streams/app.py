"""The Faust worker: a thin ingest agent around its port (streams.ingestion), plus the parked-feedback sweep."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence, Set
from functools import partial
from typing import Any, TypeVar

import faust
import psycopg
from faust.types import TP
from kafka.errors import KafkaError

from flywheel.domain.tracking import TrackedBeyondLogEnd, next_offset
from flywheel.settings import Endpoints, Settings
from store.db import connect
from store.eventstore import head
from store.ingest import (
    BrokerView,
    DeadLetter,
    Decoded,
    Incoming,
    decode_message,
    expire_parked,
    expire_raw_bytes,
)
from store.signals import checkpoint
from streams.datadir import faust_datadir
from streams.ingestion import Ingestion, OpenIngestion, StoreIngestion
from streams.metrics import Metrics
from streams.projector import Pacing, Projector
from streams.topics import TopicIds, first_offset, log_ends, topic_id
from streams.transport import Transport

log = logging.getLogger("flywheel.worker")
T = TypeVar("T")


class Decoding(faust.Schema):
    """The feedback topic's values as the pure edge makes them (store.ingest.decode_message: validated and
    redacted, or why it must be dead-lettered). Faust decodes a message as its consumer hands it to the stream,
    which goes on while the agent waits for Postgres: the next batch is decoded during this one's commit."""

    def __init__(self, max_event_bytes: int) -> None:
        super().__init__(key_serializer="raw", value_serializer="raw")
        self.max_event_bytes = max_event_bytes

    def loads_value(self, app: Any, message: Any, *, loads: Any = None, serializer: Any = None) -> Decoded:
        value = b"" if message.value is None else message.value  # a tombstone is no event: bad_json
        return decode_message(Incoming(message.topic, message.partition, message.offset, message.key, value),
                              max_event_bytes=self.max_event_bytes)


def create_app(
    settings: Settings, endpoints: Endpoints, metrics: Metrics | None = None, *, partitions: int | None = None,
    ingestion: OpenIngestion | None = None,
) -> faust.App:
    """A Faust app whose consumer group is settings.consumer_group: start more of them to scale out.
    `partitions`: the feedback topic's partition count at start-up (the consumer's metadata wins once
    it has one). `ingestion`: what the ingest agent hands each batch to (default: the store on
    endpoints.database_url, the broker at endpoints.kafka_bootstrap)."""
    metrics = metrics or Metrics()
    security = settings.kafka_security()
    app = faust.App(
        settings.consumer_group,
        broker=f"kafka://{endpoints.kafka_bootstrap}",
        broker_credentials=security.faust_credentials(),
        store="memory://",
        datadir=faust_datadir(settings, settings.consumer_group),
        web_enabled=False,
        topic_partitions=settings.partitions,
        topic_allow_declare=False,  # topics are created up front by streams.topics
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.kafka_session_timeout,
        broker_heartbeat_interval=min(3.0, settings.kafka_session_timeout / 3),
        broker_commit_every=settings.batch_size,
        stream_buffer_maxsize=max(4096, settings.batch_size * 2),
        producer_acks=-1,
    )
    app.transport = Transport(app.conf.broker_consumer, app)  # kafka:// with a cheaper per-message hand-off
    feedback = app.topic(settings.feedback_topic, schema=Decoding(settings.max_event_bytes))
    deadletter = app.topic(settings.deadletter_topic, key_serializer="raw", value_serializer="raw")

    async def publish(dead: Sequence[DeadLetter]) -> None:
        """Send dead letters and wait for the broker's ack, before the store commits them."""
        pending = [await deadletter.send(key=d.source.key, value=d.envelope()) for d in dead]
        await asyncio.gather(*pending)

    async def open_db() -> psycopg.AsyncConnection:
        return await connect(endpoints.database_url)

    # "Caught up" stops event time, and parked feedback then expires on the wall clock. It must mean
    # it: partitions assigned, every one fetched up to the high watermark the broker reported in its
    # fetch responses, no batch in flight, and none finished for idle_seconds (so what was fetched
    # has been stored). `last_read` is when the last batch was committed (or partitions assigned).
    progress: dict[str, float | None] = {"last_read": None, "in_flight": None}

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # mode types receivers as a union mypy cannot match
    def _assigned(sender: Any, *args: Any, signal: Any, **_: Any) -> None:
        assigned: set[TP] = args[0]
        progress["last_read"] = time.monotonic() if assigned else None

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    def _revoked(sender: Any, *args: Any, signal: Any, **_: Any) -> None:
        progress["last_read"] = None

    async def caught_up() -> bool:
        last = progress["last_read"]
        if last is None or progress["in_flight"] is not None or time.monotonic() - last <= settings.idle_seconds:
            return False
        for tp in app.consumer.assignment():
            if tp.topic != settings.feedback_topic:
                continue
            highwater, position = app.consumer.highwater(tp), await app.consumer.position(tp)
            if highwater is None or position is None or position < highwater:
                return False
        return True

    topic_ids = TopicIds(endpoints.kafka_bootstrap, security)

    async def asking(call: Callable[..., T], *args: Any) -> T:
        """`call(*args)` in a thread, asked again while the broker cannot answer: the batch waiting on the answer is
        in hand, and an agent that crashed here would not be given it again."""
        delay = 0.5
        while True:
            try:
                return await asyncio.to_thread(call, *args)
            except (KafkaError, OSError, TimeoutError) as e:
                log.warning("the broker did not answer (%s: %s); asking again in %.1fs", type(e).__name__, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def probe(topic: str, partition: int, start: int) -> int | None:
        return await asking(partial(first_offset, security=security), endpoints.kafka_bootstrap, topic, partition,
                            start)

    async def broker_view(batch: Sequence[Decoded]) -> BrokerView:
        """Asked once a batch is in hand: the ids of the topics it came from, and its partitions' log ends."""
        tps = {(d.message.topic, d.message.partition) for d in batch}
        ids = await asking(topic_ids, {topic for topic, _ in tps})
        ends = {tp: end for tp in tps if (end := app.consumer.highwater(TP(*tp))) is not None}
        return BrokerView(ids, ends, probe)

    @contextlib.asynccontextmanager
    async def store_ingestion() -> AsyncIterator[Ingestion]:
        conn = await open_db()
        try:
            yield StoreIngestion(conn, consumer_group=settings.consumer_group, publish=publish, view=broker_view)
        finally:
            topic_ids.close()
            await conn.close()

    open_ingestion = ingestion or store_ingestion

    async def resume_from(assigned: Set[TP]) -> dict[TP, int]:
        """Where the store says each assigned feedback partition resumes: after its tracked offset, or at the start
        of a topic created again since (store.ingest then records the reset). A tracked offset past the log's end
        stops the worker here: Faust would drop every message below an offset it was sought to."""
        mine = sorted(tp.partition for tp in assigned if tp.topic == settings.feedback_topic)
        if not mine:
            return {}
        conn = await open_db()
        try:
            cur = await conn.execute(
                'SELECT partition, "offset", topic_id FROM tracking WHERE consumer_group = %s AND topic = %s'
                " AND partition = ANY(%s)", [settings.consumer_group, settings.feedback_topic, mine])
            rows = await cur.fetchall()
        finally:
            await conn.close()
        current = await asking(topic_id, endpoints.kafka_bootstrap, settings.feedback_topic, security)
        resume = {int(p): next_offset(offset, known, current) for p, offset, known in rows}
        ends = await asking(partial(log_ends, security=security), endpoints.kafka_bootstrap, settings.feedback_topic,
                            resume)
        for p, offset in sorted(resume.items()):
            if offset > ends[p]:
                error = TrackedBeyondLogEnd(settings.feedback_topic, p, offset - 1, ends[p])
                log.critical("%s", error)
                await app.crash(error)
                return {}
        return {TP(settings.feedback_topic, p): offset for p, offset in resume.items()}

    app.transport.resume_from = resume_from  # type: ignore[attr-defined]

    @app.agent(feedback, name="ingest")
    async def ingest(stream: faust.StreamT) -> None:
        async with open_ingestion() as batches:
            # take() acks a batch's events only after this loop body returns, i.e. after the commit.
            async for batch in stream.take(settings.batch_size, within=settings.batch_timeout):
                progress["in_flight"] = time.monotonic()
                try:
                    with metrics.batch_seconds.time():
                        outcome = await batches.ingest(batch, await batches.broker_view(batch))
                except TrackedBeyondLogEnd as e:
                    log.critical("%s", e)
                    await app.crash(e)  # the worker stops with this error: a person must decide
                    raise
                finally:
                    progress["in_flight"], progress["last_read"] = None, time.monotonic()
                metrics.observe(outcome)
                for (topic, partition), offset in outcome.recreated.items():
                    log.warning("%s[%d] was created again since offset %d was stored: reading the new log from its"
                                " start", topic, partition, offset)
                for (topic, partition), (start, end) in outcome.gaps.items():
                    log.info("%s[%d]: the broker holds no message at offsets %d..%d (transaction markers,"
                             " compaction or retention)", topic, partition, start, end - 1)
                for (topic, partition), offset in outcome.rewind.items():
                    log.warning("store is behind the broker on %s[%d]: re-reading from %d", topic, partition, offset)
                    await app.consumer.seek(TP(topic, partition), offset)

    def known_partitions() -> dict[str, int]:
        # A group member's metadata may not know the topic (None or 0); without any count there is no
        # topic watermark and event time waits (a partial min() over the partitions read so far would
        # let feedback expire while its interaction sits unread on another partition).
        count = app.consumer.topic_partitions(settings.feedback_topic) or partitions
        return {settings.feedback_topic: count} if count else {}

    @app.timer(settings.sweep_interval)
    async def watch_topic() -> None:
        """A topic created again with no rebalance to tell (a memory-only broker restarted under the worker): the
        consumer's positions belong to the old log, so every assigned partition is sought back to the store's
        offset for the new one (its start); the next batch records the reset."""
        mine = {tp for tp in app.consumer.assignment() if tp.topic == settings.feedback_topic}
        if not mine:
            return
        conn = await open_db()
        try:
            cur = await conn.execute("SELECT DISTINCT topic_id FROM tracking WHERE consumer_group = %s AND topic = %s"
                                     " AND topic_id IS NOT NULL", [settings.consumer_group, settings.feedback_topic])
            known = {row[0] for row in await cur.fetchall()}
        finally:
            await conn.close()
        current = await asking(topic_id, endpoints.kafka_bootstrap, settings.feedback_topic, security)
        if current is None or not known or known == {current}:
            return
        for tp, offset in sorted((await resume_from(mine)).items()):
            log.warning("%s[%d] was created again under this worker: reading it from offset %d", tp.topic,
                        tp.partition, offset)
            await app.consumer.seek(tp, offset)

    @app.timer(settings.sweep_interval)
    async def sweep_parked() -> None:
        conn = await open_db()
        try:
            released, dead = await expire_parked(
                conn, consumer_group=settings.consumer_group, grace_seconds=settings.grace_seconds,
                partitions=known_partitions(),
                caught_up=await caught_up(), publish=publish,
            )
        finally:
            await conn.close()
        for s in released:
            metrics.stored.labels(s.type).inc()
        for d in dead:
            metrics.dead_lettered.labels(d.reason).inc()

    @app.timer(max(settings.sweep_interval, 60.0))
    async def expire_raw() -> None:
        conn = await open_db()
        try:
            nulled = await expire_raw_bytes(conn, settings.raw_retention_days)
        finally:
            await conn.close()
        if nulled:
            log.info("nulled the original bytes of %d dead letters and parked messages past their retention", nulled)

    @app.task
    async def derive_signals() -> None:
        """Start the signals projector (a process of its own: streams.projector), pass on its runs to the
        metrics, raise its failure, and stop it with the worker."""
        projector = Projector(endpoints.database_url, Pacing(
            settings.signals_interval, settings.signals_max_share, settings.signals_max_events,
            settings.signals_cache_records, settings.signals_quiet), settings.signals)
        # the projector's lag: the log's head against the signals checkpoint (two index lookups a second)
        conn = await connect(endpoints.database_url, autocommit=True)
        try:
            while True:
                for run in projector.runs():
                    metrics.signal_groups.inc(run.groups)
                    metrics.signals_position.set(run.upto)
                metrics.projector_at(await head(conn), await checkpoint(conn))
                await asyncio.sleep(settings.signals_interval)
        finally:
            projector.stop()
            await conn.close()

    return app
