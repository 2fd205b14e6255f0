"""Typed internal events keep the ids and payloads the log has always held: a re-run after an upgrade is a no-op."""

from __future__ import annotations

from flywheel.domain.events import (
    CandidatesGenerated,
    CandidatesSelected,
    HardCasesSampled,
    NightlyRunFinished,
    QuarantineItemsAdded,
    RoundConsumed,
    RoundPublished,
    RoundRestored,
    RoundRolledBack,
    TrackingReset,
)
from flywheel.domain.log import NewEvent
from sampling.hardcases import SamplerConfig, sample

# Ids recorded by the dict-based constructors these classes replaced (store.rounds, store.candidates,
# store.tracking, store.hardcases before the typed events), for the same facts.
BEFORE = {
    "quarantine": "7102d14f-96fb-54ba-8606-7173b51d13ec",
    "published": "69917838-73f2-5b98-8588-b0bf8a783974",
    "rolled_back": "bc1f6828-48a7-5dd7-8c19-1c250ef7d395",
    "restored": "cb51faaa-5e16-53e2-9bad-ea6742e78aac",
    "consumed": "15d388eb-1514-5fd1-bbea-43011704595b",
    "nightly": "4cc963d3-ecd9-5a7d-894c-6a370e2435ef",
    "generated": "95b1c195-182d-528c-a33c-7ab8fc755f35",
    "selected": "d898c38f-1282-5f24-99c2-ba01a3cdae6c",
    "reset": "c22420d4-27dc-547d-8067-eea929b676bb",
    "sample": "2401dff5-53b6-5de9-8bd3-d83e05bedf7d",
}


def test_every_internal_event_keeps_the_id_it_had_as_a_dict() -> None:
    config = SamplerConfig(budget=7, seed=3)
    ids = {
        "quarantine": QuarantineItemsAdded.listing("bench", [("What is 2+2?", "4"), ("Capital of France?", "Paris")]),
        "published": RoundPublished(round=3, path="/r", content_hash="abc123", watermark=10, parent=2,
                                    quarantine_version="q", config_version="c", summary={}),
        "rolled_back": RoundRolledBack(round=3, reason="bad", quarantine={"app_id": "support"}, after=41),
        "restored": RoundRestored(round=3, after=42),
        "consumed": RoundConsumed(round=3, run_id="run-7"),
        "nightly": NightlyRunFinished(run_id="run-1", started_at="2026-12-01T03:00:00+00:00", status="ok", steps={},
                                      error=None),
        "generated": CandidatesGenerated.for_case(
            "0b5a0a4e-1d7e-4f57-9a57-6a8c1b2f0c11", {"prompt_key": "k1", "app_id": "support", "tags": ["a"]},
            {"model_version": "m1", "generator": "vllm", "sampling": {"n": 4, "temperature": 0.8}}),
        "selected": CandidatesSelected(group_id="9f0a6f0e-9d5c-4f6e-8f0d-2f2b4f6f7a10", selector_version="v1",
                                       selection={}),
        "reset": TrackingReset(consumer_group="g", topic="t", partition=0, previous_offset=5, offset=-1,
                               reason="topic_recreated", by="worker", topic_id="new", previous_topic_id="old"),
        "sample": HardCasesSampled.of_result(
            sample([], config, watermark=99, quarantined=frozenset()), config, {}),
    }
    assert {name: event.event_id for name, event in ids.items()} == BEFORE


def test_a_log_entry_carries_the_type_fields_and_payload_of_its_event() -> None:
    added = QuarantineItemsAdded.listing("bench", [("Capital of France?", "Paris"), ("What is 2+2?", "4"),
                                                   ("What is 2+2?", "4")])
    entry = NewEvent.internal(added, at="2026-12-06T00:00:00+00:00")
    assert entry.type == "quarantine_items_added" and entry.event_id == added.event_id
    assert entry.data["payload"] == {"list_name": "bench", "items": [
        {"item_id": "0087e11911593ad9", "prompt": "What is 2+2?", "answer": "4"},
        {"item_id": "d8d48525b5a56a79", "prompt": "Capital of France?", "answer": "Paris"}]}
    assert QuarantineItemsAdded.of(entry.data["payload"]) == added
    group = CandidatesGenerated.for_case("s", {"prompt_key": "k", "app_id": None, "tags": None},
                                         {"model_version": "m", "generator": "g", "sampling": {}})
    data = NewEvent.internal(group, at="2026-12-06T00:00:00+00:00").data
    assert (data["sample_id"], data["prompt_key"], data["app_id"], data["tags"]) == ("s", "k", None, [])
