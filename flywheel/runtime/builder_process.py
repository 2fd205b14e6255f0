"""The round builder in a process of its own, fed chunks of rows through a queue."""

from __future__ import annotations

import os
import queue
import signal
import traceback
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from typing import Any

from flywheel.domain.rounds import Entry, build
from flywheel.runtime.child import die_with_parent
from flywheel.runtime.collect import fewer_collections
from flywheel.runtime.packing import Packed, pack, unpack

__all__ = ["NICENESS", "ParentGone", "main", "pack", "unpack"]

# A build is batch work: it yields the CPU to everything else, above all `rounds rollback` and `restore`, which
# must finish in under a second while a build of a million events takes both cores.
NICENESS = 10


class ParentGone(RuntimeError):
    pass


def _rows(chunks: Queue[Packed | None], parent_pid: int) -> Iterator[Entry]:
    while True:
        try:
            chunk = chunks.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent_pid:
                raise ParentGone("the process feeding the rows is gone") from None
            continue
        if chunk is None:
            return
        yield from unpack(chunk)


def main(chunks: Queue[Packed | None], results: Connection, parent_pid: int, args: tuple[Any, ...],
         kwargs: dict[str, Any]) -> None:
    """Run `build(rows, *args, **kwargs)` over the chunks (`pack`ed; None ends them); send ("ok", RoundResult) or
    ("error", exception) back.

    The parent reads rows from Postgres and converts them while this process runs them through the gates
    and writes the files: two cores instead of one (the GIL would serialise threads). The rows arrive in
    the parent's order, so the output is the same as `build` on them in one process. The queue is bounded:
    memory stays flat. The process dies with its parent (a killed build leaves no builder behind).
    """
    die_with_parent()  # elsewhere than Linux, the queue's timeout in _rows notices
    os.nice(NICENESS)  # on-call's rollback must not wait for a core behind a build
    # Forked from a process running an event loop: Ctrl-C is this process's own again, not that loop's handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with fewer_collections():
            outcome: tuple[str, Any] = ("ok", build(_rows(chunks, parent_pid), *args, **kwargs))
    except Exception as e:  # sent to the parent, which raises it
        outcome = ("error", e)
    try:
        results.send(outcome)
    except Exception:
        status, value = outcome
        if status == "ok":
            raise
        # an exception that does not pickle: send its text
        results.send(("error", RuntimeError("".join(traceback.format_exception(value)))))
    finally:
        results.close()
