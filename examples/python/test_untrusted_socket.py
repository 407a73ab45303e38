"""wsmux_client.py refuses a socket served by another user (PROTOCOL.md section 2.3).

The fake daemon and the clients that must not be root are forked from this process and drop
to other uids; the kernel records a listener's credentials at listen(). Needs Linux and root,
as in CI; skipped otherwise.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from wsmux_client import UntrustedDaemon, WsmuxClient, main  # noqa: E402

SQUATTER = 65534
USER = 65533
WELCOME_PATH = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto", "vectors", "welcome.bin"
)

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0,
    reason="switching uids needs Linux and root",
)


def _become(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def _listen_as(path: str, uid: int) -> int:
    """Forks a fake daemon as ``uid`` that answers anything with the golden ``welcome``."""
    with open(WELCOME_PATH, "rb") as f:
        welcome = f.read()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        try:
            os.close(r)
            _become(uid)
            srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            srv.bind(path)
            os.chmod(path, 0o666)
            srv.listen(16)
            os.write(w, b"ready")
            os.close(w)
            srv.settimeout(60)
            while True:
                conn, _ = srv.accept()
                conn.settimeout(5)
                try:
                    if conn.recv(65536):
                        conn.sendall(welcome)
                except OSError:
                    pass
                conn.close()
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        assert f.read() == b"ready"
    return pid


def _main_as(uid: int, argv: list[str]) -> tuple[int, str]:
    """Runs the command line in a child as ``uid``: its exit code and standard error."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        code = 1
        try:
            os.close(r)
            sys.stderr = io.TextIOWrapper(os.fdopen(w, "wb"), write_through=True)
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
            _become(uid)
            code = main(argv)
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        err = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


@pytest.fixture
def squatter() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="wsmux-ex-")
    os.chmod(d, 0o1777)  # like /tmp: anyone may create a socket here
    path = os.path.join(d, "wsmuxd.sock")
    pid = _listen_as(path, SQUATTER)
    try:
        yield path
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        shutil.rmtree(d, ignore_errors=True)


def test_the_command_line_refuses_a_squatter_with_exit_code_4(squatter: str) -> None:
    code, err = _main_as(USER, ["--socket", squatter, "--endpoint", "feed", "--count", "0"])
    assert code == 4, err
    assert f"uid {SQUATTER}" in err and squatter in err, err


def test_the_library_refuses_a_squatter_even_as_root(squatter: str) -> None:
    with pytest.raises(UntrustedDaemon) as info:
        WsmuxClient.connect(squatter, timeout=5)
    assert info.value.uid == SQUATTER


def test_a_named_uid_is_trusted(squatter: str) -> None:
    with WsmuxClient.connect(squatter, timeout=5, daemon_uid=SQUATTER) as client:
        assert client.welcome["type"] == "welcome"
    # The command line gets as far as subscribing, which the fake daemon does not answer.
    code, err = _main_as(
        USER,
        ["--socket", squatter, "--endpoint", "feed", "--daemon-uid", str(SQUATTER),
         "--timeout", "2"],
    )
    assert code == 2 and "refusing" not in err, err
