"""The long-running processes: the ingest worker, the scheduler, and both with the local stack."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time

import typer

from flywheel.entrypoints.cli.common import _endpoints, _prepare, _settings
from flywheel.entrypoints.cli.drain import _drain, _say_unread
from flywheel.settings import mask_url


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))  # its connections' chatter


def worker(loglevel: str = typer.Option("info", help="crit|error|warn|info|debug")) -> None:
    """Run the ingest worker (a Faust app). Start more to scale out: same consumer group."""
    import mode.loop

    mode.loop.use("uvloop")  # before Faust creates its loop: uvloop roughly halves asyncio's per-message cost
    from faust.worker import Worker

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
    Worker(faust_app, loglevel=loglevel, quiet=True).execute_from_commandline()


def scheduler() -> None:
    """Run the scheduler in the foreground (jobs persist in Postgres)."""
    from apscheduler.schedulers.blocking import BlockingScheduler

    from flywheel.entrypoints.scheduler import configure

    _logging("info")
    settings = _settings()
    endpoints = _endpoints(settings)
    _prepare(settings, endpoints)
    if settings.scheduler_metrics_port:
        from streams.metrics import serve_process_metrics

        serve_process_metrics(settings.scheduler_metrics_port)
    configure(BlockingScheduler(), settings, endpoints).start()


def up() -> None:
    """Local stack + ingest worker + scheduler in the foreground; Ctrl-C stops everything cleanly."""
    from apscheduler.schedulers.background import BackgroundScheduler

    from flywheel.entrypoints.scheduler import configure

    _logging("info")
    settings = _settings()
    endpoints = _endpoints(settings, start=True)
    _prepare(settings, endpoints)
    typer.echo(f"database {mask_url(endpoints.database_url)}\nbroker   {endpoints.kafka_bootstrap}")
    if settings.scheduler_metrics_port:  # this process is the scheduler; the worker serves FLYWHEEL_METRICS_PORT
        from streams.metrics import serve_process_metrics

        serve_process_metrics(settings.scheduler_metrics_port)
    from flywheel.runtime.child import die_with_parent

    # A session of its own: Ctrl-C reaches this process alone, which lets the worker drain before stopping it.
    worker_proc = subprocess.Popen([sys.executable, "-m", "flywheel", "worker"], start_new_session=True,
                                   preexec_fn=die_with_parent)
    sched = configure(BackgroundScheduler(), settings, endpoints)
    sched.start()
    stop = {"now": False}

    def _stop(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    code = 0
    try:
        while not stop["now"]:
            if worker_proc.poll() is not None:
                typer.echo(f"error: the worker exited with code {worker_proc.returncode}", err=True)
                code = 1
                break
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
