"""The blocking client: ``wsmux.Client``.

A background thread reads every frame from the daemon as soon as it arrives (PROTOCOL.md
section 16.4) and hands it to the client's :class:`Session`, which completes the request
waiting for a reply and passes events on to a second thread that runs subscription
callbacks, or queues them for ``events()``. Callbacks may therefore call the client (``send``
from a callback works). When the connection drops, the same reading thread reconnects with
backoff and the session restores what the client held; a third thread writes every frame,
in the order the session produced them.
"""

from __future__ import annotations

import logging
import queue
import select
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
    UntrustedDaemon,
    WsmuxError,
)
from .events import Event, State, Subscription
from .peer import check_peer, expected_daemon_uid
from .protocol import (
    FATAL_CODES,
    PROTOCOL_VERSION,
    Data,
    Frame,
    FrameDecoder,
    default_socket_path,
    encode_frame,
    request,
    topic_list,
)
from .session import Options, Session, SessionView, Target

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

    def send_all(self, data: bytes, deadline: float | None = None) -> None:
        """Writes ``data`` whole; raises ``TimeoutError`` if that takes past ``deadline``."""
        if deadline is None:
            self._sock.sendall(data)
            return
        view = memoryview(data)
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLOUT)
        while view:
            try:
                view = view[self._sock.send(view, socket.MSG_DONTWAIT) :]
                continue
            except (BlockingIOError, socket.timeout):
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(view)} bytes of a frame could not be written in time")
            poller.poll(max(1, int(left * 1000)))

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

    def send_all(self, data: bytes, deadline: float | None = None) -> None:
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
    __slots__ = ("done", "error", "on_done", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        #: Run on the reading thread, in frame order, when the request ends.
        self.on_done: Callable[[], None] | None = None


def _dial(
    target: Target, max_frame: int, register: Callable[[_Transport], None] | None = None
) -> tuple[_Transport, FrameDecoder, Frame]:
    """Connects, checks who serves the socket, says ``hello`` and waits for ``welcome``.
    ``register`` gets the transport before the handshake (so that ``close()`` can end a
    handshake that hangs)."""
    deadline = _deadline(target.timeout)
    try:
        transport: _Transport
        if sys.platform == "win32":
            transport = _PipeTransport(target.path, deadline)
        else:
            transport = _SocketTransport(target.path, deadline)
    except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
        raise DaemonUnavailable(target.path, exc) from exc
    if register is not None:
        register(transport)
    decoder = FrameDecoder(max_frame)
    try:
        transport.verify_peer(target.path, target.expected_uid)
        welcome = _handshake(transport, decoder, target.client_name, deadline)
        transport.set_deadline(None)
    except BaseException:
        transport.close()
        raise
    return transport, decoder, welcome


class Client(SessionView):
    """A blocking connection to wsmuxd that reconnects by itself.

    Create it with :meth:`Client.connect`. Every method that waits takes ``timeout`` in seconds
    (None: the client's ``request_timeout``) and raises ``TimeoutError`` when it expires,
    :class:`DaemonError` (with the stable ``.code``) when the daemon answers ``error``,
    :class:`ConnectionLost` when the connection dropped before the reply, and
    :class:`ConnectionClosed` once the client is closed. The client is thread-safe.
    """

    def __init__(
        self,
        target: Target,
        connection: tuple[_Transport, FrameDecoder, Frame],
        *,
        request_timeout: float | None = 30.0,
        options: Options | None = None,
    ) -> None:
        transport, decoder, welcome = connection
        self._target = target
        self._options = options or Options()
        self.max_frame = self._options.max_frame
        self.request_timeout = request_timeout
        self.welcome = welcome
        self._lock = threading.Lock()
        #: Notified when the session's state changes (connected, disconnected, closed).
        self._changed = threading.Condition(self._lock)
        self._session = Session(self._options)
        self._transport: _Transport = transport
        self._decoder = decoder
        #: Counts connections; a frame queued for an earlier one is not written.
        self._generation = 0
        #: A connection being greeted by a reconnect, so that close() can end it.
        self._dialing: _Transport | None = None
        #: Frames for the writing thread; ``_outgoing_bytes`` of them, at most
        #: ``_max_outgoing`` (over it the daemon is not reading: the connection ends).
        self._outgoing: queue.Queue[Any] = queue.Queue()
        self._outgoing_bytes = 0
        self._max_outgoing = 2 * self._options.max_frame
        #: Why the writing thread ended the current connection, if it did.
        self._write_error: str | None = None
        self._callbacks: dict[str, Callback] = {}
        self._dispatch: queue.Queue[Any] = queue.Queue()
        self._events: queue.Queue[Any] = queue.Queue()
        self._closing = threading.Event()
        self._closed = threading.Event()
        with self._lock:
            self._session.connected(welcome)
        self._reader = threading.Thread(target=self._run, name="wsmux-reader", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name="wsmux-writer", daemon=True)
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="wsmux-dispatch", daemon=True
        )
        self._reader.start()
        self._writer.start()
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
        daemon_uid: int | None = None,
        **options: Any,
    ) -> Client:
        """Connects to the daemon, sends ``hello`` and waits for ``welcome``.

        ``socket_path`` defaults to :func:`wsmux.default_socket_path` (``$WSMUX_SOCKET``, then
        the per-user default of PROTOCOL.md section 2.1). Before sending anything the client
        checks that the process serving the socket runs as this user or root, or as
        ``daemon_uid`` (default ``$WSMUX_DAEMON_UID``), and raises :class:`UntrustedDaemon`
        otherwise; this first connect raises :class:`DaemonUnavailable` if nothing listens.

        Once connected, the client reconnects by itself when the connection drops: attempts
        0.1 s apart doubling to 1 s, with jitter, until :meth:`close`; each one checks the
        daemon's user again and takes at most ``timeout``. Then it subscribes again to
        everything it held, from where it was (``since``), re-sends its sticky messages and
        the sends it buffered, and emits :class:`Reconnected`.

        ``options`` (keyword arguments, see :class:`wsmux.session.Options`):

        - ``reconnect=True``: ``False`` closes the client when the connection ends (and turns
          off the resume after ``lagged``), as earlier versions did;
        - ``when_disconnected="buffer"``: what ``send`` does while reconnecting: wait in a
          buffer bounded by ``max_buffered_bytes=1 MiB`` of frames and
          ``max_buffered_sends=1000`` messages, or (``"fail"``) raise :class:`NotConnected`;
        - ``max_sticky=1024``: sticky messages remembered per endpoint;
        - ``max_event_bytes=32 MiB``: events the application has not taken yet;
        - ``max_frame=16 MiB``: the largest frame written or accepted.

        A frame the daemon does not take within ``request_timeout``, or more than twice
        ``max_frame`` of frames waiting to be written, ends the connection (the daemon is not
        reading); the client then reconnects as above.
        """
        opts = Options(**options)
        target = Target(
            socket_path or default_socket_path(),
            expected_daemon_uid(daemon_uid),
            client_name,
            timeout,
        )
        connection = _dial(target, opts.max_frame)
        return cls(target, connection, request_timeout=request_timeout, options=opts)

    @property
    def closed(self) -> bool:
        """Whether the client is closed (it does not reconnect any more)."""
        return self._closed.is_set()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Waits until the client is closed; returns whether it was within ``timeout``."""
        return self._closed.wait(timeout)

    def close(self) -> None:
        """Closes the client: it stops reconnecting, waiting requests fail with
        ConnectionClosed, and the event stream ends."""
        with self._lock:
            self._closing.set()
            transports = [self._transport, self._dialing]
        for transport in transports:
            if transport is not None:
                transport.close()
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
        since: int | None = None,
        epoch: str | None = None,
        timeout: float | None = None,
    ) -> Subscription:
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

        ``since`` (with the ``epoch`` it belongs to; absent: the daemon's current one) resumes
        from a position the application kept: the daemon first replays from its history what
        came after ``since``. Returns a :class:`Subscription` with ``first_seq`` (the first
        ``seq`` it delivers) and, with ``since``, ``recovered`` (nothing was missed). While
        the client is reconnecting, the subscription is remembered at once and the answer
        is that of the reconnect's resubscribe.
        """
        wanted = topic_list(topics)
        with self._lock:
            previous = self._callbacks.get(endpoint)
            if callback is not None:
                self._callbacks[endpoint] = callback
        try:
            result: Subscription = self._call(
                lambda w: self._session.subscribe(w, endpoint, wanted, since, epoch), timeout
            )
            return result
        except TimeoutError:
            raise  # a late answer still subscribes: the callback stays
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
        ignored; ``not_subscribed`` means nothing at all was held on the endpoint. While the
        client is reconnecting, what is held is forgotten at once and this returns once
        connected again.
        """
        dropped = topic_list(topics)

        def start(waiter: _Waiter) -> int | None:
            def on_done() -> None:
                if not self._session.factory.holds(endpoint):
                    self._callbacks.pop(endpoint, None)

            waiter.on_done = on_done
            return self._session.unsubscribe(waiter, endpoint, dropped)

        self._call(start, timeout)
        self._flush_dispatch(self.request_timeout if timeout is None else timeout)

    def _flush_dispatch(self, timeout: float | None) -> None:
        """Waits until the dispatch thread has handled every event routed so far."""
        if threading.current_thread() is self._dispatcher or self._closed.is_set():
            return
        barrier = threading.Event()
        self._dispatch.put((_BARRIER, barrier, 0))
        barrier.wait(timeout)

    def send(
        self,
        endpoint: str,
        data: Data,
        *,
        queue: bool | None = None,
        sticky: bool | None = None,
        undo: Data | None = None,
        timeout: float | None = None,
    ) -> Frame:
        """Sends one message upstream and waits for the daemon's ack.

        ``str`` is sent as a text message, ``bytes``/``bytearray``/``memoryview`` as binary.
        The ack comes once the message has been written to the upstream WebSocket, or with
        ``queued: True`` once the daemon holds it for a down endpoint (``queue=False``: fail
        with ``not_connected`` instead); it is returned as a dict. ``sticky=True`` has the
        daemon write it again after every upstream reconnect, and this client re-sends it
        after every reconnect to the daemon, until closed; ``undo`` (only with ``sticky``)
        is written when this client goes. Raises :class:`DaemonError` with ``code``
        ``not_connected``, ``unknown_endpoint``, ``too_large``, ... on failure.

        While the client is reconnecting the send waits in a bounded buffer
        (``when_disconnected="buffer"``) and is written after the reconnect, still within
        ``timeout``: one that times out in the buffer is removed and never written, but one
        already written when it times out may still reach the upstream. A full buffer raises
        :class:`LimitExceeded` at once; ``when_disconnected="fail"`` raises
        :class:`NotConnected` at once.
        """
        payload = _payload(data)
        undo_payload = None if undo is None else _payload(undo)
        result: Frame = self._call(
            lambda w: self._session.send(w, endpoint, payload, queue, sticky, undo_payload),
            timeout,
        )
        return result

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
        knows them. Fields whose value is None are left out. While reconnecting, it waits for
        the connection (within ``timeout``). Use :meth:`subscribe`, :meth:`unsubscribe` and
        :meth:`send` for those: only they keep what the client restores after a reconnect.
        """
        result: Frame = self._call(lambda w: self._session.request(w, type_, fields), timeout)
        return result

    def _call(self, start: Callable[[_Waiter], int | None], timeout: float | None) -> Any:
        """Starts a request with ``start`` (a session method) and waits for its end. While
        ``start`` says "not now" (disconnected), waits for the reconnect."""
        deadline = _deadline(self.request_timeout if timeout is None else timeout)
        waiter = _Waiter()
        with self._lock:
            while True:
                request_id = start(waiter)
                self._perform()
                if request_id is not None:
                    break
                left = deadline - time.monotonic() if deadline is not None else None
                if left is not None and left <= 0:
                    raise TimeoutError(
                        "not connected to the daemon: timed out waiting to reconnect"
                    )
                self._changed.wait(left)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not waiter.done.wait(left):
            with self._lock:
                self._session.cancel(request_id)
                self._perform()
            if not waiter.done.is_set():
                raise TimeoutError(f"no reply (request id {request_id}) from the daemon in time")
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    # -- events ----------------------------------------------------------------------------

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next queued event; None once the client is closed and all were taken.

        Raises ``TimeoutError`` if nothing arrives within ``timeout`` seconds (None: wait).
        """
        try:
            item = self._events.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("no event from the daemon") from None
        if item is _EOF:
            self._events.put(_EOF)  # every later call sees the end too
            return None
        event, size = item
        self._taken(size)
        return event  # type: ignore[no-any-return]

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Iterates over events not taken by a callback, in arrival order.

        These are :class:`Message`, :class:`State`, :class:`ErrorEvent` (errors without id),
        :class:`Lagged`, :class:`OtherEvent` (types added to the protocol later), and this
        client's :class:`Disconnected`, :class:`Reconnected`, :class:`Resumed` and
        :class:`ClientLagged`. The iteration ends when the client is closed; ``timeout``
        bounds each wait and raises ``TimeoutError``.
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

    def _perform(self) -> None:
        """Carries out what the session asks for. Called with the lock held."""
        generation = self._generation
        for frame in self._session.take_writes():
            if self._outgoing_bytes + len(frame) > self._max_outgoing:
                if self._write_error is None:
                    self._write_error = (
                        f"the daemon does not read: {self._outgoing_bytes} bytes wait to be "
                        f"written to it (at most 2 x max_frame = {self._max_outgoing})"
                    )
                    self._transport.close()  # the reading thread sees the end and reconnects
                continue
            self._outgoing_bytes += len(frame)
            self._outgoing.put((generation, frame))
        for waiter, result, error in self._session.take_done():
            waiter.result, waiter.error = result, error
            if waiter.on_done is not None:
                waiter.on_done()
            waiter.done.set()
        for event, size in self._session.take_events():
            endpoint = getattr(event, "endpoint", None)
            callback = self._callbacks.get(endpoint) if isinstance(endpoint, str) else None
            self._dispatch.put((callback, event, size))

    def _taken(self, size: int) -> None:
        with self._lock:
            self._session.taken(size)
            self._perform()

    def _closed_error(self) -> ConnectionClosed:
        return ConnectionClosed(str(self._session.close_error or "the client is closed"))

    def _run(self) -> None:
        """The reading thread: reads the connection, and reconnects when it drops."""
        reason = "closed by the client"
        try:
            while True:
                reason = self._read_connection()
                with self._lock:
                    if self._write_error is not None:
                        reason, self._write_error = self._write_error, None
                    if self._closing.is_set():
                        reason = "closed by the client"
                        break
                    if not self._options.reconnect:
                        reason = f"the connection to the daemon ended: {reason}"
                        break
                    self._session.disconnected(reason)
                    self._perform()
                    self._changed.notify_all()
                if not self._reconnect():
                    reason = "closed by the client"
                    break
        finally:
            with self._lock:
                self._session.close(ConnectionClosed(reason))
                self._perform()
                self._closed.set()
                self._changed.notify_all()
            self._dispatch.put(_EOF)
            self._outgoing.put(_EOF)

    def _read_connection(self) -> str:
        """Reads frames until the current connection ends; returns why it ended."""
        transport, decoder = self._transport, self._decoder
        fatal: DaemonError | None = None
        #: Until when the daemon may take to answer the resubscribes or resumes in flight.
        resync_deadline: float | None = None
        try:
            while True:
                for msg in decoder:
                    with self._lock:
                        self._session.receive(msg, decoder.last_size)
                        self._perform()
                    if msg["type"] == "error" and msg.get("code") in FATAL_CODES:
                        fatal = DaemonError.from_frame(msg)
                # Resubscribes or a resume that go unanswered leave the endpoint's messages
                # held or discarded: a connection like that is broken, give up on it.
                with self._lock:
                    resyncing = self._session.resyncing
                if not resyncing:
                    resync_deadline = None
                elif resync_deadline is None:
                    resync_deadline = _deadline(self.request_timeout)
                transport.set_deadline(resync_deadline)
                chunk = transport.recv()
                if not chunk:
                    if decoder.buffered:
                        return "the connection ended inside a frame"
                    return str(fatal) if fatal else "the daemon closed the connection"
                decoder.feed(chunk)
        except TimeoutError:
            return (
                "the daemon did not answer the resubscribes or resume within "
                f"{self.request_timeout} s"
            )
        except (OSError, ValueError) as exc:  # ValueError: recv on a closed socket
            return f"connection lost: {exc}"
        except WsmuxError as exc:
            return str(exc)
        finally:
            transport.close()

    def _reconnect(self) -> bool:
        """Dials with backoff until connected (True) or closed (False)."""
        backoff = self._session.backoff
        warned = False
        while True:
            if self._closing.wait(backoff.next_delay()):
                return False

            def register(transport: _Transport) -> None:
                with self._lock:
                    self._dialing = transport
                if self._closing.is_set():
                    transport.close()

            try:
                transport, decoder, welcome = _dial(self._target, self.max_frame, register)
            except (UntrustedDaemon, DaemonError) as exc:
                refused = isinstance(exc, UntrustedDaemon) or exc.code == "permission_denied"
                if refused and not warned:  # once per outage: it keeps trying
                    warned = True
                    log.warning(
                        "wsmux: reconnecting to %r was refused: %r", self._target.path, str(exc)
                    )
                else:
                    log.debug("wsmux: reconnecting to %r failed: %r", self._target.path, exc)
                continue
            except (WsmuxError, OSError, TimeoutError) as exc:
                log.debug("wsmux: reconnecting to %r failed: %r", self._target.path, exc)
                continue
            finally:
                with self._lock:
                    self._dialing = None
            with self._lock:
                if self._closing.is_set():
                    transport.close()
                    return False
                self._transport, self._decoder = transport, decoder
                self._generation += 1
                self._write_error = None
                self.welcome = welcome
                self._session.connected(welcome)
                self._perform()
                self._changed.notify_all()
            return True

    def _write_loop(self) -> None:
        """The writing thread: writes each frame whole, in order, to the connection it was
        made for."""
        while True:
            item = self._outgoing.get()
            if item is _EOF:
                return
            generation, frame = item
            with self._lock:
                self._outgoing_bytes -= len(frame)
                transport = self._transport if generation == self._generation else None
            if transport is None:
                continue  # made for a connection that has ended
            try:
                transport.send_all(frame, _deadline(self.request_timeout))
            except TimeoutError as exc:
                with self._lock:
                    if generation == self._generation and self._write_error is None:
                        self._write_error = f"the daemon does not read: {exc}"
                transport.close()  # the reading thread sees the end and reconnects
            except (OSError, ValueError):  # ValueError: the socket was closed meanwhile
                transport.close()

    def _dispatch_loop(self) -> None:
        while True:
            item = self._dispatch.get()
            if item is _EOF:
                self._events.put(_EOF)
                return
            callback, event, size = item
            if callback is _BARRIER:
                event.set()
                continue
            if callback is None:
                self._events.put((event, size))
                continue
            try:
                callback(event)
            except Exception:  # a failing callback must not stop the client
                log.exception("wsmux: subscription callback raised")
            self._taken(size)


def _payload(data: Data) -> str | bytes:
    """``str`` stays text; bytes-like data becomes ``bytes`` (binary)."""
    return data if isinstance(data, str) else bytes(data)


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
