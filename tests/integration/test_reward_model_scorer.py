"""The reward-model scorer on the tiny reward model (transformers on CPU)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")

from sampling.adapters import tiny_model  # noqa: E402
from sampling.adapters.reward_model import RewardModelScorer  # noqa: E402
from sampling.verifiers import Scorer  # noqa: E402

pytestmark = pytest.mark.vllm  # runs where the generation extras are installed

PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is two plus two?"}]
COMPLETIONS = ["The answer is 4.", "Paris is the capital of France.", "I am not sure, could you give more detail? " * 4]


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    policy = tiny_model.ensure(tmp_path_factory.getbasetemp() / "tiny-model", seed=0)
    return tiny_model.reward_model_dir(policy)


def test_scores_every_completion_the_same_batched_or_alone(reward_dir: Path) -> None:
    scorer = RewardModelScorer(reward_dir, batch_size=2)
    assert isinstance(scorer, Scorer)
    scores = scorer.score(PROMPT, COMPLETIONS)

    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)
    assert len(set(scores)) == 3
    alone = [scorer.score(PROMPT, [c])[0] for c in COMPLETIONS]  # padding must not change a score
    assert alone == pytest.approx(scores, abs=1e-5)
    assert scorer.score(PROMPT, []) == []


def test_reads_the_completion_as_the_assistant_turn(reward_dir: Path) -> None:
    scorer = RewardModelScorer(reward_dir)
    [text] = scorer.texts(PROMPT, ["The answer is 4."])
    assert text.endswith("<|im_start|>user\nWhat is two plus two?<|im_end|>\n"
                         "<|im_start|>assistant\nThe answer is 4.<|im_end|>\n")


def test_version_names_the_weights(reward_dir: Path, tmp_path: Path) -> None:
    scorer = RewardModelScorer(reward_dir)
    assert scorer.name == "reward_model"
    assert scorer.version == RewardModelScorer(reward_dir).version

    from safetensors.torch import load_file, save_file

    retrained = tmp_path / "reward"
    shutil.copytree(reward_dir, retrained)
    weights = load_file(retrained / "model.safetensors")
    weights["score.weight"] = weights["score.weight"] + 0.1
    save_file(weights, retrained / "model.safetensors", metadata={"format": "pt"})
    assert RewardModelScorer(retrained).version != scorer.version
    assert RewardModelScorer(retrained).score(PROMPT, COMPLETIONS[:1]) != scorer.score(PROMPT, COMPLETIONS[:1])
