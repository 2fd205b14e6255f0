"""Round directories on disk: staging, publication by rename, rollback markers, the `current` symlink."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from flywheel.domain.rounds.rollback import MARKER


def round_dir(root: Path, number: int) -> Path:
    return root / f"round-{number:04d}"


class RoundDirectories:
    """The RoundFiles port on a directory (FLYWHEEL_ROUNDS_DIR): round-NNNN directories and `current`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def staging(self, number: int) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in [*self.root.glob(".building-*"), round_dir(self.root, number)]:
            shutil.rmtree(stale, ignore_errors=True)  # a crashed build's leftovers: never published
        return self.root / f".building-{number:04d}-{uuid.uuid4().hex[:8]}"

    def location(self, number: int) -> Path:
        return round_dir(self.root, number)

    def publish(self, staged: Path, number: int) -> None:
        staged.rename(round_dir(self.root, number))

    def discard(self, number: int, staged: Path | None) -> None:
        for path in (staged, round_dir(self.root, number)):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)

    def point_current(self, number: int | None) -> None:
        link = self.root / "current"
        if number is None:
            link.unlink(missing_ok=True)
            return
        tmp = self.root / f".current-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(round_dir(self.root, number).name)
        os.replace(tmp, link)

    def mark_rolled_back(self, number: int, note: dict[str, Any]) -> None:
        marker = round_dir(self.root, number) / MARKER
        if marker.parent.exists():
            marker.write_bytes(orjson.dumps(note, option=orjson.OPT_INDENT_2))

    def clear_rolled_back(self, number: int) -> None:
        (round_dir(self.root, number) / MARKER).unlink(missing_ok=True)

    def purge(self, number: int) -> int:
        files = sorted(round_dir(self.root, number).glob("*/*.jsonl"))
        for f in files:
            f.unlink()
        return len(files)

    def write_consumption(self, number: int, consumptions: Sequence[dict[str, Any]]) -> None:
        runs = sorted(c["run_id"] for c in consumptions)
        (round_dir(self.root, number) / "consumption.json").write_bytes(orjson.dumps(
            {"round": number, "runs": runs, "consumptions": list(consumptions)}, option=orjson.OPT_INDENT_2))
