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
