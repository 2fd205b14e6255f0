"""Scorers: verifiers for checkable tasks (JSON, numeric answers, Python tests) and an LLM judge via the generator."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import jsonschema
import orjson

# Reasons a verifier gives for a value it could not reach normally; an empty reason means "judged".
INVALID_JSON = "invalid_json"
SCHEMA_VIOLATION = "schema_violation"
NO_NUMBER = "no_number"
WRONG_ANSWER = "wrong_answer"
TESTS_FAILED = "tests_failed"
TIMEOUT = "timeout"
NO_JUDGEMENT = "no_judgement"
UNPARSEABLE_JUDGEMENT = "unparseable_judgement"
SCORE_OUT_OF_RANGE = "score_out_of_range"


@runtime_checkable
class Scorer(Protocol):
    """Gives every completion of one prompt a value; name and version are recorded on every score."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def score(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[float]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    value: float
    reason: str = ""  # why, when the scorer could not judge normally or the answer failed a check


@runtime_checkable
class ExplainingScorer(Scorer, Protocol):
    """A scorer that can also say why each value is what it is."""

    def verdicts(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[Verdict]: ...


def _short_hash(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()[:8]


_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]


# ---- JSON format ----


class JsonFormatVerifier:
    """1.0 when the completion is a JSON document (optionally inside one ```json fence) that validates against
    the schema, 0.0 otherwise. With no schema any well-formed JSON passes."""

    name = "json_format"

    def __init__(self, schema: dict[str, Any] | None = None) -> None:
        self._schema = schema
        self._validator: Any = None
        if schema is not None:
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)  # a broken schema is a configuration error: fail at construction
            self._validator = cls(schema)
        # The schema decides what passes, so it is part of the version.
        self.version = "1" if schema is None else f"1+schema.{_short_hash(schema)}"

    def verdicts(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[Verdict]:
        return [self._one(c) for c in completions]

    def score(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[float]:
        return [v.value for v in self.verdicts(prompt_messages, completions)]

    def _one(self, completion: str) -> Verdict:
        text = completion.strip()
        blocks = _fenced_blocks(text)
        if len(blocks) == 1 and text.startswith("```") and text.endswith("```") and blocks[0][0] in ("", "json"):
            text = blocks[0][1]
        try:
            document = json.loads(text)
        except ValueError as e:
            return Verdict(value=0.0, reason=f"{INVALID_JSON}: {e}")
        if self._validator is not None:
            error = jsonschema.exceptions.best_match(self._validator.iter_errors(document))
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                return Verdict(value=0.0, reason=f"{SCHEMA_VIOLATION}: {where}: {error.message}")
        return Verdict(value=1.0)


# ---- numeric answer ----

# Integers, decimals, comma thousands separators and exponents; a sign only where it cannot be a minus between
# two operands ("5-3" ends in 3, not -3).
_NUMBER = re.compile(r"(?<![\d.])(?:(?<![\w)\]])[-+])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")


def last_number(text: str) -> Decimal | None:
    """The last number written in `text`, exactly, or None."""
    for match in reversed(_NUMBER.findall(text)):
        try:
            return Decimal(match.replace(",", ""))
        except InvalidOperation:
            continue
    return None


class NumericAnswerVerifier:
    """1.0 when the last number of the completion is within `tolerance` of the expected answer, else 0.0."""

    name = "numeric_answer"

    def __init__(self, expected: str, tolerance: float = 0.0) -> None:
        value = last_number(expected)
        if value is None:
            raise ValueError(f"expected answer {expected!r} has no number")
        if tolerance < 0:
            raise ValueError("tolerance must be >= 0")
        self.expected = value
        self.tolerance = Decimal(repr(float(tolerance)))
        # What counts as right is part of the version, as a schema is of JsonFormatVerifier's.
        self.version = f"1+answer.{_short_hash([str(self.expected), str(self.tolerance)])}"

    def verdicts(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[Verdict]:
        out = []
        for c in completions:
            got = last_number(c)
            if got is None:
                out.append(Verdict(value=0.0, reason=NO_NUMBER))
            elif abs(got - self.expected) <= self.tolerance:
                out.append(Verdict(value=1.0))
            else:
                out.append(Verdict(value=0.0, reason=f"{WRONG_ANSWER}: {got}"))
        return out

    def score(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[float]:
        return [v.value for v in self.verdicts(prompt_messages, completions)]


# ---- Python unit tests ----

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


def extract_code(completion: str) -> str:
    """The first ```python (or ```py) block, else the first unlabelled fenced block, else the whole text."""
    blocks = _fenced_blocks(completion)
    for label, body in blocks:
        if label in ("python", "py", "python3"):
            return body
    for label, body in blocks:
        if label == "":
            return body
    return completion


class PythonTestsVerifier:
    """1.0 when the candidate's code followed by `tests_source` runs to the end within `timeout_s`, else 0.0.

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
        self.version = f"1+tests.{_short_hash(tests_source)}"  # the tests decide what passes
        self.timeout_s = timeout_s
        self.output_limit = output_limit
        # Printed only after the tests ran to the end: an os._exit(0) in the solution cannot fake a pass.
        self._marker = f"flywheel-tests-passed-{hashlib.sha256(tests_source.encode()).hexdigest()[:16]}"

    def verdicts(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[Verdict]:
        return [self._run(extract_code(c)) for c in completions]

    def score(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[float]:
        return [v.value for v in self.verdicts(prompt_messages, completions)]

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
            return Verdict(value=0.0, reason=f"{TIMEOUT}: after {self.timeout_s:g}s")
        if returncode == 0 and output.rstrip().endswith(self._marker):
            return Verdict(value=1.0)
        tail = output[-self.output_limit:].strip()
        return Verdict(value=0.0, reason=f"{TESTS_FAILED}: exit {returncode}: {tail}")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# ---- LLM judge ----


class JudgeCandidate(Protocol):
    @property
    def text(self) -> str: ...


class JudgeCandidateGroup(Protocol):
    @property
    def candidates(self) -> Sequence[JudgeCandidate]: ...


class JudgeGenerator(Protocol):
    """The part of the generator port the judge needs: one candidate group per prompt, in prompt order."""

    def generate(self, prompts: list[list[dict[str, Any]]], spec: Any) -> Sequence[JudgeCandidateGroup]: ...


JUDGE_INSTRUCTIONS = (
    "Grade the assistant's final response on a scale from 1 (worst) to 10 (best). "
    "End your reply with a line of the form 'Score: N', where N is an integer from 1 to 10."
)
_SCORE_LINE = re.compile(r"score\s*(?:\*\*)?\s*[:=]\s*(?:\*\*)?\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_BARE_SCORE = re.compile(r"(-?\d+(?:\.\d+)?)(?:\s*/\s*10)?")


def parse_judgement(text: str) -> Verdict:
    """The 1-10 score of a judge's reply: the last 'Score: N', or a reply that is only a number (or 'N/10').
    Anything else scores 0 with the reason."""
    matches = _SCORE_LINE.findall(text)
    if matches:
        raw = matches[-1]
    else:
        bare = _BARE_SCORE.fullmatch(text.strip().strip("*").strip())
        if bare is None:
            return Verdict(value=0.0, reason=UNPARSEABLE_JUDGEMENT)
        raw = bare.group(1)
    value = float(raw)
    if not 1.0 <= value <= 10.0:
        return Verdict(value=0.0, reason=f"{SCORE_OUT_OF_RANGE}: {raw}")
    return Verdict(value=value)


def _render(messages: Sequence[Mapping[str, Any]]) -> str:
    return "\n\n".join(f"[{m.get('role', '')}]\n{m.get('content') or ''}" for m in messages)


class JudgeScorer:
    """An LLM judge: asks the generator for a 1-10 grade of each completion under `rubric` and parses it.

    The rubric decides what a grade means, so its hash is part of the version; pass `version` to also name the
    judge model (the spec is opaque here).
    """

    name = "llm_judge"

    def __init__(self, generator: JudgeGenerator, rubric: str, spec: Any, *, version: str = "1") -> None:
        self.generator = generator
        self.rubric = rubric
        self.spec = spec
        self.version = f"{version}+rubric.{_short_hash(rubric)}"

    def prompts(self, prompt_messages: Sequence[Mapping[str, Any]], completions: Sequence[str]) -> list[
            list[dict[str, Any]]]:
        """The judge conversations, one per completion."""
        conversation = _render(prompt_messages)
        return [
            [
                {"role": "system", "content": f"{self.rubric.strip()}\n\n{JUDGE_INSTRUCTIONS}"},
                {"role": "user", "content": f"Conversation:\n{conversation}\n\nResponse to grade:\n{c}"},
            ]
            for c in completions
        ]

    def verdicts(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[Verdict]:
        if not completions:
            return []
        groups = list(self.generator.generate(self.prompts(prompt_messages, completions), self.spec))
        out = []
        for i in range(len(completions)):
            if i >= len(groups) or not groups[i].candidates:
                out.append(Verdict(value=0.0, reason=NO_JUDGEMENT))
            else:
                out.append(parse_judgement(groups[i].candidates[0].text))
        return out

    def score(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[float]:
        return [v.value for v in self.verdicts(prompt_messages, completions)]
