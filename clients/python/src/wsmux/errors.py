"""Exceptions raised by the wsmux clients. Timeouts raise the built-in ``TimeoutError``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class WsmuxError(Exception):
    """Base class of every wsmux exception."""


class DaemonUnavailable(WsmuxError):
    """The daemon's socket could not be reached (not running, wrong path, no permission)."""

    def __init__(self, path: str, cause: BaseException) -> None:
        super().__init__(
            f"cannot connect to wsmuxd at {path}: {cause} "
            "(is the daemon running? the path comes from the argument, $WSMUX_SOCKET or the "
            "default location)"
        )
        self.path = path


class UntrustedDaemon(WsmuxError):
    """The socket is served by a process of another user, so it is not a daemon this client
    trusts: another user may have taken the socket path. Nothing was sent to it.

    ``uid`` is the uid the listening process runs as, ``path`` the socket path. If the daemon
    deliberately runs as another user, name that uid with ``daemon_uid=`` or
    ``$WSMUX_DAEMON_UID``.
    """

    def __init__(
        self, path: str, uid: int, own_uid: int, expected_uid: int | None = None
    ) -> None:
        extra = "" if expected_uid is None else f" or the expected uid {expected_uid}"
        super().__init__(
            f"refusing {path}: the process listening there runs as uid {uid}, not as this user "
            f"(uid {own_uid}) or root{extra}; another user may have taken the socket path (if "
            f"the daemon deliberately runs as uid {uid}, pass daemon_uid={uid} or set "
            "WSMUX_DAEMON_UID)"
        )
        self.path = path
        self.uid = uid
        self.own_uid = own_uid
        self.expected_uid = expected_uid


class DaemonError(WsmuxError):
    """The daemon answered with an ``error`` frame.

    ``code`` is the stable, machine-readable code (``"not_connected"``, ``"unknown_endpoint"``,
    ...; PROTOCOL.md section 11); ``message`` is for humans and may change.
    """

    def __init__(
        self,
        code: str,
        message: str,
        request_id: int | None = None,
        frame: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id
        self.frame = dict(frame) if frame is not None else {}

    @classmethod
    def from_frame(cls, frame: Mapping[str, Any]) -> DaemonError:
        return cls(str(frame.get("code")), str(frame.get("message", "")), frame.get("id"), frame)

    @property
    def fatal(self) -> bool:
        """Whether the daemon closes the connection after this error."""
        from .protocol import FATAL_CODES

        return self.code in FATAL_CODES

    @property
    def endpoint(self) -> str | None:
        """The endpoint the error names, if any (``topic_rejected`` events do)."""
        value = self.frame.get("endpoint")
        return value if isinstance(value, str) else None

    @property
    def topic(self) -> str | None:
        """The topic the error names, if any."""
        value = self.frame.get("topic")
        return value if isinstance(value, str) else None


class ConnectionClosed(WsmuxError):
    """The client is closed: by ``close()``, or, with ``reconnect=False``, because the
    connection to the daemon ended (daemon shutdown or restart)."""


class ConnectionLost(WsmuxError):
    """The connection to the daemon dropped while this request was in flight, so its outcome
    is unknown: a ``send`` may or may not have been written upstream. The request is not
    retried (no silent duplicates); the client reconnects by itself."""


class NotConnected(WsmuxError):
    """``send`` with ``when_disconnected="fail"`` while the client is not connected to the
    daemon (it is reconnecting)."""


class LimitExceeded(WsmuxError):
    """A bound of this library was reached; ``limit`` names the option (for example
    ``max_buffered_bytes``, ``max_buffered_sends`` or ``max_sticky``). Nothing was sent."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(f"{limit}: {message}")
        self.limit = limit


class ProtocolError(WsmuxError):
    """The daemon sent bytes that are not a valid frame."""
