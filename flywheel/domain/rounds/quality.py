"""The quality gate: why a row is not fit to train on (empty, truncated, too short or long, garbled, degenerate)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from flywheel.domain.rounds.config import RoundConfig
from flywheel.domain.rounds.quarantine import normalise
from flywheel.domain.rounds.rows import Row

# Quality reasons, in the order they are checked.
EMPTY = "empty"
TRUNCATED = "truncated"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
GARBLED = "garbled"
DEGENERATE = "degenerate"
QUALITY_REASONS = (EMPTY, TRUNCATED, TOO_SHORT, TOO_LONG, GARBLED, DEGENERATE)

# C0 controls but tab, newline and carriage return; DEL; C1 controls; U+FFFD (a failed decode).
_GARBLED_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")
# The bytes of ASCII text that are not garbled: deleted from an ASCII text's bytes, they leave its garbled characters.
_CLEAN_ASCII = bytes(range(0x20, 0x7F)) + b"\t\n\r"


def garbled(text: str) -> int:
    """How many characters of `text` are garbled (_GARBLED_CHARS); ASCII text counted by a byte deletion, at twice
    the pattern's speed."""
    if text.isascii():
        return len(text.encode().translate(None, _CLEAN_ASCII))
    return len(_GARBLED_CHARS.findall(text)) if _GARBLED_CHARS.search(text) else 0


def _blank(text: str) -> bool:
    return not text or text.isspace()


def quality_reason(row: Row, config: RoundConfig) -> str | None:
    """Why a row fails the quality gate (the first reason that applies), or None.

    - empty: the prompt, or any answer (SFT target, chosen, rejected, KTO completion, group candidate), is empty
      or whitespace only; an SFT sample not ending in an assistant turn has no answer and is empty too.
    - truncated: a model stopped an answer at its token limit (lineage "finish_reasons" holds "length"; set for
      RSFT samples and RM-selected pairs, and for signal rows whose served response was cut: such a response is
      neither a target nor a side of a pair, since what users said of it is about where it was cut). Group
      candidates are not judged on this: a truncated candidate and its score are legitimate reward-model data.
    - too_short: an answer has fewer than `min_chars` characters after stripping.
    - too_long: the prompt text or an answer has more than `max_chars` characters.
    - garbled: more than `max_garbled_share` of all characters (prompt and answers) are control characters
      other than tab/newline/CR, or U+FFFD.
    - degenerate: a DPO pair whose chosen and rejected texts are equal after `normalise`.
    Text that ends mid-sentence is not judged truncated: code, lists and short answers end without
    punctuation.
    """
    answers = row.answer_texts()
    return reason_of(row.kind, row.truncated(), config, row.prompt_text(), answers, [normalise(a) for a in answers])


def reason_of(kind: str, truncated: bool, config: RoundConfig, prompt: str, answers: Sequence[str],
              normalised: list[str]) -> str | None:
    """quality_reason from its parts (`truncated`: Row.truncated())."""
    if _blank(prompt) or not answers:
        return EMPTY
    longest = len(prompt)
    total = len(prompt)
    bad = garbled(prompt)
    short = False
    for a in answers:
        if _blank(a):
            return EMPTY
        if len(a) > longest:
            longest = len(a)
        total += len(a)
        bad += garbled(a)
        if config.min_chars > 1 and len(a.strip()) < config.min_chars:
            short = True
    if truncated:
        return TRUNCATED
    if short:
        return TOO_SHORT
    if longest > config.max_chars:
        return TOO_LONG
    if bad and bad > config.max_garbled_share * total:
        return GARBLED
    if kind == "dpo" and normalised[0] == normalised[1]:
        return DEGENERATE
    return None
