"""Progress on stderr: drawn on a terminal, silent anywhere else."""

from __future__ import annotations

import io
import os
import pty

from flywheel.entrypoints.cli.progress import progress


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the terminal's other end is closed: everything is read
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_on_a_terminal_the_count_is_redrawn_on_one_line_and_finished_with_a_newline() -> None:
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as terminal, progress("rebuilding", unit="events", stream=terminal) as shown:
        shown(500)
        shown.stage("deriving", unit="groups", total=3)
        shown(3)
    text = _read_all(leader)
    os.close(leader)
    assert text.startswith("\rrebuilding: 0 events")
    assert "\rderiving: 0/3 groups" in text
    assert text.endswith("\r\n")  # the line is finished (a terminal turns \n into \r\n)
    last = text.split("\r")[-2]
    assert last.startswith("deriving: 3/3 groups (") and last.endswith("s)\x1b[K")


def test_when_stderr_is_not_a_terminal_nothing_is_written() -> None:
    piped = io.StringIO()
    with progress("rebuilding", unit="events", stream=piped) as shown:
        shown(500)
        shown.stage("deriving", total=3)
    assert piped.getvalue() == ""
