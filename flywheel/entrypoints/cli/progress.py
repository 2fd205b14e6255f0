"""Progress of long commands on stderr: one line redrawn in place, and nothing when stderr is not a terminal."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TextIO


class Progress:
    """Counts work done (call it with how many items just finished) and says which stage runs, on one terminal
    line. Output is for a person watching, so a pipe, a file or a log collector gets none of it."""

    def __init__(self, label: str, *, unit: str = "items", total: int | None = None, stream: TextIO | None = None,
                 interval: float = 0.1) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.shown = self.stream.isatty()
        self.label, self.unit, self.total, self.done = label, unit, total, 0
        self.interval = interval
        self._started = self._drawn = time.monotonic()

    def __call__(self, done: int) -> None:
        self.done += done
        self._draw()

    def stage(self, label: str, *, unit: str | None = None, total: int | None = None) -> None:
        """A new stage: its own label and count (the time keeps running)."""
        self.label, self.done, self.total = label, 0, total
        self.unit = unit or self.unit
        self._draw(now=True)

    def close(self) -> None:
        if self.shown:
            self._draw(now=True)
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, *, now: bool = False) -> None:
        if not self.shown:
            return
        clock = time.monotonic()
        if not now and clock - self._drawn < self.interval:
            return
        self._drawn = clock
        count = f"{self.done}" if self.total is None else f"{self.done}/{self.total}"
        self.stream.write(f"\r{self.label}: {count} {self.unit} ({clock - self._started:.1f}s)\x1b[K")
        self.stream.flush()


@contextlib.contextmanager
def progress(label: str, *, unit: str = "items", total: int | None = None,
             stream: TextIO | None = None) -> Iterator[Progress]:
    """A Progress whose line is finished when the block ends, however it ends."""
    shown = Progress(label, unit=unit, total=total, stream=stream)
    shown.stage(label, unit=unit, total=total)
    try:
        yield shown
    finally:
        shown.close()
