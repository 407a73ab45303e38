#!/usr/bin/env python3
"""A small wsmux client, written from PROTOCOL.md.

It needs only the standard library and the ``msgpack`` package (``pip install msgpack``).

Library use::

    from wsmux_client import WsmuxClient

    # The socket is found as PROTOCOL.md section 2.1 describes, unless a path is given.
    with WsmuxClient.connect() as client:
        client.subscribe("feed", timeout=5)
        ack = client.send_ack("feed", '{"op": "hello"}', timeout=5)
        if ack.get("queued"):
            pass  # the endpoint is down: a `sent` (or `dropped`) event with ack["id"] follows
        for event in client.events(timeout=30):
            if event["type"] == "message":
                # event["data"] is a str for a text message, bytes for a binary one.
                print(event["seq"], event["data"])

Command line::

    python3 wsmux_client.py [--socket PATH] --endpoint NAME [--count N] [--send TEXT]
                            [--no-queue] [--sticky] [--undo TEXT] [--timeout SECONDS]
                            [--daemon-uid UID]

See README.md next to this file for the output format and exit codes.
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Union, cast

import msgpack  # type: ignore[import-untyped]

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 16 * 1024 * 1024  # the daemon's default max_frame_size
HEADER = struct.Struct(">I")  # 4-byte unsigned big-endian body length

# Error codes after which the daemon closes the connection (PROTOCOL.md section 11).
# `lagged` is an error only when the endpoint's slow-client policy is "disconnect"; with the
# default policy the daemon sends a `lagged` event instead, which is not an error.
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

# Frame types that answer a request; they carry the request's id when it had one. The reports
# `sent` and `dropped` also carry the id of a `send`, but they are events, never the reply.
REPLY_TYPES = frozenset({"ack", "error", "status", "pong"})

Message = dict[str, Any]
Data = Union[str, bytes, bytearray, memoryview]


# --------------------------------------------------------------------------------------------
# Errors


class ProtocolError(Exception):
    """The daemon sent something that is not a valid frame."""


class ConnectionClosed(Exception):
    """The daemon closed the connection."""


class UntrustedDaemon(Exception):
    """The socket is served by a process of another user: not a daemon we trust (someone may
    have taken the socket path). Nothing was sent to it."""

    def __init__(self, path: str, uid: int, own_uid: int, expected_uid: int | None) -> None:
        extra = "" if expected_uid is None else f" or the expected uid {expected_uid}"
        super().__init__(
            f"refusing {path}: the process listening there runs as uid {uid}, not as this user "
            f"(uid {own_uid}) or root{extra}; another user may have taken the socket path (if "
            f"the daemon deliberately runs as uid {uid}, use --daemon-uid {uid} or set "
            "WSMUX_DAEMON_UID)"
        )
        self.path = path
        self.uid = uid


class WsmuxError(Exception):
    """The daemon answered with an ``error`` frame."""

    def __init__(self, code: str, message: str, request_id: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id

    @classmethod
    def from_frame(cls, frame: Mapping[str, Any]) -> WsmuxError:
        return cls(str(frame.get("code")), str(frame.get("message", "")), frame.get("id"))

    @property
    def fatal(self) -> bool:
        return self.code in FATAL_CODES


# --------------------------------------------------------------------------------------------
# Encoding and decoding (no I/O here)


def request_message(type_: str, id_: int | None = None, **fields: Any) -> Message:
    """Builds a request map: ``type`` first, then ``id``, then the other fields.

    This is the key order the daemon itself uses; order does not matter to a receiver, but it
    makes our frames byte-identical to the examples in PROTOCOL.md.
    """
    msg: Message = {"type": type_}
    if id_ is not None:
        msg["id"] = id_
    msg.update(fields)
    return msg


def encode_frame(msg: Mapping[str, Any], max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Encodes one message as a frame: 4-byte big-endian length, then a MessagePack map.

    Keys whose value is None are left out (absent optional fields are omitted, not sent as
    nil). ``str`` values become MessagePack ``str`` (text), ``bytes`` become ``bin`` (binary).
    """
    body: bytes = msgpack.packb(
        {key: value for key, value in msg.items() if value is not None}, use_bin_type=True
    )
    if len(body) > max_frame:
        raise ValueError(f"frame body of {len(body)} bytes exceeds the maximum of {max_frame}")
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> Message:
    """Decodes one frame body: exactly one MessagePack map with a string ``type``.

    ``raw=False`` turns MessagePack ``str`` into Python ``str`` and leaves ``bin`` as
    ``bytes``, so text and binary messages stay distinguishable.
    """
    try:
        # unpackb rejects trailing bytes after the first value (ExtraData), as the protocol does.
        value = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"invalid MessagePack in frame body: {exc}") from exc
    if not isinstance(value, dict):
        raise ProtocolError("frame body is not a MessagePack map")
    if not isinstance(value.get("type"), str):
        raise ProtocolError("frame has no string `type`")
    return value


class FrameDecoder:
    """Cuts frames out of a byte stream that arrives in arbitrary pieces.

    ``feed`` the bytes as they are read, then call ``next_message`` until it returns None.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message (part of an incomplete frame)."""
        return len(self._buf)

    def next_message(self) -> Message | None:
        """Returns the next complete message, or None if more bytes are needed."""
        if len(self._buf) < HEADER.size:
            return None
        (length,) = HEADER.unpack_from(self._buf)
        # Checked before the body arrives: a bad length can never be fixed by more input.
        if length > self.max_frame:
            raise ProtocolError(
                f"frame length {length} exceeds the maximum of {self.max_frame} bytes"
            )
        end = HEADER.size + length
        if len(self._buf) < end:
            return None
        body = bytes(self._buf[HEADER.size : end])
        del self._buf[:end]
        return decode_body(body)

    def __iter__(self) -> Iterator[Message]:
        """Yields every complete message currently buffered."""
        while True:
            msg = self.next_message()
            if msg is None:
                return
            yield msg


# --------------------------------------------------------------------------------------------
# Socket discovery and transports


def default_socket_path() -> str:
    """Where the daemon listens, found as described in PROTOCOL.md section 2.1."""
    explicit = os.environ.get("WSMUX_SOCKET")
    if explicit:
        return explicit
    if sys.platform == "win32":
        user = os.environ.get("USERNAME") or "default"
        return rf"\\.\pipe\wsmuxd-{user}"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.path.isabs(runtime_dir):
        return os.path.join(runtime_dir, "wsmux", "wsmuxd.sock")
    # The daemon uses Rust's std::env::temp_dir(): $TMPDIR, else /tmp. (Python's
    # tempfile.gettempdir() may pick another directory, so it is not used here.)
    temp_dir = os.environ.get("TMPDIR") or "/tmp"
    return os.path.join(temp_dir, f"wsmux-{os.getuid()}", "wsmuxd.sock")


# --------------------------------------------------------------------------------------------
# Who serves the socket (PROTOCOL.md section 2.3)

DAEMON_UID_ENV = "WSMUX_DAEMON_UID"  # one more uid the daemon may run as


def expected_daemon_uid(explicit: int | None = None) -> int | None:
    """The extra trusted uid: ``explicit``, else ``$WSMUX_DAEMON_UID``, else None."""
    if explicit is not None:
        return explicit
    text = os.environ.get(DAEMON_UID_ENV, "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise ValueError(f"{DAEMON_UID_ENV} must be a numeric user id, not {text[:40]!r}")
    return int(text)


def peer_uid(sock: socket.socket) -> int | None:
    """The effective uid of the process at the other end of a Unix socket, or None where the
    platform cannot tell."""
    if hasattr(socket, "SO_PEERCRED"):  # Linux: struct ucred {pid_t pid; uid_t uid; gid_t gid}
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("iII"))
        return int(struct.unpack("iII", raw)[1])
    if sys.platform == "darwin" or sys.platform.startswith(("freebsd", "dragonfly")):
        # getsockopt(SOL_LOCAL = 0, LOCAL_PEERCRED = 1): struct xucred {u_int cr_version;
        # uid_t cr_uid; ...}, with cr_version == XUCRED_VERSION == 0.
        raw = sock.getsockopt(0, 1, 256)
        version, uid = struct.unpack_from("=II", raw)
        if version != 0:
            raise OSError(f"unexpected xucred version {version}")
        return int(uid)
    return None


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (None: no limit); raises TimeoutError once it passed."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


class SocketTransport:
    """A connected stream socket (a Unix domain socket, or a socketpair in tests)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    @classmethod
    def connect_unix(
        cls, path: str, deadline: float | None, expected_uid: int | None = None
    ) -> SocketTransport:
        """Connects, then checks that the listening process runs as this user, root or
        ``expected_uid`` (raises UntrustedDaemon otherwise)."""
        if sys.platform == "win32":
            raise OSError("Windows uses named pipes, not Unix domain sockets")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(_remaining(deadline))
            sock.connect(path)
        except socket.timeout as exc:
            sock.close()
            raise TimeoutError("timed out connecting to the daemon") from exc
        except BaseException:
            sock.close()
            raise
        uid = peer_uid(sock)
        if uid is not None and uid not in (os.geteuid(), 0) and uid != expected_uid:
            sock.close()
            raise UntrustedDaemon(path, uid, os.geteuid(), expected_uid)
        return cls(sock)

    def send_all(self, data: bytes, deadline: float | None) -> None:
        try:
            self._sock.settimeout(_remaining(deadline))
            self._sock.sendall(data)
        except socket.timeout as exc:  # an alias of TimeoutError only since Python 3.10
            raise TimeoutError("timed out writing to the daemon") from exc

    def recv(self, deadline: float | None) -> bytes:
        """Returns the bytes available now (at least one), or b"" at end of file."""
        try:
            self._sock.settimeout(_remaining(deadline))
            return self._sock.recv(65536)
        except socket.timeout as exc:
            raise TimeoutError("timed out waiting for the daemon") from exc

    def close(self) -> None:
        self._sock.close()


class PipeTransport:
    """A Windows named pipe, used from one thread only.

    A pipe handle opened without overlapped I/O cannot be read with a timeout, so ``recv``
    polls ``PeekNamedPipe`` and reads only what is already there.
    """

    POLL_INTERVAL = 0.01
    _ERROR_PIPE_BUSY = 231

    _file: io.FileIO
    _handle: int

    def __init__(self, path: str, deadline: float | None) -> None:
        if sys.platform != "win32":
            raise OSError("named pipes are used on Windows only")
        import msvcrt

        while True:
            try:
                self._file = open(path, "r+b", buffering=0)
                break
            except OSError as exc:
                # Every pipe instance is taken for a moment; the daemon creates the next one.
                if getattr(exc, "winerror", None) != self._ERROR_PIPE_BUSY:
                    raise
                _remaining(deadline)
                time.sleep(0.05)
        self._handle = msvcrt.get_osfhandle(self._file.fileno())

    def send_all(self, data: bytes, deadline: float | None) -> None:
        # A blocking pipe write returns only when everything has been written.
        view = memoryview(data)
        while view:
            view = view[self._file.write(view) :]

    def recv(self, deadline: float | None) -> bytes:
        if sys.platform != "win32":
            raise OSError("named pipes are used on Windows only")
        import _winapi

        while True:
            try:
                # Without a size argument it returns (bytes available, bytes left in message).
                available, _ = cast("tuple[int, int]", _winapi.PeekNamedPipe(self._handle))
            except BrokenPipeError:
                return b""  # the daemon closed its end
            if available:
                return self._file.read(min(available, 65536)) or b""
            _remaining(deadline)
            time.sleep(self.POLL_INTERVAL)

    def close(self) -> None:
        self._file.close()


Transport = Union[SocketTransport, PipeTransport]


# --------------------------------------------------------------------------------------------
# The client


class WsmuxClient:
    """A connection to wsmuxd.

    The client is synchronous and single-threaded: a method that waits for a reply reads
    frames until the reply with its id arrives, and keeps every other frame (events, replies
    nobody waits for) in a queue that ``events()`` hands out later, in arrival order.

    Every waiting method takes ``timeout`` in seconds (None waits forever) and raises
    ``TimeoutError`` when it expires, ``WsmuxError`` for an ``error`` reply or a fatal error,
    ``ConnectionClosed`` at end of file and ``ProtocolError`` for an undecodable frame.
    """

    def __init__(self, transport: Transport, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._transport = transport
        self._decoder = FrameDecoder(max_frame)
        self._pending: collections.deque[Message] = collections.deque()
        self._next_id = 1
        self.max_frame = max_frame
        # The daemon's welcome: {"version": 1, "server": ..., "endpoints": [...]}.
        self.welcome: Message = {}

    # -- connecting ------------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        path: str | None = None,
        *,
        client_name: str = "wsmux_client.py",
        timeout: float | None = 10.0,
        max_frame: int = DEFAULT_MAX_FRAME,
        daemon_uid: int | None = None,
    ) -> WsmuxClient:
        """Connects to the daemon (default: ``default_socket_path()``) and greets it.

        First it checks who serves the socket: the process must run as this user, root or
        ``daemon_uid`` (default ``$WSMUX_DAEMON_UID``); otherwise ``UntrustedDaemon``.
        """
        path = path or default_socket_path()
        deadline = _deadline(timeout)
        transport: Transport
        if sys.platform == "win32":
            transport = PipeTransport(path, deadline)
        else:
            expected = expected_daemon_uid(daemon_uid)
            transport = SocketTransport.connect_unix(path, deadline, expected)
        client = cls(transport, max_frame)
        try:
            client.hello(client_name, timeout=_remaining(deadline))
        except BaseException:
            client.close()
            raise
        return client

    def hello(self, client_name: str | None = None, timeout: float | None = None) -> Message:
        """Sends ``hello`` and waits for ``welcome``. ``connect`` already does this."""
        deadline = _deadline(timeout)
        hello = request_message("hello", version=PROTOCOL_VERSION, client=client_name)
        try:
            self._write(hello, deadline)
        except (BrokenPipeError, ConnectionResetError):
            # The daemon may have refused us right after accepting (permission_denied,
            # too_many_clients) and closed: its error frame may still be readable below.
            pass
        frame = self._read_message(deadline)
        if frame["type"] == "error":
            raise WsmuxError.from_frame(frame)
        if frame["type"] != "welcome":
            raise ProtocolError(f"expected welcome, got {frame['type']}")
        if frame.get("version") != PROTOCOL_VERSION:
            raise ProtocolError(f"daemon speaks protocol version {frame.get('version')}")
        self.welcome = frame
        return frame

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> WsmuxClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- requests --------------------------------------------------------------------------

    def subscribe(
        self,
        endpoint: str,
        timeout: float | None = None,
        topics: Sequence[str] | None = None,
        *,
        since: int | None = None,
        epoch: str | None = None,
    ) -> Message:
        """Subscribes to ``endpoint`` (or, with ``topics``, to those topics of it: only their
        messages arrive, each with ``topic`` and ``topic_seq``) and waits for the ack, which
        it returns.

        The daemon then sends a ``state`` event with the endpoint's current state, followed by
        its messages and state changes; read them with ``events()``. A topic the upstream
        refuses arrives later as an ``error`` event with code ``topic_rejected``.

        ``since`` resumes after that ``seq`` (PROTOCOL.md section 19): the daemon first
        replays from its history what it still has after it. ``epoch`` is the
        ``welcome.epoch`` that ``since`` belongs to (absent: the daemon's current one). The
        ack's ``first_seq`` is the first ``seq`` the subscription delivers; with ``since``,
        ``recovered`` says whether nothing was missed. While such a resume is answered, the
        messages of the endpoint with ``seq > since`` that arrive before the ack are sent
        again after it: this method drops them (the seam rule).
        """
        if epoch is not None and since is None:
            raise ValueError("epoch is only meaningful with since")
        fields: dict[str, Any] = {"endpoint": endpoint, "since": since, "epoch": epoch}
        if topics is not None:
            fields["topics"] = _topic_list(topics)
        if since is None:
            return self.request("subscribe", timeout, **fields)

        def seam(frame: Message) -> bool:
            return not (
                frame["type"] == "message"
                and frame.get("endpoint") == endpoint
                and isinstance(frame.get("seq"), int)
                and frame["seq"] > since
            )

        return self.request("subscribe", timeout, _keep=seam, **fields)

    @property
    def epoch(self) -> str | None:
        """The daemon's ``welcome.epoch``: new each time it starts (None from daemons that
        do not send one). A ``seq`` only means something together with it."""
        epoch = self.welcome.get("epoch")
        return epoch if isinstance(epoch, str) else None

    def unsubscribe(
        self,
        endpoint: str,
        timeout: float | None = None,
        topics: Sequence[str] | None = None,
    ) -> None:
        """Unsubscribes (from ``topics`` only, if given); nothing about them arrives after
        this returns (apart from events already queued in this client)."""
        if topics is None:
            self.request("unsubscribe", timeout, endpoint=endpoint)
        else:
            self.request("unsubscribe", timeout, endpoint=endpoint, topics=_topic_list(topics))

    def send(
        self,
        endpoint: str,
        data: Data,
        timeout: float | None = None,
        *,
        queue: bool | None = None,
        sticky: bool | None = None,
        undo: Data | None = None,
    ) -> int:
        """Sends one message upstream and waits for the daemon's acknowledgement.

        A ``str`` is sent as a WebSocket text message, bytes-like data as a binary message.
        Returns the request id (the id of the ack). If the endpoint is open, the message has
        been written when this returns; if not, it may only have been queued: use
        ``send_ack`` to tell the two apart. The keyword arguments are those of ``send_ack``.
        """
        ack = self.send_ack(endpoint, data, timeout, queue=queue, sticky=sticky, undo=undo)
        return int(ack["id"])

    def send_ack(
        self,
        endpoint: str,
        data: Data,
        timeout: float | None = None,
        *,
        queue: bool | None = None,
        sticky: bool | None = None,
        undo: Data | None = None,
    ) -> Message:
        """Sends one message upstream and returns the daemon's ``ack`` map.

        ``ack.get("queued")`` is true when the endpoint was not open and the message was held
        instead of written. For a plain send, a ``sent`` event (written) or a ``dropped`` event
        (given up) with the same ``id`` follows later; read it with ``events()``. A sticky
        message held this way is written at the next connect, before ``state open``; no
        ``sent`` follows.

        ``queue=False`` fails with ``not_connected`` instead of queueing. ``sticky=True`` makes
        the daemon write the message again after every reconnect while this client stays
        connected; ``undo`` (only with ``sticky``) is written when this client disconnects.
        None leaves a field out (the daemon's defaults: queue, not sticky).
        """
        if undo is not None and not sticky:
            raise ValueError("undo is only meaningful with sticky=True")
        return self.request(
            "send",
            timeout,
            endpoint=endpoint,
            data=_as_payload(data),
            queue=queue,
            sticky=sticky,
            undo=None if undo is None else _as_payload(undo),
        )

    def reconnect(self, endpoint: str, timeout: float | None = None) -> None:
        """Asks the daemon to close the endpoint's upstream connection and connect again at
        once (this also revives a ``failed`` endpoint). Returns when the new attempt has
        started; ``state`` events tell how it goes."""
        self.request("reconnect", timeout, endpoint=endpoint)

    def reload(self, timeout: float | None = None) -> None:
        """Asks the daemon to re-read its configuration file. Raises WsmuxError with code
        ``invalid_config`` (the old configuration keeps running) or ``unsupported`` (a daemon
        without a configuration file)."""
        self.request("reload", timeout)

    def status(self, timeout: float | None = None) -> list[Message]:
        """Returns the status of every endpoint (the ``endpoints`` of the status reply)."""
        return list(self.request("status", timeout).get("endpoints", []))

    def ping(self, timeout: float | None = None) -> float:
        """Pings the daemon; returns the round trip in seconds."""
        started = time.monotonic()
        self.request("ping", timeout)
        return time.monotonic() - started

    def request(
        self,
        type_: str,
        timeout: float | None = None,
        _keep: Callable[[Message], bool] | None = None,
        **fields: Any,
    ) -> Message:
        """Sends a request with a fresh id and returns its reply (ack, status or pong).

        Frames that arrive meanwhile are kept for ``events()`` (those ``_keep`` accepts, if
        given).
        """
        deadline = _deadline(timeout)
        request_id = self._next_id
        self._next_id += 1
        self._write(request_message(type_, request_id, **fields), deadline)
        while True:
            frame = self._read_message(deadline)
            self._raise_if_fatal(frame)
            if frame["type"] in REPLY_TYPES and frame.get("id") == request_id:
                if frame["type"] == "error":
                    raise WsmuxError.from_frame(frame)
                return frame
            if _keep is None or _keep(frame):
                self._pending.append(frame)

    # -- events ----------------------------------------------------------------------------

    def events(self, timeout: float | None = None) -> Iterator[Message]:
        """Yields incoming frames that no request consumed, in arrival order.

        These are the events ``state``, ``message``, ``lagged``, ``sent`` and ``dropped`` and
        ``error`` frames without id; callers should ignore types they do not know. ``timeout``
        bounds the whole iteration, counted from this call. A fatal error frame (including
        ``lagged`` when the daemon disconnects a slow client) is raised as WsmuxError; end of
        file as ConnectionClosed.

        Requests may be made while iterating: frames they read meanwhile are yielded next.
        """
        return self._events(_deadline(timeout))

    @property
    def buffered_events(self) -> int:
        """How many frames were received while waiting for replies and not yet handed out by
        ``events()``. Right after a request returns, these are the frames that arrived before
        its reply: ``events()`` yields them first."""
        return len(self._pending)

    def _events(self, deadline: float | None) -> Iterator[Message]:
        while True:
            if self._pending:
                yield self._pending.popleft()
                continue
            frame = self._read_message(deadline)
            self._raise_if_fatal(frame)
            yield frame

    # -- I/O -------------------------------------------------------------------------------

    def _write(self, msg: Mapping[str, Any], deadline: float | None) -> None:
        self._transport.send_all(encode_frame(msg, self.max_frame), deadline)

    def _read_message(self, deadline: float | None) -> Message:
        """Reads until one whole frame is buffered; handles frames split across reads."""
        while True:
            msg = self._decoder.next_message()
            if msg is not None:
                return msg
            chunk = self._transport.recv(deadline)
            if not chunk:
                if self._decoder.buffered:
                    raise ConnectionClosed("the daemon closed the connection inside a frame")
                raise ConnectionClosed("the daemon closed the connection")
            self._decoder.feed(chunk)

    @staticmethod
    def _raise_if_fatal(frame: Message) -> None:
        if frame["type"] == "error" and frame.get("code") in FATAL_CODES:
            raise WsmuxError.from_frame(frame)


def _as_payload(data: Data) -> str | bytes:
    """``str`` stays text; bytearray / memoryview become bytes, packed as MessagePack bin."""
    return data if isinstance(data, str) else bytes(data)


# --------------------------------------------------------------------------------------------
# Command line

EXIT_OK = 0
EXIT_FAILURE = 2  # timeout, error frame, dropped send, connection problem
EXIT_GAP = 3  # messages were missed (seq gap, `lagged` event, or disconnected for lagging)
EXIT_UNTRUSTED = 4  # the socket is served by another user: not the daemon


def _print_json(obj: Mapping[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def _note(text: str) -> None:
    print(f"wsmux_client: {text}", file=sys.stderr, flush=True)


def _describe_state(event: Mapping[str, Any]) -> str:
    details = []
    if event.get("attempt") is not None:
        details.append(f"attempt {event['attempt']}")
    if event.get("retry_in_ms") is not None:
        details.append(f"retry in {event['retry_in_ms']} ms")
    if event.get("reconnect"):
        downtime = event.get("downtime_ms")
        details.append("reconnected" if downtime is None else f"reconnected after {downtime} ms")
    if event.get("reason") is not None:
        details.append(str(event["reason"]))
    suffix = f" ({', '.join(details)})" if details else ""
    return f"endpoint {event.get('endpoint')} is {event.get('state')}{suffix}"


def _message_json(event: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"endpoint": event.get("endpoint"), "seq": event.get("seq")}
    data = event.get("data")
    if isinstance(data, bytes):
        out["data_base64"] = base64.b64encode(data).decode("ascii")
    else:
        out["data"] = data
    return out


def _topic_list(topics: Sequence[str]) -> list[str]:
    """``topics`` as the list the protocol wants; a plain string is a mistake, not a list."""
    if isinstance(topics, (str, bytes)) or not all(isinstance(t, str) for t in topics):
        raise TypeError("topics must be a list of str")
    return list(topics)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Subscribe to a wsmux endpoint, optionally send one text message, and "
        "print received messages as JSON lines."
    )
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help="daemon socket (default: $WSMUX_SOCKET, else the per-user default location)",
    )
    parser.add_argument("--endpoint", metavar="NAME", required=True, help="endpoint name")
    parser.add_argument(
        "--count",
        metavar="N",
        type=int,
        default=5,
        help="exit after N messages (default 5)",
    )
    parser.add_argument(
        "--send",
        metavar="TEXT",
        help="send TEXT as a text message (queued by the daemon if the endpoint is down)",
    )
    parser.add_argument(
        "--no-queue",
        action="store_true",
        help="with --send: fail (not_connected) instead of queueing if the endpoint is down",
    )
    parser.add_argument(
        "--sticky",
        action="store_true",
        help="with --send: the daemon sends TEXT again after every reconnect while this "
        "client runs",
    )
    parser.add_argument(
        "--undo",
        metavar="TEXT",
        help="with --sticky: text message the daemon sends when this client exits",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=30.0,
        help="give up after this many seconds in total (default 30)",
    )
    parser.add_argument(
        "--daemon-uid",
        metavar="UID",
        type=int,
        help="also trust a daemon running as this uid (default: $WSMUX_DAEMON_UID; the daemon "
        "must otherwise run as this user or root)",
    )
    args = parser.parse_args(argv)
    if args.count < 0:
        parser.error("--count must not be negative")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if args.send is None and (args.no_queue or args.sticky):
        parser.error("--no-queue and --sticky need --send")
    if args.undo is not None and not args.sticky:
        parser.error("--undo needs --sticky")
    return args


def _run(client: WsmuxClient, args: argparse.Namespace, deadline: float) -> int:
    endpoint: str = args.endpoint
    received = 0
    last_seq: int | None = None
    # What the send still waits for: None (nothing, or no send), "sent" (a queued plain send:
    # its `sent` or `dropped` report), or "open" (a held sticky send: the next `state open`,
    # which the daemon announces only after writing the sticky messages).
    waiting: str | None = None
    send_id: int | None = None
    # Events that arrived before the send's ack; a `state open` among them says nothing about
    # the sticky message.
    before_ack = 0

    client.subscribe(endpoint, timeout=_remaining(deadline))
    if args.send is not None:
        # The daemon queues the message if the endpoint is not open (unless --no-queue), so
        # there is no need to wait for `open` first. Frames arriving before the ack are kept
        # and come out of the loop below, after the ack line.
        ack = client.send_ack(
            endpoint,
            args.send,
            timeout=_remaining(deadline),
            queue=False if args.no_queue else None,
            sticky=True if args.sticky else None,
            undo=args.undo,
        )
        send_id = int(ack["id"])
        if ack.get("queued"):
            _print_json({"ack": send_id, "queued": True})
            waiting = "open" if args.sticky else "sent"
            before_ack = client.buffered_events
            _note(
                f"endpoint {endpoint} is not open: the message will be sent when it opens"
                if args.sticky
                else f"endpoint {endpoint} is not open: the message is queued"
            )
        else:
            _print_json({"ack": send_id})
    if args.count == 0 and waiting is None:
        return EXIT_OK

    # The subscribe ack is followed by a `state` event with the current state, so the loop
    # below always sees whether the endpoint is open before any message arrives.
    for index, event in enumerate(client.events(timeout=_remaining(deadline))):
        kind = event["type"]
        if kind == "state" and event.get("endpoint") == endpoint:
            _note(_describe_state(event))
            state = event.get("state")
            if state == "open" and waiting == "open" and index >= before_ack:
                _note("the sticky message has been sent")
                waiting = None
            elif state in ("failed", "closed"):
                _note(f"endpoint {endpoint} will not deliver any more messages")
                return EXIT_FAILURE
        elif kind == "message" and event.get("endpoint") == endpoint:
            _print_json(_message_json(event))
            seq = int(event["seq"])
            if last_seq is not None and seq != last_seq + 1:
                _note(f"seq gap: expected {last_seq + 1}, got {seq}")
                return EXIT_GAP
            last_seq = seq
            received += 1
        elif kind == "sent" and send_id is not None and event.get("id") == send_id:
            _print_json({"sent": send_id})
            waiting = None
        elif kind == "dropped":
            _note(
                f"send {event.get('id')} to {event.get('endpoint')} was dropped: "
                f"{event.get('code')}: {event.get('message')}"
            )
            if send_id is not None and event.get("id") == send_id:
                return EXIT_FAILURE
        elif kind == "lagged":
            _note(
                f"{event.get('dropped')} messages of {event.get('endpoint')} were dropped: "
                "this client did not read fast enough"
            )
            return EXIT_GAP
        elif kind == "error":
            _note(f"error {event.get('code')}: {event.get('message')}")
            return EXIT_FAILURE
        # Anything else (events of other endpoints, unknown types) is ignored.

        if received >= args.count and waiting is None:
            return EXIT_OK
    return EXIT_FAILURE  # not reached: events() only ends by raising


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    deadline = time.monotonic() + args.timeout
    path = args.socket or default_socket_path()
    try:
        with WsmuxClient.connect(
            path, timeout=_remaining(deadline), daemon_uid=args.daemon_uid
        ) as client:
            return _run(client, args, deadline)
    except UntrustedDaemon as exc:
        _note(str(exc))
        return EXIT_UNTRUSTED
    except ValueError as exc:  # e.g. a malformed $WSMUX_DAEMON_UID
        _note(str(exc))
    except TimeoutError:
        _note(f"timed out after {args.timeout:g} s")
    except WsmuxError as exc:
        _note(f"error {exc.code}: {exc.message}")
        if exc.code == "lagged":
            # The endpoint's policy is to disconnect slow clients: messages were lost.
            return EXIT_GAP
    except (ConnectionClosed, ProtocolError) as exc:
        _note(str(exc))
    except OSError as exc:
        _note(f"cannot talk to the daemon at {path}: {exc}")
    except KeyboardInterrupt:
        return 130
    return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
