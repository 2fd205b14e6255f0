"""The long-running processes: the ingest worker, the scheduler, and both with the local stack."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer

from flywheel.entrypoints.cli.common import _endpoints, _prepare, _settings
from flywheel.entrypoints.cli.drain import _drain, _say_unread, _unread
from flywheel.settings import Endpoints, Settings, mask_url

if TYPE_CHECKING:
    from streams.metrics import SchedulerMetrics

LOG_LEVEL_HELP = "crit|error|warn|info|debug"
# Kafka clients that log each connection and metadata refresh at INFO: their internals, shown at debug only.
CHATTY = ("kafka", "aiokafka")


def _logging(level: str) -> None:
    """The log format of the processes that are not Faust workers; the chatty libraries at WARNING unless at debug."""
    logging.basicConfig(level=_level(level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _quiet_libraries(level)


def _level(name: str) -> int:
    """A level from crit|error|warn|info|debug (Faust's names) or Python's."""
    named = {"crit": "CRITICAL", "warn": "WARNING"}.get(name.lower(), name.upper())
    level = logging.getLevelName(named)
    if not isinstance(level, int):
        raise typer.BadParameter(f"{name!r} is not a log level ({LOG_LEVEL_HELP})")
    return level


def _quiet_libraries(level: str) -> None:
    chosen = _level(level)
    for name in CHATTY:
        logging.getLogger(name).setLevel(chosen if chosen <= logging.DEBUG else max(logging.WARNING, chosen))


def worker(loglevel: str = typer.Option("info", help=LOG_LEVEL_HELP)) -> None:
    """Run the ingest worker (a Faust app). Start more to scale out: same consumer group."""
    import mode.loop

    mode.loop.use("uvloop")  # before Faust creates its loop: uvloop roughly halves asyncio's per-message cost
    from flywheel.runtime.collect import collect_rarely
    from streams.app import create_app
    from streams.metrics import Metrics

    settings = _settings()
    endpoints = _endpoints(settings)
    partitions = _prepare(settings, endpoints)
    metrics = Metrics()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    faust_app = create_app(settings, endpoints, metrics, partitions=partitions.get(settings.feedback_topic))
    collect_rarely()
    run_faust(faust_app, loglevel, f"worker ready: ingesting {settings.feedback_topic} as consumer group "
                                   f"{settings.consumer_group}")


def run_faust(faust_app: Any, loglevel: str, ready: str) -> None:
    """Run a Faust app's worker until it is stopped, with no spinner on the terminal, printing `ready` on stdout
    (not in the log: a person sees it at any log level) once it consumes."""
    from faust.worker import Worker

    class Quiet(Worker):
        async def on_startup_finished(self) -> None:
            await super().on_startup_finished()
            typer.echo(ready)

    _level(loglevel)  # a bad level is a usage error before anything starts
    _quiet_libraries(loglevel)
    worker = Quiet(faust_app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.spinner = None  # it redraws over the lines of `flywheel up`
    worker.execute_from_commandline()


def scheduler() -> None:
    """Run the scheduler in the foreground (jobs persist in Postgres)."""
    from apscheduler.schedulers.blocking import BlockingScheduler

    from flywheel.entrypoints.scheduler import configure

    _logging("info")
    settings = _settings()
    endpoints = _endpoints(settings)
    _prepare(settings, endpoints)
    configure(BlockingScheduler(), settings, endpoints, _scheduler_metrics(settings)).start()


def _scheduler_metrics(settings: Settings) -> SchedulerMetrics | None:
    """The scheduler's metrics, served on FLYWHEEL_SCHEDULER_METRICS_PORT; None when it is 0 (not served)."""
    if not settings.scheduler_metrics_port:
        return None
    from streams.metrics import SchedulerMetrics

    metrics = SchedulerMetrics()
    metrics.serve(settings.scheduler_metrics_port)
    return metrics


def up(
    log_level: str = typer.Option("warn", "--log-level", help=f"Log of the worker and scheduler: {LOG_LEVEL_HELP}."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="The same as --log-level debug: every Kafka-client "
                                                                "and Faust step too."),
    status_every: float = typer.Option(5.0, "--status-every", min=0.5, help="Seconds between ingest summaries "
                                                                            "(printed when a figure changed)."),
) -> None:
    """Local stack + ingest worker + scheduler in the foreground; Ctrl-C stops everything cleanly. Prints the stack's
    endpoints, when the worker is ready, then an ingest summary whenever it changes: stored, dead-lettered, parked,
    and the lag (messages on the broker not yet ingested)."""
    from apscheduler.schedulers.background import BackgroundScheduler

    from flywheel.entrypoints.scheduler import configure

    level = "debug" if verbose else log_level
    _logging(level)
    settings = _settings()
    if not (settings.database_url and settings.kafka_bootstrap):
        typer.echo("starting the local stack…")
    endpoints = _endpoints(settings, start=True)
    _prepare(settings, endpoints)
    typer.echo(f"database {mask_url(endpoints.database_url)}\nbroker   {endpoints.kafka_bootstrap}")
    metrics = _scheduler_metrics(settings)  # this process is the scheduler; the worker serves FLYWHEEL_METRICS_PORT
    for name, port in (("worker", settings.metrics_port), ("scheduler", settings.scheduler_metrics_port)):
        if port:
            typer.echo(f"metrics  http://localhost:{port}/metrics ({name})")
    from flywheel.runtime.child import die_with_parent

    # A session of its own: Ctrl-C reaches this process alone, which lets the worker drain before stopping it.
    worker_proc = subprocess.Popen([sys.executable, "-m", "flywheel", "worker", "--loglevel", level],
                                   start_new_session=True, preexec_fn=die_with_parent)
    sched = configure(BackgroundScheduler(), settings, endpoints, metrics)
    sched.start()
    for job in sched.get_jobs():
        typer.echo(f"scheduled {job.name}: next run {job.next_run_time:%Y-%m-%d %H:%M %Z}")
    stop = {"now": False}

    def _stop(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    code = 0
    summary = _IngestSummary(settings, endpoints)
    next_summary = time.monotonic() + status_every
    try:
        while not stop["now"]:
            if worker_proc.poll() is not None:
                typer.echo(f"error: the worker exited with code {worker_proc.returncode}", err=True)
                code = 1
                break
            if time.monotonic() >= next_summary:
                summary.say()
                next_summary = time.monotonic() + status_every
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        typer.echo("stopping…")
        sched.shutdown(wait=False)
        if endpoints.embedded:
            _say_unread(settings, endpoints, _drain(settings, endpoints, reading=lambda: worker_proc.poll() is None))
        if worker_proc.poll() is None:
            worker_proc.send_signal(signal.SIGTERM)
            try:
                worker_proc.wait(30)
            except subprocess.TimeoutExpired:
                worker_proc.kill()
        if endpoints.embedded:
            from infra.stack import LocalStack

            LocalStack(settings.stack_dir).down()
    raise typer.Exit(code)


class _IngestSummary:
    """One line of what ingest did so far, printed when a figure changed since the last one."""

    def __init__(self, settings: Settings, endpoints: Endpoints) -> None:
        self.settings, self.endpoints = settings, endpoints
        self.last: str | None = None
        self._lag: Callable[[], int] | None = None

    def say(self) -> None:
        from store.db import connect_sync
        from store.stats import ingest_summary

        try:
            with connect_sync(self.endpoints.database_url) as conn:
                c = ingest_summary(conn)
            self._lag = self._lag or _unread(self.settings, self.endpoints)
            lag = self._lag()
        except Exception as e:  # a summary is informative: say what went wrong and keep running
            line = f"ingest: no summary ({type(e).__name__}: {e})"
        else:
            line = (f"ingest: {c['stored']} stored, {c['dead_lettered']} dead-lettered, {c['parked']} parked, "
                    f"lag {lag}")
        if line != self.last:
            typer.echo(line)
            self.last = line
