"""How FeedbackClient's delivery thread hands records to Kafka: kafka-python (the default) or librdkafka.

A sender accepts a record with a callback that is called once with None (acknowledged) or the error it failed with
after its own retries; `send` raises when it cannot take the record now (no metadata, a full local queue), and
the caller keeps the record. Only the delivery thread calls a sender.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from flywheel.settings import PLAINTEXT, KafkaSecurity

Done = Callable[[Exception | None], None]


class Sender(Protocol):
    def send(self, topic: str, key: bytes | None, value: bytes, done: Done) -> None: ...

    def poll(self, timeout: float) -> None: ...

    def close(self) -> None: ...


class KafkaPythonSender:
    """kafka-python's producer. About 9k events/s on one core here: its per-record work is Python."""

    def __init__(self, bootstrap: str, *, max_event_bytes: int, security: KafkaSecurity = PLAINTEXT,
                 **config: Any) -> None:
        from kafka import KafkaProducer

        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=config.pop("linger_ms", 20),
            batch_size=config.pop("batch_size", 256 * 1024),
            max_request_size=max(1024 * 1024, max_event_bytes * 2),
            retries=config.pop("retries", 5),
            # One request in flight per broker: a retried batch cannot overtake a later one, and the local broker
            # (tansu, memory storage) fails concurrent first writes to a partition (AlreadyExists at offset 0).
            max_in_flight_requests_per_connection=config.pop("max_in_flight_requests_per_connection", 1),
            max_block_ms=config.pop("max_block_ms", 1000),  # a send waits this long for metadata, then raises
            # Named, so that making the producer does not wait for a broker to tell its version (it waits 30 s for
            # an absent one): every broker since Kafka 2.6 speaks it.
            api_version=config.pop("api_version", (2, 6)),
            # Topics are made up front (streams.topics): a missing one is waited for, never made by a send, with
            # the broker's default partitions (a misspelt name would be a new topic; a memory-only broker just
            # restarted would race its own creation against `flywheel up`'s).
            allow_auto_create_topics=config.pop("allow_auto_create_topics", False),
            # Idempotence needs broker support some Kafka-protocol brokers lack; event_id dedup covers it.
            enable_idempotence=False,
            **security.kafka_python(),
            **config,
        )

    def send(self, topic: str, key: bytes | None, value: bytes, done: Done) -> None:
        future = self._producer.send(topic, key=key, value=value)
        future.add_callback(lambda _: done(None))
        future.add_errback(done)

    def poll(self, timeout: float) -> None:
        from kafka.errors import KafkaTimeoutError

        if timeout:
            with contextlib.suppress(KafkaTimeoutError):  # records still on their way: their callbacks come later
                self._producer.flush(timeout)

    def close(self) -> None:
        self._producer.close(timeout=5)


class LibrdkafkaSender:
    """confluent-kafka (librdkafka): the same records at tens of times kafka-python's rate
    (`pip install 'flywheel[librdkafka]'`)."""

    def __init__(self, bootstrap: str, *, max_event_bytes: int, security: KafkaSecurity = PLAINTEXT,
                 **config: Any) -> None:
        from confluent_kafka import Producer

        self._producer = Producer({
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": 20,
            "enable.idempotence": False,
            "message.max.bytes": max(1024 * 1024, max_event_bytes * 2),
            **security.librdkafka(),
            **config,
        })

    def send(self, topic: str, key: bytes | None, value: bytes, done: Done) -> None:
        def report(error: Any, _: Any) -> None:
            done(None if error is None else RuntimeError(str(error)))

        self._producer.produce(topic, key=key, value=value, on_delivery=report)  # BufferError: queue full
        self._producer.poll(0)

    def poll(self, timeout: float) -> None:
        self._producer.poll(timeout)

    def close(self) -> None:
        self._producer.flush(5)


def make_sender(name: str, bootstrap: str, *, max_event_bytes: int, security: KafkaSecurity = PLAINTEXT,
                **config: Any) -> Sender:
    if name == "kafka-python":
        return KafkaPythonSender(bootstrap, max_event_bytes=max_event_bytes, security=security, **config)
    if name == "librdkafka":
        return LibrdkafkaSender(bootstrap, max_event_bytes=max_event_bytes, security=security, **config)
    raise ValueError(f"unknown sender {name!r}: kafka-python or librdkafka")
