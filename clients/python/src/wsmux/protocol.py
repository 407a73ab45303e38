"""The wire format of PROTOCOL.md, without any I/O.

A frame is a 4-byte unsigned big-endian length ``N`` followed by ``N`` bytes holding exactly
one MessagePack map with string keys and a string ``type``. MessagePack ``str`` is a Python
``str`` (a WebSocket text message), ``bin`` is ``bytes`` (a binary message).
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Union

import msgpack

from .errors import ProtocolError

#: The protocol version this package speaks (``hello.version``).
PROTOCOL_VERSION = 1

#: The daemon's default ``server.max_frame_size``: 16 MiB.
DEFAULT_MAX_FRAME = 16 * 1024 * 1024

#: The frame header: the body length as a 4-byte unsigned big-endian integer.
HEADER = struct.Struct(">I")

#: Environment variable naming the daemon socket (PROTOCOL.md section 2.1).
SOCKET_ENV = "WSMUX_SOCKET"

#: Error codes after which the daemon closes the connection (PROTOCOL.md section 11).
FATAL_CODES = frozenset(
    {
        "frame_too_large",
        "bad_frame",
        "hello_required",
        "unsupported_version",
        "too_many_clients",
        "permission_denied",
        "lagged",
        "timeout",
    }
)

#: Every error code of PROTOCOL.md section 11 that this package knows. Daemons may send
#: others (treat them as generic failures); only ``FATAL_CODES`` end the connection. The topic
#: codes: ``topic_rejected`` (an event: the upstream refused a topic), ``invalid_topic``,
#: ``too_many_topics`` and ``topics_unsupported`` (replies to ``subscribe``).
ERROR_CODES = frozenset(
    {
        "frame_too_large",
        "bad_frame",
        "invalid_msgpack",
        "not_a_map",
        "missing_type",
        "unknown_type",
        "invalid_message",
        "invalid_data",
        "hello_required",
        "unsupported_version",
        "already_greeted",
        "unknown_endpoint",
        "not_connected",
        "too_large",
        "not_subscribed",
        "too_many_subscriptions",
        "queue_full",
        "overflowed",
        "expired",
        "lagged",
        "too_many_clients",
        "permission_denied",
        "shutting_down",
        "send_failed",
        "fatal",
        "invalid_config",
        "unsupported",
        "internal",
        "sticky_full",
        "busy",
        "timeout",
        "topic_rejected",
        "invalid_topic",
        "too_many_topics",
        "topics_unsupported",
    }
)

#: Frame types that answer a request; they carry the request's ``id`` when it had one.
REPLY_TYPES = frozenset({"ack", "error", "status", "pong"})

#: A decoded frame: a dict with a ``str`` under ``"type"``.
Frame = dict[str, Any]

#: What ``send`` accepts: ``str`` is sent as text, bytes-like objects as binary.
Data = Union[str, bytes, bytearray, memoryview]


def request(type_: str, id_: int | None = None, **fields: Any) -> Frame:
    """Builds a request map: ``type`` first, then ``id``, then the other fields.

    Fields whose value is None are left out. This is the key order the daemon uses, so the
    frames are byte-identical to the examples in PROTOCOL.md (receivers do not care).
    """
    msg: Frame = {"type": type_}
    if id_ is not None:
        msg["id"] = id_
    msg.update((k, v) for k, v in fields.items() if v is not None)
    return msg


def topic_list(topics: Iterable[str] | None) -> list[str] | None:
    """Checks the ``topics`` argument of ``subscribe``/``unsubscribe``: None, or an iterable of
    ``str`` that is not itself a string. Only the types are checked; the daemon checks the
    limits (empty topics, length, shape, count).
    """
    if topics is None:
        return None
    if isinstance(topics, (str, bytes, bytearray, memoryview)) or not isinstance(topics, Iterable):
        raise TypeError(
            f"topics must be a list of str, such as ['btcusdt@trade'], not {type(topics).__name__}"
        )
    out = list(topics)
    for topic in out:
        if not isinstance(topic, str):
            raise TypeError(f"every topic must be a str, not {type(topic).__name__}")
    return out


def encode_frame(msg: Mapping[str, Any], max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Encodes one message as a whole frame (header included).

    Keys whose value is None are omitted, as PROTOCOL.md section 4 recommends for absent
    optional fields. ``bytearray`` and ``memoryview`` values are sent as ``bin``.
    """
    body: bytes = msgpack.packb(
        {k: _normalise(v) for k, v in msg.items() if v is not None}, use_bin_type=True
    )
    if len(body) > max_frame:
        raise ValueError(f"frame body of {len(body)} bytes exceeds the maximum of {max_frame}")
    return HEADER.pack(len(body)) + body


def _normalise(value: Any) -> Any:
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value


def decode_body(body: bytes) -> Frame:
    """Decodes one frame body: exactly one MessagePack map with a string ``type``."""
    try:
        # unpackb rejects bytes after the first value (ExtraData), as the protocol does.
        value = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"invalid MessagePack in a frame body: {exc}") from exc
    if not isinstance(value, dict):
        raise ProtocolError("the frame body is not a MessagePack map")
    if not isinstance(value.get("type"), str):
        raise ProtocolError("the frame has no string `type`")
    return value


def decode_frame(frame: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> Frame:
    """Decodes exactly one whole frame (header included)."""
    decoder = FrameDecoder(max_frame)
    decoder.feed(frame)
    msg = decoder.next_frame()
    if msg is None or decoder.buffered:
        raise ProtocolError("the bytes are not exactly one frame")
    return msg


class FrameDecoder:
    """Cuts frames out of a byte stream that arrives in arbitrary pieces.

    ``feed`` the bytes as they are read, then call ``next_frame`` until it returns None (or
    iterate over the decoder).
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0
        #: Bytes of the frame ``next_frame`` returned last, header included.
        self.last_size = 0

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned (part of an incomplete frame)."""
        return len(self._buf) - self._pos

    def next_frame(self) -> Frame | None:
        """Returns the next complete message, or None if more bytes are needed."""
        if self.buffered < HEADER.size:
            return None
        (length,) = HEADER.unpack_from(self._buf, self._pos)
        # Checked before the body arrives: no amount of input can fix a bad length.
        if length > self.max_frame:
            raise ProtocolError(
                f"frame length {length} exceeds the maximum of {self.max_frame} bytes"
            )
        start = self._pos + HEADER.size
        end = start + length
        if len(self._buf) < end:
            return None
        body = bytes(self._buf[start:end])
        self._pos = end
        self.last_size = end - start + HEADER.size
        return decode_body(body)

    def __iter__(self) -> Iterator[Frame]:
        while True:
            msg = self.next_frame()
            if msg is None:
                return
            yield msg


def default_socket_path() -> str:
    """Where the daemon listens by default, as PROTOCOL.md section 2.1 describes.

    ``$WSMUX_SOCKET`` if set and not empty; on Unix ``$XDG_RUNTIME_DIR/wsmux/wsmuxd.sock`` if
    ``XDG_RUNTIME_DIR`` is an absolute path, else ``<tmp>/wsmux-<uid>/wsmuxd.sock`` with
    ``<tmp>`` = ``$TMPDIR`` or ``/tmp``; on Windows ``\\\\.\\pipe\\wsmuxd-<USERNAME>``.
    """
    explicit = os.environ.get(SOCKET_ENV)
    if explicit:
        return explicit
    if sys.platform == "win32":
        user = os.environ.get("USERNAME") or "default"
        return rf"\\.\pipe\wsmuxd-{user}"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.path.isabs(runtime_dir):
        return os.path.join(runtime_dir, "wsmux", "wsmuxd.sock")
    # The daemon uses Rust's std::env::temp_dir(): $TMPDIR, else /tmp. Python's
    # tempfile.gettempdir() looks at more places, so it is not used here.
    temp_dir = os.environ.get("TMPDIR") or "/tmp"
    return os.path.join(temp_dir, f"wsmux-{os.geteuid()}", "wsmuxd.sock")
