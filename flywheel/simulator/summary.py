"""What a simulated stream holds: events to be stored by type, messages to be dead-lettered by reason."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flywheel.simulator.message import Simulated


@dataclass(frozen=True, slots=True)
class Summary:
    """What a stream holds: events the store must keep (by type), messages it must dead-letter (by reason)."""

    valid_by_type: dict[str, int]
    bad_by_reason: dict[str, int]

    @classmethod
    def of(cls, messages: Iterable[Simulated]) -> Summary:
        valid: Counter[str] = Counter()
        bad: Counter[str] = Counter()
        for m in messages:
            if m.expected_reason is None:
                valid[str(m.event_type)] += 1
            else:
                bad[m.expected_reason] += 1
        return cls(dict(sorted(valid.items())), dict(sorted(bad.items())))

    @property
    def valid(self) -> int:
        return sum(self.valid_by_type.values())

    @property
    def bad(self) -> int:
        return sum(self.bad_by_reason.values())

    @property
    def produced(self) -> int:
        return self.valid + self.bad

    def as_dict(self) -> dict[str, Any]:
        return {
            "produced": self.produced,
            "valid": {"total": self.valid, "by_type": self.valid_by_type},
            "bad": {"total": self.bad, "by_reason": self.bad_by_reason},
        }

    def describe(self) -> str:
        lines = [f"{'produced':<26}{self.produced:>9}", f"{'valid (to be stored)':<26}{self.valid:>9}"]
        lines += [f"  {k:<24}{v:>9}" for k, v in self.valid_by_type.items()]
        lines.append(f"{'bad (to be dead-lettered)':<26}{self.bad:>9}")
        lines += [f"  {k:<24}{v:>9}" for k, v in self.bad_by_reason.items()]
        return "\n".join(lines)
