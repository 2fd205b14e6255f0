"""On-call during a build: `rounds rollback` and `rounds restore` while a large round build runs.

    python bench/rollback.py [--events 1000000] [--times 5]

In a database of its own on the embedded stack (or FLYWHEEL_DATABASE_URL's server), simulated traffic is
ingested straight through store.ingest, the signals read model is brought to the head and the database settled
(as bench/rounds.py does), and round 1 is built (its time is the quiet build's). Then, in the same run:
  idle      round 1 rolled back and restored --times times in-process (flywheel.services.rollback, what on-call
            waits for), and the `flywheel rounds rollback` / `restore` commands once each (interpreter start
            and imports included); beside them the median of 20 durable one-row commits (the floor: a rollback
            commits one event)
  during    `flywheel rounds build` started in a child process; once it holds the build lock, round 1 is rolled
            back and restored in-process --times times while it runs, the commands once each, and a last
            rollback is left in place. Every timing is checked to have started and ended while the child was
            still building.
The build that a rollback landed on must end held (its snapshot predates the rollback) and `current` must not
move to it. Target: every rollback and restore under 1 s while the build runs, in-process and by the command.
The commands' times are printed beside a bare interpreter start that imports the command's modules (CPU only,
no database): on a machine busier than the build alone makes it, that floor says how much of a command's time
is waiting for a core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stack import bench_stack, fresh_database  # noqa: E402
from bench.rounds import build, ingest, project_signals, settle, time_commit  # noqa: E402
from flywheel.bootstrap import round_ops  # noqa: E402
from flywheel.domain.commands import RestoreRound, RollBackRound  # noqa: E402
from flywheel.settings import Settings  # noqa: E402
from store.db import connect  # noqa: E402
from store.unit_of_work import BUILD_LOCK  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402


async def on_call(url: str, root: Path, number: int, times: int, running: subprocess.Popen[bytes] | None,
                  ) -> tuple[list[float], list[float]]:
    """(rollback seconds, restore seconds) of `times` rollbacks of round `number`, each undone by a restore; with
    `running`, each pair must begin and end while that build is still running (else RuntimeError)."""
    conn = await connect(url, autocommit=True)
    try:
        rollbacks: list[float] = []
        restores: list[float] = []
        for _ in range(times):
            if running is not None and running.poll() is not None:
                raise RuntimeError(f"the build ended after {len(rollbacks)} rollbacks: use more --events")
            started = time.perf_counter()
            await round_ops(conn, root).rollback(RollBackRound(round=number, reason="bench", by="bench"))
            rollbacks.append(time.perf_counter() - started)
            started = time.perf_counter()
            await round_ops(conn, root).restore(RestoreRound(round=number, by="bench"))
            restores.append(time.perf_counter() - started)
            await asyncio.sleep(0.2)
        if running is not None and running.poll() is not None:
            raise RuntimeError("the build ended during the rollbacks: use more --events")
        return rollbacks, restores
    finally:
        await conn.close()


def command(settings: Settings, *args: str) -> float:
    """Wall time of one `flywheel` command (interpreter start and imports included)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flywheel", *args], env=settings.child_env(), check=True,
                   capture_output=True)
    return time.perf_counter() - started


def bare_start() -> float:
    """Wall time of starting this interpreter and importing the flywheel command without running one: the floor
    under a command's time, and how busy the machine is (it is CPU alone)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import flywheel.entrypoints.cli"], check=True, capture_output=True)
    return time.perf_counter() - started


def wait_for_build_lock(url: str, child: subprocess.Popen[bytes]) -> float:
    """Seconds until the child holds the build lock (a session advisory lock on one bigint key)."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        while child.poll() is None:
            held = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                                " AND classid = 0 AND objid = %s AND objsubid = 1", [BUILD_LOCK]).fetchone()
            if held and held[0]:
                return time.perf_counter() - started
            time.sleep(0.02)
    raise RuntimeError(f"the build exited ({child.returncode}) before it took the build lock")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--times", type=int, default=5, help="rollback + restore pairs, idle and during the build")
    args = ap.parse_args()
    base = Settings()
    with bench_stack(base, "flywheel-bench-rollback-") as (server_url, bootstrap):
        work = Path(tempfile.mkdtemp(prefix="flywheel-rollback-out-"))
        db = f"bench_rollback_{args.events}_{uuid.uuid4().hex[:6]}"
        try:
            with fresh_database(server_url, db) as url:
                run(base, url, bootstrap, work / db, args.events, args.seed, args.times)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def run(base: Settings, url: str, bootstrap: str, root: Path, events: int, seed: int, times: int) -> None:
    print(f"{events} events: ingesting …", flush=True)
    stored = asyncio.run(ingest(url, events, seed))
    project_s = asyncio.run(project_signals(url))
    settle(url)
    settings = base.model_copy(update={"database_url": url, "rounds_dir": str(root), "kafka_bootstrap": bootstrap,
                                       "rounds_topic": f"bench-{root.name}"})
    ensure_topics(bootstrap, settings)
    _, first, _ = build(settings)
    quiet_s = float(first["seconds"])  # type: ignore[arg-type]
    number = int(first["round"])  # type: ignore[call-overload]
    print(f"{events} events ({stored} stored, signals projected in {project_s:.1f} s): round {number} built in "
          f"{quiet_s:.2f} s ({first['rows_out']} rows)", flush=True)

    idle_back, idle_restore = asyncio.run(on_call(url, root, number, times, None))
    idle_cmd_back = command(settings, "rounds", "rollback", str(number), "--reason", "bench", "--by", "bench")
    idle_cmd_restore = command(settings, "rounds", "restore", str(number), "--by", "bench")
    idle_bare = bare_start()
    commit_s = time_commit(url)

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen([sys.executable, "-m", "flywheel", "rounds", "build", "--json"],
                                 env=settings.child_env(), stdout=out, stderr=err)
        started = time.perf_counter()
        try:
            locked_s = wait_for_build_lock(url, child)
            back, restore = asyncio.run(on_call(url, root, number, times, child))
            cmd_back = command(settings, "rounds", "rollback", str(number), "--reason", "bench", "--by", "bench")
            cmd_restore = command(settings, "rounds", "restore", str(number), "--by", "bench")
            bare = bare_start()
            last = asyncio.run(on_call_last(url, root, number))
            still_building = child.poll() is None
            child.wait()
        finally:
            if child.poll() is None:
                child.kill()
        build_s = time.perf_counter() - started
        out.seek(0), err.seek(0)
        if child.returncode:
            raise RuntimeError(f"rounds build failed ({child.returncode}): {err.read().decode()}")
        during = json.loads(out.read())
    with psycopg.connect(url) as conn:
        current = conn.execute("SELECT number FROM rounds WHERE NOT rolled_back AND state = 'promoted'"
                               " ORDER BY number DESC LIMIT 1").fetchone()
        # Whether the kept rollback's event precedes the build's publication in the log (it landed mid-build).
        kept_at, published_at = conn.execute(
            "SELECT (SELECT max(position) FROM events WHERE type = 'round_rolled_back'),"
            " (SELECT position FROM rounds WHERE number = %s)", [during["round"]]).fetchone() or (None, None)
    landed = kept_at is not None and published_at is not None and kept_at < published_at

    def ms(values: list[float]) -> str:
        return f"median {statistics.median(values) * 1000:7.1f} ms, max {max(values) * 1000:7.1f} ms"

    print(f"idle:   rollback {ms(idle_back)}, restore {ms(idle_restore)} (in-process, {times} each); "
          f"commands {idle_cmd_back:.2f} s / {idle_cmd_restore:.2f} s (interpreter start with the command's "
          f"imports alone {idle_bare:.2f} s); a durable one-row commit "
          f"{commit_s * 1000:.1f} ms", flush=True)
    print(f"during: rollback {ms(back)}, restore {ms(restore)} (in-process, {times} each); commands "
          f"{cmd_back:.2f} s / {cmd_restore:.2f} s (interpreter start with the command's imports alone "
          f"{bare:.2f} s); last rollback {last * 1000:.1f} ms "
          f"({'before' if still_building else 'AFTER'} the build process ended; its event at log position {kept_at}, "
          f"the build's publication at {published_at}: {'before' if landed else 'AFTER'} the publication)",
          flush=True)
    print(f"build:  {events} events, took the build lock {locked_s:.2f} s after start, ran {build_s:.1f} s "
          f"(the quiet one {quiet_s:.1f} s); round {during['round']} ended {during['state']}"
          f" ({'; '.join(during.get('held_because', [])) or 'no reason'}); current afterwards: "
          f"{current[0] if current else None}", flush=True)
    worst = max(*back, *restore, cmd_back, cmd_restore)
    load = os.getloadavg()[0]
    print(f"ratio during / idle (in-process medians): rollback "
          f"{statistics.median(back) / statistics.median(idle_back):.2f}, restore "
          f"{statistics.median(restore) / statistics.median(idle_restore):.2f}; worst during {worst:.2f} s "
          f"(target < 1 s); held: {during['state'] == 'held'} (target: {landed}, as the kept rollback "
          f"{'did' if landed else 'did not'} land before the publication); machine load average {load:.1f} "
          f"on {os.cpu_count()} cores", flush=True)


async def on_call_last(url: str, root: Path, number: int) -> float:
    """One more rollback, left in place: the running build must see it and end held."""
    conn = await connect(url, autocommit=True)
    try:
        started = time.perf_counter()
        await round_ops(conn, root).rollback(RollBackRound(round=number, reason="bench: left in place", by="bench"))
        return time.perf_counter() - started
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
