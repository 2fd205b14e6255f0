"""The round builder: stream rows through the gates into split files, hashing as it writes, then the manifest."""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import Iterable, Set
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NamedTuple

import orjson

from flywheel.domain import redact
from flywheel.domain.rounds.config import BUILDER_VERSION, RoundConfig
from flywheel.domain.rounds.gates import (
    CONSENT,
    CONTAMINATION,
    DEDUP,
    DISTRIBUTION_CAP,
    GATES,
    PII,
    QUALITY,
    QUALITY_REASONS,
    SPLITS,
    DistributionCap,
    Splitter,
    _digest,
    _quality,
    texts_of,
)
from flywheel.domain.rounds.quarantine import QuarantineIndex, QuarantineList, words
from flywheel.domain.rounds.rows import (
    KINDS,
    Kind,
    Repeat,
    Row,
    _turns_text,
    answer_texts_of,
    label_of,
    prompt_messages_of,
    roles_of,
    signal_fields,
    truncated_of,
)

FILE_NAMES = {"sft": "sft.jsonl", "dpo": "dpo.jsonl", "kto": "kto.jsonl", "group": "groups.jsonl"}
MANIFEST = "manifest.json"
# Upper bounds (exclusive, in characters of prompt plus answers) of the length buckets of the distribution report.
LENGTH_BUCKETS: tuple[tuple[float, str], ...] = (
    (256, "<256"), (1024, "256-1k"), (4096, "1k-4k"), (16384, "4k-16k"), (float("inf"), ">=16k"),
)
_JSON = orjson.OPT_SORT_KEYS
# Distinct texts a build remembers the PII check and the reading of: rows repeat the same prompts, system prompts
# and answers many times over, mostly close together. Bounded, so memory does not grow with the round.
_CACHE_SIZE = 4096
# Lines a split file buffers before they are written and hashed as one block (~100 KiB at most).
_LINES_PER_WRITE = 64
# Removed.gate of a row whose kind the config leaves out (counted under excluded_kinds, not under a gate).
EXCLUDED = "excluded"


@dataclass(frozen=True, kw_only=True)
class RoundResult:
    """What a build wrote: the manifest (as written to manifest.json), its file hashes and the content hash."""

    round_number: int
    content_hash: str
    files: dict[str, str]  # relative path ("train/sft.jsonl") -> sha256
    rows_in: int
    rows_out: int
    manifest: dict[str, Any]
    manifest_path: Path


class _Writer:
    """The twelve split files of a round, each hashed (sha256) and counted while it is written."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._files: dict[tuple[str, str], IO[bytes]] = {}
        self._hashes: dict[tuple[str, str], Any] = {}
        self._pending: dict[tuple[str, str], list[bytes]] = {}  # lines not written yet, by file
        self.rows: Counter[tuple[str, str]] = Counter()
        self.bytes: Counter[tuple[str, str]] = Counter()

    def __enter__(self) -> _Writer:
        try:
            for split in SPLITS:
                (self.out_dir / split).mkdir(parents=True, exist_ok=True)
                for kind in KINDS:
                    self._files[(split, kind)] = open(self.out_dir / split / FILE_NAMES[kind], "wb")  # noqa: SIM115
                    self._hashes[(split, kind)] = hashlib.sha256()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if exc is None:
                self._finish()
        finally:
            self.close()

    def close(self) -> None:
        for f in self._files.values():
            f.close()

    def write(self, split: str, kind: str, line: bytes) -> None:
        """Append one record's line (`Prepared.line`)."""
        pending = self._pending.setdefault((split, kind), [])
        pending.append(line)
        if len(pending) == _LINES_PER_WRITE:
            self._flush((split, kind))

    def _flush(self, file: tuple[str, str]) -> None:
        # A block of lines at a time: one write and one hash update instead of one per line (hashing the block
        # gives the same digest), which was a tenth of the builder's time.
        lines = self._pending.pop(file, None)
        if lines:
            block = b"".join(lines)
            self._files[file].write(block)
            self._hashes[file].update(block)
            self.rows[file] += len(lines)
            self.bytes[file] += len(block)

    def _finish(self) -> None:
        """Write what is still pending (leaving the block with no error: every line has been written)."""
        for file in list(self._pending):
            self._flush(file)

    def manifest(self) -> dict[str, dict[str, Any]]:
        return {
            f"{split}/{FILE_NAMES[kind]}": {"sha256": self._hashes[(split, kind)].hexdigest(),
                                            "rows": self.rows[(split, kind)], "bytes": self.bytes[(split, kind)]}
            for split in SPLITS for kind in KINDS
        }


def _by_kind(counter: Counter[str]) -> dict[str, int]:
    return {kind: counter[kind] for kind in KINDS}


def _shares(counter: Counter[str], total: int) -> dict[str, dict[str, float | int]]:
    return {value: {"count": n, "share": round(n / total, 6) if total else 0.0} for value, n in sorted(counter.items())}


class _Stats:
    """Counters only: what came in, what each gate removed, what was kept, and where it came from."""

    def __init__(self, quarantine: QuarantineList) -> None:
        self.list_of = {i.item_id: i.list_name for i in quarantine.items}
        self.rows_in: Counter[str] = Counter()
        self.excluded_kinds: Counter[str] = Counter()
        self.removed: dict[str, Counter[str]] = {gate: Counter() for gate in GATES}
        self.quality: dict[str, Counter[str]] = {reason: Counter() for reason in QUALITY_REASONS}
        self.item_hits: Counter[str] = Counter()
        self.list_hits: Counter[str] = Counter()
        # Kept rows by (kind, split, source, app, model version, prompt version, tags, length bucket): one counter
        # update per row; its size grows with the number of distinct combinations, not with the rows.
        self.kept: Counter[tuple[str, str, str, str, str, str | None, tuple[str, ...], str]] = Counter()
        self.min_position: int | None = None
        self.max_position: int | None = None

    def contaminated(self, item_ids: Set[str]) -> None:
        self.item_hits.update(item_ids)
        self.list_hits.update({self.list_of.get(i, "") for i in item_ids})

    def keep(self, row: Prepared, split: str, length: int) -> None:
        bucket = LENGTH_BUCKETS[-1][1]
        for bound, name in LENGTH_BUCKETS:
            if length < bound:
                bucket = name
                break
        self.kept[(row.kind, split, row.source, row.app_id, row.model_version, row.prompt_version, row.tags,
                   bucket)] += 1
        if self.min_position is None or row.position < self.min_position:
            self.min_position = row.position
        if self.max_position is None or row.position > self.max_position:
            self.max_position = row.position

    def _sum(self, field: int) -> Counter[Any]:
        out: Counter[Any] = Counter()
        for key, n in self.kept.items():
            out[key[field]] += n
        return out

    def data_sources(self) -> dict[str, Any]:
        sources: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
        for key, n in self.kept.items():
            sources[key[0]][key[2]] += n
        return {
            "apps": sorted(self._sum(3)),
            "model_versions": sorted(self._sum(4)),
            "prompt_versions": sorted(v for v in self._sum(5) if v is not None),
            "positions": {"min": self.min_position, "max": self.max_position},
            "rows_by_kind": _by_kind(self._sum(0)),
            "sources_by_kind": {kind: dict(sorted(sources[kind].items())) for kind in KINDS},
        }

    def sample_processing(self) -> dict[str, Any]:
        kept = self._sum(0)
        rows_in, rows_out = sum(self.rows_in.values()), sum(kept.values())
        splits: dict[str, Counter[str]] = {split: Counter() for split in SPLITS}
        tags: Counter[str] = Counter()
        for key, n in self.kept.items():
            splits[key[1]][key[0]] += n
            for tag in set(key[6]) or {""}:
                tags[tag] += n
        lengths = self._sum(7)
        return {
            "gate_order": list(GATES),
            "rows_in": rows_in,
            "rows_in_by_kind": _by_kind(self.rows_in),
            "excluded_kinds": _by_kind(self.excluded_kinds),
            "removed": {gate: _by_kind(self.removed[gate]) for gate in GATES},
            "quality_reasons": {reason: _by_kind(self.quality[reason]) for reason in QUALITY_REASONS},
            "rows_out": rows_out,
            "rows_out_by_kind": _by_kind(kept),
            "effective_sample_rate": round(rows_out / rows_in, 6) if rows_in else 0.0,
            "splits": {split: _by_kind(splits[split]) for split in SPLITS},
            "distribution": {
                "rows": rows_out,
                "by_kind": _shares(kept, rows_out),
                "by_app": _shares(self._sum(3), rows_out),
                "by_model_version": _shares(self._sum(4), rows_out),
                # A row counts once under each of its tags ("" when it has none), so shares may sum above 1.
                "by_tag": _shares(tags, rows_out),
                "by_length": {name: {"count": lengths[name],
                                     "share": round(lengths[name] / rows_out, 6) if rows_out else 0.0}
                              for _, name in LENGTH_BUCKETS},
            },
        }

    @property
    def rows_out(self) -> int:
        return sum(self.kept.values())


class Removed(NamedTuple):
    """A row removed by the first gates (its kind left out, consent; see `Prepare`): what counts it."""

    kind: Kind
    gate: str  # EXCLUDED or CONSENT
    copy_key: bytes | None
    position: int


class Prepared(NamedTuple):
    """A row past the first gates as the later gates and the writer need it: its PII check, its texts, what dedup,
    quality, the cap and the counters read, and its line as written. A few strings, where a Row is nested dicts:
    cheap to send to the builder process, and made where the rows are read, which takes work off the builder's
    core. A tuple, as Removed and Repeat are: made and unpickled 5x faster than a frozen dataclass, once per row."""

    kind: Kind
    key: str
    position: int
    copy_key: bytes | None
    app_id: str
    model_version: str
    prompt_version: str | None
    tags: tuple[str, ...]
    source: str
    pii: bool  # whether the PII gate finds PII in any string of the body or in a tag (gates.pii_texts)
    prompt: str  # Row.prompt_text()
    answers: tuple[str, ...]  # Row.answer_texts()
    roles: tuple[Any, ...]  # Row.prompt_roles()
    label: bool | None  # Row.label(): dedup keeps a completion labelled both ways
    truncated: bool  # Row.truncated()
    line: bytes  # the record's line in its file

    @property
    def stratum(self) -> tuple[str, str, str]:
        return (self.app_id, self.model_version, self.tags[0] if self.tags else "")


class Prepare:
    """The first gates (kind, consent) on a row, and a `Prepared` of a row they leave in: pure, so it runs
    wherever the rows are read (flywheel.services.build_round runs it in the process reading them, beside the builder's)
    with the same outcome as in `build`."""

    def __init__(self, config: RoundConfig) -> None:
        self.kinds = frozenset(config.kinds)
        # One object for each of the few values rows repeat (apps, versions, rules, tags, roles): pickled once per
        # chunk instead of once per row, which took a third off pickling the 100k-event round's chunks.
        self._same: dict[Any, Any] = {}
        # Checked here, where rows are read, rather than in the builder process: it was the busier of the two.
        self._has_pii = functools.lru_cache(maxsize=_CACHE_SIZE)(redact.has_pii)

    def __call__(self, row: Row) -> Prepared | Removed:
        return self._entry(row.kind, row.key, row.position, row.copy_key, row.app_id, row.model_version,
                           row.prompt_version, row.tags, row.consent, row.source, row.lineage, row.body)

    def signal(self, kind: str, data: dict[str, Any], position: int, copy_key: bytes | None
               ) -> Prepared | Removed | None:
        """`self(row_from_signal(kind, data, position, copy_key=copy_key))`, or None where that row is None, without
        the Row in between (a frozen dataclass made and read once per record read by a round cost a tenth of
        the reading process's time)."""
        f = signal_fields(kind, data)
        if f is None:
            return None
        return self._entry(f.kind, f.key, position, copy_key, f.app_id, f.model_version, f.prompt_version, f.tags,
                           f.consent, f.source, f.lineage, f.body)

    def without_consent(self, kind: Kind, copy_key: bytes | None, position: int) -> Removed:
        """What the first gates make of a row without consent, whatever else it holds (so it need not be read)."""
        return Removed(kind, EXCLUDED if kind not in self.kinds else CONSENT, copy_key, position)

    def _entry(self, kind: Kind, key: str, position: int, copy_key: bytes | None, app_id: str, model_version: str,
               prompt_version: str | None, tags: tuple[str, ...], consent: bool, source: str,
               lineage: dict[str, Any], body: dict[str, Any]) -> Prepared | Removed:
        if not consent:
            return self.without_consent(kind, copy_key, position)
        if kind not in self.kinds:
            return Removed(kind, EXCLUDED, copy_key, position)
        if len(self._same) > _CACHE_SIZE:  # bounded, should rows not repeat them after all
            self._same.clear()
        same = self._same.setdefault
        app_id, model_version, prompt_version = same(app_id, app_id), same(model_version, model_version), \
            same(prompt_version, prompt_version)
        tags, source = same(tags, tags), same(source, source)
        messages = prompt_messages_of(kind, body)
        roles = roles_of(messages)
        record = dict(body)  # the line: the body, its source and its lineage
        record["source"] = source
        record["lineage"] = {**lineage, "id": key, "kind": kind, "app_id": app_id, "model_version": model_version,
                             "prompt_version": prompt_version, "tags": list(tags), "position": position}
        return Prepared(
            kind, key, position, copy_key, app_id, model_version, prompt_version, tags, source,
            any(map(self._has_pii, texts_of(body, tags))),
            _turns_text(messages), tuple(answer_texts_of(kind, body)), same(roles, roles), label_of(kind, body),
            truncated_of(lineage), orjson.dumps(record, option=_JSON | orjson.OPT_APPEND_NEWLINE))


# What `build` takes: a row, or what stands for one.
Entry = Row | Repeat | Prepared | Removed


def content_hash(files: dict[str, str], *, config_version: str, watermark: int, quarantine_version: str) -> str:
    """sha256 over the sorted (path, file sha256) list, the config version, the watermark and the quarantine
    list version."""
    canonical = {"files": sorted([path, digest] for path, digest in files.items()), "config_version": config_version,
                 "watermark": watermark, "quarantine_version": quarantine_version}
    return hashlib.sha256(orjson.dumps(canonical, option=_JSON)).hexdigest()


class _Gates:
    """The gates of one build in their order, with their state: dedup digests and the distribution cap."""

    def __init__(self, config: RoundConfig, index: QuarantineIndex, stats: _Stats) -> None:
        self.config = config
        self.index = index
        self.stats = stats
        self.cap = DistributionCap(config.stratum_cap_share, config.cap_warmup)
        self.splitter = Splitter(config)
        # One 16-byte digest per distinct row that got past contamination: the only state that grows with rows.
        self.seen: dict[str, set[bytes]] = {kind: set() for kind in KINDS}
        # What the gates up to dedup made of each row that has exact copies later (Row.copy_key): the gate that
        # removed it, the quarantine items it holds, or DEDUP (it got past them, so dedup removes its copies).
        self.copies: dict[bytes, str | frozenset[str]] = {}
        self.kinds = frozenset(config.kinds)
        self._reading = functools.lru_cache(maxsize=_CACHE_SIZE)(self._read)

    def _remove(self, gate: str, kind: str) -> None:
        """Count a row removed by `gate`; the caller returns None (no split)."""
        self.stats.removed[gate][kind] += 1

    def removed(self, row: Removed) -> None:
        """Count a row the first gates removed (`Prepare`)."""
        kind = row.kind
        self.stats.rows_in[kind] += 1
        if row.gate == EXCLUDED:
            self.stats.excluded_kinds[kind] += 1
            return
        self._remove(row.gate, kind)
        if row.copy_key is not None:
            self.copies[row.copy_key] = row.gate

    def split(self, row: Prepared) -> str | None:
        """The split a row past the first gates goes to, or None when a later gate removed it (counted under
        that gate)."""
        kind = row.kind
        self.stats.rows_in[kind] += 1
        copy_key = row.copy_key
        if row.pii:
            self._remove(PII, kind)
            if copy_key is not None:
                self.copies[copy_key] = PII
            return None
        prompt, answers = row.prompt, row.answers
        normalised_prompt, hit_ids = self._reading(prompt)
        normalised = []
        for answer in answers:
            text, hits = self._reading(answer)
            normalised.append(text)
            hit_ids |= hits
        if hit_ids:
            self.stats.contaminated(hit_ids)
            self._remove(CONTAMINATION, kind)
            if copy_key is not None:
                self.copies[copy_key] = hit_ids
            return None
        if copy_key is not None:
            self.copies[copy_key] = DEDUP
        return self._rest(row, prompt, answers, normalised_prompt, normalised)

    def repeat(self, row: Repeat) -> None:
        """Count an exact copy of an earlier row as the gates would: removed where that row was, by dedup
        when that row got past contamination (its digest is the copy's)."""
        kind = row.kind
        self.stats.rows_in[kind] += 1
        if kind not in self.kinds:
            self.stats.excluded_kinds[kind] += 1
            return
        outcome = self.copies.get(row.copy_key)
        if outcome is None:
            raise ValueError(f"a repeat at position {row.position} of a row not seen before")
        if isinstance(outcome, frozenset):
            self.stats.contaminated(outcome)
            self._remove(CONTAMINATION, kind)
        else:
            self._remove(outcome, kind)

    def _read(self, text: str) -> tuple[str, frozenset[str]]:
        """A text as dedup and splits see it (`normalise`d) and the quarantine items in it; frozen, as it is
        cached."""
        tokens = words(text)
        return " ".join(tokens), frozenset(self.index.hits_words(tokens))

    def _rest(self, row: Prepared, prompt: str, answers: tuple[str, ...], normalised_prompt: str,
              normalised: list[str]) -> str | None:
        kind = row.kind
        digest = _digest(kind, row.roles, row.label, normalised_prompt, normalised)
        seen = self.seen[kind]
        if digest in seen:
            self._remove(DEDUP, kind)
            return None
        seen.add(digest)
        reason = _quality(kind, row.truncated, self.config, prompt, answers, normalised)
        if reason is not None:
            self.stats.quality[reason][kind] += 1
            self._remove(QUALITY, kind)
            return None
        if not self.cap.admit(kind, row.stratum):
            self._remove(DISTRIBUTION_CAP, kind)
            return None
        split = self.splitter(normalised_prompt)
        self.stats.keep(row, split, len(prompt) + sum(len(a) for a in answers))
        return split


def build(rows: Iterable[Entry], config: RoundConfig, quarantine: QuarantineList, out_dir: Path, *,
          watermark: int, parent: str | None, round_number: int) -> RoundResult:
    """Cut a round: run every row through the gates (consent, PII, contamination, dedup, quality, distribution
    cap; see flywheel.domain.rounds.gates), write the kept ones to `out_dir/{train,calibration,audit}/{sft,dpo,kto,
    groups}.jsonl` (all twelve files, empty ones too) and `out_dir/manifest.json`.

    A pure function of (rows in the order given, config, quarantine list, watermark, parent, round number):
    the same inputs give byte-identical files and the same content hash. A `Repeat` stands for an exact copy
    of the earlier row with its copy key, and counts as that copy would; a `Prepared` or `Removed` is what
    `Prepare(config)` made of a row, and counts as that row would. Rows are streamed: memory holds
    counters and one 16-byte dedup digest per distinct row past contamination, never rows or files. Existing
    files of the same names are overwritten; a failed build leaves partial files, so build into a fresh
    directory and publish it once this returns. Raises ValueError for a row newer than the watermark.
    """
    if watermark < 0 or round_number < 0:
        raise ValueError("watermark and round_number must be >= 0")
    index = QuarantineIndex.for_config(quarantine, config)
    stats = _Stats(quarantine)
    gates = _Gates(config, index, stats)
    prepare = Prepare(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _Writer(out_dir) as writer:
        for row in rows:
            if row.position > watermark:
                name = row.key if isinstance(row, Row | Prepared) else "(a repeat)"
                raise ValueError(f"row {name!r} at position {row.position} is newer than watermark {watermark}")
            if isinstance(row, Row):
                row = prepare(row)
            if isinstance(row, Prepared):
                split = gates.split(row)
                if split is not None:
                    writer.write(split, row.kind, row.line)
            elif isinstance(row, Repeat):
                gates.repeat(row)
            else:
                gates.removed(row)
    manifest = _manifest(config, quarantine, index, stats, writer.manifest(), watermark=watermark, parent=parent,
                         round_number=round_number)
    manifest_path = out_dir / MANIFEST
    manifest_path.write_bytes(orjson.dumps(manifest, option=_JSON | orjson.OPT_INDENT_2) + b"\n")
    return RoundResult(round_number=round_number, content_hash=manifest["content_hash"],
                       files={path: entry["sha256"] for path, entry in manifest["files"].items()},
                       rows_in=sum(stats.rows_in.values()), rows_out=stats.rows_out, manifest=manifest,
                       manifest_path=manifest_path)


def _manifest(config: RoundConfig, quarantine: QuarantineList, index: QuarantineIndex, stats: _Stats,
              files_manifest: dict[str, dict[str, Any]], *, watermark: int, parent: str | None,
              round_number: int) -> dict[str, Any]:
    files = {path: entry["sha256"] for path, entry in files_manifest.items()}
    config_version = config.version()
    return {
        "round": round_number,
        "parent": parent,
        "watermark": watermark,
        "builder_version": BUILDER_VERSION,
        "config": config.as_dict(),
        "config_version": config_version,
        "files": files_manifest,
        "content_hash": content_hash(files, config_version=config_version, watermark=watermark,
                                     quarantine_version=quarantine.version),
        "data_sources": stats.data_sources(),
        "sample_processing": stats.sample_processing(),
        "training_consumption": [],
        "evaluation_isolation": {
            "quarantine_version": quarantine.version,
            "quarantine_digest": quarantine.digest(),
            "items": len(quarantine.items),
            "indexed_texts": index.indexed_texts,
            "method": {"ngram": config.ngram, "min_item_words": config.min_item_words,
                       "shingle_words": config.shingle_words, "minhash_threshold": config.minhash_threshold,
                       "num_perm": config.num_perm},
            "contaminated_rows": _by_kind(stats.removed[CONTAMINATION]),
            "hits": dict(sorted(stats.item_hits.items())),
            "hits_by_list": dict(sorted(stats.list_hits.items())),
        },
    }
