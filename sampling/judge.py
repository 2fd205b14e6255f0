"""An LLM judge as a scorer: asks the generator port for a 1-10 grade of each completion and parses it."""

from __future__ import annotations

import re
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
    return "\n\n".join(f"[{m.get('role', '')}]\n{message_text(m)}" for m in messages)


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
        self.version = f"{version}+rubric.{short_hash(rubric)}"

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
