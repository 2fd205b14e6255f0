"""Signals projector benchmark: following the log run by run, with and without its group cache, against deriving
the whole log in one run.

    python bench/signals.py [--events 200000] [--run-events 10000]

In a database of its own (on the embedded stack, or FLYWHEEL_DATABASE_URL's server), simulated traffic is
ingested straight through store.ingest, then the signals read model is derived three times from scratch:
  one run     the whole log in one projector run (each prompt group derived once: the raw baseline)
  runs        the log --run-events at a time, as a worker's projector follows ingest (a hot prompt group is
              derived again in every run that touches it), without the cache
  cached      the same runs with the projector's GroupCache (a run reads and rewrites only what changed)
and checks that all three leave the same rows. Prints each time and its ratio to the one-run baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stack import bench_stack, fresh_database  # noqa: E402
from bench.rounds import ingest  # noqa: E402
from flywheel.domain.signals import SignalConfig  # noqa: E402
from flywheel.settings import Settings  # noqa: E402
from store.db import connect  # noqa: E402
from store.signals import GroupCache, catch_up  # noqa: E402


async def derive_from_scratch(url: str, run_events: int, cache: GroupCache | None) -> tuple[float, int, str]:
    """(seconds, runs, digest of the signals rows) for deriving the log from an empty read model."""
    conn = await connect(url, autocommit=True)
    try:
        await conn.execute("TRUNCATE signals")
        await conn.execute("DELETE FROM checkpoints WHERE name = 'signals'")
        started, runs = time.perf_counter(), 0
        while (run := await catch_up(conn, SignalConfig(), max_events=run_events, cache=cache)) is not None \
                and run.upto > run.after:
            runs += 1
        took = time.perf_counter() - started
        cur = await conn.execute(
            "SELECT md5(string_agg(s::text, '|' ORDER BY prompt_key, signal_id)) FROM signals s")
        row = await cur.fetchone()
        return took, runs, str(row[0] if row else "")
    finally:
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--run-events", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    base = Settings()
    with bench_stack(base, "flywheel-bench-signals-") as (server_url, _), \
            fresh_database(server_url, f"bench_signals_{uuid.uuid4().hex[:8]}") as url:
        print(f"ingesting {args.events} events …", flush=True)
        stored = asyncio.run(ingest(url, args.events, args.seed))
        once, _, want = asyncio.run(derive_from_scratch(url, 2**62, None))
        print(f"one run (baseline)       {once:8.1f} s", flush=True)
        runs_s, runs, got = asyncio.run(derive_from_scratch(url, args.run_events, None))
        assert got == want, "runs left other rows than one run"
        print(f"{runs} runs, no cache       {runs_s:8.1f} s   ratio {runs_s / once:5.2f}", flush=True)
        cache = GroupCache(base.signals_cache_records)
        cached_s, runs, got = asyncio.run(derive_from_scratch(url, args.run_events, cache))
        assert got == want, "cached runs left other rows than one run"
        print(f"{runs} runs, cached         {cached_s:8.1f} s   ratio {cached_s / once:5.2f}   "
              f"({stored} events stored, {len(cache)} groups cached at the end; same rows all three ways)")


if __name__ == "__main__":
    main()
