"""A tiny random-weight chat model and reward model, built offline and deterministically, for generator tests."""

from __future__ import annotations

import argparse
import itertools
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import LlamaConfig, PreTrainedTokenizerFast

# ChatML: every turn is `<|im_start|>role\ncontent<|im_end|>\n`; generation stops at `<|im_end|>`.
BOS = "<|endoftext|>"
TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (BOS, TURN_START, TURN_END, PAD)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

POLICY_DIR = "policy"
REWARD_DIR = "reward"
STAMP = "tiny_model.json"

VOCAB_SIZE = 1024
HIDDEN_SIZE = 128
LAYERS = 2
HEADS = 4  # head_dim 32: the vLLM CPU attention backend needs head_dim >= 32
INTERMEDIATE_SIZE = 256
MAX_POSITIONS = 512

_SUBJECTS = ("the model", "a user", "the assistant", "my friend", "the team", "this answer", "the report", "our app")
_VERBS = ("explains", "writes", "checks", "summarizes", "improves", "translates", "rates", "fixes")
_OBJECTS = ("the code", "a short poem", "the email", "this question", "the data", "a recipe", "the plan", "the bug")
_ENDINGS = ("today.", "again.", "very well.", "in one line.", "step by step.", "for the team.", "quickly.", "at night.")
_QUESTIONS = (
    "How do I sort a list in Python?",
    "What is the capital of France?",
    "Can you write a haiku about rain?",
    "Why is the sky blue?",
    "Summarize this paragraph in one sentence.",
    "What is two plus two?",
    "Translate 'good morning' into Spanish.",
    "Give me three tips for better sleep.",
    "Fix the bug in my JSON, please.",
    "What does HTTP stand for?",
)
_REPLIES = (
    "Sure, here is a short answer.",
    "Thanks for asking! Let me explain.",
    "The answer is 4.",
    "Paris is the capital of France.",
    "Use sorted(items) or items.sort().",
    "Rain on the roof, soft drums of the night, sleep comes.",
    "Buenos dias.",
    "HyperText Transfer Protocol.",
    "I am not sure, could you give more detail?",
    "Go to bed at the same time, avoid screens, keep the room cool.",
)


def corpus(seed: int = 0) -> list[str]:
    """A few hundred short English and chat sentences, the same for the same seed."""
    rng = random.Random(seed)
    lines = [
        f"{s.capitalize()} {v} {o} {e}"
        for s, v, o, e in itertools.product(_SUBJECTS, _VERBS, _OBJECTS, _ENDINGS)
        if rng.random() < 0.08
    ]
    for q, r in zip(_QUESTIONS, _REPLIES, strict=True):
        lines.append(f"{TURN_START}user\n{q}{TURN_END}\n{TURN_START}assistant\n{r}{TURN_END}\n")
        lines.append(q)
        lines.append(r)
    lines.extend(f"{i} + {j} = {i + j}" for i, j in itertools.product(range(10), range(10)) if (i * 7 + j) % 3 == 0)
    return lines


def _batches(lines: Sequence[str], size: int = 64) -> Iterator[Sequence[str]]:
    for i in range(0, len(lines), size):
        yield lines[i : i + size]


def build_tokenizer(seed: int = 0) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus(seed)`, with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = corpus(seed)
    tok.train_from_iterator(_batches(lines), trainer=trainer, length=len(lines))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=TURN_END,
        pad_token=PAD,
        model_max_length=MAX_POSITIONS,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _config(tokenizer: PreTrainedTokenizerFast, **extra: Any) -> LlamaConfig:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        intermediate_size=INTERMEDIATE_SIZE,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **extra,
    )


def build(out_dir: Path, *, seed: int = 0) -> Path:
    """Write the tiny policy to `out_dir/policy` (returned) and the tiny reward model to `out_dir/reward`."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM, LlamaForSequenceClassification

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(seed)

    policy_dir = out_dir / POLICY_DIR
    torch.manual_seed(seed)
    policy = LlamaForCausalLM(_config(tokenizer)).eval()
    policy.generation_config = GenerationConfig(
        bos_token_id=policy.config.bos_token_id,
        eos_token_id=policy.config.eos_token_id,
        pad_token_id=policy.config.pad_token_id,
    )
    policy.save_pretrained(policy_dir, safe_serialization=True)
    tokenizer.save_pretrained(policy_dir)

    reward_dir = out_dir / REWARD_DIR
    torch.manual_seed(seed + 1)
    reward = LlamaForSequenceClassification(_config(tokenizer, num_labels=1)).eval()
    reward.save_pretrained(reward_dir, safe_serialization=True)
    tokenizer.save_pretrained(reward_dir)
    (out_dir / STAMP).write_text(json.dumps({"seed": seed}))  # written last: the build is complete
    return policy_dir


def ensure(out_dir: Path, *, seed: int = 0) -> Path:
    """`build`, unless a complete build with the same seed is already in `out_dir`; returns the policy dir."""
    stamp = Path(out_dir) / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == {"seed": seed}:
        return Path(out_dir) / POLICY_DIR
    return build(out_dir, seed=seed)


def reward_model_dir(policy_dir: Path) -> Path:
    """The reward model `build` writes beside the policy it returned."""
    return Path(policy_dir).parent / REWARD_DIR


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sampling.adapters.tiny_model", description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    policy = build(args.out_dir, seed=args.seed)
    print(f"policy: {policy}\nreward: {reward_model_dir(policy)}")


if __name__ == "__main__":
    main()
