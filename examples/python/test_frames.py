"""Tests for wsmux_client.py: exact frame bytes from PROTOCOL.md, round trips, partial reads,
and the client and command line against a scripted fake daemon (no real daemon needed).

Run with ``python3 -m pytest test_frames.py`` or simply ``python3 test_frames.py``.
Needs only the standard library and ``msgpack``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import unittest
from typing import Any, Callable, TypeVar

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from wsmux_client import (  # noqa: E402
    ConnectionClosed,
    FrameDecoder,
    ProtocolError,
    SocketTransport,
    WsmuxClient,
    WsmuxError,
    decode_body,
    encode_frame,
    main,
    request_message,
)

# The frames shown in PROTOCOL.md section 3.3.
PING_7 = bytes.fromhex("00 00 00 0f 82 a4 74 79 70 65 a4 70 69 6e 67 a2 69 64 07")
SEND_TEXT = bytes.fromhex(
    "00 00 00 28 84 a4 74 79 70 65 a4 73 65 6e 64 a2 69 64 02 a8 65 6e 64 70"
    "6f 69 6e 74 a4 66 65 65 64 a4 64 61 74 61 a5 68 65 6c 6c 6f"
)
SEND_BIN = bytes.fromhex(
    "00 00 00 27 84 a4 74 79 70 65 a4 73 65 6e 64 a2 69 64 03 a8 65 6e 64 70"
    "6f 69 6e 74 a4 66 65 65 64 a4 64 61 74 61 c4 03 01 02 03"
)
ACK_2 = bytes.fromhex("00 00 00 0e 82 a4 74 79 70 65 a3 61 63 6b a2 69 64 02")
ACK_14_QUEUED = bytes.fromhex(
    "00 00 00 16 83 a4 74 79 70 65 a3 61 63 6b a2 69 64 0e a6 71 75 65 75 65 64 c3"
)
LAGGED_3 = bytes.fromhex(
    "00 00 00 24 83 a4 74 79 70 65 a6 6c 61 67 67 65 64 a8 65 6e 64 70 6f 69"
    "6e 74 a4 66 65 65 64 a7 64 72 6f 70 70 65 64 03"
)


E = TypeVar("E", bound=BaseException)


def _assert_raises(exc_type: type[E], fn: Callable[..., Any], *args: Any) -> E:
    """Calls ``fn(*args)`` and returns the exception of type ``exc_type`` it must raise."""
    try:
        fn(*args)
    except exc_type as exc:
        return exc
    raise AssertionError(f"{exc_type.__name__} not raised")


# --------------------------------------------------------------------------------------------
# Encoder and decoder


def test_ping_frame_has_the_documented_bytes() -> None:
    assert encode_frame(request_message("ping", 7)) == PING_7
    assert encode_frame({"type": "ping", "id": 7}) == PING_7


def test_send_frames_have_the_documented_bytes() -> None:
    assert encode_frame(request_message("send", 2, endpoint="feed", data="hello")) == SEND_TEXT
    assert (
        encode_frame(request_message("send", 3, endpoint="feed", data=b"\x01\x02\x03")) == SEND_BIN
    )
    assert encode_frame({"type": "ack", "id": 2}) == ACK_2


def test_new_frames_have_the_documented_bytes() -> None:
    # PROTOCOL.md section 3.3: a boolean is MessagePack true (c3), not an integer.
    assert encode_frame({"type": "ack", "id": 14, "queued": True}) == ACK_14_QUEUED
    assert encode_frame({"type": "lagged", "endpoint": "feed", "dropped": 3}) == LAGGED_3
    decoder = FrameDecoder()
    decoder.feed(ACK_14_QUEUED + LAGGED_3)
    assert list(decoder) == [
        {"type": "ack", "id": 14, "queued": True},
        {"type": "lagged", "endpoint": "feed", "dropped": 3},
    ]
    body = encode_frame(request_message("send", 5, endpoint="e", data="x", queue=False))[4:]
    assert body.endswith(bytes.fromhex("a5 71 75 65 75 65 c2"))  # "queue": false


def test_documented_frames_decode() -> None:
    decoder = FrameDecoder()
    decoder.feed(PING_7 + SEND_TEXT + SEND_BIN)
    assert list(decoder) == [
        {"type": "ping", "id": 7},
        {"type": "send", "id": 2, "endpoint": "feed", "data": "hello"},
        {"type": "send", "id": 3, "endpoint": "feed", "data": b"\x01\x02\x03"},
    ]
    assert decoder.buffered == 0


def test_text_stays_str_and_binary_stays_bytes() -> None:
    for data in ["", "héllo ✓", "x" * 70_000, b"", b"\x00\xff", bytes(range(256)) * 300]:
        frame = encode_frame({"type": "message", "endpoint": "e", "seq": 1, "data": data})
        decoded = decode_body(frame[4:])
        assert type(decoded["data"]) is type(data)
        assert decoded["data"] == data


def test_every_message_round_trips() -> None:
    messages: list[dict[str, Any]] = [
        {"type": "hello", "version": 1, "client": "py"},
        {"type": "subscribe", "id": 1, "endpoint": "a"},
        {"type": "unsubscribe", "endpoint": "a"},
        {"type": "send", "id": 2**64 - 1, "endpoint": "a", "data": bytes(300)},
        {"type": "status", "id": 3},
        {"type": "ping"},
        {
            "type": "welcome",
            "version": 1,
            "server": "wsmuxd/0.1.0",
            "endpoints": [{"name": "a", "state": "backoff"}],
        },
        {"type": "message", "endpoint": "a", "seq": 42, "data": '{"px":1}'},
        {
            "type": "state",
            "endpoint": "a",
            "state": "backoff",
            "attempt": 3,
            "retry_in_ms": 1500,
            "reason": "HTTP 503",
        },
        {"type": "ack", "id": 9},
        {"type": "error", "code": "lagged", "message": "disconnected: too slow"},
        {
            "type": "send",
            "id": 16,
            "endpoint": "a",
            "data": '{"op":"subscribe"}',
            "queue": False,
            "sticky": True,
            "undo": b"\x00unsub",
        },
        {"type": "reconnect", "id": 12, "endpoint": "a"},
        {"type": "reload", "id": 13},
        {"type": "reload"},
        {"type": "ack", "id": 14, "queued": True},
        {"type": "sent", "id": 14, "endpoint": "a"},
        {"type": "dropped", "endpoint": "a", "code": "overflowed", "message": "pushed out"},
        {"type": "dropped", "id": 15, "endpoint": "a", "code": "expired", "message": "too old"},
        {"type": "lagged", "endpoint": "a", "dropped": 70_000},
        {
            "type": "state",
            "endpoint": "a",
            "state": "open",
            "reconnect": True,
            "downtime_ms": 2350,
        },
        {
            "type": "status",
            "id": 1,
            "endpoints": [
                {
                    "name": "a",
                    "url": "wss://x/?token=***",
                    "state": "open",
                    "since": 1_718_000_000_123,
                    "connects": 2,
                    "last_error": "reset",
                    "heartbeat_rtt_us": 250,
                    "messages_in": 3,
                    "bytes_in": 4,
                    "messages_out": 5,
                    "bytes_out": 6,
                    "subscribers": 7,
                    "reconnects": 1,
                    "queued": 8,
                    "lagged_drops": 9,
                }
            ],
        },
        {"type": "pong", "id": 2},
    ]
    for msg in messages:
        frame = encode_frame(msg)
        assert int.from_bytes(frame[:4], "big") == len(frame) - 4
        assert decode_body(frame[4:]) == msg


def test_none_fields_are_omitted() -> None:
    frame = encode_frame(request_message("subscribe", None, endpoint="x"))
    assert decode_body(frame[4:]) == {"type": "subscribe", "endpoint": "x"}
    assert encode_frame({"type": "ping", "id": None}) == encode_frame({"type": "ping"})


def test_unknown_keys_and_nil_optionals_are_accepted() -> None:
    body = bytes.fromhex("83 a4 74797065 a4 706f6e67 a6 667574757265 05 a2 6964 c0")
    assert decode_body(body) == {"type": "pong", "future": 5, "id": None}


def test_frames_split_at_every_byte() -> None:
    stream = PING_7 + SEND_BIN
    decoder = FrameDecoder()
    got = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        msg = decoder.next_message()
        if msg is not None:
            got.append((i, msg))
    assert [i for i, _ in got] == [len(PING_7) - 1, len(stream) - 1]
    assert decoder.next_message() is None


def test_integers_use_the_smallest_encoding() -> None:
    # 255 -> uint 8 (cc ff), 256 -> uint 16 (cd 01 00), 2**32 -> uint 64.
    assert encode_frame({"type": "ping", "id": 255})[-2:] == b"\xcc\xff"
    assert encode_frame({"type": "ping", "id": 256})[-3:] == b"\xcd\x01\x00"
    assert encode_frame({"type": "ping", "id": 2**32})[-9:] == b"\xcf" + (2**32).to_bytes(8, "big")


def test_oversized_length_is_rejected_before_the_body_arrives() -> None:
    decoder = FrameDecoder(max_frame=1024)
    decoder.feed(bytes.fromhex("01 00 00 01"))
    _assert_raises(ProtocolError, decoder.next_message)
    # Text written to the socket by mistake reads as a huge length.
    decoder = FrameDecoder()
    decoder.feed(b"hello\n")
    _assert_raises(ProtocolError, decoder.next_message)
    _assert_raises(ValueError, lambda: encode_frame({"type": "x", "data": "y" * 100}, max_frame=50))


def test_bad_bodies_are_protocol_errors() -> None:
    for body in [
        b"",  # empty
        b"\x93\x01\x02\x03",  # an array
        b"\xa3abc",  # a string
        b"\x81\xa4t",  # truncated map
        b"\xc1",  # never-used marker
        bytes.fromhex("81 a2 6964 01"),  # no type
        bytes.fromhex("81 a4 74797065 07"),  # type is not a string
        bytes.fromhex("81 a4 74797065 a4 70696e67 c0"),  # bytes after the map
    ]:
        _assert_raises(ProtocolError, decode_body, body)


# --------------------------------------------------------------------------------------------
# The client against a scripted fake daemon


class FakeDaemon:
    """The daemon side of a connection, driven by a test script."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = FrameDecoder()

    def read(self) -> dict[str, Any]:
        while True:
            msg = self.decoder.next_message()
            if msg is not None:
                return msg
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionClosed("client closed")
            self.decoder.feed(chunk)

    def expect(self, type_: str) -> dict[str, Any]:
        msg = self.read()
        assert msg["type"] == type_, msg
        return msg

    def write(self, msg: dict[str, Any], byte_by_byte: bool = False) -> None:
        frame = encode_frame(msg)
        if byte_by_byte:
            for i in range(len(frame)):
                self.sock.sendall(frame[i : i + 1])
        else:
            self.sock.sendall(frame)

    def greet(self) -> None:
        hello = self.expect("hello")
        assert hello["version"] == 1
        self.write(
            {
                "type": "welcome",
                "version": 1,
                "server": "wsmuxd/0.1.0",
                "endpoints": [{"name": "feed", "state": "open"}],
            }
        )


Script = Callable[[FakeDaemon], None]


def _serve(sock: socket.socket, script: Script, errors: list[BaseException]) -> None:
    try:
        script(FakeDaemon(sock))
    except BaseException as exc:  # reported by _finish
        errors.append(exc)
    finally:
        sock.close()


def _client_with(script: Script) -> tuple[WsmuxClient, threading.Thread, list[BaseException]]:
    client_sock, daemon_sock = socket.socketpair()
    errors: list[BaseException] = []
    thread = threading.Thread(target=_serve, args=(daemon_sock, script, errors), daemon=True)
    thread.start()
    return WsmuxClient(SocketTransport(client_sock)), thread, errors


def _finish(thread: threading.Thread, errors: list[BaseException]) -> None:
    thread.join(timeout=5)
    assert not thread.is_alive(), "fake daemon still running"
    if errors:
        raise errors[0]


def test_client_greets_and_pings() -> None:
    def script(d: FakeDaemon) -> None:
        d.greet()
        ping = d.expect("ping")
        d.write({"type": "pong", "id": ping["id"]})

    client, thread, errors = _client_with(script)
    welcome = client.hello("test", timeout=5)
    assert welcome["endpoints"] == [{"name": "feed", "state": "open"}]
    assert client.ping(timeout=5) >= 0
    client.close()
    _finish(thread, errors)


def test_events_are_kept_while_waiting_for_the_ack() -> None:
    def script(d: FakeDaemon) -> None:
        d.greet()
        sub = d.expect("subscribe")
        assert sub == {"type": "subscribe", "id": 1, "endpoint": "feed"}
        d.write({"type": "ack", "id": 1})
        d.write({"type": "state", "endpoint": "feed", "state": "open"})
        send = d.expect("send")
        assert send == {"type": "send", "id": 2, "endpoint": "feed", "data": "hi"}
        # Messages before the ack, one of them trickling in byte by byte.
        d.write({"type": "message", "endpoint": "feed", "seq": 1, "data": "hi"}, byte_by_byte=True)
        d.write({"type": "message", "endpoint": "feed", "seq": 2, "data": b"\x00"})
        d.write({"type": "ack", "id": 2})
        d.write({"type": "message", "endpoint": "feed", "seq": 3, "data": "after"})

    client, thread, errors = _client_with(script)
    client.hello(timeout=5)
    client.subscribe("feed", timeout=5)
    assert client.send("feed", "hi", timeout=5) == 2
    events = client.events(timeout=5)
    got = [next(events) for _ in range(4)]
    assert got == [
        {"type": "state", "endpoint": "feed", "state": "open"},
        {"type": "message", "endpoint": "feed", "seq": 1, "data": "hi"},
        {"type": "message", "endpoint": "feed", "seq": 2, "data": b"\x00"},
        {"type": "message", "endpoint": "feed", "seq": 3, "data": "after"},
    ]
    _assert_raises(ConnectionClosed, lambda: next(events))
    client.close()
    _finish(thread, errors)


def test_subscribe_with_since_returns_first_seq_and_recovered_and_keeps_the_seam() -> None:
    epoch = "193a1f2b4c0-5e2d9a71"

    def script(d: FakeDaemon) -> None:
        hello = d.expect("hello")
        assert hello["version"] == 1
        d.write({"type": "welcome", "version": 1, "server": "s", "endpoints": [], "epoch": epoch})
        sub = d.expect("subscribe")
        assert sub == {"type": "subscribe", "id": 1, "endpoint": "feed"}
        d.write({"type": "ack", "id": 1, "first_seq": 1001})
        d.write({"type": "message", "endpoint": "feed", "seq": 1001, "data": "a"})
        resume = d.expect("subscribe")
        assert resume == {
            "type": "subscribe",
            "id": 2,
            "endpoint": "feed",
            "since": 1001,
            "epoch": epoch,
        }
        # Queued before the resume: sent again after the ack (PROTOCOL.md 19.3).
        d.write({"type": "message", "endpoint": "feed", "seq": 1252, "data": "seam"})
        d.write({"type": "message", "endpoint": "other", "seq": 9, "data": "kept"})
        d.write({"type": "ack", "id": 2, "recovered": True, "first_seq": 1002})
        d.write({"type": "message", "endpoint": "feed", "seq": 1002, "data": "b"})
        d.expect("subscribe")
        d.write({"type": "ack", "id": 3, "recovered": False, "first_seq": 1})

    client, thread, errors = _client_with(script)
    client.hello(timeout=5)
    assert client.epoch == epoch
    first = client.subscribe("feed", timeout=5)
    assert first["first_seq"] == 1001 and "recovered" not in first
    events = client.events(timeout=5)
    assert next(events)["seq"] == 1001
    again = client.subscribe("feed", timeout=5, since=1001, epoch=client.epoch)
    assert (again["recovered"], again["first_seq"]) == (True, 1002)
    assert [(e["endpoint"], e["seq"]) for e in (next(events), next(events))] == [
        ("other", 9),
        ("feed", 1002),
    ]
    lost = client.subscribe("feed", timeout=5, since=5, epoch="an older epoch")
    assert (lost["recovered"], lost["first_seq"]) == (False, 1)
    _assert_raises(ValueError, lambda: client.subscribe("feed", timeout=5, epoch=epoch))
    client.close()
    _finish(thread, errors)


def test_error_reply_raises_and_the_connection_goes_on() -> None:
    def script(d: FakeDaemon) -> None:
        d.greet()
        sub = d.expect("subscribe")
        d.write(
            {
                "type": "error",
                "id": sub["id"],
                "code": "unknown_endpoint",
                "message": "no endpoint named `nope`",
            }
        )
        status = d.expect("status")
        d.write({"type": "status", "id": status["id"], "endpoints": []})

    client, thread, errors = _client_with(script)
    client.hello(timeout=5)
    err = _assert_raises(WsmuxError, lambda: client.subscribe("nope", timeout=5))
    assert (err.code, err.request_id, err.fatal) == ("unknown_endpoint", 1, False)
    assert client.status(timeout=5) == []
    client.close()
    _finish(thread, errors)


def test_refusal_before_hello_is_reported() -> None:
    def script(d: FakeDaemon) -> None:
        d.write({"type": "error", "code": "permission_denied", "message": "uid 1001 not allowed"})

    client, thread, errors = _client_with(script)
    _finish(thread, errors)  # the daemon side is closed before the client says hello
    err = _assert_raises(WsmuxError, lambda: client.hello(timeout=5))
    assert err.code == "permission_denied" and err.fatal
    client.close()


def test_reply_wait_times_out() -> None:
    done = threading.Event()

    def script(d: FakeDaemon) -> None:
        d.greet()
        d.expect("ping")
        done.wait(5)  # never answer

    client, thread, errors = _client_with(script)
    client.hello(timeout=5)
    started = time.monotonic()
    _assert_raises(TimeoutError, lambda: client.ping(timeout=0.2))
    assert time.monotonic() - started < 2
    done.set()
    client.close()
    _finish(thread, errors)


def test_send_ack_says_queued_and_the_report_is_an_event() -> None:
    def script(d: FakeDaemon) -> None:
        d.greet()
        send = d.expect("send")
        assert send == {
            "type": "send",
            "id": 1,
            "endpoint": "feed",
            "data": b"\x01",
            "sticky": True,
            "undo": "bye",
        }
        d.write({"type": "ack", "id": 1})
        send = d.expect("send")
        assert send == {"type": "send", "id": 2, "endpoint": "feed", "data": "x", "queue": False}
        d.write({"type": "ack", "id": 2, "queued": True})
        d.write({"type": "state", "endpoint": "feed", "state": "open", "reconnect": True})
        d.write({"type": "sent", "id": 2, "endpoint": "feed"})

    client, thread, errors = _client_with(script)
    client.hello(timeout=5)
    assert client.send_ack("feed", bytearray(b"\x01"), timeout=5, sticky=True, undo="bye") == {
        "type": "ack",
        "id": 1,
    }
    assert client.send_ack("feed", "x", timeout=5, queue=False) == {
        "type": "ack",
        "id": 2,
        "queued": True,
    }
    events = client.events(timeout=5)
    assert [next(events)["type"] for _ in range(2)] == ["state", "sent"]
    client.close()
    _finish(thread, errors)


def test_a_report_carrying_a_request_id_is_not_taken_for_the_reply() -> None:
    def script(d: FakeDaemon) -> None:
        d.greet()
        ping = d.expect("ping")
        # `sent` and `dropped` carry the id of a send; only the type tells them from a reply.
        d.write({"type": "sent", "id": ping["id"], "endpoint": "feed"})
        d.write(
            {
                "type": "dropped",
                "id": ping["id"],
                "endpoint": "feed",
                "code": "shutting_down",
                "message": "the daemon stopped",
            }
        )
        d.write({"type": "lagged", "endpoint": "feed", "dropped": 2})
        d.write({"type": "pong", "id": ping["id"]})

    client, thread, errors = _client_with(script)
    client.hello(timeout=5)
    client.ping(timeout=5)
    assert client.buffered_events == 3
    events = client.events(timeout=5)
    assert [next(events)["type"] for _ in range(3)] == ["sent", "dropped", "lagged"]
    assert client.buffered_events == 0
    client.close()
    _finish(thread, errors)


def test_reconnect_and_reload() -> None:
    def script(d: FakeDaemon) -> None:
        d.greet()
        reconnect = d.expect("reconnect")
        assert reconnect == {"type": "reconnect", "id": 1, "endpoint": "feed"}
        d.write({"type": "ack", "id": 1})
        reload = d.expect("reload")
        assert reload == {"type": "reload", "id": 2}
        d.write(
            {
                "type": "error",
                "id": 2,
                "code": "invalid_config",
                "message": "wsmux.toml: endpoints.feed.url: the scheme must be `ws` or `wss`",
            }
        )
        d.expect("reload")
        d.write({"type": "ack", "id": 3})

    client, thread, errors = _client_with(script)
    client.hello(timeout=5)
    client.reconnect("feed", timeout=5)
    err = _assert_raises(WsmuxError, lambda: client.reload(timeout=5))
    assert (err.code, err.request_id, err.fatal) == ("invalid_config", 2, False)
    client.reload(timeout=5)
    client.close()
    _finish(thread, errors)


def test_undo_without_sticky_is_refused_before_sending() -> None:
    ours, theirs = socket.socketpair()
    client = WsmuxClient(SocketTransport(ours))
    _assert_raises(ValueError, lambda: client.send("feed", "x", undo="y"))
    _assert_raises(ValueError, lambda: client.send("feed", "x", sticky=False, undo="y"))
    client.close()
    theirs.close()


def test_disconnect_for_lagging_is_fatal() -> None:
    def script(d: FakeDaemon) -> None:
        d.greet()
        d.write({"type": "error", "code": "lagged", "message": "disconnected: too slow"})

    client, thread, errors = _client_with(script)
    client.hello(timeout=5)
    err = _assert_raises(WsmuxError, lambda: next(client.events(timeout=5)))
    assert (err.code, err.fatal) == ("lagged", True)
    client.close()
    _finish(thread, errors)


# --------------------------------------------------------------------------------------------
# The command line against a fake daemon on a Unix socket


def _run_cli(script: Script, *args: str) -> tuple[int, list[str], str]:
    """Runs main() against a fake daemon; returns (exit code, stdout lines, stderr)."""
    if not hasattr(socket, "AF_UNIX"):
        raise unittest.SkipTest("needs Unix domain sockets")
    directory = tempfile.mkdtemp(prefix="wsmux-test-")
    path = os.path.join(directory, "wsmuxd.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    errors: list[BaseException] = []

    def accept_and_serve() -> None:
        try:
            conn, _ = listener.accept()
        except BaseException as exc:
            errors.append(exc)
            return
        _serve(conn, script, errors)

    thread = threading.Thread(target=accept_and_serve, daemon=True)
    thread.start()
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--socket", path, *args])
    finally:
        listener.close()
        thread.join(timeout=5)
        shutil.rmtree(directory, ignore_errors=True)
    # The client may exit before the script has finished; only unexpected failures count.
    for exc in errors:
        if not isinstance(exc, (ConnectionClosed, OSError)):
            raise exc
    return code, out.getvalue().splitlines(), err.getvalue()


def test_cli_sends_and_prints_messages() -> None:
    def script(d: FakeDaemon) -> None:
        d.greet()
        sub = d.expect("subscribe")
        d.write({"type": "ack", "id": sub["id"]})
        d.write({"type": "state", "endpoint": "feed", "state": "connecting", "attempt": 1})
        d.write({"type": "state", "endpoint": "feed", "state": "open", "reconnect": False})
        send = d.expect("send")
        assert send == {"type": "send", "id": 2, "endpoint": "feed", "data": "ping me"}
        d.write({"type": "message", "endpoint": "feed", "seq": 7, "data": "ping me"})
        d.write({"type": "ack", "id": send["id"]})
        d.write({"type": "message", "endpoint": "feed", "seq": 8, "data": b"\x00\xff"})

    code, lines, err = _run_cli(script, "--endpoint", "feed", "--count", "2", "--send", "ping me")
    assert code == 0, err
    assert [json.loads(line) for line in lines] == [
        {"ack": 2},
        {"endpoint": "feed", "seq": 7, "data": "ping me"},
        {"endpoint": "feed", "seq": 8, "data_base64": "AP8="},
    ]
    assert "endpoint feed is connecting (attempt 1)" in err


def test_cli_reports_a_queued_send_once_it_is_sent() -> None:
    def script(d: FakeDaemon) -> None:
        d.greet()
        sub = d.expect("subscribe")
        d.write({"type": "ack", "id": sub["id"]})
        d.write({"type": "state", "endpoint": "feed", "state": "backoff", "attempt": 2})
        send = d.expect("send")
        d.write({"type": "ack", "id": send["id"], "queued": True})
        d.write({"type": "state", "endpoint": "feed", "state": "connecting", "attempt": 2})
        d.write(
            {
                "type": "state",
                "endpoint": "feed",
                "state": "open",
                "reconnect": True,
                "downtime_ms": 2350,
            }
        )
        d.write({"type": "sent", "id": send["id"], "endpoint": "feed"})
        d.write({"type": "message", "endpoint": "feed", "seq": 11, "data": "echo"})

    code, lines, err = _run_cli(script, "--endpoint", "feed", "--count", "1", "--send", "hi")
    assert code == 0, err
    assert [json.loads(line) for line in lines] == [
        {"ack": 2, "queued": True},
        {"sent": 2},
        {"endpoint": "feed", "seq": 11, "data": "echo"},
    ]
    assert "endpoint feed is open (reconnected after 2350 ms)" in err


def test_cli_waits_for_the_sent_report_before_exiting() -> None:
    def script(d: FakeDaemon) -> None:
        d.greet()
        sub = d.expect("subscribe")
        d.write({"type": "ack", "id": sub["id"]})
        d.write({"type": "state", "endpoint": "feed", "state": "backoff", "attempt": 1})
        send = d.expect("send")
        d.write({"type": "ack", "id": send["id"], "queued": True})
        with contextlib.suppress(ConnectionClosed, OSError):
            d.read()  # never sent: wait until the client gives up

    code, lines, err = _run_cli(
        script, "--endpoint", "feed", "--count", "0", "--send", "hi", "--timeout", "0.5"
    )
    assert code == 2
    assert [json.loads(line) for line in lines] == [{"ack": 2, "queued": True}]
    assert "timed out" in err


def test_cli_exits_2_when_the_queued_send_is_dropped() -> None:
    def script(d: FakeDaemon) -> None:
        d.greet()
        sub = d.expect("subscribe")
        d.write({"type": "ack", "id": sub["id"]})
        d.write({"type": "state", "endpoint": "feed", "state": "backoff", "attempt": 1})
        send = d.expect("send")
        d.write({"type": "ack", "id": send["id"], "queued": True})
        d.write(
            {
                "type": "dropped",
                "id": send["id"],
                "endpoint": "feed",
                "code": "expired",
                "message": "queued longer than max_age (30s)",
            }
        )

    code, lines, err = _run_cli(script, "--endpoint", "feed", "--count", "0", "--send", "hi")
    assert code == 2
    assert [json.loads(line) for line in lines] == [{"ack": 2, "queued": True}]
    assert "was dropped: expired" in err


def test_cli_sticky_send_waits_for_the_next_open() -> None:
    def script(d: FakeDaemon) -> None:
        d.greet()
        sub = d.expect("subscribe")
        d.write({"type": "ack", "id": sub["id"]})
        d.write({"type": "state", "endpoint": "feed", "state": "open", "reconnect": False})
        send = d.expect("send")
        assert send == {
            "type": "send",
            "id": 2,
            "endpoint": "feed",
            "data": "sub",
            "sticky": True,
            "undo": "unsub",
        }
        # The connection was lost just before the send arrived: the sticky message is held.
        d.write({"type": "state", "endpoint": "feed", "state": "backoff", "attempt": 1})
        d.write({"type": "ack", "id": 2, "queued": True})
        d.write({"type": "state", "endpoint": "feed", "state": "connecting", "attempt": 1})
        d.write({"type": "state", "endpoint": "feed", "state": "open", "reconnect": True})
        with contextlib.suppress(ConnectionClosed, OSError):
            d.read()

    code, lines, err = _run_cli(
        script,
        "--endpoint",
        "feed",
        "--count",
        "0",
        "--send",
        "sub",
        "--sticky",
        "--undo",
        "unsub",
    )
    assert code == 0, err
    assert [json.loads(line) for line in lines] == [{"ack": 2, "queued": True}]
    # The open before the ack did not count: the client waited for the one after it.
    assert "endpoint feed is connecting (attempt 1)" in err
    assert "sticky message has been sent" in err


def test_cli_no_queue_fails_fast() -> None:
    def script(d: FakeDaemon) -> None:
        d.greet()
        sub = d.expect("subscribe")
        d.write({"type": "ack", "id": sub["id"]})
        d.write({"type": "state", "endpoint": "feed", "state": "backoff", "attempt": 1})
        send = d.expect("send")
        assert send["queue"] is False
        d.write(
            {
                "type": "error",
                "id": send["id"],
                "code": "not_connected",
                "message": "endpoint `feed` is backoff",
            }
        )

    code, lines, err = _run_cli(script, "--endpoint", "feed", "--send", "now", "--no-queue")
    assert code == 2 and lines == []
    assert "not_connected" in err


def test_cli_exits_3_on_a_lagged_event() -> None:
    def script(d: FakeDaemon) -> None:
        d.greet()
        sub = d.expect("subscribe")
        d.write({"type": "ack", "id": sub["id"]})
        d.write({"type": "state", "endpoint": "feed", "state": "open"})
        d.write({"type": "message", "endpoint": "feed", "seq": 1, "data": "x"})
        d.write({"type": "lagged", "endpoint": "feed", "dropped": 3})
        d.write({"type": "message", "endpoint": "feed", "seq": 5, "data": "y"})

    code, lines, err = _run_cli(script, "--endpoint", "feed")
    assert code == 3
    assert [json.loads(line)["seq"] for line in lines] == [1]
    assert "3 messages of feed were dropped" in err


def test_cli_exits_3_when_disconnected_for_lagging() -> None:
    def script(d: FakeDaemon) -> None:
        d.greet()
        sub = d.expect("subscribe")
        d.write({"type": "ack", "id": sub["id"]})
        d.write({"type": "state", "endpoint": "feed", "state": "open"})
        d.write(
            {
                "type": "error",
                "code": "lagged",
                "message": "disconnected: this client did not read `feed` fast enough",
            }
        )

    code, lines, err = _run_cli(script, "--endpoint", "feed")
    assert code == 3 and lines == []
    assert "error lagged" in err


def test_cli_ignores_unknown_frame_types() -> None:
    def script(d: FakeDaemon) -> None:
        d.greet()
        sub = d.expect("subscribe")
        d.write({"type": "ack", "id": sub["id"]})
        d.write({"type": "state", "endpoint": "feed", "state": "open", "future_field": 1})
        d.write({"type": "something_new", "endpoint": "feed"})
        d.write({"type": "message", "endpoint": "feed", "seq": 1, "data": "x"})

    code, lines, err = _run_cli(script, "--endpoint", "feed", "--count", "1")
    assert code == 0, err
    assert [json.loads(line)["seq"] for line in lines] == [1]


def test_cli_exits_3_on_a_seq_gap() -> None:
    def script(d: FakeDaemon) -> None:
        d.greet()
        sub = d.expect("subscribe")
        d.write({"type": "ack", "id": sub["id"]})
        d.write({"type": "state", "endpoint": "feed", "state": "open"})
        for seq in (1, 2, 4):
            d.write({"type": "message", "endpoint": "feed", "seq": seq, "data": "x"})

    code, lines, err = _run_cli(script, "--endpoint", "feed")
    assert code == 3
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 4]
    assert "expected 3, got 4" in err


def test_cli_exits_2_on_an_error_frame() -> None:
    def script(d: FakeDaemon) -> None:
        d.greet()
        sub = d.expect("subscribe")
        d.write({"type": "error", "id": sub["id"], "code": "unknown_endpoint", "message": "nope"})

    code, lines, err = _run_cli(script, "--endpoint", "nope")
    assert code == 2 and lines == []
    assert "unknown_endpoint" in err


def test_cli_exits_2_on_timeout() -> None:
    def script(d: FakeDaemon) -> None:
        d.greet()
        sub = d.expect("subscribe")
        d.write({"type": "ack", "id": sub["id"]})
        d.write({"type": "state", "endpoint": "feed", "state": "open"})
        d.write({"type": "message", "endpoint": "feed", "seq": 1, "data": "only one"})
        with contextlib.suppress(ConnectionClosed, OSError):
            d.read()  # wait until the client gives up and disconnects

    code, lines, err = _run_cli(script, "--endpoint", "feed", "--count", "2", "--timeout", "0.5")
    assert code == 2
    assert len(lines) == 1
    assert "timed out" in err


if __name__ == "__main__":
    # A minimal runner for when pytest is not installed.
    failed = 0
    for name, test in list(globals().items()):
        if name.startswith("test_") and callable(test):
            try:
                test()
                print(f"ok    {name}")
            except unittest.SkipTest as skip:
                print(f"skip  {name}: {skip}")
            except Exception:
                failed += 1
                print(f"FAIL  {name}")
                import traceback

                traceback.print_exc()
    sys.exit(1 if failed else 0)


def test_subscribe_and_unsubscribe_with_topics() -> None:
    def script(d: FakeDaemon) -> None:
        d.greet()
        sub = d.expect("subscribe")
        assert sub == {"type": "subscribe", "id": 1, "endpoint": "feed", "topics": ["a", "b"]}
        d.write({"type": "ack", "id": 1})
        unsub = d.expect("unsubscribe")
        assert unsub == {"type": "unsubscribe", "id": 2, "endpoint": "feed", "topics": ["a"]}
        d.write({"type": "ack", "id": 2})

    client, thread, errors = _client_with(script)
    client.hello(timeout=5)
    try:
        client.subscribe("feed", timeout=5, topics="a")
    except TypeError:
        pass
    else:
        raise AssertionError("a plain string is refused")
    client.subscribe("feed", timeout=5, topics=["a", "b"])
    client.unsubscribe("feed", timeout=5, topics=("a",))
    client.close()
    _finish(thread, errors)
