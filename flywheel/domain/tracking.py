"""Where a partition's ingest resumes: the pure rules behind the tracking rows (store.ingest applies them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class TrackedBeyondLogEnd(RuntimeError):
    """The store has read a partition further than the broker's log now reaches (truncation, an unclean leader
    election): offsets below the tracked one are being written again, and nothing says which are new."""

    def __init__(self, topic: str, partition: int, tracked: int, log_end: int) -> None:
        super().__init__(
            f"{topic}[{partition}]: the store has offset {tracked}, but the broker's log ends at {log_end}: the log "
            f"was truncated under the consumer. Nothing is read from it until an operator decides: `flywheel "
            f"tracking reset --topic {topic} --partition {partition} --to start` (read it all again; events already "
            f"stored are dropped by their event id) or `--to end` (skip what is there now)")
        self.topic, self.partition, self.tracked, self.log_end = topic, partition, tracked, log_end


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume:
    """What to do with one partition's part of a consumed batch."""

    floor: int | None  # a message must have a larger offset to be new; None: rewind instead
    rewind_to: int | None  # re-read from here: the broker is ahead of the store
    redelivered: int  # messages at or below the tracked offset (already stored)
    gap: tuple[int, int] | None = None  # offsets [start, end) at which the broker holds no message


def next_offset(tracked: int, tracked_id: str | None, current_id: str | None) -> int:
    """The next offset to read of a topic whose id is now `current_id`, from a tracking row at `tracked` written
    while its id was `tracked_id`: a row of a topic since created again (another id) counts for nothing. A row or a
    broker that gives no id (an older row, an older broker) is taken as the same log."""
    same = current_id is None or tracked_id is None or tracked_id == current_id
    return tracked + 1 if same else 0


def needs_probe(tracked: int, offsets: Sequence[int]) -> bool:
    """Whether the batch skips past what the store has, so the broker must say what lies between."""
    new = [o for o in offsets if o > tracked]
    return bool(new) and min(new) > tracked + 1


def resume(topic: str, partition: int, tracked: int, offsets: Sequence[int], *, log_end: int | None,
           first_available: int | None, probed: bool) -> Resume:
    """Decide from the stored offset `tracked` and a batch's `offsets` (one partition).

    Messages at or below `tracked` are redeliveries, unless the broker's `log_end` is at or below `tracked` too:
    then the log was truncated and they are new messages at reused offsets (TrackedBeyondLogEnd).

    A batch whose first new offset is past `tracked + 1` leaves offsets unread. Kafka's logs have gaps
    (transaction markers, compaction, retention), so the broker is asked (`probed`) for the first offset it
    holds from `tracked + 1` on (`first_available`, None for none): if that is the batch's first new message,
    the gap is real and the batch is taken; if it is earlier, the consumer is ahead of the store and rewinds
    there. A rewind is made only to an offset the broker holds, so it cannot repeat forever; without a probe
    (`probed` False), a partition with a stored offset rewinds and a fresh one is taken from where it starts.
    """
    new = [o for o in offsets if o > tracked]
    redelivered = len(offsets) - len(new)
    if redelivered and log_end is not None and log_end <= tracked:
        raise TrackedBeyondLogEnd(topic, partition, tracked, log_end)
    if not new or min(new) == tracked + 1:
        return Resume(floor=tracked, rewind_to=None, redelivered=redelivered)
    first = min(new)
    if probed:
        if first_available is not None and first_available < first:
            return Resume(floor=None, rewind_to=max(first_available, tracked + 1), redelivered=redelivered)
        return Resume(floor=tracked, rewind_to=None, redelivered=redelivered, gap=(tracked + 1, first))
    if tracked >= 0:
        return Resume(floor=None, rewind_to=tracked + 1, redelivered=redelivered)
    return Resume(floor=tracked, rewind_to=None, redelivered=redelivered)
