"""The asyncio client: ``wsmux.AsyncClient``.

A reader task reads every frame as soon as it arrives and hands it to the client's
:class:`Session`, which resolves the request waiting for a reply and passes events to a
dispatcher task that awaits subscription callbacks in order or queues the events for
``events()``. Callbacks may therefore await client methods. When the connection drops, the
reader task reconnects with backoff and the session restores what the client held.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Iterable
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
    HEADER,
    PROTOCOL_VERSION,
    Data,
    Frame,
    decode_body,
    default_socket_path,
    encode_frame,
    request,
    topic_list,
)
from .session import Options, Session, SessionView, Target

__all__ = ["AsyncCallback", "AsyncClient"]

log = logging.getLogger("wsmux")

#: A subscription callback: a function or a coroutine function taking the event.
AsyncCallback = Callable[[Event], Union[Any, Awaitable[Any]]]

_EOF = object()
_BARRIER = object()

_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter, Frame]


async def _open(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if sys.platform != "win32":
        return await asyncio.open_unix_connection(path)
    # Windows named pipe (not exercised by the tests); needs the default proactor loop.
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await loop.create_pipe_connection(lambda: protocol, path)  # type: ignore[attr-defined,unused-ignore]
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


async def _dial(target: Target, max_frame: int) -> _Connection:
    """Connects, checks who serves the socket, says ``hello`` and waits for ``welcome``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        reader, writer = await asyncio.wait_for(_open(target.path), target.timeout)
    except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
        raise DaemonUnavailable(target.path, exc) from exc
    except asyncio.TimeoutError:
        raise TimeoutError(f"timed out connecting to {target.path}") from None
    timeout = target.timeout
    left = None if timeout is None else max(0.0, timeout - (loop.time() - started))
    try:
        sock = writer.get_extra_info("socket")
        if sys.platform != "win32" and sock is not None:
            check_peer(sock, target.path, target.expected_uid)
        welcome = await asyncio.wait_for(
            _handshake(reader, writer, target.client_name, max_frame), left
        )
    except asyncio.TimeoutError:
        writer.close()
        raise TimeoutError("timed out waiting for the daemon's welcome") from None
    except BaseException:
        writer.close()
        raise
    return reader, writer, welcome


class _Waiter:
    __slots__ = ("done", "error", "on_done", "result")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        #: Resolved (with None) when the request ends; the outcome is in result/error.
        self.done: asyncio.Future[None] = loop.create_future()
        self.result: Any = None
        self.error: BaseException | None = None
        #: Run in the reader task, in frame order, when the request ends.
        self.on_done: Callable[[], None] | None = None


class AsyncClient(SessionView):
    """An asyncio connection to wsmuxd that reconnects by itself, with the operations of
    :class:`wsmux.Client`.

    Create it with ``await AsyncClient.connect()`` (or ``async with await
    AsyncClient.connect() as client``). Methods raise ``TimeoutError`` (``asyncio.TimeoutError``
    before Python 3.11), :class:`DaemonError` with the stable ``.code``,
    :class:`ConnectionLost` and :class:`ConnectionClosed`.
    """

    def __init__(
        self,
        target: Target,
        connection: _Connection,
        *,
        request_timeout: float | None = 30.0,
        options: Options | None = None,
    ) -> None:
        reader, writer, welcome = connection
        self._target = target
        self._options = options or Options()
        self.max_frame = self._options.max_frame
        self.request_timeout = request_timeout
        self.welcome = welcome
        self._loop = asyncio.get_running_loop()
        self._session = Session(self._options)
        self._session.connected(welcome)
        self._reader = reader
        self._writer = writer
        self._callbacks: dict[str, AsyncCallback] = {}
        self._dispatch: asyncio.Queue[Any] = asyncio.Queue()
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        #: Set (and replaced) at every change of the session's state.
        self._changed = asyncio.Event()
        self._closing = False
        self._closed = asyncio.Event()
        self._drain_lock = asyncio.Lock()
        self._run_task = asyncio.ensure_future(self._run())
        self._dispatch_task = asyncio.ensure_future(self._dispatch_loop())

    # -- connecting ------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        socket_path: str | None = None,
        *,
        client_name: str | None = None,
        timeout: float | None = 10.0,
        request_timeout: float | None = 30.0,
        daemon_uid: int | None = None,
        **options: Any,
    ) -> AsyncClient:
        """Connects to the daemon, sends ``hello`` and waits for ``welcome``.

        The arguments are those of :meth:`wsmux.Client.connect`: the socket path (default
        :func:`wsmux.default_socket_path`), the check of the daemon's user (``daemon_uid``,
        default ``$WSMUX_DAEMON_UID``; :class:`UntrustedDaemon` before anything is sent),
        and the reconnect options.
        """
        opts = Options(**options)
        target = Target(
            socket_path or default_socket_path(),
            expected_daemon_uid(daemon_uid),
            client_name,
            timeout,
        )
        connection = await _dial(target, opts.max_frame)
        return cls(target, connection, request_timeout=request_timeout, options=opts)

    @property
    def closed(self) -> bool:
        """Whether the client is closed (it does not reconnect any more)."""
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        """Waits until the client is closed."""
        await self._closed.wait()

    async def close(self) -> None:
        """Closes the client: it stops reconnecting, waiting requests fail with
        ConnectionClosed, and the event stream ends."""
        self._closing = True
        self._writer.close()
        if asyncio.current_task() is not self._run_task:
            self._run_task.cancel()
            try:
                await self._run_task
            except asyncio.CancelledError:
                pass
            # A task cancelled before it started never ran its own clean-up.
            self._finish("closed by the client")
        await self._closed.wait()

    async def __aenter__(self) -> AsyncClient:  # noqa: PYI034
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- requests --------------------------------------------------------------------------

    async def subscribe(
        self,
        endpoint: str,
        callback: AsyncCallback | None = None,
        *,
        topics: Iterable[str] | None = None,
        since: int | None = None,
        epoch: str | None = None,
        timeout: float | None = None,
    ) -> Subscription:
        """Subscribes to ``endpoint``, or to some of its ``topics``, and waits for the ack.

        A ``State`` event with the current state follows, then messages and state changes.
        With ``callback`` (a function or coroutine function), the events of ``endpoint`` go to
        it, in order, instead of ``events()``. ``topics``, ``since`` and ``epoch`` work as in
        :meth:`wsmux.Client.subscribe`; returns a :class:`Subscription`.
        """
        wanted = topic_list(topics)
        previous = self._callbacks.get(endpoint)
        if callback is not None:
            self._callbacks[endpoint] = callback
        try:
            result: Subscription = await self._call(
                lambda w: self._session.subscribe(w, endpoint, wanted, since, epoch), timeout
            )
            return result
        except TimeoutError:
            raise  # a late answer still subscribes: the callback stays
        except BaseException:
            if callback is not None:
                if previous is None:
                    self._callbacks.pop(endpoint, None)
                else:
                    self._callbacks[endpoint] = previous
            raise

    async def unsubscribe(
        self,
        endpoint: str,
        *,
        topics: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Unsubscribes from ``endpoint`` (everything), or from some of its ``topics``, and
        waits for the ack.

        No event of ``endpoint`` follows the ack once nothing is held on it any more; once
        this returns, the subscription's callback has handled every event before it and, if
        nothing is held, will not be called again (unless ``unsubscribe`` is awaited from that
        callback).
        """
        dropped = topic_list(topics)

        def start(waiter: _Waiter) -> int | None:
            def on_done() -> None:
                if not self._session.factory.holds(endpoint):
                    self._callbacks.pop(endpoint, None)

            waiter.on_done = on_done
            return self._session.unsubscribe(waiter, endpoint, dropped)

        await self._call(start, timeout)
        if asyncio.current_task() is not self._dispatch_task and not self._closed.is_set():
            barrier = asyncio.Event()
            self._dispatch.put_nowait((_BARRIER, barrier, 0))
            wait = self.request_timeout if timeout is None else timeout
            try:
                await asyncio.wait_for(barrier.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def send(
        self,
        endpoint: str,
        data: Data,
        *,
        queue: bool | None = None,
        sticky: bool | None = None,
        undo: Data | None = None,
        timeout: float | None = None,
    ) -> Frame:
        """Sends one message upstream (``str``: text, bytes-like: binary); returns the ack.

        ``queue``, ``sticky`` and ``undo``, and what happens while the client is
        reconnecting, are as in :meth:`wsmux.Client.send`. Raises :class:`DaemonError`
        (``.code`` ``not_connected``, ``unknown_endpoint``, ...), :class:`NotConnected` or
        :class:`LimitExceeded`.
        """
        payload = _payload(data)
        undo_payload = None if undo is None else _payload(undo)
        result: Frame = await self._call(
            lambda w: self._session.send(w, endpoint, payload, queue, sticky, undo_payload),
            timeout,
        )
        return result

    async def status(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """The status of every endpoint: a list of EndpointStatus dicts."""
        reply = await self.request("status", timeout=timeout)
        return list(reply.get("endpoints", []))

    async def ping(self, *, timeout: float | None = None) -> float:
        """Pings the daemon; returns the round trip in seconds."""
        started = self._loop.time()
        await self.request("ping", timeout=timeout)
        return self._loop.time() - started

    async def request(self, type_: str, *, timeout: float | None = None, **fields: Any) -> Frame:
        """Sends any request with a fresh id and returns its reply (see
        :meth:`wsmux.Client.request`)."""
        result: Frame = await self._call(lambda w: self._session.request(w, type_, fields), timeout)
        return result

    async def _call(self, start: Callable[[_Waiter], int | None], timeout: float | None) -> Any:
        """Starts a request with ``start`` (a session method) and waits for its end. While
        ``start`` says "not now" (disconnected), waits for the reconnect."""
        wait = self.request_timeout if timeout is None else timeout
        deadline = None if wait is None else self._loop.time() + wait
        waiter = _Waiter(self._loop)
        while True:
            request_id = start(waiter)
            self._perform()
            if request_id is not None:
                break
            try:
                await asyncio.wait_for(self._changed.wait(), self._left(deadline))
            except asyncio.TimeoutError:
                raise TimeoutError(
                    "not connected to the daemon: timed out waiting to reconnect"
                ) from None
        try:
            await asyncio.wait_for(self._written_and_done(waiter), self._left(deadline))
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"no reply (request id {request_id}) from the daemon in time"
            ) from None
        finally:
            if not waiter.done.done():
                self._session.cancel(request_id)
                self._perform()
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    async def _written_and_done(self, waiter: _Waiter) -> None:
        """Waits until the connection took what was written (flow control; one drain at a
        time, which Python 3.9 requires), then for the request's end."""
        try:
            async with self._drain_lock:
                await self._writer.drain()
        except (OSError, RuntimeError):
            pass  # failures end the connection: the reader task sees it
        await asyncio.shield(waiter.done)

    def _left(self, deadline: float | None) -> float | None:
        return None if deadline is None else max(0.0, deadline - self._loop.time())

    # -- events ----------------------------------------------------------------------------

    async def next_event(self, timeout: float | None = None) -> Event | None:
        """The next queued event, or None once the client is closed."""
        try:
            item = await asyncio.wait_for(self._events.get(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError("no event from the daemon") from None
        if item is _EOF:
            self._events.put_nowait(_EOF)
            return None
        event, size = item
        self._taken(size)
        return event  # type: ignore[no-any-return]

    async def events(self, timeout: float | None = None) -> AsyncIterator[Event]:
        """``async for event in client.events()``: events not taken by a callback (the kinds
        of :meth:`wsmux.Client.events`).

        Ends when the client is closed; ``timeout`` bounds each wait.
        """
        while True:
            event = await self.next_event(timeout)
            if event is None:
                return
            yield event

    async def wait_for_state(
        self, endpoint: str, state: str = "open", timeout: float | None = None
    ) -> State:
        """Reads events until ``endpoint`` reaches ``state``; other events are discarded."""

        async def wait() -> State:
            async for event in self.events():
                if isinstance(event, State) and event.endpoint == endpoint and event.state == state:
                    return event
            raise self._closed_error()

        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"{endpoint} did not reach {state}") from None

    # -- internals -------------------------------------------------------------------------

    def _perform(self) -> None:
        """Carries out what the session asks for."""
        for frame in self._session.take_writes():
            self._writer.write(frame)
        for waiter, result, error in self._session.take_done():
            waiter.result, waiter.error = result, error
            if waiter.on_done is not None:
                waiter.on_done()
            if not waiter.done.done():
                waiter.done.set_result(None)
        for event, size in self._session.take_events():
            endpoint = getattr(event, "endpoint", None)
            callback = self._callbacks.get(endpoint) if isinstance(endpoint, str) else None
            self._dispatch.put_nowait((callback, event, size))

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _taken(self, size: int) -> None:
        self._session.taken(size)
        self._perform()

    def _closed_error(self) -> ConnectionClosed:
        return ConnectionClosed(str(self._session.close_error or "the client is closed"))

    async def _run(self) -> None:
        """The reader task: reads the connection, and reconnects when it drops."""
        reason = "closed by the client"
        try:
            while True:
                reason = await self._read_connection()
                if self._closing:
                    reason = "closed by the client"
                    break
                if not self._options.reconnect:
                    reason = f"the connection to the daemon ended: {reason}"
                    break
                self._session.disconnected(reason)
                self._perform()
                self._notify()
                if not await self._reconnect():
                    reason = "closed by the client"
                    break
        except asyncio.CancelledError:
            reason = "closed by the client"
        finally:
            self._finish(reason)

    def _finish(self, reason: str) -> None:
        """Ends the client: fails what waits, ends the event stream. Runs once."""
        if self._closed.is_set():
            return
        self._session.close(ConnectionClosed(reason))
        self._perform()
        self._closed.set()
        self._notify()
        self._dispatch.put_nowait(_EOF)
        self._writer.close()

    async def _read_connection(self) -> str:
        """Reads frames until the current connection ends; returns why it ended."""
        reader = self._reader
        fatal: DaemonError | None = None
        wait = self.request_timeout
        #: Until when the daemon may take to answer the resubscribes or resumes in flight.
        resync_deadline: float | None = None
        try:
            while True:
                # Resubscribes or a resume that go unanswered leave the endpoint's messages
                # held or discarded: a connection like that is broken, give up on it.
                if not self._session.resyncing:
                    resync_deadline = None
                elif resync_deadline is None and wait is not None:
                    resync_deadline = self._loop.time() + wait
                limit = self._left(resync_deadline)
                try:
                    header = await asyncio.wait_for(reader.readexactly(HEADER.size), limit)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        return "the connection ended inside a frame"
                    return str(fatal) if fatal else "the daemon closed the connection"
                except asyncio.TimeoutError:
                    return f"the daemon did not answer the resubscribes or resume within {wait} s"
                (length,) = HEADER.unpack(header)
                if length > self.max_frame:
                    raise ProtocolError(
                        f"frame length {length} exceeds the maximum of {self.max_frame} bytes"
                    )
                try:
                    body = await reader.readexactly(length)
                except asyncio.IncompleteReadError:
                    return "the connection ended inside a frame"
                msg = decode_body(body)
                self._session.receive(msg, HEADER.size + length)
                self._perform()
                if msg["type"] == "error" and msg.get("code") in FATAL_CODES:
                    fatal = DaemonError.from_frame(msg)
        except OSError as exc:
            return f"connection lost: {exc}"
        except WsmuxError as exc:
            return str(exc)
        finally:
            self._writer.close()

    async def _reconnect(self) -> bool:
        """Dials with backoff until connected (True) or closed (False)."""
        backoff = self._session.backoff
        warned = False
        while not self._closing:
            await asyncio.sleep(backoff.next_delay())
            try:
                reader, writer, welcome = await _dial(self._target, self.max_frame)
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
            except (WsmuxError, OSError, asyncio.TimeoutError) as exc:
                log.debug("wsmux: reconnecting to %r failed: %r", self._target.path, exc)
                continue
            if self._closing:
                writer.close()
                return False
            self._reader, self._writer = reader, writer
            self.welcome = welcome
            self._session.connected(welcome)
            self._perform()
            self._notify()
            return True
        return False

    async def _dispatch_loop(self) -> None:
        while True:
            item = await self._dispatch.get()
            if item is _EOF:
                self._events.put_nowait(_EOF)
                return
            callback, event, size = item
            if callback is _BARRIER:
                event.set()
                continue
            if callback is None:
                self._events.put_nowait((event, size))
                continue
            try:
                result = callback(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("wsmux: subscription callback raised")
            self._taken(size)


def _payload(data: Data) -> str | bytes:
    """``str`` stays text; bytes-like data becomes ``bytes`` (binary)."""
    return data if isinstance(data, str) else bytes(data)


async def _handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    client_name: str | None,
    max_frame: int,
) -> Frame:
    from . import __version__

    name = client_name or f"wsmux-python/{__version__}"
    try:
        writer.write(encode_frame(request("hello", version=PROTOCOL_VERSION, client=name)))
        await writer.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # a refusal (permission_denied, too_many_clients) may still be readable
    try:
        header = await reader.readexactly(HEADER.size)
        (length,) = HEADER.unpack(header)
        if length > max_frame:
            raise ProtocolError(f"frame length {length} exceeds the maximum of {max_frame}")
        frame = decode_body(await reader.readexactly(length))
    except asyncio.IncompleteReadError:
        raise ConnectionClosed("the daemon closed the connection before welcome") from None
    if frame["type"] == "error":
        raise DaemonError.from_frame(frame)
    if frame["type"] != "welcome":
        raise ProtocolError(f"expected welcome, got {frame['type']}")
    if frame.get("version") != PROTOCOL_VERSION:
        raise ProtocolError(f"the daemon speaks protocol version {frame.get('version')}")
    return frame
