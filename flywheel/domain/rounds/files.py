"""The files of a round: the twelve split files, each hashed and counted while it is written, and the manifest's."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from flywheel.domain.rounds.rows import KINDS
from flywheel.domain.rounds.split import SPLITS

FILE_NAMES = {"sft": "sft.jsonl", "dpo": "dpo.jsonl", "kto": "kto.jsonl", "group": "groups.jsonl"}
MANIFEST = "manifest.json"
# Lines a split file buffers before they are written and hashed as one block (~100 KiB at most).
_LINES_PER_WRITE = 64


class SplitFiles:
    """The twelve split files of a round, each hashed (sha256) and counted while it is written."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._files: dict[tuple[str, str], IO[bytes]] = {}
        self._hashes: dict[tuple[str, str], Any] = {}
        self._pending: dict[tuple[str, str], list[bytes]] = {}  # lines not written yet, by file
        self.rows: Counter[tuple[str, str]] = Counter()
        self.bytes: Counter[tuple[str, str]] = Counter()

    def __enter__(self) -> SplitFiles:
        try:
            for split in SPLITS:
                (self.out_dir / split).mkdir(parents=True, exist_ok=True)
                for kind in KINDS:
                    self._files[(split, kind)] = open(self.out_dir / split / FILE_NAMES[kind], "wb")  # noqa: SIM115
                    self._hashes[(split, kind)] = hashlib.sha256()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if exc is None:
                self._finish()
        finally:
            self.close()

    def close(self) -> None:
        for f in self._files.values():
            f.close()

    def write(self, split: str, kind: str, line: bytes) -> None:
        """Append one record's line (`Prepared.line`)."""
        pending = self._pending.setdefault((split, kind), [])
        pending.append(line)
        if len(pending) == _LINES_PER_WRITE:
            self._flush((split, kind))

    def _flush(self, file: tuple[str, str]) -> None:
        # A block of lines at a time: one write and one hash update instead of one per line (hashing the block
        # gives the same digest), which was a tenth of the builder's time.
        lines = self._pending.pop(file, None)
        if lines:
            block = b"".join(lines)
            self._files[file].write(block)
            self._hashes[file].update(block)
            self.rows[file] += len(lines)
            self.bytes[file] += len(block)

    def _finish(self) -> None:
        """Write what is still pending (leaving the block with no error: every line has been written)."""
        for file in list(self._pending):
            self._flush(file)

    def manifest(self) -> dict[str, dict[str, Any]]:
        return {
            f"{split}/{FILE_NAMES[kind]}": {"sha256": self._hashes[(split, kind)].hexdigest(),
                                            "rows": self.rows[(split, kind)], "bytes": self.bytes[(split, kind)]}
            for split in SPLITS for kind in KINDS
        }
