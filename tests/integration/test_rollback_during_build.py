"""On-call during a build, on the real stack: `rounds rollback` does not wait for a running build, the build whose
snapshot predates it ends held, and `current` never moves to the held round."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from flywheel.bootstrap import round_ops
from flywheel.domain.commands import BuildRound
from flywheel.domain.rounds import Entry, QuarantineList, RoundConfig, RoundResult
from flywheel.runtime.round_builder import ProcessRoundBuilder
from flywheel.settings import Settings
from flywheel.simulator import generate
from streams.topics import ensure_topics
from tests.integration.test_signals_store import ingest_all
from tests.store_helpers import in_store

pytestmark = pytest.mark.integration


class RollsBackOnTheFirstChunk:
    """The real builder process, while `flywheel rounds rollback 1` runs as the first rows arrive: the build
    holds its lock and its snapshot meanwhile."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.done: subprocess.CompletedProcess[str] | None = None

    async def __call__(self, chunks: AsyncIterator[list[Entry]], config: RoundConfig, quarantine: QuarantineList,
                       out: Path, *, watermark: int, parent: str | None, round_number: int) -> RoundResult:
        async def rolled_back_meanwhile() -> AsyncIterator[list[Entry]]:
            async for chunk in chunks:
                if self.done is None:
                    self.done = subprocess.run(
                        [sys.executable, "-m", "flywheel", "rounds", "rollback", "1", "--reason", "bad data",
                         "--by", "oncall"], env=self.settings.child_env(), capture_output=True, text=True,
                        timeout=60)
                yield chunk

        return await ProcessRoundBuilder()(rolled_back_meanwhile(), config, quarantine, out, watermark=watermark,
                                           parent=parent, round_number=round_number)


def test_a_rollback_lands_during_a_build_which_ends_held_and_current_never_moves_to_it(
        settings: Settings, run_cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    url = settings.database_url
    ensure_topics(settings.kafka_bootstrap, settings)
    ingest_all(url, [m.value for m in generate(1500, seed=4) if m.expected_reason is None], [500])
    root = settings.rounds_root
    first = in_store(url, lambda conn: round_ops(conn, root).build(BuildRound(by="alice")))
    assert (first.round, first.state) == (1, "promoted")

    builder = RollsBackOnTheFirstChunk(settings)
    second = in_store(url, lambda conn: round_ops(conn, root, builder=builder).build(BuildRound(by="alice")))
    assert builder.done is not None and builder.done.returncode == 0, builder.done and builder.done.stderr
    assert "round 1 rolled back; current round: none" in builder.done.stdout  # never round 2, being built
    assert (second.round, second.state) == (2, "held")
    assert second.held_because == ["round 1 was rolled back while this build ran"]
    assert run_cli("rounds", "current", check=False).returncode != 0 and not (root / "current").exists()
    assert "current round: 1" in run_cli("rounds", "restore", "1", "--by", "oncall").stdout  # not the held one
    assert (root / "current").resolve().name == "round-0001"
