"""Fewer cycle collections in a long-lived process that streams many short-lived objects (the ingest worker,
the signals projector).

Decoded events, rows and derived records are plain objects freed by reference counting, but their sheer
number triggers collections, and each older-generation one traverses every live object: the modules and
the app made at start-up, a projector's cache of prompt groups. Cycles are still collected, later.
"""

from __future__ import annotations

import gc

YOUNG_OBJECTS = 200_000  # allocations between two young-generation collections (Python's default: 700)


def collect_rarely() -> None:
    """Once start-up is done: leave what exists now out of every collection (gc.freeze) and collect the young
    generation every YOUNG_OBJECTS allocations."""
    gc.freeze()
    gc.set_threshold(YOUNG_OBJECTS, 100, 100)
