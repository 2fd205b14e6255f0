"""Long commands show their progress on a terminal's stderr and keep a pipe's clean (real processes)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest

from flywheel.settings import Settings
from flywheel.simulator import generate
from tests.conftest import settings_env
from tests.integration.test_signals_store import ingest_all
from tests.unit.test_progress import _read_all

pytestmark = pytest.mark.integration


def _run(settings: Settings, *args: str, terminal: bool) -> tuple[str, str]:
    """stdout, and stderr as a person at a terminal (or a pipe) would get it."""
    command = [sys.executable, "-m", "flywheel", *args]
    if not terminal:
        done = subprocess.run(command, env=settings_env(settings), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout, done.stderr
    leader, follower = pty.openpty()
    proc = subprocess.Popen(command, env=settings_env(settings), stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    err = _read_all(leader)  # until the process closes its end
    os.close(leader)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out.decode(), err


def test_replay_and_rounds_build_show_progress_on_a_terminal_only(settings: Settings) -> None:
    ingest_all(settings.database_url, [m.value for m in generate(900, seed=3) if m.expected_reason is None], [300])

    out, err = _run(settings, "replay", "--json", terminal=True)
    events = json.loads(out)["rebuilt_from_events"]
    assert err.startswith("\rrebuilding read models: 0 events") and err.endswith("\r\n")
    assert err.split("\r")[-2].startswith(f"rebuilding read models: {events} events (")

    out, err = _run(settings, "rounds", "build", "--json", terminal=True)
    assert json.loads(out)["round"] == 1
    assert err.split("\r")[-2].startswith("building round: ") and " rows read (" in err

    out, err = _run(settings, "replay", "--json", terminal=False)
    assert json.loads(out)["rebuilt_from_events"] == events + 1 and err == ""  # + the RoundPublished
    out, err = _run(settings, "rounds", "build", "--json", terminal=False)
    assert json.loads(out)["round"] == 2 and err == ""
