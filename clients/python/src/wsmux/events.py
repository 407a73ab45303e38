"""Events: what the daemon sends on its own (``message``, ``state``, ``error`` without id)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

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
    #: How many messages of this endpoint this connection missed just before this one (a
    #: ``seq`` gap, usually announced by a ``lagged`` error). 0 for the first message.
    missed: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

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
    """An ``error`` frame without request id, e.g. ``lagged`` (messages were dropped)."""

    type: ClassVar[str] = "error"

    code: str
    message: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def endpoint(self) -> str | None:
        value = self.raw.get("endpoint")
        return value if isinstance(value, str) else None


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


Event = Union[Message, State, ErrorEvent, Lagged, OtherEvent]


class EventFactory:
    """Turns event frames into event objects and tracks ``seq`` per endpoint."""

    def __init__(self) -> None:
        self._last_seq: dict[str, int] = {}

    def make(self, frame: Frame) -> Event:
        kind = frame["type"]
        if kind == "message":
            endpoint = str(frame.get("endpoint"))
            seq = int(frame.get("seq", 0))
            last = self._last_seq.get(endpoint)
            missed = seq - last - 1 if last is not None and seq > last + 1 else 0
            self._last_seq[endpoint] = seq
            return Message(endpoint, seq, frame.get("data", b""), missed, frame)
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
