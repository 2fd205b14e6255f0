"""The round gates that judge one row at a time (PII, dedup key, quality, distribution cap) and the split rule."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from typing import Any

import orjson

from flywheel.redact import find_pii
from flywheel.rounds.config import RoundConfig
from flywheel.rounds.quarantine import normalise
from flywheel.rounds.rows import Row

# Gates in the order they run; a removed row is counted under the first that removed it.
CONSENT = "consent"
PII = "pii"
CONTAMINATION = "contamination"
DEDUP = "dedup"
QUALITY = "quality"
DISTRIBUTION_CAP = "distribution_cap"
GATES = (CONSENT, PII, CONTAMINATION, DEDUP, QUALITY, DISTRIBUTION_CAP)

# Quality reasons, in the order they are checked.
EMPTY = "empty"
TRUNCATED = "truncated"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
GARBLED = "garbled"
DEGENERATE = "degenerate"
QUALITY_REASONS = (EMPTY, TRUNCATED, TOO_SHORT, TOO_LONG, GARBLED, DEGENERATE)

TRAIN = "train"
CALIBRATION = "calibration"
AUDIT = "audit"
SPLITS = (TRAIN, CALIBRATION, AUDIT)

# C0 controls but tab, newline and carriage return; DEL; C1 controls; U+FFFD (a failed decode).
_GARBLED_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")


def _strings(value: Any, out: list[str]) -> list[str]:
    """Every non-empty string inside nested dicts, lists and tuples, in order."""
    kind = type(value)
    if kind is str:
        if value:
            out.append(value)
    elif kind is dict:
        for v in value.values():
            _strings(v, out)
    elif kind is list or kind is tuple:
        for v in value:
            _strings(v, out)
    elif isinstance(value, str):
        if value:
            out.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _strings(v, out)
    elif isinstance(value, list | tuple):
        for v in value:
            _strings(v, out)
    return out


def has_pii(row: Row) -> bool:
    """True when flywheel.redact.find_pii finds anything in any string of the body or in a tag.

    The strings are scanned as one text joined by NUL, which none of the card, phone or e-mail patterns
    crosses; a secret pattern may, and then reports a secret: joining can only remove more, never less.
    """
    texts = _strings(row.body, [])
    texts.extend(t for t in row.tags if t)
    return bool(texts) and bool(find_pii("\x00".join(texts)))


def fold(text: str) -> str:
    """NFKC, casefolded, whitespace runs collapsed to one space, ends stripped; punctuation kept."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.casefold().split())


def _blank(text: str) -> bool:
    return not text or text.isspace()


def content_digest(row: Row) -> bytes:
    """What dedup compares, per kind: the roles of the prompt messages, the prompt text and the answers after
    `fold` (punctuation is kept: it matters in code and maths), and the label for KTO (the same completion
    labelled both ways is two rows). Margins, scores and lineage do not count."""
    return _digest(row, fold(row.prompt_text()), [fold(a) for a in row.answer_texts()])


def _digest(row: Row, folded_prompt: str, folded_answers: list[str]) -> bytes:
    parts: list[Any] = [row.kind, [m.get("role") for m in row.prompt_messages()], folded_prompt, folded_answers]
    if row.kind == "kto":
        parts.append(bool(row.body.get("label")))
    return hashlib.sha256(orjson.dumps(parts)).digest()[:16]


def quality_reason(row: Row, config: RoundConfig) -> str | None:
    """Why a row fails the quality gate (the first reason that applies), or None.

    - empty: the prompt, or any answer (SFT target, chosen, rejected, KTO completion, group candidate), is empty
      or whitespace only; an SFT sample not ending in an assistant turn has no answer and is empty too.
    - truncated: the generator stopped an answer at its token limit (lineage "finish_reasons" holds "length";
      set for RSFT samples and RM-selected pairs). Group candidates are not judged on this: a truncated
      candidate and its score are legitimate reward-model data.
    - too_short: an answer has fewer than `min_chars` characters after stripping.
    - too_long: the prompt text or an answer has more than `max_chars` characters.
    - garbled: more than `max_garbled_share` of all characters (prompt and answers) are control characters
      other than tab/newline/CR, or U+FFFD.
    - degenerate: a DPO pair whose chosen and rejected texts are equal after `fold`.
    Text that ends mid-sentence is not judged truncated: code, lists and short answers end without
    punctuation.
    """
    answers = row.answer_texts()
    return _quality(row, config, row.prompt_text(), answers, [fold(a) for a in answers])


def _quality(row: Row, config: RoundConfig, prompt: str, answers: list[str], folded: list[str]) -> str | None:
    if _blank(prompt) or not answers or any(_blank(a) for a in answers):
        return EMPTY
    if "length" in (row.lineage.get("finish_reasons") or ()):
        return TRUNCATED
    if config.min_chars > 1 and any(len(a.strip()) < config.min_chars for a in answers):
        return TOO_SHORT
    if len(prompt) > config.max_chars or any(len(a) > config.max_chars for a in answers):
        return TOO_LONG
    bad = sum(len(_GARBLED_CHARS.findall(t)) for t in (prompt, *answers) if _GARBLED_CHARS.search(t))
    if bad and bad > config.max_garbled_share * (len(prompt) + sum(len(a) for a in answers)):
        return GARBLED
    if row.kind == "dpo" and folded[0] == folded[1]:
        return DEGENERATE
    return None


class DistributionCap:
    """Keeps one (app, model version, primary tag) stratum from dominating a kind, streaming and deterministic.

    Per kind, with `kept` rows of that kind admitted so far, `kept[s]` of them from stratum s, and k the number
    of distinct strata of that kind that reached this gate so far (this row's included): a row of stratum s is
    admitted when kept < `cap_warmup`, or when kept[s] + 1 <= max(cap_share, 1/k) * (kept + 1).
    The 1/k floor keeps a lone stratum (or k strata with cap_share < 1/k) from stalling the round. The rule
    reads only the rows before, so the outcome depends on the caller's (deterministic) row order.
    """

    def __init__(self, cap_share: float, warmup: int) -> None:
        self.cap_share = cap_share
        self.warmup = warmup
        self.kept: Counter[str] = Counter()
        self.kept_by_stratum: dict[str, Counter[tuple[str, str, str]]] = {}
        self.seen: dict[str, set[tuple[str, str, str]]] = {}

    def admit(self, kind: str, stratum: tuple[str, str, str]) -> bool:
        seen = self.seen.get(kind)
        if seen is None:
            seen = self.seen[kind] = set()
            by_stratum = self.kept_by_stratum[kind] = Counter()
        else:
            by_stratum = self.kept_by_stratum[kind]
        seen.add(stratum)
        kept = self.kept[kind]
        if kept >= self.warmup:
            share = max(self.cap_share, 1.0 / len(seen))
            if by_stratum[stratum] + 1 > share * (kept + 1) + 1e-9:
                return False
        self.kept[kind] = kept + 1
        by_stratum[stratum] += 1
        return True


def split_of(prompt_text: str, config: RoundConfig, *, normalised: str | None = None) -> str:
    """train / calibration / audit from u = sha256(audit_salt, normalised prompt text) as a number in [0, 1):
    audit when u < audit_share, calibration when u < audit_share + calibration_share, train otherwise.

    The key is the prompt alone (normalised as for contamination), never the round or the row's id: the same
    prompt lands in the same split in every round and for every kind, so audit prompts are never trained on,
    and changing the calibration share never moves a prompt into or out of audit. `normalised` is
    normalise(prompt_text) when the caller has it already.
    """
    key = normalise(prompt_text) if normalised is None else normalised
    digest = hashlib.sha256(f"{config.audit_salt}\x1f{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < config.audit_share:
        return AUDIT
    if u < config.audit_share + config.calibration_share:
        return CALIBRATION
    return TRAIN
