"""Letting running workers read what the broker holds before the local stack stops."""

from __future__ import annotations

from collections.abc import Callable

import typer

from flywheel.settings import Endpoints, Settings


def _unread(settings: Settings, endpoints: Endpoints) -> Callable[[], int]:
    """A count of the messages on the feedback topic that the consumer group has not read."""
    from store.db import connect_sync
    from store.tracking import tracked
    from streams.lag import unread
    from streams.topics import ensure_topics

    partitions = ensure_topics(endpoints.kafka_bootstrap, settings)[settings.feedback_topic]

    def count() -> int:
        with connect_sync(endpoints.database_url) as conn:
            rows = tracked(conn, settings.consumer_group, settings.feedback_topic)
        return sum(unread(endpoints.kafka_bootstrap, settings.feedback_topic, partitions, rows,
                          settings.kafka_security()).values())

    return count


def _drain(settings: Settings, endpoints: Endpoints, *, reading: Callable[[], bool] = lambda: True,
           patience: float | None = None) -> int | None:
    """Let the worker read what the broker holds, for at most FLYWHEEL_DRAIN_SECONDS (streams.lag.drain); None:
    the broker or store could not say."""
    from streams.lag import drain

    try:
        left = _unread(settings, endpoints)
        first = left()
        if first:
            typer.echo(f"draining: {first} messages on the broker not yet ingested "
                       f"(at most {settings.drain_seconds:g}s)…")
        return drain(left, seconds=settings.drain_seconds, still_reading=reading, patience=patience)
    except Exception as e:  # the stack may be half down already: say so, and stop anyway
        typer.echo(f"warning: could not count the unread messages ({type(e).__name__}: {e})", err=True)
        return None


def _say_unread(settings: Settings, endpoints: Endpoints, left: int | None) -> None:
    if left == 0:
        typer.echo("drained: every message on the broker is ingested")
    elif left:
        typer.echo(f"warning: {left} messages were left unread on {settings.feedback_topic}: the local broker keeps "
                   "messages in memory only, so they are lost when it stops", err=True)
