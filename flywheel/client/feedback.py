"""Producer SDK for apps: validated feedback events onto flywheel.feedback, keyed by interaction_id.

`send` never blocks and never raises for the broker's sake: it validates (a bad event raises InvalidEvent at once),
queues, and returns. A background thread delivers with retries across broker outages. The queue is bounded in bytes;
what overflows goes to a local spill file, replayed once the broker is back (or, with overflow="drop", is dropped),
and every drop is counted (stats(), the `on_drop` callback, and the Prometheus counter
flywheel_client_dropped_total). Delivery is at-least-once: the store drops a repeated event by its event_id.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import orjson

from flywheel.client.senders import Sender, make_sender
from flywheel.client.spill import SpillFull, SpillWriter, claim, records, unclaimed
from flywheel.domain.validation import OVERSIZE, InvalidEvent, validate
from flywheel.domain.wire import FeedbackEvent, to_wire
from flywheel.settings import PLAINTEXT, KafkaSecurity

log = logging.getLogger("flywheel.client")
Overflow = Literal["spill", "drop"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientStats:
    queued: int  # accepted by send()
    delivered: int  # acknowledged by the broker
    spilled: int  # written to a spill file (the queue was full, or close() left them)
    replayed: int  # read back from a spill file for delivery
    dropped: int  # lost: overflow="drop", or the spill directory full
    pending: int  # in memory now, not yet acknowledged
    retries: int  # deliveries tried again after the broker failed them
    spill_bytes: int  # in this client's spill directory


class FeedbackClient:
    """Feedback events to Kafka, never blocking the app (see the module docstring)."""

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str = "flywheel.feedback",
        max_event_bytes: int = 256 * 1024,
        max_buffer_bytes: int = 32 * 1024 * 1024,
        overflow: Overflow = "spill",
        spill_dir: str | Path = ".flywheel-spill",
        max_spill_bytes: int = 1024 * 1024 * 1024,
        on_drop: Callable[[bytes | None, bytes, str], None] | None = None,
        sender: str = "kafka-python",
        retry_backoff: float = 0.5,
        security: KafkaSecurity = PLAINTEXT,
        **producer_config: Any,
    ) -> None:
        if overflow not in ("spill", "drop"):
            raise ValueError(f"overflow must be 'spill' or 'drop', not {overflow!r}")
        self.topic, self.max_event_bytes, self.max_buffer_bytes = topic, max_event_bytes, max_buffer_bytes
        self.overflow, self.on_drop = overflow, on_drop
        self.spill_dir = Path(spill_dir) / topic
        self._spill = SpillWriter(self.spill_dir, max_spill_bytes)
        self._make_sender = lambda: make_sender(sender, bootstrap, max_event_bytes=max_event_bytes,
                                                 security=security, **producer_config)
        self._backoff = retry_backoff
        self._lock = threading.Condition()
        self._queue: deque[tuple[bytes | None, bytes, _Replay | None]] = deque()
        self._replaying: list[_Replay] = []
        self._queued_bytes = 0
        self._in_flight = 0
        self._counts = dict.fromkeys(("queued", "delivered", "spilled", "replayed", "dropped", "retries"), 0)
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="flywheel-client", daemon=True)
        self._thread.start()
        _CLOSE_AT_EXIT.add(self)

    # ---- the app's side: never blocks on the broker ----

    def send(self, event: FeedbackEvent | dict[str, Any]) -> None:
        """Validate and queue one event (InvalidEvent at once when it is not valid)."""
        model = validate(event) if isinstance(event, dict) else event
        value = orjson.dumps(to_wire(model))
        if len(value) > self.max_event_bytes:
            raise InvalidEvent(OVERSIZE, f"{len(value)} bytes > limit {self.max_event_bytes}")
        # Keyed by its interaction; an erasure, about none, by its user.
        self._put((model.interaction_id or model.user.id_hash).encode(), value)

    def send_raw(self, key: bytes | None, value: bytes) -> None:
        """Queue bytes unvalidated: for replaying captured traffic and for testing the dead-letter path."""
        self._put(key, value)

    def _put(self, key: bytes | None, value: bytes) -> None:
        with self._lock:
            if self._closing:
                raise RuntimeError("the FeedbackClient is closed")
            self._counts["queued"] += 1
            if self._queued_bytes + len(value) > self.max_buffer_bytes:
                self._overflow(key, value, "the client's buffer is full (the broker is slow or away)")
                return
            self._queue.append((key, value, None))
            self._queued_bytes += len(value)
            self._lock.notify()

    def _overflow(self, key: bytes | None, value: bytes, why: str) -> None:
        """Spill or drop one record (lock held)."""
        if self.overflow == "spill":
            try:
                self._spill.write(key, value)
                self._counts["spilled"] += 1
                return
            except SpillFull as e:
                why = f"{why}; {e}"
        self._counts["dropped"] += 1
        _dropped_metric().inc()
        if self.on_drop is not None:
            self.on_drop(key, value, why)

    def stats(self) -> ClientStats:
        with self._lock:
            return ClientStats(**self._counts, pending=len(self._queue) + self._in_flight,
                               spill_bytes=self._spill.bytes)

    def flush(self, timeout: float | None = None) -> ClientStats:
        """Wait until everything queued (and replayable from spill) is delivered, at most `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._lock.notify_all()
            while self._queue or self._in_flight or self._replaying or self._spill.open or unclaimed(self.spill_dir):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._lock.wait(0.05 if left is None else min(0.05, left))
        return self.stats()

    def close(self, timeout: float | None = 30.0) -> ClientStats:
        """Deliver what it can within `timeout`, spill (or drop) the rest, stop. Returns the final counts."""
        self.flush(timeout)
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._thread.join(10)
        with self._lock:
            while self._queue:  # what the broker did not take in time: kept for the next client here
                key, value, origin = self._queue.popleft()
                if origin is None:  # a replayed record is still in its spill file
                    self._overflow(key, value, "closed before the broker took it")
            self._queued_bytes = 0
            self._spill.seal()
            for replay in self._replaying:
                replay.release()
            self._replaying.clear()
        _CLOSE_AT_EXIT.discard(self)
        return self.stats()

    def __enter__(self) -> FeedbackClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- the delivery thread ----

    def _run(self) -> None:
        sender: Sender | None = None
        try:
            while True:
                with self._lock:
                    if self._closing and not self._in_flight:
                        return
                if sender is None:
                    try:
                        sender = self._make_sender()
                    except Exception as e:  # the broker is away: keep everything and try again
                        log.info("feedback client: broker not reachable (%s); retrying", e)
                        self._sleep()
                        continue
                try:
                    delivered = self._deliver(sender)
                except Exception:  # a sender in an unknown state: its records stay queued, a new one takes over
                    log.exception("feedback client: delivery failed; starting a new producer")
                    sender.close()
                    sender, delivered = None, False
                if not delivered:
                    self._sleep()
        finally:
            if sender is not None:
                sender.close()

    def _sleep(self) -> None:
        with self._lock:
            if not self._closing:
                self._lock.wait(self._backoff)

    def _deliver(self, sender: Sender) -> bool:
        """Hand queued records to the sender and serve its callbacks; False when the broker refused them."""
        self._replay_spill()
        with self._lock:
            if not self._queue and not self._in_flight:
                self._lock.wait(0.05)
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), 2000))]
            self._queued_bytes -= sum(len(r[1]) for r in batch)
            self._in_flight += len(batch)
        for i, (key, value, origin) in enumerate(batch):
            try:
                sender.send(self.topic, key, value, self._done(key, value, origin))
            except Exception as e:  # not accepted now (no metadata, a full local queue): back to the queue
                with self._lock:
                    rest = batch[i:]
                    self._in_flight -= len(rest)
                    self._queue.extendleft(reversed(rest))
                    self._queued_bytes += sum(len(r[1]) for r in rest)
                    self._counts["retries"] += 1
                log.info("feedback client: the broker did not take a record (%s); retrying", e)
                sender.poll(0)
                return False
        sender.poll(0.01 if batch else 0.0)
        return True

    def _done(self, key: bytes | None, value: bytes, origin: _Replay | None) -> Callable[[Exception | None], None]:
        def done(error: Exception | None) -> None:
            with self._lock:
                self._in_flight -= 1
                if error is None:
                    self._counts["delivered"] += 1
                    if origin is not None and origin.delivered_one():
                        self._replaying.remove(origin)
                        self._spill.bytes -= origin.size
                else:  # failed after the sender's own retries: queue it again
                    self._counts["retries"] += 1
                    self._queue.appendleft((key, value, origin))
                    self._queued_bytes += len(value)
                self._lock.notify_all()

        return done

    def _replay_spill(self) -> None:
        """Move spilled records back into the queue while it has room (a spill file is removed once every record
        read from it is delivered), when the queue is idle: the broker takes records again."""
        with self._lock:  # sealed and claimed at once: flush() never sees the records in neither place
            if self._closing or self._queued_bytes > self.max_buffer_bytes // 2:
                return
            if not self._replaying:
                if self._queue or self._in_flight:
                    return
                self._spill.seal()
                self._replaying.extend(_Replay(path, handle) for path, handle in claim(self.spill_dir))
        for replay in list(self._replaying):
            with self._lock:  # a replay's counts change under the lock only (deliveries count on another thread)
                if replay not in self._replaying:  # its last record was delivered meanwhile
                    continue
                taken = replay.take(self.max_buffer_bytes // 2)
                self._queue.extend((key, value, replay) for key, value in taken)
                self._queued_bytes += sum(len(v) for _, v in taken)
                self._counts["replayed"] += len(taken)
                if replay.delivered_one(0):  # an empty file
                    self._replaying.remove(replay)
                    self._spill.bytes -= replay.size


class _Replay:
    """A claimed spill file being replayed: removed once every record read from it is delivered."""

    def __init__(self, path: Path, handle: Any) -> None:
        self.path, self.handle, self.size = path, handle, path.stat().st_size
        self._records = records(path)
        self._read_all, self._outstanding = False, 0

    def take(self, budget: int) -> list[tuple[bytes | None, bytes]]:
        out: list[tuple[bytes | None, bytes]] = []
        while not self._read_all and budget > 0:
            record = next(self._records, None)
            if record is None:
                self._read_all = True
                break
            out.append(record)
            budget -= len(record[1])
        self._outstanding += len(out)
        return out

    def delivered_one(self, count: int = 1) -> bool:
        """Count a delivery; True (the file removed) once all its records are read and delivered."""
        self._outstanding -= count
        if self._read_all and self._outstanding == 0:
            self.path.unlink(missing_ok=True)
            self.handle.close()
            return True
        return False

    def release(self) -> None:
        """Give the file up unfinished: it stays for the next client (its delivered records are sent again)."""
        self.handle.close()


class _Closer:
    """Closes the clients still open when the interpreter exits (their queue spills, not vanishes)."""

    def __init__(self) -> None:
        self._open: weakref.WeakSet[FeedbackClient] = weakref.WeakSet()
        self._registered = False

    def add(self, client: FeedbackClient) -> None:
        if not self._registered:
            atexit.register(self._close_all)
            self._registered = True
        self._open.add(client)

    def discard(self, client: FeedbackClient) -> None:
        self._open.discard(client)

    def _close_all(self) -> None:
        for client in list(self._open):
            client.close(timeout=5)


_CLOSE_AT_EXIT = _Closer()
_DROPPED: list[Any] = []


def _dropped_metric() -> Any:
    """The process's flywheel_client_dropped_total counter, registered on first use (not at import)."""
    if not _DROPPED:
        from prometheus_client import Counter

        _DROPPED.append(Counter("flywheel_client_dropped", "Feedback events a FeedbackClient dropped"))
    return _DROPPED[0]
