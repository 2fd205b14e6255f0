"""A reward-model scorer: a local sequence-classification model (one logit) scores each completion on CPU."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# What decides the scores: weights, architecture, tokenizer and chat template. Anything else (README, caches) is not.
_VERSIONED_SUFFIXES = (".safetensors", ".bin", ".json", ".jinja", ".model")
_CHUNK = 1 << 20


def model_dir_version(model_dir: Path) -> str:
    """A content hash of the files of `model_dir` that decide its outputs (names and bytes, in name order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(model_dir).iterdir() if p.is_file() and p.name.endswith(_VERSIONED_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no model files in {model_dir}")
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return f"sha256.{digest.hexdigest()[:16]}"


class RewardModelScorer:
    """Scores `prompt + completion` conversations, rendered with the model's chat template, by the RM's logit.

    The version is a content hash of the model directory, taken when the scorer is made (so a missing model fails
    there), and a retrained RM under the same path is a new scorer version in every score's lineage.
    """

    name = "reward_model"

    def __init__(self, model_dir: str | Path, *, batch_size: int = 8, max_length: int = 512) -> None:
        self.model_dir = Path(model_dir)
        self.batch_size = batch_size
        self.max_length = max_length
        self.version = model_dir_version(self.model_dir)
        self._model: PreTrainedModel | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None

    def load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        model = AutoModelForSequenceClassification.from_pretrained(self.model_dir, dtype=torch.float32)
        if model.config.num_labels != 1:
            raise ValueError(f"{self.model_dir} has {model.config.num_labels} labels; a reward model has 1")
        if tokenizer.pad_token_id is None:
            raise ValueError(f"{self.model_dir}: the tokenizer has no pad token; batched scoring needs one")
        model.config.pad_token_id = tokenizer.pad_token_id
        tokenizer.truncation_side = "left"  # a long prompt must not cut off the completion being scored
        self._tokenizer, self._model = tokenizer, model.eval()

    def unload(self) -> None:
        self._model = None
        self._tokenizer = None

    def texts(self, prompt_messages: Sequence[Mapping[str, Any]], completions: Sequence[str]) -> list[str]:
        """What the RM reads for each completion: the prompt plus the completion as the assistant's turn."""
        self.load()
        assert self._tokenizer is not None
        prompt = [{"role": str(m["role"]), "content": str(m.get("content") or "")} for m in prompt_messages]
        texts = []
        for completion in completions:
            text = self._tokenizer.apply_chat_template(
                [*prompt, {"role": "assistant", "content": completion}], tokenize=False
            )
            texts.append(str(text))
        return texts

    def score(self, prompt_messages: list[dict[str, Any]], completions: list[str]) -> list[float]:
        if not completions:
            return []
        texts = self.texts(prompt_messages, completions)
        import torch

        assert self._model is not None and self._tokenizer is not None
        values: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self._tokenizer(
                    texts[start : start + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    add_special_tokens=False,
                )
                logits = self._model(**batch).logits
                values.extend(float(v) for v in logits[:, 0].tolist())
        return values
