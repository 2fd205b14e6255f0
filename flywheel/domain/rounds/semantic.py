"""Semantic contamination: a text whose embedding is close to a quarantine item's prompt or answer (a paraphrase).

n-gram and MinHash find copies, reworded or not; they miss a benchmark question said in other words. This check
compares embeddings (unit vectors of a sentence embedding model) by cosine similarity. Each distinct text is
embedded once, keyed by `text_key` (its normalised words: a text reformatted only shares its key), and kept
beside the read models; a build only compares the kept vectors (`semantic_hits`), so it never runs the model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from flywheel.domain.rounds.quarantine import ANSWER, PROMPT, QuarantineList, normalise

if TYPE_CHECKING:
    import numpy as np

METHOD = "semantic"
_BLOCK = 16_384  # texts compared per matrix product: bounds the similarity matrix held at once


def text_key(normalised: str) -> bytes:
    """The key a text's embedding is kept under: 16 bytes of blake2b of its `normalise`d form."""
    return hashlib.blake2b(normalised.encode(), digest_size=16).digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class SemanticMatch:
    """A quarantine item side that a text is a paraphrase of, with the cosine similarity that says so."""

    item_id: str
    item_side: str  # PROMPT or ANSWER: which of the item's texts the text is close to
    score: float


@dataclass(frozen=True, kw_only=True)
class SemanticHits:
    """What a build needs of the semantic check: the matches of every embedded text over the threshold, and
    which texts are embedded at all (a text that is not cannot be cleared: the cut reports it, and its round is
    not published; see flywheel.services.build_round)."""

    model: str
    threshold: float
    embedded: frozenset[bytes]  # every kept key: a text whose key is not here is unchecked
    matches: dict[bytes, tuple[SemanticMatch, ...]] = field(default_factory=dict)
    items_compared: int = 0  # item sides with an embedding (those with at least min_item_words words)

    def of(self, normalised: str) -> tuple[SemanticMatch, ...] | None:
        """The matches of a text (already `normalise`d); None when it has no kept embedding."""
        if not normalised or not self.items_compared:  # no item side to be close to: nothing to look up
            return ()
        key = text_key(normalised)
        found = self.matches.get(key)
        if found is not None:
            return found
        return () if key in self.embedded else None


class SemanticGap(ValueError):
    """Texts of the round have no kept embedding and none can be made here: the semantic check cannot clear them."""


GAP_ADVICE = ("build where the embedder is installed (the generation virtualenv, see README: it embeds what is "
              "missing), or run `flywheel rounds embed` there first")


def comparison_id(model: str, threshold: float, items: Sequence[tuple[str, str, str]]) -> str:
    """Names a comparison of kept vectors with item sides (`quarantine_texts`) at a threshold: its matches hold
    for as long as these are the same."""
    canonical = orjson.dumps([model, float(threshold), [list(i) for i in items]])
    return hashlib.sha256(canonical).hexdigest()[:24]


def quarantine_texts(quarantine: QuarantineList, min_item_words: int) -> list[tuple[str, str, str]]:
    """(item id, side, normalised text) of every item side the check compares with: sides of at least
    `min_item_words` words (a one-word answer is close to any text about its subject), sorted."""
    out = []
    for item in sorted(quarantine.items, key=lambda i: i.item_id):
        for side, text in ((PROMPT, item.prompt), (ANSWER, item.answer)):
            normalised = normalise(text)
            if len(normalised.split()) >= min_item_words:
                out.append((item.item_id, side, normalised))
    return out


def semantic_hits(items: Sequence[tuple[str, str]], item_vectors: np.ndarray, keys: Sequence[bytes],
                  vectors: np.ndarray, *, threshold: float) -> dict[bytes, tuple[SemanticMatch, ...]]:
    """For each text (keys[i], vectors[i]) whose cosine similarity with an item side (items[j] = (item id, side),
    item_vectors[j]) is at least `threshold`: its matches, best first. Vectors are unit length (float32); scores
    are rounded to 4 decimals, so a manifest does not depend on the last bits of a matrix product."""
    import numpy as np

    out: dict[bytes, tuple[SemanticMatch, ...]] = {}
    if not len(items) or not len(keys):
        return out
    item_matrix = np.ascontiguousarray(item_vectors, dtype=np.float32).T
    for start in range(0, len(keys), _BLOCK):
        scores = np.asarray(vectors[start:start + _BLOCK], dtype=np.float32) @ item_matrix
        rows, cols = np.nonzero(scores >= threshold)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            item_id, side = items[c]
            match = SemanticMatch(item_id=item_id, item_side=side, score=round(float(scores[r, c]), 4))
            key = keys[start + r]
            out[key] = (*out.get(key, ()), match)
    return {key: tuple(sorted(found, key=lambda m: (-m.score, m.item_id, m.item_side)))
            for key, found in out.items()}


def distinct_texts(texts: Iterable[str]) -> dict[bytes, str]:
    """The distinct normalised texts among `texts` by key (empty ones left out), in first-seen order."""
    out: dict[bytes, str] = {}
    for text in texts:
        normalised = normalise(text)
        if normalised:
            out.setdefault(text_key(normalised), normalised)
    return out


def recall_precision(scores: Sequence[float], paraphrase: Sequence[bool], threshold: float) -> tuple[float, float]:
    """Recall and precision of calling a pair a paraphrase when its score is at least `threshold` (precision 1.0
    when nothing is called one)."""
    called = [s >= threshold for s in scores]
    true_positive = sum(c and p for c, p in zip(called, paraphrase, strict=True))
    positives, calls = sum(paraphrase), sum(called)
    return (true_positive / positives if positives else 1.0, true_positive / calls if calls else 1.0)


def choose_threshold(scores: Sequence[float], paraphrase: Sequence[bool], *, min_recall: float,
                     min_precision: float) -> tuple[float, bool]:
    """A threshold (two decimals, a setting one can read) for these labelled pairs, and whether it meets both
    targets on them. The one with the most recall at `min_precision` or more, when that recall reaches
    `min_recall`; else the highest that keeps `min_recall` (a missed paraphrase leaks an evaluation item into
    training, a false alarm costs one training row), 0.01 when none does."""
    judged = [(t / 100, *recall_precision(scores, paraphrase, t / 100)) for t in range(1, 101)]
    precise = [(r, t) for t, r, p in judged if p >= min_precision]
    if precise and (best := max(precise))[0] >= min_recall:
        return (max(t for r, t in precise if r == best[0]), True)
    recalled = [t for t, r, _ in judged if r >= min_recall]
    return (max(recalled) if recalled else 0.01, False)
