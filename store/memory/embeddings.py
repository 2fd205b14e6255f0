"""The TextEmbeddings port in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


class MemoryTextEmbeddings:
    def __init__(self) -> None:
        self._kept: dict[tuple[str, bytes], bytes] = {}

    async def missing(self, model: str, keys: Sequence[bytes]) -> set[bytes]:
        return {k for k in keys if (model, k) not in self._kept}

    async def save(self, model: str, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        import numpy as np

        for key, row in zip(keys, np.asarray(vectors, dtype="<f4"), strict=True):
            self._kept.setdefault((model, key), row.tobytes())

    async def scan(self, model: str, batch: int = 16_384) -> AsyncIterator[tuple[list[bytes], np.ndarray]]:
        import numpy as np

        keys = sorted(k for m, k in self._kept if m == model)
        for start in range(0, len(keys), batch):
            part = keys[start:start + batch]
            yield part, np.frombuffer(b"".join(self._kept[(model, k)] for k in part), dtype="<f4").reshape(
                len(part), -1)

    async def vectors(self, model: str, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        import numpy as np

        return {k: np.frombuffer(self._kept[(model, k)], dtype="<f4") for k in keys if (model, k) in self._kept}
