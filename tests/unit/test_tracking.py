"""Where ingest resumes on a partition: redeliveries, rewinds, gapped offsets and a truncated log (pure rules)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.domain.tracking import Resume, TrackedBeyondLogEnd, needs_probe, next_offset, resume


def test_a_batch_that_follows_the_stored_offset_is_taken() -> None:
    assert resume("t", 0, 9, [10, 11, 12], log_end=13, first_available=None, probed=False) == Resume(
        floor=9, rewind_to=None, redelivered=0)


def test_redelivered_messages_are_counted_and_left_out() -> None:
    r = resume("t", 0, 11, [9, 10, 11, 12], log_end=13, first_available=None, probed=False)
    assert r.floor == 11 and r.redelivered == 3 and r.rewind_to is None


def test_a_batch_past_the_stored_offset_rewinds_to_the_first_message_the_broker_holds() -> None:
    assert needs_probe(9, [15, 16])
    r = resume("t", 0, 9, [15, 16], log_end=17, first_available=10, probed=True)
    assert r.floor is None and r.rewind_to == 10


def test_a_gap_the_broker_confirms_is_passed_over_and_reported() -> None:
    r = resume("t", 0, 9, [12, 13], log_end=14, first_available=12, probed=True)
    assert r.floor == 9 and r.rewind_to is None and r.gap == (10, 12)


def test_a_fresh_partition_whose_log_starts_late_is_taken_from_its_start() -> None:
    r = resume("t", 0, -1, [500, 501], log_end=502, first_available=500, probed=True)
    assert r.floor == -1 and r.gap == (0, 500)


def test_a_tracked_offset_beyond_the_log_end_stops_with_the_facts() -> None:
    with pytest.raises(TrackedBeyondLogEnd) as e:
        resume("flywheel.feedback", 2, 800, [0, 1, 2], log_end=3, first_available=None, probed=False)
    message = str(e.value)
    assert "flywheel.feedback[2]" in message and "offset 800" in message and "ends at 3" in message
    assert "flywheel tracking reset --topic flywheel.feedback --partition 2 --to start" in message
    assert (e.value.tracked, e.value.log_end) == (800, 3)


def test_redeliveries_below_a_log_end_past_the_tracked_offset_are_only_redeliveries() -> None:
    assert resume("t", 0, 800, [790, 801], log_end=900, first_available=None, probed=False).redelivered == 1


@dataclass
class Consumer:
    """A consumer of a log with gaps: fetches up to `batch` messages from its position; a seek takes effect after
    `stale` more batches (what the fetcher or the stream had already buffered)."""

    log: list[int]
    batch: int
    stale: int
    position: int
    pending: list[int] = field(default_factory=list)
    countdown: int = 0

    def fetch(self) -> list[int]:
        start = bisect.bisect_left(self.log, self.position)
        out = self.log[start:start + self.batch]
        if out:
            self.position = out[-1] + 1
        if self.countdown:
            self.countdown -= 1
            if not self.countdown:
                self.position = self.pending.pop()
        return out

    def seek(self, offset: int) -> None:
        if self.stale:
            self.pending, self.countdown = [offset], self.stale
        else:
            self.position = offset


def first_at_or_after(log: list[int], offset: int) -> int | None:
    i = bisect.bisect_left(log, offset)
    return log[i] if i < len(log) else None


def ingest(log: list[int], consumer: Consumer, tracked: int = -1, max_batches: int = 10_000) -> list[int]:
    """The worker's loop over one partition, as store.ingest applies the rules; returns the offsets stored."""
    stored: list[int] = []
    for _ in range(max_batches):
        offsets = consumer.fetch()
        if not offsets:
            if tracked >= (log[-1] if log else -1) and not consumer.countdown:
                return stored
            continue
        probed = needs_probe(tracked, offsets)
        first = first_at_or_after(log, tracked + 1) if probed else None
        r = resume("t", 0, tracked, offsets, log_end=log[-1] + 1, first_available=first, probed=probed)
        if r.rewind_to is not None:
            consumer.seek(r.rewind_to)
            continue
        new = [o for o in offsets if o > tracked]
        stored += new
        tracked = max(offsets[-1], tracked)
    raise AssertionError("the worker's loop did not finish: it rewinds forever")


def test_transaction_markers_between_every_batch_neither_loop_nor_skip() -> None:
    log = [o for o in range(200) if o % 5 != 4]  # every fifth offset a control record
    assert ingest(log, Consumer(log, batch=7, stale=0, position=0)) == log


def test_a_compacted_log_read_from_a_consumer_ahead_of_the_store() -> None:
    log = [0, 1, 7, 8, 9, 30, 31, 60]
    assert ingest(log, Consumer(log, batch=2, stale=2, position=30)) == log


@settings(max_examples=300, deadline=None)
@given(
    present=st.lists(st.booleans(), min_size=1, max_size=120),
    batch=st.integers(1, 9),
    stale=st.integers(0, 3),
    start=st.integers(0, 130),
)
def test_any_gapped_log_is_stored_once_whatever_the_consumer_position_and_buffering(
    present: list[bool], batch: int, stale: int, start: int
) -> None:
    log = [o for o, kept in enumerate(present) if kept]
    if not log:
        return
    # A consumer anywhere up to the last message: one past it sees nothing until traffic brings a message, whose
    # batch then rewinds like any other.
    stored = ingest(log, Consumer(log, batch=batch, stale=stale, position=min(start, log[-1])))
    assert stored == log


def test_a_row_of_a_topic_created_again_counts_for_nothing() -> None:
    assert next_offset(41, "id-1", "id-1") == 42
    assert next_offset(41, "id-1", "id-2") == 0
    assert next_offset(41, None, "id-2") == 42  # a row from before topic ids were kept: taken as the same log
    assert next_offset(41, "id-1", None) == 42  # a broker that gives no id
