"""The tracking rows against what the broker says (real Postgres): a recreated topic, a truncated log, a gap."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from flywheel.endpoints import Endpoints
from flywheel.tracking import TrackedBeyondLogEnd
from store.db import connect, connect_sync
from store.ingest import BatchOutcome, BrokerView, DeadLetter, Incoming, decode_message, ingest_batch
from tests.factories import interaction, raw

pytestmark = pytest.mark.integration


def batch(values: list[bytes], first: int = 0, topic: str = "feedback") -> list[Any]:
    return [decode_message(Incoming(topic, 0, first + k, b"k", v), max_event_bytes=1 << 18)
            for k, v in enumerate(values)]


def run(url: str, decoded: list[Any], broker: BrokerView) -> BatchOutcome:
    sent: list[DeadLetter] = []

    async def publish(dead: Any) -> None:
        sent.extend(dead)

    async def go() -> BatchOutcome:
        conn = await connect(url)
        try:
            return await ingest_batch(conn, decoded, consumer_group="g", publish=publish, broker=broker)
        finally:
            await conn.close()

    return asyncio.run(go())


def table(url: str, sql: str) -> list[tuple[Any, ...]]:
    with connect_sync(url) as conn:
        return conn.execute(sql).fetchall()


def test_a_topic_created_again_is_read_from_its_start_and_the_reset_is_recorded_once(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    old = [raw(interaction(f"old-{i}")) for i in range(5)] + [b"not json"]
    run(url, batch(old), BrokerView({"feedback": "id-1"}, {("feedback", 0): 6}))
    assert table(url, 'SELECT "offset", topic_id FROM tracking') == [(5, "id-1")]

    new = [raw(interaction(f"new-{i}")) for i in range(3)] + [b"not json either"]
    again = BrokerView({"feedback": "id-2"}, {("feedback", 0): 4})
    out = run(url, batch(new), again)
    assert out.recreated == {("feedback", 0): 5} and out.redelivered == 0
    assert out.stored == {"interaction": 3}
    assert table(url, 'SELECT "offset", topic_id FROM tracking') == [(3, "id-2")]
    # the same offset on each log is a dead letter of its own
    assert table(url, 'SELECT topic_id, "offset" FROM dead_letters ORDER BY 1') == [("id-1", 5), ("id-2", 3)]
    [(payload,)] = table(url, "SELECT data -> 'payload' FROM events WHERE type = 'tracking_reset'")
    assert payload["previous_offset"] == 5 and payload["offset"] == -1 and payload["reason"] == "topic_recreated"
    assert (payload["previous_topic_id"], payload["topic_id"]) == ("id-1", "id-2")

    redelivered = run(url, batch(new), again)
    assert redelivered.redelivered == 4 and not redelivered.recreated
    assert table(url, "SELECT count(*) FROM events WHERE type = 'tracking_reset'") == [(1,)]


def test_a_tracked_offset_past_the_log_end_stops_the_batch_and_writes_nothing(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    run(url, batch([raw(interaction(f"a-{i}")) for i in range(20)]), BrokerView({"feedback": "id-1"}))
    reused = [raw(interaction(f"b-{i}")) for i in range(5)]
    with pytest.raises(TrackedBeyondLogEnd, match=r"feedback\[0\]: the store has offset 19, but the broker's log "
                                                  r"ends at 5"):
        run(url, batch(reused), BrokerView({"feedback": "id-1"}, {("feedback", 0): 5}))
    assert table(url, "SELECT count(*) FROM events") == [(20,)]
    assert table(url, 'SELECT "offset" FROM tracking') == [(19,)]


def test_a_gap_the_broker_confirms_is_taken_and_an_unconfirmed_one_rewinds(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    run(url, batch([raw(interaction(f"a-{i}")) for i in range(3)]), BrokerView({"feedback": "id-1"}))
    asked: list[tuple[str, int, int]] = []

    def holding(first: int | None) -> Any:
        async def first_offset(topic: str, partition: int, start: int) -> int | None:
            asked.append((topic, partition, start))
            return first

        return first_offset

    ahead = batch([raw(interaction(f"b-{i}")) for i in range(2)], first=10)
    out = run(url, ahead, BrokerView({"feedback": "id-1"}, {("feedback", 0): 12}, holding(4)))
    assert out.rewind == {("feedback", 0): 4} and not out.stored
    out = run(url, ahead, BrokerView({"feedback": "id-1"}, {("feedback", 0): 12}, holding(10)))
    assert out.gaps == {("feedback", 0): (3, 10)} and sum(out.stored.values()) == 2
    assert asked == [("feedback", 0, 3), ("feedback", 0, 3)]
    assert table(url, 'SELECT "offset" FROM tracking') == [(11,)]
