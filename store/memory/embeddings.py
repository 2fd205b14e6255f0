"""The TextEmbeddings port in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


class MemoryTextEmbeddings:
    def __init__(self) -> None:
        self._kept: dict[tuple[str, bytes], tuple[int, bytes]] = {}  # (model, key) -> (seq, vector)
        self._compared: dict[tuple[str, str], int] = {}
        self._matches: dict[tuple[str, str], dict[bytes, list[dict[str, Any]]]] = {}
        self.scanned = 0  # vectors handed out by scan: what a comparison read

    async def missing(self, model: str, keys: Sequence[bytes]) -> set[bytes]:
        return {k for k in keys if (model, k) not in self._kept}

    async def save(self, model: str, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        import numpy as np

        for key, row in zip(keys, np.asarray(vectors, dtype="<f4"), strict=True):
            self._kept.setdefault((model, key), (len(self._kept) + 1, row.tobytes()))

    async def vectors(self, model: str, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        import numpy as np

        return {k: np.frombuffer(self._kept[(model, k)][1], dtype="<f4") for k in keys if (model, k) in self._kept}

    async def keys(self, model: str) -> set[bytes]:
        return {k for m, k in self._kept if m == model}

    async def newest(self, model: str) -> int:
        return max((seq for (m, _), (seq, _) in self._kept.items() if m == model), default=0)

    async def compared(self, model: str, checked: str) -> tuple[int, dict[bytes, list[dict[str, Any]]]]:
        return self._compared.get((model, checked), 0), dict(self._matches.get((model, checked), {}))

    async def scan(self, model: str, *, after: int, upto: int, batch: int = 16_384
                   ) -> AsyncIterator[tuple[list[bytes], np.ndarray]]:
        import numpy as np

        rows = sorted((seq, k, v) for (m, k), (seq, v) in self._kept.items() if m == model and after < seq <= upto)
        for start in range(0, len(rows), batch):
            part = rows[start:start + batch]
            self.scanned += len(part)
            yield [k for _, k, _ in part], np.frombuffer(b"".join(v for *_, v in part), dtype="<f4").reshape(
                len(part), -1)

    async def record(self, model: str, checked: str, upto: int, matches: dict[bytes, list[dict[str, Any]]]) -> None:
        self._matches.setdefault((model, checked), {}).update(matches)
        self._compared[(model, checked)] = max(upto, self._compared.get((model, checked), 0))
