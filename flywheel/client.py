"""Producer SDK for apps: validated feedback events onto flywheel.feedback, keyed by interaction_id."""

from __future__ import annotations

from concurrent.futures import Future
from types import TracebackType
from typing import Any

import orjson
from kafka import KafkaProducer

from flywheel.events import FeedbackEvent, to_wire
from flywheel.ingest import OVERSIZE, InvalidEvent, validate


class FeedbackClient:
    """Validates before sending (raises InvalidEvent), batches in the producer, flushes on close.

    Delivery is at-least-once; the store de-duplicates on event_id, so a retried send is harmless.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str = "flywheel.feedback",
        max_event_bytes: int = 256 * 1024,
        linger_ms: int = 20,
        batch_bytes: int = 256 * 1024,
        **producer_config: Any,
    ) -> None:
        self.topic = topic
        self.max_event_bytes = max_event_bytes
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=linger_ms,
            batch_size=batch_bytes,
            max_request_size=max(1024 * 1024, max_event_bytes * 2),
            retries=5,
            # Idempotence needs broker support some Kafka-protocol brokers lack; event_id dedup covers it.
            enable_idempotence=False,
            **producer_config,
        )

    def send(self, event: FeedbackEvent | dict[str, Any]) -> Future[Any]:
        """Queue one event; returns a future of the broker's record metadata."""
        model = validate(event) if isinstance(event, dict) else event
        value = orjson.dumps(to_wire(model))
        if len(value) > self.max_event_bytes:
            raise InvalidEvent(OVERSIZE, f"{len(value)} bytes > limit {self.max_event_bytes}")
        return self._producer.send(self.topic, key=model.interaction_id.encode(), value=value)

    def send_raw(self, key: bytes | None, value: bytes) -> Future[Any]:
        """Send bytes unvalidated: for replaying captured traffic and for testing the dead-letter path."""
        return self._producer.send(self.topic, key=key, value=value)

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        self._producer.flush(timeout)
        self._producer.close(timeout)

    def __enter__(self) -> FeedbackClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
