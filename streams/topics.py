"""Topic creation up front (kafka-python admin): the worker never relies on broker auto-creation."""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import suppress

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from flywheel.settings import Settings


def new_topics(settings: Settings) -> dict[str, NewTopic]:
    """Every topic Flywheel uses, with the partition count and replication factor the settings give it."""
    partitions = {
        settings.feedback_topic: settings.partitions,
        settings.deadletter_topic: settings.deadletter_partitions,
        settings.rounds_topic: settings.rounds_partitions,
        settings.generation_topic: settings.partitions,
    }
    return {name: NewTopic(name, num_partitions=n, replication_factor=settings.replication_factor)
            for name, n in partitions.items()}


def ensure_topics(bootstrap: str, settings: Settings) -> dict[str, int]:
    """Create the missing topics; returns every topic's partition count as the broker reports it."""
    wanted = new_topics(settings)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="flywheel-admin")
    try:
        missing = [name for name in wanted if name not in set(admin.list_topics())]
        for name in missing:
            with suppress(TopicAlreadyExistsError):  # another process created it between list and create
                admin.create_topics([wanted[name]])
        return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(wanted))}
    finally:
        admin.close()


class TopicIds:
    """The broker's id of each topic (Metadata v10+, which kafka-python's admin asks for and aiokafka's client does
    not): a topic deleted and created again, or a memory-only broker restarted, has a new one."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._admin: KafkaAdminClient | None = None

    def __call__(self, topics: Iterable[str]) -> dict[str, str]:
        if self._admin is None:
            self._admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="flywheel-topic-ids")
        try:
            described = self._admin.describe_topics(sorted(set(topics)))
        except Exception:
            self.close()  # a broker that went away: connect afresh next time
            raise
        return {t["name"]: str(t["topic_id"]) for t in described if t.get("topic_id") and not t.get("error_code")}

    def close(self) -> None:
        if self._admin is not None:
            admin, self._admin = self._admin, None
            admin.close()


def _probe(bootstrap: str) -> KafkaConsumer:
    # Never the one to create a topic (streams.topics.ensure_topics is): on a broker just restarted, a second
    # creator racing the first can replace a topic that already took messages.
    return KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                         client_id="flywheel-probe", allow_auto_create_topics=False)


def first_offset(bootstrap: str, topic: str, partition: int, start: int, *, timeout: float = 10.0) -> int | None:
    """The first offset at or after `start` that holds a message (None: none up to the log's end). Fetching reads
    past what holds none (transaction markers, compacted or expired records), as a consumer would."""
    consumer = _probe(bootstrap)
    tp = TopicPartition(topic, partition)
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            held = [r.offset for r in consumer.poll(timeout_ms=200).get(tp, []) if r.offset >= start]
            if held:
                return int(held[0])
            end = consumer.highwater(tp)
            if end is not None and consumer.position(tp) >= end:
                return None
        raise TimeoutError(f"{topic}[{partition}]: no answer from the broker for offset {start} in {timeout:g}s")
    finally:
        consumer.close()


def log_ends(bootstrap: str, topic: str, near: dict[int, int], *, timeout: float = 10.0) -> dict[int, int]:
    """Each partition's log end (its high watermark), read from fetch responses: the local broker's ListOffsets
    answers wrongly. `near`: partition → an offset to fetch from (the stored one), so little is read."""
    consumer = _probe(bootstrap)
    tps = {p: TopicPartition(topic, p) for p in near}
    try:
        consumer.assign(list(tps.values()))
        for p, tp in tps.items():
            consumer.seek(tp, max(0, near[p]))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            consumer.poll(timeout_ms=200)
            ends = {p: consumer.highwater(tp) for p, tp in tps.items()}
            if all(end is not None for end in ends.values()):
                return {p: int(end) for p, end in ends.items() if end is not None}
        raise TimeoutError(f"{topic}: the broker did not report every partition's log end in {timeout:g}s")
    finally:
        consumer.close()


def topic_id(bootstrap: str, topic: str) -> str | None:
    ids = TopicIds(bootstrap)
    try:
        return ids([topic]).get(topic)
    finally:
        ids.close()
