"""The tracking rows against what the broker says (real Postgres): a recreated topic, a truncated log, a gap."""

from __future__ import annotations

from typing import Any

import pytest

from flywheel.domain.tracking import TrackedBeyondLogEnd
from flywheel.settings import Endpoints
from store.ingest import BrokerView
from tests.factories import interaction, raw
from tests.integration.test_ingest_store import ingest, messages, query

pytestmark = pytest.mark.integration


def test_a_topic_created_again_is_read_from_its_start_and_the_reset_is_recorded_once(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    old = [raw(interaction(f"old-{i}")) for i in range(5)] + [b"not json"]
    ingest(url, messages(old), broker=BrokerView({"feedback": "id-1"}, {("feedback", 0): 6}))
    assert query(url, 'SELECT "offset", topic_id FROM tracking') == [(5, "id-1")]

    new = [raw(interaction(f"new-{i}")) for i in range(3)] + [b"not json either"]
    again = BrokerView({"feedback": "id-2"}, {("feedback", 0): 4})
    out = ingest(url, messages(new), broker=again)
    assert out.recreated == {("feedback", 0): 5} and out.redelivered == 0
    assert out.stored == {"interaction": 3}
    assert query(url, 'SELECT "offset", topic_id FROM tracking') == [(3, "id-2")]
    # the same offset on each log is a dead letter of its own
    assert query(url, 'SELECT topic_id, "offset" FROM dead_letters ORDER BY 1') == [("id-1", 5), ("id-2", 3)]
    [(payload,)] = query(url, "SELECT data -> 'payload' FROM events WHERE type = 'tracking_reset'")
    assert payload["previous_offset"] == 5 and payload["offset"] == -1 and payload["reason"] == "topic_recreated"
    assert (payload["previous_topic_id"], payload["topic_id"]) == ("id-1", "id-2")

    redelivered = ingest(url, messages(new), broker=again)
    assert redelivered.redelivered == 4 and not redelivered.recreated
    assert query(url, "SELECT count(*) FROM events WHERE type = 'tracking_reset'") == [(1,)]


def test_a_tracked_offset_past_the_log_end_stops_the_batch_and_writes_nothing(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    ingest(url, messages([raw(interaction(f"a-{i}")) for i in range(20)]), broker=BrokerView({"feedback": "id-1"}))
    reused = [raw(interaction(f"b-{i}")) for i in range(5)]
    with pytest.raises(TrackedBeyondLogEnd, match=r"feedback\[0\]: the store has offset 19, but the broker's log "
                                                  r"ends at 5"):
        ingest(url, messages(reused), broker=BrokerView({"feedback": "id-1"}, {("feedback", 0): 5}))
    assert query(url, "SELECT count(*) FROM events") == [(20,)]
    assert query(url, 'SELECT "offset" FROM tracking') == [(19,)]


def test_a_gap_the_broker_confirms_is_taken_and_an_unconfirmed_one_rewinds(endpoints: Endpoints) -> None:
    url = endpoints.database_url
    ingest(url, messages([raw(interaction(f"a-{i}")) for i in range(3)]), broker=BrokerView({"feedback": "id-1"}))
    asked: list[tuple[str, int, int]] = []

    def holding(first: int | None) -> Any:
        async def first_offset(topic: str, partition: int, start: int) -> int | None:
            asked.append((topic, partition, start))
            return first

        return first_offset

    ahead = messages([raw(interaction(f"b-{i}")) for i in range(2)], first_offset=10)
    out = ingest(url, ahead, broker=BrokerView({"feedback": "id-1"}, {("feedback", 0): 12}, holding(4)))
    assert out.rewind == {("feedback", 0): 4} and not out.stored
    out = ingest(url, ahead, broker=BrokerView({"feedback": "id-1"}, {("feedback", 0): 12}, holding(10)))
    assert out.gaps == {("feedback", 0): (3, 10)} and sum(out.stored.values()) == 2
    assert asked == [("feedback", 0, 3), ("feedback", 0, 3)]
    assert query(url, 'SELECT "offset" FROM tracking') == [(11,)]
