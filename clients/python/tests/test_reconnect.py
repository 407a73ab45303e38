"""Reconnect and resume end to end, for both clients: real `wsmuxd` processes whose endpoint
is a WebSocket server in this process (tests/wsserver.py), and for faults a real Unix-socket
proxy between client and daemon (tests/proxy.py) or the daemon itself stopped and started.

Each scenario is written once against the blocking API; for the asyncio client it drives an
``AsyncClient`` that runs on its own event loop thread (``AsyncOnLoop``), so both clients'
own code paths (reading, reconnecting, dispatching) are the ones under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import pytest
from conftest import Daemon
from proxy import UnixProxy
from wsserver import WsServer

import wsmux

TIMEOUT = 10.0

CONFIG = """
client_queue_messages = {queue}
drain_timeout = "0s"

[endpoints.feed]
url = "{url}"
reconnect = {{ initial_delay = "50ms" }}
"""


class AsyncOnLoop:
    """An :class:`wsmux.AsyncClient` on an event loop in its own thread, with the blocking
    client's methods: each coroutine method runs on that loop and is waited for here."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: wsmux.AsyncClient) -> None:
        self._loop = loop
        self._client = client

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if inspect.iscoroutinefunction(attr):
            return lambda *args, **kwargs: self._run(attr(*args, **kwargs))
        return attr

    def events(self, timeout: float | None = None) -> Iterator[wsmux.Event]:
        while True:
            event = self._run(self._client.next_event(timeout))
            if event is None:
                return
            yield event

    def wait_closed(self, timeout: float | None = None) -> bool:
        try:
            self._run(asyncio.wait_for(self._client.wait_closed(), timeout))
        except asyncio.TimeoutError:
            return False
        return True


Connect = Callable[..., Any]


@pytest.fixture(params=["blocking", "asyncio"])
def connect(request: pytest.FixtureRequest) -> Iterator[Connect]:
    """``connect(path, **options)``: a client of the kind under test."""
    made: list[Any] = []
    loop: asyncio.AbstractEventLoop | None = None
    thread: threading.Thread | None = None

    def make(path: str, **options: Any) -> Any:
        nonlocal loop, thread
        if request.param == "blocking":
            client: Any = wsmux.Client.connect(path, timeout=TIMEOUT, **options)
        else:
            if loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, daemon=True)
                thread.start()
            coro = wsmux.AsyncClient.connect(path, timeout=TIMEOUT, **options)
            client = AsyncOnLoop(loop, asyncio.run_coroutine_threadsafe(coro, loop).result())
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
    if loop is not None and thread is not None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()


@dataclass
class Rig:
    """An upstream, a daemon on ``socket`` and a proxy to it at ``proxy.path``."""

    up: WsServer
    config: str
    socket: str
    daemon: Daemon
    proxy: UnixProxy

    def restart(self) -> float:
        """Stops the daemon with SIGTERM and starts a new one on the same socket; returns
        when the new one listens (time.monotonic())."""
        assert self.daemon.terminate() == 0
        self.daemon.stop()
        self.daemon = Daemon(self.config, socket=self.socket)
        return time.monotonic()


def rig(queue: int = 1024) -> Iterator[Rig]:
    directory = tempfile.mkdtemp(prefix="wsmux-py-r-")
    with WsServer() as up:
        config = CONFIG.format(url=up.url, queue=queue)
        socket = os.path.join(directory, "d.sock")
        daemon = Daemon(config, socket=socket)
        proxy = UnixProxy(os.path.join(directory, "p.sock"), socket)
        env = Rig(up, config, socket, daemon, proxy)
        try:
            up.wait_connected(TIMEOUT)
            yield env
        finally:
            proxy.close()
            env.daemon.stop()
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def env() -> Iterator[Rig]:
    yield from rig()


@pytest.fixture
def small_queue() -> Iterator[Rig]:
    yield from rig(queue=16)


class Producer:
    """Publishes ``n=1, 2, ...`` upstream every ``interval`` seconds until stopped."""

    def __init__(self, up: WsServer, interval: float = 0.002) -> None:
        self._up = up
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self._interval):
            n += 1
            self._up.publish(f'{{"n":{n}}}')

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def read_until(
    client: Any, done: Callable[[list[wsmux.Event]], bool], timeout: float = TIMEOUT
) -> list[wsmux.Event]:
    """Events until ``done(events so far)`` holds; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    seen: list[wsmux.Event] = []
    while not done(seen):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {summary(seen)}")
        try:
            event = client.next_event(left)
        except TimeoutError:
            continue
        if event is None:
            raise AssertionError(f"the event stream ended after {summary(seen)}")
        seen.append(event)
    return seen


def summary(events: list[wsmux.Event]) -> str:
    """The events in short: their types, and the seq of messages."""
    return " ".join(
        f"message:{e.seq}" if isinstance(e, wsmux.Message) else type(e).__name__ for e in events
    )


def of(kind: type, events: list[wsmux.Event]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def seqs(events: list[wsmux.Event]) -> list[int]:
    return [e.seq for e in of(wsmux.Message, events)]


def assert_every_seq_once_in_order(events: list[wsmux.Event]) -> None:
    got = seqs(events)
    assert got, "no messages"
    assert got == list(range(got[0], got[0] + len(got))), f"gaps or repeats: {summary(events)}"


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


def test_after_a_daemon_restart_the_client_is_back_with_its_subscriptions_and_stickies(
    env: Rig, connect: Connect
) -> None:
    client = connect(env.socket)
    first = client.subscribe("feed")
    assert first.first_seq == 1 and first.recovered is None
    client.send("feed", "sticky-sub", sticky=True, timeout=TIMEOUT)
    env.up.wait_for(lambda r: r.count("sticky-sub") == 1, TIMEOUT)
    env.up.publish("before")
    read_until(client, lambda ev: any(m.data == "before" for m in of(wsmux.Message, ev)))
    old_epoch = client.epoch
    assert old_epoch

    listening = env.restart()
    events = read_until(client, lambda ev: bool(of(wsmux.Reconnected, ev)))
    took = time.monotonic() - listening
    print(f"reconnected {took * 1000:.0f} ms after the new daemon listened")
    assert took < TIMEOUT
    (disconnected,) = of(wsmux.Disconnected, events)
    assert events.index(disconnected) < len(events) - 1
    reconnected = events[-1]
    assert reconnected.new_epoch and not reconnected.recovered
    assert reconnected.epoch == client.epoch != old_epoch
    assert [(e.endpoint, e.recovered, e.error) for e in reconnected.endpoints] == [
        ("feed", False, None)
    ]
    # The daemon went down with the endpoint `closed`; the new one says what it is now.
    assert [s.state for s in of(wsmux.State, events)][-1] == "closed"

    # The sticky message reaches the new daemon's upstream connection, and messages flow.
    env.up.wait_for(lambda r: r.count("sticky-sub") == 2, TIMEOUT)
    read_until(client, lambda ev: any(s.is_open for s in of(wsmux.State, ev)))
    env.up.publish("after")
    after = read_until(client, lambda ev: any(m.data == "after" for m in of(wsmux.Message, ev)))
    assert of(wsmux.Message, after)[-1].seq == 1  # a new epoch counts from 1
    assert client.connected and not client.closed


def test_a_killed_connection_is_resumed_without_a_gap_or_a_repeat(
    env: Rig, connect: Connect
) -> None:
    producer = Producer(env.up)
    try:
        client = connect(env.proxy.path)
        client.subscribe("feed")
        events = read_until(client, lambda ev: len(seqs(ev)) >= 50)
        assert env.proxy.kill() == 1
        events += read_until(client, lambda ev: bool(of(wsmux.Reconnected, ev)))
        events += read_until(client, lambda ev: len(seqs(ev)) >= 100)
    finally:
        producer.stop()
    (reconnected,) = of(wsmux.Reconnected, events)
    assert len(of(wsmux.Disconnected, events)) == 1
    assert reconnected.recovered and not reconnected.new_epoch
    (entry,) = reconnected.endpoints
    assert entry.recovered
    before = [e.seq for e in events[: events.index(reconnected)] if isinstance(e, wsmux.Message)]
    assert entry.first_seq == before[-1] + 1
    assert_every_seq_once_in_order(events)
    assert env.proxy.accepted == 2


def test_without_reconnect_the_client_closes_with_the_connection(
    env: Rig, connect: Connect
) -> None:
    client = connect(env.proxy.path, reconnect=False)
    client.subscribe("feed")
    env.up.publish("one")
    read_until(client, lambda ev: bool(of(wsmux.Message, ev)))
    env.proxy.kill()
    rest = list(client.events(timeout=TIMEOUT))  # ends with the connection
    assert not of(wsmux.Disconnected, rest) and not of(wsmux.Reconnected, rest)
    assert client.wait_closed(TIMEOUT) and client.closed and not client.connected
    for request in (lambda: client.ping(), lambda: client.send("feed", "x")):
        with pytest.raises(wsmux.ConnectionClosed):
            request()
    assert env.proxy.accepted == 1


def test_sends_while_the_daemon_is_down_wait_in_a_bounded_buffer_or_fail(
    env: Rig, connect: Connect
) -> None:
    buffering = connect(env.socket)
    failing = connect(env.socket, when_disconnected="fail")
    small = connect(env.socket, max_buffered_bytes=512)
    one = connect(env.socket, max_buffered_sends=1)
    assert env.daemon.terminate() == 0
    for client in (buffering, failing, small, one):
        wait_until(lambda c=client: not c.connected, "the clients see the daemon go")

    with pytest.raises(wsmux.NotConnected, match="not connected to the daemon"):
        failing.send("feed", "never-failing")
    with pytest.raises(wsmux.LimitExceeded, match="max_buffered_bytes") as err:
        small.send("feed", "x" * 1024)
    assert err.value.limit == "max_buffered_bytes"
    with pytest.raises(TimeoutError):
        buffering.send("feed", "never-timed-out", timeout=0.2)  # removed from the buffer

    acked: list[Any] = []
    senders = [
        threading.Thread(target=lambda c=c, d=d: acked.append(c.send("feed", d, timeout=TIMEOUT)))
        for c, d in ((buffering, "buffered"), (one, "the-one"))
    ]
    for sender in senders:
        sender.start()
    wait_until(lambda: one.buffered_sends == 1, "the send waits in the buffer")
    with pytest.raises(wsmux.LimitExceeded, match="max_buffered_sends = 1"):
        one.send("feed", "one-too-many")  # the buffer is full
    env.daemon.stop()
    env.daemon = Daemon(env.config, socket=env.socket)
    for sender in senders:
        sender.join(TIMEOUT)
    assert [a["type"] for a in acked] == ["ack", "ack"]
    received = env.up.wait_for(lambda r: "buffered" in r and "the-one" in r, TIMEOUT)
    assert one.buffered_sends == 0
    # Written in order after the reconnect: anything of the others would be here by now.
    for never in ("never-timed-out", "never-failing", "one-too-many"):
        assert never not in received
    wait_until(lambda: failing.connected, "the failing client is back")
    assert failing.send("feed", "now-failing", timeout=TIMEOUT)["type"] == "ack"


def test_a_lagged_subscriber_resumes_and_sees_every_seq_once(
    small_queue: Rig, connect: Connect
) -> None:
    env = small_queue
    client = connect(env.proxy.path)
    watcher = connect(env.socket)
    client.subscribe("feed")
    env.up.publish('{"n":0}')
    events = read_until(client, lambda ev: len(seqs(ev)) == 1)
    # Not read, as far as the daemon can tell: its writes to the client pile up until its
    # queue for the client (16 messages) overflows.
    env.proxy.pause()
    pad = "p" * 2048
    total = 600
    for n in range(1, total + 1):
        env.up.publish(f'{{"n":{n},"pad":"{pad}"}}')

    def dropped() -> bool:
        (feed,) = watcher.status(timeout=TIMEOUT)
        return int(feed.get("lagged_drops", 0)) > 0 and int(feed["messages_in"]) > total

    wait_until(dropped, "the daemon drops messages for the paused client")
    env.proxy.resume()
    events += read_until(client, lambda ev: len(seqs(ev)) >= total)
    assert of(wsmux.Lagged, events), "the daemon never said lagged"
    resumed = of(wsmux.Resumed, events)
    assert resumed and all(r.recovered and r.endpoint == "feed" for r in resumed)
    assert_every_seq_once_in_order(events)
    assert seqs(events)[-1] == seqs(events)[0] + total
    assert not of(wsmux.Disconnected, events)


def test_close_while_reconnecting_ends_the_client_and_what_waits(
    env: Rig, connect: Connect
) -> None:
    client = connect(env.socket)
    client.subscribe("feed")
    assert env.daemon.terminate() == 0
    read_until(client, lambda ev: bool(of(wsmux.Disconnected, ev)))
    outcomes: dict[str, BaseException | None] = {}

    def run(name: str, request: Callable[[], Any]) -> threading.Thread:
        def target() -> None:
            try:
                request()
                outcomes[name] = None
            except BaseException as exc:
                outcomes[name] = exc

        thread = threading.Thread(target=target)
        thread.start()
        return thread

    # One waits for the reconnect, one waits in the send buffer.
    threads = [
        run("ping", lambda: client.ping(timeout=TIMEOUT)),
        run("send", lambda: client.send("feed", "x", timeout=TIMEOUT)),
    ]
    wait_until(lambda: len(outcomes) == 0 and all(t.is_alive() for t in threads), "both wait")
    started = time.monotonic()
    client.close()
    print(f"close() took {(time.monotonic() - started) * 1000:.0f} ms while reconnecting")
    for thread in threads:
        thread.join(TIMEOUT)
    assert sorted(outcomes) == ["ping", "send"]
    assert all(isinstance(e, wsmux.ConnectionClosed) for e in outcomes.values()), outcomes
    assert client.wait_closed(TIMEOUT) and client.closed
    assert not of(wsmux.Reconnected, list(client.events(timeout=TIMEOUT)))  # the stream ends


@contextlib.contextmanager
def stopped(daemon: Daemon) -> Iterator[None]:
    """The daemon process stopped (SIGSTOP): it neither reads nor answers until the end."""
    daemon.proc.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: _process_state(daemon.proc.pid) == "T", "the daemon is stopped")
        yield
    finally:
        daemon.proc.send_signal(signal.SIGCONT)


def _process_state(pid: int) -> str:
    """The state letter of a process (Linux ``/proc/PID/stat``): ``T`` once stopped."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


BIG = "x" * (2 << 20)  # more than the socket buffers hold


def test_a_request_to_a_daemon_that_does_not_read_times_out_in_time(
    env: Rig, connect: Connect
) -> None:
    client = connect(env.socket)
    outcome: list[BaseException | None] = []

    def send() -> None:
        try:
            client.send("feed", BIG, timeout=1.0)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 (the outcome is what is tested)
            outcome.append(exc)

    with stopped(env.daemon):
        started = time.monotonic()
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        sender.join(5.0)
        took = time.monotonic() - started
    assert outcome, "the send did not end within 5 s"
    print(f"the send ended after {took * 1000:.0f} ms")
    assert isinstance(outcome[0], TimeoutError), outcome


def test_a_write_the_daemon_does_not_take_ends_the_connection(env: Rig) -> None:
    client = wsmux.Client.connect(env.socket, timeout=TIMEOUT, request_timeout=1.0)
    try:
        client.subscribe("feed")
        with stopped(env.daemon):
            with pytest.raises(TimeoutError):
                client.send("feed", BIG)
            events = read_until(client, lambda ev: bool(of(wsmux.Disconnected, ev)))
        (disconnected,) = of(wsmux.Disconnected, events)
        assert "does not read" in disconnected.reason
        read_until(client, lambda ev: bool(of(wsmux.Reconnected, ev)))
        assert client.send("feed", "after", timeout=TIMEOUT)["type"] == "ack"
    finally:
        client.close()


Answer = Callable[[int, dict[str, Any]], "list[dict[str, Any]] | None"]


class ScriptedPeer:
    """A scripted daemon on a real Unix socket: ``answer(n, frame)`` gives the frames sent
    back for each frame received on the n-th connection (from 0), or None to close it."""

    def __init__(self, answer: Answer) -> None:
        self.dir = tempfile.mkdtemp(prefix="wsmux-py-p-")
        self.socket = os.path.join(self.dir, "p.sock")
        self._answer = answer
        self._conns: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.socket)
        self._listener.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        n = 0
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(n, conn), daemon=True).start()
            n += 1

    def _serve(self, n: int, conn: socket.socket) -> None:
        decoder = wsmux.FrameDecoder()
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                decoder.feed(chunk)
                for frame in decoder:
                    out = self._answer(n, frame)
                    if out is None:
                        conn.shutdown(socket.SHUT_RDWR)
                        return
                    conn.sendall(b"".join(wsmux.encode_frame(m) for m in out))
        except OSError:
            return
        finally:
            conn.close()

    def drop(self) -> None:
        """Ends every connection so far."""
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
        self.drop()
        shutil.rmtree(self.dir, ignore_errors=True)


def scripted_welcome(frame: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": "welcome", "version": 1, "server": "p", "endpoints": [], "epoch": "p1"}]


def test_a_resume_the_daemon_never_answers_ends_the_connection(connect: Connect) -> None:
    def answer(n: int, frame: dict[str, Any]) -> list[dict[str, Any]]:
        if frame["type"] == "hello":
            return scripted_welcome(frame)
        if frame["type"] != "subscribe":
            return []
        if frame.get("since") is None:
            return [
                {"type": "ack", "id": frame["id"], "first_seq": 1},
                {"type": "message", "endpoint": "feed", "seq": 1, "data": "one"},
                {"type": "lagged", "endpoint": "feed", "dropped": 3},
            ]
        if n == 0:
            return []  # the resume after lagged: never answered
        return [{"type": "ack", "id": frame["id"], "recovered": True, "first_seq": 2}]

    peer = ScriptedPeer(answer)
    try:
        client = connect(peer.socket, request_timeout=0.5)
        client.subscribe("feed")
        events = read_until(client, lambda ev: bool(of(wsmux.Reconnected, ev)), timeout=5.0)
        assert summary(events) == "message:1 Lagged Disconnected Reconnected"
        (disconnected,) = of(wsmux.Disconnected, events)
        assert "resume" in disconnected.reason
    finally:
        peer.close()


def test_a_refused_reconnect_warns_once_per_outage_and_keeps_trying(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    refusals = 3

    def answer(n: int, frame: dict[str, Any]) -> list[dict[str, Any]] | None:
        if frame["type"] == "hello":
            if 1 <= n <= refusals:
                return [{"type": "error", "code": "permission_denied", "message": "not you"}]
            return scripted_welcome(frame)
        if frame["type"] == "subscribe":
            return [{"type": "ack", "id": frame["id"], "first_seq": 1}]
        return []

    peer = ScriptedPeer(answer)
    try:
        client = connect(peer.socket)
        client.subscribe("feed")
        caplog.set_level(logging.WARNING, logger="wsmux")
        peer.drop()
        events = read_until(client, lambda ev: bool(of(wsmux.Reconnected, ev)))
        assert summary(events) == "Disconnected Reconnected"
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "permission_denied" in warnings[0].getMessage() or "not you" in (
            warnings[0].getMessage()
        )
    finally:
        peer.close()
