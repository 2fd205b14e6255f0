"""The split rule: train, calibration or audit by a salted hash of the normalised prompt."""

from __future__ import annotations

import hashlib
import math

from flywheel.domain.rounds.config import RoundConfig
from flywheel.domain.rounds.quarantine import normalise

TRAIN = "train"
CALIBRATION = "calibration"
AUDIT = "audit"
SPLITS = (TRAIN, CALIBRATION, AUDIT)


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
