"""Rounds cut from a real event log: publish, determinism, quarantine canaries, rollback/restore (real Postgres)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flywheel.bootstrap import round_ops
from flywheel.domain.commands import BuildRound, RestoreRound, RollBackRound
from flywheel.domain.events import QuarantineItemsAdded
from flywheel.domain.rounds import RoundConfig
from flywheel.domain.rounds.promotion import PromotionConfig
from flywheel.domain.rounds.rollback import MARKER
from flywheel.settings import Endpoints
from flywheel.simulator import generate
from store.db import connect_sync
from store.projections import record
from tests.integration.test_signals_store import ingest_all
from tests.store_helpers import in_store

pytestmark = pytest.mark.integration



def lines(root: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in sorted(root.glob("*/*.jsonl")) for line in f.read_text().splitlines()]


def test_rounds_publish_roll_back_and_exclude_a_slice(endpoints: Endpoints, tmp_path: Path) -> None:
    url = endpoints.database_url
    values = [m.value for m in generate(2500, seed=9) if m.expected_reason is None]
    ingest_all(url, values[:1500], [500])
    root = tmp_path / "rounds"
    announced: list[dict[str, Any]] = []
    # The canary's prompt opens a popular conversation of the simulator, so about 9% of the rows carry it: above the
    # contamination gate's default 5%, which would hold the round. This test is about publication and rollback.
    config = RoundConfig(promotion=PromotionConfig(max_contamination_rate=0.2))

    # A benchmark item that a user pasted into a conversation, reformatted: the round must not contain it.
    with connect_sync(url) as conn:
        prompt, answer = conn.execute(
            "SELECT messages -> -1 ->> 'content', response FROM interactions i WHERE consent_training"
            " AND EXISTS (SELECT 1 FROM feedback f WHERE f.interaction_id = i.interaction_id AND f.type = 'edit')"
            " ORDER BY position LIMIT 1").fetchone()
    canary = QuarantineItemsAdded.listing("canary-bench", [(prompt.upper() + "  ", answer)])
    in_store(url, lambda conn: record(conn, [canary]))

    first = in_store(url, lambda conn: round_ops(conn, root, announce=announced.append).build(
        BuildRound(config=config)))
    assert first.round == 1 and first.rows_out > 0 and (root / "current").resolve() == first.path.resolve()
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["evaluation_isolation"]["hits"], "the canary was not caught"
    rows = lines(first.path)
    assert rows and not any(answer in json.dumps(r) for r in rows)
    assert {p.name for p in first.path.iterdir()} >= {"train", "calibration", "audit", "manifest.json", "report.html"}
    assert not list(root.glob(".building-*"))

    # Same log, same config, same quarantine: byte-identical data files.
    again = in_store(url, lambda conn: round_ops(conn, root).build(
        BuildRound(config=config, watermark=first.watermark)))
    assert again.content_hash == first.content_hash
    for f in sorted(first.path.glob("*/*.jsonl")):
        assert f.read_bytes() == (again.path / f.relative_to(first.path)).read_bytes()

    ingest_all(url, values[1500:], [500], first_offset=1500)
    third = in_store(url, lambda conn: round_ops(conn, root).build(BuildRound(config=config)))
    apps = {r["lineage"]["app_id"] for r in lines(third.path)}
    assert third.round == 3

    out = in_store(url, lambda conn: round_ops(conn, root, announce=announced.append).rollback(
        RollBackRound(round=3, reason="bad labels from support app", quarantine={"app_id": "support-bot"})))
    assert (out.changed, out.current) == (True, 2)
    assert (root / "current").resolve() == again.path.resolve() and (third.path / MARKER).exists()
    assert in_store(url, lambda conn: round_ops(conn, root, announce=announced.append).rollback(
        RollBackRound(round=3, reason="again"))).changed is False
    fourth = in_store(url, lambda conn: round_ops(conn, root).build(BuildRound(config=config)))
    assert fourth.sliced_out > 0
    assert lines(fourth.path) and not any(r["lineage"]["app_id"] == "support-bot" for r in lines(fourth.path))
    assert [m["type"] for m in announced] == ["round_published", "round_rolled_back"]

    back = in_store(url, lambda conn: round_ops(conn, root, announce=announced.append).restore(RestoreRound(round=3)))
    assert back.changed and back.current == 4 and not (third.path / MARKER).exists()
    assert "support-bot" in apps  # round 3 had the support app's rows before the rollback sliced them out


def _forbid(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    def forbidden(*_: Any) -> None:
        raise AssertionError(f"this build must not take {path}")

    monkeypatch.setattr(f"store.roundrows.{path}", forbidden)


def test_a_round_read_from_the_signals_read_model_equals_one_derived_from_the_log(
        endpoints: Endpoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = endpoints.database_url
    values = [m.value for m in generate(2400, seed=21) if m.expected_reason is None]
    root, config = tmp_path / "rounds", RoundConfig()
    # The projector is left behind on purpose: the default build must bring it up to the head first.
    ingest_all(url, values[:1200], [400], project_every=None)
    with connect_sync(url) as conn:
        newest = conn.execute("SELECT max(position) FROM events").fetchone()[0]
    with monkeypatch.context() as m:
        _forbid(m, "_derive_signals")
        read = in_store(url, lambda conn: round_ops(conn, root).build(BuildRound(config=config)))
    with connect_sync(url) as conn:
        assert conn.execute("SELECT position FROM checkpoints WHERE name = 'signals'").fetchone()[0] == newest
    assert read.watermark == newest
    # Exact copies came unread as repeats, and records without consent unread (store.roundrows): the derived cut
    # below reads every one in full.
    processing = json.loads((read.path / "manifest.json").read_text())["sample_processing"]
    assert sum(processing["removed"]["dedup"].values()) > 0 and sum(processing["removed"]["consent"].values()) > 0
    ingest_all(url, values[1200:], [400], first_offset=1200)
    # The checkpoint is past the first watermark now: the same cut is derived again from the log.
    with monkeypatch.context() as m:
        _forbid(m, "_read_signals")
        derived = in_store(url, lambda conn: round_ops(conn, root).build(
            BuildRound(config=config, watermark=read.watermark)))
    assert read.rows_out > 0 and derived.content_hash == read.content_hash
    assert json.loads((derived.path / "manifest.json").read_text())["sample_processing"] == processing
    for f in sorted(read.path.glob("*/*.jsonl")):
        assert f.read_bytes() == (derived.path / f.relative_to(read.path)).read_bytes()
    assert '"status":"pending"' not in "".join(f.read_text() for f in read.path.glob("*/dpo.jsonl"))
