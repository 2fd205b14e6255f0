"""Checkable prompts: the verifiers `flywheel select --checks FILE` adds to the groups they name.

A JSONL file, one check per line, naming a prompt by its last user message (exact text, surrounding
white space ignored):

    {"prompt": "What is 17 * 3?", "answer": "51"}                      # NumericAnswerVerifier
    {"prompt": "What is pi to 2 places?", "answer": 3.14, "tolerance": 0.005}
    {"prompt": "Write add(a, b).", "tests": "assert add(2, 3) == 5", "timeout_s": 5}   # PythonTestsVerifier

A prompt may have one answer check and one tests check. Any other shape is an error that names the
line: a check that silently does not apply would make selection look verified when it is not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sampling.adapters.test_runner import PythonTestsVerifier
from sampling.verifiers import NumericAnswerVerifier, Scorer

_ANSWER_KEYS = {"prompt", "answer", "tolerance"}
_TESTS_KEYS = {"prompt", "tests", "timeout_s"}


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str | None:
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content") or "").strip()
    return None


@dataclass(frozen=True)
class Checks:
    by_prompt: dict[str, list[Scorer]] = field(default_factory=dict)
    # each check's (file:line, prompt, answer or tests): what must not be an evaluation item
    texts: list[tuple[str, str, str]] = field(default_factory=list)

    def for_prompt(self, messages: Sequence[Mapping[str, Any]]) -> list[Scorer]:
        """The verifiers of the check(s) naming this conversation's last user message (none: [])."""
        text = last_user_text(messages)
        return list(self.by_prompt.get(text, [])) if text is not None else []


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number")
    return float(value)


def _check(obj: Any) -> tuple[str, Scorer]:
    if not isinstance(obj, dict):
        raise ValueError("a check must be a JSON object")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    if ("answer" in obj) == ("tests" in obj):
        raise ValueError('a check has either "answer" or "tests"')
    allowed = _ANSWER_KEYS if "answer" in obj else _TESTS_KEYS
    if extra := sorted(set(obj) - allowed):
        raise ValueError(f"unknown field(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}")
    if "answer" in obj:
        answer = obj["answer"]
        if isinstance(answer, bool) or not isinstance(answer, str | int | float):
            raise ValueError("answer must be a number or a string holding one")
        tolerance = _number(obj.get("tolerance", 0.0), "tolerance")
        return prompt.strip(), NumericAnswerVerifier(str(answer), tolerance)
    tests = obj["tests"]
    if not isinstance(tests, str) or not tests.strip():
        raise ValueError("tests must be non-empty Python source")
    return prompt.strip(), PythonTestsVerifier(tests, _number(obj.get("timeout_s", 10.0), "timeout_s"))


def load_checks(path: Path) -> Checks:
    """Read a checks file; raises ValueError naming the file and line of the first bad check."""
    checks = Checks()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            prompt, verifier = _check(json.loads(line))
            if any(v.name == verifier.name for v in checks.by_prompt.get(prompt, [])):
                raise ValueError(f"a second {verifier.name} check for this prompt")
        except ValueError as e:  # json.JSONDecodeError included
            raise ValueError(f"{path}:{n}: {e}") from None
        checks.by_prompt.setdefault(prompt, []).append(verifier)
        checks.texts.append((f"{path}:{n}", prompt, _answer_text(json.loads(line))))
    return checks


def _answer_text(check: dict[str, Any]) -> str:
    return str(check["answer"] if "answer" in check else check["tests"])
