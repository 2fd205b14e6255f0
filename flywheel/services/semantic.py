"""The semantic contamination check's steps: embed what has no kept embedding yet, and compare kept vectors.

A build calls `semantic_step` before it reads its rows for the cut: the quarantine items' texts must have kept
vectors (with an embedder, those missing are embedded here; without, the build stops). The round's own texts are
checked in the cut, which hands back those without one (flywheel.services.build_round embeds them and cuts again,
or stops): a text is never passed unchecked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from flywheel.domain.rounds import Entry, Prepared, QuarantineList, RoundConfig
from flywheel.domain.rounds.semantic import (
    GAP_ADVICE,
    SemanticGap,
    SemanticHits,
    SemanticMatch,
    comparison_id,
    distinct_texts,
    quarantine_texts,
    semantic_hits,
    text_key,
)
from flywheel.ports import Embedder, TextEmbeddings

_EMBED_BATCH = 256  # texts per call to the model (and per save: a stopped run keeps what it made)


async def texts_of(chunks: AsyncIterator[list[Entry]]) -> dict[bytes, str]:
    """The distinct normalised texts (prompts and answers) of the rows the contamination gate would see: past the
    first gates and without PII."""
    out: dict[bytes, str] = {}
    async for chunk in chunks:
        for entry in chunk:
            if isinstance(entry, Prepared) and not entry.pii:
                for key, text in distinct_texts((entry.prompt, *entry.answers)).items():
                    out.setdefault(key, text)
    return out


async def embed_missing(texts: dict[bytes, str], store: TextEmbeddings, embedder: Embedder) -> int:
    """Embed and keep every text of `texts` (key -> normalised text) with no kept vector; how many were."""
    missing = await store.missing(embedder.model, list(texts))
    todo = [key for key in texts if key in missing]
    for start in range(0, len(todo), _EMBED_BATCH):
        keys = todo[start:start + _EMBED_BATCH]
        vectors = await asyncio.to_thread(embedder.embed, [texts[k] for k in keys])
        await store.save(embedder.model, keys, vectors)
    return len(todo)


async def semantic_step(quarantine: QuarantineList, config: RoundConfig, store: TextEmbeddings,
                        embedder: Embedder | None) -> SemanticHits:
    """The semantic hits a build passes to the cut: every kept text of the config's model compared with every
    quarantine item side (of at least `min_item_words` words). With `embedder`, item sides without a kept vector
    are embedded first; without, one of them stops the build (SemanticGap)."""
    items = quarantine_texts(quarantine, config.min_item_words)
    if not items:  # nothing any text could be close to
        return SemanticHits(model=config.semantic_model, threshold=config.semantic_threshold, embedded=frozenset())
    if embedder is not None:
        if embedder.model != config.semantic_model:
            raise ValueError(f"the embedder is {embedder.model}, the round config asks for {config.semantic_model}")
        await embed_missing({text_key(t): t for *_, t in items}, store, embedder)
    item_keys = [text_key(t) for *_, t in items]
    kept = await store.vectors(config.semantic_model, item_keys)
    absent = [(item, side) for (item, side, _), key in zip(items, item_keys, strict=True) if key not in kept]
    if absent:
        item, side = absent[0]
        raise SemanticGap(f"{len(absent)} quarantine item texts have no embedding under {config.semantic_model} "
                          f"(the first: item {item}, {side}): {GAP_ADVICE}")
    import numpy as np

    item_vectors = np.stack([kept[key] for key in item_keys])
    sides = [(item, side) for item, side, _ in items]
    model = config.semantic_model
    # Only what was kept since this comparison last ran (with these items at this threshold) is compared.
    checked = comparison_id(model, config.semantic_threshold, items)
    upto, found = await store.compared(model, checked)
    newest = await store.newest(model)
    if newest > upto:
        fresh: dict[bytes, list[dict[str, Any]]] = {}
        async for keys, vectors in store.scan(model, after=upto, upto=newest):  # a batch at a time
            for key, matches in semantic_hits(sides, item_vectors, keys, vectors,
                                              threshold=config.semantic_threshold).items():
                fresh[key] = [{"item": m.item_id, "side": m.item_side, "score": m.score} for m in matches]
        await store.record(model, checked, newest, fresh)
        found.update(fresh)
    return SemanticHits(model=model, threshold=config.semantic_threshold, embedded=frozenset(await store.keys(model)),
                        matches={key: tuple(SemanticMatch(item_id=m["item"], item_side=m["side"], score=m["score"])
                                            for m in matches) for key, matches in found.items()},
                        items_compared=len(items))
