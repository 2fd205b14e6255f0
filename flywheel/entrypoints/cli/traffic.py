"""`flywheel simulate`: synthetic production traffic."""

from __future__ import annotations

import sys

import typer

from flywheel.entrypoints.cli.common import _endpoints, _prepare, _print, _settings


def simulate(
    events: int = typer.Option(1000, "--events", "-n", help="How many messages to send."),
    seed: int = typer.Option(0, help="Same seed, same traffic."),
    bad_fraction: float = typer.Option(0.05, help="Share of malformed messages, sent raw."),
    panel_fraction: float = typer.Option(0.04, help="Share of interactions also judged by a panel of other users."),
    start: str = typer.Option("now", help="Event time of the first event (RFC 3339, or 'now'): a second run "
                                          "continues after the first, as real traffic does."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Send realistic synthetic production traffic through FeedbackClient."""
    from datetime import UTC, datetime

    from flywheel.client import FeedbackClient
    from flywheel.simulator import Summary, generate

    settings = _settings()
    endpoints = _endpoints(settings)
    _prepare(settings, endpoints)
    sent = []
    client = FeedbackClient(endpoints.kafka_bootstrap, topic=settings.feedback_topic,
                            max_event_bytes=settings.max_event_bytes, spill_dir=settings.home / "spill",
                            security=settings.kafka_security())
    try:
        stream = generate(events, seed=seed, bad_fraction=bad_fraction, panel_fraction=panel_fraction,
                          max_event_bytes=settings.max_event_bytes,
                          start=datetime.now(UTC) if start == "now" else datetime.fromisoformat(start))
        with typer.progressbar(stream, length=events, label="sending", file=sys.stderr) as bar:
            for sim in bar:
                if sim.event is not None:
                    client.send(sim.event)
                else:
                    client.send_raw(sim.key, sim.value)
                sent.append(sim)
    finally:
        delivered = client.close(timeout=120)
    if delivered.delivered < len(sent):
        typer.echo(f"warning: {delivered.delivered} of {len(sent)} messages delivered; {delivered.spilled} spilled to "
                   f"{client.spill_dir} (sent by the next client there), {delivered.dropped} dropped", err=True)
    summary = Summary.of(sent)
    _print(summary.as_dict(), as_json, summary.describe())
