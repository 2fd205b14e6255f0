"""kafka-python clients as configured (admin, probes, producers), and topics made up front, never auto-created."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from contextlib import suppress
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaTimeoutError, TopicAlreadyExistsError

from flywheel.settings import PLAINTEXT, KafkaSecurity, Settings


class BrokerUnreachable(RuntimeError):
    """No broker answered at start-up, with the last reason the client gave (refused, TLS, authentication)."""


@contextlib.contextmanager
def _failures() -> Iterator[list[str]]:
    """What kafka-python says of each failed bootstrap connection: it logs and retries without raising, so a
    wrong password would otherwise read as a plain time-out."""
    reasons: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if found := re.match(r"Bootstrap (?:connection|attempt) to \S+ failed: (.*?)(?: \(backoff [^)]*\))?$",
                                 record.getMessage()):
                reasons.append(found.group(1))

    handler, logger = Keep(logging.WARNING), logging.getLogger("kafka.net.manager")
    level, propagate = logger.level, logger.propagate
    if logger.getEffectiveLevel() > logging.WARNING:  # kept quiet: heard here, still not shown
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    logger.addHandler(handler)
    try:
        yield reasons
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _servers(bootstrap: str) -> list[tuple[str, int]]:
    out = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        out.append((host.strip("[]") or "localhost", int(port or 9092)))
    return out


def _tls_handshake(bootstrap: str, security: KafkaSecurity, timeout: float) -> None:
    """A TLS handshake with a bootstrap server, within `timeout`: kafka-python waits for ever on a port that does
    not speak TLS, and names no cause for a certificate it refuses."""
    context = security.ssl_context()
    assert context is not None
    failures = []
    for host, port in _servers(bootstrap):
        try:
            with socket.create_connection((host, port), timeout=timeout) as raw, \
                    context.wrap_socket(raw, server_hostname=host):
                return
        except (OSError, ssl.SSLError) as e:  # socket.timeout and SSLCertVerificationError are OSErrors
            why = "no TLS answer (is it a TLS port?)" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
            failures.append(f"{host}:{port}: {why}")
    raise BrokerUnreachable(f"TLS to Kafka failed ({security.describe()}, CA file {security.cafile or '(system)'}): "
                            + "; ".join(failures))


def admin_client(bootstrap: str, security: KafkaSecurity = PLAINTEXT, *, client_id: str = "flywheel-admin",
                 timeout: float = 30.0) -> KafkaAdminClient:
    """A kafka-python admin client, or BrokerUnreachable within about `timeout` seconds saying why (the broker
    refused the connection, the TLS handshake or the SASL authentication failed, or nothing answered)."""
    if security.tls:
        _tls_handshake(bootstrap, security, timeout)
    with _failures() as reasons:
        try:
            return KafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id,
                                    bootstrap_timeout_ms=int(timeout * 1000), **security.kafka_python())
        except KafkaTimeoutError:
            pass
    last = reasons[-1] if reasons else "no answer"
    if security.sasl and last == "'v'":  # kafka-python's SCRAM found no server signature: the broker said no
        last = "the broker refused the SASL credentials (no such user, or a wrong password)"
    hint = ("check FLYWHEEL_KAFKA_SECURITY_PROTOCOL (does the broker want TLS or SASL?)" if security.protocol ==
            "PLAINTEXT" else "check FLYWHEEL_KAFKA_SECURITY_PROTOCOL and FLYWHEEL_KAFKA_SASL_*/SSL_*")
    raise BrokerUnreachable(f"no Kafka broker at {bootstrap} could be used within {timeout:g}s with "
                            f"{security.describe()}: {' '.join(last.split())[:400]}; {hint}")


def producer(bootstrap: str, security: KafkaSecurity = PLAINTEXT, **config: Any) -> KafkaProducer:
    """A kafka-python producer that waits for every replica (acks=all) and reaches the brokers as configured."""
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False,
                         **security.kafka_python(), **config)


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
    admin = admin_client(bootstrap, settings.kafka_security())
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

    def __init__(self, bootstrap: str, security: KafkaSecurity = PLAINTEXT) -> None:
        self.bootstrap, self.security = bootstrap, security
        self._admin: KafkaAdminClient | None = None

    def __call__(self, topics: Iterable[str]) -> dict[str, str]:
        if self._admin is None:
            self._admin = admin_client(self.bootstrap, self.security, client_id="flywheel-topic-ids")
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


def _probe(bootstrap: str, security: KafkaSecurity) -> KafkaConsumer:
    # Never the one to create a topic (streams.topics.ensure_topics is): on a broker just restarted, a second
    # creator racing the first can replace a topic that already took messages.
    return KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                         client_id="flywheel-probe", allow_auto_create_topics=False, **security.kafka_python())


def first_offset(bootstrap: str, topic: str, partition: int, start: int, *, timeout: float = 10.0,
                 security: KafkaSecurity = PLAINTEXT) -> int | None:
    """The first offset at or after `start` that holds a message (None: none up to the log's end). Fetching reads
    past what holds none (transaction markers, compacted or expired records), as a consumer would."""
    consumer = _probe(bootstrap, security)
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


def log_ends(bootstrap: str, topic: str, near: dict[int, int], *, timeout: float = 10.0,
             security: KafkaSecurity = PLAINTEXT) -> dict[int, int]:
    """Each partition's log end (its high watermark), read from fetch responses: the local broker's ListOffsets
    answers wrongly. `near`: partition → an offset to fetch from (the stored one), so little is read."""
    consumer = _probe(bootstrap, security)
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


def topic_id(bootstrap: str, topic: str, security: KafkaSecurity = PLAINTEXT) -> str | None:
    ids = TopicIds(bootstrap, security)
    try:
        return ids([topic]).get(topic)
    finally:
        ids.close()


def describe(bootstrap: str, security: KafkaSecurity, names: Iterable[str], *,
             timeout: float = 10.0) -> dict[str, tuple[int, int] | None]:
    """Each topic's partition count and replication factor (its first partition's replicas) as the broker reports
    them; None for a topic it does not have. BrokerUnreachable when no broker answers within `timeout`."""
    admin = admin_client(bootstrap, security, client_id="flywheel-doctor", timeout=timeout)
    try:
        described = admin.describe_topics(sorted(set(names)))
    finally:
        admin.close()
    return {t["name"]: None if t.get("error_code") or not t["partitions"] else
            (len(t["partitions"]), len(t["partitions"][0]["replica_nodes"])) for t in described}
