"""Round builder core: converters, contamination index, each gate with seeded canaries, splits, determinism, memory."""

from __future__ import annotations

import hashlib
import math
import tempfile
import tracemalloc
import unicodedata
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flywheel.domain.rounds import (
    AUDIT,
    CALIBRATION,
    FILE_NAMES,
    GATES,
    KINDS,
    MANIFEST,
    SPLITS,
    TRAIN,
    DistributionCap,
    Kind,
    Prepare,
    QuarantineIndex,
    QuarantineItem,
    QuarantineList,
    Repeat,
    RoundConfig,
    RoundResult,
    Row,
    build,
    content_hash,
    normalise,
    quality_reason,
    report_html,
    row_from_signal,
    rows_from_group,
    split_of,
)
from flywheel.domain.signals import KTOLabel, PreferencePair, SFTSample
from flywheel.services.select import selection_payload
from sampling.selection import Score, ScoredCandidate, SelectionConfig, select

# ---- a benchmark item and its paraphrases (the canaries) ----

ITEM_PROMPT = (
    "A train leaves the station at nine in the morning travelling at sixty miles per hour toward a city three "
    "hundred miles away, while a second train leaves that city at ten travelling at forty miles per hour toward "
    "the station. At what time do the two trains meet, and how far from the station are they?")
ITEM_ANSWER = (
    "Let the first train run for t hours, so it covers sixty t miles, while the second covers forty times t minus "
    "one miles; setting the sum equal to three hundred gives t equal to three point four, so they meet at twenty "
    "four minutes past twelve.")
# Reformatted (case, punctuation, whitespace) with a few words changed, inside a longer message.
PARAPHRASED_PROMPT = (
    "Hey, quick one for my homework:\n\nA TRAIN leaves the   station at 9 in the morning -- travelling at sixty "
    "miles per hour toward a city three hundred miles away; while a second train leaves that city at ten, "
    "travelling at 40 miles per hour toward the station...  At what time do the two trains meet & how far from "
    "the station are they??")
PARAPHRASED_ANSWER = (
    "Sure! let the FIRST train run for t hours so it covers 60 t miles, while the second covers forty times t\n"
    "minus one miles. Setting the sum equal to three hundred gives t = three point four, so they meet at "
    "twenty-four minutes past twelve.")
QUARANTINE = QuarantineList(version="evals-2026-11", items=(
    QuarantineItem(item_id="gsm-train-1", list_name="gsm8k", prompt=ITEM_PROMPT, answer=ITEM_ANSWER),
    QuarantineItem(item_id="mmlu-7", list_name="mmlu", prompt="Which gas makes up most of the atmosphere of Earth "
                   "by volume at sea level today?", answer="Nitrogen."),
))
EMPTY_QUARANTINE = QuarantineList(version="none", items=())

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
NO_CONSENT_MARKER = "zebra-marmalade-no-consent"


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def bot(text: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": text}]


def make_row(kind: str, key: str, prompt: str, answer: str = "A helpful answer.", *, position: int = 1,
             app: str = "support", model: str = "m-1", tags: tuple[str, ...] = ("billing",), consent: bool = True,
             other: str = "A worse answer.", label: bool = True, lineage: dict[str, Any] | None = None) -> Row:
    if kind == "sft":
        body: dict[str, Any] = {"messages": [*user(prompt), *bot(answer)]}
    elif kind == "dpo":
        body = {"prompt": user(prompt), "chosen": bot(answer), "rejected": bot(other), "margin": 1.0}
    elif kind == "kto":
        body = {"prompt": user(prompt), "completion": bot(answer), "label": label}
    else:
        body = {"prompt": user(prompt), "candidates": [
            {"index": 0, "text": answer, "scores": [{"scorer": "rm", "version": "1", "value": 0.9}]},
            {"index": 1, "text": other, "scores": [{"scorer": "rm", "version": "1", "value": 0.1}]}]}
    return Row(kind=kind, key=key, position=position, app_id=app, model_version=model, prompt_version="p-1",  # type: ignore[arg-type]
               tags=tags, consent=consent, source="test_rule",
               lineage=lineage if lineage is not None else {"source_event_ids": [f"e-{key}"]}, body=body)


def all_bytes(out: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file())


def lines(out: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for split in SPLITS for kind in KINDS
            for line in (out / split / FILE_NAMES[kind]).read_bytes().splitlines()]


def ids(out: Path) -> set[str]:
    return {r["lineage"]["id"] for r in lines(out)}


def run(rows: list[Row], out: Path, config: RoundConfig | None = None,
        quarantine: QuarantineList = EMPTY_QUARANTINE, watermark: int = 10**9) -> RoundResult:
    return build(iter(rows), config or RoundConfig(), quarantine, out, watermark=watermark, parent=None,
                 round_number=1)


# ---- converters ----


def _pair(**kw: Any) -> dict[str, Any]:
    values: dict[str, Any] = dict(
        pair_id="p1", rule="edit_pair", rule_version=1, prompt=tuple(user("How do I reset my password?")),
        chosen="Use the reset link.", rejected="Try later.", chosen_interaction_id=None, rejected_interaction_id="i1",
        margin=1.0, tie=False, status="accepted", decided_after=None, confidence=0.9, preference_reason="edited",
        source_event_ids=("e1", "e2"), app_id="support", model_version="m-1", prompt_version="p-1",
        chosen_model_version=None, chosen_prompt_version=None, tags=("account",), disagreement=False, consent=True,
        user_id_hash="u-secret-hash")
    values.update(kw)
    return orjson.loads(orjson.dumps(PreferencePair(**values)))


def test_an_accepted_pair_becomes_a_trl_dpo_row_and_ties_or_pending_pairs_none() -> None:
    row = row_from_signal("pair", _pair(), 42)
    assert row is not None and row.kind == "dpo" and row.key == "p1" and row.position == 42
    assert row.body == {"prompt": user("How do I reset my password?"), "chosen": bot("Use the reset link."),
                        "rejected": bot("Try later."), "margin": 1.0}
    assert row.source == "edit_pair" and row.stratum == ("support", "m-1", "account")
    assert row.lineage["source_event_ids"] == ["e1", "e2"] and row.lineage["confidence"] == 0.9
    assert "u-secret-hash" not in orjson.dumps(row.lineage).decode()
    assert row_from_signal("dpo", _pair(), 1) is not None
    assert row_from_signal("pair", _pair(tie=True), 1) is None
    assert row_from_signal("pair", _pair(status="pending"), 1) is None


def test_kto_labels_and_sft_samples_convert_and_other_kinds_do_not() -> None:
    label = KTOLabel(label_id="k1", rule="thumbs_label", rule_version=1, prompt=tuple(user("hi")), completion="Hello!",
                     desirable=False, interaction_id="i1", user_id_hash="u", confidence=0.8,
                     preference_reason="thumbs_down", source_event_ids=("e1",), app_id="a", model_version="m",
                     prompt_version="p", tags=(), disagreement=False, consent=False)
    row = row_from_signal("kto", orjson.loads(orjson.dumps(label)), 3)
    assert row is not None and row.kind == "kto" and not row.consent
    assert row.body == {"prompt": user("hi"), "completion": bot("Hello!"), "label": False}
    sample = SFTSample(sample_id="s1", rule="edit_sft", rule_version=1, messages=(*user("hi"), *bot("Hello there.")),
                       interaction_id="i1", source_event_ids=("e1",), app_id="a", model_version="m",
                       prompt_version="p", tags=("x",), confidence=0.9, disagreement=False, consent=True,
                       user_id_hash="u")
    row = row_from_signal("sft", orjson.loads(orjson.dumps(sample)), 4)
    assert row is not None and row.body == {"messages": [*user("hi"), *bot("Hello there.")]}
    assert row.prompt_text() == "hi" and row.answer_texts() == ["Hello there."]
    assert row_from_signal("hard_case", {}, 1) is None and row_from_signal("disagreement", {}, 1) is None
    with pytest.raises(ValueError):
        row_from_signal("thumbs", {}, 1)


_TEXT = st.text(max_size=40)
_MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                            "content": _TEXT | st.lists(st.fixed_dictionaries({"text": _TEXT}))}),
                     max_size=4)


@st.composite
def _signal_records(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A signal record of any training kind as the store holds it, with whatever texts, tags, consent, status."""
    common: dict[str, Any] = dict(
        rule=draw(st.sampled_from(["edit_pair", "thumbs_label", "edit_sft"])), rule_version=1, confidence=0.5,
        source_event_ids=("e1",), app_id=draw(st.sampled_from(["support", "sales"])), model_version="m-1",
        prompt_version=draw(st.none() | st.just("p-1")), tags=tuple(draw(st.lists(_TEXT, max_size=3))),
        disagreement=draw(st.booleans()), consent=draw(st.booleans()), user_id_hash="u")
    kind = draw(st.sampled_from(["pair", "kto", "sft"]))
    if kind == "pair":
        return kind, _pair(**common, prompt=tuple(draw(_MESSAGES)), chosen=draw(_TEXT), rejected=draw(_TEXT),
                           tie=draw(st.booleans()), status=draw(st.sampled_from(["accepted", "pending"])))
    if kind == "kto":
        return kind, orjson.loads(orjson.dumps(KTOLabel(
            label_id="k1", prompt=tuple(draw(_MESSAGES)), completion=draw(_TEXT), desirable=draw(st.booleans()),
            interaction_id="i1", preference_reason="thumbs_down", **common)))
    return kind, orjson.loads(orjson.dumps(SFTSample(sample_id="s1", messages=tuple(draw(_MESSAGES)),
                                                     interaction_id="i1", **common)))


@settings(max_examples=300, deadline=None)
@given(_signal_records(), st.sampled_from([("sft", "dpo", "kto", "group"), ("sft", "dpo")]), st.binary(max_size=4))
def test_a_signal_record_is_prepared_as_its_row_would_be(record: tuple[str, dict[str, Any]],
                                                        kinds: tuple[Kind, ...], key: bytes) -> None:
    """Prepare.signal (the round build's way, without a Row) makes what Prepare makes of row_from_signal's row."""
    kind, data = record
    prepare = Prepare(RoundConfig(kinds=kinds))
    row = row_from_signal(kind, data, 7, copy_key=key or None)
    assert prepare.signal(kind, data, 7, key or None) == (None if row is None else prepare(row))


def _selected_group(nested: bool) -> dict[str, Any]:
    prompt = user("What is 6 times 7?")
    candidates = [ScoredCandidate(index=i, text=t, scores=(Score(scorer="rm", version="7", value=v),))
                  for i, (t, v) in enumerate([("It is 41.", 0.1), ("It is 42.", 0.9), ("Maybe 40?", 0.5)])]
    s = select(prompt, candidates, SelectionConfig())
    selection = selection_payload(s)
    group: dict[str, Any] = {
        "group_id": "g-1", "prompt_key": s.prompt_key, "model_version": "m-2", "generator": "vllm", "prompt": prompt,
        "candidates": [{"index": i, "text": c.text, "finish_reason": "length" if i == 2 else "stop"}
                       for i, c in enumerate(candidates)],
        "sampling": {"n": 3}}
    if nested:
        group["selection"] = orjson.loads(orjson.dumps(selection))
    else:
        group.update(orjson.loads(orjson.dumps(selection)))
    return group


@pytest.mark.parametrize("nested", [True, False])
def test_a_selected_group_gives_the_group_its_rsft_sample_and_its_rm_pair(nested: bool) -> None:
    rows = rows_from_group(_selected_group(nested), 77)
    assert [(r.kind, r.source) for r in rows] == [("group", "candidate_group"), ("sft", "rsft"),
                                                   ("dpo", "rm_selection")]
    group, sft, dpo = rows
    assert all(r.position == 77 and r.model_version == "m-2" and r.consent for r in rows)
    assert [c["text"] for c in group.body["candidates"]] == ["It is 41.", "It is 42.", "Maybe 40?"]
    assert group.body["candidates"][1]["scores"] == [{"scorer": "rm", "version": "7", "value": 0.9, "reason": ""}]
    assert sft.body["messages"][-1] == {"role": "assistant", "content": "It is 42."}
    assert sft.lineage["finish_reasons"] == ["stop"] and sft.lineage["group_id"] == "g-1"
    assert dpo.body["chosen"] == bot("It is 42.") and dpo.body["rejected"] == bot("It is 41.")
    assert dpo.body["margin"] == pytest.approx(0.8)


def test_a_group_without_a_selection_gives_no_rows() -> None:
    group = _selected_group(True)
    group["selection"] = None
    assert rows_from_group(group, 1) == []


# ---- contamination index ----


def test_normalise_folds_case_punctuation_and_whitespace() -> None:
    assert normalise("  Hello,\tWORLD!!  it's\n\n3.14 — ok_then ") == "hello world it s 3 14 ok then"
    assert normalise("Ｆｕｌｌｗｉｄｔｈ") == "fullwidth"


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127)), st.text())
def test_garbled_counts_what_the_pattern_finds(ascii_text: str, other: str) -> None:
    from flywheel.domain.rounds.quality import _GARBLED_CHARS, garbled

    for text in (ascii_text, other, ascii_text + other, ascii_text + "\ufffd\x85"):
        assert garbled(text) == len(_GARBLED_CHARS.findall(text))


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127)), st.text())
def test_words_of_ascii_text_are_the_words_the_pattern_finds(ascii_text: str, other: str) -> None:
    """words' ASCII shortcut (a byte table) splits as the pattern does, which every other text goes through."""
    from flywheel.domain.rounds.quarantine import _WORD, words

    for text in (ascii_text, other, ascii_text + other):
        assert words(text) == _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def test_index_catches_reformatted_paraphrases_on_both_sides_of_an_item() -> None:
    index = QuarantineIndex(QUARANTINE)
    assert index.hits(PARAPHRASED_PROMPT) == {"gsm-train-1"}
    assert index.hits(PARAPHRASED_ANSWER) == {"gsm-train-1"}
    assert index.hits("How do trains work? " * 5) == set()
    assert index.hits("") == set()
    # "Nitrogen." is one word: too short to index, so a row mentioning nitrogen is not contaminated ...
    assert index.hits("Nitrogen is an element.") == set()
    # ... but the item's prompt still is.
    assert index.hits("which gas makes up most of the atmosphere of earth by volume at sea level today") == {"mmlu-7"}


def test_an_item_text_under_min_item_words_is_matched_as_a_whole_normalised_text() -> None:
    index = QuarantineIndex(QUARANTINE)
    assert index.whole_texts == 1 and index.indexed_texts == 3  # "Nitrogen." is not in the n-gram index
    assert index.hits("Nitrogen.") == {"mmlu-7"}
    assert index.hits("  NITROGEN!! ") == {"mmlu-7"}  # case, punctuation and space do not count
    assert index.hits("Nitrogen is an element.") == set()  # inside a longer text it may be a coincidence
    assert index.hits("Nitrogens") == set()
    assert [tuple(m) for m in index.matches_words(["nitrogen"])] == [("mmlu-7", "whole_text", 1.0)]
    short = QuarantineList(version="v", items=(
        QuarantineItem(item_id="a", list_name="x", prompt="What is 2 + 2?", answer="4"),
        QuarantineItem(item_id="b", list_name="y", prompt="what is 2+2", answer="Four."),
    ))
    index = QuarantineIndex(short, min_item_words=5, shingle_words=3)
    assert index.hits("what is 2 + 2") == {"a", "b"}  # one normalised text, two items
    assert index.hits("4") == {"a"} and index.hits("four") == {"b"} and index.hits("") == set()
    assert index.hits("Sure, what is 2 + 2? It is 4.") == set()


def test_every_check_records_its_method_and_score() -> None:
    index = QuarantineIndex(QUARANTINE, ngram=200)  # no exact gram fits: MinHash or whole text only
    words_ = ITEM_PROMPT.split()
    words_[10] = "fifty"
    (near,) = index.matches_words(normalise(" ".join(words_)).split())
    assert (near.item, near.method) == ("gsm-train-1", "minhash") and 0.7 <= near.score < 1.0
    (exact,) = QuarantineIndex(QUARANTINE).matches_words(normalise(PARAPHRASED_ANSWER).split())
    assert tuple(exact) == ("gsm-train-1", "ngram", 1.0)


def test_near_duplicates_are_caught_by_minhash_when_no_exact_ngram_survives() -> None:
    # Exact n-grams longer than any text: only the MinHash LSH check can fire.
    index = QuarantineIndex(QUARANTINE, ngram=200)
    words = ITEM_PROMPT.split()
    words[10], words[40] = "fifty", "twelve"  # two words changed
    reworded = " ".join(words)
    assert index.hits(reworded) == {"gsm-train-1"}
    assert index.hits("Please answer this for me. " + reworded.upper() + " Thanks a lot, really.") == {"gsm-train-1"}
    assert index.hits("A train leaves the station at nine in the morning. Trains are fun.") == set()


def test_a_verbatim_quote_of_an_ngram_inside_a_long_text_is_caught_exactly() -> None:
    index = QuarantineIndex(QUARANTINE)
    quote = " ".join(ITEM_ANSWER.split()[5:19])  # 14 words of the answer
    long_text = ("An essay about something else entirely, with many words about gardening and tomatoes. " * 10
                 + quote + " and then more words about weather. " * 10)
    assert index.hits(long_text) == {"gsm-train-1"}


# ---- gates in a build ----


def test_canaries_never_reach_any_file(tmp_path: Path) -> None:
    rows = [
        make_row("sft", "clean-sft", "How do I change my billing address?", "Open Settings, then Billing."),
        make_row("sft", "contaminated-prompt", PARAPHRASED_PROMPT, "Around noon."),
        make_row("dpo", "contaminated-answer", "Can you solve the two trains problem?", PARAPHRASED_ANSWER),
        make_row("kto", "contaminated-cross", "Explain this: " + ITEM_ANSWER, "It is algebra."),
        make_row("group", "contaminated-candidate", "Solve it.", "No idea.", other=PARAPHRASED_ANSWER),
        make_row("dpo", "no-consent", f"Tell me about {NO_CONSENT_MARKER}.", f"{NO_CONSENT_MARKER} is a thing.",
                 consent=False),
        make_row("kto", "pii-email", "Who should I write to?", f"Write to {EMAIL} for help."),
        make_row("sft", "pii-card", f"My card is {CARD}, is it charged twice?", "Let me check the charges."),
        make_row("group", "pii-tag", "A normal prompt here.", "A normal answer.", tags=(f"owner {EMAIL}",)),
        make_row("kto", "clean-kto", "Is the app free?", "Yes, the basic plan is free."),
    ]
    result = run(rows, tmp_path, quarantine=QUARANTINE)

    everything = all_bytes(tmp_path)
    for needle in (NO_CONSENT_MARKER, EMAIL, "4111 1111", "trains meet", "twenty four minutes", "sixty t miles",
                   "homework"):
        assert needle.encode() not in everything.lower(), needle
    assert ids(tmp_path) == {"clean-sft", "clean-kto"}
    removed = result.manifest["sample_processing"]["removed"]
    assert removed["consent"] == {"sft": 0, "dpo": 1, "kto": 0, "group": 0}
    assert removed["pii"] == {"sft": 1, "dpo": 0, "kto": 1, "group": 1}
    assert removed["contamination"] == {"sft": 1, "dpo": 1, "kto": 1, "group": 1}
    isolation = result.manifest["evaluation_isolation"]
    assert isolation["hits"] == {"gsm-train-1": 4}
    assert isolation["hits_by_list"] == {"gsm8k": 4}
    assert isolation["quarantine_version"] == "evals-2026-11" and isolation["items"] == 2
    # contaminated-prompt and -cross on the prompt side; -answer and -candidate on the answer side
    assert isolation["hit_records"] == [
        {"item": "gsm-train-1", "list": "gsm8k", "side": "answer", "method": "ngram", "rows": 2, "score": 1.0},
        {"item": "gsm-train-1", "list": "gsm8k", "side": "prompt", "method": "ngram", "rows": 2, "score": 1.0}]
    assert isolation["hits_by_method"] == {"ngram": 4} and isolation["hits_by_side"] == {"answer": 2, "prompt": 2}


def test_each_hit_is_recorded_with_item_side_method_and_score_and_listed_in_the_report(tmp_path: Path) -> None:
    reworded = ITEM_PROMPT.split()
    reworded[10] = "fifty"
    rows = [
        make_row("sft", "clean", "How do I change my billing address?", "Open Settings, then Billing."),
        make_row("sft", "near-prompt", " ".join(reworded), "Around noon."),
        make_row("kto", "short-answer", "What is the main gas in the air we breathe?", "Nitrogen!"),
        make_row("dpo", "short-both", "Which gas makes up most of the atmosphere of Earth by volume at sea "
                 "level today?", "nitrogen", other="NITROGEN."),
        make_row("sft", "near-prompt-again", " ".join(reworded), "Around noon."),  # an exact copy: dedup's
    ]
    result = run(rows, tmp_path, RoundConfig(ngram=200), quarantine=QUARANTINE)
    assert ids(tmp_path) == {"clean"}
    isolation = result.manifest["evaluation_isolation"]
    records = {(r["item"], r["side"], r["method"]): (r["rows"], r["score"]) for r in isolation["hit_records"]}
    (near_rows, near_score), = [v for k, v in records.items() if k == ("gsm-train-1", "prompt", "minhash")]
    assert near_rows == 2 and 0.7 <= near_score < 1.0
    assert records[("mmlu-7", "answer", "whole_text")] == (2, 1.0)  # a row with it on both answers counts once
    assert records[("mmlu-7", "prompt", "ngram")] == (1, 1.0)  # shorter than ngram: it appears whole
    assert set(records) == {("gsm-train-1", "prompt", "minhash"), ("mmlu-7", "answer", "whole_text"),
                            ("mmlu-7", "prompt", "ngram")}
    assert isolation["hits"] == {"gsm-train-1": 2, "mmlu-7": 2}
    assert isolation["hits_by_method"] == {"minhash": 2, "ngram": 1, "whole_text": 2}
    report = report_html(result.manifest)
    assert "Contamination hits (item, side, method, score)" in report
    for item, side, method in records:
        assert f"<td>{item}</td><td>{side}</td><td>{method}</td>" in report


def test_dedup_keeps_the_first_of_equal_normalised_content_per_kind(tmp_path: Path) -> None:
    rows = [
        make_row("sft", "first", "How do I cancel?", "Go to Settings."),
        make_row("sft", "same-reformatted", "  how do I   CANCEL? ", "go to settings."),
        make_row("sft", "punctuation-differs", "How do I cancel?", "Go to: settings!"),
        make_row("sft", "words-differ", "How do I cancel?", "Go to the settings."),
        make_row("kto", "kto-first", "How do I cancel?", "Go to Settings.", label=True),
        make_row("kto", "kto-other-label", "How do I cancel?", "Go to Settings.", label=False),
        make_row("kto", "kto-again", "How do I cancel?", "Go to Settings.", label=True),
    ]
    result = run(rows, tmp_path)
    assert ids(tmp_path) == {"first", "words-differ", "kto-first", "kto-other-label"}
    assert result.manifest["sample_processing"]["removed"]["dedup"] == {"sft": 2, "dpo": 0, "kto": 1, "group": 0}


def test_quality_reasons() -> None:
    config = RoundConfig(min_chars=3, max_chars=200, max_garbled_share=0.1)
    assert quality_reason(make_row("sft", "ok", "Hello?", "Hi there."), config) is None
    assert quality_reason(make_row("sft", "e", "Hello?", "   \n"), config) == "empty"
    assert quality_reason(make_row("kto", "e", "  ", "Hi there."), config) == "empty"
    no_answer = Row(kind="sft", key="n", position=1, app_id="a", model_version="m", prompt_version=None, tags=(),
                    consent=True, source="r", lineage={}, body={"messages": user("Hello?")})
    assert quality_reason(no_answer, config) == "empty"
    truncated = make_row("sft", "t", "Hello?", "Hi there, let me expl", lineage={"finish_reasons": ["length"]})
    assert quality_reason(truncated, config) == "truncated"
    assert quality_reason(make_row("dpo", "s", "Hello?", " ok ", other="Fine thanks."), config) == "too_short"
    assert quality_reason(make_row("sft", "l", "Hello?", "x" * 201), config) == "too_long"
    assert quality_reason(make_row("sft", "l", "H" * 201, "Hi there."), config) == "too_long"
    garbled = "Hi \ufffd\ufffd\ufffd there \x00\x01\x02\x03"
    assert quality_reason(make_row("sft", "g", "Hello?", garbled), config) == "garbled"
    assert quality_reason(make_row("dpo", "d", "Hello?", "Same  answer", other="same answer"), config) == "degenerate"
    # A group candidate that hit the token limit is still reward-model data.
    assert quality_reason(make_row("group", "gr", "Hello?", "Hi there."), config) is None


def test_quality_gate_counts_reasons_by_kind(tmp_path: Path) -> None:
    rows = [make_row("sft", "ok", "Hello?", "Hi there."), make_row("sft", "empty", "Hello?", ""),
            make_row("dpo", "degenerate", "Hello?", "Same.", other="same.")]
    result = run(rows, tmp_path)
    processing = result.manifest["sample_processing"]
    assert processing["removed"]["quality"] == {"sft": 1, "dpo": 1, "kto": 0, "group": 0}
    assert processing["quality_reasons"]["empty"]["sft"] == 1
    assert processing["quality_reasons"]["degenerate"]["dpo"] == 1
    assert ids(tmp_path) == {"ok"}


def test_distribution_cap_rule() -> None:
    # admitted when kept < warmup, or when kept[s] + 1 <= ceil(max(share, 1/k) * (kept + 1))
    a, b = ("app", "m", "a"), ("app", "m", "b")
    cap = DistributionCap(cap_share=0.5, warmup=0)
    decisions = [cap.admit("dpo", s) for s in (a, a, b, a, b, a, a, b, b)]
    # a 1<=1 (alone: share 1), a 2<=2, b 1<=ceil(1.5), a 3>ceil(2), b 2<=2, a 3<=ceil(2.5), a 4>ceil(3),
    # b 3<=3, b 4<=ceil(3.5)
    assert decisions == [True, True, True, False, True, True, False, True, True]
    assert cap.admit("kto", a) and cap.admit("kto", a)  # kinds are capped separately

    warm = DistributionCap(cap_share=0.5, warmup=3)
    assert [warm.admit("sft", s) for s in (a, a, a, b, a, a)] == [True, True, True, True, False, False]

    # Equal strata at exactly their share never stall: the least-kept one always gets in.
    even = DistributionCap(cap_share=0.25, warmup=0)
    strata = [("app", "m", str(i)) for i in range(4)]
    assert all(even.admit("sft", s) for _ in range(50) for s in strata)


def test_distribution_cap_in_a_build_keeps_a_dominant_stratum_at_its_share(tmp_path: Path) -> None:
    rows = [make_row("sft", f"a{i}", f"Question a{i}?", position=i, app="big") for i in range(90)]
    rows += [make_row("sft", f"b{i}", f"Question b{i}?", position=100 + i, app="small") for i in range(10)]
    rows.sort(key=lambda r: (int(r.key[1:]) % 10, r.key))  # interleaved, deterministic
    result = run(rows, tmp_path, RoundConfig(stratum_cap_share=0.6, cap_warmup=10))
    processing = result.manifest["sample_processing"]
    big = processing["distribution"]["by_app"]["big"]["count"]
    assert processing["distribution"]["by_app"]["small"]["count"] == 10
    assert 9 <= big <= math.ceil(0.6 * processing["rows_out"]) < 90
    assert processing["removed"]["distribution_cap"]["sft"] == 90 - big


# ---- splits ----


def test_split_is_a_function_of_the_normalised_prompt_and_the_salt() -> None:
    config = RoundConfig(calibration_share=0.1, audit_share=0.1)
    prompts = [f"Prompt number {i}, please." for i in range(3000)]
    splits = [split_of(p, config) for p in prompts]
    assert splits == [split_of(p, config) for p in prompts]
    assert [split_of(p.upper() + "  ", config) for p in prompts] == splits
    counts = {s: splits.count(s) for s in SPLITS}
    assert 2200 < counts[TRAIN] < 2600 and 200 < counts[AUDIT] < 400 and 200 < counts[CALIBRATION] < 400
    # Widening calibration never moves a prompt into or out of audit.
    wider = RoundConfig(calibration_share=0.3, audit_share=0.1)
    assert [s == AUDIT for s in splits] == [split_of(p, wider) == AUDIT for p in prompts]
    assert [split_of(p, RoundConfig(audit_salt="other")) for p in prompts] != splits


def test_audit_split_is_stable_across_rounds_with_different_other_rows(tmp_path: Path) -> None:
    config = RoundConfig(audit_share=0.2, calibration_share=0.1)
    shared = [make_row(kind, f"{kind}-{i}", f"Shared prompt {i}?", f"Answer {i}.", position=i)
              for i in range(200) for kind in ("sft", "kto")]
    first = [make_row("sft", f"x{i}", f"Only in round one {i}?", position=1000 + i) for i in range(150)]
    second = [make_row("dpo", f"y{i}", f"Only in round two {i}?", position=2000 + i) for i in range(150)]
    run(first + shared, tmp_path / "r1", config)
    run(shared[:50] + second + shared[50:], tmp_path / "r2", config)

    def split_of_ids(out: Path) -> dict[str, str]:
        return {orjson.loads(line)["lineage"]["id"]: split for split in SPLITS for kind in KINDS
                for line in (out / split / FILE_NAMES[kind]).read_bytes().splitlines()}

    one, two = split_of_ids(tmp_path / "r1"), split_of_ids(tmp_path / "r2")
    shared_ids = {r.key for r in shared}
    assert {k: v for k, v in one.items() if k in shared_ids} == {k: v for k, v in two.items() if k in shared_ids}
    assert sum(1 for k in shared_ids if one[k] == AUDIT) > 0
    # Every kind of one prompt lands in one split.
    assert all(one[f"sft-{i}"] == one[f"kto-{i}"] for i in range(200))


# ---- files, manifest, determinism ----


def test_files_and_manifest(tmp_path: Path) -> None:
    rows = [make_row("dpo", "d1", "How do I export?", "Use File, then Export.", position=5),
            make_row("sft", "s1", "How do I import?", "Use File, then Import.", position=9, app="desktop",
                     model="m-2", tags=()),
            make_row("kto", "k1", "Old?", "Yes.", position=3)]
    result = run(rows, tmp_path, RoundConfig(kinds=("sft", "dpo")), watermark=10)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.jsonl")) == sorted(
        f"{split}/{name}" for split in SPLITS for name in FILE_NAMES.values())
    manifest = orjson.loads((tmp_path / MANIFEST).read_bytes())
    assert manifest == result.manifest
    for path, entry in manifest["files"].items():
        assert hashlib.sha256((tmp_path / path).read_bytes()).hexdigest() == entry["sha256"] == result.files[path]
    assert manifest["content_hash"] == content_hash(result.files, config_version=RoundConfig(kinds=("sft", "dpo"))
                                                    .version(), watermark=10, quarantine_version="none")
    assert manifest["round"] == 1 and manifest["parent"] is None and manifest["watermark"] == 10
    assert manifest["training_consumption"] == []
    sources = manifest["data_sources"]
    assert sources["apps"] == ["desktop", "support"] and sources["model_versions"] == ["m-1", "m-2"]
    assert sources["positions"] == {"min": 5, "max": 9}
    assert sources["rows_by_kind"] == {"sft": 1, "dpo": 1, "kto": 0, "group": 0}
    processing = manifest["sample_processing"]
    assert processing["gate_order"] == list(GATES)
    assert processing["excluded_kinds"]["kto"] == 1
    assert processing["rows_in"] == 3 and processing["rows_out"] == 2
    assert processing["effective_sample_rate"] == pytest.approx(2 / 3, abs=1e-6)
    assert set(processing["distribution"]["by_tag"]) == {"", "billing"}
    dpo = [r for r in lines(tmp_path) if r["lineage"]["kind"] == "dpo"][0]
    assert set(dpo) == {"prompt", "chosen", "rejected", "margin", "source", "lineage"}
    assert dpo["lineage"]["source_event_ids"] == ["e-d1"] and dpo["lineage"]["position"] == 5


def test_a_row_after_the_watermark_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="watermark"):
        run([make_row("sft", "late", "Hi?", position=11)], tmp_path, watermark=10)


def test_config_version_names_the_values() -> None:
    assert RoundConfig().version() == RoundConfig().version()
    assert RoundConfig(minhash_threshold=1).version() == RoundConfig(minhash_threshold=1.0).version()
    assert RoundConfig(audit_salt="x").version() != RoundConfig().version()
    with pytest.raises(ValueError):
        RoundConfig(audit_share=0.7, calibration_share=0.5)
    with pytest.raises(ValueError):
        RoundConfig(kinds=("sft", "sft"))


_text = st.text(alphabet=st.sampled_from("ab cD.?é\n1"), max_size=30)
_row = st.builds(
    lambda kind, i, prompt, answer, other, consent, app, tag: make_row(
        kind, f"r{i}", prompt, answer, other=other, consent=consent, app=app, tags=(tag,) if tag else (),
        position=i),
    st.sampled_from(KINDS), st.integers(0, 50), _text, _text, _text, st.booleans(), st.sampled_from(["a", "b"]),
    st.sampled_from(["", "x", "y"]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(_row, max_size=25), warmup=st.integers(0, 5))
def test_same_rows_give_byte_identical_rounds(rows: list[Row], warmup: int) -> None:
    config = RoundConfig(cap_warmup=warmup, audit_share=0.3, calibration_share=0.3, min_chars=2)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        first = build(iter(rows), config, QUARANTINE, Path(a) / "x", watermark=100, parent="r0", round_number=2)
        second = build(iter(rows), config, QUARANTINE, Path(b) / "deeper" / "y", watermark=100, parent="r0",
                       round_number=2)
        assert first.content_hash == second.content_hash
        for rel in [*first.files, MANIFEST]:
            assert (Path(a) / "x" / rel).read_bytes() == (Path(b) / "deeper" / "y" / rel).read_bytes()
        assert first.rows_in == len(rows)


def test_report_is_self_contained_html(tmp_path: Path) -> None:
    rows = [make_row("sft", "s", "Hi <script>?", "Hello.", app="<b>app</b>"),
            make_row("dpo", "d", "Other?", "Yes.", consent=False)]
    html = report_html(run(rows, tmp_path).manifest)
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html
    assert "<b>app</b>" not in html and "&lt;b&gt;app&lt;/b&gt;" in html
    assert "src=" not in html and "href=" not in html and "<script" not in html
    assert "consent (dpo)" in html


# ---- memory ----

# Thirty event ids of lineage per row: makes every written line ~1.3 KB without making the gates (which never read
# lineage) any slower, so the files dwarf anything the build could legitimately hold.
_LINEAGE = {"source_event_ids": [f"00000000-0000-4000-8000-{i:012d}" for i in range(30)]}


def _many(n: int) -> Iterator[Row]:
    for i in range(n):
        kind = KINDS[i % 4]
        prompt = user(f"question {i}")
        if kind == "sft":
            body: dict[str, Any] = {"messages": [*prompt, *bot(f"answer {i}")]}
        elif kind == "dpo":
            body = {"prompt": prompt, "chosen": bot(f"good {i}"), "rejected": bot(f"bad {i}"), "margin": 1.0}
        elif kind == "kto":
            body = {"prompt": prompt, "completion": bot(f"answer {i}"), "label": True}
        else:
            body = {"prompt": prompt, "candidates": [{"index": 0, "text": f"one {i}", "scores": []},
                                                     {"index": 1, "text": f"two {i}", "scores": []}]}
        yield Row(kind=kind, key=str(i), position=i, app_id=f"app{i % 3}", model_version="m", prompt_version=None,
                  tags=(), consent=True, source="r", lineage=_LINEAGE, body=body)


def test_memory_does_not_grow_with_the_rows(tmp_path: Path) -> None:
    # 100k rows, not more: tracemalloc makes every allocation several times slower (a 200k-row build takes ~10 s
    # untraced but ~45 s traced on a small machine).
    n = 100_000
    tracemalloc.start()
    try:
        result = build(_many(n), RoundConfig(), QUARANTINE, tmp_path, watermark=n, parent=None, round_number=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.rows_out == n
    written = sum((tmp_path / p).stat().st_size for p in result.files)
    assert written > 120_000_000
    # Holding the rows (~1 KB of objects each) or the files would exceed this many times over; what remains is
    # one dedup digest per row and counters.
    assert peak < 60_000_000
    assert peak < written / 5
    assert peak < 5_000_000 + 200 * n  # a few MB of fixed state, then ~100 bytes of dedup digest per row


# ---- exact copies sent as repeats ----


def test_repeats_count_as_the_copies_they_stand_for(tmp_path: Path) -> None:
    """A Repeat of a row (same copy key) is removed where a full copy would be, counted the same, and the files
    and manifest come out byte-identical to a build given the full copies."""
    firsts = [
        make_row("dpo", "kept", "How do I pay an invoice twice a month?", "Use the billing page."),
        make_row("kto", "no-consent", "How do I close my account for good?", consent=False),
        make_row("sft", "pii", f"Write to {EMAIL} about my refund please", "Sure, done."),
        make_row("sft", "leak", ITEM_PROMPT, "Let me think about the trains."),
    ]
    keyed = [replace(r, copy_key=f"key-{i}".encode()) for i, r in enumerate(firsts)]
    copies = [replace(r, key=f"{r.key}-copy-{n}", position=10 + n, lineage={"source_event_ids": [f"c{n}"]})
              for n in range(3) for r in firsts]
    full = run([*firsts, *copies], tmp_path / "full", quarantine=QUARANTINE)
    repeats = [Repeat(r.kind, f"key-{i}".encode(), 10 + n) for n in range(3) for i, r in enumerate(firsts)]
    short = run([*keyed, *repeats], tmp_path / "short", quarantine=QUARANTINE)
    removed = full.manifest["sample_processing"]["removed"]
    assert removed["dedup"]["dpo"] == 3 and removed["consent"]["kto"] == 4 and removed["pii"]["sft"] == 4
    assert removed["contamination"]["sft"] == 4
    assert short.content_hash == full.content_hash
    assert all_bytes(tmp_path / "short") == all_bytes(tmp_path / "full")


def test_a_repeat_of_a_row_never_seen_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not seen before"):
        run([Repeat("sft", b"nowhere", 1)], tmp_path / "out")


def test_a_row_without_consent_is_removed_unread_as_it_would_be_read() -> None:
    """store.roundrows leaves a record without consent unread: the first gates must remove it for what they know
    of it (its kind), as they remove it read: a kind the config leaves out before consent."""
    prepare = Prepare(RoundConfig(kinds=("sft", "dpo")))
    for kind, gate in (("sft", "consent"), ("kto", "excluded")):
        row = replace(make_row(kind, "no-consent", "How do I close my account?", consent=False), copy_key=b"k")
        assert prepare(row) == prepare.without_consent(kind, b"k", 1) == (kind, gate, b"k", 1)


def test_rows_prepared_where_they_are_read_build_what_the_rows_build(tmp_path: Path) -> None:
    """Prepare (the first gates and the texts, run where rows are read) leaves the round byte-identical, whatever
    the first gates do with a row: kept, left out by kind, no consent, PII, contaminated, dedup, truncated."""
    config = RoundConfig(kinds=("sft", "dpo"))
    firsts = [
        make_row("dpo", "kept", "How do I pay an invoice twice a month?", "Use the billing page."),
        make_row("kto", "excluded", "How do I close my account for good?"),
        make_row("sft", "no-consent", "How do I close my account for good?", consent=False),
        make_row("sft", "pii", f"Write to {EMAIL} about my refund please", "Sure, done."),
        make_row("sft", "leak", ITEM_PROMPT, "Let me think about the trains."),
        make_row("dpo", "cut", "Explain the refund policy in detail please.", "The refund policy is",
                 lineage={"finish_reasons": ["stop", "length"]}),
    ]
    rows = [replace(r, copy_key=f"key-{i}".encode()) for i, r in enumerate(firsts)]
    rows += [replace(firsts[0], key="kept-again", position=5)]
    repeats = [Repeat(r.kind, f"key-{i}".encode(), 10 + i) for i, r in enumerate(firsts)]
    prepare = Prepare(config)
    here = run([*rows, *repeats], tmp_path / "rows", config=config, quarantine=QUARANTINE)
    there = build(iter([*(prepare(r) for r in rows), *repeats]), config, QUARANTINE, tmp_path / "prepared",
                  watermark=10**9, parent=None, round_number=1)
    processing = here.manifest["sample_processing"]
    assert processing["excluded_kinds"]["kto"] == 2 and processing["removed"]["pii"]["sft"] == 2
    assert processing["removed"]["dedup"]["dpo"] == 3 and processing["quality_reasons"]["truncated"]["dpo"] == 1
    assert there.content_hash == here.content_hash
    assert all_bytes(tmp_path / "prepared") == all_bytes(tmp_path / "rows")
