"""The distribution cap gate: no (app, model version, primary tag) stratum dominates a kind."""

from __future__ import annotations

import math
from collections import Counter


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
