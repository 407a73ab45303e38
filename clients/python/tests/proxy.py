"""A Unix-socket proxy for fault injection: accepts on ``path``, connects each client to the
daemon's socket ``target`` and copies bytes both ways, one thread per direction.

``kill()`` closes every connection pair at once (the client sees the connection drop while
the daemon keeps running); later clients are served as usual. ``pause()`` stops reading from
the daemon, so the daemon sees a client that does not read (its queue for it fills) until
``resume()``.
"""

from __future__ import annotations

import socket
import threading

_CHUNK = 65536


class UnixProxy:
    def __init__(self, path: str, target: str) -> None:
        self.path = path
        self.target = target
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._threads: list[threading.Thread] = []
        self._stopped = False
        #: Set while bytes from the daemon are passed on.
        self._flowing = threading.Event()
        self._flowing.set()
        #: Connections accepted so far.
        self.accepted = 0
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(16)
        self._listener.settimeout(0.05)  # accept() is not woken by close(): poll
        self._spawn(self._accept_loop)

    def __enter__(self) -> UnixProxy:  # noqa: PYI034
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def kill(self) -> int:
        """Closes every current connection pair; returns how many there were."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _shut(sock)
        return len(pairs)

    def pause(self) -> None:
        """Stops reading from the daemon (at most one more chunk is passed on)."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        with self._lock:
            self._stopped = True
        self._flowing.set()
        self.kill()
        self._listener.close()
        for thread in list(self._threads):
            thread.join(timeout=5)

    # -- internals -------------------------------------------------------------------------

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                with self._lock:
                    if self._stopped:
                        return
                continue
            except OSError:
                return
            client.settimeout(None)
            daemon = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                daemon.connect(self.target)
            except OSError:
                _shut(daemon)
                _shut(client)  # no daemon: the client sees the connection refused-ish EOF
                continue
            with self._lock:
                if self._stopped:
                    _shut(daemon)
                    _shut(client)
                    return
                self._pairs.append((client, daemon))
                self.accepted += 1
            self._spawn(self._pump, client, daemon, None)
            self._spawn(self._pump, daemon, client, self._flowing)

    def _pump(self, src: socket.socket, dst: socket.socket, gate: threading.Event | None) -> None:
        try:
            while True:
                if gate is not None:
                    while not gate.wait(0.05):
                        if self._stopped:
                            return
                data = src.recv(_CHUNK)
                if not data:
                    return
                dst.sendall(data)
        except OSError:
            return
        finally:
            _shut(src)
            _shut(dst)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
