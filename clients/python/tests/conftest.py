"""Shared test fixtures: the golden vectors and a real wsmuxd in demo mode."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket as _socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = PACKAGE_DIR.parent.parent
VECTORS_DIR = REPO_ROOT / "proto" / "vectors"

try:
    import wsmux  # noqa: F401
except ImportError:  # not installed: test the source tree
    sys.path.insert(0, str(PACKAGE_DIR / "src"))


def daemon_binary() -> Path:
    """$WSMUX_DAEMON_BIN, else target/debug/wsmuxd of this repository (../../ from here)."""
    explicit = os.environ.get("WSMUX_DAEMON_BIN")
    path = Path(explicit) if explicit else PACKAGE_DIR / ".." / ".." / "target" / "debug" / "wsmuxd"
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"the wsmuxd binary was not found at {path.resolve()}: build it with "
            "`cargo build -p wsmuxd` at the repository root, or set WSMUX_DAEMON_BIN to its path",
            pytrace=False,
        )
    return path


def load_vectors() -> list[dict[str, Any]]:
    with open(VECTORS_DIR / "vectors.json", encoding="utf-8") as f:
        return list(json.load(f)["cases"])


def from_json(value: Any) -> Any:
    """vectors.json form -> Python values: {"$bin": hex} becomes bytes; key order is kept."""
    if isinstance(value, dict):
        if list(value) == ["$bin"]:
            return bytes.fromhex(value["$bin"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


class Daemon:
    """A `wsmuxd` process listening on a socket in a private temp directory (or at
    ``socket``, e.g. where an earlier daemon listened): `--demo`, or `--config` with
    ``config`` (TOML text) written to a file in that directory."""

    def __init__(self, config: str | None = None, socket: str | None = None) -> None:
        # A short directory: Unix socket paths are limited to about 100 bytes.
        self.dir = tempfile.mkdtemp(prefix="wsmux-py-")
        self.socket = socket or os.path.join(self.dir, "s.sock")
        self.log_path = os.path.join(self.dir, "wsmuxd.log")
        if config is None:
            mode = ["--demo"]
        else:
            config_path = os.path.join(self.dir, "wsmux.toml")
            with open(config_path, "w", encoding="utf-8") as f:
                f.write(config)
            mode = ["--config", config_path]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed by stop())
        env = dict(os.environ)
        env.pop("WSMUX_SOCKET", None)
        env.pop("WSMUX_CONFIG", None)
        self.proc = subprocess.Popen(
            [str(daemon_binary()), *mode, "--socket", self.socket],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self._wait_listening(15.0)

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"wsmuxd exited with {self.proc.returncode}:\n{self.log()}")
            if os.path.exists(self.socket):
                probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
                try:
                    probe.connect(self.socket)
                    return
                except OSError:
                    pass
                finally:
                    probe.close()
            time.sleep(0.02)
        raise RuntimeError(
            f"wsmuxd did not listen on {self.socket} within {timeout} s:\n{self.log()}"
        )

    def log(self) -> str:
        self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def terminate(self, timeout: float = 10.0) -> int:
        """Sends SIGTERM and waits for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = Daemon()
    try:
        yield d
    finally:
        d.stop()
