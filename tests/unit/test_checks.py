"""Checks files: which verifiers a prompt gets, and a clear error for every bad line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sampling.adapters.checks import load_checks
from sampling.adapters.test_runner import PythonTestsVerifier
from sampling.verifiers import NumericAnswerVerifier


def write(tmp_path: Path, *lines: object) -> Path:
    path = tmp_path / "checks.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def chat(*user_turns: str) -> list[dict[str, str]]:
    out = []
    for turn in user_turns:
        out += [{"role": "user", "content": turn}, {"role": "assistant", "content": "..."}]
    return out[:-1]


def test_a_prompt_gets_the_verifiers_of_the_checks_naming_its_last_user_message(tmp_path: Path) -> None:
    checks = load_checks(write(
        tmp_path,
        {"prompt": "What is 17 * 3?", "answer": "51"},
        "",
        {"prompt": "What is 17 * 3?", "tests": "assert True", "timeout_s": 2},
        {"prompt": "Pi to two places?", "answer": 3.14, "tolerance": 0.005},
    ))
    got = checks.for_prompt(chat("hello", "  What is 17 * 3?\n"))
    assert [type(v) for v in got] == [NumericAnswerVerifier, PythonTestsVerifier]
    assert got[0].score([], ["so it is 51", "it is 52"]) == [1.0, 0.0]
    pi = checks.for_prompt(chat("Pi to two places?"))
    assert pi[0].score([], ["3.141", "3.2"]) == [1.0, 0.0]
    assert checks.for_prompt(chat("What is 17 * 3?", "and 18 * 3?")) == []  # only the last user turn counts
    assert checks.for_prompt([{"role": "system", "content": "What is 17 * 3?"}]) == []
    # what counts as right is part of each verifier's version (the selection's lineage)
    assert got[0].version != pi[0].version and got[0].version.startswith("1+answer.")
    assert got[1].version.startswith("1+tests.")
    assert NumericAnswerVerifier("51").version == got[0].version


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "checks.jsonl:2: Expecting property name"),
    ('["a list"]', "checks.jsonl:2: a check must be a JSON object"),
    ({"prompt": "", "answer": "1"}, "prompt must be a non-empty string"),
    ({"prompt": "p"}, 'either "answer" or "tests"'),
    ({"prompt": "p", "answer": "1", "tests": "assert 1"}, 'either "answer" or "tests"'),
    ({"prompt": "p", "answer": "1", "timeout_s": 3}, "unknown field(s) timeout_s"),
    ({"prompt": "p", "answer": True}, "answer must be a number or a string"),
    ({"prompt": "p", "answer": "no digits"}, "has no number"),
    ({"prompt": "p", "answer": "1", "tolerance": "0.1"}, "tolerance must be a number"),
    ({"prompt": "p", "answer": "1", "tolerance": -1}, "tolerance must be >= 0"),
    ({"prompt": "p", "tests": "  "}, "tests must be non-empty Python source"),
    ({"prompt": "p", "tests": "assert 1", "timeout_s": 0}, "timeout_s must be > 0"),
    ({"prompt": " What is 17 * 3? ", "answer": "50"}, "checks.jsonl:2: a second numeric_answer check"),
])
def test_a_bad_check_is_an_error_naming_its_line(tmp_path: Path, line: object, message: str) -> None:
    path = write(tmp_path, {"prompt": "What is 17 * 3?", "answer": "51"}, line)
    with pytest.raises(ValueError) as e:
        load_checks(path)
    assert message in str(e.value) and str(e.value).startswith(f"{path}:2: ")
