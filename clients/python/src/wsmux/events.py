"""Events: what the daemon sends on its own (``message``, ``state``, ``error`` without id)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

from .errors import DaemonError
from .protocol import Frame


@dataclass(frozen=True)
class Message:
    """One upstream data message of a subscribed endpoint."""

    type: ClassVar[str] = "message"

    endpoint: str
    #: Per-endpoint sequence number; rises by exactly 1 per upstream message.
    seq: int
    #: ``str`` for a WebSocket text message, ``bytes`` for a binary one.
    data: str | bytes
    #: How many messages this connection missed just before this one, usually announced by a
    #: ``lagged`` event. For a subscription to the whole endpoint it is the gap in ``seq``;
    #: for one to topics only, the gap in ``topic_seq`` of this message's topic (other topics'
    #: messages are not missed, they are not wanted). 0 for the first message.
    missed: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: The topic the endpoint's ``key`` found in the message; None without one (or from an
    #: endpoint without topics).
    topic: str | None = None
    #: Rises by exactly 1 per message of ``topic``, per daemon run; None when the topic is
    #: not known to the endpoint (nobody subscribed to it).
    topic_seq: int | None = None

    @property
    def is_binary(self) -> bool:
        return isinstance(self.data, bytes)

    @property
    def text(self) -> str:
        """The data as text (binary data is decoded as UTF-8 with replacement)."""
        if isinstance(self.data, bytes):
            return self.data.decode("utf-8", "replace")
        return self.data


@dataclass(frozen=True)
class State:
    """An endpoint's connection state changed (or, right after ``subscribe``, what it is)."""

    type: ClassVar[str] = "state"

    endpoint: str
    #: ``connecting``, ``open``, ``backoff``, ``failed``, ``closed``, or a newer value.
    state: str
    attempt: int | None = None
    retry_in_ms: int | None = None
    reason: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_open(self) -> bool:
        """Whether messages can be sent now. Every other state, unknown ones included, is not."""
        return self.state == "open"


@dataclass(frozen=True)
class ErrorEvent:
    """An ``error`` frame without request id, e.g. ``lagged`` (messages were dropped) or
    ``topic_rejected`` (the upstream refused ``topic`` of ``endpoint``; ``message`` is its
    answer). Only the codes in ``wsmux.FATAL_CODES`` end the connection."""

    type: ClassVar[str] = "error"

    code: str
    message: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def endpoint(self) -> str | None:
        """The endpoint the error concerns, if it names one."""
        value = self.raw.get("endpoint")
        return value if isinstance(value, str) else None

    @property
    def topic(self) -> str | None:
        """The topic the error concerns (``topic_rejected``), if it names one."""
        value = self.raw.get("topic")
        return value if isinstance(value, str) else None

    @property
    def fatal(self) -> bool:
        """Whether the daemon closes the connection after this error."""
        from .protocol import FATAL_CODES

        return self.code in FATAL_CODES


@dataclass(frozen=True)
class Lagged:
    """``lagged {endpoint, dropped}``: this client read too slowly and ``dropped`` messages of
    ``endpoint`` were skipped for it (newer daemons; older ones send ``error`` ``lagged``)."""

    type: ClassVar[str] = "lagged"

    endpoint: str
    dropped: int
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class OtherEvent:
    """A frame of a type this version of the package does not know (from a newer daemon)."""

    type: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def endpoint(self) -> str | None:
        value = self.raw.get("endpoint")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Disconnected:
    """The connection to the daemon dropped (EOF, error, daemon restart); the client is
    reconnecting. Requests that were in flight failed with :class:`wsmux.ConnectionLost`."""

    type: ClassVar[str] = "disconnected"

    #: Why the connection ended, for humans.
    reason: str


@dataclass(frozen=True)
class EndpointRecovery:
    """How one endpoint came back after a reconnect (an entry of :class:`Reconnected`)."""

    endpoint: str
    #: True when nothing of the endpoint was missed (the daemon replayed the gap).
    recovered: bool
    #: The first ``seq`` the new subscription delivers; None if the daemon did not say.
    first_seq: int | None = None
    #: Set when the daemon refused the resubscribe (e.g. ``unknown_endpoint`` after a reload
    #: removed the endpoint); the client then forgets what it asked for.
    error: DaemonError | None = None


@dataclass(frozen=True)
class Reconnected:
    """The client is connected again and every resubscribe of the reconnect was answered.

    Events that arrived before the last answer follow this one."""

    type: ClassVar[str] = "reconnected"

    #: The new daemon's ``welcome.epoch`` (None from daemons without one).
    epoch: str | None
    #: Whether the epoch changed: the daemon restarted, and ``seq`` counts from 1 again.
    new_epoch: bool
    #: True when every endpoint recovered: nothing was missed.
    recovered: bool
    #: One entry per endpoint the client held, sorted by name.
    endpoints: tuple[EndpointRecovery, ...] = ()


@dataclass(frozen=True)
class Resumed:
    """After a ``lagged`` (or messages this client dropped, :class:`ClientLagged`) the client
    asked the daemon to replay what it missed of ``endpoint``: this is the answer. With
    ``recovered`` nothing was lost; otherwise messages before ``first_seq`` were."""

    type: ClassVar[str] = "resumed"

    endpoint: str
    recovered: bool
    first_seq: int | None = None
    #: Set when the daemon refused the resume.
    error: DaemonError | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class ClientLagged:
    """This library dropped ``dropped`` messages of ``endpoint`` because the application did
    not take its events (the ``max_event_bytes`` bound). With ``reconnect`` on, a resume
    follows at once (:class:`Resumed` says whether the daemon still had them)."""

    type: ClassVar[str] = "client_lagged"

    endpoint: str
    dropped: int


@dataclass(frozen=True)
class Subscription:
    """What ``subscribe`` returns: where the subscription starts."""

    endpoint: str
    #: The first ``seq`` it delivers (``ack.first_seq``); None from daemons that do not say.
    first_seq: int | None
    #: Only for a ``subscribe`` with ``since``: whether nothing after ``since`` was missed.
    #: None without ``since``.
    recovered: bool | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


Event = Union[
    Message,
    State,
    ErrorEvent,
    Lagged,
    OtherEvent,
    Disconnected,
    Reconnected,
    Resumed,
    ClientLagged,
]


class _Held:
    """What this connection holds on one endpoint, as acknowledged by the daemon."""

    __slots__ = ("topics", "whole")

    def __init__(self) -> None:
        #: Subscribed to the whole endpoint (``subscribe`` without ``topics``).
        self.whole = False
        #: The topics held, each with the last ``topic_seq`` received (None: none yet).
        self.topics: dict[str, int | None] = {}


class EventFactory:
    """Turns event frames into event objects and tracks ``seq`` per endpoint.

    The clients tell it about acknowledged ``subscribe``/``unsubscribe`` requests, in the
    order of the frames, so that ``Message.missed`` does not count the messages of topics this
    connection does not hold.
    """

    def __init__(self) -> None:
        self._last_seq: dict[str, int] = {}
        self._held: dict[str, _Held] = {}

    def subscribed(self, endpoint: str, topics: list[str] | None) -> None:
        """A ``subscribe`` of ``endpoint`` (the whole endpoint if ``topics`` is None) was
        acknowledged."""
        held = self._held.setdefault(endpoint, _Held())
        if topics is None:
            held.whole = True
        else:
            for topic in topics:
                held.topics.setdefault(topic, None)

    def unsubscribed(self, endpoint: str, topics: list[str] | None) -> None:
        """An ``unsubscribe`` of ``endpoint`` (everything if ``topics`` is None) was
        acknowledged."""
        held = self._held.get(endpoint)
        if held is not None and topics is not None:
            for topic in topics:
                held.topics.pop(topic, None)
            if held.whole or held.topics:
                return
        # Nothing held any more: a later subscription starts afresh, without a seq gap.
        self._held.pop(endpoint, None)
        self._last_seq.pop(endpoint, None)

    def holds(self, endpoint: str) -> bool:
        """Whether this connection is subscribed to ``endpoint`` or to any of its topics."""
        return endpoint in self._held

    def held(self) -> dict[str, tuple[bool, list[str]]]:
        """Every endpoint held: whether whole, and its topics (in the order taken)."""
        return {name: (h.whole, list(h.topics)) for name, h in self._held.items()}

    def forget(self, endpoint: str, whole: bool, topics: list[str] | None) -> None:
        """The daemon refused to take back what a resubscribe named (the whole endpoint
        and/or ``topics``): it is no longer held."""
        held = self._held.get(endpoint)
        if held is None:
            return
        if whole:
            held.whole = False
        for topic in topics or ():
            held.topics.pop(topic, None)
        if not held.whole and not held.topics:
            self.unsubscribed(endpoint, None)

    def new_epoch(self) -> None:
        """The daemon restarted: ``seq`` and ``topic_seq`` count afresh, so gaps are not
        measured across the restart."""
        self._last_seq.clear()
        for held in self._held.values():
            for topic in held.topics:
                held.topics[topic] = None

    def make(self, frame: Frame) -> Event:
        kind = frame["type"]
        if kind == "message":
            return self._message(frame)
        if kind == "state":
            return State(
                str(frame.get("endpoint")),
                str(frame.get("state")),
                frame.get("attempt"),
                frame.get("retry_in_ms"),
                frame.get("reason"),
                frame,
            )
        if kind == "error":
            return ErrorEvent(str(frame.get("code")), str(frame.get("message", "")), frame)
        if kind == "lagged":
            return Lagged(str(frame.get("endpoint")), int(frame.get("dropped", 0)), frame)
        return OtherEvent(kind, frame)

    def _message(self, frame: Frame) -> Message:
        endpoint = str(frame.get("endpoint"))
        seq = int(frame.get("seq", 0))
        topic = frame.get("topic")
        topic = topic if isinstance(topic, str) else None
        topic_seq = frame.get("topic_seq")
        topic_seq = topic_seq if _is_uint(topic_seq) else None
        last = self._last_seq.get(endpoint)
        missed = _gap(last, seq)
        self._last_seq[endpoint] = seq
        held = self._held.get(endpoint)
        if held is not None and not held.whole:
            # Subscribed to topics only: the other topics' messages are not for this
            # connection, so only a gap in this topic's own counter is a miss.
            missed = 0
            if topic is not None and topic_seq is not None and topic in held.topics:
                missed = _gap(held.topics[topic], topic_seq)
                held.topics[topic] = topic_seq
        return Message(endpoint, seq, frame.get("data", b""), missed, frame, topic, topic_seq)


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _gap(last: int | None, now: int) -> int:
    return now - last - 1 if last is not None and now > last + 1 else 0
