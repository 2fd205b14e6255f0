"""The CLI's shared way of stopping a command with an error."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import typer
from typer.testing import CliRunner

from flywheel.entrypoints.cli.common import fail, failing
from flywheel.settings import mask_url


def _run(body: Callable[[], None]) -> tuple[int, str, str]:
    app = typer.Typer()
    app.command()(body)  # a single command: typer runs it with no name on the line
    done = CliRunner().invoke(app, [])
    if done.exception is not None and not isinstance(done.exception, SystemExit):
        raise done.exception
    return done.exit_code, done.stdout, done.stderr


def test_fail_prints_the_error_on_stderr_and_exits_with_its_code() -> None:
    def main() -> None:
        fail("no round 7", 2)

    assert _run(main) == (2, "", "error: no round 7\n")


def test_failing_turns_the_named_errors_into_exit_status_1_by_default() -> None:
    def main() -> None:
        with failing(LookupError):
            raise KeyError("round 3")

    assert _run(main) == (1, "", "error: 'round 3'\n")


def test_failing_lets_other_errors_through() -> None:
    def main() -> None:
        with failing(LookupError, code=2):
            raise RuntimeError("not mine")

    with pytest.raises(RuntimeError, match="not mine"):
        _run(main)


def test_nested_failing_blocks_give_each_error_its_own_code() -> None:
    def main() -> None:
        with failing(LookupError), failing(ValueError, code=2):
            raise ValueError("not held")

    assert _run(main) == (2, "", "error: not held\n")


def test_a_database_url_is_shown_without_its_password() -> None:
    assert mask_url("postgresql://ingest:s3cr%40t@db:5432/flywheel?sslmode=require") == \
        "postgresql://ingest:***@db:5432/flywheel?sslmode=require"
    assert mask_url("postgresql://postgres@127.0.0.1:5432/flywheel") == \
        "postgresql://postgres@127.0.0.1:5432/flywheel"
