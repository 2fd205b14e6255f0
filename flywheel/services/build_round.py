"""BuildRound: cut the log at a watermark into a round directory and publish it atomically.

The rows come from one consistent snapshot (RoundSnapshot.rows) through the first gates into the round builder
(flywheel.domain.rounds.build, which the RoundBuilder runs in a process of its own). The files are written into
a staging directory; the round becomes visible by its publication (RoundFiles.publish) inside the unit of work
that records RoundPublished, so a crash at any point leaves no round that the log does not know. Leftovers of a
crashed build are removed by the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from flywheel.domain.commands import BuildRound
from flywheel.domain.events import RoundPublished
from flywheel.domain.rounds import (
    Entry,
    Kind,
    Prepare,
    Repeat,
    RoundResult,
    report_html,
    row_from_signal,
    rows_from_group,
)
from flywheel.domain.rounds.files import MANIFEST
from flywheel.domain.rounds.manifest import with_scorer_audits
from flywheel.domain.rounds.promotion import (
    HELD,
    GateVerdict,
    agreement_gates,
    failing_slices,
    round_gates,
    state_of,
)
from flywheel.domain.rounds.rollback import in_slice
from flywheel.domain.rounds.semantic import GAP_ADVICE, SemanticGap, SemanticHits, quarantine_texts, text_key
from flywheel.ports import (
    Announcer,
    BuilderBusy,
    Embedder,
    Erasures,
    Progress,
    Quarantine,
    RoundBuilder,
    RoundFiles,
    RoundSnapshot,
    RoundSource,
    RoundState,
    SourceRow,
    TextEmbeddings,
)
from flywheel.services.semantic import embed_missing, semantic_step, texts_of

__all__ = ["BuilderBusy", "Published", "build_round"]

_CHUNK = 500
_KIND: dict[str, Kind] = {"pair": "dpo", "kto": "kto", "sft": "sft"}
_ERASED_KIND = {**_KIND, "group": "groups"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Published:
    round: int
    path: Path
    content_hash: str
    watermark: int
    rows_in: int
    rows_out: int
    sliced_out: int  # rows left out because a rollback quarantined their slice
    state: str = "promoted"  # or held: `current` did not move
    promotion: list[dict[str, Any]] = field(default_factory=list)  # each gate's name, value, limit, verdict
    held_because: list[str] = field(default_factory=list)
    removed: dict[str, int] = field(default_factory=dict)  # rows each gate took out, all kinds together
    semantic_seconds: float | None = None  # the semantic check's step (embedding what was missing, comparing)
    erasure_version: str = ""  # the erasure list it was cut under


async def _rows(source: AsyncIterator[list[SourceRow]], slices: list[dict[str, Any]], sliced: list[int],
                prepare: Prepare, poor: frozenset[tuple[str, str]] = frozenset(),
                disagreed: Counter[tuple[str, str]] | None = None, erasures: Erasures | None = None,
                erased: Counter[str] | None = None, progress: Progress | None = None) -> AsyncIterator[list[Entry]]:
    """The rows of `source` in chunks, through the first gates (`prepare`): what the builder process gets. Human
    feedback rows (signal records) of an (app, model version) slice in `poor` are left out and counted in
    `disagreed`: its raters do not agree enough to train on. Rows the erasure list excludes (a withdrawn user's)
    are left out and counted in `erased` by kind."""
    chunk: list[Entry] = []
    no_row: set[bytes] = set()  # copy keys of records that make no row (an undecided pair)
    excluding = erasures is not None and bool(erasures.events or erasures.prompt_keys)
    async for batch in source:
        if progress:
            progress(len(batch))
        for row in batch:
            if excluding and row.data is not None and erasures is not None and erasures.excludes(row.kind, row.data):
                if erased is not None:
                    erased[row.kind] += 1
                continue
            if not row.consent:  # unread (only without slices: RoundSnapshot.rows)
                chunk.append(prepare.without_consent(_KIND[row.kind], row.copy_key, row.position))
                continue
            if row.data is None:  # an exact copy of an earlier record (only without slices: RoundSnapshot.rows)
                if row.copy_key is None:
                    raise ValueError("a signal row without its data and without a copy key")
                if row.copy_key not in no_row:
                    chunk.append(Repeat(_KIND[row.kind], row.copy_key, row.position))
                continue
            if poor and row.kind in _KIND and (
                    found := (row.data.get("app_id"), row.data.get("model_version"))) in poor:
                if disagreed is not None:
                    disagreed[found] += 1
                continue
            if row.kind in _KIND and not slices:  # the common case: straight to a Prepared
                entry = prepare.signal(_KIND[row.kind], row.data, row.position, row.copy_key)
                if entry is not None:
                    chunk.append(entry)
                elif row.copy_key is not None:
                    no_row.add(row.copy_key)
                continue
            converted = ([r] if (r := row_from_signal(_KIND[row.kind], row.data, row.position,
                                                      copy_key=row.copy_key)) else []) \
                if row.kind in _KIND else rows_from_group(row.data, row.position)
            if not converted and row.copy_key is not None:
                no_row.add(row.copy_key)
            for c in converted:
                if slices and in_slice(row.occurred_at, c.app_id, c.model_version, c.prompt_version, slices):
                    sliced[0] += 1
                else:
                    chunk.append(prepare(c))
        if len(chunk) >= _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def _then(chunks: AsyncIterator[list[Entry]], read: Callable[[], None]) -> AsyncIterator[list[Entry]]:
    """`chunks`, calling `read` after the last (build_in_process reads them once the builder has started)."""
    async for chunk in chunks:
        yield chunk
    read()


async def _cut(
    snapshot: RoundSnapshot, builder: RoundBuilder, staged: Path, command: BuildRound, quarantine: Quarantine, *,
    watermark: int, parent: RoundState | None, number: int, announce: Announcer | None,
    poor: frozenset[tuple[str, str]], disagreed: Counter[tuple[str, str]], erased: Counter[str],
    semantic: SemanticHits | None, progress: Progress | None,
) -> tuple[RoundResult, dict[str, Any], int]:
    """The round's files under `staged`, its report's figures and the rows left out by rollback slices, all from
    one snapshot."""
    sliced = [0]
    slices = quarantine.slices
    erasures = quarantine.erasures
    # Exact copies come unread unless a rollback slice, a low-agreement slice or the erasure list may leave out the
    # row they copy.
    copies = not slices and not poor and not erasures.events and not erasures.prompt_keys
    chunks = _rows(snapshot.rows(watermark, command.signals, copies=copies), slices,
                   sliced, Prepare(command.config), poor, disagreed, erasures, erased, progress)
    # The report's aggregates run in this snapshot once every row is read, while the builder process works
    # through the last of them and this one would wait; so does the announcer's getting ready.
    report: asyncio.Task[dict[str, Any]] | None = None

    def read() -> None:
        nonlocal report
        report = asyncio.ensure_future(snapshot.report(watermark))
        if (prepare := getattr(announce, "prepare", None)) is not None:
            prepare()

    try:
        result = await builder(_then(chunks, read), command.config, quarantine.items, staged, watermark=watermark,
                               parent=None if parent is None else str(parent.number), round_number=number,
                               **({} if semantic is None else {"semantic": semantic}))
    except BaseException:
        if report is not None:
            report.cancel()
            with contextlib.suppress(BaseException):
                await report
        raise
    audits = await (report or snapshot.report(watermark))
    return result, audits, sliced[0]


async def _cut_checked(
    snapshot: RoundSnapshot, builder: RoundBuilder, files: RoundFiles, command: BuildRound, quarantine: Quarantine, *,
    watermark: int, parent: RoundState | None, number: int, announce: Announcer | None,
    poor: frozenset[tuple[str, str]], disagreed: Counter[tuple[str, str]], erased: Counter[str],
    embeddings: TextEmbeddings | None, embedder: Embedder | None, semantic_seconds: list[float],
    progress: Progress | None,
) -> tuple[Path, RoundResult, dict[str, Any], int]:
    """`_cut` with the semantic check when the config asks for it: the kept embeddings are compared with the
    quarantine items first (its time added to `semantic_seconds`). A cut that meets texts without a kept embedding
    is thrown away: with an embedder they are embedded and kept, and the round is cut again; without one the build
    stops (SemanticGap). The staging directory of the cut that counts is returned."""
    config = command.config
    semantic: SemanticHits | None = None
    if config.semantic:
        if embeddings is None:
            raise ValueError("the round config asks for the semantic check, and no embedding store is wired")
        started = time.perf_counter()
        semantic = await semantic_step(quarantine.items, config, embeddings, embedder)
        semantic_seconds[0] += time.perf_counter() - started
    while True:
        staged = files.staging(number)
        disagreed.clear()
        erased.clear()
        try:
            result, audits, sliced_out = await _cut(snapshot, builder, staged, command, quarantine,
                                                    watermark=watermark, parent=parent, number=number,
                                                    announce=announce, poor=poor, disagreed=disagreed,
                                                    erased=erased, semantic=semantic, progress=progress)
        except BaseException:
            files.discard(number, staged)
            raise
        if not result.unembedded_count:
            return staged, result, audits, sliced_out
        files.discard(number, staged)
        if embedder is None or embeddings is None:
            raise SemanticGap(f"{result.unembedded_count} texts of the round have no embedding under "
                              f"{config.semantic_model}, so the semantic check cannot clear them: {GAP_ADVICE}")
        started = time.perf_counter()
        await embed_missing(result.unembedded, embeddings, embedder)
        semantic = await semantic_step(quarantine.items, config, embeddings, None)
        semantic_seconds[0] += time.perf_counter() - started


async def embed_round_texts(source: RoundSource, embeddings: TextEmbeddings, embedder: Embedder,
                            command: BuildRound) -> int:
    """Embed and keep every text a round cut where the signals read model stands would check, and the quarantine
    items' (`flywheel rounds embed`): a build after it compares only. How many texts were embedded."""
    async with source.snapshot() as snapshot:
        watermark = await snapshot.signals_checkpoint()
        quarantine = await snapshot.quarantine()
        texts = await texts_of(_rows(snapshot.rows(watermark, command.signals, copies=True), [], [0],
                                     Prepare(command.config)))
    items = {text_key(t): t for *_, t in quarantine_texts(quarantine.items, command.config.min_item_words)}
    return await embed_missing({**items, **texts}, embeddings, embedder)


async def build_round(command: BuildRound, *, source: RoundSource, builder: RoundBuilder, files: RoundFiles,
                      announce: Announcer | None = None, progress: Progress | None = None,
                      embeddings: TextEmbeddings | None = None, embedder: Embedder | None = None) -> Published:
    """Build and publish the next round from the log up to the command's watermark; `progress` is told of the
    log's rows as they are read.

    Without a watermark, the signals read model is first brought up to the head of the log (the workers'
    projector normally has it there already) and the round is cut where it stands: its rows are then read,
    not derived again.

    With the config's semantic check on, the kept embeddings (`embeddings`) are compared with the quarantine
    items before the cut (flywheel.services.semantic). Texts the cut finds without one are embedded (with an
    `embedder`) and the round is cut again; without an embedder they stop the build (SemanticGap, a ValueError)."""
    if command.watermark is None:
        await source.derive_signals()
    number: int | None = None
    staged: Path | None = None
    async with source.exclusive():
        try:
            # The rows come from one snapshot; the round is published afterwards in a unit of work that sees every
            # commit (ingest and other writers append meanwhile). The lock is held across both, so no other build
            # or on-call change comes between.
            async with source.snapshot() as snapshot:
                newest = await snapshot.head()
                derived = await snapshot.signals_checkpoint()  # how far the signals read model is (this snapshot's)
                watermark = derived if command.watermark is None else command.watermark
                if not 0 < watermark <= newest:
                    raise ValueError(f"watermark {watermark} is outside the log (1..{newest})")
                number = await snapshot.next_number()
                parent = await snapshot.current()
                quarantine = await snapshot.quarantine()
                # Rater agreement is judged before any row is read: a slice that fails it is not trained on.
                agreement = agreement_gates(await snapshot.judgements(watermark), command.config.promotion,
                                            config_version=command.config.version())
                disagreed: Counter[tuple[str, str]] = Counter()
                erased: Counter[str] = Counter()
                semantic_took = [0.0]
                staged, result, audits, sliced_out = await _cut_checked(
                    snapshot, builder, files, command, quarantine, watermark=watermark, parent=parent,
                    number=number, announce=announce, poor=failing_slices(agreement), disagreed=disagreed,
                    erased=erased, embeddings=embeddings, embedder=embedder, semantic_seconds=semantic_took,
                    progress=progress)
                semantic_seconds = round(semantic_took[0], 3) if command.config.semantic else None
            if derived != watermark:  # an older watermark: the round's rows were derived anew, the audits' not
                audits["signals_checkpoint"] = derived
            manifest, audits = with_scorer_audits(result.manifest, audits)
            gates = _gates(agreement, disagreed, manifest, audits, command, parent)
            verdict = state_of(gates)
            promotion = [g.as_dict() for g in gates]
            manifest["promotion"] = {"state": verdict, "gates": promotion,
                                     "left_out_for_agreement": sum(disagreed.values())}
            e = quarantine.erasures
            erasure = {"version": e.version, "erased_users": e.erased_users, "withdrawn_users": e.withdrawn_users,
                       "rows_removed": {_ERASED_KIND.get(k, k): n for k, n in sorted(erased.items())}}
            manifest["erasures"] = erasure
            (staged / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)
                                            + b"\n")
            (staged / "report.html").write_text(report_html(manifest, audits))
            sources, processing = result.manifest["data_sources"], result.manifest["sample_processing"]
            summary = {"rows": sources["rows_by_kind"], "splits": processing["splits"],
                       "removed": processing["removed"], "apps": sources["apps"],
                       "model_versions": sources["model_versions"], "rows_in": result.rows_in,
                       "rows_out": result.rows_out, "sliced_out": sliced_out,
                       "left_out_for_agreement": sum(disagreed.values()),
                       "erasures": erasure,
                       "sources": sources["sources_by_kind"],
                       "by_app": _counts(processing["distribution"]["by_app"]),
                       "by_model_version": _counts(processing["distribution"]["by_model_version"]),
                       "files": {k: result.files[k] for k in sorted(result.files)}}
            final = files.location(number)
            held_because = [f"gate {g.name} failed: {g.value} against {g.limit}"
                            for g in gates if g.blocking and not g.passed]
            async with source.publication() as log:
                # A rollback that landed while this build ran: the round was cut from a log that still trusted
                # what on-call has just taken out of use, so it waits for someone to look at it.
                late = await log.rolled_back_since(newest)
                held_because += [f"round {n} was rolled back while this build ran" for n in late]
                state = HELD if held_because else verdict
                await log.record([RoundPublished(
                    round=number, path=str(final.resolve()), content_hash=result.content_hash, watermark=watermark,
                    parent=None if parent is None else parent.number, quarantine_version=quarantine.version,
                    config_version=command.config.version(), summary=summary, state=state, promotion=promotion,
                    held_because=held_because, by=command.by)])
                files.publish(staged, number)  # visible from here on; the commit (leaving this block) makes it official
        except BaseException:
            if number is not None:
                files.discard(number, staged)
            raise
        if state != HELD:
            # After the commit, under the rounds lock again, from what is committed: a rollback of this very round
            # may have landed since, and its own swap may have run first.
            async with source.publication() as log:
                now = await log.current()
                files.point_current(None if now is None else now.number)
    if announce:
        announce({"type": "round_published", "round": number, "path": str(final.resolve()),
                  "content_hash": result.content_hash, "watermark": watermark, "state": state,
                  "promotion": promotion, "held_because": held_because, "by": command.by})
    return Published(round=number, path=final, content_hash=result.content_hash, watermark=watermark,
                     rows_in=result.rows_in, rows_out=result.rows_out, sliced_out=sliced_out, state=state,
                     promotion=promotion, held_because=held_because, semantic_seconds=semantic_seconds,
                     removed={gate: sum(by_kind.values()) for gate, by_kind in summary["removed"].items()},
                     erasure_version=e.version)


def _counts(shares: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {value: int(entry["count"]) for value, entry in shares.items()}


def _gates(agreement: list[GateVerdict], disagreed: Counter[tuple[str, str]], manifest: dict[str, Any],
           audits: dict[str, Any], command: BuildRound, parent: RoundState | None) -> list[GateVerdict]:
    """Every promotion gate's verdict: agreement (each failing gate with the rows its (app, model version) slice
    lost, whichever of its feedback kinds failed) and the round's own."""
    counted = [replace(g, detail={**g.detail, "rows_left_out": disagreed[(g.detail["app_id"],
                                                                          g.detail["model_version"])]})
               if g.status == "fail" else g for g in agreement]
    return [*counted, *round_gates(manifest, audits, command.config.promotion,
                                   parent_rows=None if parent is None else parent.summary.get("rows"),
                                   parent_sources=None if parent is None else parent.summary.get("sources"))]
