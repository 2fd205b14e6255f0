"""The TextEmbeddings port in memory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


class MemoryTextEmbeddings:
    def __init__(self) -> None:
        self.vectors: dict[tuple[str, bytes], bytes] = {}

    async def missing(self, model: str, keys: Sequence[bytes]) -> set[bytes]:
        return {k for k in keys if (model, k) not in self.vectors}

    async def save(self, model: str, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        import numpy as np

        for key, row in zip(keys, np.asarray(vectors, dtype="<f4"), strict=True):
            self.vectors.setdefault((model, key), row.tobytes())

    async def load(self, model: str) -> tuple[list[bytes], np.ndarray]:
        import numpy as np

        keys = sorted(k for m, k in self.vectors if m == model)
        if not keys:
            return keys, np.zeros((0, 0), dtype=np.float32)
        return keys, np.frombuffer(b"".join(self.vectors[(model, k)] for k in keys), dtype="<f4").reshape(len(keys), -1)
