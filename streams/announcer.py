"""Round changes announced on the rounds topic (kafka-python), each waiting for the broker's ack."""

from __future__ import annotations

import importlib
import threading
from typing import Any

import orjson

from flywheel.settings import PLAINTEXT, KafkaSecurity


class KafkaAnnouncer:
    """The Announcer port on the rounds topic."""

    def __init__(self, bootstrap: str, topic: str, security: KafkaSecurity = PLAINTEXT) -> None:
        self.bootstrap, self.topic, self.security = bootstrap, topic, security

    def prepare(self) -> None:
        """Begin importing kafka-python (a few tenths of a second) in the background, so it is done by the time a
        change is announced. A round build calls this once every row is read, long after its builder process was
        forked: a fork is only made while this process runs a single thread (flywheel.runtime.round_builder)."""
        threading.Thread(target=importlib.import_module, args=("streams.topics",), name="import-kafka",
                         daemon=True).start()

    def producer(self) -> Any:
        from streams.topics import producer

        return producer(self.bootstrap, self.security)

    def __call__(self, message: dict[str, Any]) -> None:
        producer = self.producer()
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
