"""A small WebSocket server (RFC 6455) on 127.0.0.1, for the daemon's upstream in the tests.

Standard library only: one thread accepts, one thread per connection reads. It records every
text message it receives, answers pings, and publishes text messages to every open
connection. Unmasked client frames, oversized frames and bad handshakes end the connection.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading
import time
from typing import Callable

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HANDSHAKE = 16 * 1024
_MAX_MESSAGE = 1024 * 1024

_CONT, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def _frame(opcode: int, payload: bytes) -> bytes:
    """A final, unmasked frame (servers do not mask)."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + struct.pack(">H", n)
    else:
        head += bytes([127]) + struct.pack(">Q", n)
    return head + payload


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.write_lock = threading.Lock()
        self.buf = b""

    def send(self, opcode: int, payload: bytes) -> None:
        with self.write_lock:
            self.sock.sendall(_frame(opcode, payload))

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


class WsServer:
    """``with WsServer() as up:`` listens at ``up.url``; ``up.received`` lists the text
    messages that arrived, in order; ``up.publish(text)`` sends to every connection.

    ``on_text(reply, text)`` is called on the connection's thread for every text message,
    after it is recorded; ``reply(text)`` answers on that connection only.
    """

    def __init__(self, on_text: Callable[[Callable[[str], None], str], None] | None = None) -> None:
        self.on_text = on_text
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/"
        self._lock = threading.Condition()
        self._conns: list[_Conn] = []
        self._received: list[str] = []
        self._stopped = False
        self._threads: list[threading.Thread] = []
        accept = threading.Thread(target=self._accept_loop, name="ws-accept", daemon=True)
        accept.start()
        self._threads.append(accept)

    def __enter__(self) -> WsServer:  # noqa: PYI034
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def received(self) -> list[str]:
        with self._lock:
            return list(self._received)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float) -> list[str]:
        """Waits until ``predicate(received)`` holds; returns ``received``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(list(self._received)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the upstream never saw the expected: {self._received}")
                self._lock.wait(left)
            return list(self._received)

    def wait_connected(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._conns:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the daemon never connected to the upstream")
                self._lock.wait(left)

    def publish(self, text: str) -> None:
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.send(_TEXT, text.encode())
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            self._stopped = True
            conns = list(self._conns)
        try:
            self._listener.close()
        except OSError:
            pass
        for conn in conns:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    # -- internals -------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        # Closing a socket does not wake a thread blocked in accept(): poll instead.
        self._listener.settimeout(0.1)
        while True:
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                with self._lock:
                    if self._stopped:
                        return
                continue
            except OSError:
                return
            sock.settimeout(None)
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            with self._lock:
                if self._stopped:
                    sock.close()
                    return
                self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        conn = _Conn(sock)
        try:
            sock.settimeout(10)
            if not self._handshake(conn):
                return
            sock.settimeout(None)
            with self._lock:
                self._conns.append(conn)
                self._lock.notify_all()
            self._read_loop(conn)
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)
            sock.close()

    def _handshake(self, conn: _Conn) -> bool:
        while b"\r\n\r\n" not in conn.buf:
            if len(conn.buf) > _MAX_HANDSHAKE:
                return False
            chunk = conn.sock.recv(4096)
            if not chunk:
                return False
            conn.buf += chunk
        head, conn.buf = conn.buf.split(b"\r\n\r\n", 1)
        key = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        if key is None:
            conn.sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return False
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        conn.sock.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        return True

    def _read_loop(self, conn: _Conn) -> None:
        message = b""
        message_op = None
        while True:
            b0, b1 = conn.read_exact(2)
            fin, opcode = b0 & 0x80, b0 & 0x0F
            if not b1 & 0x80:
                raise ValueError("client frames must be masked")
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack(">H", conn.read_exact(2))
            elif n == 127:
                (n,) = struct.unpack(">Q", conn.read_exact(8))
            if n > _MAX_MESSAGE:
                raise ValueError("frame too large")
            mask = conn.read_exact(4)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(conn.read_exact(n)))
            if opcode == _PING:
                conn.send(_PONG, payload)
            elif opcode == _CLOSE:
                conn.send(_CLOSE, payload[:2])
                return
            elif opcode in (_TEXT, _BINARY, _CONT):
                if opcode != _CONT:
                    message, message_op = b"", opcode
                message += payload
                if len(message) > _MAX_MESSAGE:
                    raise ValueError("message too large")
                if fin and message_op == _TEXT:
                    self._record(conn, message.decode())

    def _record(self, conn: _Conn, text: str) -> None:
        with self._lock:
            self._received.append(text)
            self._lock.notify_all()
        if self.on_text is not None:
            self.on_text(lambda answer: conn.send(_TEXT, answer.encode()), text)
