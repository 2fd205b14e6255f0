"""FeedbackClient as an app uses it, against a real broker that is away, comes up, goes and comes back, with a
real worker storing what arrives: nothing blocks the app, nothing is lost while the spill has room, nothing is
stored twice."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from flywheel.client import FeedbackClient
from flywheel.domain.validation import InvalidEvent
from flywheel.settings import Settings
from flywheel.simulator import generate
from infra.stack import free_port, start_broker, stop_pid
from store.db import connect_sync
from streams.topics import ensure_topics
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


class Outage:
    """A loopback TCP proxy in front of a broker that advertises the proxy's address, so every client reaches the
    broker through it: `cut()` makes the broker unreachable (connections dropped, new ones refused) without
    restarting it, `mend()` brings it back."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def mend(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            server, self._server, conns, self._conns = self._server, None, self._conns, []
        if server is not None:
            server.close()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                if self._server is not server:  # cut while this one was being accepted
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A broker of this test's own on a fixed port, started and stopped by the test (`up()`, `down()`)."""
    state: dict[str, Any] = {"port": free_port(), "pid": 0}

    def up() -> None:
        state["pid"] = start_broker(tmp_path / "broker.log", state["port"])

    def down() -> None:
        stop_pid(state["pid"])

    state.update(up=up, down=down, bootstrap=f"127.0.0.1:{state['port']}")
    yield state
    down()


@pytest.fixture
def reachable(tmp_path: Path) -> Iterator[tuple[str, Outage]]:
    """A running broker reached through an Outage proxy: (bootstrap, the proxy)."""
    port, target = free_port(), free_port()
    pid = start_broker(tmp_path / "broker.log", target, advertised=port)
    proxy = Outage(port, target)
    proxy.mend()
    try:
        yield f"127.0.0.1:{port}", proxy
    finally:
        proxy.cut()
        stop_pid(pid)


def events(n: int, seed: int) -> list[Any]:
    return [s.event for s in generate(n, seed=seed, bad_fraction=0.0) if s.event is not None][:n]


def stored(settings: Settings, expected: int) -> Callable[[], bool]:
    """Whether exactly `expected` feedback events are stored, none twice."""

    def check() -> bool:
        with connect_sync(settings.database_url) as conn:
            row = conn.execute("SELECT count(*), count(DISTINCT event_id) FROM events WHERE data ? 'user'").fetchone()
            tracking = conn.execute('SELECT partition, "offset" FROM tracking ORDER BY 1').fetchall()
        assert row is not None and row[0] == row[1]
        check.last = (row[0], tracking)  # type: ignore[attr-defined]
        return int(row[0]) == expected

    return check


def test_made_and_sending_while_the_broker_is_away_then_every_event_is_stored_once(
    broker: dict[str, Any], settings: Settings, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    sent = events(600, seed=21)
    dropped: list[str] = []
    started = time.monotonic()
    client = FeedbackClient(broker["bootstrap"], topic=settings.feedback_topic, spill_dir=tmp_path / "spill",
                            max_buffer_bytes=200_000, retry_backoff=0.2, on_drop=lambda k, v, why: dropped.append(why))
    for e in sent:
        client.send(e)
    with pytest.raises(InvalidEvent):
        client.send({"type": "thumbs"})
    assert time.monotonic() - started < 2, "the client blocked the app while the broker was away"
    away = client.stats()
    assert away.delivered == 0 and away.spilled > 0 and away.spilled + away.pending == len(sent)

    broker["up"]()
    on_broker = settings.model_copy(update={"kafka_bootstrap": broker["bootstrap"]})
    ensure_topics(broker["bootstrap"], on_broker)
    start_worker("worker", on_broker)
    done = client.flush(120)
    assert done.delivered >= len(sent) and done.pending == 0 and not dropped, done
    wait_until(stored(settings, len(sent)), timeout=120, what="every event stored once")
    final = client.close(10)
    assert final.dropped == 0 and not list((tmp_path / "spill").rglob("*.spill"))


def test_events_sent_while_the_broker_is_unreachable_arrive_after_it_returns(
    reachable: tuple[str, Outage], settings: Settings, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    bootstrap, outage = reachable
    on_broker = settings.model_copy(update={"kafka_bootstrap": bootstrap})
    ensure_topics(bootstrap, on_broker)
    start_worker("worker", on_broker)
    client = FeedbackClient(bootstrap, topic=settings.feedback_topic, spill_dir=tmp_path / "spill",
                            max_buffer_bytes=150_000, retry_backoff=0.2)
    first, second = events(300, seed=22), events(400, seed=23)
    for e in first:
        client.send(e)
    assert client.flush(60).delivered == len(first)
    wait_until(stored(settings, len(first)), timeout=120, what="the first batch stored")

    outage.cut()
    started = time.monotonic()
    for e in second:
        client.send(e)
    assert time.monotonic() - started < 2, "the client blocked the app while the broker was away"
    time.sleep(3)  # away for a while: the client retries, its buffer full, the rest spilled
    away = client.stats()
    assert away.spilled > 0 and away.delivered == len(first)

    outage.mend()
    assert client.flush(120).pending == 0
    wait_until(stored(settings, len(first) + len(second)), timeout=180,
               what="the events sent while the broker was away stored once")
    assert client.close(10).dropped == 0


def test_close_spills_what_the_broker_did_not_take_and_the_next_client_sends_it(
    broker: dict[str, Any], settings: Settings, tmp_path: Path
) -> None:
    sent = events(200, seed=24)
    client = FeedbackClient(broker["bootstrap"], topic=settings.feedback_topic, spill_dir=tmp_path / "spill",
                            retry_backoff=0.2)
    for e in sent:
        client.send(e)
    started = time.monotonic()
    closed = client.close(timeout=1)
    assert time.monotonic() - started < 5
    assert closed.spilled == len(sent) and closed.delivered == 0 and closed.dropped == 0

    broker["up"]()
    ensure_topics(broker["bootstrap"], settings.model_copy(update={"kafka_bootstrap": broker["bootstrap"]}))
    later = FeedbackClient(broker["bootstrap"], topic=settings.feedback_topic, spill_dir=tmp_path / "spill",
                           retry_backoff=0.2)
    done = later.close(timeout=60)
    assert done.replayed == len(sent) and done.delivered == len(sent)
    assert not list((tmp_path / "spill").rglob("*.spill"))


def test_overflow_drop_counts_every_drop_and_tells_the_app(broker: dict[str, Any], tmp_path: Path) -> None:
    dropped: list[str] = []
    client = FeedbackClient(broker["bootstrap"], spill_dir=tmp_path / "spill", overflow="drop",
                            max_buffer_bytes=20_000, on_drop=lambda k, v, why: dropped.append(why))
    for e in events(100, seed=25):
        client.send(e)
    stats = client.close(timeout=0.5)
    assert stats.dropped == len(dropped) == stats.queued - stats.delivered > 0
    assert "buffer is full" in dropped[0] and stats.spilled == 0


def test_the_librdkafka_sender_delivers_behind_the_same_interface(broker: dict[str, Any], settings: Settings,
                                                                  tmp_path: Path) -> None:
    from kafka import KafkaConsumer

    broker["up"]()
    ensure_topics(broker["bootstrap"], settings.model_copy(update={"kafka_bootstrap": broker["bootstrap"]}))
    sent = events(300, seed=26)
    with FeedbackClient(broker["bootstrap"], topic=settings.feedback_topic, spill_dir=tmp_path / "spill",
                        sender="librdkafka") as client:
        for e in sent:
            client.send(e)
        assert client.flush(60).delivered == len(sent)
    consumer = KafkaConsumer(settings.feedback_topic, bootstrap_servers=broker["bootstrap"],
                             auto_offset_reset="earliest", consumer_timeout_ms=3000)
    got = {orjson.loads(m.value)["event_id"] for m in consumer}
    consumer.close()
    assert got == {str(e.event_id) for e in sent}
