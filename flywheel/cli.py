"""The `flywheel` command: one console script, human output by default, --json for scripts."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import typer

from flywheel.endpoints import Endpoints, NoStack, resolve
from flywheel.settings import Settings

app = typer.Typer(help="Flywheel: feedback events in, round-tagged training datasets out.", no_args_is_help=True)
stack_app = typer.Typer(help="The embedded local stack (PostgreSQL + Kafka-protocol broker).", no_args_is_help=True)
app.add_typer(stack_app, name="stack")


def _settings() -> Settings:
    return Settings()


def _endpoints(settings: Settings, *, start: bool = False) -> Endpoints:
    try:
        return resolve(settings, start=start)
    except NoStack as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def _prepare(settings: Settings, endpoints: Endpoints) -> dict[str, int]:
    """Schema and topics; returns each topic's partition count."""
    from flywheel.topics import ensure_topics
    from store.db import create_schema

    create_schema(endpoints.database_url)
    return ensure_topics(endpoints.kafka_bootstrap, settings)


def _print(data: Any, as_json: bool, human: str) -> None:
    typer.echo(json.dumps(data, indent=2, default=str) if as_json else human)


# ---- stack ----


@stack_app.command("up")
def stack_up() -> None:
    """Start the local stack in the background (idempotent) and print its environment."""
    from infra.stack import LocalStack

    settings = _settings()
    env = LocalStack(settings.stack_dir).up()
    _prepare(settings, Endpoints(env.database_url, env.kafka_bootstrap, embedded=True))
    typer.echo("\n".join(env.lines()))


@stack_app.command("down")
def stack_down(purge: bool = typer.Option(False, help="Also delete the local data directory.")) -> None:
    """Stop the local stack."""
    from infra.stack import LocalStack

    stack = LocalStack(_settings().stack_dir)
    stack.purge() if purge else stack.down()
    typer.echo("local stack stopped" + (" and deleted" if purge else ""))


@stack_app.command("env")
def stack_env() -> None:
    """Print FLYWHEEL_DATABASE_URL=… and FLYWHEEL_KAFKA_BOOTSTRAP=… of the running local stack."""
    from infra.stack import LocalStack

    env = LocalStack(_settings().stack_dir).env()
    if env is None:
        typer.echo("error: the local stack is not running (flywheel stack up)", err=True)
        raise typer.Exit(2)
    typer.echo("\n".join(env.lines()))


# ---- processes ----


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def worker(loglevel: str = typer.Option("info", help="crit|error|warn|info|debug")) -> None:
    """Run the ingest worker (a Faust app). Start more to scale out: same consumer group."""
    import mode.loop

    mode.loop.use("uvloop")  # before Faust creates its loop: uvloop roughly halves asyncio's per-message cost
    from faust.worker import Worker

    from streams.app import create_app
    from streams.metrics import Metrics

    settings = _settings()
    endpoints = _endpoints(settings)
    partitions = _prepare(settings, endpoints)
    metrics = Metrics()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    faust_app = create_app(settings, endpoints, metrics, partitions=partitions.get(settings.feedback_topic))
    Worker(faust_app, loglevel=loglevel, quiet=True).execute_from_commandline()


@app.command()
def scheduler() -> None:
    """Run the scheduler in the foreground (jobs persist in Postgres)."""
    from apscheduler.schedulers.blocking import BlockingScheduler

    from flywheel.scheduler import configure

    _logging("info")
    settings = _settings()
    endpoints = _endpoints(settings)
    _prepare(settings, endpoints)
    configure(BlockingScheduler(), settings, endpoints).start()


@app.command()
def up() -> None:
    """Local stack + ingest worker + scheduler in the foreground; Ctrl-C stops everything cleanly."""
    from apscheduler.schedulers.background import BackgroundScheduler

    from flywheel.scheduler import configure

    _logging("info")
    settings = _settings()
    endpoints = _endpoints(settings, start=True)
    _prepare(settings, endpoints)
    typer.echo(f"database {endpoints.database_url}\nbroker   {endpoints.kafka_bootstrap}")
    worker_proc = subprocess.Popen([sys.executable, "-m", "flywheel.cli", "worker"])
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


# ---- traffic and inspection ----


@app.command()
def simulate(
    events: int = typer.Option(1000, "--events", "-n", help="How many messages to send."),
    seed: int = typer.Option(0, help="Same seed, same traffic."),
    bad_fraction: float = typer.Option(0.05, help="Share of malformed messages, sent raw."),
    panel_fraction: float = typer.Option(0.04, help="Share of interactions also judged by a panel of other users."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Send realistic synthetic production traffic through FeedbackClient."""
    from flywheel.client import FeedbackClient
    from flywheel.simulate import Summary, generate

    settings = _settings()
    endpoints = _endpoints(settings)
    _prepare(settings, endpoints)
    sent = []
    with FeedbackClient(endpoints.kafka_bootstrap, topic=settings.feedback_topic,
                        max_event_bytes=settings.max_event_bytes) as client:
        stream = generate(events, seed=seed, bad_fraction=bad_fraction, panel_fraction=panel_fraction,
                          max_event_bytes=settings.max_event_bytes)
        with typer.progressbar(stream, length=events, label="sending", file=sys.stderr) as bar:
            for sim in bar:
                if sim.event is not None:
                    client.send(sim.event)
                else:
                    client.send_raw(sim.key, sim.value)
                sent.append(sim)
    summary = Summary.of(sent)
    _print(summary.as_dict(), as_json, summary.describe())


def _query_store(query: Callable[[Any], dict[str, Any]]) -> tuple[dict[str, Any], Endpoints]:
    """Run a read-only report against the store the settings point at."""
    from store.db import connect_sync, create_schema

    endpoints = _endpoints(_settings())
    create_schema(endpoints.database_url)
    with connect_sync(endpoints.database_url) as conn:
        return query(conn), endpoints


@app.command()
def stats(as_json: bool = typer.Option(False, "--json")) -> None:
    """Events stored by type, dead-lettered by reason, read-model counts, consumer lag."""
    from flywheel.lag import with_lag
    from store.stats import store_stats

    data, endpoints = _query_store(store_stats)
    data["consumers"] = with_lag(endpoints.kafka_bootstrap, data["consumers"])
    _print(data, as_json, _describe_stats(data))


def _describe_stats(d: dict[str, Any]) -> str:
    lines = [f"events stored      {d['events']['total']:>9}   (head position {d['events']['head_position']})"]
    lines += [f"  {k:<16} {v:>9}" for k, v in d["events"]["by_type"].items()]
    lines.append(f"dead-lettered      {d['dead_lettered']['total']:>9}")
    lines += [f"  {k:<16} {v:>9}" for k, v in d["dead_lettered"]["by_reason"].items()]
    lines.append(f"parked (waiting)   {d['parked']:>9}")
    lines.append("read models")
    lines += [f"  {k:<16} {v:>9}" for k, v in d["read_models"].items()]
    lines.append(f"signals behind     {d['signals_behind']:>9} events")
    lines.append("consumers")
    for c in d["consumers"]:
        lag = "n/a" if c.get("lag") is None else c["lag"]
        lines.append(f"  {c['consumer_group']} {c['topic']}[{c['partition']}] offset {c['offset']} lag {lag}")
    return "\n".join(lines)


@app.command()
def signals(as_json: bool = typer.Option(False, "--json")) -> None:
    """Derived preference data: counts by rule, rater agreement, length and position bias."""
    from store.stats import signal_report

    report, _ = _query_store(signal_report)
    _print(report, as_json, _describe_signals(report))


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _describe_signals(r: dict[str, Any]) -> str:
    lines = ["signals by rule                      count  disagree  no-consent"]
    for c in r["signals"]:
        name = f"{c['kind']}/{c['rule']}" + (f" [{c['status']}]" if c["status"] else "")
        lines.append(f"  {name:<33}{c['count']:>7}{c['disagreement']:>10}{c['no_consent']:>12}")
    for kind, by in r["agreement"].items():
        for key, groups in by.items():
            lines.append(f"agreement on {kind} by {key}")
            for group, a in groups.items():
                figures = []
                for name in ("cohen_kappa", "fleiss_kappa", "krippendorff_alpha"):
                    f = a[name]
                    figures.append(f"{name} {_fmt(f['value'])} ({f['band']})" if f else f"{name} n/a")
                lines.append(f"  {group:<22} items {a['items']:>5}  " + "  ".join(figures))
    lb, pb = r["length_bias"], r["position_bias"]
    lines.append(f"length bias      longer response chosen in {_fmt(lb['chosen_longer_rate'])} of {lb['pairs']} "
                 f"pairs, r(length diff, margin) = {_fmt(lb['correlation'])}")
    lines.append(f"position bias    first-shown wins {_fmt(pb['first_shown_win_rate'])} of {pb['comparisons']} "
                 f"comparisons (p = {_fmt(pb['p_value'], 3)}), ties {pb['ties']}")
    return "\n".join(lines)


@app.command()
def replay(check: bool = typer.Option(False, "--check", help="Rebuild into scratch tables and compare.")) -> None:
    """Rebuild every read model from the event log (--check: verify without touching the live ones)."""
    from store.db import connect, create_schema
    from store.projections import check as check_projections
    from store.projections import rebuild

    settings = _settings()
    endpoints = _endpoints(settings)
    create_schema(endpoints.database_url)

    async def run() -> int:
        conn = await connect(endpoints.database_url)
        try:
            if not check:
                n = await rebuild(conn)
                typer.echo(f"rebuilt read models from {n} events")
                return 0
            drifts = await check_projections(conn)
        finally:
            await conn.close()
        for d in drifts:
            state = "ok" if not (d.missing or d.extra) else f"DRIFT: {d.missing} missing, {d.extra} extra"
            typer.echo(f"{d.table:<14} {state}")
        return 1 if any(d.missing or d.extra for d in drifts) else 0

    raise typer.Exit(asyncio.run(run()))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
