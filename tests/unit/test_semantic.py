"""The semantic contamination check's pure logic and its use case, with a deterministic fake embedder."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest

from flywheel.domain.commands import BuildRound
from flywheel.domain.events import QuarantineItemsAdded
from flywheel.domain.log import NewEvent
from flywheel.domain.rounds import MANIFEST, QuarantineItem, QuarantineList, RoundConfig, build, normalise
from flywheel.domain.rounds.semantic import (
    SemanticGap,
    SemanticHits,
    choose_threshold,
    recall_precision,
    semantic_hits,
    text_key,
)
from flywheel.services.build_round import build_round
from flywheel.services.semantic import embed_missing, semantic_step
from store.memory import MemoryEventStore, MemoryRoundSource
from store.memory.embeddings import MemoryTextEmbeddings
from store.roundfiles import RoundDirectories
from tests.factories import interaction
from tests.unit.test_build_round_service import InProcess, sft

QUESTION = "How do I change the billing address on invoice number 1?"  # sft(1)'s prompt
ANSWER = "Go to the billing page, choose the invoice and update its postal address there."


class BagOfWords:
    """A fake embedder: hashed word counts, unit length. Texts with the same words (in any order) are identical,
    texts sharing no word orthogonal: enough to test what is compared with what."""

    model = "bag-of-words"

    def __init__(self) -> None:
        self.embedded: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.embedded += texts
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.split():
                out[row, hashlib.blake2b(word.encode(), digest_size=2).digest()[0] % 64] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


# One word in 11 changed gives 0.91 here: 0.95 takes a reordering, not a different invoice.
CONFIG = RoundConfig(semantic=True, semantic_model=BagOfWords.model, semantic_threshold=0.95)


def test_semantic_hits_finds_each_text_over_the_threshold_with_its_item_side_and_score() -> None:
    items = [("q1", "prompt"), ("q1", "answer")]
    item_vectors = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32)
    keys = [b"a", b"b", b"c"]
    vectors = np.array([[0.96, 0.28, 0], [0, 0, 1], [0.6, 0.8, 0]], dtype=np.float32)
    hits = semantic_hits(items, item_vectors, keys, vectors, threshold=0.8)
    assert set(hits) == {b"a", b"c"}
    [a] = hits[b"a"]
    assert (a.item_id, a.item_side, a.score) == ("q1", "prompt", 0.96)
    assert [(m.item_side, m.score) for m in hits[b"c"]] == [("answer", 0.8)]


def test_a_text_without_an_embedding_is_never_cleared() -> None:
    hits = SemanticHits(model="m", threshold=0.5, embedded=frozenset({text_key("known text")}), items_compared=1)
    assert hits.of("known text") == ()
    assert hits.of("a text nobody embedded") is None


def test_the_step_embeds_each_item_text_once_and_compares_every_kept_text() -> None:
    quarantine = QuarantineList(version="v", items=(QuarantineItem(item_id="q1", list_name="bench",
                                                                   prompt=QUESTION, answer=ANSWER),))
    store, embedder = MemoryTextEmbeddings(), BagOfWords()
    texts = {text_key(normalise(t)): normalise(t) for t in ("an unrelated text about the weather", QUESTION)}
    assert asyncio.run(embed_missing(texts, store, embedder)) == 2
    hits = asyncio.run(semantic_step(quarantine, CONFIG, store, embedder))
    assert sorted(embedder.embedded) == sorted({normalise(QUESTION), normalise(ANSWER),
                                                "an unrelated text about the weather"})
    assert [m.item_side for m in hits.matches[text_key(normalise(QUESTION))]] == ["prompt"]
    assert hits.embedded == frozenset(texts) | {text_key(normalise(ANSWER))}
    assert asyncio.run(embed_missing(texts, store, embedder)) == 0
    # Without an embedder, what is kept is compared: only what was kept since the last comparison with these items
    # at this threshold.
    assert store.scanned == 3
    assert asyncio.run(semantic_step(quarantine, CONFIG, store, None)).matches == hits.matches
    assert store.scanned == 3
    asyncio.run(embed_missing({text_key("how do i change the billing address on invoice 1"):
                               "how do i change the billing address on invoice 1"}, store, embedder))
    # The item texts match themselves; the new text is the third.
    assert len(asyncio.run(semantic_step(quarantine, CONFIG, store, None)).matches) == 3 and store.scanned == 4
    stricter = asyncio.run(semantic_step(quarantine, replace(CONFIG, semantic_threshold=0.99), store, None))
    assert len(stricter.matches) == 2 and store.scanned == 8  # another threshold: compared anew
    with pytest.raises(SemanticGap, match="item q1"):
        asyncio.run(semantic_step(quarantine, CONFIG, MemoryTextEmbeddings(), None))


def _built(tmp_path: Path, rows: list, embedder: BagOfWords | None, embeddings: MemoryTextEmbeddings,
           config: RoundConfig = CONFIG) -> dict:
    store = MemoryEventStore()

    async def go() -> dict:
        await store.append([NewEvent.of(interaction(f"i{n}")) for n in range(1, max(r.position for r in rows) + 1)])
        await store.append([QuarantineItemsAdded.listing("bench", [(QUESTION, ANSWER)])])
        head = await store.head()
        source = MemoryRoundSource(store, rows, signals_checkpoint=head)
        done = await build_round(BuildRound(config=config, watermark=head), source=source,
                                 builder=InProcess(), files=RoundDirectories(tmp_path), embeddings=embeddings,
                                 embedder=embedder)
        manifest = orjson.loads((done.path / MANIFEST).read_bytes())
        return {"done": done, "manifest": manifest}

    return asyncio.run(go())


def test_a_round_leaves_out_a_reworded_prompt_and_keeps_the_rest(tmp_path: Path) -> None:
    # Row 1 asks QUESTION in another order (no n-gram, no MinHash hit); rows 2 and 3 ask something else.
    rows = [sft(1), sft(2), sft(3)]
    for i, prompt in ((0, "On invoice number 1, how do I change the billing address?"),
                      (1, "What is the weather like in Paris today, and should I bring an umbrella?"),
                      (2, "Which plan includes priority support for teams of more than ten people?")):
        data = orjson.loads(orjson.dumps(rows[i].data))
        data["messages"][0]["content"] = prompt
        rows[i] = rows[i]._replace(data=data)
    embeddings = MemoryTextEmbeddings()
    out = _built(tmp_path / "a", rows, BagOfWords(), embeddings)
    isolation = out["manifest"]["evaluation_isolation"]
    assert out["manifest"]["sample_processing"]["removed"]["contamination"]["sft"] == 1
    assert out["done"].rows_out == 2 and out["done"].semantic_seconds is not None
    assert [(h["item_side"], h["side"], h["method"]) for h in isolation["semantic"]["hits"]] == [
        ("prompt", "prompt", "semantic")]
    assert isolation["semantic"]["hits"][0]["score"] >= 0.95 and isolation["hits"] == {
        QuarantineItemsAdded.listing("bench", [(QUESTION, ANSWER)]).items[0].item_id: 1}
    assert "Semantic near duplicates" in (out["done"].path / "report.html").read_text()
    # Built again where no embedder is installed: the kept vectors give the same round.
    again = _built(tmp_path / "b", rows, None, embeddings)
    assert again["done"].content_hash == out["done"].content_hash
    # A text that nobody embedded stops the build there, and leaves nothing behind.
    with pytest.raises(SemanticGap, match="2 texts of the round have no embedding"):
        _built(tmp_path / "c", [*rows, sft(10)._replace(position=4)], None, embeddings)
    assert not [p for p in (tmp_path / "c").iterdir() if p.name != "current"]


def test_the_check_off_changes_nothing_of_a_round(tmp_path: Path) -> None:
    off = replace(CONFIG, semantic=False)
    assert off.version() == RoundConfig(semantic_model=BagOfWords.model, semantic_threshold=0.9).version() \
        == RoundConfig().version()
    out = _built(tmp_path, [sft(1)], None, MemoryTextEmbeddings(), off)
    assert "semantic" not in out["manifest"]["evaluation_isolation"]
    with pytest.raises(ValueError, match="semantic check"):
        build(iter([]), CONFIG, QuarantineList(version="v", items=()), tmp_path / "x", watermark=1, parent=None,
              round_number=1)


def test_the_threshold_meets_both_targets_where_it_can_and_keeps_recall_where_it_cannot() -> None:
    labels = [True, True, True, False, False]
    assert choose_threshold([0.9, 0.8, 0.7, 0.5, 0.4], labels, min_recall=0.9, min_precision=0.95) == (0.7, True)
    # A negative above two paraphrases: no threshold has both; the highest with every paraphrase is taken.
    assert choose_threshold([0.9, 0.6, 0.55, 0.7, 0.4], labels, min_recall=0.9, min_precision=0.95) == (0.55, False)
    assert recall_precision([0.9, 0.6, 0.55, 0.7, 0.4], labels, 0.55) == (1.0, 0.75)
