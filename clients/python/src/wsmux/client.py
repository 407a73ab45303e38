"""The blocking client: ``wsmux.Client``.

A background thread reads every frame from the daemon as soon as it arrives (PROTOCOL.md
section 16.4), completes the request waiting for a reply, and passes events on to a second
thread that runs subscription callbacks, or queues them for ``events()``. Callbacks may
therefore call the client (``send`` from a callback works).
"""

from __future__ import annotations

import logging
import queue
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Union

from .errors import (
    ConnectionClosed,
    DaemonError,
    DaemonUnavailable,
    ProtocolError,
    WsmuxError,
)
from .events import Event, EventFactory, State
from .peer import check_peer, expected_daemon_uid
from .protocol import (
    DEFAULT_MAX_FRAME,
    FATAL_CODES,
    PROTOCOL_VERSION,
    REPLY_TYPES,
    Data,
    Frame,
    FrameDecoder,
    default_socket_path,
    encode_frame,
    request,
    topic_list,
)

__all__ = ["Callback", "Client"]

log = logging.getLogger("wsmux")

#: A subscription callback; called with every event of its endpoint, in order.
Callback = Callable[[Event], Any]

_EOF = object()
_BARRIER = object()
_READ_SIZE = 65536


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out waiting for the daemon")
    return left


class _SocketTransport:
    """A connected Unix domain socket. ``recv`` blocks (no timeout) once the handshake is over."""

    def __init__(self, path: str, deadline: float | None) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(_remaining(deadline))
            sock.connect(path)
        except socket.timeout as exc:
            sock.close()
            raise TimeoutError(f"timed out connecting to {path}") from exc
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def set_deadline(self, deadline: float | None) -> None:
        self._sock.settimeout(_remaining(deadline))

    def verify_peer(self, path: str, expected_uid: int | None) -> None:
        check_peer(self._sock, path, expected_uid)

    def send_all(self, data: bytes) -> None:
        self._sock.sendall(data)

    def recv(self) -> bytes:
        try:
            return self._sock.recv(_READ_SIZE)
        except socket.timeout as exc:  # an alias of TimeoutError only since Python 3.10
            raise TimeoutError("timed out waiting for the daemon") from exc

    def close(self) -> None:
        try:
            # Wakes up the reader thread blocked in recv().
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


class _PipeTransport:
    """A Windows named pipe (not exercised by the tests).

    A pipe handle opened without overlapped I/O serialises reads and writes, so the reader
    polls ``PeekNamedPipe`` and reads only what is already there, never blocking a writer.
    """

    POLL_INTERVAL = 0.01
    _ERROR_PIPE_BUSY = 231

    def __init__(self, path: str, deadline: float | None) -> None:
        import msvcrt

        while True:
            try:
                self._file = open(path, "r+b", buffering=0)  # noqa: SIM115 (closed by close())
                break
            except OSError as exc:
                if getattr(exc, "winerror", None) != self._ERROR_PIPE_BUSY:
                    raise
                _remaining(deadline)
                time.sleep(0.05)
        self._handle = msvcrt.get_osfhandle(self._file.fileno())  # type: ignore[attr-defined]
        self._deadline: float | None = None
        self._closed = False

    def set_deadline(self, deadline: float | None) -> None:
        self._deadline = deadline

    def verify_peer(self, path: str, expected_uid: int | None) -> None:
        """No uids on Windows: the pipe's security descriptor governs access."""

    def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self._file.write(view) :]

    def recv(self) -> bytes:
        import _winapi

        while not self._closed:
            try:
                available, _ = _winapi.PeekNamedPipe(self._handle)  # type: ignore[attr-defined,unused-ignore]
            except (BrokenPipeError, OSError):
                return b""
            if available:
                return self._file.read(min(available, _READ_SIZE)) or b""
            _remaining(self._deadline)
            time.sleep(self.POLL_INTERVAL)
        return b""

    def close(self) -> None:
        self._closed = True
        self._file.close()


_Transport = Union[_SocketTransport, _PipeTransport]


class _Waiter:
    __slots__ = ("done", "error", "reply")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: Frame | None = None
        self.error: BaseException | None = None


class Client:
    """A blocking connection to wsmuxd.

    Create it with :meth:`Client.connect`. Every method that waits takes ``timeout`` in seconds
    (None: the client's ``request_timeout``) and raises ``TimeoutError`` when it expires,
    :class:`DaemonError` (with the stable ``.code``) when the daemon answers ``error``, and
    :class:`ConnectionClosed` when the connection ends. The client is thread-safe.
    """

    def __init__(
        self,
        transport: _Transport,
        welcome: Frame,
        decoder: FrameDecoder,
        *,
        request_timeout: float | None = 30.0,
    ) -> None:
        self._transport = transport
        self._decoder = decoder
        self.max_frame = decoder.max_frame
        self.request_timeout = request_timeout
        #: The daemon's ``welcome``: ``{"version": 1, "server": ..., "endpoints": [...]}``.
        self.welcome: Frame = welcome
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()
        self._next_id = 1
        self._pending: dict[int, _Waiter] = {}
        #: What to do on the reader thread when a subscribe/unsubscribe is acked, before the
        #: frames after the ack are routed; by id, kept after a timeout so that a late ack
        #: still updates what the connection holds.
        self._on_ack: dict[int, Callable[[], None]] = {}
        self._callbacks: dict[str, Callback] = {}
        self._dispatch: queue.Queue[Any] = queue.Queue()
        self._events: queue.Queue[Any] = queue.Queue()
        self._factory = EventFactory()
        self._closed = threading.Event()
        self._close_reason: BaseException | None = None
        self._reader = threading.Thread(target=self._read_loop, name="wsmux-reader", daemon=True)
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="wsmux-dispatch", daemon=True
        )
        self._reader.start()
        self._dispatcher.start()

    # -- connecting ------------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        socket_path: str | None = None,
        *,
        client_name: str | None = None,
        timeout: float | None = 10.0,
        request_timeout: float | None = 30.0,
        max_frame: int = DEFAULT_MAX_FRAME,
        daemon_uid: int | None = None,
    ) -> Client:
        """Connects to the daemon, sends ``hello`` and waits for ``welcome``.

        ``socket_path`` defaults to :func:`wsmux.default_socket_path` (``$WSMUX_SOCKET``, then
        the per-user default of PROTOCOL.md section 2.1). Before sending anything the client
        checks that the process serving the socket runs as this user or root, or as
        ``daemon_uid`` (default ``$WSMUX_DAEMON_UID``), and raises :class:`UntrustedDaemon`
        otherwise.
        """
        path = socket_path or default_socket_path()
        expected_uid = expected_daemon_uid(daemon_uid)
        deadline = _deadline(timeout)
        try:
            transport: _Transport
            if sys.platform == "win32":
                transport = _PipeTransport(path, deadline)
            else:
                transport = _SocketTransport(path, deadline)
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
            raise DaemonUnavailable(path, exc) from exc
        decoder = FrameDecoder(max_frame)
        try:
            transport.verify_peer(path, expected_uid)
            welcome = _handshake(transport, decoder, client_name, deadline)
            transport.set_deadline(None)
        except BaseException:
            transport.close()
            raise
        return cls(transport, welcome, decoder, request_timeout=request_timeout)

    @property
    def endpoints(self) -> list[str]:
        """The names of the endpoints configured in the daemon (from ``welcome``)."""
        return [str(e.get("name")) for e in self.welcome.get("endpoints", [])]

    @property
    def closed(self) -> bool:
        """Whether the connection has ended."""
        return self._closed.is_set()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Waits until the connection ends; returns whether it did within ``timeout``."""
        return self._closed.wait(timeout)

    def close(self) -> None:
        """Closes the connection. Waiting requests fail with ConnectionClosed."""
        with self._lock:
            if self._close_reason is None:
                self._close_reason = ConnectionClosed("closed by the client")
        self._transport.close()
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=5)

    def __enter__(self) -> Client:  # noqa: PYI034
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- requests --------------------------------------------------------------------------

    def subscribe(
        self,
        endpoint: str,
        callback: Callback | None = None,
        *,
        topics: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Subscribes to ``endpoint``, or to some of its ``topics``, and waits for the ack.

        A ``State`` event with the endpoint's current state follows, then its messages and
        state changes. With ``callback``, these events of ``endpoint`` are passed to it (on the
        client's dispatch thread, in order) instead of being queued for ``events()``; one
        callback serves the endpoint (a later one replaces it).

        ``topics`` (a list of str; endpoints with ``[endpoints.NAME.topics]``) adds those
        topics to what this connection holds on the endpoint: only their messages come (and,
        unless the endpoint says ``unmatched = "drop"``, messages without a topic). Without
        ``topics``, every message of the endpoint comes. Refusals raise :class:`DaemonError`
        with ``code`` ``topics_unsupported``, ``invalid_topic`` or ``too_many_topics``; the
        upstream's refusal of a topic comes later as an :class:`ErrorEvent` with ``code``
        ``topic_rejected`` and ``.topic``.
        """
        wanted = topic_list(topics)
        if callback is not None:
            with self._lock:
                previous = self._callbacks.get(endpoint)
                self._callbacks[endpoint] = callback
        try:
            self._request(
                "subscribe",
                {"endpoint": endpoint, "topics": wanted},
                timeout,
                lambda: self._factory.subscribed(endpoint, wanted),
            )
        except BaseException:
            if callback is not None:
                with self._lock:
                    if previous is None:
                        self._callbacks.pop(endpoint, None)
                    else:
                        self._callbacks[endpoint] = previous
            raise

    def unsubscribe(
        self,
        endpoint: str,
        *,
        topics: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Unsubscribes from ``endpoint`` (everything), or from some of its ``topics``, and
        waits for the ack.

        No event of ``endpoint`` follows the ack once nothing is held on it any more; once
        this returns, the callback given to ``subscribe`` has been called for every event
        before it and, if nothing is held, will not be called again (unless ``unsubscribe``
        is called from that callback, which cannot wait for itself). Topics not held are
        ignored; ``not_subscribed`` means nothing at all was held on the endpoint.
        """
        dropped = topic_list(topics)

        def on_ack() -> None:
            self._factory.unsubscribed(endpoint, dropped)
            if not self._factory.holds(endpoint):
                with self._lock:
                    self._callbacks.pop(endpoint, None)

        self._request("unsubscribe", {"endpoint": endpoint, "topics": dropped}, timeout, on_ack)
        self._flush_dispatch(self.request_timeout if timeout is None else timeout)

    def _flush_dispatch(self, timeout: float | None) -> None:
        """Waits until the dispatch thread has handled every event routed so far."""
        if threading.current_thread() is self._dispatcher or self._closed.is_set():
            return
        barrier = threading.Event()
        self._dispatch.put((_BARRIER, barrier))
        barrier.wait(timeout)

    def send(self, endpoint: str, data: Data, *, timeout: float | None = None) -> Frame:
        """Sends one message upstream and waits for the daemon's ack.

        ``str`` is sent as a text message, ``bytes``/``bytearray``/``memoryview`` as binary.
        The ack comes once the message has been written to the upstream WebSocket; it is
        returned as a dict. Raises :class:`DaemonError` with ``code`` ``not_connected``,
        ``unknown_endpoint``, ``too_large``, ... on failure.
        """
        if not isinstance(data, str):
            data = bytes(data)
        return self.request("send", endpoint=endpoint, data=data, timeout=timeout)

    def status(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """The status of every endpoint: a list of EndpointStatus dicts (PROTOCOL.md 7.2)."""
        return list(self.request("status", timeout=timeout).get("endpoints", []))

    def ping(self, *, timeout: float | None = None) -> float:
        """Pings the daemon; returns the round trip in seconds."""
        started = time.monotonic()
        self.request("ping", timeout=timeout)
        return time.monotonic() - started

    def request(self, type_: str, *, timeout: float | None = None, **fields: Any) -> Frame:
        """Sends any request with a fresh id and returns its reply (ack, status, pong, ...).

        This is how requests added to the protocol later can be made before this package
        knows them. Fields whose value is None are left out.
        """
        return self._request(type_, fields, timeout, None)

    def _request(
        self,
        type_: str,
        fields: dict[str, Any],
        timeout: float | None,
        on_ack: Callable[[], None] | None,
    ) -> Frame:
        waiter = _Waiter()
        with self._lock:
            if self._closed.is_set():
                raise self._closed_error()
            request_id = self._next_id
            self._next_id += 1
            self._pending[request_id] = waiter
            if on_ack is not None:
                self._on_ack[request_id] = on_ack
        try:
            try:
                self._write(request(type_, request_id, **fields))
            except BaseException:
                with self._lock:
                    self._on_ack.pop(request_id, None)
                raise
            if not waiter.done.wait(self.request_timeout if timeout is None else timeout):
                raise TimeoutError(f"no reply to {type_} (id {request_id}) from the daemon")
        finally:
            with self._lock:
                self._pending.pop(request_id, None)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.reply is not None
        if waiter.reply["type"] == "error":
            raise DaemonError.from_frame(waiter.reply)
        return waiter.reply

    # -- events ----------------------------------------------------------------------------

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next queued event; None once the connection has ended and all were taken.

        Raises ``TimeoutError`` if nothing arrives within ``timeout`` seconds (None: wait).
        """
        try:
            item = self._events.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("no event from the daemon") from None
        if item is _EOF:
            self._events.put(_EOF)  # every later call sees the end too
            return None
        return item  # type: ignore[no-any-return]

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Iterates over events not taken by a callback, in arrival order.

        These are :class:`Message`, :class:`State`, :class:`ErrorEvent` (``lagged`` and other
        errors without id) and :class:`OtherEvent` (types added to the protocol later). The
        iteration ends when the connection ends; ``timeout`` bounds each wait and raises
        ``TimeoutError``.
        """
        while True:
            event = self.next_event(timeout)
            if event is None:
                return
            yield event

    def wait_for_state(
        self, endpoint: str, state: str = "open", timeout: float | None = None
    ) -> State:
        """Reads events until ``endpoint`` reaches ``state``; other events are discarded."""
        deadline = _deadline(timeout)
        while True:
            event = self.next_event(_remaining(deadline))
            if event is None:
                raise self._closed_error()
            if isinstance(event, State) and event.endpoint == endpoint and event.state == state:
                return event

    # -- internals -------------------------------------------------------------------------

    def _write(self, msg: Frame) -> None:
        frame = encode_frame(msg, self.max_frame)
        with self._write_lock:
            try:
                self._transport.send_all(frame)
            except OSError as exc:
                raise ConnectionClosed(f"cannot write to the daemon: {exc}") from exc

    def _closed_error(self) -> ConnectionClosed:
        reason = self._close_reason
        return ConnectionClosed(f"the connection to the daemon ended: {reason}")

    def _read_loop(self) -> None:
        reason: BaseException = ConnectionClosed("the daemon closed the connection")
        try:
            for msg in self._decoder:  # frames that arrived with the welcome
                self._route(msg)
            while True:
                chunk = self._transport.recv()
                if not chunk:
                    if self._decoder.buffered:
                        reason = ProtocolError("the connection ended inside a frame")
                    break
                self._decoder.feed(chunk)
                for msg in self._decoder:
                    self._route(msg)
        except (OSError, ValueError) as exc:  # ValueError: recv on a closed socket
            reason = ConnectionClosed(f"connection lost: {exc}")
        except WsmuxError as exc:
            reason = exc
        finally:
            self._finish(reason)

    def _route(self, msg: Frame) -> None:
        kind = msg["type"]
        if kind in REPLY_TYPES and isinstance(msg.get("id"), int):
            with self._lock:
                waiter = self._pending.get(msg["id"])
                on_ack = self._on_ack.pop(msg["id"], None)
            if on_ack is not None and kind == "ack":
                on_ack()  # before the frames that follow the ack are made into events
            if waiter is not None:
                waiter.reply = msg
                waiter.done.set()
            # Replies nobody waits for (e.g. after a timeout) are ignored.
            return
        if kind in REPLY_TYPES - {"error"}:
            return  # status/pong without id: only requests made elsewhere produce them
        event = self._factory.make(msg)
        endpoint = msg.get("endpoint")
        with self._lock:
            callback = self._callbacks.get(endpoint) if isinstance(endpoint, str) else None
        self._dispatch.put((callback, event))
        if kind == "error" and msg.get("code") in FATAL_CODES:
            self._close_reason = DaemonError.from_frame(msg)

    def _finish(self, reason: BaseException) -> None:
        with self._lock:
            if self._close_reason is None:
                self._close_reason = reason
            self._closed.set()
            waiters = list(self._pending.values())
            self._on_ack.clear()
        for waiter in waiters:
            waiter.error = self._closed_error()
            waiter.done.set()
        self._dispatch.put(_EOF)
        try:
            self._transport.close()
        except OSError:
            pass

    def _dispatch_loop(self) -> None:
        while True:
            item = self._dispatch.get()
            if item is _EOF:
                self._events.put(_EOF)
                return
            callback, event = item
            if callback is _BARRIER:
                event.set()
                continue
            if callback is None:
                self._events.put(event)
                continue
            try:
                callback(event)
            except Exception:  # a failing callback must not stop the client
                log.exception("wsmux: subscription callback raised")


def _handshake(
    transport: _Transport,
    decoder: FrameDecoder,
    client_name: str | None,
    deadline: float | None,
) -> Frame:
    from . import __version__

    transport.set_deadline(deadline)
    name = client_name or f"wsmux-python/{__version__}"
    hello = request("hello", version=PROTOCOL_VERSION, client=name)
    try:
        transport.send_all(encode_frame(hello))
    except (BrokenPipeError, ConnectionResetError):
        # The daemon may have refused us right after accepting (permission_denied,
        # too_many_clients) and closed; its error frame may still be readable below.
        pass
    while True:
        frame = decoder.next_frame()
        if frame is not None:
            break
        chunk = transport.recv()
        if not chunk:
            raise ConnectionClosed("the daemon closed the connection before welcome")
        decoder.feed(chunk)
    if frame["type"] == "error":
        raise DaemonError.from_frame(frame)
    if frame["type"] != "welcome":
        raise ProtocolError(f"expected welcome, got {frame['type']}")
    if frame.get("version") != PROTOCOL_VERSION:
        raise ProtocolError(f"the daemon speaks protocol version {frame.get('version')}")
    return frame
