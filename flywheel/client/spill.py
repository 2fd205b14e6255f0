"""Local spill files for FeedbackClient: what overflows its memory while the broker is away, replayed later.

A file is a run of records `[key length u32][value length u32][key][value]` (key length 0xFFFFFFFF: no key). Each
client writes to a file of its own, locked while it lives (flock), so several processes may share one directory;
a file no live process holds (its writer exited or crashed) is taken over and replayed by the next client there.
A record may be sent twice (a crash between its delivery and the file's removal): the store drops it by event id.
"""

from __future__ import annotations

import fcntl
import os
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

_HEADER = struct.Struct(">II")
_NO_KEY = 0xFFFFFFFF


class SpillFull(Exception):
    """The spill directory holds its allowed bytes already."""


class SpillWriter:
    """Appends records to this client's current spill file (created on the first record)."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory, self.max_bytes = directory, max_bytes
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self.bytes = sum(p.stat().st_size for p in directory.glob("*.spill")) if directory.exists() else 0

    def write(self, key: bytes | None, value: bytes) -> None:
        size = _HEADER.size + len(value) + (len(key) if key else 0)
        if self.bytes + size > self.max_bytes:
            raise SpillFull(f"{self.directory} holds {self.bytes} of {self.max_bytes} bytes")
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._path = self.directory / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.spill"
            self._file = open(self._path, "ab")  # noqa: SIM115 - stays open while records arrive
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._file.write(_HEADER.pack(_NO_KEY if key is None else len(key), len(value)))
        if key:
            self._file.write(key)
        self._file.write(value)
        self._file.flush()  # in the OS's hands: a crash of the app does not lose it
        self.bytes += size

    @property
    def open(self) -> bool:
        """Whether this writer has records in a file not yet sealed (so not yet replayed)."""
        return self._file is not None

    def seal(self) -> Path | None:
        """Close the current file (the next record starts another) and return it, still to be replayed."""
        if self._file is None:
            return None
        self._file.close()
        path, self._file, self._path = self._path, None, None
        return path


def records(path: Path) -> Iterator[tuple[bytes | None, bytes]]:
    """The records of a spill file, in order; a record cut short by a crash ends it."""
    with open(path, "rb") as f:
        while header := f.read(_HEADER.size):
            if len(header) < _HEADER.size:
                return
            key_len, value_len = _HEADER.unpack(header)
            key = None if key_len == _NO_KEY else f.read(key_len)
            value = f.read(value_len)
            if len(value) < value_len or (key is not None and len(key) < key_len):
                return
            yield key, value


def unclaimed(directory: Path) -> bool:
    """Whether `directory` holds a spill file that no live writer or replayer holds."""
    held = claim(directory)
    for _, handle in held:
        handle.close()
    return bool(held)


def claim(directory: Path) -> list[tuple[Path, Any]]:
    """Spill files in `directory` that no live writer holds, each locked for this caller, oldest first."""
    if not directory.exists():
        return []
    out = []
    for path in sorted(directory.glob("*.spill"), key=lambda p: p.stat().st_mtime):
        handle = open(path, "rb")  # noqa: SIM115 - held (with its lock) until the file is replayed
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        out.append((path, handle))
    return out
