"""A squatted socket path must not impersonate the daemon: the clients check, before sending
anything, that the process serving the socket runs as this user, root or the expected uid.

The listeners are forked from this process and drop to another uid before they listen (the
kernel records the listener's credentials at listen()), and so are the clients that must not
be root; no other interpreter is needed. Needs Linux and root, as in CI.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from typing import Callable

import pytest
from conftest import VECTORS_DIR

import wsmux
from wsmux.peer import check_peer, expected_daemon_uid

SQUATTER = 65534  # runs the impostor
USER = 65533  # the client's own user in these tests

needs_root = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0,
    reason="switching uids needs Linux and root",
)

WELCOME = (VECTORS_DIR / "welcome.bin").read_bytes()


def _become(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def _in_child(body: Callable[[], int], uid: int | None) -> tuple[int, str]:
    """Runs ``body`` in a forked child (as ``uid`` if given); returns its exit code and what
    it wrote to the pipe it got as standard output."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        code = 1
        try:
            os.close(r)
            os.dup2(w, 1)
            if uid is not None:
                _become(uid)
            code = body()
        except BaseException as exc:
            os.write(w, f"child failed: {exc!r}".encode())
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        chunks.append(f.read())
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


class Listener:
    """A fake daemon forked as ``uid``: answers whatever it reads first with the golden
    ``welcome`` frame. It speaks the protocol well enough that only the uid check stops a
    client."""

    def __init__(self, directory: str, uid: int) -> None:
        self.path = os.path.join(directory, f"d{uid}.sock")
        r, w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover (child)
            try:
                os.close(r)
                _become(uid)
                srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                srv.bind(self.path)
                os.chmod(self.path, 0o666)
                srv.listen(16)
                os.write(w, b"ready")
                os.close(w)
                srv.settimeout(60)
                while True:
                    conn, _ = srv.accept()
                    conn.settimeout(5)
                    try:
                        if conn.recv(65536):
                            conn.sendall(WELCOME)
                    except OSError:
                        pass
                    conn.close()
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            assert f.read() == b"ready", "the fake daemon did not start"

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


@pytest.fixture
def shared_dir() -> Iterator[str]:
    # Like /tmp: anyone may create a socket here; nobody can remove another's.
    d = tempfile.mkdtemp(prefix="wsmux-peer-")
    os.chmod(d, 0o1777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def listeners(shared_dir: str) -> Iterator[dict[int, Listener]]:
    started = {uid: Listener(shared_dir, uid) for uid in (SQUATTER, USER, 0)}
    try:
        yield started
    finally:
        for listener in started.values():
            listener.stop()


def _blocking(path: str, daemon_uid: int | None = None) -> Callable[[], int]:
    def run() -> int:
        try:
            with wsmux.Client.connect(path, timeout=5, daemon_uid=daemon_uid) as client:
                assert client.welcome["type"] == "welcome"
        except wsmux.UntrustedDaemon as exc:
            os.write(1, str(exc).encode())
            return 3
        return 0

    return run


def _asyncio(path: str, daemon_uid: int | None = None) -> Callable[[], int]:
    async def connect() -> None:
        client = await wsmux.AsyncClient.connect(path, timeout=5, daemon_uid=daemon_uid)
        await client.close()

    def run() -> int:
        try:
            asyncio.run(connect())
        except wsmux.UntrustedDaemon as exc:
            os.write(1, str(exc).encode())
            return 3
        return 0

    return run


CLIENTS = {"blocking": _blocking, "asyncio": _asyncio}


@needs_root
@pytest.mark.parametrize("kind", list(CLIENTS))
def test_a_client_refuses_a_socket_served_by_another_user(
    kind: str, listeners: dict[int, Listener]
) -> None:
    path = listeners[SQUATTER].path
    code, out = _in_child(CLIENTS[kind](path), USER)
    assert code == 3, out
    assert f"uid {SQUATTER}" in out and path in out, out


@needs_root
@pytest.mark.parametrize("kind", list(CLIENTS))
def test_a_root_client_refuses_it_too(kind: str, listeners: dict[int, Listener]) -> None:
    code, out = _in_child(CLIENTS[kind](listeners[SQUATTER].path), None)
    assert code == 3, out


@needs_root
@pytest.mark.parametrize("kind", list(CLIENTS))
def test_a_client_trusts_its_own_user_root_and_the_named_uid(
    kind: str, listeners: dict[int, Listener]
) -> None:
    for listener_uid, named in ((USER, None), (0, None), (SQUATTER, SQUATTER)):
        code, out = _in_child(CLIENTS[kind](listeners[listener_uid].path, named), USER)
        assert code == 0, f"daemon as {listener_uid}: {out}"


@needs_root
def test_the_environment_names_the_expected_uid(
    listeners: dict[int, Listener], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSMUX_DAEMON_UID", str(SQUATTER))
    code, out = _in_child(_blocking(listeners[SQUATTER].path), USER)
    assert code == 0, out


def test_expected_uid_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WSMUX_DAEMON_UID", raising=False)
    assert expected_daemon_uid() is None
    assert expected_daemon_uid(998) == 998
    monkeypatch.setenv("WSMUX_DAEMON_UID", "997")
    assert expected_daemon_uid() == 997
    assert expected_daemon_uid(5) == 5
    monkeypatch.setenv("WSMUX_DAEMON_UID", "daemon")
    with pytest.raises(ValueError, match="WSMUX_DAEMON_UID"):
        expected_daemon_uid()


@pytest.mark.skipif(not hasattr(socket, "SO_PEERCRED"), reason="Linux only")
def test_a_socketpair_is_served_by_ourselves() -> None:
    a, b = socket.socketpair()
    with a, b:
        check_peer(a, "<socketpair>", None)
