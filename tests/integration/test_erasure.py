"""The right to be forgotten on the real stack: erasure leaves no trace of a user's words in Postgres or in later
rounds, replay still agrees, and a withdrawn user's data leaves rounds and the sampler until consent is granted."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st

from flywheel.bootstrap import hard_cases, round_ops
from flywheel.domain.commands import BuildRound, RecutRound
from flywheel.domain.rounds import RoundConfig
from flywheel.domain.rounds.promotion import PromotionConfig
from flywheel.domain.signals import SignalConfig
from flywheel.services.generate import generate_candidates
from flywheel.services.sample import sample_hard_cases
from flywheel.services.select import Scoring, select_candidates
from flywheel.settings import Endpoints, Settings
from flywheel.simulator import generate
from sampling.generation import Candidate, CandidateGroup, Messages, SamplingSpec
from sampling.hardcases import SamplerConfig
from sampling.selection import SelectionConfig
from sampling.verifiers import JsonFormatVerifier
from store.db import connect, connect_sync
from store.erase import change_consent, erase_user
from store.hardcases import prompt_candidates
from store.projections import check
from store.roundfiles import round_dir
from store.signals import catch_up
from tests.conftest import fresh_database, settings_env
from tests.factories import event, interaction, raw, thumbs
from tests.integration.test_signals_store import ingest_all
from tests.store_helpers import in_store, sampled_cases

pytestmark = pytest.mark.integration

MARK = "QX7-PLUMTREE-4417"  # in the erased user's words only
USER = {"id_hash": "user-to-forget", "consent_training": True}
# Gates that would hold a small test log's round for reasons of their own; these tests are about its rows.
CONFIG = RoundConfig(promotion=PromotionConfig(max_contamination_rate=1.0, max_drift=100.0))


def own_events() -> list[bytes]:
    """The user's interactions, an edit (a pair and an SFT sample), a thumbs with a reason on another user's response,
    feedback parked for an interaction that never comes, and a message that is dead-lettered."""
    first = interaction("forget-1", prompt=f"My account {MARK} is locked, help", response=f"Reset {MARK} now.",
                        user=USER)
    second = interaction("forget-2", prompt="How do I reset my password?", response=f"Say {MARK} to support.",
                         user=USER)
    edit = event("edit", "forget-1", {"edited_response": f"Go to settings; {MARK} stays private."}, user=USER)
    down = thumbs("forget-2", "down", user=USER)
    down["payload"]["reason"] = f"it leaked {MARK}"
    parked = thumbs("never-comes", "down", user=USER)
    parked["payload"]["reason"] = f"parked {MARK}"
    dead = {**interaction("forget-3", prompt=f"dead {MARK}", user=USER), "schema_version": 7}
    return [raw(e) for e in (first, second, edit, down, parked, dead)]


def traffic() -> list[bytes]:
    return [m.value for m in generate(1200, seed=9) if m.expected_reason is None] + own_events()


def everything_as_text(url: str) -> str:
    """Every row of every table in the database as text, bytea also as hex (where plaintext bytes would show)."""
    with connect_sync(url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").fetchall()]
        return "\n".join(str(row[0]) for t in tables for row in conn.execute(f"SELECT t::text FROM {t} t"))


def contains(text: str, needle: str) -> bool:
    return needle in text or needle.encode().hex() in text


class EchoGenerator:
    """Candidates that repeat the prompt's last words (as a model may quote a user): one valid JSON, two not."""

    name = "echo"
    model_version = "echo-1"

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def generate(self, prompts: Sequence[Messages], spec: SamplingSpec,
                 seeds: Sequence[int] | None = None) -> list[CandidateGroup]:
        def group(i: int, prompt: Messages) -> CandidateGroup:
            said = str(prompt[-1]["content"])
            texts = [json.dumps({"echo": said}), f"you said: {said}", f"{said}?"]
            return CandidateGroup(prompt=tuple(prompt), candidates=tuple(
                Candidate(text=t, token_count=len(t.split()), cumulative_logprob=None, finish_reason="stop")
                for t in texts), spec=spec, seed=(seeds or [0] * len(prompts))[i], model_version=self.model_version,
                prompt_tokens=None, generator=self.name)
        return [group(i, p) for i, p in enumerate(prompts)]


def sample_generate_select(url: str, spec: SamplingSpec) -> str:
    """Sample every hard case, generate echoing candidates for each and select among them; the sample's id."""
    sampled = in_store(url, lambda conn: sample_hard_cases(
        hard_cases(conn), SamplerConfig(budget=10_000, seed=1, max_cluster_share=1.0)))
    in_store(url, lambda conn: generate_candidates(hard_cases(conn), EchoGenerator(), spec))
    scoring = Scoring(config=SelectionConfig(sft_threshold=1.0, min_margin=0.5, length_guard_margin=0.5),
                      scorers=[JsonFormatVerifier()])
    in_store(url, lambda conn: select_candidates(hard_cases(conn), scoring))
    return str(sampled.sample_id)


def round_text(path: Path) -> str:
    return "\n".join(f.read_text() for f in sorted(path.glob("*/*.jsonl")))


def build(url: str, root: Path, watermark: int | None = None) -> Any:
    return in_store(url, lambda conn: round_ops(conn, root).build(BuildRound(config=CONFIG, watermark=watermark)))


def project(url: str) -> None:
    async def run() -> None:
        conn = await connect(url)
        try:
            while (p := await catch_up(conn, SignalConfig(), wait=True)) is not None and p.upto > p.after:
                pass
        finally:
            await conn.close()
    asyncio.run(run())


def drifts(url: str) -> list[Any]:
    return [d for d in in_store(url, lambda conn: check(conn, SignalConfig())) if d.missing or d.extra]


def query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with connect_sync(url) as conn:
        return conn.execute(sql, params).fetchall()


def test_an_erased_users_words_are_nowhere_in_postgres_nor_in_a_later_round(endpoints: Endpoints,
                                                                             tmp_path: Path) -> None:
    url = endpoints.database_url
    values = traffic() + [raw(thumbs("forget-1", "down", user=USER))]  # the user's first prompt: a hard case
    ingest_all(url, values, [300])
    # The system's own events carry the user's words too: a sample's conversations, candidates that quote them,
    # and the selection's pair and SFT sample.
    sample_id = sample_generate_select(url, SamplingSpec(n=3, seed=7))
    mine = [c for c in sampled_cases(url, sample_id) if MARK in json.dumps(c["messages"])]
    assert len(mine) == 1, "the user's conversation is no hard case: the checks below would prove nothing"
    assert query(url, "SELECT count(*) FROM candidate_groups WHERE selection::text LIKE %s", [f"%{MARK}%"]) \
        == [(1,)]
    stored = everything_as_text(url)
    # Sealed from the start: the log, parked events and dead letters hold no plaintext even before the erasure.
    assert not contains(query(url, "SELECT string_agg(data::text, ' ') FROM events")[0][0], MARK)
    assert query(url, "SELECT count(*) FROM parked WHERE user_id_hash = 'user-to-forget'") == [(1,)]
    assert query(url, "SELECT sealed_for FROM dead_letters") == [("user-to-forget",)]
    assert contains(stored, MARK)  # but the read models do, as they must to be used
    before = build(url, tmp_path / "rounds")
    assert MARK in round_text(before.path), "the test's user made no row: the check below would prove nothing"

    out = in_store(url, lambda conn: erase_user(conn, "user-to-forget", reason="ticket 88"))
    assert out.new and out.removed["interactions"] == 2 and out.removed["feedback"] == 3
    assert out.removed["candidate_groups"] >= 1
    assert out.removed["parked"] == 1 and out.removed["signals"] > 0 and out.groups > 0
    again = in_store(url, lambda conn: erase_user(conn, "user-to-forget", reason="ticket 88"))
    assert not again.new and sum(again.removed.values()) == 0
    project(url)

    # A later event of theirs is stored, as erased.
    late = interaction("forget-4", prompt=f"late {MARK}", user=USER)
    ingest_all(url, [raw(late)], [1], first_offset=len(values))
    assert query(url, f"SELECT data ? 'erased' FROM events WHERE event_id = '{late['event_id']}'") == [(True,)]

    assert not contains(everything_as_text(url), MARK)
    assert drifts(url) == []
    # The sample read after the erasure: the user's case has lost its conversation, and is not generated for.
    cases = sampled_cases(url, sample_id)
    gone = {c["prompt_key"] for c in cases if c.get("erased") and "messages" not in c}
    assert mine[0]["prompt_key"] in gone and len(gone) == 2  # both of the user's prompts were hard cases
    again_out = in_store(url, lambda conn: generate_candidates(hard_cases(conn), EchoGenerator(),
                                                                 SamplingSpec(n=2, seed=7), sample_id=sample_id))
    assert again_out.prompts == again_out.groups_new == len(cases) - 2
    assert not contains(everything_as_text(url), MARK)
    after = build(url, tmp_path / "rounds")
    assert after.rows_out > 0 and MARK not in round_text(after.path)
    manifest = (after.path / "manifest.json").read_text()
    assert '"erased_users": 1' in manifest and "user-to-forget" not in manifest
    assert query(url, "SELECT type, count(*) FROM events WHERE type = 'erasure' GROUP BY 1") == [("erasure", 1)]


def test_a_withdrawn_users_data_leaves_the_next_round_and_the_sampler_and_comes_back_on_grant(
        endpoints: Endpoints, tmp_path: Path) -> None:
    url = endpoints.database_url
    ingest_all(url, traffic(), [300])
    root = tmp_path / "rounds"
    assert MARK in round_text(build(url, root).path)

    def sampled() -> bool:
        async def run(conn: psycopg.AsyncConnection) -> bool:
            cur = await conn.execute("SELECT prompt_key FROM interactions WHERE interaction_id = 'forget-1'")
            key = (await cur.fetchone())[0]  # type: ignore[index]
            candidates, _ = await prompt_candidates(conn, 10**9)
            return next(c for c in candidates if c.prompt_key == key).consent
        return bool(in_store(url, run))

    assert sampled()
    assert in_store(url, lambda conn: change_consent(conn, "user-to-forget", granted=False))
    assert not in_store(url, lambda conn: change_consent(conn, "user-to-forget", granted=False))  # idempotent
    withdrawn = build(url, root)
    assert MARK not in round_text(withdrawn.path) and not sampled()
    manifest = (withdrawn.path / "manifest.json").read_text()
    assert '"withdrawn_users": 1' in manifest
    assert query(url, "SELECT count(*) FROM interactions WHERE user_id_hash = 'user-to-forget'") == [(2,)]  # kept

    assert in_store(url, lambda conn: change_consent(conn, "user-to-forget", granted=True))
    granted = build(url, root)
    assert MARK in round_text(granted.path) and sampled()
    assert drifts(url) == []


@examples(max_examples=3, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pick=st.integers(min_value=0, max_value=10**6), share=st.floats(min_value=0.5, max_value=1.0))
def test_a_round_recut_after_an_erasure_is_the_round_of_a_log_erased_before_its_first_build(
        stack: Endpoints, tmp_path_factory: pytest.TempPathFactory, pick: int, share: float) -> None:
    values = traffic()
    users = sorted({json.loads(v)["user"]["id_hash"] for v in values if b'"schema_version":7' not in v})
    user = users[pick % len(users)]
    root = tmp_path_factory.mktemp("rounds")
    with fresh_database(stack.database_url) as late, fresh_database(stack.database_url) as early:
        ingest_all(late, values, [300])
        ingest_all(early, values, [300])
        [(head,)] = query(late, "SELECT max(position) FROM events")
        watermark = max(1, int(head * share))

        # Cut before the erasure (it holds the user's rows), then re-cut after it under the erasure list.
        first = build(late, root / "late", watermark=watermark)
        in_store(late, lambda conn: erase_user(conn, user, reason="r"))
        project(late)
        recut = in_store(late, lambda conn: round_ops(conn, root / "late").recut(
            RecutRound(round=first.round, config=CONFIG)))
        again = round_dir(root / "late", recut.by_round)

        # The same log, the erasure recorded before any build.
        in_store(early, lambda conn: erase_user(conn, user, reason="r"))
        project(early)
        fresh = build(early, root / "early", watermark=watermark)

        assert json.loads((again / "manifest.json").read_bytes())["content_hash"] == fresh.content_hash
        files = sorted(p.relative_to(again) for p in again.glob("*/*.jsonl"))
        assert files and files == sorted(p.relative_to(fresh.path) for p in fresh.path.glob("*/*.jsonl"))
        assert all((again / f).read_bytes() == (fresh.path / f).read_bytes() for f in files)
        assert query(late, f"SELECT state FROM rounds WHERE number = {first.round}") == [("superseded",)]


def test_on_call_erases_recuts_and_purges_a_round_from_the_command_line(settings: Settings) -> None:
    url = settings.database_url
    ingest_all(url, traffic(), [300])
    env = {**settings_env(settings), "FLYWHEEL_PROMOTION": '{"max_contamination_rate": 1.0, "max_drift": 100.0}'}

    def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "flywheel", *args], env=env, capture_output=True, text=True,
                              timeout=300)
        assert not check or done.returncode == 0, f"flywheel {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done

    first = json.loads(run_cli("rounds", "build", "--json").stdout)
    assert first["state"] == "promoted" and MARK in round_text(Path(first["path"]))

    erased = run_cli("erase", "user-to-forget", "--reason", "ticket 88").stdout
    assert "erased: removed" in erased
    assert "already erased" in run_cli("erase", "user-to-forget", "--reason", "ticket 88").stdout
    assert "training consent withdrawn" in run_cli("consent", "withdraw", "someone-else").stdout
    assert json.loads(run_cli("consent", "withdraw", "someone-else", "--json").stdout) == {"consent": "withdrawn",
                                                                                          "changed": False}
    stats = json.loads(run_cli("stats", "--json").stdout)
    assert stats["events"]["by_type"]["erasure"] == 1 and stats["events"]["by_type"]["consent"] == 1
    assert stats["privacy"]["erased_users"] == 1 and stats["privacy"]["withdrawn_users"] == 1

    listed = run_cli("rounds", "list").stdout
    assert "HOLDS ERASED OR WITHDRAWN DATA" in listed and "user-to-forget" not in listed
    flagged = json.loads(run_cli("rounds", "list", "--json").stdout)["rounds"][0]["erasure_exposure"]
    assert flagged["rows"] > 0 and flagged["users"] >= 1

    recut = json.loads(run_cli("rounds", "recut", str(first["round"]), "--json").stdout)
    assert recut == {"round": first["round"], "by_round": first["round"] + 1, "current": first["round"] + 1}
    rounds = {r["number"]: r for r in json.loads(run_cli("rounds", "list", "--json").stdout)["rounds"]}
    assert rounds[1]["state"] == "superseded" and rounds[2]["erasure_exposure"] is None
    assert MARK not in round_text(Path(rounds[2]["path"]))
    assert run_cli("rounds", "current").stdout.strip() == rounds[2]["path"]
    assert run_cli("rounds", "purge", "2", check=False).returncode == 2  # the current round's files stay

    old = Path(rounds[1]["path"])
    files = len(list(old.glob("*/*.jsonl")))
    assert files and json.loads(run_cli("rounds", "purge", "1", "--json").stdout) == {"round": 1,
                                                                                    "files_deleted": files}
    assert "0 data files deleted; manifest kept" in run_cli("rounds", "purge", "1").stdout  # again: none left
    assert not list(old.glob("*/*.jsonl")) and (old / "manifest.json").exists()
    assert json.loads(run_cli("rounds", "list", "--json").stdout)["rounds"][0]["erasure_exposure"] is None
    assert "DRIFT" not in run_cli("replay", "--check").stdout


def test_an_apps_erasure_event_erases_the_user_once(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    values = traffic()
    ingest_all(url, values, [300])
    asked = {"event_id": str(uuid.uuid4()), "type": "erasure", "schema_version": 1,
             "occurred_at": "2026-11-23T11:00:00+00:00", "app_id": "support-bot",
             "user": {"id_hash": "user-to-forget"}, "payload": {"reason": "asked in the app"}}
    again = {**asked, "event_id": str(uuid.uuid4())}
    ingest_all(url, [raw(asked), raw(again)], [1], first_offset=len(values))

    assert query(url, "SELECT event_id::text FROM events WHERE type = 'erasure'") == [(asked["event_id"],)]
    assert query(url, "SELECT count(*) FROM user_keys WHERE user_id_hash = 'user-to-forget' AND key IS NULL") \
        == [(1,)]
    assert not contains(everything_as_text(url), MARK)
    assert drifts(url) == []
