"""Erasure benchmark: one user's erasure in a big log against a raw DELETE of the same kind of rows.

    python bench/erase.py [--events 1000000] [--user-events 2000] [--repeat 3]

In a database of its own (on the embedded stack, or FLYWHEEL_DATABASE_URL's server), simulated traffic is ingested
straight through store.ingest (personal fields sealed, as in production) and its signals derived. Whole chats (an
interaction and its author's own feedback) are given to 2 x --repeat bench users, about --user-events events each,
spread over the whole log (the simulator's own users are a handful of power users, each a tenth of all traffic).
Users come in twins that hold the same kind and number of rows; for each pair:
  raw DELETE   one twin's rows deleted by user (its signals by primary key, looked up beforehand), committed
  erasure      the other twin erased (store.erase.erase_user, committed): key shredded, erasure logged, its rows
               out of the read models, the counters its feedback added taken back
  re-derive    the signals projector deriving the prompt groups the erasure touched (store.signals.catch_up)
and checks that the read models hold none of the erased user's rows. Prints the medians: the erasure's time and
its ratio to the raw DELETE (target <= 3x and under 1 s), and the re-derivation apart.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stack import bench_stack, fresh_database  # noqa: E402
from flywheel.domain.signals import SignalConfig  # noqa: E402
from flywheel.settings import Settings  # noqa: E402
from flywheel.simulator import generate  # noqa: E402
from store.db import connect  # noqa: E402
from store.erase import erase_user  # noqa: E402
from store.ingest import Incoming, decode_message, ingest_batch  # noqa: E402
from store.signals import catch_up  # noqa: E402

BATCH = 5000


async def _nothing(_: object) -> None:
    return None


def bench_users(pairs: int) -> list[tuple[str, str]]:
    """(raw, erased) twins."""
    return [(f"bench-raw-{i}", f"bench-erased-{i}") for i in range(pairs)]


def traffic(events: int, seed: int, user_events: int, users: list[str]) -> tuple[list[tuple[bytes, bytes]], int]:
    """The simulated messages, whole chats given in turn to each of `users`, about `user_events` events each."""
    rng = random.Random(seed)
    share = user_events * len(users) / max(events, 1)
    owners: dict[str, tuple[str, str]] = {}  # interaction id -> (its author, the bench user it is given to)
    out, given, turn = [], 0, 0
    for sim in generate(events, seed=seed, bad_fraction=0.0):
        e = orjson.loads(sim.value)
        user = e["user"]["id_hash"]
        if e["type"] == "interaction" and rng.random() < share:
            owners[e["interaction_id"]] = (user, users[turn % len(users)])
            turn += 1
        author, bench = owners.get(e["interaction_id"], ("", ""))
        if author == user:
            e["user"] = {"id_hash": bench, "consent_training": True}
            given += 1
            out.append((sim.key or b"", orjson.dumps(e)))
        else:
            out.append((sim.key or b"", sim.value))
    return out, given


async def ingest(url: str, messages: list[tuple[bytes, bytes]]) -> None:
    conn = await connect(url)
    try:
        for start in range(0, len(messages), BATCH):
            batch = [decode_message(Incoming("feedback", 0, start + i, key, value), max_event_bytes=1 << 20)
                     for i, (key, value) in enumerate(messages[start:start + BATCH])]
            await ingest_batch(conn, batch, consumer_group="bench", publish=_nothing)
            if (start // BATCH) % 20 == 19:
                await catch_up(conn, SignalConfig(), wait=True, max_events=2**62)
        await catch_up(conn, SignalConfig(), wait=True, max_events=2**62)
        await conn.commit()
        await conn.set_autocommit(True)
        await conn.execute("VACUUM ANALYZE")  # as autovacuum keeps a live database
    finally:
        await conn.close()


async def users_rows(conn: Any, user: str) -> dict[str, int]:
    """The user's rows in the read models (and its signals: those with one of its events as a source)."""
    cur = await conn.execute(
        "SELECT (SELECT count(*) FROM interactions WHERE user_id_hash = %(u)s),"
        " (SELECT count(*) FROM feedback WHERE user_id_hash = %(u)s),"
        " (SELECT count(*) FROM parked WHERE user_id_hash = %(u)s),"
        " (SELECT count(*) FROM signals s WHERE s.sources && ARRAY("
        "    SELECT event_id::text FROM interactions WHERE user_id_hash = %(u)s UNION ALL"
        "    SELECT event_id::text FROM feedback WHERE user_id_hash = %(u)s))", {"u": user})
    row = await cur.fetchone()
    return dict(zip(("interactions", "feedback", "parked", "signals"), row, strict=True))


async def raw_delete(url: str, user: str) -> float:
    """The user's rows deleted without any of the erasure's work: by user, and the signals by primary key (looked
    up beforehand), in one transaction, committed."""
    conn = await connect(url)
    try:
        cur = await conn.execute(
            "SELECT s.prompt_key, s.signal_id FROM signals s JOIN unnest(ARRAY("
            "  SELECT prompt_key FROM interactions WHERE user_id_hash = %(u)s)) k(key) ON s.prompt_key = k.key"
            " WHERE s.sources && ARRAY("
            "  SELECT event_id::text FROM interactions WHERE user_id_hash = %(u)s UNION ALL"
            "  SELECT event_id::text FROM feedback WHERE user_id_hash = %(u)s)", {"u": user})
        signals = await cur.fetchall()
        await conn.commit()
        started = time.perf_counter()
        async with conn.transaction():
            await conn.execute("DELETE FROM parked WHERE user_id_hash = %s", [user])
            await conn.execute("DELETE FROM interactions WHERE user_id_hash = %s", [user])
            await conn.execute("DELETE FROM feedback WHERE user_id_hash = %s", [user])
            await conn.execute(
                "DELETE FROM signals s USING unnest(%s::text[], %s::text[]) d(k, i)"
                " WHERE s.prompt_key = d.k AND s.signal_id = d.i", [[k for k, _ in signals], [i for _, i in signals]])
        return time.perf_counter() - started
    finally:
        await conn.close()


async def erase_and_rederive(url: str, user: str) -> tuple[float, float, dict[str, int], dict[str, int]]:
    conn = await connect(url, autocommit=True)
    try:
        started = time.perf_counter()
        out = await erase_user(conn, user, reason="bench")
        erased = time.perf_counter() - started
        left = await users_rows(conn, user)
        started = time.perf_counter()
        while (run := await catch_up(conn, SignalConfig(), wait=True, max_events=2**62)) is not None \
                and run.groups:
            pass
        return erased, time.perf_counter() - started, out.removed, left
    finally:
        await conn.close()


async def rows_of(url: str, user: str) -> dict[str, int]:
    conn = await connect(url)
    try:
        return await users_rows(conn, user)
    finally:
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--user-events", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    pairs = bench_users(args.repeat)
    with bench_stack(Settings(), "flywheel-bench-erase-") as (server_url, _), \
            fresh_database(server_url, f"bench_erase_{uuid.uuid4().hex[:8]}") as url:
        print(f"generating and ingesting {args.events} events …", flush=True)
        messages, given = traffic(args.events, args.seed, args.user_events, [u for pair in pairs for u in pair])
        started = time.perf_counter()
        asyncio.run(ingest(url, messages))
        print(f"ingested and derived in {time.perf_counter() - started:.0f} s; {given} events are the "
              f"{2 * args.repeat} bench users'", flush=True)
        raws, erasures, rederived = [], [], []
        for raw_user, erased_user in pairs:
            print(f"  twins' rows: {asyncio.run(rows_of(url, raw_user))} and {asyncio.run(rows_of(url, erased_user))}",
                  flush=True)
            raws.append(asyncio.run(raw_delete(url, raw_user)))
            took, again, removed, left = asyncio.run(erase_and_rederive(url, erased_user))
            assert not any(left.values()), f"rows of the erased user left in the read models: {left}"
            erasures.append(took)
            rederived.append(again)
            print(f"  raw DELETE {raws[-1] * 1000:7.1f} ms, erasure {took * 1000:7.1f} ms (removed {removed}), "
                  f"re-derivation {again * 1000:7.1f} ms", flush=True)
        raw, erased = statistics.median(raws), statistics.median(erasures)
        print(f"raw DELETE of a twin's rows   {raw * 1000:8.1f} ms   (median of {args.repeat}, committed)")
        print(f"erasure (committed)           {erased * 1000:8.1f} ms   ratio {erased / raw:5.2f}   "
              "(target <= 3x and < 1000 ms)")
        print(f"re-derivation of the touched prompt groups   {statistics.median(rederived) * 1000:8.1f} ms   "
              "(apart from the above)")


if __name__ == "__main__":
    main()
