"""Paraphrase benchmark: the semantic contamination check's threshold, chosen and judged on a labelled set.

    .venv-gen/bin/python bench/paraphrase.py [--min-precision 0.95]

Runs where the embedder is installed (the generation virtualenv, infra/gen-venv.sh). The set is
sampling/data/paraphrases.jsonl: pairs of a benchmark-like prompt or answer and either a true paraphrase
(reworded, not reformatted) or a negative, each marked `tune` or `heldout` (half each, an anchor's pairs in the
same half). Negatives are of two kinds: `unrelated` (the anchor beside another anchor's paraphrase) and
`same_topic` (another question about the same thing, often one word or number apart: harder than the issue's
paraphrase / unrelated pairs, and reported on their own). Each pair's cosine
similarity is computed as the check computes it (the normalised texts, embedded by the adapter); the threshold
with the most recall at --min-precision or more on the tuning half is chosen (two decimals), and recall and
precision at it on the held-out half are printed beside the targets (recall >= 0.9, precision >= 0.95), with
the figures at the shipped default (RoundConfig.semantic_threshold). When no threshold meets both targets on
the tuning half, the highest that keeps the recall target is chosen: a missed paraphrase leaks an evaluation
item into training, a false alarm costs a training row.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flywheel.domain.rounds import normalise  # noqa: E402
from flywheel.domain.rounds.config import SEMANTIC_THRESHOLD  # noqa: E402
from flywheel.domain.rounds.semantic import choose_threshold, recall_precision  # noqa: E402
from sampling.adapters.embedder import MiniLMEmbedder  # noqa: E402

SET = Path(__file__).resolve().parents[1] / "sampling" / "data" / "paraphrases.jsonl"


def load(path: Path = SET) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def scores(pairs: list[dict[str, object]], embedder: MiniLMEmbedder) -> list[float]:
    """Each pair's cosine similarity, its texts normalised and embedded as the check does it."""
    texts = sorted({normalise(str(p[side])) for p in pairs for side in ("a", "b")})
    vectors = dict(zip(texts, embedder.embed(texts), strict=True))
    return [float(np.dot(vectors[normalise(str(p["a"]))], vectors[normalise(str(p["b"]))])) for p in pairs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--min-recall", type=float, default=0.9)
    ap.add_argument("--min-precision", type=float, default=0.95)
    args = ap.parse_args()
    pairs = load()
    embedder = MiniLMEmbedder()
    started = time.perf_counter()
    all_scores = scores(pairs, embedder)
    took = time.perf_counter() - started
    halves = {name: ([s for s, p in zip(all_scores, pairs, strict=True) if p["split"] == name],
                     [bool(p["paraphrase"]) for p in pairs if p["split"] == name]) for name in ("tune", "heldout")}
    for name, (s, labels) in halves.items():
        para = [x for x, y in zip(s, labels, strict=True) if y]
        other = [x for x, y in zip(s, labels, strict=True) if not y]
        print(f"{name}: {len(labels)} pairs ({len(para)} paraphrases, {len(other)} negatives); paraphrase "
              f"cosine min {min(para):.3f} median {float(np.median(para)):.3f}; negative cosine median "
              f"{float(np.median(other)):.3f} max {max(other):.3f}")
    chosen, both = choose_threshold(*halves["tune"], min_recall=args.min_recall, min_precision=args.min_precision)
    tune_r, tune_p = recall_precision(*halves["tune"], chosen)
    held_r, held_p = recall_precision(*halves["heldout"], chosen)
    by_kind = {kind: ([x for x, p in zip(all_scores, pairs, strict=True)
                       if p["split"] == "heldout" and (p["paraphrase"] or p.get("negative") == kind)],
                      [bool(p["paraphrase"]) for p in pairs
                       if p["split"] == "heldout" and (p["paraphrase"] or p.get("negative") == kind)])
               for kind in ("unrelated", "same_topic")}
    print(f"embedded {len({normalise(str(p[s])) for p in pairs for s in ('a', 'b')})} texts in {took:.1f} s "
          f"({embedder.model})")
    how = "meets both targets" if both else (f"no threshold meets both targets: the highest keeping recall >= "
                                              f"{args.min_recall}")
    print(f"chosen threshold {chosen:.2f} on the tuning half (recall {tune_r:.3f}, precision {tune_p:.3f}; {how})")
    print(f"held-out half at {chosen:.2f}: recall {held_r:.3f} (target >= 0.9), precision {held_p:.3f} "
          f"(target >= 0.95)")
    for kind, (s, labels) in by_kind.items():
        r, p = recall_precision(s, labels, chosen)
        print(f"held-out paraphrase / {kind} pairs at {chosen:.2f}: {sum(labels)} paraphrases, "
              f"{len(labels) - sum(labels)} {kind} negatives: recall {r:.3f}, precision {p:.3f}")
    shipped_r, shipped_p = recall_precision(*halves["heldout"], SEMANTIC_THRESHOLD)
    print(f"held-out half at the shipped default {SEMANTIC_THRESHOLD:.2f}: recall {shipped_r:.3f}, "
          f"precision {shipped_p:.3f}")


if __name__ == "__main__":
    main()
