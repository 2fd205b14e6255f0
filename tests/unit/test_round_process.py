"""The round builder in a process of its own gives what `build` gives in this one, and fails loudly."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import signal
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from flywheel.domain.rounds import Prepare, Repeat, RoundConfig, RoundResult, Row, build
from flywheel.domain.rounds.entries import Entry, Prepared, Removed
from flywheel.runtime import builder_process as process
from flywheel.runtime import round_builder
from flywheel.runtime.round_builder import build_in_process
from tests.unit.test_rounds import EMPTY_QUARANTINE, all_bytes, make_row, run


@pytest.fixture(autouse=True, params=["fork", "spawn"])
def start_method(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test with the builder forked (this process runs a single thread, as the CLI does) and spawned."""
    monkeypatch.setattr(round_builder, "_start_method", lambda: request.param)
    return str(request.param)


def rows() -> list[Row]:
    return [make_row(kind, f"{kind}-{i}", f"Question number {i} about invoices?", f"Answer {i}.", position=i + 1)
            for i in range(400) for kind in ("sft", "dpo", "kto")]


async def chunks(rows: Sequence[Entry], size: int = 97) -> AsyncIterator[list[Entry]]:
    for start in range(0, len(rows), size):
        yield list(rows[start:start + size])


def in_process(rows: Sequence[Entry], out: Path, watermark: int = 10**9) -> RoundResult:
    return asyncio.run(build_in_process(chunks(rows), RoundConfig(), EMPTY_QUARANTINE, out, watermark=watermark,
                                        parent=None, round_number=1))


def test_the_builder_process_writes_what_build_writes_here(tmp_path: Path) -> None:
    here = run(rows(), tmp_path / "here")
    there = in_process(rows(), tmp_path / "there")
    assert (there.content_hash, there.rows_out, there.files) == (here.content_hash, here.rows_out, here.files)
    assert here.rows_out > 0 and all_bytes(tmp_path / "there") == all_bytes(tmp_path / "here")


def entries() -> list[Entry]:
    """What the reading process sends: rows through Prepare (kept, or removed for want of consent), and repeats."""
    firsts = [replace(r, consent=i % 5 != 0, copy_key=f"key-{i}".encode()) for i, r in enumerate(rows()[:300])]
    prepare = Prepare(RoundConfig())
    return [*map(prepare, firsts), *(Repeat(r.kind, f"key-{i}".encode(), 1000 + i) for i, r in enumerate(firsts))]


def test_the_entries_cross_as_the_same_tuples_of_the_same_types() -> None:
    sent = entries()
    assert {type(e) for e in sent} == {Prepared, Removed, Repeat}
    crossed = process.unpack(process.pack(sent))
    assert crossed == sent and [type(e) for e in crossed] == [type(e) for e in sent]


def test_rows_cross_pickled_beside_the_entry_tuples_in_their_order() -> None:
    sent: list[Entry] = [*rows()[:2], *entries()[:3], rows()[2], *entries()[-2:]]
    crossed = process.unpack(pickle.loads(pickle.dumps(process.pack(sent))))
    assert crossed == sent and [type(e) for e in crossed] == [type(e) for e in sent]
    assert process.unpack(pickle.loads(pickle.dumps(process.pack([])))) == []


def test_prepared_rows_and_repeats_build_there_what_they_build_here(tmp_path: Path) -> None:
    here = build(iter(entries()), RoundConfig(), EMPTY_QUARANTINE, tmp_path / "here", watermark=10**9, parent=None,
                 round_number=1)
    there = in_process(entries(), tmp_path / "there")
    processing = here.manifest["sample_processing"]
    assert processing["removed"]["consent"]["sft"] > 0 and processing["removed"]["dedup"]["kto"] > 0
    assert (there.content_hash, there.rows_out, there.files) == (here.content_hash, here.rows_out, here.files)
    assert all_bytes(tmp_path / "there") == all_bytes(tmp_path / "here")


def test_an_error_in_the_builder_process_is_raised_here(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="newer than watermark"):
        in_process(rows(), tmp_path / "out", watermark=5)


def test_a_builder_process_that_dies_is_an_error_not_a_hang(tmp_path: Path) -> None:
    async def kill_it_midway() -> AsyncIterator[list[Entry]]:
        async for chunk in chunks(rows() * 20, size=50):
            yield chunk
            for child in multiprocessing.active_children():
                if child.name == "round-builder":
                    os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]

    with pytest.raises(RuntimeError, match="round builder process died"):
        asyncio.run(build_in_process(kill_it_midway(), RoundConfig(), EMPTY_QUARANTINE, tmp_path / "out",
                                     watermark=10**9, parent=None, round_number=1))
