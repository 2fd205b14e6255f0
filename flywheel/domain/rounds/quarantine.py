"""Quarantine list (evaluation items kept out of training) and the contamination index that finds them in text."""

from __future__ import annotations

import functools
import hashlib
import math
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

if TYPE_CHECKING:  # datasketch (with scipy) loads only for a non-empty list: a second off every build without one
    import numpy as np
    from datasketch import MinHash, MinHashLSH

from flywheel.domain.rounds.config import RoundConfig

# Pinned so a datasketch upgrade cannot silently change which rows are contaminated.
_MINHASH_SCHEME = "affine32"
_WORD = re.compile(r"[^\W_]+")  # a run of letters and digits: punctuation, symbols, underscores split words
# The same for ASCII text (where NFKC changes nothing and casefolding is lower-casing): letters and digits
# lower-cased, every other byte a space, then split. One translate and a split instead of the pattern, which
# made a string of each word at half the speed.
_ASCII_WORDS = bytes.maketrans(bytes(range(128)), bytes(c if chr(c).isalnum() else 32 for c in range(128)).lower())


# How a hit was found (ContaminationHit.method).
NGRAM = "ngram"  # an item's word n-gram (or all of an item text shorter than n) appears in the text
WHOLE_TEXT = "whole_text"  # an item text under min_item_words is the whole text
MINHASH = "minhash"  # a stretch of the text is a near duplicate of an item text
# Which side of a training row held it (ContaminationHit.side).
PROMPT = "prompt"
ANSWER = "answer"


class Match(NamedTuple):
    """A quarantine item found in one text: how, and how closely (1.0 for the exact methods, the Jaccard estimate
    for MinHash)."""

    item: str
    method: str
    score: float


class ContaminationHit(NamedTuple):
    """A quarantine item found in one side of a row: what the manifest and report count."""

    item: str
    side: str  # PROMPT or ANSWER
    method: str  # NGRAM, WHOLE_TEXT or MINHASH
    score: float


@dataclass(frozen=True, slots=True, kw_only=True)
class QuarantineItem:
    """One evaluation item (e.g. a benchmark question and its reference answer) that must not be trained on."""

    item_id: str
    list_name: str  # the benchmark or eval set it belongs to
    prompt: str
    answer: str


@dataclass(frozen=True, slots=True, kw_only=True)
class QuarantineList:
    version: str
    items: tuple[QuarantineItem, ...]

    def digest(self) -> str:
        """sha256 of the items (order-independent): tells two lists published under one version apart."""
        items = sorted([i.item_id, i.list_name, i.prompt, i.answer] for i in self.items)
        return hashlib.sha256(orjson.dumps(items)).hexdigest()


def words(text: str) -> list[str]:
    """The words of a text after NFKC and casefolding, punctuation, symbols and whitespace dropped."""
    if text.isascii():
        return text.encode().translate(_ASCII_WORDS).decode().split()
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def normalise(text: str) -> str:
    """What contamination and splits compare: `words` joined by single spaces."""
    return " ".join(words(text))


def shingles(tokens: list[str], size: int) -> list[str]:
    """Word `size`-grams in text order (with repeats); a text shorter than `size` words is one shingle."""
    if len(tokens) <= size:
        return [" ".join(tokens)] if tokens else []
    return [" ".join(tokens[i:i + size]) for i in range(len(tokens) - size + 1)]


@functools.cache
def _lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """The (bands, rows) datasketch picks for a threshold: a numerical optimisation worth doing once."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return (lsh.b, lsh.r)


class QuarantineIndex:
    """Finds quarantine items in a text, by three checks on normalised words (see `normalise`):

    - exact: the text shares a word `ngram`-gram with an item's prompt or answer; an item text shorter than
      `ngram` words (but at least `min_item_words`) must appear whole.
    - near: a stretch of the text is a near duplicate of an item's prompt or answer: MinHash (word
      `shingle_words`-shingles) Jaccard estimate >= `threshold`. The stretch compared is the densest window of
      shingles the text shares with an item text (at most len(item)/threshold shingles long), so an item
      embedded in a longer message is compared with its own region, not diluted by the rest. MinHash LSH
      proposes every item text similar to that window; each is confirmed on the estimate.

    - whole text: an item text with fewer than `min_item_words` words (too short to tell contamination from
      coincidence inside a longer text) is found only in a text that is, normalised, exactly that item text.

    Both prompts and answers of every item are indexed, and any text can be checked against both. A text sharing
    no shingle with any item text is cleared without computing a MinHash.

    Reach: each changed word breaks up to `shingle_words` shingles on both sides, so with c words changed in an
    item of S shingles the Jaccard is about (S - 3c) / (S + 3c): at 0.7 the near check tolerates roughly one
    changed word in 17; beyond that the exact check still catches any 13-word run left intact. Lower the
    threshold for more recall.
    """

    def __init__(self, quarantine: QuarantineList, *, ngram: int = 13, min_item_words: int = 8,
                 shingle_words: int = 3, threshold: float = 0.7, num_perm: int = 256, seed: int = 1) -> None:
        if not 1 <= shingle_words <= min_item_words:
            raise ValueError("need 1 <= shingle_words <= min_item_words")  # the lookups rely on it
        self.ngram = ngram
        self.min_item_words = min_item_words
        self.shingle_words = shingle_words
        self.threshold = threshold
        self.num_perm = num_perm
        self.seed = seed
        self._grams: dict[str, set[str]] = defaultdict(set)  # normalised word gram -> item ids
        self._whole: dict[str, set[str]] = defaultdict(set)  # normalised short item text -> item ids
        self._gram_lengths: set[int] = set()
        # shingle -> indexed sides containing it, as a trie of words (depth shingle_words, leaves lists of
        # sides): looking a text's shingles up allocates nothing until one matches.
        self._trie: dict[str, Any] = {}
        self._side_items: list[str] = []  # side index -> item id
        self._side_sizes: list[int] = []  # side index -> number of distinct shingles
        # Every indexed shingle as a tuple of words: whether a text shares any is a set operation at C speed,
        # and most texts of a round share none.
        self._shingle_words: set[tuple[str, ...]] = set()
        # The sides' MinHashes and their LSH are made the first time a text comes near enough to a side to need
        # them (_ensure_hashes): datasketch (with scipy) and 2 x num_perm hashes per side are then paid only by
        # a round with a near miss, in the same order whenever they are made.
        self._side_shingles: list[set[str]] = []
        self._side_hashes: list[MinHash] = []
        self._lsh: MinHashLSH | None = None
        self._permutations: np.ndarray | None = None
        for item in sorted(quarantine.items, key=lambda i: i.item_id):
            for text in (item.prompt, item.answer):
                self._add(item.item_id, words(text))

    @classmethod
    def for_config(cls, quarantine: QuarantineList, config: RoundConfig) -> QuarantineIndex:
        return cls(quarantine, ngram=config.ngram, min_item_words=config.min_item_words,
                   shingle_words=config.shingle_words, threshold=config.minhash_threshold,
                   num_perm=config.num_perm, seed=config.minhash_seed)

    @property
    def indexed_texts(self) -> int:
        """Item texts the n-gram and MinHash checks look for (short ones, matched whole, not counted)."""
        return len(self._side_items)

    @property
    def whole_texts(self) -> int:
        """Distinct short item texts matched as whole texts."""
        return len(self._whole)

    def _minhash(self, shingle_set: set[str]) -> MinHash:
        from datasketch import MinHash

        if self._permutations is None:
            m = MinHash(num_perm=self.num_perm, seed=self.seed, scheme=_MINHASH_SCHEME)
            self._permutations = m.permutations
        else:
            m = MinHash(num_perm=self.num_perm, seed=self.seed, permutations=self._permutations,
                        scheme=_MINHASH_SCHEME)
        m.update_batch([s.encode() for s in sorted(shingle_set)])
        return m

    def _add(self, item_id: str, tokens: list[str]) -> None:
        if len(tokens) < self.min_item_words:
            if tokens:
                self._whole[" ".join(tokens)].add(item_id)
            return
        if len(tokens) >= self.ngram:
            for i in range(len(tokens) - self.ngram + 1):
                self._grams[" ".join(tokens[i:i + self.ngram])].add(item_id)
            self._gram_lengths.add(self.ngram)
        else:
            self._grams[" ".join(tokens)].add(item_id)
            self._gram_lengths.add(len(tokens))
        side = len(self._side_items)
        shingle_set = set(shingles(tokens, self.shingle_words))
        for s in sorted(shingle_set):
            node = self._trie
            *path, last = s.split(" ")
            self._shingle_words.add((*path, last))
            for word in path:
                node = node.setdefault(word, {})
            node.setdefault(last, []).append(side)
        self._side_items.append(item_id)
        self._side_sizes.append(len(shingle_set))
        self._side_shingles.append(shingle_set)

    def _ensure_hashes(self) -> MinHashLSH:
        if self._lsh is None:
            from datasketch import MinHashLSH

            lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm,
                             params=_lsh_params(self.threshold, self.num_perm))
            for side, shingle_set in enumerate(self._side_shingles):
                m = self._minhash(shingle_set)
                self._side_hashes.append(m)
                lsh.insert(str(side), m)
            self._lsh = lsh
        return self._lsh

    def hits(self, text: str) -> set[str]:
        """The ids of the quarantine items found in `text` (empty when none)."""
        if not self._side_items and not self._whole:
            return set()
        return {m.item for m in self.matches_words(words(text))}

    def matches_words(self, tokens: list[str]) -> tuple[Match, ...]:
        """The quarantine items found in a text already split by `words`, each once (by the first check that
        finds it: whole text, n-gram, MinHash), in item order."""
        found: dict[str, Match] = {}
        if self._whole and len(tokens) < self.min_item_words and (short := self._whole.get(" ".join(tokens))):
            found.update((i, Match(i, WHOLE_TEXT, 1.0)) for i in short)
        if self._side_items:
            self._indexed_matches(tokens, found)
        return tuple(found[i] for i in sorted(found)) if found else ()

    def _indexed_matches(self, tokens: list[str], found: dict[str, Match]) -> None:
        k = self.shingle_words
        if self._shingle_words.isdisjoint(zip(*(tokens[i:] for i in range(k)), strict=False)):
            return
        positions: dict[int, list[int]] = {}  # side -> positions of the text's shingles that the side contains
        trie = self._trie
        for pos in range(len(tokens) - k + 1):
            node: Any = trie
            j = 0
            while j < k and node is not None:
                node = node.get(tokens[pos + j])
                j += 1
            if node:
                for side in node:
                    positions.setdefault(side, []).append(pos)
        if not positions:
            return
        text_shingles = shingles(tokens, k)
        # An item gram starts with one of the item's shingles (min_item_words >= shingle_words), so it can only
        # start where a shingle matched.
        starts = sorted({pos for matched in positions.values() for pos in matched})
        for length in sorted(self._gram_lengths):
            for i in starts:
                if i + length > len(tokens):
                    break
                ids = self._grams.get(" ".join(tokens[i:i + length]))
                if ids:
                    for item in ids:
                        found.setdefault(item, Match(item, NGRAM, 1.0))
        windows: dict[tuple[int, int], MinHash] = {}
        for side in sorted(positions):
            if self._side_items[side] in found:
                continue
            start, end = self._window(side, positions[side], text_shingles)
            if end < start:
                continue
            lsh = self._ensure_hashes()
            if (start, end) not in windows:
                windows[(start, end)] = self._minhash(set(text_shingles[start:end + 1]))
            m = windows[(start, end)]
            candidates = {side, *(int(key) for key in lsh.query(m))}
            for other in sorted(candidates):
                item = self._side_items[other]
                estimate = float(m.jaccard(self._side_hashes[other]))
                if estimate >= self.threshold and (item not in found or (
                        found[item].method == MINHASH and estimate > found[item].score)):
                    found[item] = Match(item, MINHASH, round(estimate, 4))

    def _window(self, side: int, matched: list[int], text_shingles: list[str]) -> tuple[int, int]:
        """The span of text shingles (inclusive) holding the most of this side's shingles, at most
        size/threshold long; (0, -1) when no span can reach the threshold."""
        size = self._side_sizes[side]
        needed = math.ceil(self.threshold * size - 1e-9)
        if len(set(text_shingles[p] for p in matched)) < needed:
            return (0, -1)  # Jaccard >= t needs at least t * size shared shingles
        longest = max(1, math.floor(size / self.threshold + 1e-9))
        best_count, best_start, best_end = 0, 0, -1  # the earliest start on ties
        lo = 0
        for hi in range(len(matched)):
            while matched[hi] - matched[lo] + 1 > longest:
                lo += 1
            count = hi - lo + 1
            if count > best_count:
                best_count, best_start, best_end = count, matched[lo], matched[hi]
        if best_count < needed:
            return (0, -1)
        return (best_start, best_end)
