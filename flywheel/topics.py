"""Topic creation up front (kafka-python admin): the worker never relies on broker auto-creation."""

from __future__ import annotations

from contextlib import suppress

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from flywheel.settings import Settings


def ensure_topics(bootstrap: str, settings: Settings) -> dict[str, int]:
    """Create the missing topics; returns every topic's partition count as the broker reports it."""
    wanted = {
        settings.feedback_topic: settings.partitions,
        settings.deadletter_topic: 1,
        settings.rounds_topic: 1,
        settings.generation_topic: settings.partitions,
    }
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="flywheel-admin")
    try:
        missing = [name for name in wanted if name not in set(admin.list_topics())]
        for name in missing:
            with suppress(TopicAlreadyExistsError):  # another process created it between list and create
                admin.create_topics([NewTopic(name, num_partitions=wanted[name], replication_factor=1)])
        return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(wanted))}
    finally:
        admin.close()
