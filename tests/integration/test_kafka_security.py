"""A wrong password, certificate or protocol is a clear error at start-up, within its time-out, never a hang.

The local broker (tansu 0.6) cannot take a client through TLS or SASL (see README, Production): with
`--authentication` it offers SCRAM-SHA-512 but holds no user (its `user` command is refused by a broker that
requires authentication, and memory storage is per process), so every login is refused; that refusal is real.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from flywheel.settings import Endpoints, KafkaSecurity, Settings
from infra.stack import broker_bin, free_port, stop_pid
from streams.topics import BrokerUnreachable, admin_client
from tests.tls import make_certificates

pytestmark = pytest.mark.integration
PASSWORD = "pa55-w0rd-never-printed"


@pytest.fixture(scope="module")
def authenticating_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tansu broker that requires SASL authentication."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("auth-broker") / "broker.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([broker_bin(), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
                             "--advertised-listener-url", f"tcp://127.0.0.1:{port}",
                             "--storage-engine", "memory://tansu/", "--authentication"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert time.monotonic() < deadline and proc.poll() is None, "the authenticating broker did not start"
        time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_pid(proc.pid)
        proc.wait(10)
        log.close()


def scram(password: str = PASSWORD) -> KafkaSecurity:
    return KafkaSecurity(protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512", username="flywheel",
                         password=SecretStr(password))


def refused(bootstrap: str, security: KafkaSecurity, timeout: float = 5.0) -> tuple[str, float]:
    start = time.monotonic()
    with pytest.raises(BrokerUnreachable) as caught:
        admin_client(bootstrap, security, timeout=timeout)
    return str(caught.value), time.monotonic() - start


def test_a_wrong_sasl_password_is_a_clear_error_within_the_time_out(authenticating_broker: str) -> None:
    message, took = refused(authenticating_broker, scram("wrong"))
    assert "refused the SASL credentials" in message and "SCRAM-SHA-512 as flywheel" in message
    assert "wrong" not in message.replace("a wrong password", "")
    assert took < 15


def test_no_sasl_against_a_broker_that_requires_it_says_to_check_the_protocol(authenticating_broker: str) -> None:
    message, took = refused(authenticating_broker, KafkaSecurity())
    assert "with PLAINTEXT" in message and "FLYWHEEL_KAFKA_SECURITY_PROTOCOL" in message
    assert took < 15


def test_tls_to_a_port_without_tls_is_a_clear_error_not_a_hang(stack: Endpoints, tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    message, took = refused(stack.kafka_bootstrap, KafkaSecurity(protocol="SSL", cafile=str(certs.ca)), timeout=3)
    assert "no TLS answer (is it a TLS port?)" in message
    assert took < 10


def test_a_closed_port_is_a_clear_error_within_the_time_out() -> None:
    message, took = refused(f"127.0.0.1:{free_port()}", KafkaSecurity(), timeout=3)
    assert "ECONNREFUSED" in message
    assert took < 10


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[int]:
    """A TLS server with a certificate from a CA of its own (it speaks no Kafka: the handshake is the point)."""
    certs = make_certificates(tmp_path / "server", "server")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert, certs.key)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join(5)
    listener.close()


def test_a_certificate_from_another_ca_is_a_clear_error(tls_server: int, tmp_path: Path) -> None:
    other = make_certificates(tmp_path / "client", "other")
    message, took = refused(f"127.0.0.1:{tls_server}", KafkaSecurity(protocol="SSL", cafile=str(other.ca)))
    assert "CERTIFICATE_VERIFY_FAILED" in message and str(other.ca) in message
    assert took < 10


def test_a_worker_with_a_wrong_password_stops_at_start_up_saying_why(
    authenticating_broker: str, settings: Settings,
) -> None:
    env = settings.child_env()
    env.update(FLYWHEEL_KAFKA_BOOTSTRAP=authenticating_broker, FLYWHEEL_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
               FLYWHEEL_KAFKA_SASL_MECHANISM="SCRAM-SHA-512", FLYWHEEL_KAFKA_SASL_USERNAME="flywheel",
               FLYWHEEL_KAFKA_SASL_PASSWORD=PASSWORD)
    done = subprocess.run([sys.executable, "-m", "flywheel", "worker"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "refused the SASL credentials" in done.stderr and "Traceback" not in done.stderr
    assert PASSWORD not in done.stdout + done.stderr
