"""Per-user data keys, and the personal fields of events sealed with them (crypto-shredding: erasure deletes the key).

An event's personal fields (PERSONAL) are stored in the log as one AES-GCM ciphertext under its user's key,
bound to the event's id. Erasing a user deletes the key: the log stays immutable and replayable, and the user's
events read back as erased, their text gone for good. Keys live in `user_keys` (one row per user; `key` NULL once
erased), are loaded once per batch for all its users, and are never projected or replayed.

The system's own events that carry users' words (SYSTEM_PERSONAL: a sample's conversations, generated candidates
and their selections) are sealed the same way, under the key of a user whose conversation the words came from,
named in the sealed part (`sealed_for`); store.sealing chooses that user.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from flywheel.domain.events import (
    CandidatesGenerated,
    CandidatesSelected,
    ConsentChanged,
    HardCasesSampled,
    UserErased,
)
from flywheel.domain.log import StoredEvent

# Payload fields holding a user's own words, by event type.
PERSONAL: Mapping[str, tuple[str, ...]] = {
    "interaction": ("messages", "response"),
    "thumbs": ("reason",),
    "edit": ("edited_response",),
}
# Events about a user's rights (erasure, consent) hold nothing of theirs to seal, and stay readable once erased.
_RIGHTS = frozenset({UserErased.TYPE, ConsentChanged.TYPE})
SEALED = "sealed"  # the member of a log entry holding its personal fields' ciphertext
ERASED = "erased"  # true on the log form of an event whose user was erased
SEALED_FOR = "sealed_for"  # in a system event's sealed part: the user whose key sealed it
# The system's events that carry users' words, and the payload fields holding them (each case of a sample apart).
CASE_PERSONAL = ("messages",)
SYSTEM_PERSONAL: Mapping[str, tuple[str, ...]] = {
    CandidatesGenerated.TYPE: ("prompt", "candidates"),
    CandidatesSelected.TYPE: ("sft", "pair", "scores"),
}
_NONCE = 12


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def user_of(data: Mapping[str, Any]) -> str | None:
    """The user an event belongs to (None: the system's own events)."""
    user = data.get("user")
    return user.get("id_hash") if isinstance(user, dict) else None


def readers(data: Mapping[str, Any]) -> list[str]:
    """The users whose keys open a log entry: its user's, or those its sealed parts name (a system event)."""
    if data["type"] == HardCasesSampled.TYPE:
        return [c[SEALED_FOR] for c in data["payload"]["chosen"] if SEALED_FOR in c]
    if data["type"] in SYSTEM_PERSONAL:
        user = data["payload"].get(SEALED_FOR)
        return [] if user is None else [user]
    user = user_of(data)
    return [] if user is None else [user]


def encrypt(key: bytes, plaintext: bytes, context: bytes) -> bytes:
    """nonce ‖ AES-GCM(plaintext), authenticated together with `context` (what the bytes belong to)."""
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, context)


def decrypt(key: bytes, sealed: bytes, context: bytes) -> bytes:
    """The plaintext of encrypt(key, plaintext, context); InvalidTag on a wrong key, context or altered bytes."""
    return AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], context)


class Unreadable(ValueError):
    """A sealed event whose ciphertext does not open with its user's key (altered, or sealed under another)."""


@dataclass
class KeyRing:
    """The keys of some users as loaded for one batch: user → key, None once the user is erased. A user not in
    it has no key yet (none of their events was sealed)."""

    keys: dict[str, bytes | None] = field(default_factory=dict)
    _ciphers: dict[str, AESGCM] = field(default_factory=dict, repr=False)  # one per user, made on first use

    def _cipher(self, user: str, key: bytes) -> AESGCM:
        cipher = self._ciphers.get(user)
        if cipher is None:
            cipher = self._ciphers[user] = AESGCM(key)
        return cipher

    def erased(self, user: str | None) -> bool:
        return user is not None and user in self.keys and self.keys[user] is None

    def seal(self, data: dict[str, Any]) -> dict[str, Any]:
        """The log form of a stored-form event: its personal fields encrypted under its user's key; an erased
        user's event loses them and is marked erased. Events without a user pass unchanged."""
        user = user_of(data)
        if user is None or data["type"] in _RIGHTS:
            return data
        if user not in self.keys:
            raise KeyError(f"no key loaded for user {user}")
        key = self.keys[user]
        payload = data.get("payload") or {}
        personal = {f: payload[f] for f in PERSONAL.get(data["type"], ()) if f in payload}
        rest = {k: v for k, v in payload.items() if k not in personal}
        if key is None:
            return {**data, "payload": rest, ERASED: True}
        if not personal:
            return data
        return {**data, "payload": rest, SEALED: self._lock(user, key, personal, data["event_id"])}

    def open(self, data: dict[str, Any]) -> dict[str, Any]:
        """The stored form of a log entry: personal fields decrypted; marked erased when its user's key is gone."""
        user = user_of(data)
        if user is None:
            return self.open_system(data)
        if data.get(ERASED) or data["type"] in _RIGHTS:
            return data
        if self.erased(user):
            rest = {k: v for k, v in data.items() if k != SEALED}
            return {**rest, ERASED: True}
        if SEALED not in data:
            return data
        personal = self._unlock(user, data[SEALED], data["event_id"], what=f"event {data['event_id']}")
        rest = {k: v for k, v in data.items() if k != SEALED}
        return {**rest, "payload": {**data["payload"], **personal}}

    def seal_system(self, data: dict[str, Any], users: Mapping[str, str | None]) -> dict[str, Any]:
        """The log form of a system event (SYSTEM_PERSONAL, a sample) whose words came from `users`: prompt key →
        user for a sample's cases, event id → user for the others (None or absent: from no user, left as is).
        A part whose user is erased loses its words and is marked erased, and so is the whole event but a sample."""
        event_id = data["event_id"]
        if data["type"] == HardCasesSampled.TYPE:
            chosen = [self._seal_part(c, CASE_PERSONAL, users.get(c["prompt_key"]), f"{event_id}:{c['prompt_key']}")
                      for c in data["payload"]["chosen"]]
            return {**data, "payload": {**data["payload"], "chosen": chosen}}
        names = SYSTEM_PERSONAL.get(data["type"])
        if names is None:
            return data
        payload = self._seal_part(data["payload"], names, users.get(event_id), event_id)
        return {**data, "payload": payload, **({ERASED: True} if payload.get(ERASED) else {})}

    def open_system(self, data: dict[str, Any]) -> dict[str, Any]:
        """The stored form of a system event's log entry: its sealed parts opened, or marked erased."""
        event_id = data["event_id"]
        if data["type"] == HardCasesSampled.TYPE:
            chosen = [self._open_part(c, f"{event_id}:{c['prompt_key']}") for c in data["payload"]["chosen"]]
            return {**data, "payload": {**data["payload"], "chosen": chosen}}
        if data["type"] not in SYSTEM_PERSONAL or data.get(ERASED):
            return data
        payload = self._open_part(data["payload"], event_id)
        return {**data, "payload": payload, **({ERASED: True} if payload.get(ERASED) else {})}

    def _seal_part(self, part: dict[str, Any], names: tuple[str, ...], user: str | None,
                   context: str) -> dict[str, Any]:
        if user is None:
            return part
        if user not in self.keys:
            raise KeyError(f"no key loaded for user {user}")
        key = self.keys[user]
        personal = {f: part[f] for f in names if f in part}
        rest = {k: v for k, v in part.items() if k not in personal}
        if key is None:
            return {**rest, SEALED_FOR: user, ERASED: True}
        return {**rest, SEALED_FOR: user, SEALED: self._lock(user, key, personal, context)}

    def _open_part(self, part: dict[str, Any], context: str) -> dict[str, Any]:
        if SEALED not in part:
            return part
        user = part[SEALED_FOR]
        rest = {k: v for k, v in part.items() if k not in (SEALED, SEALED_FOR)}
        if self.erased(user):
            return {**rest, ERASED: True}
        return {**rest, **self._unlock(user, part[SEALED], context, what=context)}

    def _lock(self, user: str, key: bytes, personal: Mapping[str, Any], context: str) -> str:
        """`personal` as JSON, encrypted under the user's key and bound to `context` (what it belongs to), base64."""
        nonce = os.urandom(_NONCE)
        return base64.b64encode(nonce + self._cipher(user, key).encrypt(nonce, orjson.dumps(personal),
                                                                        context.encode())).decode()

    def _unlock(self, user: str, sealed: str, context: str, *, what: str) -> dict[str, Any]:
        """What _lock sealed; Unreadable (naming `what`) without the user's key or when it does not open with it."""
        key = self.keys.get(user)
        if key is None:
            raise Unreadable(f"{what}: no key for user {user}")
        raw = base64.b64decode(sealed)
        try:
            opened: dict[str, Any] = orjson.loads(self._cipher(user, key).decrypt(raw[:_NONCE], raw[_NONCE:],
                                                                                  context.encode()))
        except InvalidTag:
            raise Unreadable(f"{what}: its sealed fields do not open with its user's key") from None
        return opened

    def seal_bytes(self, user: str, raw: bytes, context: bytes) -> bytes | None:
        """`raw` encrypted under the user's key (dead letters, parked originals); None once the user is erased."""
        key = self.keys[user]
        return None if key is None else encrypt(key, raw, context)

    def open_bytes(self, user: str, sealed: bytes, context: bytes) -> bytes | None:
        key = self.keys.get(user)
        return None if key is None else decrypt(key, sealed, context)


def is_erased(data: Mapping[str, Any]) -> bool:
    return bool(data.get(ERASED))


async def load(conn: psycopg.AsyncConnection, users: Iterable[str | None], *, create: bool,
               lock: bool = True) -> KeyRing:
    """The keys of `users` in one round trip (two when some are new and `create`), held FOR SHARE (unless not
    `lock`) until the caller's transaction ends: an erasure (which updates the row) waits for a batch that read the
    key, and a batch that comes after it sees the user erased. Load before taking the log's lock."""
    wanted = sorted({u for u in users if u is not None})
    ring = KeyRing()
    if not wanted:
        return ring
    async with conn.cursor() as cur:
        await cur.execute(
            "SELECT user_id_hash, key FROM user_keys WHERE user_id_hash = ANY(%s)" + (" FOR SHARE" if lock else ""),
            [wanted])
        for user, key in await cur.fetchall():
            ring.keys[user] = None if key is None else bytes(key)
        missing = [u for u in wanted if u not in ring.keys]
        if create and missing:
            # Sorted, so two batches creating the same users lock them in one order.
            await cur.execute(
                "INSERT INTO user_keys (user_id_hash, key) SELECT u, k FROM unnest(%s::text[], %s::bytea[]) x(u, k)"
                " ON CONFLICT DO NOTHING RETURNING user_id_hash, key",
                [missing, [new_key() for _ in missing]],
            )
            for user, key in await cur.fetchall():
                ring.keys[user] = bytes(key)
            raced = [u for u in missing if u not in ring.keys]  # created by another transaction meanwhile
            if raced:
                await cur.execute(
                    "SELECT user_id_hash, key FROM user_keys WHERE user_id_hash = ANY(%s) FOR SHARE", [raced])
                for user, key in await cur.fetchall():
                    ring.keys[user] = None if key is None else bytes(key)
    return ring


async def opened(conn: psycopg.AsyncConnection, events: Sequence[StoredEvent]) -> list[StoredEvent]:
    """Log entries as read from the log, in their stored form (KeyRing.open), with the keys of every user they
    name loaded in one query, not locked."""
    ring = await load(conn, [u for e in events for u in readers(e.data)], create=False, lock=False)
    return [replace(e, data=ring.open(e.data)) for e in events]


async def shred(conn: psycopg.AsyncConnection, user: str) -> None:
    """Delete the user's key inside the caller's transaction (the erasure's); its row stays, saying the user is
    erased. Reads nothing back, so it can go in a pipeline with what follows it."""
    await conn.execute(
        "INSERT INTO user_keys (user_id_hash, key, erased_at) VALUES (%s, NULL, now())"
        " ON CONFLICT (user_id_hash) DO UPDATE SET key = NULL, erased_at = coalesce(user_keys.erased_at, now())",
        [user],
    )
