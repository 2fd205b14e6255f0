"""Every example message of the README, sent as raw JSON bytes on the feedback topic, is stored as it was sent
(real broker, real `flywheel worker`, real Postgres)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest
from kafka import KafkaProducer

from flywheel.domain.wire import EVENT_TYPES
from flywheel.settings import Settings
from store.db import connect_sync
from store.keys import PERSONAL, SEALED, KeyRing
from streams.topics import ensure_topics
from tests.conftest import wait_until
from tests.readme_examples import wire_examples

pytestmark = pytest.mark.integration


def test_every_readme_example_sent_as_raw_bytes_is_stored(
    settings: Settings, start_worker: Callable[..., subprocess.Popen[bytes]],
) -> None:
    raws = wire_examples()
    examples = [json.loads(raw) for raw in raws]
    assert sorted(e["type"] for e in examples) == sorted(EVENT_TYPES)
    # The comparison compares the first interaction with the one the regeneration produced, which the README
    # does not show: the same interaction again under that id, so that both sides exist.
    regenerated = next(e for e in examples if e["type"] == "regenerate")["payload"]["new_interaction_id"]
    first = next(e for e in examples if e["type"] == "interaction")
    second = {**first, "event_id": "6f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0", "interaction_id": regenerated,
              "occurred_at": "2026-12-01T09:31:41Z",
              "payload": {**first["payload"], "response": "Open Settings, then Security, then Reset password."}}
    messages = [((e.get("interaction_id") or e["user"]["id_hash"]).encode(), raw)
                for e, raw in zip(examples, raws, strict=True)]
    messages.insert(1, (regenerated.encode(), json.dumps(second).encode()))

    ensure_topics(settings.kafka_bootstrap, settings)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    for key, value in messages:
        producer.send(settings.feedback_topic, key=key, value=value)
    producer.flush()
    producer.close()
    worker = start_worker()

    ids = [e["event_id"] for e in examples]

    def stored() -> dict[str, dict[str, object]]:
        with connect_sync(settings.database_url) as conn:
            rows = conn.execute("SELECT event_id::text, type, data FROM events WHERE event_id = ANY(%s::uuid[])",
                                [ids]).fetchall()
        return {event_id: {"type": kind, "data": data} for event_id, kind, data in rows}

    wait_until(lambda: worker.poll() is None and len(stored()) == len(ids), timeout=120,
               what="every README example stored")
    rows = stored()
    with connect_sync(settings.database_url) as conn:
        ring = KeyRing({u: None if k is None else bytes(k)
                        for u, k in conn.execute("SELECT user_id_hash, key FROM user_keys").fetchall()})
    for example in examples:
        row = rows[example["event_id"]]
        assert row["type"] == example["type"]
        # The log holds the personal fields sealed under the user's key (store.keys): opened, the event is as sent.
        personal = [f for f in PERSONAL.get(example["type"], ()) if f in example["payload"]]
        assert (SEALED in row["data"]) == bool(personal)
        assert not any(f in row["data"]["payload"] for f in personal)
        # An erasure is stored with what it removed from rounds published before it (none here), counts only.
        opened = {k: v for k, v in ring.open(row["data"]).items() if example["type"] != "erasure"
                  or k not in ("exposure", "prompt_keys")}
        assert opened == example, f"{example['type']} is stored as sent (nothing in it to redact)"
    with connect_sync(settings.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)
