"""The asyncio client: ``wsmux.AsyncClient``.

A reader task reads every frame as soon as it arrives, resolves the future of the request
waiting for a reply, and hands events to a dispatcher task that awaits subscription callbacks
in order or queues the events for ``events()``. Callbacks may therefore await client methods.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import (
    Any,
    Callable,
    Union,
)

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
    HEADER,
    PROTOCOL_VERSION,
    REPLY_TYPES,
    Data,
    Frame,
    decode_body,
    default_socket_path,
    encode_frame,
    request,
    topic_list,
)

__all__ = ["AsyncCallback", "AsyncClient"]

log = logging.getLogger("wsmux")

#: A subscription callback: a function or a coroutine function taking the event.
AsyncCallback = Callable[[Event], Union[Any, Awaitable[Any]]]

_EOF = object()
_BARRIER = object()


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


class AsyncClient:
    """An asyncio connection to wsmuxd, with the operations of :class:`wsmux.Client`.

    Create it with ``await AsyncClient.connect()`` (or ``async with await
    AsyncClient.connect() as client``). Methods raise ``TimeoutError`` (``asyncio.TimeoutError``
    before Python 3.11), :class:`DaemonError` with the stable ``.code``, and
    :class:`ConnectionClosed`.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        welcome: Frame,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        request_timeout: float | None = 30.0,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.max_frame = max_frame
        self.request_timeout = request_timeout
        #: The daemon's ``welcome``: ``{"version": 1, "server": ..., "endpoints": [...]}``.
        self.welcome: Frame = welcome
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        #: What to do in the reader task when a subscribe/unsubscribe is acked, before the
        #: frames after the ack are routed; by id, kept after a timeout so that a late ack
        #: still updates what the connection holds.
        self._on_ack: dict[int, Callable[[], None]] = {}
        self._callbacks: dict[str, AsyncCallback] = {}
        self._dispatch: asyncio.Queue[Any] = asyncio.Queue()
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._factory = EventFactory()
        self._write_lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self._close_reason: BaseException | None = None
        self._read_task = asyncio.ensure_future(self._read_loop())
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
        max_frame: int = DEFAULT_MAX_FRAME,
        daemon_uid: int | None = None,
    ) -> AsyncClient:
        """Connects to the daemon, sends ``hello`` and waits for ``welcome``.

        ``socket_path`` defaults to :func:`wsmux.default_socket_path`. As with
        :meth:`wsmux.Client.connect`, the process serving the socket must run as this user,
        root or ``daemon_uid`` (default ``$WSMUX_DAEMON_UID``); otherwise
        :class:`UntrustedDaemon` is raised before anything is sent.
        """
        path = socket_path or default_socket_path()
        expected_uid = expected_daemon_uid(daemon_uid)
        started = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(_open(path), timeout)
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
            raise DaemonUnavailable(path, exc) from exc
        except asyncio.TimeoutError:
            raise TimeoutError(f"timed out connecting to {path}") from None
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        try:
            sock = writer.get_extra_info("socket")
            if sys.platform != "win32" and sock is not None:
                check_peer(sock, path, expected_uid)
            welcome = await asyncio.wait_for(
                _handshake(reader, writer, client_name, max_frame), left
            )
        except asyncio.TimeoutError:
            writer.close()
            raise TimeoutError("timed out waiting for the daemon's welcome") from None
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer, welcome, max_frame=max_frame, request_timeout=request_timeout)

    @property
    def endpoints(self) -> list[str]:
        """The names of the endpoints configured in the daemon (from ``welcome``)."""
        return [str(e.get("name")) for e in self.welcome.get("endpoints", [])]

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        """Waits until the connection has ended."""
        await self._closed.wait()

    async def close(self) -> None:
        """Closes the connection. Waiting requests fail with ConnectionClosed."""
        if self._close_reason is None:
            self._close_reason = ConnectionClosed("closed by the client")
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass
        self._read_task.cancel()
        try:
            await self._read_task
        except asyncio.CancelledError:
            pass
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
        timeout: float | None = None,
    ) -> None:
        """Subscribes to ``endpoint``, or to some of its ``topics``, and waits for the ack.

        A ``State`` event with the current state follows, then messages and state changes.
        With ``callback`` (a function or coroutine function), the events of ``endpoint`` go to
        it, in order, instead of ``events()``. ``topics`` works as in
        :meth:`wsmux.Client.subscribe`.
        """
        wanted = topic_list(topics)
        previous = self._callbacks.get(endpoint)
        if callback is not None:
            self._callbacks[endpoint] = callback
        try:
            await self._request(
                "subscribe",
                {"endpoint": endpoint, "topics": wanted},
                timeout,
                lambda: self._factory.subscribed(endpoint, wanted),
            )
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

        def on_ack() -> None:
            self._factory.unsubscribed(endpoint, dropped)
            if not self._factory.holds(endpoint):
                self._callbacks.pop(endpoint, None)

        await self._request(
            "unsubscribe", {"endpoint": endpoint, "topics": dropped}, timeout, on_ack
        )
        if asyncio.current_task() is not self._dispatch_task and not self._closed.is_set():
            barrier = asyncio.Event()
            self._dispatch.put_nowait((_BARRIER, barrier))
            wait = self.request_timeout if timeout is None else timeout
            try:
                await asyncio.wait_for(barrier.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def send(self, endpoint: str, data: Data, *, timeout: float | None = None) -> Frame:
        """Sends one message upstream (``str``: text, bytes-like: binary); returns the ack.

        Raises :class:`DaemonError` (``.code`` ``not_connected``, ``unknown_endpoint``, ...).
        """
        if not isinstance(data, str):
            data = bytes(data)
        return await self.request("send", endpoint=endpoint, data=data, timeout=timeout)

    async def status(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """The status of every endpoint: a list of EndpointStatus dicts."""
        reply = await self.request("status", timeout=timeout)
        return list(reply.get("endpoints", []))

    async def ping(self, *, timeout: float | None = None) -> float:
        """Pings the daemon; returns the round trip in seconds."""
        started = time.monotonic()
        await self.request("ping", timeout=timeout)
        return time.monotonic() - started

    async def request(self, type_: str, *, timeout: float | None = None, **fields: Any) -> Frame:
        """Sends any request with a fresh id and returns its reply."""
        return await self._request(type_, fields, timeout, None)

    async def _request(
        self,
        type_: str,
        fields: dict[str, Any],
        timeout: float | None,
        on_ack: Callable[[], None] | None,
    ) -> Frame:
        if self._closed.is_set():
            raise self._closed_error()
        request_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        if on_ack is not None:
            self._on_ack[request_id] = on_ack
        try:
            try:
                frame = encode_frame(request(type_, request_id, **fields), self.max_frame)
                async with self._write_lock:
                    try:
                        self._writer.write(frame)
                        await self._writer.drain()
                    except OSError as exc:
                        raise ConnectionClosed(f"cannot write to the daemon: {exc}") from exc
            except BaseException:
                self._on_ack.pop(request_id, None)
                raise
            wait = self.request_timeout if timeout is None else timeout
            try:
                reply = await asyncio.wait_for(asyncio.shield(future), wait)
            except asyncio.TimeoutError:
                raise TimeoutError(
                    f"no reply to {type_} (id {request_id}) from the daemon"
                ) from None
        finally:
            self._pending.pop(request_id, None)
        if reply["type"] == "error":
            raise DaemonError.from_frame(reply)
        return reply

    # -- events ----------------------------------------------------------------------------

    async def next_event(self, timeout: float | None = None) -> Event | None:
        """The next queued event, or None once the connection has ended."""
        try:
            item = await asyncio.wait_for(self._events.get(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError("no event from the daemon") from None
        if item is _EOF:
            self._events.put_nowait(_EOF)
            return None
        return item  # type: ignore[no-any-return]

    async def events(self, timeout: float | None = None) -> AsyncIterator[Event]:
        """``async for event in client.events()``: events not taken by a callback.

        Ends when the connection ends; ``timeout`` bounds each wait.
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

    def _closed_error(self) -> ConnectionClosed:
        return ConnectionClosed(f"the connection to the daemon ended: {self._close_reason}")

    async def _read_loop(self) -> None:
        reason: BaseException = ConnectionClosed("the daemon closed the connection")
        try:
            while True:
                try:
                    header = await self._reader.readexactly(HEADER.size)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        reason = ProtocolError("the connection ended inside a frame")
                    break
                (length,) = HEADER.unpack(header)
                if length > self.max_frame:
                    raise ProtocolError(
                        f"frame length {length} exceeds the maximum of {self.max_frame} bytes"
                    )
                try:
                    body = await self._reader.readexactly(length)
                except asyncio.IncompleteReadError:
                    reason = ProtocolError("the connection ended inside a frame")
                    break
                self._route(decode_body(body))
        except (OSError, asyncio.CancelledError) as exc:
            if not isinstance(exc, asyncio.CancelledError):
                reason = ConnectionClosed(f"connection lost: {exc}")
        except WsmuxError as exc:
            reason = exc
        finally:
            self._finish(reason)

    def _route(self, msg: Frame) -> None:
        kind = msg["type"]
        if kind in REPLY_TYPES and isinstance(msg.get("id"), int):
            on_ack = self._on_ack.pop(msg["id"], None)
            if on_ack is not None and kind == "ack":
                on_ack()  # before the frames that follow the ack are made into events
            future = self._pending.get(msg["id"])
            if future is not None and not future.done():
                future.set_result(msg)
            return
        if kind in REPLY_TYPES - {"error"}:
            return
        event = self._factory.make(msg)
        endpoint = msg.get("endpoint")
        callback = self._callbacks.get(endpoint) if isinstance(endpoint, str) else None
        self._dispatch.put_nowait((callback, event))
        if kind == "error" and msg.get("code") in FATAL_CODES:
            self._close_reason = DaemonError.from_frame(msg)

    def _finish(self, reason: BaseException) -> None:
        if self._close_reason is None:
            self._close_reason = reason
        self._closed.set()
        self._on_ack.clear()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._closed_error())
        self._dispatch.put_nowait(_EOF)
        self._writer.close()

    async def _dispatch_loop(self) -> None:
        while True:
            item = await self._dispatch.get()
            if item is _EOF:
                self._events.put_nowait(_EOF)
                return
            callback, event = item
            if callback is _BARRIER:
                event.set()
                continue
            if callback is None:
                self._events.put_nowait(event)
                continue
            try:
                result = callback(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("wsmux: subscription callback raised")


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
