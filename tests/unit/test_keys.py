"""store.keys: personal fields sealed under a user's key, opened with it, and erased without it."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.keys import ERASED, SEALED, SEALED_FOR, KeyRing, Unreadable, decrypt, encrypt, new_key, readers


def event(kind: str = "interaction", user: str = "u1", **payload: object) -> dict[str, object]:
    body = payload or {"messages": [{"role": "user", "content": "my secret plan"}], "response": "ok",
                       "sampling": {"temperature": 0.7}}
    return {"event_id": "0b8f5f0e-6c1a-4c53-9a5f-4f8f3f4c0d01", "type": kind, "user": {"id_hash": user,
            "consent_training": True}, "payload": body}


def test_sealed_event_holds_no_personal_field_and_opens_to_the_original() -> None:
    ring = KeyRing({"u1": new_key()})
    sealed = ring.seal(event())
    assert "messages" not in sealed["payload"] and "response" not in sealed["payload"]
    assert sealed["payload"]["sampling"] == {"temperature": 0.7}  # not personal: stays readable
    assert b"secret plan" not in base64.b64decode(sealed[SEALED])
    assert ring.open(sealed) == event()


def test_thumbs_reason_and_edit_are_sealed_and_a_rating_passes_unchanged() -> None:
    ring = KeyRing({"u1": new_key()})
    thumbs = ring.seal(event("thumbs", value="down", reason="call me on my number"))
    edit = ring.seal(event("edit", edited_response="my rewrite"))
    rating = event("rating", score=4, scale=5)
    assert thumbs["payload"] == {"value": "down"} and edit["payload"] == {}
    assert ring.seal(rating) == rating
    assert ring.open(thumbs)["payload"]["reason"] == "call me on my number"


def test_without_the_key_an_event_reads_as_erased_and_keeps_nothing_personal() -> None:
    key = new_key()
    sealed = KeyRing({"u1": key}).seal(event())
    opened = KeyRing({"u1": None}).open(sealed)
    assert opened[ERASED] is True and SEALED not in opened and "messages" not in opened["payload"]


def test_an_erased_users_new_event_is_stored_as_erased() -> None:
    stored = KeyRing({"u1": None}).seal(event("rating", score=2))
    assert stored[ERASED] is True


def test_erasure_and_consent_events_are_never_sealed_or_erased() -> None:
    erasure = {"event_id": "e", "type": "erasure", "user": {"id_hash": "u1"}, "payload": {"reason": "asked"}}
    assert KeyRing({"u1": None}).seal(erasure) == erasure
    assert KeyRing({"u1": None}).open(erasure) == erasure


def test_a_sealed_field_moved_to_another_event_does_not_open() -> None:
    ring = KeyRing({"u1": new_key()})
    sealed = ring.seal(event())
    moved = {**sealed, "event_id": "another"}
    with pytest.raises(Unreadable):
        ring.open(moved)


def test_another_users_key_does_not_open_it() -> None:
    sealed = KeyRing({"u1": new_key()}).seal(event())
    with pytest.raises(Unreadable):
        KeyRing({"u1": new_key()}).open(sealed)


def test_a_user_without_a_loaded_key_cannot_be_sealed() -> None:
    with pytest.raises(KeyError):
        KeyRing().seal(event())


def sample(*cases: tuple[str, str]) -> dict[str, Any]:
    """A hard_cases_sampled log entry choosing (prompt key, conversation) cases."""
    return {"event_id": "5a0c1d7e-2b9b-4d1e-8f55-1c2d3e4f5a6b", "type": "hard_cases_sampled",
            "payload": {"watermark": 9, "chosen": [{"prompt_key": k, "rank": r, "messages": [
                {"role": "user", "content": text}]} for r, (k, text) in enumerate(cases)]}}


def generated(**extra: object) -> dict[str, Any]:
    return {"event_id": "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f", "type": "candidates_generated", "prompt_key": "p1",
            "payload": {"prompt": [{"role": "user", "content": "my secret plan"}], "model_version": "m1",
                        "candidates": [{"index": 0, "text": "your secret plan is"}], **extra}}


def test_each_case_of_a_sample_is_sealed_under_its_own_users_key_and_opens_to_the_original() -> None:
    ring = KeyRing({"u1": new_key(), "u2": new_key()})
    plain = sample(("p1", "my secret plan"), ("p2", "ask bob"), ("p3", "what is 2+2"))
    sealed = ring.seal_system(plain, {"p1": "u1", "p2": "u2", "p3": None})
    one, two, three = sealed["payload"]["chosen"]
    assert "messages" not in one and one[SEALED_FOR] == "u1" and two[SEALED_FOR] == "u2"
    assert three == plain["payload"]["chosen"][2]  # from no user: left in clear
    assert "secret" not in str(sealed) and "bob" not in str(sealed)
    assert readers(sealed) == ["u1", "u2"]
    assert ring.open(sealed) == plain


def test_a_sample_read_after_one_users_erasure_loses_only_that_users_case() -> None:
    ring = KeyRing({"u1": new_key(), "u2": new_key()})
    sealed = ring.seal_system(sample(("p1", "my secret plan"), ("p2", "ask bob")), {"p1": "u1", "p2": "u2"})
    later = KeyRing({"u1": None, "u2": ring.keys["u2"]})
    one, two = later.open(sealed)["payload"]["chosen"]
    assert one == {"prompt_key": "p1", "rank": 0, ERASED: True}
    assert two["messages"] == [{"role": "user", "content": "ask bob"}]


def test_a_sealed_case_moved_to_another_prompt_does_not_open() -> None:
    ring = KeyRing({"u1": new_key()})
    sealed = ring.seal_system(sample(("p1", "my secret plan")), {"p1": "u1"})
    sealed["payload"]["chosen"][0]["prompt_key"] = "p9"
    with pytest.raises(Unreadable):
        ring.open(sealed)


def test_generated_candidates_are_sealed_and_read_as_erased_once_their_user_is() -> None:
    ring = KeyRing({"u1": new_key()})
    plain = generated()
    sealed = ring.seal_system(plain, {plain["event_id"]: "u1"})
    payload = sealed["payload"]
    assert set(payload) == {"model_version", SEALED_FOR, SEALED}
    assert readers(sealed) == ["u1"] and ring.open(sealed) == plain
    gone = KeyRing({"u1": None}).open(sealed)
    assert gone[ERASED] is True and gone["payload"] == {"model_version": "m1", ERASED: True}
    # Sealed after the user's key went (a generation that raced an erasure): stored as erased, words dropped.
    late = KeyRing({"u1": None}).seal_system(plain, {plain["event_id"]: "u1"})
    assert late[ERASED] is True and "secret" not in str(late)


def test_a_system_event_from_no_user_or_of_another_kind_passes_unchanged() -> None:
    ring = KeyRing()
    plain = generated()
    assert ring.seal_system(plain, {}) == plain and ring.open(plain) == plain and readers(plain) == []
    published = {"event_id": "e", "type": "round_published", "payload": {"round": 3}}
    assert ring.seal_system(published, {"e": "u1"}) == published


@given(st.binary(max_size=2000), st.binary(max_size=64))
def test_bytes_round_trip_and_nonces_differ(raw: bytes, context: bytes) -> None:
    key = new_key()
    a, b = encrypt(key, raw, context), encrypt(key, raw, context)
    assert a != b  # a fresh nonce each time
    assert decrypt(key, a, context) == raw == decrypt(key, b, context)
