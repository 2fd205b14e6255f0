"""The round builder in a process of its own, fed chunks of rows through a bounded queue by this one: reading and
building use two cores, and memory stays flat whatever the round's size."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from multiprocessing.queues import Queue
from pathlib import Path
from queue import Full
from typing import Any

from flywheel.domain.rounds import Entry, QuarantineList, RoundConfig, RoundResult
from flywheel.domain.rounds.semantic import SemanticHits
from flywheel.runtime import builder_process as process
from flywheel.runtime.collect import fewer_collections

# Chunks queued for the builder process: bounds memory and what the builder still has to do once the last row is
# read (with 8 it trailed the reader by ~0.26 s at 100k events, with 2 by ~0.11 s, the read itself a little longer).
_CHUNKS_IN_FLIGHT = 2


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """While a spawned process starts: this process's main module out of multiprocessing's sight, so the child
    imports what it runs and not that module again (the builder needs nothing of the CLI, whose import with its
    settings and pydantic took 0.7 s of the builder's start)."""
    main = sys.modules["__main__"]
    saved: dict[str, Any] = {name: main.__dict__[name] for name in ("__spec__", "__file__") if name in main.__dict__}
    main.__spec__ = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        main.__dict__.update(saved)


def _start_method() -> str:
    """Fork when this process runs no other thread: the builder is then at work within milliseconds, every module
    already imported (a fresh interpreter took 0.25 s of a 2.5 s build at 100k events). Spawn otherwise: a fork
    would copy the locks other threads may hold at that moment."""
    return "fork" if threading.active_count() == 1 else "spawn"


async def build_in_process(chunks: AsyncIterator[list[Entry]], *args: Any, **kwargs: Any) -> RoundResult:
    """`build(rows, *args, **kwargs)` in a builder process (flywheel.runtime.builder_process) fed by this one."""
    forked = _start_method() == "fork"
    ctx = multiprocessing.get_context("fork") if forked else multiprocessing.get_context("spawn")
    queue: Queue[list[Any] | None] = ctx.Queue(maxsize=_CHUNKS_IN_FLIGHT)
    results, child_end = ctx.Pipe(duplex=False)
    child = ctx.Process(target=process.main, args=(queue, child_end, os.getpid(), args, kwargs),
                        name="round-builder", daemon=True)
    with contextlib.nullcontext() if forked else _main_module_hidden():
        child.start()
    child_end.close()

    def put(chunk: list[Entry] | None) -> bool:
        """False once the builder takes no more rows (it failed, or died: receive() tells which)."""
        packed = None if chunk is None else process.pack(chunk)
        while not results.poll():
            try:
                queue.put(packed, timeout=1.0)
                return True
            except Full:
                if not child.is_alive():
                    return False
        return False

    def receive() -> tuple[str, Any]:
        while not results.poll(1.0):  # also true at end of file: the builder died without a word
            pass
        try:
            return results.recv()
        except EOFError:
            child.join()
            raise RuntimeError(f"the round builder process died (exit code {child.exitcode})") from None

    try:
        async for chunk in chunks:
            if not await asyncio.to_thread(put, chunk):
                break
        else:
            await asyncio.to_thread(put, None)
        status, value = await asyncio.to_thread(receive)
    except BaseException:
        child.kill()
        raise
    finally:
        await asyncio.to_thread(child.join)
        results.close()
        queue.close()
        queue.cancel_join_thread()  # a killed child never reads what is left: do not wait to flush it
    if status == "error":
        raise value
    return value


class ProcessRoundBuilder:
    """The RoundBuilder port: flywheel.domain.rounds.build in a builder process, while this process reads the rows
    with fewer garbage collections (the rows are many short-lived objects)."""

    async def __call__(self, chunks: AsyncIterator[list[Entry]], config: RoundConfig, quarantine: QuarantineList,
                       out: Path, *, watermark: int, parent: str | None, round_number: int,
                       semantic: SemanticHits | None = None) -> RoundResult:
        with fewer_collections():
            return await build_in_process(chunks, config, quarantine, out, watermark=watermark, parent=parent,
                                          round_number=round_number, semantic=semantic)
