"""Python unit tests as a verifier: each candidate's code runs in an isolated interpreter of its own."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from sampling.verifiers import TESTS_FAILED, TIMEOUT, Verdict, extract_code, short_hash

_RUNNER = """\
import sys
namespace = {"__name__": "solution"}
try:
    exec(compile(open("solution.py", encoding="utf-8").read(), "solution.py", "exec"), namespace)
except SystemExit:
    sys.exit(3)  # a solution that exits early must not skip the tests
exec(compile(open("tests.py", encoding="utf-8").read(), "tests.py", "exec"), namespace)
sys.stdout.flush()
sys.stdout.write("\\n%s\\n")
"""


class PythonTestsVerifier:
    """1.0 when the candidate's code followed by `tests_source` runs to the end within `timeout_s`, else 0.0 and a
    veto.

    Each candidate runs in its own isolated interpreter (`python -I`) in a fresh temporary directory, with an
    empty environment and no standard input; on timeout its whole process group is killed. The tests share the
    solution's namespace, so plain `assert`s on its functions work. This isolates accidents, not attacks: it is
    no sandbox for untrusted code.
    """

    name = "python_tests"

    def __init__(self, tests_source: str, timeout_s: float = 10.0, *, output_limit: int = 2000) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.tests_source = tests_source
        self.version = f"1+tests.{short_hash(tests_source)}"  # the tests decide what passes
        self.timeout_s = timeout_s
        self.output_limit = output_limit
        # Printed only after the tests ran to the end: an os._exit(0) in the solution cannot fake a pass.
        self._marker = f"flywheel-tests-passed-{hashlib.sha256(tests_source.encode()).hexdigest()[:16]}"

    def verdicts(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[Verdict]:
        return [self._run(extract_code(c)) for c in completions]

    def score(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[float]:
        return [float(v.value or 0.0) for v in self.verdicts(prompt_messages, completions)]

    def _run(self, code: str) -> Verdict:
        with tempfile.TemporaryDirectory(prefix="flywheel-pytests-") as tmp:
            root = Path(tmp)
            (root / "solution.py").write_text(code, encoding="utf-8")
            (root / "tests.py").write_text(self.tests_source, encoding="utf-8")
            (root / "runner.py").write_text(_RUNNER % self._marker, encoding="utf-8")
            with open(root / "output.txt", "wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "runner.py"], cwd=root, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, env={"PATH": os.defpath, "HOME": tmp}, start_new_session=True,
                )
                try:
                    returncode: int | None = proc.wait(timeout=self.timeout_s)
                except subprocess.TimeoutExpired:
                    returncode = None
                finally:
                    _kill_group(proc)  # on timeout, and children the solution left behind
            output = (root / "output.txt").read_bytes().decode("utf-8", errors="replace")
        if returncode is None:
            return Verdict(value=0.0, reason=f"{TIMEOUT}: after {self.timeout_s:g}s", veto=True)
        if returncode == 0 and output.rstrip().endswith(self._marker):
            return Verdict(value=1.0)
        tail = output[-self.output_limit:].strip()
        return Verdict(value=0.0, reason=f"{TESTS_FAILED}: exit {returncode}: {tail}", veto=True)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
