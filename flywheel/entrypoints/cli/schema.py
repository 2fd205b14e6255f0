"""`flywheel schema`: the feedback wire format as JSON Schema, generated from the models."""

from __future__ import annotations

import json

import typer


def schema() -> None:
    """Print the wire format of the feedback topic as JSON Schema (checked in as flywheel/domain/wire.schema.json)."""
    from flywheel.domain.wire import json_schema

    typer.echo(schema_text(json_schema()), nl=False)


def schema_text(document: dict[str, object]) -> str:
    """The schema as the checked-in file holds it: two-space indent, a final newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
