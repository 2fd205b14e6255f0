"""Round benchmark: build time against a raw COPY of the same rows, peak memory, rollback latency.

    python bench/rounds.py [--events 100000 1000000] [--repeat 3]

For each size, in a database of its own on the embedded stack (or FLYWHEEL_DATABASE_URL's server):
simulated traffic is ingested straight through store.ingest (no broker: this measures rounds, not
ingest) and the signals read model is brought up to the head of the log (the workers' projector keeps
it there; its time is printed, not counted in the build), the database is settled with VACUUM ANALYZE (the
state autovacuum keeps a live database in: freshly loaded tables otherwise draw autovacuum workers onto this
machine's two cores in the middle of the measurements), then in the same run
  raw COPY   `COPY (SELECT … interactions and feedback up to the watermark) TO STDOUT`, the rows a build reads;
             also the build's own queries (store.roundrows: the signals read model with its copy key, candidate
             groups) COPYed raw, printed beside it: both ratios are shown, the target is judged on the first
  build      `flywheel rounds build` in a child process: the build's time (as the command reports it), the
             command's wall time (with interpreter start and imports, ~1 s) and its peak RSS
  (the raw COPY of interactions and feedback and the build take turns, --repeat times each, and their medians
  are compared: on this shared machine one run of either can be a tenth off)
  rollback   `flywheel.services.rollback.rollback` of the last round, in-process (what on-call waits
             for): the median of 5 rollbacks, printed beside the median of 20 durable one-row commits (its
             floor: it commits one event)
  live       the build once more while another process ingests new traffic at --live-rate events/s (as the
             workers do all night): its time beside the quiet build's median, and the events appended meanwhile
             (with the semantic check off: the new traffic's texts would be embedded during it)
  semantic   with --semantic model (the default where the embedder is installed) or stand-in, the build runs
             with the semantic contamination check on (FLYWHEEL_SEMANTIC_CHECK): the texts of the round and of
             the quarantine list are first embedded and kept (as `flywheel rounds embed` does; timed and printed
             apart, not counted in the build, as texts are embedded when they arrive), so the build only
             compares; the semantic step's time (loading the kept vectors and comparing them with the items) is
             printed apart, and is part of the build's. `model` embeds with the real model (needs the generation
             virtualenv; on this 2-core machine some tens of texts/s, so small sizes only); `stand-in` keeps a
             random unit vector per text instead, which times the build's side (load and compare) at any size
             but finds nothing; `off` builds without.
Targets: build ≤ 3× raw COPY; peak RSS growth from the smallest to the largest size ≤ 200 MB;
rollback < 1 s and its ratio largest / smallest ≤ 1.5.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stack import bench_stack, fresh_database  # noqa: E402
from flywheel.bootstrap import round_ops  # noqa: E402
from flywheel.domain.commands import BuildRound, RestoreRound, RollBackRound  # noqa: E402
from flywheel.domain.events import QuarantineItemsAdded  # noqa: E402
from flywheel.domain.rounds import RoundConfig  # noqa: E402
from flywheel.domain.signals import SignalConfig  # noqa: E402
from flywheel.services.build_round import embed_round_texts  # noqa: E402
from flywheel.settings import Settings  # noqa: E402
from flywheel.simulator import generate  # noqa: E402
from store.db import connect  # noqa: E402
from store.embeddings import PostgresTextEmbeddings  # noqa: E402
from store.ingest import Incoming, decode_message, ingest_batch  # noqa: E402
from store.projections import record  # noqa: E402
from store.roundrows import GROUPS_QUERY, signals_query  # noqa: E402
from store.roundsource import PostgresRoundSource  # noqa: E402
from store.signals import catch_up  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402

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


async def add_quarantine(url: str, items: int, seed: int) -> None:
    """An eval set of `items` prompt/answer pairs in the traffic's own words (so shingles match here and there
    and the near-duplicate check runs), as a real quarantine list would be: mostly absent from the traffic."""
    rng = random.Random(seed)
    vocabulary = sorted({w for sim in generate(300, seed=seed + 1, bad_fraction=0.0)
                         for w in sim.value.decode(errors="ignore").split() if w.isalpha()})
    pairs = [(" ".join(rng.choices(vocabulary, k=24)), " ".join(rng.choices(vocabulary, k=16))) for _ in range(items)]
    conn = await connect(url)
    try:
        await record(conn, [QuarantineItemsAdded.listing("bench-eval", pairs)])
    finally:
        await conn.close()


class StandIn:
    """An embedder that gives each text a random unit vector (seeded by the text): the build's load and comparison
    cost the same as with the model's vectors, and find nothing."""

    model = RoundConfig().semantic_model

    def embed(self, texts: list[str]) -> Any:
        import numpy as np

        out = np.empty((len(texts), 384), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
            out[i] = np.random.default_rng(seed).standard_normal(384)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


async def _embed_texts(url: str, how: str) -> tuple[float, int]:
    if how == "model":
        from sampling.adapters.embedder import MiniLMEmbedder

        embedder: Any = MiniLMEmbedder(batch_size=256)
    else:
        embedder = StandIn()
    conn = await connect(url, autocommit=True)
    try:
        started = time.perf_counter()
        n = await embed_round_texts(PostgresRoundSource(conn, SignalConfig()), PostgresTextEmbeddings(url),
                                    embedder, BuildRound(config=RoundConfig(semantic=True)))
        return time.perf_counter() - started, n
    finally:
        await conn.close()


def _embed_child(url: str, how: str, results: Any) -> None:
    results.send(asyncio.run(_embed_texts(url, how)))


def embed_texts(url: str, how: str) -> tuple[float, int]:
    """Embed and keep every text the build will check (`how`: model or stand-in): (seconds, texts). In a process
    of its own: a build command started from a process that held the model would inherit its peak RSS."""
    ctx = multiprocessing.get_context("spawn")
    results, child_end = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_embed_child, args=(url, how, child_end))
    child.start()
    child_end.close()
    try:
        took, n = results.recv()
    except EOFError:
        raise RuntimeError(f"embedding the round's texts failed (exit code {child.join() or child.exitcode})") from None
    child.join()
    return took, n


async def project_signals(url: str) -> float:
    """Bring the signals read model up to the head of the log in one projector run (the workers keep it
    there as traffic arrives)."""
    conn = await connect(url)
    try:
        started = time.perf_counter()
        await catch_up(conn, SignalConfig(), wait=True, max_events=2**62)
        return time.perf_counter() - started
    finally:
        await conn.close()


def settle(url: str) -> float:
    """VACUUM ANALYZE the whole database, as autovacuum would have by the time a nightly build runs."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
    return time.perf_counter() - started


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


def raw_copy_of_reads(url: str) -> tuple[float, int]:
    """COPY of exactly the queries a default build reads with (signals, then candidate groups), in binary as the
    build reads them."""
    started, size = time.perf_counter(), 0
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        for query, params in ((signals_query(copies=True), None), (GROUPS_QUERY, {"w": 2**62})):
            with cur.copy(f"COPY ({query}) TO STDOUT (FORMAT binary)", params) as copy:
                for block in copy:
                    size += len(block)
    return time.perf_counter() - started, size


def build(settings: Settings) -> tuple[float, dict[str, object], int]:
    env = settings.child_env()
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen([sys.executable, "-m", "flywheel", "rounds", "build", "--json"], env=env,
                                 stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS
        child.returncode = os.waitstatus_to_exitcode(status)
        took = time.perf_counter() - started
        out.seek(0), err.seek(0)
        if child.returncode:
            raise RuntimeError(f"rounds build failed ({child.returncode}): {err.read().decode()}")
        return took, json.loads(out.read()), usage.ru_maxrss


async def time_rollback(url: str, root: Path, number: int, times: int = 5) -> float:
    """The median of `times` rollbacks of the round (each undone by a restore, untimed)."""
    conn = await connect(url, autocommit=True)
    try:
        took = []
        for _ in range(times):
            started = time.perf_counter()
            await round_ops(conn, root).rollback(RollBackRound(round=number, reason="bench"))
            took.append(time.perf_counter() - started)
            await round_ops(conn, root).restore(RestoreRound(round=number))
        return statistics.median(took)
    finally:
        await conn.close()


def time_commit(url: str, times: int = 20) -> float:
    """The median of `times` durable one-row commits: the floor under a rollback, which commits one event."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_commit_probe (x int)")
        took = []
        for i in range(times):
            started = time.perf_counter()
            conn.execute("INSERT INTO bench_commit_probe VALUES (%s)", [i])
            took.append(time.perf_counter() - started)
        return statistics.median(took)


def _live_ingest(url: str, seed: int, rate: float, stop: Any, appended: Any) -> None:
    """Ingest fresh traffic at about `rate` events/s until `stop` is set (a process of its own)."""

    async def go() -> None:
        conn = await connect(url)
        try:
            batch, started, sent = [], time.monotonic(), 0
            for offset, sim in enumerate(generate(10_000_000, seed=seed, bad_fraction=0.0)):
                message = Incoming("feedback", 1, offset, sim.key, sim.value)
                batch.append(decode_message(message, max_event_bytes=1 << 20))
                if len(batch) < 200:
                    continue
                out = await ingest_batch(conn, batch, consumer_group="bench-live", publish=_nothing)
                appended.value += sum(out.stored.values())
                sent += len(batch)
                batch = []
                if stop.is_set():
                    return
                await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
        finally:
            await conn.close()

    asyncio.run(go())


def build_under_ingest(settings: Settings, url: str, seed: int, rate: float) -> tuple[float, int, int]:
    """The build while another process ingests: (the build's seconds, events appended during it, its round)."""
    ctx = multiprocessing.get_context("spawn")
    stop, appended = ctx.Event(), ctx.Value("q", 0)
    feeder = ctx.Process(target=_live_ingest, args=(url, seed, rate, stop, appended), daemon=True)
    feeder.start()
    try:
        while appended.value == 0 and feeder.is_alive():
            time.sleep(0.05)
        before = appended.value
        _, out, _ = build(settings)
        during = appended.value - before
    finally:
        stop.set()
        feeder.join(60)
    if feeder.exitcode not in (0, None):
        raise RuntimeError(f"the live ingest failed (exit code {feeder.exitcode})")
    return float(out["seconds"]), during, int(out["round"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quarantine-items", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3, help="baseline and build runs per size (medians compared)")
    ap.add_argument("--live-rate", type=float, default=2000, help="events/s ingested during the live build")
    ap.add_argument("--semantic", choices=("model", "stand-in", "off"), default=None,
                    help="the semantic check on with the model's vectors, on with stand-in vectors, or off "
                         "(default: model where the embedder is installed, else off)")
    args = ap.parse_args()
    if args.semantic is None:
        from sampling.adapters.embedder import available

        args.semantic = "model" if available() else "off"
        print(f"semantic check: {args.semantic}" + ("" if available() else
                                                     " (the embedder is not installed: see infra/gen-venv.sh)"))

    base = Settings()
    with bench_stack(base, "flywheel-bench-rounds-") as (server_url, bootstrap):
        run(base, server_url, bootstrap, sorted(args.events), args.seed, args.quarantine_items, args.repeat,
            args.live_rate, args.semantic)


def run(base: Settings, server_url: str, bootstrap: str, sizes: list[int], seed: int, quarantine_items: int,
        repeat: int, live_rate: float, semantic: str = "off") -> None:
    work = Path(tempfile.mkdtemp(prefix="flywheel-rounds-out-"))
    results = []
    try:
        for n in sizes:
            db = f"bench_rounds_{n}_{uuid.uuid4().hex[:6]}"
            with fresh_database(server_url, db) as url:
                print(f"{n:>9} events: ingesting …", flush=True)
                stored = asyncio.run(ingest(url, n, seed))
                asyncio.run(add_quarantine(url, quarantine_items, seed))
                project_s = asyncio.run(project_signals(url))
                if semantic != "off":
                    embed_s, embedded = embed_texts(url, semantic)
                    print(f"{n:>9} events: {embedded} distinct texts embedded and kept ({semantic}) in "
                          f"{embed_s:.1f} s, {embedded / embed_s:.0f} texts/s (not counted in the build)", flush=True)
                settle_s = settle(url)
                reads_s, reads_bytes = raw_copy_of_reads(url)
                settings = base.model_copy(update={"database_url": url, "rounds_dir": str(work / db),
                                                   "kafka_bootstrap": bootstrap, "rounds_topic": f"bench-{db}",
                                                   "semantic_check": semantic != "off"})
                ensure_topics(bootstrap, settings)  # as `flywheel up` has: the build never auto-creates its topic
                # The baseline and the build in turns, `repeat` times each: a slow spell of this shared machine
                # then weighs on both sides alike, and the medians are compared.
                copies, builds, commands, peaks, semantic_steps = [], [], [], [], []
                for _ in range(repeat):
                    copy_s, copy_bytes = raw_copy(url)
                    command_s, out, peak_kib = build(settings)
                    copies.append(copy_s)
                    builds.append(float(out["seconds"]))  # type: ignore[arg-type]
                    if out.get("semantic_seconds") is not None:
                        semantic_steps.append(float(out["semantic_seconds"]))  # type: ignore[arg-type]
                    commands.append(command_s)
                    peaks.append(peak_kib)
                copy_s, build_s, command_s = (statistics.median(x) for x in (copies, builds, commands))
                peak_kib = max(peaks)
                rollback_s = asyncio.run(time_rollback(url, work / db, int(out["round"])))  # type: ignore[call-overload]
                commit_s = time_commit(url)
                live_s, live_events, live_round = build_under_ingest(
                    settings.model_copy(update={"semantic_check": False}), url, seed + 1000, live_rate)
                results.append((n, build_s, copy_s, peak_kib, rollback_s, command_s, reads_s))
                print(f"{n:>9} events ({stored} stored; signals projected in {project_s:.1f} s in one projector run; "
                      f"settled in {settle_s:.1f} s; {copy_bytes / 2**20:.0f} MiB copied; "
                      f"{quarantine_items} quarantine items; medians of {repeat}): "
                      f"raw COPY {copy_s:6.2f} s {_each(copies)}, build {build_s:6.2f} s {_each(builds)} "
                      f"(ratio {build_s / copy_s:5.2f}, {out['rows_out']} rows; the command {command_s:.1f} s with "
                      f"interpreter start and imports, ratio {command_s / copy_s:.1f}), "
                      f"peak RSS {peak_kib / 1024:6.0f} MiB, "
                      f"rollback {rollback_s * 1000:6.1f} ms (a durable one-row commit {commit_s * 1000:.1f} ms); "
                      f"raw COPY of the build's own queries {reads_s:.1f} s "
                      f"({reads_bytes / 2**20:.0f} MiB), build ratio to it {build_s / reads_s:.1f}", flush=True)
                if semantic_steps:
                    print(f"{n:>9} events, semantic check on ({semantic} vectors): its step "
                          f"{statistics.median(semantic_steps):.2f} s {_each(semantic_steps)} of the build's "
                          f"{build_s:.2f} s", flush=True)
                print(f"{n:>9} events, live: round {live_round} built in {live_s:.2f} s while {live_events} events "
                      f"were ingested during the command (~{live_rate:.0f}/s asked), "
                      f"{live_s / build_s:.2f}x the quiet build", flush=True)
        (small, *_), (large, *_) = results[0], results[-1]
        growth = (results[-1][3] - results[0][3]) / 1024
        for n, build_s, copy_s, *_, command_s, reads_s in results:
            print(f"build / raw COPY at {n}: {build_s / copy_s:.2f}x, the command's {command_s / copy_s:.1f}x"
                  f" (target <= 3); build / raw COPY of its own queries: {build_s / reads_s:.1f}x")
        print(f"peak RSS growth {small} -> {large}: {growth:.0f} MiB (target <= 200)")
        print(f"rollback {large} / {small}: {results[-1][4] / results[0][4]:.2f} (target <= 1.5, each < 1 s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _each(values: list[float]) -> str:
    return "(" + " ".join(f"{v:.2f}" for v in values) + ")"


if __name__ == "__main__":
    main()
