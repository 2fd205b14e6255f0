"""Verifiers and the LLM judge: JSON format and schema, numeric answers, Python tests in a subprocess, judge parsing."""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sampling.adapters.test_runner import PythonTestsVerifier
from sampling.judge import JudgeScorer, judgement_max_tokens, judgement_pattern, parse_judgement
from sampling.verifiers import (
    INVALID_JSON,
    NO_JUDGEMENT,
    NO_NUMBER,
    SCHEMA_VIOLATION,
    SCORE_OUT_OF_RANGE,
    TESTS_FAILED,
    TIMEOUT,
    UNPARSEABLE_JUDGEMENT,
    ExplainingScorer,
    JsonFormatVerifier,
    NumericAnswerVerifier,
    Scorer,
    Verdict,
    extract_code,
    last_number,
)

PROMPT = [{"role": "user", "content": "Answer in JSON."}]
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}


# ---- JSON ----


def test_json_format_accepts_valid_json_and_rejects_malformed_with_a_reason() -> None:
    v = JsonFormatVerifier()
    verdicts = v.verdicts(PROMPT, ['{"a": 1}', '{"a": 1', "", "[1, 2]", "Sure! {\"a\": 1}"])
    assert [x.value for x in verdicts] == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert verdicts[1].reason.startswith(INVALID_JSON)
    assert verdicts[2].reason.startswith(INVALID_JSON)
    assert v.score(PROMPT, ['{"a": 1}', "{"]) == [1.0, 0.0]


def test_json_format_accepts_a_single_fenced_document() -> None:
    v = JsonFormatVerifier(SCHEMA)
    fenced = '```json\n{"name": "Ada", "age": 36}\n```'
    assert v.score(PROMPT, [fenced, f"  {fenced}\n"]) == [1.0, 1.0]
    # Prose around the fence is not a JSON document.
    assert v.score(PROMPT, [f"Here you go:\n{fenced}"]) == [0.0]


def test_json_schema_violations_fail_with_the_path() -> None:
    v = JsonFormatVerifier(SCHEMA)
    verdicts = v.verdicts(PROMPT, ['{"name": "Ada", "age": 36}', '{"name": "Ada"}', '{"name": "Ada", "age": -1}'])
    assert [x.value for x in verdicts] == [1.0, 0.0, 0.0]
    assert verdicts[1].reason.startswith(SCHEMA_VIOLATION) and "age" in verdicts[1].reason
    assert verdicts[2].reason.startswith(f"{SCHEMA_VIOLATION}: age:")


def test_json_schema_is_part_of_the_version_and_a_broken_schema_fails_at_construction() -> None:
    assert JsonFormatVerifier().version == "1"
    assert JsonFormatVerifier(SCHEMA).version == JsonFormatVerifier(dict(SCHEMA)).version != "1"
    assert JsonFormatVerifier(SCHEMA).version != JsonFormatVerifier({"type": "array"}).version
    with pytest.raises(jsonschema.exceptions.SchemaError):
        JsonFormatVerifier({"type": "not-a-type"})


# ---- numbers ----


@pytest.mark.parametrize(("text", "expected"), [
    ("The answer is 42.", Decimal("42")),
    ("First 3, then 7, finally 1,234,567", Decimal("1234567")),
    ("x = -3.5", Decimal("-3.5")),
    ("5-3=2", Decimal("2")),
    ("1-2", Decimal("2")),
    ("about 1.5e3 grams", Decimal("1.5e3")),
    ("\\boxed{17}", Decimal("17")),
    ("no digits here", None),
])
def test_last_number(text: str, expected: Decimal | None) -> None:
    assert last_number(text) == expected


def test_numeric_answer_verifier_compares_the_last_number_with_tolerance() -> None:
    exact = NumericAnswerVerifier("42")
    verdicts = exact.verdicts(PROMPT, ["6*7 = 42", "It's 42.0", "I think 41", "forty-two", "42 or maybe 43"])
    assert [v.value for v in verdicts] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert verdicts[2].reason == "wrong_answer: 41"
    assert verdicts[3].reason == NO_NUMBER

    loose = NumericAnswerVerifier("3.14159", tolerance=0.01)
    assert loose.score(PROMPT, ["pi is about 3.14", "3.2"]) == [1.0, 0.0]
    with pytest.raises(ValueError):
        NumericAnswerVerifier("no number")
    with pytest.raises(ValueError):
        NumericAnswerVerifier("1", tolerance=-1)


def test_numeric_tolerance_zero_is_exact_not_float_approximate() -> None:
    assert NumericAnswerVerifier("0.3").score(PROMPT, ["0.1 + 0.2 = 0.30000000000000004"]) == [0.0]


# ---- Python tests ----

TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"


def test_python_tests_pass_and_fail() -> None:
    v = PythonTestsVerifier(TESTS, timeout_s=20)
    verdicts = v.verdicts(PROMPT, [
        "def add(a, b):\n    return a + b\n",
        "def add(a, b):\n    return a - b\n",
        "def add(a, b) return a + b",
        "Here is the code:\n```python\ndef add(a, b):\n    return a + b\n```\nHope it helps.",
    ])
    assert [x.value for x in verdicts] == [1.0, 0.0, 0.0, 1.0]
    assert verdicts[1].reason.startswith(TESTS_FAILED) and "AssertionError" in verdicts[1].reason
    assert "SyntaxError" in verdicts[2].reason


def test_python_tests_time_out_and_the_process_is_killed() -> None:
    v = PythonTestsVerifier(TESTS, timeout_s=1.0)
    started = time.monotonic()
    verdicts = v.verdicts(PROMPT, ["def add(a, b):\n    while True:\n        pass\n"])
    assert time.monotonic() - started < 10
    assert verdicts == [Verdict(value=0.0, reason=f"{TIMEOUT}: after 1s", veto=True)]


def test_python_tests_cannot_be_skipped_by_exiting_early() -> None:
    v = PythonTestsVerifier(TESTS, timeout_s=20)
    assert v.score(PROMPT, [
        "import sys\nsys.exit(0)\n",
        "import os\nos._exit(0)\n",
        "def add(a, b):\n    return 0\nprint('flywheel-tests-passed')\n",
    ]) == [0.0, 0.0, 0.0]


def test_python_tests_run_isolated_without_the_parent_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_SECRET_FOR_TEST", "leak")
    tests = "import os\nassert 'FLYWHEEL_SECRET_FOR_TEST' not in os.environ\nassert os.listdir('.') != []\n"
    assert PythonTestsVerifier(tests, timeout_s=20).score(PROMPT, ["x = 1\n"]) == [1.0]


def test_extract_code_prefers_a_python_fence() -> None:
    text = "```\nplain\n```\n```python\nreal = 1\n```"
    assert extract_code(text) == "real = 1\n"
    assert extract_code("```\nplain\n```") == "plain\n"
    assert extract_code("x = 1") == "x = 1"


# ---- judge ----


@dataclass(frozen=True)
class FakeCandidate:
    text: str


@dataclass(frozen=True)
class FakeGroup:
    candidates: tuple[FakeCandidate, ...]


class FakeGenerator:
    """Returns canned replies in order and records what it was asked."""

    def __init__(self, replies: list[str | None]) -> None:
        self.replies = replies
        self.calls: list[tuple[list[list[dict[str, Any]]], Any]] = []

    def generate(self, prompts: list[list[dict[str, Any]]], spec: Any) -> list[FakeGroup]:
        self.calls.append((prompts, spec))
        return [FakeGroup(() if r is None else (FakeCandidate(r),)) for r in self.replies[:len(prompts)]]


@pytest.mark.parametrize(("reply", "value", "reason", "rationale"), [
    ('{"rationale": "Correct and concise.", "score": 8}', 8.0, "", "Correct and concise."),
    ('{"score": 10, "rationale": ""}', 10.0, "", ""),
    ('{"rationale": "Off by one.", "score": 1}', 1.0, "", "Off by one."),
    # a reply that breaks the format is no score, never 0
    ("The answer is correct and concise.\nScore: 8", None, UNPARSEABLE_JUDGEMENT, ""),
    ('{"rationale": "Correct.", "score": 8', None, UNPARSEABLE_JUDGEMENT, ""),  # cut short by max_tokens
    ('{"r', None, UNPARSEABLE_JUDGEMENT, ""),
    ('{"rationale": "Correct."}', None, UNPARSEABLE_JUDGEMENT, ""),
    ('{"rationale": "Correct.", "score": "9"}', None, UNPARSEABLE_JUDGEMENT, ""),
    ('{"rationale": "Correct.", "score": 7.5}', None, UNPARSEABLE_JUDGEMENT, ""),
    ('{"rationale": "Correct.", "score": true}', None, UNPARSEABLE_JUDGEMENT, ""),
    ('{"rationale": 3, "score": 9}', None, UNPARSEABLE_JUDGEMENT, ""),
    ("[9]", None, UNPARSEABLE_JUDGEMENT, ""),
    ("", None, UNPARSEABLE_JUDGEMENT, ""),
    ('{"rationale": "Superb.", "score": 11}', None, f"{SCORE_OUT_OF_RANGE}: 11", "Superb."),
    ('{"rationale": "Awful.", "score": 0}', None, f"{SCORE_OUT_OF_RANGE}: 0", "Awful."),
])
def test_parse_judgement(reply: str, value: float | None, reason: str, rationale: str) -> None:
    assert parse_judgement(reply) == Verdict(value=value, reason=reason, rationale=rationale)


@given(st.data())
def test_every_reply_the_structured_output_admits_parses_and_fits_its_token_budget(data: st.DataObject) -> None:
    chars = data.draw(st.integers(min_value=0, max_value=60))
    reply = data.draw(st.from_regex(judgement_pattern(chars), fullmatch=True))
    verdict = parse_judgement(reply)
    assert verdict.value is not None and 1 <= verdict.value <= 10 and verdict.reason == ""
    assert len(verdict.rationale) <= chars
    assert len(reply) < judgement_max_tokens(chars)  # every token is at least one character


def test_the_structured_output_refuses_what_would_not_parse() -> None:
    import re

    pattern = re.compile(judgement_pattern(20))
    assert pattern.fullmatch('{"rationale": "Fine.", "score": 7}')
    for reply in ['{"rationale": "Fine.", "score": 11}', '{"rationale": "Fine.", "score": 0}',
                  '{"rationale": "a \\"quoted\\" word", "score": 7}', '{"rationale": "' + "x" * 21 + '", "score": 7}',
                  'Score: 7']:
        assert not pattern.fullmatch(reply), reply


def test_judge_asks_the_generator_once_per_group_and_parses_each_reply() -> None:
    generator = FakeGenerator(['{"rationale": "Right.", "score": 9}', "no idea", None])
    spec = {"model": "judge-1", "n": 1, "temperature": 0.0}
    judge = JudgeScorer(generator, "Reward correct arithmetic.", spec, model="judge-1", model_version="v1")
    verdicts = judge.verdicts([{"role": "user", "content": "6*7?"}], ["42", "41", "40"])

    assert verdicts == [Verdict(value=9.0, rationale="Right."), Verdict(value=None, reason=UNPARSEABLE_JUDGEMENT),
                        Verdict(value=None, reason=NO_JUDGEMENT)]
    assert len(generator.calls) == 1
    prompts, used_spec = generator.calls[0]
    assert used_spec is spec
    assert len(prompts) == 3
    assert prompts[0][0]["role"] == "system" and "Reward correct arithmetic." in prompts[0][0]["content"]
    assert '"score"' in prompts[0][0]["content"] and '"rationale"' in prompts[0][0]["content"]
    assert "6*7?" in prompts[1][1]["content"] and prompts[1][1]["content"].endswith("Response to grade:\n41")
    assert judge.score([{"role": "user", "content": "6*7?"}], []) == []


def test_judge_version_follows_the_format_the_model_and_the_rubric() -> None:
    def judge(rubric: str, version: str = "v1") -> JudgeScorer:
        return JudgeScorer(FakeGenerator([]), rubric, None, model="judge-70b", model_version=version)

    a = judge("rubric A")
    assert a.name == "llm_judge" and a.judge_model == "judge-70b"
    assert a.version == judge("rubric A").version == f"2+v1+rubric.{a.rubric_hash}"
    assert a.version != judge("rubric B").version and a.rubric_hash != judge("rubric B").rubric_hash
    assert a.version != judge("rubric A", "v2").version


def test_all_verifiers_satisfy_the_scorer_protocols() -> None:
    scorers = [JsonFormatVerifier(), NumericAnswerVerifier("1"), PythonTestsVerifier("pass"),
               JudgeScorer(FakeGenerator([]), "r", None, model="j", model_version="1")]
    for s in scorers:
        assert isinstance(s, Scorer) and isinstance(s, ExplainingScorer)
        assert s.name and s.version


def test_python_tests_timeout_kills_processes_the_solution_started(tmp_path: Any) -> None:
    import os

    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "while True:\n    time.sleep(0.05)\n"
    )
    assert PythonTestsVerifier("pass", timeout_s=2.0).verdicts(PROMPT, [code])[0].reason.startswith(TIMEOUT)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        # Killed but not yet reaped by init shows up as a zombie; that counts as gone.
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().split()[2] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"child process {child} survived the timeout")
