"""An LLM judge as a scorer: asks a judge model, through the generator port, for a 1-10 grade and its rationale."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from flywheel.domain.messages import message_text
from sampling.verifiers import NO_JUDGEMENT, SCORE_OUT_OF_RANGE, UNPARSEABLE_JUDGEMENT, Verdict, short_hash


class JudgeCandidate(Protocol):
    @property
    def text(self) -> str: ...


class JudgeCandidateGroup(Protocol):
    @property
    def candidates(self) -> Sequence[JudgeCandidate]: ...


class JudgeGenerator(Protocol):
    """The part of the generator port the judge needs: one candidate group per prompt, in prompt order."""

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def generate(self, prompts: list[list[dict[str, Any]]], spec: Any) -> Sequence[JudgeCandidateGroup]: ...


# What a grade means changed with this number (the reply's format, the instructions): part of every score's version.
FORMAT_VERSION = "2"
JUDGE_INSTRUCTIONS = (
    "Grade the assistant's final response on a scale from 1 (worst) to 10 (best). Reply with one JSON object "
    'and nothing else: {"rationale": "<why, in a sentence or two>", "score": <an integer from 1 to 10>}.'
)
# Printable ASCII but the quote and the backslash: a rationale needs no escapes, so every match is valid JSON.
_RATIONALE_CHAR = r"[ -!#-\[\]-~]"


def judgement_pattern(rationale_chars: int) -> str:
    """The regular expression the judge's reply is held to by the engine's structured output: a JSON object with a
    rationale of at most `rationale_chars` characters, then an integer score from 1 to 10. Every character of it
    takes at least one token, so `judgement_max_tokens(rationale_chars)` tokens always hold a whole reply."""
    if rationale_chars < 0:
        raise ValueError("rationale_chars must be >= 0")
    return r'\{"rationale": "' + _RATIONALE_CHAR + "{0," + str(rationale_chars) + r'}", "score": ([1-9]|10)\}'


def judgement_max_tokens(rationale_chars: int) -> int:
    """Enough tokens for any reply `judgement_pattern(rationale_chars)` admits (30 fixed characters, the end token)."""
    return rationale_chars + 32


def parse_judgement(text: str) -> Verdict:
    """The 1-10 grade and rationale of a judge's reply, a JSON object {"rationale": str, "score": int}.
    A reply that breaks that format, or a score off the scale, is no score (value None) with the reason: a
    judge that did not answer must neither lift nor sink a candidate."""
    try:
        reply = json.loads(text)
    except ValueError:
        return Verdict(value=None, reason=UNPARSEABLE_JUDGEMENT)
    if not isinstance(reply, dict):
        return Verdict(value=None, reason=UNPARSEABLE_JUDGEMENT)
    score, rationale = reply.get("score"), reply.get("rationale")
    if isinstance(score, bool) or not isinstance(score, int) or not isinstance(rationale, str):
        return Verdict(value=None, reason=UNPARSEABLE_JUDGEMENT)
    if not 1 <= score <= 10:
        return Verdict(value=None, reason=f"{SCORE_OUT_OF_RANGE}: {score}", rationale=rationale)
    return Verdict(value=float(score), rationale=rationale)


def _render(messages: Sequence[Mapping[str, Any]]) -> str:
    return "\n\n".join(f"[{m.get('role', '')}]\n{message_text(m)}" for m in messages)


class JudgeScorer:
    """An LLM judge: asks the judge model for a 1-10 grade of each completion under `rubric`, with its rationale.

    `spec` is the generator's sampling spec for a grade (opaque here): greedy, one sample, held to
    `judgement_pattern` by structured output. The judge model's name (`model`) and the rubric's hash are named on
    every score; the version is the reply format's, the judge model's version and the rubric's hash.
    """

    name = "llm_judge"

    def __init__(self, generator: JudgeGenerator, rubric: str, spec: Any, *, model: str,
                 model_version: str) -> None:
        self.generator = generator
        self.rubric = rubric
        self.spec = spec
        self.judge_model = model
        self.model_version = model_version
        self.rubric_hash = short_hash(rubric)
        self.version = f"{FORMAT_VERSION}+{model_version}+rubric.{self.rubric_hash}"

    def load(self) -> None:
        self.generator.load()

    def unload(self) -> None:
        self.generator.unload()

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
                out.append(Verdict(value=None, reason=NO_JUDGEMENT))
            else:
                out.append(parse_judgement(groups[i].candidates[0].text))
        return out

    def score(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[float]:
        """The grades, NaN where there is none (selection reads `verdicts`, which say why)."""
        return [float("nan") if v.value is None else v.value for v in self.verdicts(prompt_messages, completions)]
