"""The counts of one build: rows in, what each gate removed, and the kept rows by where they came from."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Set
from operator import attrgetter
from typing import Any, NamedTuple

from flywheel.domain.rounds.entries import Prepared
from flywheel.domain.rounds.quarantine import ContaminationHit, QuarantineList
from flywheel.domain.rounds.semantic import METHOD, SemanticMatch

# Upper bounds (exclusive, in characters of prompt plus answers) of the length buckets of the distribution report.
LENGTH_BUCKETS: tuple[tuple[float, str], ...] = (
    (256, "<256"), (1024, "256-1k"), (4096, "1k-4k"), (16384, "4k-16k"), (float("inf"), ">=16k"),
)


class Kept(NamedTuple):
    """What kept rows are counted by: one counter per distinct combination, so its size grows with the number of
    combinations, not with the rows."""

    kind: str
    split: str
    source: str
    app_id: str
    model_version: str
    prompt_version: str | None
    tags: tuple[str, ...]
    length: str  # the name of the length bucket


class Tally:
    """Counters only: what came in, what each gate removed, what was kept, and where it came from."""

    def __init__(self, quarantine: QuarantineList) -> None:
        self.list_of = {i.item_id: i.list_name for i in quarantine.items}
        self.rows_in: Counter[str] = Counter()  # by kind
        self.excluded_kinds: Counter[str] = Counter()
        self.removed: defaultdict[str, Counter[str]] = defaultdict(Counter)  # by gate, then kind
        self.quality: defaultdict[str, Counter[str]] = defaultdict(Counter)  # by quality reason, then kind
        self.item_hits: Counter[str] = Counter()  # rows per item
        self.list_hits: Counter[str] = Counter()  # rows per list
        self.hit_rows: Counter[tuple[str, str, str]] = Counter()  # rows per (item, side, method)
        self.hit_scores: dict[tuple[str, str, str], float] = {}  # the highest score of each
        self.kept: Counter[Kept] = Counter()
        # kept generated rows per (kind, the scorers that selected them)
        self.selected_by: Counter[tuple[str, tuple[str, ...]]] = Counter()
        # Semantic hits by (item, item side, row side): how many row texts, and the best score among them.
        self.semantic_texts: Counter[tuple[str, str, str]] = Counter()
        self.semantic_best: dict[tuple[str, str, str], float] = {}
        self.min_position: int | None = None
        self.max_position: int | None = None

    def contaminated(self, hits: Set[ContaminationHit]) -> None:
        """Count a row the contamination gate removed, once per item, list and (item, side, method) it held."""
        item_ids = {h.item for h in hits}
        self.item_hits.update(item_ids)
        self.list_hits.update({self.list_of.get(i, "") for i in item_ids})
        best: dict[tuple[str, str, str], float] = {}
        for h in hits:
            key = (h.item, h.side, h.method)
            best[key] = max(h.score, best.get(key, h.score))
        self.hit_rows.update(best.keys())
        for key, score in best.items():
            self.hit_scores[key] = max(score, self.hit_scores.get(key, score))

    def hit_records(self) -> list[dict[str, Any]]:
        """Every (item, side, method) the gate found, with its list, rows and highest score, in item order."""
        return [{"item": item, "list": self.list_of.get(item, ""), "side": side, "method": method,
                 "rows": self.hit_rows[(item, side, method)], "score": self.hit_scores[(item, side, method)]}
                for item, side, method in sorted(self.hit_rows)]

    def semantic_hit(self, match: SemanticMatch, side: str) -> None:
        key = (match.item_id, match.item_side, side)
        self.semantic_texts[key] += 1
        self.semantic_best[key] = max(self.semantic_best.get(key, match.score), match.score)

    def semantic_records(self) -> list[dict[str, Any]]:
        """One record per (item, item side, row side) the semantic check hit: item, side (of the row), method,
        score (the best) and how many row texts."""
        return [{"item": item, "item_side": item_side, "side": side, "method": METHOD,
                 "score": self.semantic_best[(item, item_side, side)], "texts": n}
                for (item, item_side, side), n in sorted(self.semantic_texts.items())]

    def keep(self, row: Prepared, split: str, length: int) -> None:
        bucket = LENGTH_BUCKETS[-1][1]
        for bound, name in LENGTH_BUCKETS:
            if length < bound:
                bucket = name
                break
        # Positional, in Kept's field order: one is made per kept row, and keywords make that much slower.
        self.kept[Kept(row.kind, split, row.source, row.app_id, row.model_version, row.prompt_version, row.tags,
                       bucket)] += 1
        if row.scorers:
            self.selected_by[(row.kind, row.scorers)] += 1
        if self.min_position is None or row.position < self.min_position:
            self.min_position = row.position
        if self.max_position is None or row.position > self.max_position:
            self.max_position = row.position

    def kept_by(self, field: str) -> Counter[Any]:
        """The kept rows counted by one field of `Kept`."""
        value = attrgetter(field)
        out: Counter[Any] = Counter()
        for key, n in self.kept.items():
            out[value(key)] += n
        return out

    @property
    def rows_out(self) -> int:
        return sum(self.kept.values())
