"""Topics are created with the partition counts and replication factor the settings give (real broker)."""

from __future__ import annotations

import pytest

from flywheel.settings import Settings
from streams.topics import ensure_topics, new_topics

pytestmark = pytest.mark.integration


def test_topics_take_their_partition_counts_from_the_settings(settings: Settings) -> None:
    generation = f"generation-{settings.consumer_group}"  # the fixture's settings share the default one
    wanted = settings.model_copy(update={"partitions": 3, "deadletter_partitions": 2, "rounds_partitions": 5,
                                         "generation_topic": generation})
    counts = ensure_topics(settings.kafka_bootstrap, wanted)
    assert counts == {settings.feedback_topic: 3, settings.deadletter_topic: 2, settings.rounds_topic: 5,
                      generation: 3}


def test_every_topic_takes_the_replication_factor_of_the_settings(settings: Settings) -> None:
    """It was hard-coded to 1 (the local broker accepts any factor, so this reads what would be asked of it)."""
    topics = new_topics(settings.model_copy(update={"replication_factor": 3}))
    assert set(topics) == {settings.feedback_topic, settings.deadletter_topic, settings.rounds_topic,
                           settings.generation_topic}
    assert {t.replication_factor for t in topics.values()} == {3}
