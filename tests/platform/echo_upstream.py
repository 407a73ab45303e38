"""A small WebSocket upstream for the Windows smoke test (runs natively on Linux).

It listens on 127.0.0.1 (port 0: the kernel picks), writes the port to PORT_FILE once it
listens, echoes every message back as ``echo:<message>``, appends every message it received
to RECEIVED_FILE (one per line), and exits by itself after LIFETIME seconds.

Usage: echo_upstream.py PORT_FILE RECEIVED_FILE LIFETIME
"""

import asyncio
import os
import sys

import websockets

# A received message longer than this is cut before it is written to RECEIVED_FILE.
MAX_LOGGED = 4096


async def main(port_file: str, received_file: str, lifetime: float) -> None:
    received = open(received_file, "a", encoding="utf-8")

    async def handler(ws, _path=None):
        async for message in ws:
            text = message if isinstance(message, str) else message.hex()
            received.write(text[:MAX_LOGGED].replace("\n", "\\n") + "\n")
            received.flush()
            await ws.send("echo:" + text)

    async with websockets.serve(handler, "127.0.0.1", 0, max_size=1 << 20) as server:
        port = server.sockets[0].getsockname()[1]
        tmp = port_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"{port}\n")
        os.replace(tmp, port_file)
        await asyncio.sleep(lifetime)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
