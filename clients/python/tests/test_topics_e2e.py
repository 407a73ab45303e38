"""Topics end to end: a real wsmuxd with `[endpoints.feed.topics]`, its upstream a WebSocket
server in this process (tests/wsserver.py), and both clients.

`feed` keys messages by `/stream` and subscribes with `{"op":"sub","args":[...]}`; its answers
carry no id, so a topic is active once its subscribe is written. `strict` puts `{id}` in its
subscribes, and its upstream answers `{"id":N,"error":"..."}` for topics starting with `bad`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import pytest
from conftest import Daemon
from wsserver import WsServer

import wsmux

TIMEOUT = 10.0

CONFIG = """
[endpoints.feed]
url = "{feed}"
reconnect = {{ initial_delay = "100ms" }}

[endpoints.feed.topics]
key = "/stream"
subscribe = '{{"op":"sub","args":{{topics}}}}'
unsubscribe = '{{"op":"unsub","args":{{topics}}}}'
max_per_client = 8

[endpoints.strict]
url = "{strict}"
reconnect = {{ initial_delay = "100ms" }}

[endpoints.strict.topics]
key = "/stream"
subscribe = '{{"op":"sub","args":{{topics}},"id":{{id}}}}'
max_per_message = 1

[endpoints.plain]
url = "{strict}"
"""


def answer_strict(reply: Callable[[str], None], text: str) -> None:
    """The `strict` upstream: refuses topics starting with `bad`, accepts the others."""
    msg = json.loads(text)
    if msg.get("op") != "sub":
        return
    bad = [t for t in msg.get("args", []) if t.startswith("bad")]
    if bad:
        reply(json.dumps({"id": msg["id"], "error": f"unknown topic {bad[0]}"}))
    else:
        reply(json.dumps({"id": msg["id"], "result": None}))


@dataclass
class Env:
    feed: WsServer
    strict: WsServer
    daemon: Daemon

    def client(self) -> wsmux.Client:
        return wsmux.Client.connect(self.daemon.socket, timeout=TIMEOUT)

    def publish(self, topic: str, n: int) -> None:
        self.feed.publish(json.dumps({"stream": topic, "data": {"n": n}}))


@pytest.fixture
def env() -> Iterator[Env]:
    with WsServer() as feed, WsServer(on_text=answer_strict) as strict:
        daemon = Daemon(CONFIG.format(feed=feed.url, strict=strict.url))
        try:
            feed.wait_connected(TIMEOUT)
            strict.wait_connected(TIMEOUT)
            yield Env(feed, strict, daemon)
        finally:
            daemon.stop()


def ops(received: list[str], op: str) -> list[list[str]]:
    """The `args` of every message with this `op` the upstream received, in order."""
    out = []
    for text in received:
        msg = json.loads(text)
        if msg.get("op") == op:
            out.append(list(msg["args"]))
    return out


def topics_of(received: list[str], op: str) -> set[str]:
    return {t for args in ops(received, op) for t in args}


def messages(client: wsmux.Client, count: int) -> list[wsmux.Message]:
    """The next `count` Message events (other events are skipped)."""
    out: list[wsmux.Message] = []
    for event in client.events(timeout=TIMEOUT):
        if isinstance(event, wsmux.Message):
            out.append(event)
            if len(out) == count:
                break
    return out


def seen(events: list[wsmux.Message]) -> list[tuple[str | None, int]]:
    return [(e.topic, json.loads(e.text)["data"]["n"]) for e in events]


def wait_status(
    client: wsmux.Client, endpoint: str, ok: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        status = next(e for e in client.status(timeout=TIMEOUT) if e["name"] == endpoint)
        if ok(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"status never as expected: {status}")
        time.sleep(0.05)


def test_two_clients_each_receive_only_their_topics(env: Env) -> None:
    a, b = env.client(), env.client()
    a.subscribe("feed", topics=["a1", "a2", "shared"], timeout=TIMEOUT)
    b.subscribe("feed", topics=("b1", "b2", "shared"), timeout=TIMEOUT)
    wanted = {"a1", "a2", "b1", "b2", "shared"}
    received = env.feed.wait_for(lambda r: topics_of(r, "sub") >= wanted, TIMEOUT)
    # One upstream subscribe per distinct topic, `shared` included.
    subscribed = [t for args in ops(received, "sub") for t in args]
    assert sorted(subscribed) == sorted(wanted)

    for n, topic in enumerate(["a1", "b1", "a2", "b2", "shared", "a1", "b1"]):
        env.publish(topic, n)
    # Frames to a client keep the upstream's order, so anything misrouted shows up before
    # each client's last message.
    got_a, got_b = messages(a, 4), messages(b, 4)
    assert seen(got_a) == [("a1", 0), ("a2", 2), ("shared", 4), ("a1", 5)]
    assert seen(got_b) == [("b1", 1), ("b2", 3), ("shared", 4), ("b1", 6)]
    for event in got_a + got_b:
        assert event.endpoint == "feed" and isinstance(event.topic_seq, int)
        # Other clients' topics make gaps in seq; that is not a miss.
        assert event.missed == 0
    assert got_a[3].topic_seq == got_a[0].topic_seq + 1  # type: ignore[operator]
    assert got_a[2].topic_seq == got_b[2].topic_seq  # the same message of `shared`
    assert got_a[2].seq == got_b[2].seq

    def all_active(s: dict[str, Any]) -> bool:
        return bool(s.get("topics")) and all(t["state"] == "active" for t in s["topics"])

    status = wait_status(a, "feed", all_active)
    assert status["connections"] == 1
    by_topic = {t["topic"]: t for t in status["topics"]}
    assert [t["topic"] for t in status["topics"]] == sorted(wanted)
    assert by_topic["shared"]["subscribers"] == 2 and by_topic["a1"]["subscribers"] == 1
    assert by_topic["a1"]["messages"] == 2 and by_topic["a1"]["connection"] == 0

    # The first holder leaving a topic changes nothing upstream; the last one unsubscribes.
    a.unsubscribe("feed", topics=["shared", "never-held"], timeout=TIMEOUT)
    env.publish("shared", 7)
    env.publish("a2", 8)
    assert seen(messages(a, 1)) == [("a2", 8)]
    assert seen(messages(b, 1)) == [("shared", 7)]
    b.unsubscribe("feed", topics=["shared"], timeout=TIMEOUT)
    env.feed.wait_for(lambda r: "shared" in topics_of(r, "unsub"), TIMEOUT)
    # A fence: writes upstream are in order, so a second unsubscribe would be here by now.
    a.subscribe("feed", topics=["fence"], timeout=TIMEOUT)
    received = env.feed.wait_for(lambda r: "fence" in topics_of(r, "sub"), TIMEOUT)
    assert ops(received, "unsub") == [["shared"]]

    # Unsubscribing without topics drops them all.
    b.unsubscribe("feed", timeout=TIMEOUT)
    env.feed.wait_for(lambda r: topics_of(r, "unsub") >= {"b1", "b2"}, TIMEOUT)
    with pytest.raises(wsmux.DaemonError) as err:
        b.unsubscribe("feed", timeout=TIMEOUT)
    assert err.value.code == "not_subscribed" and not err.value.fatal
    a.close()
    b.close()


def test_refusals_are_errors_that_keep_the_connection(env: Env) -> None:
    with env.client() as c:
        cases = [
            ("plain", ["x"], "topics_unsupported"),
            ("feed", [""], "invalid_topic"),
            ("feed", [], "invalid_topic"),
            ("feed", [f"t{i}" for i in range(9)], "too_many_topics"),  # max_per_client = 8
            ("nope", ["x"], "unknown_endpoint"),
        ]
        for endpoint, topics, code in cases:
            with pytest.raises(wsmux.DaemonError) as err:
                c.subscribe(endpoint, topics=topics, timeout=TIMEOUT)
            assert err.value.code == code, (endpoint, topics, err.value)
            assert not err.value.fatal
        # Checked as a whole: nothing of the refused requests was taken.
        with pytest.raises(wsmux.DaemonError) as err:
            c.unsubscribe("feed", timeout=TIMEOUT)
        assert err.value.code == "not_subscribed"
        # Types are checked here, before anything is sent.
        with pytest.raises(TypeError):
            c.subscribe("feed", topics="a1", timeout=TIMEOUT)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            c.unsubscribe("feed", topics=[b"a1"], timeout=TIMEOUT)  # type: ignore[list-item]
        assert c.ping(timeout=TIMEOUT) >= 0
        assert not c.closed


async def next_message(queue: asyncio.Queue[wsmux.Event]) -> wsmux.Event:
    """The next event that is not a State (state changes may come at any time)."""
    while True:
        event = await asyncio.wait_for(queue.get(), TIMEOUT)
        if not isinstance(event, wsmux.State):
            return event


def drain(queue: asyncio.Queue[wsmux.Event]) -> list[wsmux.Event]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def test_async_client_topics_callback_and_rejection(env: Env) -> None:
    async def main() -> None:
        a = await wsmux.AsyncClient.connect(env.daemon.socket, timeout=TIMEOUT)
        b = await wsmux.AsyncClient.connect(env.daemon.socket, timeout=TIMEOUT)
        got: asyncio.Queue[wsmux.Event] = asyncio.Queue()

        async def on_event(event: wsmux.Event) -> None:
            await got.put(event)

        await a.subscribe("strict", on_event, topics=["good1"], timeout=TIMEOUT)
        await a.subscribe("strict", topics=["bad1"], timeout=TIMEOUT)  # the same callback
        await b.subscribe("strict", topics=["good2"], timeout=TIMEOUT)

        # The upstream refuses bad1: an event for the client that holds it, not an exception.
        event = await next_message(got)
        assert isinstance(event, wsmux.ErrorEvent), event
        assert (event.code, event.endpoint, event.topic) == ("topic_rejected", "strict", "bad1")
        assert "unknown topic bad1" in event.message and not event.fatal
        assert not a.closed and await a.ping(timeout=TIMEOUT) >= 0

        env.strict.wait_for(lambda r: topics_of(r, "sub") >= {"good1", "good2"}, TIMEOUT)
        env.strict.publish(json.dumps({"stream": "good2", "data": {"n": 1}}))
        env.strict.publish(json.dumps({"stream": "good1", "data": {"n": 2}}))
        # The upstream's answers to the daemon's subscribes are not delivered: the first
        # message is the data.
        event = await next_message(got)
        assert isinstance(event, wsmux.Message), event
        assert (event.topic, json.loads(event.text)["data"]["n"]) == ("good1", 2)
        async for other in b.events(timeout=TIMEOUT):
            if isinstance(other, wsmux.Message):
                assert (other.topic, other.missed) == ("good2", 0)
                break

        (status,) = [s for s in await a.status(timeout=TIMEOUT) if s["name"] == "strict"]
        by_topic = {t["topic"]: t for t in status["topics"]}
        assert by_topic["bad1"]["state"] == "rejected"
        assert "unknown topic bad1" in by_topic["bad1"].get("reason", "")

        # Dropping one of two topics keeps the callback; dropping the last one ends it.
        await a.unsubscribe("strict", topics=["bad1"], timeout=TIMEOUT)
        env.strict.publish(json.dumps({"stream": "good1", "data": {"n": 3}}))
        event = await next_message(got)
        assert isinstance(event, wsmux.Message) and event.topic == "good1"
        await a.unsubscribe("strict", topics=["good1"], timeout=TIMEOUT)
        with pytest.raises(wsmux.DaemonError) as err:
            await a.unsubscribe("strict", timeout=TIMEOUT)
        assert err.value.code == "not_subscribed"
        await a.subscribe("strict", topics=["good1"], timeout=TIMEOUT)  # no callback now
        first = await a.next_event(TIMEOUT)
        assert isinstance(first, wsmux.State) and first.endpoint == "strict"
        assert all(isinstance(e, wsmux.State) for e in drain(got))
        await a.close()
        await b.close()

    asyncio.run(main())
