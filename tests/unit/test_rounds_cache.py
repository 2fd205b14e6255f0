"""Round builder caches: per-string PII checks and per-text readings judge a repeated text like its first."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from flywheel.domain import redact
from flywheel.domain.redact import find_pii
from flywheel.domain.rounds import QuarantineIndex, QuarantineItem, QuarantineList, RoundConfig, Row, build, builder
from flywheel.domain.rounds.pii import has_pii

PII_TEXTS = [
    "Write to ann@example.com, please.",
    "Call +1 (415) 555-0132 after 5pm.",
    "Card: 4111 1111 1111 1111.",
    "card 4111111111111111 12/25",
    "use sk-proj-abcdefghijklmnopqrstuvwx here",
    "export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY",
]
CLEAN_TEXTS = [
    "The refund for my order arrived late, thanks.",
    "token = tokenizer.encode(text)",
    "The secret: practice.",
    "Order 1234567 shipped on 2024-05-01.",
    "What is 64 × 82?",
]
ITEM = QuarantineItem(
    item_id="q-1", list_name="evalset", prompt="An unrelated prompt about the moon and its many phases in a year.",
    answer="The quick brown fox jumps over the lazy dog while the farmer counts his sheep in the green field.")


def _row(kind: str, key: str, prompt: str, answer: str, *, tags: tuple[str, ...] = ("billing",)) -> Row:
    user = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": prompt}]
    bot = [{"role": "assistant", "content": answer}]
    body: dict[str, Any]
    if kind == "sft":
        body = {"messages": [*user, *bot]}
    elif kind == "dpo":
        body = {"prompt": user, "chosen": bot, "rejected": [{"role": "assistant", "content": "No."}], "margin": 1.0}
    elif kind == "kto":
        body = {"prompt": user, "completion": bot, "label": True}
    else:
        body = {"prompt": user, "candidates": [{"index": 0, "text": answer, "scores": [], "finish_reason": "stop"}]}
    return Row(kind=kind, key=key, position=1, app_id="app", model_version="m", prompt_version=None,  # type: ignore[arg-type]
               tags=tags, consent=True, source="rule", lineage={}, body=body)


@pytest.mark.parametrize("text", PII_TEXTS + CLEAN_TEXTS)
def test_redact_has_pii_is_find_pii_on_these_texts(text: str) -> None:
    assert redact.has_pii(text) is bool(find_pii(text))


@pytest.mark.parametrize("text", PII_TEXTS + CLEAN_TEXTS)
def test_has_pii_finds_a_string_anywhere_in_the_body_or_tags(text: str) -> None:
    expected = bool(find_pii(text))
    nested = _row("sft", "k", "Hello there.", "Hi.")
    nested.body["messages"][1]["content"] = [{"type": "text", "text": text}]
    assert has_pii(nested) is expected
    assert has_pii(_row("group", "k", "Hello there.", text)) is expected
    assert has_pii(_row("kto", "k", "Hello there.", "Hi.", tags=("", text))) is expected


def test_has_pii_checks_each_distinct_string_once_through_a_cached_check() -> None:
    checked: list[str] = []

    def check(text: str) -> bool:
        checked.append(text)
        return redact.has_pii(text)

    cached = functools.lru_cache(maxsize=16)(check)
    rows = [_row("dpo", f"r{i}", "How do I reset it?", "Use the reset link.") for i in range(5)]
    rows.append(_row("kto", "pii", "How do I reset it?", PII_TEXTS[0]))
    rows.append(_row("sft", "pii-again", "Something else?", PII_TEXTS[0]))
    assert [has_pii(r, cached) for r in rows] == [has_pii(r) for r in rows] == [False] * 5 + [True, True]
    assert len(checked) == len(set(checked))


def _rows_with_repeats() -> list[Row]:
    rows = []
    for i in range(40):
        kind = ("sft", "dpo", "kto", "group")[i % 4]
        answer = [f"Answer number {i % 7}.", PII_TEXTS[i % len(PII_TEXTS)], ITEM.answer, CLEAN_TEXTS[i % 5]][i % 4]
        rows.append(_row(kind, f"r{i}", f"Question {i % 5}: {CLEAN_TEXTS[i % 3]}", answer))
        rows.append(_row(("group", "kto", "dpo", "sft")[i % 4], f"s{i}", f"Question {i % 5}?", answer))
    return rows


def test_caching_does_not_change_a_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quarantine = QuarantineList(version="q", items=(ITEM,))

    def run(out: Path) -> Any:
        return build(iter(_rows_with_repeats()), RoundConfig(), quarantine, out, watermark=1, parent=None,
                     round_number=1)

    cached = run(tmp_path / "cached")
    monkeypatch.setattr(builder, "_CACHE_SIZE", 0)  # lru_cache(maxsize=0) remembers nothing
    uncached = run(tmp_path / "uncached")
    assert cached.manifest == uncached.manifest
    removed = cached.manifest["sample_processing"]["removed"]
    assert sum(removed["pii"].values()) > 0 and sum(removed["contamination"].values()) > 0
    # A repeated contaminated text counts a hit for every row it removes, not just the first.
    assert cached.manifest["evaluation_isolation"]["hits"] == {"q-1": sum(removed["contamination"].values())}


def test_quarantine_index_needs_items_at_least_a_shingle_long() -> None:
    with pytest.raises(ValueError, match="shingle_words"):
        QuarantineIndex(QuarantineList(version="q", items=(ITEM,)), min_item_words=2, shingle_words=3)


def test_an_exact_gram_late_in_a_long_text_is_found() -> None:
    index = QuarantineIndex(QuarantineList(version="q", items=(ITEM,)), threshold=0.95)  # too high for the near check
    filler = " ".join(f"word{i}" for i in range(200))
    middle = " ".join(ITEM.answer.split()[3:17])  # 14 words: one 13-gram more than needed
    assert index.hits(f"{filler} {middle} {filler}") == {"q-1"}
    assert index.hits(f"{filler} {' '.join(ITEM.answer.split()[3:15])} {filler}") == set()  # 12 words
