"""What a client remembers across connections to the daemon, and what it does with each
frame: reconnect, resubscribe and resume (PROTOCOL.md section 19.5), without I/O, clock or
threads.

Both clients (:class:`wsmux.Client` and :class:`wsmux.AsyncClient`) own one :class:`Session`
and perform what it asks for. After every call they take the frames to write
(:meth:`Session.take_writes`, in order), the events for the application
(:meth:`Session.take_events`, in order) and the requests that are done
(:meth:`Session.take_done`), and tell it when the application has taken an event
(:meth:`Session.taken`). Waiters are opaque to the session: whatever the client uses to wake
a caller.

What it remembers (the desired state): the endpoints and topics held (in its
:class:`EventFactory`), the sticky sends per endpoint, the daemon's epoch, and per endpoint
the position ``(epoch, seq)`` of the last message received (before the first one,
``first_seq - 1`` from the subscribe's ack).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import (
    ConnectionClosed,
    ConnectionLost,
    DaemonError,
    LimitExceeded,
    NotConnected,
)
from .events import (
    ClientLagged,
    Disconnected,
    EndpointRecovery,
    ErrorEvent,
    Event,
    EventFactory,
    Reconnected,
    Resumed,
    Subscription,
)
from .protocol import DEFAULT_MAX_FRAME, REPLY_TYPES, Frame, encode_frame, request

__all__ = [
    "CLOSED",
    "CONNECTED",
    "DISCONNECTED",
    "Backoff",
    "Options",
    "Session",
    "SessionView",
    "Target",
]

#: Session states.
CONNECTED = "connected"
DISCONNECTED = "disconnected"
CLOSED = "closed"

#: Bytes charged for an event that is not a frame (``Disconnected``, ``Reconnected``, ...).
EVENT_OVERHEAD = 64


class Backoff:
    """The delays between reconnect attempts: 0.1 s doubling to a cap of 1 s, each multiplied
    by a random factor in [0.5, 1.0]. ``reset()`` once a reconnect is complete."""

    def __init__(
        self,
        initial: float = 0.1,
        cap: float = 1.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.cap = cap
        self._rng = rng
        self.attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds."""
        base = min(self.cap, self.initial * float(1 << min(self.attempt, 32)))
        self.attempt += 1
        return base * (0.5 + 0.5 * self._rng())

    def reset(self) -> None:
        self.attempt = 0


@dataclass(frozen=True)
class Options:
    """The reconnect and buffering options of a client: the keyword arguments of
    ``Client.connect`` and ``AsyncClient.connect`` after the connection's own."""

    #: Reconnect when the connection drops, and resume after ``lagged``. False: the client
    #: closes when the connection ends (the behaviour of earlier versions).
    reconnect: bool = True
    #: What ``send`` does while reconnecting: ``"buffer"`` (wait in a bounded buffer, written
    #: once connected) or ``"fail"`` (raise :class:`NotConnected` at once).
    when_disconnected: str = "buffer"
    #: Bound of the disconnected-send buffer in bytes of encoded frames.
    max_buffered_bytes: int = 1 << 20
    #: Bound of the disconnected-send buffer in messages.
    max_buffered_sends: int = 1000
    #: Sticky sends remembered per endpoint (re-sent after every reconnect).
    max_sticky: int = 1024
    #: Bound, in bytes of frames, of the events the application has not taken yet (held
    #: back during a reconnect included). Over it, messages are dropped (and resumed).
    max_event_bytes: int = 2 * DEFAULT_MAX_FRAME
    #: Largest frame body written or accepted.
    max_frame: int = DEFAULT_MAX_FRAME

    def __post_init__(self) -> None:
        if self.when_disconnected not in ("buffer", "fail"):
            raise ValueError(
                f'when_disconnected must be "buffer" or "fail", not {self.when_disconnected!r}'
            )
        for name in ("max_buffered_bytes", "max_buffered_sends", "max_sticky", "max_event_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")


@dataclass(frozen=True)
class Target:
    """Where and how a client connects: the first time and at every reconnect."""

    #: The daemon's socket path (or pipe name).
    path: str
    #: One more uid the daemon may run as (``daemon_uid``), besides this user and root.
    expected_uid: int | None
    #: ``hello.client``; None: ``wsmux-python/<version>``.
    client_name: str | None
    #: Seconds allowed for connecting and the handshake.
    timeout: float | None


# -- what waits for a reply -----------------------------------------------------------------


class _Request:
    """An application request (written to the daemon, or buffered)."""

    __slots__ = ("on_end", "on_error", "on_reply", "type", "waiter")

    def __init__(
        self,
        type_: str,
        waiter: Any,
        on_reply: Callable[[Frame], Any] | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self.type = type_
        #: None once the caller stopped waiting (timeout): the reply is then only applied.
        self.waiter = waiter
        #: Applies an ``ack`` to the desired state and returns the caller's result.
        self.on_reply = on_reply
        #: Called once when the request ends without an ``ack`` (error, lost, dropped).
        self.on_end = on_end
        #: Applies an ``error`` answer to the desired state (before ``on_end``).
        self.on_error: Callable[[DaemonError], None] | None = None

    def ended(self) -> None:
        if self.on_end is not None:
            self.on_end()
            self.on_end = None


class _Buffered:
    """A send made while disconnected, written after the next reconnect."""

    __slots__ = ("frame", "request")

    def __init__(self, frame: bytes, request_: _Request) -> None:
        self.frame = frame
        self.request = request_


class _Resubscribe:
    """One ``subscribe`` of a reconnect."""

    __slots__ = ("endpoint", "main", "since", "topics", "whole")

    def __init__(
        self, endpoint: str, main: bool, whole: bool, topics: list[str] | None, since: int | None
    ) -> None:
        self.endpoint = endpoint
        #: The endpoint's first subscribe (the one with ``since``): its answer is the
        #: endpoint's entry in ``Reconnected``.
        self.main = main
        self.whole = whole
        self.topics = topics
        self.since = since


class _Resume:
    """The ``subscribe`` with ``since`` sent after ``lagged`` or a local drop."""

    __slots__ = ("endpoint",)

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint


class _StickyResend:
    """A sticky message re-sent after a reconnect."""

    __slots__ = ("endpoint", "sticky")

    def __init__(self, endpoint: str, sticky: _Sticky) -> None:
        self.endpoint = endpoint
        self.sticky = sticky


@dataclass(frozen=True)
class _Sticky:
    data: str | bytes
    undo: str | bytes | None


class _Waiting:
    """A subscribe made while disconnected: answered by the reconnect's resubscribe."""

    __slots__ = ("answered_by", "endpoint", "since", "topics", "waiter")

    def __init__(self, endpoint: str, topics: bool, since: bool, waiter: Any) -> None:
        self.endpoint = endpoint
        self.topics = topics
        self.since = since
        self.waiter = waiter
        #: The id of the resubscribe whose answer is this one's, once connected.
        self.answered_by: int | None = None


class _Restore:
    """A reconnect whose resubscribes are not all answered yet."""

    def __init__(self, old_epoch: str | None, new_epoch: bool) -> None:
        self.old_epoch = old_epoch
        self.new_epoch = new_epoch
        #: Ids of the resubscribes still unanswered.
        self.left: set[int] = set()
        #: Per endpoint: [recovered, first_seq, error].
        self.entries: dict[str, list[Any]] = {}
        #: Events that arrived meanwhile, with their sizes: delivered after ``Reconnected``.
        self.held: list[tuple[Event, int]] = []


def _uint(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class Session:
    """The bookkeeping of one client. See the module documentation."""

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or Options()
        self.state = DISCONNECTED
        #: The daemon's ``welcome.epoch`` (None before the first welcome, or from daemons
        #: without one).
        self.epoch: str | None = None
        self.factory = EventFactory()
        #: Why the client is closed (once ``state`` is ``CLOSED``): what requests raise.
        self.close_error: BaseException | None = None
        self._connected_once = False
        self._next_id = 1
        self._pending: dict[int, Any] = {}
        self._buffer: deque[tuple[int, _Buffered]] = deque()
        self._buffer_bytes = 0
        #: Subscribes made while disconnected, by id.
        self._waiting: dict[int, _Waiting] = {}
        #: Unsubscribes made while disconnected, answered once connected, by id.
        self._on_connect: dict[int, Any] = {}
        self._sticky: dict[str, list[_Sticky]] = {}
        #: Sticky sends not answered yet, per endpoint (they count against ``max_sticky``).
        self._sticky_in_flight: dict[str, int] = {}
        self._position: dict[str, tuple[str | None, int]] = {}
        #: The seam rule: per endpoint, (request id, since) of the latest ``subscribe`` with
        #: ``since`` not answered yet; its messages with ``seq > since`` are discarded.
        self._seams: dict[str, tuple[int, int]] = {}
        self._restore: _Restore | None = None
        #: Bytes of events handed out and not taken by the application yet.
        self._outstanding = 0
        #: Messages dropped here per endpoint because of ``max_event_bytes``.
        self._local_lag: dict[str, int] = {}
        self._writes: list[bytes] = []
        self._events: list[tuple[Event, int]] = []
        self._done: list[tuple[Any, Any, BaseException | None]] = []
        #: The delays between reconnect attempts: reset once a reconnect's resync is
        #: complete (not at ``welcome``: a daemon that greets and drops is not retried at
        #: the shortest delay forever).
        self.backoff = Backoff()

    # -- what the client performs ----------------------------------------------------------

    def take_writes(self) -> list[bytes]:
        """Frames to write to the current connection, in order."""
        out, self._writes = self._writes, []
        return out

    def take_events(self) -> list[tuple[Event, int]]:
        """Events for the application, in order, each with the bytes it is charged; hand
        the size back to :meth:`taken` once the application took it."""
        out, self._events = self._events, []
        return out

    def take_done(self) -> list[tuple[Any, Any, BaseException | None]]:
        """Finished requests: ``(waiter, result, error)``."""
        out, self._done = self._done, []
        return out

    @property
    def restoring(self) -> bool:
        """Whether a reconnect's resubscribes are still unanswered."""
        return self._restore is not None

    @property
    def resyncing(self) -> bool:
        """Whether a reconnect's resubscribes or a ``subscribe`` with ``since`` (a resume)
        are still unanswered: messages are held or discarded (the seam rule) until then,
        so a client gives up on the connection if that lasts too long."""
        return self._restore is not None or bool(self._seams)

    @property
    def outstanding(self) -> int:
        """Bytes of events not taken by the application yet."""
        return self._outstanding

    def position(self, endpoint: str) -> tuple[str | None, int] | None:
        """``(epoch, seq)`` of the last message of ``endpoint`` received, if known."""
        return self._position.get(endpoint)

    @property
    def buffered_sends(self) -> int:
        """Sends waiting for the reconnect."""
        return len(self._buffer)

    def sticky_count(self, endpoint: str) -> int:
        return len(self._sticky.get(endpoint, ()))

    # -- the connection --------------------------------------------------------------------

    def connected(self, welcome: Frame) -> None:
        """A connection was greeted with ``welcome``. After a reconnect: resubscribe, re-send
        the sticky messages, then the buffered sends."""
        epoch = welcome.get("epoch")
        old_epoch, self.epoch = self.epoch, epoch if isinstance(epoch, str) else None
        self.state = CONNECTED
        if not self._connected_once:
            self._connected_once = True
            return
        new_epoch = old_epoch != self.epoch
        if new_epoch:
            self.factory.new_epoch()
        restore = _Restore(old_epoch, new_epoch)
        by_endpoint: dict[str, list[int]] = {}
        for endpoint, (whole, topics) in sorted(self.factory.held().items()):
            pos = self._position.get(endpoint)
            since = None if pos is None else pos[1]
            ids = []
            if whole:
                ids.append(self._resubscribe(endpoint, True, True, None, pos))
                if topics:
                    ids.append(self._resubscribe(endpoint, False, False, topics, None))
            else:
                ids.append(self._resubscribe(endpoint, True, False, topics, pos))
            restore.left.update(ids)
            restore.entries[endpoint] = [since is not None, None, None]
            by_endpoint[endpoint] = ids
        for request_id, waiting in list(self._waiting.items()):
            answering = by_endpoint.get(waiting.endpoint)
            if answering is None:
                # Unsubscribed again before the reconnect: nothing to wait for.
                del self._waiting[request_id]
                self._finish(waiting.waiter, Subscription(waiting.endpoint, None, None))
            else:  # the topics-only resubscribe answers a subscribe of topics, if there is one
                waiting.answered_by = answering[-1] if waiting.topics else answering[0]
        for endpoint, stickies in self._sticky.items():
            for sticky in stickies:
                request_id = self._new_id()
                self._pending[request_id] = _StickyResend(endpoint, sticky)
                self._write(
                    _send_fields(request_id, endpoint, sticky.data, None, True, sticky.undo)
                )
        while self._buffer:
            request_id, buffered = self._buffer.popleft()
            self._pending[request_id] = buffered.request
            self._writes.append(buffered.frame)
        self._buffer_bytes = 0
        for waiter, result in self._on_connect.values():
            self._finish(waiter, result)
        self._on_connect.clear()
        self._restore = restore
        if not restore.left:
            self._restored()

    def _resubscribe(
        self,
        endpoint: str,
        main: bool,
        whole: bool,
        topics: list[str] | None,
        pos: tuple[str | None, int] | None,
    ) -> int:
        request_id = self._new_id()
        since = None if pos is None else pos[1]
        self._pending[request_id] = _Resubscribe(endpoint, main, whole, topics, since)
        fields: dict[str, Any] = {"endpoint": endpoint, "topics": topics}
        if pos is not None:
            fields["since"], fields["epoch"] = pos[1], pos[0]
            self._seams[endpoint] = (request_id, pos[1])
        self._write(request("subscribe", request_id, **fields))
        return request_id

    def disconnected(self, reason: str) -> None:
        """The connection dropped; the client reconnects. Requests in flight fail with
        :class:`ConnectionLost`; ``Disconnected`` is delivered."""
        if self.state != CONNECTED:
            return
        self.state = DISCONNECTED
        for request_id, pending in self._pending.items():
            if isinstance(pending, _Request):
                pending.ended()
                self._fail(
                    pending.waiter,
                    ConnectionLost(
                        f"the connection to the daemon was lost ({reason}) before the reply to "
                        f"{pending.type} (id {request_id}); its outcome is unknown"
                    ),
                )
        self._pending.clear()
        self._seams.clear()
        restore, self._restore = self._restore, None
        if restore is not None:  # what arrived is real: hand it on
            self._events.extend(restore.held)
        self._deliver(Disconnected(reason), EVENT_OVERHEAD)

    def close(self, error: BaseException) -> None:
        """The client is closed: every request waiting fails with ``error``."""
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self.close_error = error
        waiters = [p.waiter for p in self._pending.values() if isinstance(p, _Request)]
        waiters += [b.request.waiter for _, b in self._buffer]
        waiters += [w.waiter for w in self._waiting.values()]
        waiters += [waiter for waiter, _ in self._on_connect.values()]
        for waiter in waiters:
            if waiter is not None:
                self._fail(waiter, error)
        self._pending.clear()
        self._buffer.clear()
        self._buffer_bytes = 0
        self._waiting.clear()
        self._on_connect.clear()
        restore, self._restore = self._restore, None
        if restore is not None:
            self._events.extend(restore.held)

    # -- requests --------------------------------------------------------------------------

    def request(self, waiter: Any, type_: str, fields: dict[str, Any]) -> int | None:
        """Any request but subscribe, unsubscribe and send. None while disconnected: wait
        until connected (or closed) and call again."""
        self._check_open()
        if self.state != CONNECTED:
            return None
        return self._submit(type_, fields, _Request(type_, waiter))

    def subscribe(
        self,
        waiter: Any,
        endpoint: str,
        topics: list[str] | None = None,
        since: int | None = None,
        epoch: str | None = None,
    ) -> int:
        """Subscribes; the result is a :class:`Subscription`. While disconnected the desired
        state takes it at once and the reconnect's resubscribe answers it."""
        self._check_open()
        if epoch is not None and since is None:
            raise ValueError("epoch is only meaningful with since")
        if since is not None and _uint(since) is None:
            raise ValueError(f"since must be a non-negative integer, not {since!r}")
        if self.state != CONNECTED:
            self.factory.subscribed(endpoint, topics)
            if since is not None:
                self._position[endpoint] = (epoch, since)
            request_id = self._new_id()
            self._waiting[request_id] = _Waiting(
                endpoint, topics is not None, since is not None, waiter
            )
            return request_id

        def on_reply(ack: Frame) -> Subscription:
            self.factory.subscribed(endpoint, topics)
            first = _uint(ack.get("first_seq"))
            if first is not None and (since is not None or endpoint not in self._position):
                self._position[endpoint] = (self.epoch, max(first - 1, 0))
            recovered = ack.get("recovered") is True if since is not None else None
            return Subscription(endpoint, first, recovered, ack)

        fields = {"endpoint": endpoint, "topics": topics, "since": since, "epoch": epoch}
        request_id = self._submit("subscribe", fields, _Request("subscribe", waiter, on_reply))
        if since is not None:
            self._seams[endpoint] = (request_id, since)
        return request_id

    def unsubscribe(
        self, waiter: Any, endpoint: str, topics: list[str] | None = None
    ) -> int | None:
        """Unsubscribes. What is held is dropped from the desired state at once (also when
        the connection drops before the ack). While disconnected the request is answered
        once connected; if nothing is held, None (wait until connected and call again: the
        daemon gives the answer)."""

        def forget() -> None:
            self.factory.unsubscribed(endpoint, topics)
            if not self.factory.holds(endpoint):
                self._position.pop(endpoint, None)

        self._check_open()
        if self.state != CONNECTED:
            if not self.factory.holds(endpoint):
                return None
            forget()
            request_id = self._new_id()
            self._on_connect[request_id] = (waiter, {"type": "ack", "id": request_id})
            return request_id
        # Forgotten as it is written: if the connection drops before the ack, the reconnect
        # must not take it back.
        forget()
        fields = {"endpoint": endpoint, "topics": topics}
        return self._submit("unsubscribe", fields, _Request("unsubscribe", waiter))

    def send(
        self,
        waiter: Any,
        endpoint: str,
        data: str | bytes,
        queue: bool | None = None,
        sticky: bool | None = None,
        undo: str | bytes | None = None,
    ) -> int:
        """Sends; while disconnected, buffers it or raises :class:`NotConnected`. A sticky send
        is remembered once acknowledged (or answered ``send_failed``: the daemon keeps it
        too) and re-sent after every reconnect."""
        self._check_open()
        if undo is not None and not sticky:
            raise ValueError("undo is only meaningful with sticky=True")
        req = _Request("send", waiter)
        if sticky:
            entry = _Sticky(data, undo)
            held = self._sticky.get(endpoint, [])
            if entry not in held:
                count = len(held) + self._sticky_in_flight.get(endpoint, 0)
                if count >= self.options.max_sticky:
                    raise LimitExceeded(
                        "max_sticky",
                        f"this client already has {count} sticky messages on {endpoint!r} "
                        f"(max_sticky = {self.options.max_sticky})",
                    )
            self._sticky_in_flight[endpoint] = self._sticky_in_flight.get(endpoint, 0) + 1

            def remember() -> None:
                req.on_end = None
                self._sticky_answered(endpoint)
                stickies = self._sticky.setdefault(endpoint, [])
                if entry in stickies:  # an identical re-send replaces the earlier one
                    stickies.remove(entry)
                stickies.append(entry)

            def on_reply(ack: Frame) -> Frame:
                remember()
                return ack

            def on_error(error: DaemonError) -> None:
                # The write failed, but the daemon keeps the message sticky and writes it
                # at the next upstream connect (PROTOCOL.md 9.4): so does this client.
                if error.code == "send_failed":
                    remember()

            req.on_reply = on_reply
            req.on_error = on_error
            req.on_end = lambda: self._sticky_answered(endpoint)
        try:
            return self._send(req, endpoint, data, queue, sticky, undo)
        except BaseException:
            req.ended()
            raise

    def _send(
        self,
        req: _Request,
        endpoint: str,
        data: str | bytes,
        queue: bool | None,
        sticky: bool | None,
        undo: str | bytes | None,
    ) -> int:
        if self.state == CONNECTED:
            return self._submit(
                "send",
                {
                    "endpoint": endpoint,
                    "data": data,
                    "queue": queue,
                    "sticky": sticky,
                    "undo": undo,
                },
                req,
            )
        if self.options.when_disconnected == "fail":
            raise NotConnected(
                "not connected to the daemon (reconnecting); the message was not sent "
                '(when_disconnected = "fail")'
            )
        request_id = self._new_id()
        frame = encode_frame(
            _send_fields(request_id, endpoint, data, queue, sticky, undo), self.options.max_frame
        )
        opts = self.options
        if len(self._buffer) >= opts.max_buffered_sends:
            raise LimitExceeded(
                "max_buffered_sends",
                f"{len(self._buffer)} sends already wait for the reconnect "
                f"(max_buffered_sends = {opts.max_buffered_sends}); this one was not sent",
            )
        if self._buffer_bytes + len(frame) > opts.max_buffered_bytes:
            raise LimitExceeded(
                "max_buffered_bytes",
                f"{self._buffer_bytes} bytes of sends already wait for the reconnect and this "
                f"one has {len(frame)} (max_buffered_bytes = {opts.max_buffered_bytes}); it "
                "was not sent",
            )
        self._buffer.append((request_id, _Buffered(frame, req)))
        self._buffer_bytes += len(frame)
        return request_id

    def _sticky_answered(self, endpoint: str) -> None:
        left = self._sticky_in_flight.get(endpoint, 0) - 1
        if left > 0:
            self._sticky_in_flight[endpoint] = left
        else:
            self._sticky_in_flight.pop(endpoint, None)

    def cancel(self, request_id: int) -> None:
        """The caller stopped waiting (timeout). A buffered send is removed (it is never
        written); a request already written keeps only its effect on the desired state."""
        pending = self._pending.get(request_id)
        if isinstance(pending, _Request):
            pending.waiter = None
            return
        for i, (buffered_id, buffered) in enumerate(self._buffer):
            if buffered_id == request_id:
                del self._buffer[i]
                self._buffer_bytes -= len(buffered.frame)
                buffered.request.ended()
                return
        waiting = self._waiting.get(request_id)
        if waiting is not None:
            waiting.waiter = None  # the desired state keeps it; the answer is dropped
        self._on_connect.pop(request_id, None)

    # -- frames from the daemon ------------------------------------------------------------

    def receive(self, frame: Frame, size: int) -> None:
        """One frame from the daemon, ``size`` bytes on the wire."""
        kind = frame["type"]
        request_id = frame.get("id")
        if kind in REPLY_TYPES and isinstance(request_id, int):
            pending = self._pending.pop(request_id, None)
            if pending is not None:
                self._reply(request_id, pending, frame)
            return  # replies nobody waits for are ignored
        if kind in REPLY_TYPES - {"error"}:
            return  # status/pong without id: only requests made elsewhere produce them
        endpoint = frame.get("endpoint")
        if kind == "message" and isinstance(endpoint, str):
            seq = _uint(frame.get("seq"))
            seam = self._seams.get(endpoint)
            if seq is not None and seam is not None and seq > seam[1]:
                return  # the seam rule: sent again after the resume's ack
            if endpoint in self._local_lag:
                self._local_lag[endpoint] += 1
                return
            if self._outstanding + size > self.options.max_event_bytes:
                self._local_lag[endpoint] = 1
                return
            if seq is not None and self.factory.holds(endpoint):
                self._position[endpoint] = (self.epoch, seq)
        self._deliver(self.factory.make(frame), size)
        if (
            kind == "lagged"
            and isinstance(endpoint, str)
            and self.options.reconnect
            and endpoint not in self._local_lag
        ):
            self.resume(endpoint)

    def resume(self, endpoint: str) -> None:
        """Asks the daemon to replay what this client missed of ``endpoint`` since the last
        message received (PROTOCOL.md 19.5); ``Resumed`` follows with the answer."""
        held = self.factory.held().get(endpoint)
        pos = self._position.get(endpoint)
        if self.state != CONNECTED or held is None or pos is None:
            return
        if endpoint in self._seams:
            return  # the resume in flight covers this loss too (PROTOCOL.md 19.3)
        whole, topics = held
        request_id = self._new_id()
        self._pending[request_id] = _Resume(endpoint)
        self._seams[endpoint] = (request_id, pos[1])
        fields = {
            "endpoint": endpoint,
            "topics": None if whole else topics,
            "since": pos[1],
            "epoch": pos[0],
        }
        self._write(request("subscribe", request_id, **fields))

    def taken(self, size: int) -> None:
        """The application took an event charged ``size`` bytes. Once below half of
        ``max_event_bytes``, endpoints whose messages were dropped here are announced
        (``ClientLagged``) and resumed."""
        self._outstanding = max(0, self._outstanding - size)
        if not self._local_lag or self._outstanding > self.options.max_event_bytes // 2:
            return
        lagged, self._local_lag = self._local_lag, {}
        for endpoint, dropped in lagged.items():
            self._deliver(ClientLagged(endpoint, dropped), EVENT_OVERHEAD)
            if self.options.reconnect:
                self.resume(endpoint)

    # -- internals -------------------------------------------------------------------------

    def _reply(self, request_id: int, pending: Any, frame: Frame) -> None:
        error = DaemonError.from_frame(frame) if frame["type"] == "error" else None
        for endpoint, (seam_id, _) in list(self._seams.items()):
            if seam_id == request_id:
                del self._seams[endpoint]
        if isinstance(pending, _Request):
            if error is not None:
                if pending.on_error is not None:
                    pending.on_error(error)
                pending.ended()
                self._fail(pending.waiter, error)
                return
            result: Any = frame
            if pending.on_reply is not None:
                result = pending.on_reply(frame)
            self._finish(pending.waiter, result)
        elif isinstance(pending, _Resubscribe):
            self._resubscribed(request_id, pending, frame, error)
        elif isinstance(pending, _Resume):
            self._resumed(pending.endpoint, frame, error)
        elif (
            isinstance(pending, _StickyResend)
            and error is not None
            and error.code != "send_failed"  # still sticky in the daemon (PROTOCOL.md 9.4)
        ):
            stickies = self._sticky.get(pending.endpoint, [])
            if pending.sticky in stickies:
                stickies.remove(pending.sticky)
            raw = dict(frame)
            raw.setdefault("endpoint", pending.endpoint)
            message = (
                f"the sticky message re-sent to {pending.endpoint} after reconnecting was "
                f"refused and is forgotten: {error.message}"
            )
            self._deliver(ErrorEvent(error.code, message, raw), EVENT_OVERHEAD)

    def _resubscribed(
        self, request_id: int, pending: _Resubscribe, ack: Frame, error: DaemonError | None
    ) -> None:
        endpoint = pending.endpoint
        restore = self._restore
        first = None
        if error is not None:
            if error.code == "unknown_endpoint":
                self.factory.unsubscribed(endpoint, None)
            else:
                self.factory.forget(endpoint, pending.whole, pending.topics)
            if not self.factory.holds(endpoint):
                self._position.pop(endpoint, None)
        else:
            first = _uint(ack.get("first_seq"))
            if first is not None and (pending.since is not None or endpoint not in self._position):
                self._position[endpoint] = (self.epoch, max(first - 1, 0))
        for waiting_id, waiting in list(self._waiting.items()):
            if waiting.answered_by != request_id:
                continue
            del self._waiting[waiting_id]
            if error is not None:
                self._fail(waiting.waiter, error)
            else:
                recovered = ack.get("recovered") is True if waiting.since else None
                self._finish(waiting.waiter, Subscription(endpoint, first, recovered, ack))
        if restore is None:
            return
        entry = restore.entries.get(endpoint)
        if entry is not None:
            if pending.main:
                entry[0] = error is None and ack.get("recovered") is True
                entry[1] = first
            if error is not None:
                entry[0] = False
                entry[2] = entry[2] or error
        restore.left.discard(request_id)
        if not restore.left:
            self._restored()

    def _restored(self) -> None:
        restore, self._restore = self._restore, None
        assert restore is not None
        self.backoff.reset()
        entries = tuple(
            EndpointRecovery(name, bool(e[0]), e[1], e[2]) for name, e in restore.entries.items()
        )
        event = Reconnected(
            self.epoch, restore.new_epoch, all(e.recovered for e in entries), entries
        )
        self._deliver(event, EVENT_OVERHEAD)
        self._events.extend(restore.held)

    def _resumed(self, endpoint: str, ack: Frame, error: DaemonError | None) -> None:
        if error is not None:
            if error.code == "unknown_endpoint":
                self.factory.unsubscribed(endpoint, None)
                self._position.pop(endpoint, None)
            self._deliver(Resumed(endpoint, False, None, error, dict(ack)), EVENT_OVERHEAD)
            return
        first = _uint(ack.get("first_seq"))
        if first is not None:
            self._position[endpoint] = (self.epoch, max(first - 1, 0))
        recovered = ack.get("recovered") is True
        self._deliver(Resumed(endpoint, recovered, first, None, dict(ack)), EVENT_OVERHEAD)

    def _deliver(self, event: Event, size: int) -> None:
        self._outstanding += size
        if self._restore is not None:
            self._restore.held.append((event, size))
        else:
            self._events.append((event, size))

    def _check_open(self) -> None:
        if self.state == CLOSED:
            raise ConnectionClosed(str(self.close_error))

    def _submit(self, type_: str, fields: dict[str, Any], req: _Request) -> int:
        request_id = self._new_id()
        self._write(request(type_, request_id, **fields))
        self._pending[request_id] = req
        return request_id

    def _write(self, msg: Frame) -> None:
        self._writes.append(encode_frame(msg, self.options.max_frame))

    def _new_id(self) -> int:
        request_id = self._next_id
        self._next_id += 1
        return request_id

    def _finish(self, waiter: Any, result: Any) -> None:
        if waiter is not None:
            self._done.append((waiter, result, None))

    def _fail(self, waiter: Any, error: BaseException) -> None:
        if waiter is not None:
            self._done.append((waiter, None, error))


class SessionView:
    """What both clients tell about their session: read-only, from any thread."""

    _session: Session
    #: The daemon's latest ``welcome``: ``{"version": 1, "server": ..., "endpoints": [...],
    #: "epoch": ...}``, replaced at each reconnect.
    welcome: Frame

    @property
    def endpoints(self) -> list[str]:
        """The names of the endpoints configured in the daemon (from ``welcome``)."""
        return [str(e.get("name")) for e in self.welcome.get("endpoints", [])]

    @property
    def epoch(self) -> str | None:
        """The daemon's ``welcome.epoch``: new each time the daemon starts."""
        return self._session.epoch

    def last_seq(self, endpoint: str) -> int | None:
        """The ``seq`` of the last message of ``endpoint`` received (before the first one,
        ``first_seq - 1`` of the subscription); with :attr:`epoch`, what to pass as
        ``since`` to resume there later."""
        position = self._session.position(endpoint)
        return None if position is None else position[1]

    @property
    def buffered_sends(self) -> int:
        """How many sends made while reconnecting wait to be written."""
        return self._session.buffered_sends

    @property
    def connected(self) -> bool:
        """Whether the client is connected to the daemon now (not reconnecting or closed)."""
        return self._session.state == CONNECTED


def _send_fields(
    request_id: int,
    endpoint: str,
    data: str | bytes,
    queue: bool | None,
    sticky: bool | None,
    undo: str | bytes | None,
) -> Frame:
    return request(
        "send", request_id, endpoint=endpoint, data=data, queue=queue, sticky=sticky, undo=undo
    )
