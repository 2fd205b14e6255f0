"""The `flywheel` command: one console script, human output by default, --json for scripts."""

from __future__ import annotations

import typer

from flywheel.entrypoints.cli import candidates, inspection, ops, privacy, run, schema, traffic
from flywheel.entrypoints.cli.privacy import consent_app
from flywheel.entrypoints.cli.quarantine import quarantine_app
from flywheel.entrypoints.cli.rounds import rounds_app
from flywheel.entrypoints.cli.stack import stack_app
from flywheel.entrypoints.cli.tracking import tracking_app

app = typer.Typer(help="Flywheel: feedback events in, round-tagged training datasets out.", no_args_is_help=True)
# The root's commands are registered here, not where they are defined: this list is the order `--help` shows.
app.command()(run.worker)
app.command()(run.scheduler)
app.command()(run.up)
app.command()(traffic.simulate)
app.command()(inspection.stats)
app.command()(inspection.signals)
app.command()(inspection.replay)
app.command()(candidates.sample)
app.command()(candidates.generate)
app.command("generation-worker")(candidates.generation_worker)
app.command("select")(candidates.select_cmd)
app.command()(schema.schema)
app.command()(privacy.erase)
app.command()(ops.setup)
app.command()(ops.doctor)
app.add_typer(stack_app, name="stack")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(rounds_app, name="rounds")
app.add_typer(tracking_app, name="tracking")
app.add_typer(consent_app, name="consent")


def main() -> None:
    app()
