"""`flywheel setup` (the schema step, as the database's owner) and `flywheel doctor` (what is wrong, at a glance)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import typer

from flywheel.entrypoints.cli.common import _endpoints, _prepare, _print, _settings
from flywheel.settings import Endpoints, Settings, mask_url


def setup(as_json: bool = typer.Option(False, "--json")) -> None:
    """Create the schema, the least-privilege roles and their grants, and the topics. Run it as the database's
    owner before processes that connect as flywheel_ingest start (they create nothing)."""
    from store.db import INGEST_ROLE, REPORT_ROLE, ROLES, TRAINER_ROLE

    settings = _settings()
    endpoints = _endpoints(settings)
    passwords = {role: secret.get_secret_value() for role, secret in (
        (INGEST_ROLE, settings.db_ingest_password), (REPORT_ROLE, settings.db_report_password),
        (TRAINER_ROLE, settings.db_trainer_password)) if secret.get_secret_value()}
    topics = _prepare(settings, endpoints, passwords)
    roles = {role: "login" if role in passwords else "group" for role in ROLES}
    data = {"schema": "current", "roles": roles, "topics": topics}
    _print(data, as_json, "schema current\nroles   " + ", ".join(f"{r} ({k})" for r, k in roles.items())
           + "\ntopics  " + ", ".join(f"{t} ({n} partitions)" for t, n in topics.items()))


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # ok | fail | skip (what it needs failed)
    detail: str


def doctor(
    max_skew: float = typer.Option(5.0, help="Seconds Postgres's clock may differ from this host's."),
    max_lag: int = typer.Option(10_000, help="Messages a consumer group (ingest, generation) may have left unread."),
    timeout: float = typer.Option(10.0, help="Seconds to wait for Postgres and for Kafka."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Check the configured Postgres and Kafka: reachable, schema current, clocks agree, topics and partitions as
    configured, the ingest and generation consumer groups' lag. Prints what is wrong on one screen; exits 1 when
    anything is."""
    settings = _settings()
    endpoints = _endpoints(settings)
    checks = [*_database_checks(endpoints.database_url, max_skew, timeout),
              *_kafka_checks(settings, endpoints.kafka_bootstrap, timeout)]
    checks.append(_lag_check(settings, endpoints, checks, max_lag))
    checks.append(_generation_lag_check(settings, endpoints, checks, max_lag))
    failed = [c.name for c in checks if c.status == "fail"]
    data = {"ok": not failed, "database": mask_url(endpoints.database_url), "kafka": endpoints.kafka_bootstrap,
            "kafka_security": settings.kafka_security().describe(), "checks": [asdict(c) for c in checks]}
    lines = [f"{c.status.upper() if c.status == 'fail' else c.status:<5} {c.name:<9} {c.detail}" for c in checks]
    lines.append(f"{len(failed)} problem{'s' if len(failed) != 1 else ''}: {', '.join(failed)}" if failed
                 else "everything checked is as configured")
    _print(data, as_json, "\n".join(lines))
    if failed:
        raise typer.Exit(1)


def _database_checks(url: str, max_skew: float, timeout: float) -> list[Check]:
    import psycopg
    from sqlalchemy.exc import SQLAlchemyError

    from store.db import server_facts

    shown = mask_url(url)
    try:
        facts = server_facts(url, timeout=timeout)
    except (OSError, psycopg.Error, SQLAlchemyError) as e:
        reason = " ".join(str(getattr(e, "orig", None) or e).split())
        return [Check("database", "fail", f"{shown}: {reason}"),
                Check("schema", "skip", "the database is unreachable"),
                Check("clock", "skip", "the database is unreachable")]
    skew = facts.skew
    return [
        Check("database", "ok", f"{shown}: PostgreSQL {facts.version}, as {facts.user}"),
        Check("schema", "fail", "; ".join(facts.schema) + " (run `flywheel setup` as the database's owner)")
        if facts.schema else Check("schema", "ok", "current"),
        Check("clock", "ok" if abs(skew) <= max_skew else "fail",
              f"Postgres is {abs(skew):.2f}s {'ahead of' if skew >= 0 else 'behind'} this host (limit {max_skew:g}s)"),
    ]


def _kafka_checks(settings: Settings, bootstrap: str, timeout: float) -> list[Check]:
    from streams.topics import BrokerUnreachable, describe, new_topics

    wanted = new_topics(settings)
    security = settings.kafka_security()
    try:
        found = describe(bootstrap, security, wanted, timeout=timeout)
    except BrokerUnreachable as e:
        return [Check("kafka", "fail", str(e)), Check("topics", "skip", "Kafka is unreachable")]
    wrong = []
    for name, topic in sorted(wanted.items()):
        have = found.get(name)
        if have is None:
            wrong.append(f"{name} is missing (`flywheel setup` creates it)")
        elif have != (topic.num_partitions, topic.replication_factor):
            wrong.append(f"{name} has {have[0]} partitions x {have[1]} replicas, configured "
                         f"{topic.num_partitions} x {topic.replication_factor}")
    return [Check("kafka", "ok", f"{bootstrap} with {security.describe()}"),
            Check("topics", "fail", "; ".join(wrong)) if wrong else
            Check("topics", "ok", ", ".join(f"{n} ({t.num_partitions})" for n, t in sorted(wanted.items())))]


def _lag_check(settings: Settings, endpoints: Endpoints, checks: list[Check], max_lag: int) -> Check:
    from kafka.errors import KafkaError

    from store.db import connect_sync
    from store.tracking import tracked
    from streams.lag import unread

    status = {c.name: c.status for c in checks}
    if not status["database"] == status["schema"] == status["topics"] == "ok":
        return Check("lag", "skip", "needs the database, its schema and the topics")
    with connect_sync(endpoints.database_url) as conn:
        rows = tracked(conn, settings.consumer_group, settings.feedback_topic)
    try:
        left = unread(endpoints.kafka_bootstrap, settings.feedback_topic, settings.partitions, rows,
                      settings.kafka_security())
    except (KafkaError, TimeoutError) as e:
        return Check("lag", "fail", f"the broker did not report its log ends: {e}")
    total = sum(left.values())
    return Check("lag", "ok" if total <= max_lag else "fail",
                 f"{settings.consumer_group} has {total} feedback messages unread (limit {max_lag}; by partition "
                 + ", ".join(f"{p}: {n}" for p, n in left.items()) + ")")


def _generation_lag_check(settings: Settings, endpoints: Endpoints, checks: list[Check], max_lag: int) -> Check:
    from kafka.errors import KafkaError

    from streams.lag import committed_unread
    from streams.topics import BrokerUnreachable

    if {c.name: c.status for c in checks}["topics"] != "ok":
        return Check("gen lag", "skip", "needs the topics")
    try:
        left = committed_unread(endpoints.kafka_bootstrap, settings.generation_group, settings.generation_topic,
                                settings.partitions, settings.kafka_security())
    except (BrokerUnreachable, KafkaError, TimeoutError) as e:
        return Check("gen lag", "fail", f"the broker did not report the group's offsets or log ends: {e}")
    total = sum(left.values())
    return Check("gen lag", "ok" if total <= max_lag else "fail",
                 f"{settings.generation_group} has {total} generation requests unread (limit {max_lag})")
