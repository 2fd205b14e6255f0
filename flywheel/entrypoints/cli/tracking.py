"""`flywheel tracking`: where ingest resumes on each partition."""

from __future__ import annotations

import typer

from flywheel.entrypoints.cli.common import _endpoints, _in_store, _operator, _print, _settings, fail

tracking_app = typer.Typer(help="Where ingest resumes on each partition (the store's offsets).", no_args_is_help=True)


@tracking_app.command("reset")
def tracking_reset(
    topic: str = typer.Option(..., "--topic", help="The topic, e.g. flywheel.feedback."),
    partition: int = typer.Option(..., "--partition", min=0),
    to: str = typer.Option(..., "--to", help="start: read the partition again from its start (events already stored"
                                            " are dropped by their event id); end: skip what it holds now."),
    group: str = typer.Option(None, "--group", help="Consumer group (default FLYWHEEL_CONSUMER_GROUP)."),
    by: str = typer.Option(None, "--by", help="Who decided (default FLYWHEEL_OPERATOR, else the OS user)."),
    reason: str = typer.Option("", "--reason", help="Why, for the log."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Move a partition's stored offset, after a worker stopped because the log no longer reaches it. Stop the
    partition's workers first; the reset is an event in the log."""
    from store.tracking import reset
    from streams.lag import next_offsets
    from streams.topics import log_ends, topic_id

    if to not in ("start", "end"):
        fail(f"--to takes start or end, not {to!r}", 2)
    settings = _settings()
    endpoints = _endpoints(settings)
    group = group or settings.consumer_group
    incarnation = topic_id(endpoints.kafka_bootstrap, topic, settings.kafka_security())
    if incarnation is None:
        fail(f"the broker has no topic {topic!r}")
    offset = -1
    if to == "end":
        from store.db import connect_sync
        from store.tracking import tracked

        with connect_sync(endpoints.database_url) as conn:
            rows = [r for r in tracked(conn, group, topic) if r["partition"] == partition]
        near = next_offsets(rows, incarnation, partition + 1)[partition]
        offset = log_ends(endpoints.kafka_bootstrap, topic, {partition: near},
                          security=settings.kafka_security())[partition] - 1
    done = _in_store(lambda conn: reset(conn, group, topic, partition, offset, topic_id=incarnation,
                                        by=_operator(by, settings), note=reason))
    data = {"consumer_group": group, "topic": topic, "partition": partition, "previous_offset": done.previous,
            "offset": done.offset, "topic_id": incarnation}
    _print(data, as_json, f"{group} {topic}[{partition}]: offset {done.previous} -> {done.offset} "
                          f"(next read: {done.offset + 1}); recorded in the log")
