"""The signals projector, in a process of its own next to each ingest worker.

Deriving signals is CPU work (it re-derives every prompt group the new events touched); run in the
worker's own process it took a fifth of the time consuming needs, and the GIL would serialise a thread.
In a child process it uses another core. Every worker has one; one of them leads (store.signals.take_lead)
and derives while it lives, the others wait to take over, and the checkpoint row is locked for each run
(store.signals.catch_up): more workers do not derive anything twice.

The child reports each run to the worker (for its metrics) and, when it fails, the error: the worker
raises it. It dies with the worker.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from psycopg import AsyncConnection

from flywheel.domain.signals import SignalConfig
from flywheel.runtime.child import die_with_parent
from flywheel.runtime.collect import collect_rarely
from store.db import connect
from store.eventstore import head
from store.signals import GroupCache, Progress, catch_up, take_lead


@dataclass(frozen=True)
class Pacing:
    """A run takes all that was committed since the last one, so a busy prompt group is derived once a
    run. After a long run the next waits longer: while the log grows, the projector takes at most
    max_share of a core, and a backlog is derived in larger, cheaper runs. Once the log stops growing
    (nothing appended for `quiet` seconds), what is left is derived at once instead of after the wait."""

    interval: float  # seconds between the starts of two runs, at least
    max_share: float
    max_events: int  # the most log events one run takes on
    cache_records: int = 100_000  # inputs (interactions + feedback) kept between runs: store.signals.GroupCache
    quiet: float = 0.25  # no append for this long: the burst is over (busy workers commit a batch far more often)

    def next_start(self, started: float, took: float) -> float:
        return started + max(self.interval, took / self.max_share)


async def project_forever(url: str, pacing: Pacing, signals: SignalConfig, report: Callable[[Progress], None],
                          alive: Callable[[], bool]) -> None:
    conn = await connect(url, autocommit=True)
    cache = GroupCache(pacing.cache_records)
    leading = False
    try:
        while alive():
            if not (leading := leading or await take_lead(conn)):
                await asyncio.sleep(pacing.interval)  # another worker's projector derives; take over if it goes
                continue
            started = time.monotonic()
            run = await catch_up(conn, signals, max_events=pacing.max_events, cache=cache)
            if run is not None and run.upto > run.after:
                report(run)
            derived = run.upto if run is not None else None
            await _wait(conn, pacing, pacing.next_start(started, time.monotonic() - started), derived)
    finally:
        await conn.close()


async def _wait(conn: AsyncConnection, pacing: Pacing, until: float, derived: int | None) -> None:
    """Sleep until `until`, or less: until the log has stopped growing past `derived` (what the last run
    took up to; None: another projector holds the checkpoint, so just wait) — nothing appended for pacing.quiet
    seconds. The head is looked at often (an index lookup), so the end of a burst is seen soon after it."""
    last, since = await head(conn), time.monotonic()
    while (left := until - time.monotonic()) > 0:
        await asyncio.sleep(min(left, _LOOK_EVERY, pacing.quiet))
        if derived is None:
            continue
        now = await head(conn)
        if now != last:
            last, since = now, time.monotonic()
        elif now > derived and time.monotonic() - since >= pacing.quiet:
            return  # ingest is idle and there is something to derive


_LOOK_EVERY = 0.05  # seconds


def main(url: str, pacing: Pacing, signals: SignalConfig, reports: Connection, parent_pid: int) -> None:
    """The child's entry point: project until the parent is gone; send ("run", Progress) after each run
    that moved, or ("error", traceback text) before exiting on an error."""
    die_with_parent()  # elsewhere than Linux, the getppid() check below notices between two runs
    # Ctrl-C reaches the whole process group: the worker stops this process itself (Projector.stop), and
    # dying of it here first would look like a failure to the worker that is shutting down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    collect_rarely()  # the group cache stays large and lives long: most of what a collection would traverse
    try:
        asyncio.run(project_forever(url, pacing, signals, lambda run: reports.send(("run", run)),
                                    lambda: os.getppid() == parent_pid))
    except Exception:
        reports.send(("error", traceback.format_exc()))
        raise SystemExit(1) from None


class ProjectorFailed(RuntimeError):
    pass


class Projector:
    """The worker's handle on its projector process."""

    def __init__(self, url: str, pacing: Pacing, signals: SignalConfig) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process running an event loop and threads
        self._reports, child_end = ctx.Pipe(duplex=False)
        self._process: BaseProcess = ctx.Process(
            target=main, args=(url, pacing, signals, child_end, os.getpid()), name="flywheel-signals", daemon=True)
        self._process.start()
        child_end.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def runs(self) -> list[Progress]:
        """The runs finished since the last call; raises ProjectorFailed if the process failed or died."""
        runs = []
        try:
            while self._reports.poll():
                kind, value = self._reports.recv()
                if kind == "error":
                    raise ProjectorFailed(f"the signals projector failed:\n{value}")
                runs.append(value)
        except EOFError:
            pass  # the child is gone: said below
        if not self._process.is_alive():
            raise ProjectorFailed(f"the signals projector process exited (code {self._process.exitcode})")
        return runs

    def stop(self) -> None:
        self._process.terminate()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._reports.close()
