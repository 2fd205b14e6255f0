"""The round gates that judge one row at a time (PII, dedup key, quality, distribution cap) and the split rule."""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from flywheel.domain import redact
from flywheel.domain.rounds.config import RoundConfig
from flywheel.domain.rounds.quarantine import normalise
from flywheel.domain.rounds.rows import Row

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
# The bytes of ASCII text that are not garbled: deleted from an ASCII text's bytes, they leave its garbled characters.
_CLEAN_ASCII = bytes(range(0x20, 0x7F)) + b"\t\n\r"


def garbled(text: str) -> int:
    """How many characters of `text` are garbled (_GARBLED_CHARS); ASCII text counted by a byte deletion, at twice
    the pattern's speed."""
    if text.isascii():
        return len(text.encode().translate(None, _CLEAN_ASCII))
    return len(_GARBLED_CHARS.findall(text)) if _GARBLED_CHARS.search(text) else 0


_CONTAINERS = (dict, list, tuple)  # a tuple, not a union: isinstance checks it faster
_SEQUENCES = (list, tuple)


def _strings(value: dict[str, Any] | list[Any] | tuple[Any, ...], out: list[str]) -> list[str]:
    """Every non-empty string inside a dict, list or tuple and the ones nested in it, in order."""
    # A body is a dict of lists of message dicts of strings: those two levels are walked here rather than by a
    # call per container, which was most of the walk's time.
    for v in value.values() if isinstance(value, dict) else value:
        if isinstance(v, str):
            if v:
                out.append(v)
        elif isinstance(v, _SEQUENCES):
            for w in v:
                if isinstance(w, dict):
                    for x in w.values():
                        if isinstance(x, str):
                            if x:
                                out.append(x)
                        elif isinstance(x, _CONTAINERS):
                            _strings(x, out)
                elif isinstance(w, str):
                    if w:
                        out.append(w)
                elif isinstance(w, _SEQUENCES):
                    _strings(w, out)
        elif isinstance(v, dict):
            _strings(v, out)
    return out


def has_pii(row: Row, check: Callable[[str], bool] = redact.has_pii) -> bool:
    """True when `check` (by default `flywheel.domain.redact.has_pii`) holds for any string of the body or any tag.

    Each string is checked on its own, so the builder can pass a cached `check`: rows repeat the same prompts,
    system prompts and answers many times over.
    """
    return any(map(check, pii_texts(row)))


def pii_texts(row: Row) -> tuple[str, ...]:
    """The strings `has_pii` checks: every non-empty string of the body, then every non-empty tag."""
    return texts_of(row.body, row.tags)


def texts_of(body: dict[str, Any], tags: tuple[str, ...]) -> tuple[str, ...]:
    """pii_texts of a row's body and tags."""
    texts = _strings(body, [])
    texts.extend(t for t in tags if t)
    return tuple(texts)


def _blank(text: str) -> bool:
    return not text or text.isspace()


def content_digest(row: Row) -> bytes:
    """What dedup compares, per kind: the roles of the prompt messages, the prompt text and the answers after
    `normalise` (as contamination sees them: case, punctuation and whitespace do not count), and the label for
    KTO (the same completion labelled both ways is two rows). Margins, scores and lineage do not count."""
    return _digest(row.kind, row.prompt_roles(), row.label(), normalise(row.prompt_text()),
                   [normalise(a) for a in row.answer_texts()])


def _digest(kind: str, roles: Sequence[Any], label: bool | None, prompt: str, answers: list[str]) -> bytes:
    """content_digest from its parts: `label` counts for KTO only."""
    parts: list[Any] = [kind, roles, prompt, answers]
    if kind == "kto":
        parts.append(label)
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
    - degenerate: a DPO pair whose chosen and rejected texts are equal after `normalise`.
    Text that ends mid-sentence is not judged truncated: code, lists and short answers end without
    punctuation.
    """
    answers = row.answer_texts()
    return _quality(row.kind, row.truncated(), config, row.prompt_text(), answers, [normalise(a) for a in answers])


def _quality(kind: str, truncated: bool, config: RoundConfig, prompt: str, answers: Sequence[str],
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


class DistributionCap:
    """Keeps one (app, model version, primary tag) stratum from dominating a kind, streaming and deterministic.

    Per kind, with `kept` rows of that kind admitted so far, `kept[s]` of them from stratum s, and k the number
    of distinct strata of that kind that reached this gate so far (this row's included), a row of stratum s is
    admitted when kept < `warmup`, or when

        kept[s] + 1 <= ceil(max(cap_share, 1/k) * (kept + 1))

    i.e. admitting it leaves s at most its share of the kept rows, rounded up to a whole row. The 1/k floor lets
    a lone stratum through (and k strata when cap_share < 1/k), and the rounding up means the least-kept stratum
    is never refused, so the cap can throttle a dominant stratum but never stall a round. The rule reads only
    the rows before, so the outcome follows the caller's (deterministic) row order.
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
            # 1e-9: 0.6 * 10 is 6.000000000000001 in floating point, and must round up to 6, not 7.
            if by_stratum[stratum] + 1 > math.ceil(share * (kept + 1) - 1e-9):
                return False
        self.kept[kind] = kept + 1
        by_stratum[stratum] += 1
        return True


def split_of(prompt_text: str, config: RoundConfig, *, normalised: str | None = None) -> str:
    """train / calibration / audit from u = sha256(audit_salt, 0x1f, normalised prompt text), its first 8 bytes
    read as a number in [0, 1): audit when u < audit_share, calibration when u < audit_share +
    calibration_share, train otherwise.

    The key is the prompt alone (`normalise`d as for contamination), never the round or the row's id: the same
    prompt lands in the same split in every round and for every kind, so audit prompts are never trained on,
    and changing the calibration share never moves a prompt into or out of audit. `normalised` is
    normalise(prompt_text) when the caller has it already.
    """
    return Splitter(config)(normalise(prompt_text) if normalised is None else normalised)


class Splitter:
    """`split_of` with the salt and the share bounds computed once (the builder calls it for every row)."""

    def __init__(self, config: RoundConfig) -> None:
        self._salted = hashlib.sha256(f"{config.audit_salt}\x1f".encode())
        # u < share  <=>  first 8 digest bytes < share * 2**64  <=>  digest < that bound as 8 bytes + 24 zeros
        self._audit = self._bound(config.audit_share)
        self._calibration = self._bound(config.audit_share + config.calibration_share)

    @staticmethod
    def _bound(share: float) -> bytes:
        value = min(math.ceil(share * 2.0**64), 2**64)
        return b"\xff" * 33 if value >= 2**64 else value.to_bytes(8, "big") + bytes(24)

    def __call__(self, normalised: str) -> str:
        h = self._salted.copy()
        h.update(normalised.encode())
        digest = h.digest()
        if digest < self._audit:
            return AUDIT
        if digest < self._calibration:
            return CALIBRATION
        return TRAIN
