"""The round cut: stream rows through the gates into split files, hashing as it writes, then the manifest."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from flywheel.domain.rounds.config import RoundConfig
from flywheel.domain.rounds.entries import Entry, Prepared, Repeat
from flywheel.domain.rounds.files import MANIFEST, SplitFiles
from flywheel.domain.rounds.gates import Gates
from flywheel.domain.rounds.manifest import round_manifest
from flywheel.domain.rounds.prepare import CACHE_SIZE as _CACHE_SIZE
from flywheel.domain.rounds.prepare import Prepare
from flywheel.domain.rounds.quarantine import QuarantineIndex, QuarantineList
from flywheel.domain.rounds.rows import Row
from flywheel.domain.rounds.semantic import SemanticHits
from flywheel.domain.rounds.tally import Tally


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
    # The semantic check's texts without a kept embedding (normalised, by key; at most UNEMBEDDED_KEPT) and how many
    # there were: a round cut with any is not to be published.
    unembedded: dict[bytes, str] = field(default_factory=dict)
    unembedded_count: int = 0


def build(rows: Iterable[Entry], config: RoundConfig, quarantine: QuarantineList, out_dir: Path, *,
          watermark: int, parent: str | None, round_number: int, semantic: SemanticHits | None = None
          ) -> RoundResult:
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

    With `semantic` (the config's semantic check on), the contamination gate also removes a row whose prompt or
    answer paraphrases a quarantine item (`semantic.matches`, compared before the build); a text with no kept
    embedding is handed back (RoundResult.unembedded): the caller must not publish such a round.
    """
    if config.semantic and semantic is None:
        raise ValueError("the config asks for the semantic check: pass its hits (flywheel.domain.rounds.semantic)")
    if watermark < 0 or round_number < 0:
        raise ValueError("watermark and round_number must be >= 0")
    index = QuarantineIndex.for_config(quarantine, config)
    tally = Tally(quarantine)
    gates = Gates(config, index, tally, cache_size=_CACHE_SIZE, semantic=semantic if config.semantic else None)
    prepare = Prepare(config, cache_size=_CACHE_SIZE)
    out_dir.mkdir(parents=True, exist_ok=True)
    with SplitFiles(out_dir) as files:
        for row in rows:
            if row.position > watermark:
                name = row.key if isinstance(row, Row | Prepared) else "(a repeat)"
                raise ValueError(f"row {name!r} at position {row.position} is newer than watermark {watermark}")
            if isinstance(row, Row):
                row = prepare(row)
            if isinstance(row, Prepared):
                split = gates.split(row)
                if split is not None:
                    files.write(split, row.kind, row.line)
            elif isinstance(row, Repeat):
                gates.repeat(row)
            else:
                gates.removed(row)
    manifest = round_manifest(config, quarantine, index, tally, files.manifest(), watermark=watermark,
                              parent=parent, round_number=round_number,
                              semantic=semantic if config.semantic else None)
    manifest_path = out_dir / MANIFEST
    manifest_path.write_bytes(orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n")
    return RoundResult(round_number=round_number, content_hash=manifest["content_hash"],
                       files={path: entry["sha256"] for path, entry in manifest["files"].items()},
                       rows_in=sum(tally.rows_in.values()), rows_out=tally.rows_out, manifest=manifest,
                       manifest_path=manifest_path, unembedded=gates.unembedded,
                       unembedded_count=gates.unembedded_count)
