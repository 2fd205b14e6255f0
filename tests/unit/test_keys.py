"""store.keys: personal fields sealed under a user's key, opened with it, and erased without it."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.keys import ERASED, SEALED, KeyRing, Unreadable, decrypt, encrypt, new_key


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


@given(st.binary(max_size=2000), st.binary(max_size=64))
def test_bytes_round_trip_and_nonces_differ(raw: bytes, context: bytes) -> None:
    key = new_key()
    a, b = encrypt(key, raw, context), encrypt(key, raw, context)
    assert a != b  # a fresh nonce each time
    assert decrypt(key, a, context) == raw == decrypt(key, b, context)
