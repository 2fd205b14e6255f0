"""Round changes announced on the rounds topic (kafka-python), each waiting for the broker's ack."""

from __future__ import annotations

import importlib
import threading
from typing import Any

import orjson


class KafkaAnnouncer:
    """The Announcer port on the rounds topic."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic

    def prepare(self) -> None:
        """Begin importing kafka-python (a few tenths of a second) in the background, so it is done by the time a
        change is announced. A round build calls this once every row is read, long after its builder process was
        forked: a fork is only made while this process runs a single thread (flywheel.runtime.round_builder)."""
        threading.Thread(target=importlib.import_module, args=("kafka",), name="import-kafka", daemon=True).start()

    def __call__(self, message: dict[str, Any]) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=False)
        try:
            producer.send(self.topic, value=orjson.dumps(message, option=orjson.OPT_SORT_KEYS)).get(timeout=30)
        finally:
            producer.close()


class Silent:
    """An Announcer that tells no one (a build or rollback run without a broker)."""

    def prepare(self) -> None:
        pass

    def __call__(self, message: dict[str, Any]) -> None:
        pass
