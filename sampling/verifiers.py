"""Scorers: the scorer port and the pure verifiers of checkable tasks (JSON, numeric answers); a failed check vetoes."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
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
    """Gives every completion of one prompt a value (NaN: no score); name and version are recorded on every
    score."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def score(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[float]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """One scorer's judgement of one completion. A value of None is "no score": the scorer could not judge it
    (say, a judge reply that does not parse), which is not the same as judging it bad."""

    value: float | None
    reason: str = ""  # why, when the scorer could not judge normally or the answer failed a check
    rationale: str = ""  # the scorer's own words for its value (a judge's)
    veto: bool = False  # a failed check: the completion may never be the best of its group nor a chosen answer


@runtime_checkable
class ExplainingScorer(Scorer, Protocol):
    """A scorer that can also say why each value is what it is."""

    def verdicts(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[Verdict]: ...


@runtime_checkable
class JudgingScorer(ExplainingScorer, Protocol):
    """A model grading under a rubric: the model's name and the rubric's hash go on every score it gives."""

    @property
    def judge_model(self) -> str: ...

    @property
    def rubric_hash(self) -> str: ...


# The absolute scale of each scorer whose values are bounded (a reward model's logits are not). Selection
# thresholds are stated on the deciding scorer's scale; one off it is a configuration error.
SCALES: dict[str, tuple[float, float]] = {
    "json_format": (0.0, 1.0),
    "numeric_answer": (0.0, 1.0),
    "python_tests": (0.0, 1.0),
    "llm_judge": (1.0, 10.0),
}


# The scorers that check a task (a failed check vetoes) rather than judge an answer's quality: they are not audited
# on the bias probes nor compared with the users' preferences.
CHECKS = frozenset({"json_format", "numeric_answer", "python_tests"})


def short_hash(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()[:8]


_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]


# ---- JSON format ----


class JsonFormatVerifier:
    """1.0 when the completion is a JSON document (optionally inside one ```json fence) that validates against
    the schema, 0.0 and a veto otherwise. With no schema any well-formed JSON passes."""

    name = "json_format"

    def __init__(self, schema: dict[str, Any] | None = None) -> None:
        self._schema = schema
        self._validator: Any = None
        if schema is not None:
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)  # a broken schema is a configuration error: fail at construction
            self._validator = cls(schema)
        # The schema decides what passes, so it is part of the version.
        self.version = "1" if schema is None else f"1+schema.{short_hash(schema)}"

    def verdicts(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[Verdict]:
        return [self._one(c) for c in completions]

    def score(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[float]:
        return [float(v.value or 0.0) for v in self.verdicts(prompt_messages, completions)]

    def _one(self, completion: str) -> Verdict:
        text = completion.strip()
        blocks = _fenced_blocks(text)
        if len(blocks) == 1 and text.startswith("```") and text.endswith("```") and blocks[0][0] in ("", "json"):
            text = blocks[0][1]
        try:
            document = json.loads(text)
        except ValueError as e:
            return Verdict(value=0.0, reason=f"{INVALID_JSON}: {e}", veto=True)
        if self._validator is not None:
            error = jsonschema.exceptions.best_match(self._validator.iter_errors(document))
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                return Verdict(value=0.0, reason=f"{SCHEMA_VIOLATION}: {where}: {error.message}", veto=True)
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
    """1.0 when the last number of the completion is within `tolerance` of the expected answer, else 0.0 and a
    veto."""

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
        self.version = f"1+answer.{short_hash([str(self.expected), str(self.tolerance)])}"

    def verdicts(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[Verdict]:
        out = []
        for c in completions:
            got = last_number(c)
            if got is None:
                out.append(Verdict(value=0.0, reason=NO_NUMBER, veto=True))
            elif abs(got - self.expected) <= self.tolerance:
                out.append(Verdict(value=1.0))
            else:
                out.append(Verdict(value=0.0, reason=f"{WRONG_ANSWER}: {got}", veto=True))
        return out

    def score(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[float]:
        return [float(v.value or 0.0) for v in self.verdicts(prompt_messages, completions)]


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
