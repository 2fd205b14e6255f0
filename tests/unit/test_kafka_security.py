"""Kafka TLS and SASL: settings → KafkaSecurity → the configuration of every Kafka client Flywheel runs."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from flywheel.client import FeedbackClient
from flywheel.client.senders import KafkaPythonSender, LibrdkafkaSender
from flywheel.settings import Endpoints, KafkaSecurity, Settings
from streams import lag, topics
from streams.announcer import KafkaAnnouncer
from tests.tls import Certificates, make_certificates

PASSWORD = "pa55-w0rd-never-printed"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def sasl_ssl(monkeypatch: pytest.MonkeyPatch, certs: Certificates) -> Settings:
    for name, value in {"SECURITY_PROTOCOL": "SASL_SSL", "SSL_CAFILE": str(certs.ca),
                        "SASL_MECHANISM": "SCRAM-SHA-512", "SASL_USERNAME": "flywheel",
                        "SASL_PASSWORD": PASSWORD}.items():
        monkeypatch.setenv(f"FLYWHEEL_KAFKA_{name}", value)
    monkeypatch.setenv("FLYWHEEL_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("FLYWHEEL_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    return Settings()


def test_the_settings_make_each_client_librarys_configuration(sasl_ssl: Settings, certs: Certificates) -> None:
    security = sasl_ssl.kafka_security()
    assert security.kafka_python() == {
        "security_protocol": "SASL_SSL", "ssl_check_hostname": True, "ssl_cafile": str(certs.ca),
        "ssl_certfile": None, "ssl_keyfile": None, "ssl_password": None,
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "flywheel", "sasl_plain_password": PASSWORD}
    assert security.librdkafka() == {
        "security.protocol": "sasl_ssl", "ssl.ca.location": str(certs.ca), "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "flywheel", "sasl.password": PASSWORD}


def test_a_client_certificate_is_mutual_tls_for_every_library(certs: Certificates) -> None:
    security = KafkaSecurity(protocol="SSL", cafile=str(certs.ca), certfile=str(certs.cert), keyfile=str(certs.key))
    assert {k: v for k, v in security.kafka_python().items() if v} == {
        "security_protocol": "SSL", "ssl_check_hostname": True, "ssl_cafile": str(certs.ca),
        "ssl_certfile": str(certs.cert), "ssl_keyfile": str(certs.key)}
    assert security.librdkafka()["ssl.certificate.location"] == str(certs.cert)
    context = security.ssl_context()
    assert context is not None and context.get_ca_certs()[0]["subject"] == ((("commonName", "ca test CA"),),)
    assert isinstance(security.faust_credentials(), ssl.SSLContext)  # Faust's TLS-only credentials


def test_plaintext_is_the_default_and_sends_no_tls_or_sasl_settings() -> None:
    security = Settings().kafka_security()
    assert security.kafka_python() == {"security_protocol": "PLAINTEXT"}
    assert security.librdkafka() == {"security.protocol": "plaintext"}
    assert security.faust_credentials() is None


@pytest.mark.parametrize(("env", "message"), [
    ({"SECURITY_PROTOCOL": "SASL_SSL"}, "SASL_SSL needs FLYWHEEL_KAFKA_SASL_USERNAME and FLYWHEEL_KAFKA_SASL_PASSWORD"),
    ({"SECURITY_PROTOCOL": "SSL", "SSL_CAFILE": "/nonexistent/ca.pem"},
     "FLYWHEEL_KAFKA_SSL_CAFILE=/nonexistent/ca.pem: no such file"),
    ({"SSL_CAFILE": "{ca}"}, "does not use TLS"),
    ({"SECURITY_PROTOCOL": "SSL", "SSL_CERTFILE": "{ca}"}, "needs both FLYWHEEL_KAFKA_SSL_CERTFILE and"),
    ({"SECURITY_PROTOCOL": "SASL_PLAINTEXT", "SASL_MECHANISM": "GSSAPI"}, "kafka_sasl_mechanism"),
])
def test_incomplete_security_settings_are_refused_at_start_up(
    monkeypatch: pytest.MonkeyPatch, certs: Certificates, env: dict[str, str], message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(f"FLYWHEEL_KAFKA_{name}", value.format(ca=certs.ca))
    with pytest.raises(ValueError, match=message):
        Settings()


class Made(Exception):
    """Raised by a recording client class instead of connecting."""


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """The kafka-python clients streams.topics makes (admin, probes, producers), recorded instead of connecting."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def recording(kind: str) -> Any:
        def make(*args: Any, **kwargs: Any) -> Any:
            calls.append((kind, kwargs))
            raise Made(kind)
        return make

    for kind in ("KafkaAdminClient", "KafkaConsumer", "KafkaProducer"):
        monkeypatch.setattr(topics, kind, recording(kind))
    return calls


def _secured(calls: list[tuple[str, dict[str, Any]]], security: KafkaSecurity) -> set[str]:
    """The kinds of client made with every setting of `security`."""
    wanted = security.kafka_python()
    return {kind for kind, kwargs in calls if all(kwargs.get(k) == v for k, v in wanted.items())}


def test_the_admin_probes_and_producers_get_the_security_settings(
    sasl_ssl: Settings, made: list[tuple[str, dict[str, Any]]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    security = sasl_ssl.kafka_security()
    monkeypatch.setattr(topics, "_tls_handshake", lambda *a: None)  # no TLS server here: the clients are the point
    attempts = [
        lambda: topics.ensure_topics("127.0.0.1:1", sasl_ssl),
        lambda: topics.TopicIds("127.0.0.1:1", security)(["t"]),
        lambda: topics.first_offset("127.0.0.1:1", "t", 0, 0, security=security),
        lambda: topics.log_ends("127.0.0.1:1", "t", {0: 0}, security=security),
        lambda: topics.producer("127.0.0.1:1", security),
        lambda: KafkaAnnouncer("127.0.0.1:1", "rounds", security)({"round": 1}),
        lambda: lag.unread("127.0.0.1:1", "t", 1, [], security),
    ]
    for attempt in attempts:
        with pytest.raises(Made):
            attempt()
    assert len(made) == len(attempts)
    assert _secured(made, security) == {"KafkaAdminClient", "KafkaConsumer", "KafkaProducer"}
    assert all(kwargs["sasl_plain_password"] == PASSWORD for _, kwargs in made)


def test_the_bootstrap_announcer_carries_the_settings_security(sasl_ssl: Settings) -> None:
    from flywheel.bootstrap import announcer

    told = announcer(sasl_ssl, Endpoints("postgresql://u@h/db", "127.0.0.1:1"))
    assert isinstance(told, KafkaAnnouncer) and told.security == sasl_ssl.kafka_security()


def test_feedback_clients_kafka_python_sender_gets_the_security_settings(
    sasl_ssl: Settings, tmp_path: Path,
) -> None:
    security = sasl_ssl.kafka_security()
    sender = KafkaPythonSender("127.0.0.1:1", max_event_bytes=1024, security=security)
    try:
        assert {k: sender._producer.config[k] for k in security.kafka_python()} == security.kafka_python()
    finally:
        sender.close()
    client = FeedbackClient("127.0.0.1:1", spill_dir=tmp_path, security=security)
    try:
        made = client._make_sender()
        assert isinstance(made, KafkaPythonSender)
        assert made._producer.config["sasl_plain_username"] == "flywheel"
        made.close()
    finally:
        client.close(timeout=1)


def test_the_librdkafka_sender_gets_the_security_settings(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(Exception, match="ssl.ca.location"):  # librdkafka reads the CA file it was given
        LibrdkafkaSender("127.0.0.1:1", max_event_bytes=1024, security=KafkaSecurity(protocol="SSL", cafile=str(bogus)))


def test_the_faust_workers_get_the_security_settings(sasl_ssl: Settings, certs: Certificates) -> None:
    from streams.app import create_app
    from streams.generation_worker import create_generation_app

    endpoints = Endpoints("postgresql://u@h/db", "127.0.0.1:1")
    for app in (create_app(sasl_ssl, endpoints), create_generation_app(sasl_ssl, endpoints, lambda: None)):  # type: ignore[arg-type, return-value]
        auth = credentials_to_aiokafka_auth(app.conf.broker_credentials)
        assert (auth["security_protocol"], auth["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
        assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("flywheel", PASSWORD)
        assert auth["ssl_context"].get_ca_certs()[0]["subject"] == ((("commonName", "ca test CA"),),)


def test_the_password_is_never_in_a_repr_or_a_dump(sasl_ssl: Settings) -> None:
    for shown in (repr(sasl_ssl), str(sasl_ssl), repr(sasl_ssl.kafka_security()), sasl_ssl.model_dump_json(),
                  sasl_ssl.kafka_security().describe()):
        assert PASSWORD not in shown
    assert sasl_ssl.child_env()["FLYWHEEL_KAFKA_SASL_PASSWORD"] == PASSWORD  # a child process needs it


def test_a_scheduled_job_keeps_no_secret_and_reads_it_from_its_environment(sasl_ssl: Settings) -> None:
    from apscheduler.schedulers.background import BackgroundScheduler

    from flywheel.entrypoints.jobs import own_database_url
    from flywheel.entrypoints.scheduler import configure

    scheduler = BackgroundScheduler()
    with_password = sasl_ssl.model_copy(update={"database_url": "postgresql://flywheel_ingest:db-pw@h/db"})
    configure(scheduler, with_password, Endpoints(with_password.database_url, "127.0.0.1:1"))
    jobs = {j.id: j.kwargs for j in scheduler.get_jobs()}
    assert PASSWORD not in repr(jobs) and "db-pw" not in repr(jobs)
    kwargs = jobs["nightly_pipeline"]["settings"]
    assert "kafka_sasl_password" not in kwargs and "database_url" not in kwargs
    assert Settings(**kwargs).kafka_sasl_password.get_secret_value() == PASSWORD  # from the job's environment
    assert own_database_url(Settings(**kwargs)) == "postgresql://u@h/db"  # this process's FLYWHEEL_DATABASE_URL
