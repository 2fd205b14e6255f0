"""One consumed batch → one transaction: log append, projections, parking, dead letters and tracking rows."""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson
import psycopg

from flywheel.domain.events import TOPIC_RECREATED, TrackingReset
from flywheel.domain.log import NewEvent, StoredEvent
from flywheel.domain.tracking import needs_probe, resume
from flywheel.domain.validation import (
    DUPLICATE_INTERACTION,
    UNKNOWN_INTERACTION,
    Accepted,
    InvalidEvent,
    decode,
)
from store import keys
from store.erase import erase_user
from store.eventstore import append
from store.keys import KeyRing, is_erased, user_of
from store.projections import project


@dataclass(frozen=True, slots=True)
class Incoming:
    """A consumed message, as the broker delivered it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    detail: str
    source: Incoming
    topic_id: str = ""  # the id of the topic it was read from ("": not known)

    @property
    def user(self) -> str | None:
        """The user the message names, when it is JSON that does (its bytes are then stored under their key)."""
        try:
            obj = orjson.loads(self.source.value)
        except orjson.JSONDecodeError:
            return None
        user = user_of(obj) if isinstance(obj, dict) else None
        return user if isinstance(user, str) else None

    def envelope(self) -> bytes:
        """The dead-letter topic's message: the reason, where it came from, and the original bytes."""
        s = self.source
        return orjson.dumps({
            "reason": self.reason,
            "detail": self.detail,
            "topic": s.topic,
            "partition": s.partition,
            "offset": s.offset,
            "key_b64": base64.b64encode(s.key).decode() if s.key is not None else None,
            "original_b64": base64.b64encode(s.value).decode(),
        })


Publish = Callable[[Sequence[DeadLetter]], Awaitable[None]]
# The first offset the broker holds on (topic, partition) at or after an offset; None when it holds none there.
FirstOffset = Callable[[str, int, int], Awaitable[int | None]]


@dataclass(frozen=True, slots=True)
class BrokerView:
    """What the broker says of a batch's partitions, asked after the batch was fetched: each topic's id (a topic
    created again under the same name is a new log, with a new id), each partition's log end as the fetch
    responses reported it, and a probe for the first offset it holds from a given one (for gaps)."""

    topic_ids: dict[str, str] = field(default_factory=dict)
    log_ends: dict[tuple[str, int], int] = field(default_factory=dict)
    first_offset: FirstOffset | None = None


@dataclass(frozen=True, slots=True)
class Decoded:
    """A message after the pure edge: the stored form of its event, or why it must be dead-lettered."""

    message: Incoming
    result: Accepted | InvalidEvent


def decode_message(message: Incoming, *, max_event_bytes: int) -> Decoded:
    try:
        return Decoded(message, decode(message.value, max_bytes=max_event_bytes))
    except InvalidEvent as e:
        return Decoded(message, e)


@dataclass
class BatchOutcome:
    stored: Counter[str] = field(default_factory=Counter)  # by event type
    dead: Counter[str] = field(default_factory=Counter)  # by reason
    parked: int = 0
    released: int = 0
    duplicates: int = 0
    redelivered: int = 0
    redactions: int = 0
    # (topic, partition) → offset to rewind to: the broker is ahead of what the store has.
    rewind: dict[tuple[str, int], int] = field(default_factory=dict)
    # (topic, partition) → (start, end): offsets at which the broker holds no message, passed over.
    gaps: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    # (topic, partition) → the offset the store had of a topic that has since been created again.
    recreated: dict[tuple[str, int], int] = field(default_factory=dict)


async def ingest_batch(
    conn: psycopg.AsyncConnection,
    batch: Sequence[Decoded],
    *,
    consumer_group: str,
    publish: Publish,
    broker: BrokerView | None = None,
) -> BatchOutcome:
    """Store a decoded batch exactly once. Dead letters are published before the commit, so a stored
    reject is always on the topic; a crash before the commit redelivers the batch and the tracking
    rows make the already-stored part a no-op. (Decoding is separate so the worker can decode the
    next batch while this one waits on Postgres.)

    `broker` says which log the batch came from and where it ends: a partition whose topic was created again
    since its tracking row was written is read from its start (recorded as a TrackingReset), and one whose
    tracked offset lies beyond the log's end stops ingest (flywheel.domain.tracking.TrackedBeyondLogEnd)."""
    out = BatchOutcome()
    broker = broker or BrokerView()
    async with conn.transaction():
        # The commit need not wait for its WAL flush, which it would do holding the log's lock. What a crash of
        # the server could lose is the newest batches as a whole, tracking rows with them: the store is then
        # behind the broker, and _claim rewinds to re-read them from Kafka. Nothing durable can depend on the
        # lost ones: WAL is flushed in order, so any later synchronous commit (a round, a checkpoint) flushes
        # them first.
        await conn.execute("SET LOCAL synchronous_commit = off")
        floor = await _claim(conn, consumer_group, [d.message for d in batch], out, broker)
        fresh = [d for d in batch if d.message.offset > floor.get((d.message.topic, d.message.partition), _SKIP)]
        dead: list[DeadLetter] = []
        accepted: list[tuple[Incoming, Accepted]] = []
        seen: set[str] = set()
        for d in fresh:
            m, a = d.message, d.result
            if isinstance(a, InvalidEvent):
                dead.append(DeadLetter(a.reason, a.detail, m))
                continue
            if a.data["event_id"] in seen:
                out.duplicates += 1
                continue
            seen.add(a.data["event_id"])
            out.redactions += a.redactions
            accepted.append((m, a))

        await _advance(conn, consumer_group, [d.message for d in fresh], accepted)
        # An app's erasure shreds the user's key first: every key row is locked before the log's lock, here as in
        # store.erase (a shred after this batch's append would wait for another batch's FOR SHARE on the row
        # while that batch waits for the log's lock). The batch's own events of that user are stored as erased.
        erasures = [(m, a) for m, a in accepted if a.event.type == ERASURE]
        accepted = [(m, a) for m, a in accepted if a.event.type != ERASURE]
        for user in sorted({a.event.user.id_hash for _, a in erasures}):
            await keys.shred(conn, user)
        # Every key the batch needs, in one round trip and before the log's lock.
        ring = await keys.load(conn, [user_of(a.data) for _, a in accepted] + [d.user for d in dead], create=True)
        # The erasure itself runs once the batch's events are in (they are then erased with the rest of the user's).
        # An erased user's events are stored as erased at once: they derive nothing, so they wait for nothing.
        gone: list[tuple[Incoming, Accepted]] = []
        living: list[tuple[Incoming, Accepted]] = []
        for m, a in accepted:
            (gone if ring.erased(user_of(a.data)) else living).append((m, a))
        ready, parked = await _resolve_references(conn, living, dead)
        ready += gone
        out.parked = await _park(conn, parked, broker.topic_ids, ring)
        out.duplicates += len(parked) - out.parked
        # What this batch's interactions release is taken before the append, and appended with the batch: the
        # log's lock is then held for one append and one projection, not two.
        arriving = [a.event.interaction_id for _, a in ready if a.event.type == "interaction"]
        released = await take_released(conn, arriving)
        await _add_keys(conn, ring, released)
        logged = [ring.seal(a.data) for _, a in ready]
        readable = {e["event_id"]: e if is_erased(e) else a.data for (_, a), e in zip(ready, logged, strict=True)}
        readable.update((d["event_id"], ring.open(d)) for d in released)
        stored = await append(conn, [NewEvent.of(e) for e in logged] + [NewEvent.of(d) for d in released])
        await project(conn, [replace(e, data=readable[e.event_id]) for e in stored])
        released_ids = {d["event_id"] for d in released}
        out.released = sum(1 for e in stored if e.event_id in released_ids)
        out.duplicates += len(ready) - (len(stored) - out.released)
        out.stored.update(e.type for e in stored)
        for _, a in erasures:
            erased = await erase_user(conn, a.event.user.id_hash, reason=a.data["payload"]["reason"],
                                      by=f"app {a.data['app_id']}", event=a.data)
            if erased.new:
                out.stored[ERASURE] += 1
            else:
                out.duplicates += 1

        await record_dead_letters(conn, [replace(d, topic_id=broker.topic_ids.get(d.source.topic, "")) for d in dead],
                                  publish, ring)
        out.dead.update(d.reason for d in dead)
    return out


ERASURE = "erasure"  # the wire type of an app's erasure of a user
_SKIP = 2**63  # no offset exceeds it: the floor of a partition being rewound


async def _claim(
    conn: psycopg.AsyncConnection, group: str, messages: Sequence[Incoming], out: BatchOutcome, broker: BrokerView
) -> dict[tuple[str, int], int]:
    """Lock this batch's tracking rows and return, per partition, the stored offset that a message must
    exceed to be new (redeliveries are counted). A partition whose batch starts past the stored offset
    (the broker is ahead of the store) is left out and recorded in out.rewind (flywheel.domain.tracking.resume)."""
    by_tp: dict[tuple[str, int], list[int]] = {}
    for m in messages:
        by_tp.setdefault((m.topic, m.partition), []).append(m.offset)
    floor: dict[tuple[str, int], int] = {}
    resets: list[TrackingReset] = []
    async with conn.cursor() as cur:
        for (topic, partition), offsets in sorted(by_tp.items()):
            incarnation = broker.topic_ids.get(topic)
            await cur.execute(
                'INSERT INTO tracking (consumer_group, topic, partition, "offset", topic_id)'
                " VALUES (%s, %s, %s, -1, %s) ON CONFLICT DO NOTHING",
                (group, topic, partition, incarnation),
            )
            await cur.execute(
                'SELECT "offset", topic_id FROM tracking WHERE consumer_group = %s AND topic = %s AND partition = %s'
                " FOR UPDATE",
                (group, topic, partition),
            )
            row = await cur.fetchone()
            tracked, known = (int(row[0]), row[1]) if row else (-1, None)
            if incarnation is not None and known != incarnation:
                if known is not None:  # the topic was created again: a new log, read from its start
                    resets.append(TrackingReset(
                        consumer_group=group, topic=topic, partition=partition, previous_offset=tracked, offset=-1,
                        reason=TOPIC_RECREATED, by="worker", topic_id=incarnation, previous_topic_id=known))
                    out.recreated[(topic, partition)] = tracked
                    tracked = -1
                await cur.execute(
                    'UPDATE tracking SET topic_id = %s, "offset" = %s, updated_at = now(),'
                    " event_time = CASE WHEN %s THEN NULL ELSE event_time END"
                    " WHERE consumer_group = %s AND topic = %s AND partition = %s",
                    (incarnation, tracked, known is not None, group, topic, partition),
                )
            probed, first = False, None
            if broker.first_offset is not None and needs_probe(tracked, offsets):
                probed, first = True, await broker.first_offset(topic, partition, tracked + 1)
            decided = resume(topic, partition, tracked, offsets, log_end=broker.log_ends.get((topic, partition)),
                             first_available=first, probed=probed)
            out.redelivered += decided.redelivered
            if decided.rewind_to is not None:
                out.rewind[(topic, partition)] = decided.rewind_to
                continue
            if decided.gap is not None:
                out.gaps[(topic, partition)] = decided.gap
            floor[(topic, partition)] = tracked
    if resets:
        await append(conn, resets)
    return floor


async def _advance(
    conn: psycopg.AsyncConnection, group: str, fresh: list[Incoming], accepted: list[tuple[Incoming, Accepted]]
) -> None:
    """Move each partition's offset, and its event-time progress (what the parked sweep waits on)."""
    last: dict[tuple[str, int], int] = {}
    event_time: dict[tuple[str, int], datetime] = {}
    for m in fresh:
        last[(m.topic, m.partition)] = max(m.offset, last.get((m.topic, m.partition), -1))
    for m, a in accepted:
        tp, at = (m.topic, m.partition), a.event.occurred_at
        if tp not in event_time or at > event_time[tp]:
            event_time[tp] = at
    async with conn.cursor() as cur:
        await cur.executemany(
            'UPDATE tracking SET "offset" = %s, updated_at = now(),'
            " event_time = greatest(event_time, %s::timestamptz)"
            " WHERE consumer_group = %s AND topic = %s AND partition = %s",
            [(offset, event_time.get(tp), group, *tp) for tp, offset in sorted(last.items())],
        )



async def _resolve_references(
    conn: psycopg.AsyncConnection, accepted: list[tuple[Incoming, Accepted]], dead: list[DeadLetter]
) -> tuple[list[tuple[Incoming, Accepted]], list[tuple[Incoming, Accepted]]]:
    """Split into (ready to store, parked until their interaction arrives); conflicting interactions die."""
    wanted = {ref for _, a in accepted for ref in (a.event.interaction_id, *a.event.referenced_interactions())}
    known: dict[str, str] = {}
    if wanted:
        cur = await conn.execute(
            "SELECT interaction_id, event_id::text FROM interactions WHERE interaction_id = ANY(%s)", [list(wanted)]
        )
        known = dict(await cur.fetchall())
    ready, parked = [], []
    for m, a in accepted:
        e = a.event
        if e.type == "interaction":
            owner = known.setdefault(e.interaction_id, a.data["event_id"])
            if owner != a.data["event_id"]:
                dead.append(DeadLetter(DUPLICATE_INTERACTION, f"interaction {e.interaction_id} already stored by "
                                                              f"event {owner}", m))
                continue
            ready.append((m, a))
        elif all(ref in known for ref in e.referenced_interactions()):
            ready.append((m, a))
        else:
            parked.append((m, a))
    return ready, parked


async def _add_keys(conn: psycopg.AsyncConnection, ring: KeyRing, events: Sequence[dict[str, Any]]) -> None:
    """Load into `ring` the keys of these events' users it lacks."""
    more = await keys.load(conn, [u for d in events if (u := user_of(d)) is not None and u not in ring.keys],
                           create=False)
    ring.keys.update(more.keys)


async def _park(conn: psycopg.AsyncConnection, parked: list[tuple[Incoming, Accepted]],
                topic_ids: dict[str, str], ring: KeyRing) -> int:
    """Park in log form: personal fields and the original bytes sealed under the user's key."""
    if not parked:
        return 0
    async with conn.cursor() as cur:
        await cur.executemany(
            'INSERT INTO parked (event_id, topic, topic_id, partition, "offset", key, original, data, user_id_hash,'
            " waiting_for, occurred_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            [
                (a.data["event_id"], m.topic, topic_ids.get(m.topic, ""), m.partition, m.offset, m.key,
                 ring.seal_bytes(user, m.value, _context(m)), orjson.dumps(ring.seal(a.data)).decode(), user,
                 list(a.event.referenced_interactions()), a.data["occurred_at"])
                for m, a in parked
                for user in [a.event.user.id_hash]
            ],
        )
        return cur.rowcount


def _context(m: Incoming) -> bytes:
    """What sealed original bytes belong to: the message they were read as."""
    return f"{m.topic}/{m.partition}/{m.offset}".encode()


# Of a parked event `p`: an interaction it waits for that is not stored.
_MISSING = """SELECT 1 FROM unnest(p.waiting_for) w(id)
            WHERE NOT EXISTS (SELECT 1 FROM interactions i WHERE i.interaction_id = w.id)"""


async def take_released(conn: psycopg.AsyncConnection, arriving: list[str] | None) -> list[dict[str, Any]]:
    """Take out of parking, in source order, the events that wait for nothing missing: each interaction they need
    is stored, or `arriving` (about to be stored by the caller's transaction). With `arriving`, only the events
    waiting for one of those; None: any parked event."""
    if arriving == []:
        return []
    # Waiting for one of these: a hash join (`waiting_for && ids` compares every pair, row by row: 16 ms for 800
    # parked events and a batch's 700 interactions, where this takes 2).
    scope = "" if arriving is None else """p.event_id IN (
            SELECT q.event_id FROM parked q CROSS JOIN LATERAL unnest(q.waiting_for) w(id)
            JOIN unnest(%(arriving)s::text[]) n(id) ON n.id = w.id) AND"""
    cur = await conn.execute(
        f"""
        DELETE FROM parked p WHERE {scope} NOT EXISTS ({_MISSING} AND w.id <> ALL(%(arriving)s::text[]))
        RETURNING topic, partition, "offset", data
        """,
        {"arriving": arriving or []},
    )
    return [data for *_, data in sorted(await cur.fetchall(), key=_source)]


async def release_parked(conn: psycopg.AsyncConnection) -> list[StoredEvent]:
    """Append every parked event whose interactions are all stored now."""
    released = await take_released(conn, None)
    ring = KeyRing()
    await _add_keys(conn, ring, released)
    stored = await append(conn, [NewEvent.of(data) for data in released])
    await project(conn, [replace(e, data=ring.open(e.data)) for e in stored])
    return stored


async def expire_parked(
    conn: psycopg.AsyncConnection, *, consumer_group: str, grace_seconds: float, partitions: dict[str, int],
    caught_up: bool, publish: Publish,
) -> tuple[list[StoredEvent], list[DeadLetter]]:
    """The periodic sweep: release what can be released, dead-letter what waited past the grace period.

    The grace period runs in event time: parked feedback expires once every one of its topic's
    `partitions` (topic → partition count) has been read past its occurred_at + grace, so a lagging,
    stalled or not yet read partition that may still hold the interaction never makes feedback die
    early. When the consumer is `caught_up` (it has had nothing to read for a while) event time
    stops, and the grace period runs on the wall clock.
    """
    async with conn.transaction():
        released = await release_parked(conn)
        # This statement has a snapshot of its own (read committed), which may see a worker's commit the release
        # above did not: that commit can move the watermark past an event and store the interaction it waits
        # for. So only what still waits dies; the next sweep releases the rest.
        cur = await conn.execute(
            f"""
            WITH progress AS (
                SELECT topic, min(event_time) AS watermark FROM tracking
                WHERE consumer_group = %(group)s AND event_time IS NOT NULL
                GROUP BY topic HAVING count(*) >= (%(partitions)s::jsonb ->> topic)::int
            )
            DELETE FROM parked p
            WHERE (p.occurred_at + make_interval(secs => %(grace)s)
                   < (SELECT watermark FROM progress w WHERE w.topic = p.topic)
                   OR (%(caught_up)s AND p.parked_at < now() - make_interval(secs => %(grace)s)))
              AND EXISTS ({_MISSING})
            RETURNING p.topic, p.partition, p."offset", p.key, p.original, p.waiting_for, p.topic_id, p.user_id_hash
            """,
            {"group": consumer_group, "grace": grace_seconds, "caught_up": caught_up,
             "partitions": orjson.dumps(partitions).decode()},
        )
        rows = sorted(await cur.fetchall(), key=_source)
        # Past the log's lock (the release above): read, not locked, as only bytes about to be dead-lettered use them.
        ring = await keys.load(conn, [row[-1] for row in rows], create=False, lock=False)
        dead = [
            DeadLetter(UNKNOWN_INTERACTION,
                       f"interaction(s) {', '.join(waiting)} not stored within the {grace_seconds:g}s grace period",
                       source, topic_id)
            for topic, partition, offset, key, original, waiting, topic_id, user in rows
            for source in [Incoming(topic, partition, offset, key, b"")]
            for source in [replace(source, value=_unsealed(ring, user, original, source))]
        ]
        await record_dead_letters(conn, dead, publish, ring)
    return released, dead


def _source(row: tuple[Any, ...]) -> tuple[str, int, int]:
    return (row[0], row[1], row[2])


def _unsealed(ring: KeyRing, user: str | None, original: bytes | None, source: Incoming) -> bytes:
    """A parked message's bytes in the clear (b"" once nulled, or once its user is erased)."""
    if original is None:
        return b""
    if user is None:
        return bytes(original)
    return ring.open_bytes(user, bytes(original), _context(source)) or b""


async def record_dead_letters(conn: psycopg.AsyncConnection, dead: Sequence[DeadLetter], publish: Publish,
                             ring: KeyRing) -> None:
    """Dead letters in the store (once per source message: a topic's id tells a recreated topic's offsets from the
    old one's) and on the dead-letter topic. The original bytes are stored encrypted under the key of the user they
    name, when `ring` holds it (loaded before the log's lock), and in the clear when no user can be read."""
    if not dead:
        return
    rows = []
    for d in dead:
        user = d.user
        original: bytes | None = d.source.value
        if user is not None and user in ring.keys:
            original = ring.seal_bytes(user, d.source.value, _context(d.source))
        else:
            user = None
        rows.append((d.reason, d.detail, d.source.topic, d.topic_id, d.source.partition, d.source.offset,
                     d.source.key, original, user))
    async with conn.cursor() as cur:
        await cur.executemany(
            'INSERT INTO dead_letters (reason, detail, topic, topic_id, partition, "offset", key, original,'
            " sealed_for) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            rows,
        )
    await publish(dead)


async def expire_raw_bytes(conn: psycopg.AsyncConnection, retention_days: float) -> int:
    """Null the original bytes of dead letters and parked messages older than the retention (the rows stay, so
    counts still reconcile); returns how many were nulled."""
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE dead_letters SET original = NULL, key = NULL WHERE original IS NOT NULL"
            " AND dead_lettered_at < now() - make_interval(secs => %s)", [retention_days * 86400])
        nulled = cur.rowcount
        cur = await conn.execute(
            "UPDATE parked SET original = NULL, key = NULL WHERE original IS NOT NULL"
            " AND parked_at < now() - make_interval(secs => %s)", [retention_days * 86400])
        return nulled + cur.rowcount
