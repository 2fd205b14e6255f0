"""`flywheel setup` (the schema step, as the database's owner) and `flywheel doctor` (what is wrong, at a glance)."""

from __future__ import annotations

import typer

from flywheel.entrypoints.cli.common import _endpoints, _print, _settings


def setup(as_json: bool = typer.Option(False, "--json")) -> None:
    """Create the schema, the least-privilege roles and their grants, and the topics. Run it as the database's
    owner before processes that connect as flywheel_ingest start (they create nothing)."""
    from store.db import ROLES, create_schema
    from streams.topics import BrokerUnreachable, ensure_topics

    settings = _settings()
    endpoints = _endpoints(settings)
    passwords = {role: secret.get_secret_value() for role, secret in (
        ("flywheel_ingest", settings.db_ingest_password), ("flywheel_report", settings.db_report_password),
        ("flywheel_trainer", settings.db_trainer_password)) if secret.get_secret_value()}
    create_schema(endpoints.database_url, role_passwords=passwords)
    try:
        topics = ensure_topics(endpoints.kafka_bootstrap, settings)
    except BrokerUnreachable as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    roles = {role: "login" if role in passwords else "group" for role in ROLES}
    data = {"schema": "current", "roles": roles, "topics": topics}
    _print(data, as_json, "schema current\nroles   " + ", ".join(f"{r} ({k})" for r, k in roles.items())
           + "\ntopics  " + ", ".join(f"{t} ({n} partitions)" for t, n in topics.items()))
