"""Round benchmark: build time against a raw COPY of the same rows, peak memory, rollback latency.

    python bench/rounds.py [--events 100000 1000000]

For each size, in a database of its own on the embedded stack (or FLYWHEEL_DATABASE_URL's server):
simulated traffic is ingested straight through store.ingest (no broker: this measures rounds, not
ingest) and the signals read model is brought up to the head of the log (the workers' projector keeps
it there; its time is printed, not counted in the build), then in the same run
  raw COPY   `COPY (SELECT … interactions and feedback up to the watermark) TO STDOUT`, the rows a build reads
  build      `flywheel rounds build` in a child process: its wall time and its peak RSS
  rollback   `flywheel.oncall.rollback` of that round, in-process (what on-call waits for)
Targets: build ≤ 3× raw COPY; peak RSS growth from the smallest to the largest size ≤ 200 MB;
rollback < 1 s and its ratio largest / smallest ≤ 1.5.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stack import bench_stack  # noqa: E402
from flywheel.oncall import rollback  # noqa: E402
from flywheel.settings import Settings  # noqa: E402
from flywheel.simulate import generate  # noqa: E402
from store.db import connect, create_schema  # noqa: E402
from store.ingest import Incoming, decode_message, ingest_batch  # noqa: E402
from store.projections import DEFAULT_SIGNALS  # noqa: E402
from store.signals import catch_up  # noqa: E402

BATCH = 5000


async def _nothing(_: object) -> None:
    return None


async def ingest(url: str, events: int, seed: int) -> int:
    conn = await connect(url)
    try:
        batch, stored = [], 0
        for offset, sim in enumerate(generate(events, seed=seed, bad_fraction=0.0)):
            batch.append(decode_message(Incoming("feedback", 0, offset, sim.key, sim.value), max_event_bytes=1 << 20))
            if len(batch) == BATCH:
                out = await ingest_batch(conn, batch, consumer_group="bench", publish=_nothing)
                stored += sum(out.stored.values())
                batch = []
        if batch:
            out = await ingest_batch(conn, batch, consumer_group="bench", publish=_nothing)
            stored += sum(out.stored.values())
        return stored
    finally:
        await conn.close()


async def project_signals(url: str) -> float:
    """Bring the signals read model up to the head of the log, as the workers' projector keeps it."""
    conn = await connect(url)
    try:
        started = time.perf_counter()
        while (run := await catch_up(conn, DEFAULT_SIGNALS, wait=True)) is not None and run.upto > run.after:
            pass
        return time.perf_counter() - started
    finally:
        await conn.close()


def raw_copy(url: str) -> tuple[float, int]:
    started, size = time.perf_counter(), 0
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        for query in ("COPY (SELECT * FROM interactions ORDER BY prompt_key) TO STDOUT",
                      "COPY (SELECT f.*, i.prompt_key FROM feedback f JOIN interactions i USING (interaction_id)"
                      " ORDER BY i.prompt_key) TO STDOUT"):
            with cur.copy(query) as copy:
                for block in copy:
                    size += len(block)
    return time.perf_counter() - started, size


def build(settings: Settings) -> tuple[float, dict[str, object], int]:
    env = {**os.environ, **{f"FLYWHEEL_{k.upper()}": str(v) for k, v in settings.model_dump().items()}}
    started = time.perf_counter()
    child = subprocess.run([sys.executable, "-m", "flywheel.cli", "rounds", "build", "--json"], env=env,
                           capture_output=True, text=True, check=True)
    took = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far
    return took, json.loads(child.stdout), peak_kib


async def time_rollback(url: str, root: Path, number: int) -> float:
    conn = await connect(url, autocommit=True)
    try:
        started = time.perf_counter()
        await rollback(conn, root, number, reason="bench", quarantine=None, announce=lambda _: None)
        return time.perf_counter() - started
    finally:
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    base = Settings()
    with bench_stack(base, "flywheel-bench-rounds-") as (server_url, bootstrap):
        run(base, server_url, bootstrap, sorted(args.events), args.seed)


def run(base: Settings, server_url: str, bootstrap: str, sizes: list[int], seed: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="flywheel-rounds-out-"))
    results = []
    try:
        for n in sizes:
            db = f"bench_rounds_{n}_{uuid.uuid4().hex[:6]}"
            with psycopg.connect(server_url, autocommit=True) as admin:
                admin.execute(f"CREATE DATABASE {db}")
            url = server_url.rsplit("/", 1)[0] + "/" + db
            create_schema(url)
            print(f"{n:>9} events: ingesting …", flush=True)
            stored = asyncio.run(ingest(url, n, seed))
            project_s = asyncio.run(project_signals(url))
            copy_s, copy_bytes = raw_copy(url)
            settings = base.model_copy(update={"database_url": url, "rounds_dir": str(work / db),
                                               "kafka_bootstrap": bootstrap, "rounds_topic": f"bench-{db}"})
            build_s, out, peak_kib = build(settings)
            rollback_s = asyncio.run(time_rollback(url, work / db, int(out["round"])))  # type: ignore[call-overload]
            results.append((n, build_s, copy_s, peak_kib, rollback_s))
            print(f"{n:>9} events ({stored} stored, signals projected in {project_s:.1f} s as the workers do, "
                  f"{copy_bytes / 2**20:.0f} MiB copied): raw COPY {copy_s:6.1f} s, "
                  f"build {build_s:6.1f} s (ratio {build_s / copy_s:5.1f}, {out['rows_out']} rows), "
                  f"peak RSS {peak_kib / 1024:6.0f} MiB, rollback {rollback_s * 1000:6.1f} ms", flush=True)
        (small, *_), (large, *_) = results[0], results[-1]
        growth = (results[-1][3] - results[0][3]) / 1024
        print(f"build / raw COPY at {large}: {results[-1][1] / results[-1][2]:.1f}x (target <= 3)")
        print(f"peak RSS growth {small} -> {large}: {growth:.0f} MiB (target <= 200)")
        print(f"rollback {large} / {small}: {results[-1][4] / results[0][4]:.2f} (target <= 1.5, each < 1 s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
