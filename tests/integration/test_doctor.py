"""`flywheel doctor` against the local stack, with one thing broken at a time."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import psycopg
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from flywheel.settings import Endpoints, Settings
from infra.stack import free_port
from tests.conftest import fresh_database

pytestmark = pytest.mark.integration


def doctor(settings: Settings, *args: str, **env: str) -> tuple[int, dict[str, Any], str]:
    """Run `flywheel doctor` as a process: exit code, its --json report, and its human output."""
    environ = {**settings.child_env(), **env}
    runs = [subprocess.run([sys.executable, "-m", "flywheel", "doctor", "--timeout", "3", *args, *extra],
                           env=environ, capture_output=True, text=True, timeout=120) for extra in (["--json"], [])]
    assert runs[0].returncode == runs[1].returncode, runs
    return runs[0].returncode, json.loads(runs[0].stdout), runs[1].stdout


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


def detail(report: dict[str, Any], name: str) -> str:
    return next(str(c["detail"]) for c in report["checks"] if c["name"] == name)


@pytest.fixture
def ready(settings: Settings) -> Settings:
    """The stack set up as configured (schema, roles, topics), with a generation topic and group of this test's."""
    tag = settings.consumer_group.rsplit("-", 1)[1]
    own = settings.model_copy(update={"generation_topic": f"generation-{tag}", "generation_group": f"gen-{tag}"})
    done = subprocess.run([sys.executable, "-m", "flywheel", "setup"], env=own.child_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return own


def test_all_well_is_one_screen_and_exit_0(ready: Settings) -> None:
    code, report, human = doctor(ready)
    assert code == 0 and report["ok"]
    assert statuses(report) == dict.fromkeys(("database", "schema", "clock", "kafka", "topics", "lag", "gen lag"),
                                             "ok")
    assert "everything checked is as configured" in human and len(human.splitlines()) == 8


def test_postgres_unreachable(ready: Settings) -> None:
    code, report, human = doctor(ready, FLYWHEEL_DATABASE_URL=f"postgresql://postgres:pw-for-no-one@127.0.0.1:"
                                                              f"{free_port()}/flywheel")
    assert code == 1
    assert statuses(report) == {"database": "fail", "schema": "skip", "clock": "skip", "kafka": "ok",
                                "topics": "ok", "lag": "skip", "gen lag": "ok"}
    assert "Connection refused" in detail(report, "database")
    assert "pw-for-no-one" not in human + json.dumps(report) and "postgres:***@127.0.0.1" in human
    assert "1 problem: database" in human


def test_kafka_unreachable_within_the_time_out(ready: Settings) -> None:
    start = time.monotonic()
    code, report, human = doctor(ready, FLYWHEEL_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",
                                 FLYWHEEL_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
                                 FLYWHEEL_KAFKA_SASL_USERNAME="flywheel", FLYWHEEL_KAFKA_SASL_PASSWORD="kafka-pw-42")
    assert code == 1 and time.monotonic() - start < 60
    assert statuses(report) == {"database": "ok", "schema": "ok", "clock": "ok", "kafka": "fail", "topics": "skip",
                                "lag": "skip", "gen lag": "skip"}
    assert "ECONNREFUSED" in detail(report, "kafka") and "SASL_PLAINTEXT PLAIN as flywheel" in detail(report, "kafka")
    assert "kafka-pw-42" not in human + json.dumps(report)


def test_a_topic_missing(ready: Settings) -> None:
    code, report, _ = doctor(ready, FLYWHEEL_ROUNDS_TOPIC="rounds-never-made")
    assert code == 1 and statuses(report)["topics"] == "fail"
    assert detail(report, "topics") == "rounds-never-made is missing (`flywheel setup` creates it)"


def test_a_topic_with_other_partitions_than_configured(ready: Settings) -> None:
    code, report, _ = doctor(ready, FLYWHEEL_DEADLETTER_PARTITIONS="3")
    assert code == 1 and statuses(report)["topics"] == "fail"
    assert detail(report, "topics") == f"{ready.deadletter_topic} has 1 partitions x 1 replicas, configured 3 x 1"


def test_the_schema_missing_or_outdated(ready: Settings, stack: Endpoints, endpoints: Endpoints) -> None:
    with fresh_database(stack.database_url, schema=False) as bare:
        code, report, _ = doctor(ready, FLYWHEEL_DATABASE_URL=bare)
        assert code == 1 and statuses(report)["schema"] == "fail"
        assert detail(report, "schema").startswith("tables missing: candidate_groups, checkpoints")
    with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE tracking DROP COLUMN topic_id")
    code, report, _ = doctor(ready)
    assert code == 1 and statuses(report)["schema"] == "fail"
    assert detail(report, "schema") == ("table tracking is outdated: columns topic_id differ (run `flywheel setup` "
                                        "as the database's owner)")
    assert statuses(report)["lag"] == "skip"


def test_lag_past_the_limit(ready: Settings) -> None:
    producer = KafkaProducer(bootstrap_servers=ready.kafka_bootstrap, acks="all")
    for _ in range(5):
        producer.send(ready.feedback_topic, key=b"k", value=b'{"not": "read"}').get(timeout=30)
    producer.close()
    code, report, _ = doctor(ready, "--max-lag", "4")
    assert code == 1 and statuses(report)["lag"] == "fail"
    assert detail(report, "lag").startswith(f"{ready.consumer_group} has 5 feedback messages unread (limit 4;")
    assert doctor(ready, "--max-lag", "5")[0] == 0


def test_generation_lag_past_the_limit(ready: Settings) -> None:
    """The generation workers' offsets are Kafka's: 5 requests on one partition, 2 committed by the group."""
    producer = KafkaProducer(bootstrap_servers=ready.kafka_bootstrap, acks="all")
    for _ in range(5):
        producer.send(ready.generation_topic, key=b"k", value=b"{}", partition=1).get(timeout=30)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=ready.kafka_bootstrap, group_id=ready.generation_group,
                             enable_auto_commit=False)
    consumer.commit({TopicPartition(ready.generation_topic, 1): OffsetAndMetadata(2, "", -1)})
    consumer.close()
    code, report, _ = doctor(ready, "--max-lag", "2")
    assert code == 1 and statuses(report)["gen lag"] == "fail" and statuses(report)["lag"] == "ok"
    assert detail(report, "gen lag") == f"{ready.generation_group} has 3 generation requests unread (limit 2)"
    assert doctor(ready, "--max-lag", "3")[0] == 0
