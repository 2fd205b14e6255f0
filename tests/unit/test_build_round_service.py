"""Building and publishing a round (flywheel.services.build_round), in memory with the builder in this process."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from flywheel.domain.commands import BuildRound, PromoteRound, RollBackRound
from flywheel.domain.events import RoundPublished
from flywheel.domain.log import NewEvent
from flywheel.domain.quality import Judgement
from flywheel.domain.rounds import MANIFEST, Entry, QuarantineList, RoundConfig, RoundResult, build
from flywheel.domain.rounds.promotion import PromotionConfig
from flywheel.domain.rounds.semantic import SemanticHits
from flywheel.domain.signals import SFTSample
from flywheel.ports import BuilderBusy, SourceRow
from flywheel.services.build_round import Published, build_round
from flywheel.services.rollback import promote, rollback
from store.memory import MemoryEventStore, MemoryRounds, MemoryRoundSource
from store.roundfiles import RoundDirectories
from tests.factories import interaction

AT = datetime(2026, 11, 23, 10, tzinfo=UTC)


def sft(n: int, *, app: str = "support") -> SourceRow:
    """A training sample derived from the event at position `n`."""
    sample = SFTSample(
        sample_id=f"s{n}", rule="edit_sft", rule_version=1,
        messages=({"role": "user", "content": f"How do I change the billing address on invoice number {n}?"},
                  {"role": "assistant", "content": f"Open billing, pick invoice {n}, then edit the address."}),
        interaction_id=f"i{n}", source_event_ids=(f"e{n}",), app_id=app, model_version="m-1", prompt_version="p-1",
        tags=("billing",), confidence=0.9, disagreement=False, consent=True, user_id_hash="u")
    return SourceRow("sft", orjson.loads(orjson.dumps(sample)), n, AT)


class InProcess:
    """The RoundBuilder port: flywheel.domain.rounds.build in this process; remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []

    async def __call__(self, chunks: AsyncIterator[list[Entry]], config: RoundConfig, quarantine: QuarantineList,
                       out: Path, *, watermark: int, parent: str | None, round_number: int,
                       semantic: SemanticHits | None = None) -> RoundResult:
        rows = [e async for chunk in chunks for e in chunk]
        self.asked.append({"watermark": watermark, "parent": parent, "round": round_number, "rows": len(rows),
                           "quarantine": quarantine.version})
        return build(iter(rows), config, quarantine, out, watermark=watermark, parent=parent,
                     round_number=round_number, semantic=semantic)


class Broken(InProcess):
    """Writes part of the round, then fails."""

    async def __call__(self, chunks: AsyncIterator[list[Entry]], config: RoundConfig, quarantine: QuarantineList,
                       out: Path, *, watermark: int, parent: str | None, round_number: int) -> RoundResult:
        out.mkdir(parents=True)
        (out / "partial.jsonl").write_text("{}\n")
        raise RuntimeError("the builder died")


class Said:
    """An announcer that remembers what it announced and that it was told to get ready."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.ready = 0

    def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    def prepare(self) -> None:
        self.ready += 1


class Builds:
    """A log in memory with `events` interactions in it, rows for each, round directories under `root`."""

    def __init__(self, root: Path, events: int = 3) -> None:
        self.store = MemoryEventStore()
        self.source = MemoryRoundSource(self.store, [sft(n) for n in range(1, events + 1)])
        self.files = RoundDirectories(root)
        self.root = root
        self.builder = InProcess()
        self.said = Said()
        self.events = events

    async def start(self) -> None:
        await self.store.append([NewEvent.of(interaction(f"i{n}")) for n in range(1, self.events + 1)])

    async def build(self, command: BuildRound | None = None, builder: InProcess | None = None) -> Published:
        return await build_round(command or BuildRound(), source=self.source, builder=builder or self.builder,
                                 files=self.files, announce=self.said)

    def published(self) -> list[dict[str, Any]]:
        return [e.data["payload"] for e in self.store.events if e.type == RoundPublished.TYPE]

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()) if self.root.exists() else []


def run(tmp_path: Path, scenario: Callable[[Builds], Awaitable[None]], events: int = 3) -> Builds:
    builds = Builds(tmp_path / "rounds", events)

    async def go() -> None:
        await builds.start()
        await scenario(builds)

    asyncio.run(go())
    return builds


def test_a_build_publishes_the_round_cut_where_the_signals_are(tmp_path: Path) -> None:
    async def scenario(b: Builds) -> None:
        done = await b.build()
        assert (done.round, done.watermark, done.rows_in, done.sliced_out) == (1, 3, 3, 0)
        assert done.rows_out == 3 and done.path == b.files.location(1)
        [event] = [e for e in b.store.events if e.type == RoundPublished.TYPE]
        assert event.position == 4
        payload = event.data["payload"]
        assert payload["round"] == 1 and payload["watermark"] == 3 and payload["parent"] is None
        assert payload["content_hash"] == done.content_hash and payload["path"] == str(done.path.resolve())
        assert payload["quarantine_version"] == b.store.model.quarantine().version
        assert payload["config_version"] == RoundConfig().version()
        assert payload["summary"]["rows_in"] == 3 and payload["summary"]["rows"]["sft"] == 3
        current = b.store.model.current()
        assert current is not None and current.number == 1

    b = run(tmp_path, scenario)
    manifest = orjson.loads((b.files.location(1) / MANIFEST).read_bytes())
    assert (manifest["round"], manifest["watermark"], manifest["parent"]) == (1, 3, None)
    assert (b.files.location(1) / "report.html").exists()
    assert b.leftovers() == ["current", "round-0001"] and os.readlink(b.root / "current") == "round-0001"
    [said] = b.said.messages
    assert {k: said[k] for k in ("type", "round", "path", "content_hash", "watermark", "state")} == {
        "type": "round_published", "round": 1, "path": str(b.files.location(1).resolve()),
        "content_hash": manifest["content_hash"], "watermark": 3, "state": "promoted"}
    assert said["promotion"] == manifest["promotion"]["gates"] and manifest["promotion"]["state"] == "promoted"
    assert b.said.ready == 1


def test_the_next_round_names_its_parent_and_an_older_watermark_cuts_the_same_rows(tmp_path: Path) -> None:
    async def scenario(b: Builds) -> None:
        first = await b.build(BuildRound(watermark=2))
        await b.store.append([NewEvent.of(interaction("i5"))])  # after round 1's publication
        b.source.rows.append(sft(5))
        second = await b.build()
        again = await b.build(BuildRound(watermark=2))
        assert [(p.round, p.watermark, p.rows_in) for p in (first, second, again)] == [(1, 2, 2), (2, 5, 4), (3, 2, 2)]
        assert again.content_hash == first.content_hash != second.content_hash
        assert [(p["round"], p["parent"], p["watermark"]) for p in b.published()] == [(1, None, 2), (2, 1, 5),
                                                                                      (3, 2, 2)]

    b = run(tmp_path, scenario)
    assert [(a["round"], a["parent"]) for a in b.builder.asked] == [(1, None), (2, "1"), (3, "2")]
    assert os.readlink(b.root / "current") == "round-0003"


def test_a_watermark_outside_the_log_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    async def scenario(b: Builds) -> None:
        for watermark in (0, 4):
            with pytest.raises(ValueError, match="outside the log"):
                await b.build(BuildRound(watermark=watermark))
        assert await b.store.head() == 3 and not b.store.rounds_lock.locked()

    b = run(tmp_path, scenario)
    assert b.leftovers() == [] and b.builder.asked == [] and b.said.messages == []


def test_a_failed_build_leaves_no_staged_directory_and_nothing_in_the_log(tmp_path: Path) -> None:
    async def scenario(b: Builds) -> None:
        with pytest.raises(RuntimeError, match="builder died"):
            await b.build(builder=Broken())
        assert b.leftovers() == [] and await b.store.head() == 3 and b.store.model.rounds == {}
        assert (await b.build()).round == 1  # the lock is free again and the number was not used up

    b = run(tmp_path, scenario)
    assert b.leftovers() == ["current", "round-0001"] and len(b.said.messages) == 1


def test_a_failed_publication_takes_the_round_out_of_the_log_and_off_the_disk(tmp_path: Path) -> None:
    class FullDisk(RoundDirectories):
        def publish(self, staged: Path, number: int) -> None:
            super().publish(staged, number)
            raise OSError("no space left on device")

    async def scenario(b: Builds) -> None:
        b.files = FullDisk(b.root)
        with pytest.raises(OSError, match="no space"):
            await b.build()
        assert await b.store.head() == 3 and b.published() == [] and b.store.model.current() is None

    b = run(tmp_path, scenario)
    assert b.leftovers() == [] and b.said.messages == []


def test_a_build_while_another_builds_is_busy_and_touches_nothing(tmp_path: Path) -> None:
    async def scenario(b: Builds) -> None:
        async with MemoryRoundSource(b.store).exclusive():  # another build
            with pytest.raises(BuilderBusy):
                await b.build()
        assert await b.store.head() == 3

    b = run(tmp_path, scenario)
    assert b.leftovers() == [] and b.builder.asked == [] and b.said.messages == []


def test_rows_in_a_rolled_back_slice_are_left_out_of_later_rounds(tmp_path: Path) -> None:
    async def scenario(b: Builds) -> None:
        b.source.rows = [sft(1), sft(2, app="sales"), sft(3)]
        first = await b.build()
        await rollback(RollBackRound(round=1, reason="support leaked", quarantine={"app_id": "support"}),
                       rounds=MemoryRounds(b.store), files=b.files, announce=b.said)
        second = await b.build(BuildRound(watermark=3))
        assert (first.rows_in, first.sliced_out) == (3, 0)
        assert (second.rows_in, second.sliced_out, second.rows_out) == (1, 2, 1)
        sliced = b.store.model.quarantine()
        assert [(p["parent"], p["quarantine_version"]) for p in b.published()] == [
            (None, b.builder.asked[0]["quarantine"]), (None, sliced.version)]
        assert sliced.version != b.builder.asked[0]["quarantine"]

    b = run(tmp_path, scenario)
    assert os.readlink(b.root / "current") == "round-0002"


def test_a_round_failing_a_blocking_gate_is_held_and_current_stays_until_promoted(tmp_path: Path) -> None:
    strict = RoundConfig(promotion=PromotionConfig(min_sft_rows=10))

    async def scenario(b: Builds) -> None:
        first = await b.build()
        held = await b.build(BuildRound(watermark=3, config=strict, by="alice"))
        assert (first.state, held.state) == ("promoted", "held")
        assert held.held_because == ["gate min_rows:sft failed: 3.0 against 10.0"]
        current = b.store.model.current()
        assert current is not None and current.number == 1
        assert os.readlink(b.root / "current") == "round-0001"
        assert (b.files.location(2) / MANIFEST).exists()  # kept for forensics
        manifest = orjson.loads((b.files.location(2) / MANIFEST).read_bytes())
        assert manifest["promotion"]["state"] == "held"
        assert {"name": "min_rows:sft", "value": 3.0, "limit": 10.0, "blocking": True, "passed": False,
                "status": "fail"} in manifest["promotion"]["gates"]
        assert b.said.messages[-1]["state"] == "held" and b.said.messages[-1]["by"] == "alice"
        # a rollback of the current round never moves `current` to the held one
        out = await rollback(RollBackRound(round=1, reason="bad", by="bob"), rounds=MemoryRounds(b.store),
                             files=b.files, announce=b.said)
        assert out.current is None and not (b.root / "current").exists()
        promoted = await promote(PromoteRound(round=2, reason="10 rows is too strict here", by="carol"),
                                 rounds=MemoryRounds(b.store), files=b.files, announce=b.said)
        assert (promoted.changed, promoted.current) == (True, 2)
        assert os.readlink(b.root / "current") == "round-0002"
        state = b.store.model.rounds[2]
        assert state.state == "promoted"
        assert [(h["what"], h["by"]) for h in state.history] == [("built (held)", "alice"), ("promoted", "carol")]
        assert b.said.messages[-1] == {"type": "round_promoted", "round": 2, "reason": "10 rows is too strict here",
                                       "current": 2, "by": "carol"}
        again = await promote(PromoteRound(round=2, reason="again", by="carol"), rounds=MemoryRounds(b.store),
                              files=b.files, announce=b.said)
        assert not again.changed

    run(tmp_path, scenario)


def test_a_build_is_held_when_a_rollback_lands_while_it_runs(tmp_path: Path) -> None:
    class RolledBackMeanwhile(InProcess):
        def __init__(self, b: Builds) -> None:
            super().__init__()
            self.b = b

        async def __call__(self, chunks: AsyncIterator[list[Entry]], config: RoundConfig, quarantine: QuarantineList,
                           out: Path, *, watermark: int, parent: str | None, round_number: int) -> RoundResult:
            # on-call does not wait for the build: the rollback lands while the rows are being cut
            await rollback(RollBackRound(round=1, reason="bad data", by="bob"), rounds=MemoryRounds(self.b.store),
                           files=self.b.files, announce=self.b.said)
            return await super().__call__(chunks, config, quarantine, out, watermark=watermark, parent=parent,
                                          round_number=round_number)

    async def scenario(b: Builds) -> None:
        await b.build()
        late = await b.build(BuildRound(watermark=3), builder=RolledBackMeanwhile(b))
        assert late.state == "held" and late.held_because == ["round 1 was rolled back while this build ran"]
        assert b.store.model.current() is None and not (b.root / "current").exists()
        assert b.published()[-1]["state"] == "held"

    run(tmp_path, scenario)


def test_human_feedback_of_a_slice_whose_raters_disagree_is_left_out_and_counted(tmp_path: Path) -> None:
    def thumbs(app: str, agree: bool) -> list[Judgement]:
        out = []
        for n in range(40):
            a = float(n % 2)
            out += [Judgement(f"{app}{n}", "r1", a, app, "m-1"),
                    Judgement(f"{app}{n}", "r2", a if agree else 1.0 - a, app, "m-1")]
        return out

    async def scenario(b: Builds) -> None:
        b.source.rows = [sft(1), sft(2, app="sales"), sft(3)]
        b.source.judgements = {"thumbs": tuple(thumbs("support", False) + thumbs("sales", True))}
        done = await b.build()
        assert (done.state, done.rows_out) == ("promoted", 1)  # agreement is not blocking by default
        gates = {g["name"]: g for g in done.promotion}
        assert gates["agreement:thumbs:support/m-1"]["status"] == "fail"
        assert gates["agreement:thumbs:sales/m-1"]["status"] == "pass"
        manifest = orjson.loads((done.path / MANIFEST).read_bytes())
        assert manifest["promotion"]["left_out_for_agreement"] == 2
        failed = next(g for g in manifest["promotion"]["gates"] if g["name"] == "agreement:thumbs:support/m-1")
        assert failed["detail"]["rows_left_out"] == 2 and failed["detail"]["interval"][1] < 0.40
        assert "Promotion: promoted" in (done.path / "report.html").read_text()

    run(tmp_path, scenario)


def selected_group(n: int) -> SourceRow:
    """A candidate group the judge and the reward model scored, with its RSFT sample and best-vs-worst pair."""
    from flywheel.services.select import selection_payload
    from sampling.selection import Score, ScoredCandidate, SelectionConfig, select

    prompt = [{"role": "user", "content": f"Write a haiku about invoice number {n} and the sea."}]
    texts = [f"Invoice {n} drifts / on a grey and patient sea / paid at last by tide",
             f"Invoice {n} is due", f"The sea is large and invoice {n} is small, that is all I can say"]
    candidates = [ScoredCandidate(index=i, text=t, scores=(Score(scorer="llm_judge", version="1", value=v),
                                                           Score(scorer="reward_model", version="3", value=v / 10)))
                  for i, (t, v) in enumerate(zip(texts, [9.0, 2.0, 5.0], strict=True))]
    config = SelectionConfig(sft_threshold=8.0, min_margin=2.0, length_guard_margin=4.0, scorer="llm_judge")
    selection = selection_payload(select(prompt, candidates, config))
    group = {"group_id": f"g{n}", "prompt_key": f"k{n}", "model_version": "m-1", "generator": "vllm",
             "prompt": prompt, "app_id": "support", "candidates": [{"index": i, "text": t, "finish_reason": "stop"}
                                                                    for i, t in enumerate(texts)],
             "selection": orjson.loads(orjson.dumps(selection))}
    return SourceRow("group", group, n, AT)


@pytest.mark.parametrize("blocking", [True, False])
def test_a_round_whose_rows_a_flagged_scorer_selected_is_held_when_that_gate_blocks(tmp_path: Path,
                                                                                   blocking: bool) -> None:
    async def scenario(b: Builds) -> None:
        b.source.rows = [sft(1), selected_group(2), selected_group(3)]
        clean = await b.build()
        assert clean.state == "promoted"
        gate = {g["name"]: g for g in clean.promotion}["scorer_audit:flagged_selected_rows"]
        assert (gate["status"], gate["value"]) == ("pass", 0.0)
        manifest = orjson.loads((clean.path / MANIFEST).read_bytes())
        assert manifest["data_sources"]["selected_by"] == {"sft": {"llm_judge+reward_model": 2},
                                                           "dpo": {"llm_judge+reward_model": 2}}

        b.source.report = {**b.source.report, "flagged_scorers": ["llm_judge"]}  # the bias probes caught it
        config = RoundConfig(promotion=PromotionConfig(flagged_scorer_blocking=blocking))
        flagged = await b.build(BuildRound(config=config))
        gate = {g["name"]: g for g in flagged.promotion}["scorer_audit:flagged_selected_rows"]
        assert (gate["status"], gate["value"], gate["blocking"]) == ("fail", 4.0, blocking)
        assert gate["detail"]["flagged_scorers"] == ["llm_judge"]
        assert flagged.state == ("held" if blocking else "promoted")
        current = b.store.model.current()
        assert current is not None and current.number == (1 if blocking else 2)
        report = (flagged.path / "report.html").read_text()
        assert "scorer_audit:flagged_selected_rows" in report

    run(tmp_path, scenario)
