"""No credential is printed or logged: database URLs are shown masked, secrets are replaced in log records."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from flywheel.entrypoints.cli.common import hide_in_logs
from flywheel.settings import Settings, mask_url

PASSWORD = "pa55-w0rd-never-printed"


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://flywheel_ingest:s3cret@db:5432/flywheel?sslmode=verify-full",
     "postgresql://flywheel_ingest:***@db:5432/flywheel?sslmode=verify-full"),
    ("postgresql://postgres@127.0.0.1:5432/flywheel", "postgresql://postgres@127.0.0.1:5432/flywheel"),
    ("postgresql://:only-a-password@db/flywheel", "postgresql://:***@db/flywheel"),
    ("postgresql://u:p%40ss@[::1]:5432/f", "postgresql://u:***@[::1]:5432/f"),
    ("postgresql://u:pw@db:notaport/f", "postgresql://u:***@db:notaport/f"),
])
def test_a_database_url_is_shown_with_its_password_masked(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_the_settings_know_their_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_DATABASE_URL", "postgresql://flywheel_ingest:db-secret@db/flywheel")
    monkeypatch.setenv("FLYWHEEL_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("FLYWHEEL_KAFKA_SASL_USERNAME", "flywheel")
    monkeypatch.setenv("FLYWHEEL_KAFKA_SASL_PASSWORD", PASSWORD)
    assert sorted(Settings().secrets()) == sorted(["db-secret", PASSWORD])


@pytest.fixture
def restored_record_factory() -> Iterator[None]:
    from flywheel.entrypoints.cli import common

    factory, hidden = logging.getLogRecordFactory(), set(common._HIDDEN)
    common._HIDDEN.clear()
    yield
    logging.setLogRecordFactory(factory)
    common._HIDDEN.clear()
    common._HIDDEN.update(hidden)


def sasl_admin_configuration_logged(caplog: pytest.LogCaptureFixture) -> str:
    """What kafka-python logs at DEBUG when an admin client starts: its configuration, password included."""
    from kafka import KafkaAdminClient

    with caplog.at_level(logging.DEBUG, logger="kafka"), pytest.raises(Exception):  # noqa: B017 - any failure
        KafkaAdminClient(bootstrap_servers="127.0.0.1:1", bootstrap_timeout_ms=1, security_protocol="SASL_PLAINTEXT",
                         sasl_mechanism="PLAIN", sasl_plain_username="flywheel", sasl_plain_password=PASSWORD,
                         no_such_option=1)  # refused before connecting, after logging
    return caplog.text


def test_a_secret_a_library_logs_is_replaced(caplog: pytest.LogCaptureFixture, restored_record_factory: None) -> None:
    assert PASSWORD in sasl_admin_configuration_logged(caplog)  # without it, kafka-python shows the password
    caplog.clear()
    hide_in_logs([PASSWORD])
    logged = sasl_admin_configuration_logged(caplog)
    assert PASSWORD not in logged and "'sasl_plain_password': '***'" in logged
    logging.getLogger("flywheel.test").warning("connecting with %s", PASSWORD)
    assert caplog.records[-1].getMessage() == "connecting with ***"
    factory = logging.getLogRecordFactory()
    hide_in_logs(["another-secret"])  # a second call adds to what is hidden, without another factory
    assert logging.getLogRecordFactory() is factory
    logging.getLogger("flywheel.test").warning("%s and %s", PASSWORD, "another-secret")
    assert caplog.records[-1].getMessage() == "*** and ***"
