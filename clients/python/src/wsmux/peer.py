"""Who serves the socket: the daemon's user id, checked before anything is sent.

A socket path can be taken by anyone who can write to its directory before the daemon starts
(or after it stopped). So once connected, and before ``hello``, the client asks the kernel which
user the listening process runs as (PROTOCOL.md section 2.3): it must be this user, root, or the
one uid the application named (the ``daemon_uid`` argument, else ``$WSMUX_DAEMON_UID``).
"""

from __future__ import annotations

import os
import socket
import struct
import sys

from .errors import UntrustedDaemon

__all__ = ["DAEMON_UID_ENV", "check_peer", "expected_daemon_uid", "peer_uid"]

#: Environment variable naming one more uid the daemon may run as.
DAEMON_UID_ENV = "WSMUX_DAEMON_UID"

# Linux: struct ucred {pid_t pid; uid_t uid; gid_t gid;}
_UCRED = struct.Struct("iII")
# macOS, FreeBSD, DragonFly: getsockopt(SOL_LOCAL = 0, LOCAL_PEERCRED = 1) fills a struct xucred
# that starts with {u_int cr_version (XUCRED_VERSION = 0); uid_t cr_uid; ...}.
_SOL_LOCAL = 0
_LOCAL_PEERCRED = 1
_XUCRED_HEAD = struct.Struct("=II")


def expected_daemon_uid(explicit: int | None = None) -> int | None:
    """The extra trusted uid: ``explicit``, else ``$WSMUX_DAEMON_UID``, else None."""
    if explicit is not None:
        return int(explicit)
    text = os.environ.get(DAEMON_UID_ENV, "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise ValueError(f"{DAEMON_UID_ENV} must be a numeric user id, not {text[:40]!r}")
    return int(text)


def peer_uid(sock: socket.socket) -> int | None:
    """The effective uid of the process at the other end of a Unix socket.

    None where the platform offers no way to ask (the check is then skipped).
    """
    if hasattr(socket, "SO_PEERCRED"):  # Linux
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        _pid, uid, _gid = _UCRED.unpack(raw)
        return int(uid)
    if sys.platform == "darwin" or sys.platform.startswith(("freebsd", "dragonfly")):
        raw = sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, 256)
        version, uid = _XUCRED_HEAD.unpack_from(raw)
        if version != 0:
            raise OSError(f"unexpected xucred version {version} from LOCAL_PEERCRED")
        return int(uid)
    return None


def check_peer(sock: socket.socket, path: str, expected: int | None) -> None:
    """Raises :class:`UntrustedDaemon` unless ``sock`` is served by this user, root or
    ``expected``."""
    uid = peer_uid(sock)
    if uid is None:
        return
    own = os.geteuid()
    if uid in (own, 0) or uid == expected:
        return
    raise UntrustedDaemon(path, uid, own, expected)
