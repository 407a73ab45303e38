"""Topics on the wire, without a daemon: the frames of PROTOCOL.md's topic fields, byte for
byte, and what the event objects make of them.

The byte layouts are written out here from the design (``type`` first, then the fields in the
daemon's order). Once ``proto/vectors`` holds the topic frames (``subscribe_topics``,
``unsubscribe_topics``, ``message_topic``, ``error_topic_rejected``, ``status_reply_topics``),
``test_vectors.py`` checks those files too; these tests stay as the readable account.
"""

from __future__ import annotations

import pytest

import wsmux
from wsmux.events import EventFactory
from wsmux.protocol import topic_list

NEW_CODES = ("topic_rejected", "invalid_topic", "too_many_topics", "topics_unsupported")


def s(text: str) -> str:
    """A fixstr (up to 31 bytes): its header and its UTF-8 bytes, in hex."""
    raw = text.encode()
    assert len(raw) < 32
    return f"{0xA0 | len(raw):02x}" + raw.hex()


def frame(body_hex: str) -> bytes:
    body = bytes.fromhex(body_hex)
    return len(body).to_bytes(4, "big") + body


SUBSCRIBE_TOPICS = frame(
    "84"  # fixmap, 4 entries
    + s("type") + s("subscribe")
    + s("id") + "01"
    + s("endpoint") + s("feed")
    + s("topics") + "92" + s("btcusdt@trade") + s("ethusdt@trade")
)  # fmt: skip

UNSUBSCRIBE_TOPICS = frame(
    "84"
    + s("type") + s("unsubscribe")
    + s("id") + "08"
    + s("endpoint") + s("feed")
    + s("topics") + "91" + s("btcusdt@trade")
)  # fmt: skip

MESSAGE_TOPIC = frame(
    "86"  # the daemon's data message: type, endpoint, seq, data, topic, topic_seq
    + s("type") + s("message")
    + s("endpoint") + s("feed")
    + s("seq") + "cc" + "c8"  # uint 8: 200
    + s("data") + s('{"stream":"x"}')
    + s("topic") + s("btcusdt@trade")
    + s("topic_seq") + "07"
)  # fmt: skip

ERROR_TOPIC_REJECTED = frame(
    "85"  # no id: an event
    + s("type") + s("error")
    + s("code") + s("topic_rejected")
    + s("message") + s("unknown stream")
    + s("endpoint") + s("feed")
    + s("topic") + s("nope@trade")
)  # fmt: skip


def test_subscribe_and_unsubscribe_with_topics_encode_as_the_design_says() -> None:
    msg = wsmux.protocol.request(
        "subscribe", 1, endpoint="feed", topics=["btcusdt@trade", "ethusdt@trade"]
    )
    assert wsmux.encode_frame(msg) == SUBSCRIBE_TOPICS
    assert wsmux.decode_frame(SUBSCRIBE_TOPICS) == msg
    msg = wsmux.protocol.request("unsubscribe", 8, endpoint="feed", topics=["btcusdt@trade"])
    assert wsmux.encode_frame(msg) == UNSUBSCRIBE_TOPICS
    # Without topics the request is the old one, byte for byte (no `topics: nil`).
    plain = wsmux.protocol.request("subscribe", 1, endpoint="feed", topics=None)
    assert "topics" not in plain


def test_message_with_topic_becomes_a_message_with_topic_and_topic_seq() -> None:
    decoded = wsmux.decode_frame(MESSAGE_TOPIC)
    assert list(decoded) == ["type", "endpoint", "seq", "data", "topic", "topic_seq"]
    assert wsmux.encode_frame(decoded) == MESSAGE_TOPIC
    event = EventFactory().make(decoded)
    assert isinstance(event, wsmux.Message)
    assert (event.endpoint, event.seq, event.data) == ("feed", 200, '{"stream":"x"}')
    assert (event.topic, event.topic_seq, event.missed) == ("btcusdt@trade", 7, 0)
    # Without them (endpoints without topics, messages without a key): None.
    old = EventFactory().make({"type": "message", "endpoint": "feed", "seq": 1, "data": "x"})
    assert isinstance(old, wsmux.Message) and old.topic is None and old.topic_seq is None
    # A topic without topic_seq (a topic nobody subscribed to) is still a topic.
    bare = EventFactory().make(
        {"type": "message", "endpoint": "feed", "seq": 1, "data": "x", "topic": "t"}
    )
    assert isinstance(bare, wsmux.Message) and bare.topic == "t" and bare.topic_seq is None


def test_topic_rejected_is_a_non_fatal_event_naming_endpoint_and_topic() -> None:
    decoded = wsmux.decode_frame(ERROR_TOPIC_REJECTED)
    assert wsmux.encode_frame(decoded) == ERROR_TOPIC_REJECTED
    event = EventFactory().make(decoded)
    assert isinstance(event, wsmux.ErrorEvent)
    assert (event.code, event.message) == ("topic_rejected", "unknown stream")
    assert (event.endpoint, event.topic, event.fatal) == ("feed", "nope@trade", False)
    error = wsmux.DaemonError.from_frame(decoded)
    assert (error.endpoint, error.topic, error.fatal) == ("feed", "nope@trade", False)
    plain = wsmux.DaemonError.from_frame({"type": "error", "id": 3, "code": "x", "message": ""})
    assert plain.endpoint is None and plain.topic is None


def test_the_topic_codes_are_known_and_none_is_fatal() -> None:
    for code in NEW_CODES:
        assert code in wsmux.ERROR_CODES
        assert code not in wsmux.FATAL_CODES
        assert not wsmux.DaemonError(code, "m").fatal
    assert wsmux.FATAL_CODES <= wsmux.ERROR_CODES


def test_status_with_topics_keeps_connections_and_topics() -> None:
    status = {
        "type": "status",
        "id": 6,
        "endpoints": [
            {
                "name": "feed",
                "state": "open",
                "subscribers": 2,
                "connections": 1,
                "topics": [
                    {
                        "topic": "bad@trade",
                        "subscribers": 1,
                        "state": "rejected",
                        "connection": 0,
                        "messages": 0,
                        "reason": "unknown stream",
                    },
                    {
                        "topic": "btcusdt@trade",
                        "subscribers": 2,
                        "state": "active",
                        "connection": 0,
                        "messages": 41,
                    },
                ],
            }
        ],
    }
    decoded = wsmux.decode_frame(wsmux.encode_frame(status))
    assert decoded == status
    (endpoint,) = decoded["endpoints"]
    assert endpoint["connections"] == 1
    assert [t["state"] for t in endpoint["topics"]] == ["rejected", "active"]


def message(seq: int, topic: str | None = None, topic_seq: int | None = None) -> dict:
    frame = {"type": "message", "endpoint": "feed", "seq": seq, "data": "x"}
    if topic is not None:
        frame["topic"] = topic
    if topic_seq is not None:
        frame["topic_seq"] = topic_seq
    return frame


def missed(factory: EventFactory, *args: int | str | None) -> int:
    event = factory.make(message(*args))  # type: ignore[arg-type]
    assert isinstance(event, wsmux.Message)
    return event.missed


def test_missed_counts_only_the_topics_held() -> None:
    f = EventFactory()
    f.subscribed("feed", ["a", "b"])
    # seq jumps because other topics' messages go to other clients: nothing was missed.
    assert missed(f, 10, "a", 1) == 0
    assert missed(f, 15, "b", 4) == 0
    assert missed(f, 20, "a", 2) == 0
    # A gap in a held topic's own counter is a miss (e.g. dropped for a slow reader).
    assert missed(f, 30, "a", 5) == 2
    # Messages without a topic (unmatched = "all") count nothing.
    assert missed(f, 40) == 0
    # Dropping a topic and taking it again starts its counter afresh.
    f.unsubscribed("feed", ["a"])
    f.subscribed("feed", ["a"])
    assert missed(f, 50, "a", 9) == 0
    # The whole endpoint on top: every message comes, so the seq gap counts again.
    f.subscribed("feed", None)
    assert missed(f, 52, "a", 10) == 1
    assert f.holds("feed")
    # Unsubscribing a topic keeps the whole-endpoint subscription; everything ends it.
    f.unsubscribed("feed", ["a", "b"])
    assert f.holds("feed")
    f.unsubscribed("feed", None)
    assert not f.holds("feed")
    # A new subscription after nothing was held does not count the time in between.
    f.subscribed("feed", None)
    assert missed(f, 90) == 0
    assert missed(f, 92) == 1


def test_dropping_the_last_topic_holds_nothing() -> None:
    f = EventFactory()
    f.subscribed("feed", ["a"])
    f.unsubscribed("feed", ["a", "never-held"])
    assert not f.holds("feed")


def test_topics_must_be_a_list_of_str() -> None:
    assert topic_list(None) is None
    assert topic_list(["a", "b"]) == ["a", "b"]
    assert topic_list(("a",)) == ["a"]
    assert topic_list(t for t in ["a"]) == ["a"]
    assert topic_list([]) == []  # the daemon answers invalid_topic: limits are its business
    for bad in ("btcusdt@trade", b"a", 5):
        with pytest.raises(TypeError, match="topics must be a list of str"):
            topic_list(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="every topic must be a str"):
        topic_list(["a", 1])  # type: ignore[list-item]


class ScriptedDaemon:
    """A scripted peer on a real Unix socket: answers ``hello`` with ``welcome``, then acks
    every request and sends ``follow_ups[n]`` after the n-th ack (``state`` first after a
    ``subscribe``). Records the requests."""

    def __init__(self, follow_ups: list[list[dict]]) -> None:
        import socket
        import tempfile
        import threading

        self.dir = tempfile.mkdtemp(prefix="wsmux-py-s-")
        self.socket = f"{self.dir}/s.sock"
        self.requests: list[dict] = []
        self.follow_ups = follow_ups
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.socket)
        self._listener.listen(1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        decoder = wsmux.FrameDecoder()
        with conn:
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                decoder.feed(chunk)
                for msg in decoder:
                    out = []
                    if msg["type"] == "hello":
                        out.append(
                            {"type": "welcome", "version": 1, "server": "s", "endpoints": []}
                        )
                    else:
                        n = len(self.requests)
                        self.requests.append(msg)
                        reply = "pong" if msg["type"] == "ping" else "ack"
                        out.append({"type": reply, "id": msg["id"]})
                        if msg["type"] == "subscribe":
                            out.append({"type": "state", "endpoint": "feed", "state": "open"})
                        if reply == "ack" and n < len(self.follow_ups):
                            out.extend(self.follow_ups[n])
                    conn.sendall(b"".join(wsmux.encode_frame(m) for m in out))

    def close(self) -> None:
        import shutil

        self._listener.close()
        self._thread.join(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


FOLLOW_UPS = [
    # subscribe topics a, b: seq jumps over other clients' topics (not a miss); a gap in a
    # held topic's counter is one; a message without a topic counts nothing.
    [message(10, "a", 1), message(15, "b", 4), message(30, "a", 4), message(40)],
    # subscribe c (no callback given: the first stays), then the upstream refuses it.
    [
        message(41, "c", 1),
        {
            "type": "error",
            "code": "topic_rejected",
            "message": "unknown topic c",
            "endpoint": "feed",
            "topic": "c",
        },
    ],
    # unsubscribe a, b: c is still held.
    [message(50, "c", 2)],
    # unsubscribe c, the last topic: a daemon sends nothing of the endpoint after this ack;
    # the client still goes by frame order, so this state is for events(), not the callback.
    [{"type": "state", "endpoint": "feed", "state": "open"}],
]

EXPECTED = [(10, "a", 1, 0), (15, "b", 4, 0), (30, "a", 4, 2), (40, None, None, 0)]
EXPECTED += [(41, "c", 1, 0), (50, "c", 2, 0)]


def check_scripted(peer: ScriptedDaemon, got: list[wsmux.Event], last: wsmux.Event | None) -> None:
    assert [(r["type"], r.get("topics")) for r in peer.requests] == [
        ("subscribe", ["a", "b"]),
        ("subscribe", ["c"]),
        ("unsubscribe", ["a", "b"]),
        ("unsubscribe", ["c"]),
        ("ping", None),
    ]
    msgs = [e for e in got if isinstance(e, wsmux.Message)]
    assert [(m.seq, m.topic, m.topic_seq, m.missed) for m in msgs] == EXPECTED
    (rejected,) = [e for e in got if isinstance(e, wsmux.ErrorEvent)]
    assert (rejected.code, rejected.endpoint, rejected.topic) == ("topic_rejected", "feed", "c")
    assert isinstance(last, wsmux.State)


def test_blocking_client_tracks_topics_in_frame_order() -> None:
    peer = ScriptedDaemon(FOLLOW_UPS)
    try:
        with wsmux.Client.connect(peer.socket, timeout=10) as client:
            got: list[wsmux.Event] = []
            client.subscribe("feed", got.append, topics=["a", "b"], timeout=10)
            client.subscribe("feed", topics=["c"], timeout=10)
            client.unsubscribe("feed", topics=["a", "b"], timeout=10)
            client.unsubscribe("feed", topics=iter(["c"]), timeout=10)
            last = client.next_event(10)
            client.ping(timeout=10)
            assert not client.closed
            with pytest.raises(TypeError):
                client.subscribe("feed", topics="abc", timeout=10)  # type: ignore[arg-type]
        check_scripted(peer, got, last)
    finally:
        peer.close()


def test_async_client_tracks_topics_in_frame_order() -> None:
    import asyncio

    async def main() -> None:
        peer = ScriptedDaemon(FOLLOW_UPS)
        try:
            client = await wsmux.AsyncClient.connect(peer.socket, timeout=10)
            got: list[wsmux.Event] = []
            await client.subscribe("feed", got.append, topics=["a", "b"], timeout=10)
            await client.subscribe("feed", topics=["c"], timeout=10)
            await client.unsubscribe("feed", topics=["a", "b"], timeout=10)
            await client.unsubscribe("feed", topics=["c"], timeout=10)
            last = await client.next_event(10)
            await client.ping(timeout=10)
            with pytest.raises(TypeError):
                await client.unsubscribe("feed", topics=[1], timeout=10)  # type: ignore[list-item]
            await client.close()
            check_scripted(peer, got, last)
        finally:
            peer.close()

    asyncio.run(main())
