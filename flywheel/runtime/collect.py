"""Fewer cycle collections in a process that streams many short-lived objects: the ingest worker, the signals
projector, a round build.

Decoded events, rows and derived records are plain objects freed by reference counting, but their sheer
number triggers collections, and each older-generation one traverses every live object: the modules and
the app made at start-up, a projector's cache of prompt groups. Cycles are still collected, later.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

YOUNG_OBJECTS = 200_000  # allocations between two young-generation collections (Python's default: 700)


def _rarely() -> None:
    gc.set_threshold(YOUNG_OBJECTS, 100, 100)


def collect_rarely() -> None:
    """For the rest of a long-lived process, once its start-up is done: leave what exists now out of every
    collection (gc.freeze) and collect the young generation every YOUNG_OBJECTS allocations."""
    gc.freeze()
    _rarely()


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect the young generation every YOUNG_OBJECTS allocations while rows stream through (a fifth of a
    1M-event build went to collections), then as before."""
    before = gc.get_threshold()
    _rarely()
    try:
        yield
    finally:
        gc.set_threshold(*before)
