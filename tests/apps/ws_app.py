"""An app with a plain WebSocket client (the `websockets` package), driven by a test.

    python3 ws_app.py URL [--unix PATH] [--header NAME:VALUE]... [--origin ORIGIN] [--brief 1]

Reports what happens as JSON lines on stdout:
    {"event":"open"}
    {"event":"refused","status":503,"retry_after":"2","body":"..."}
    {"event":"message","binary":false,"data":"..."}   (binary: "data_b64")
                      (with --brief: "len" and the first 16 characters as "head")
    {"event":"close","code":1012,"reason":"..."}
    {"event":"error","message":"..."}
    {"event":"paused"}  {"event":"resumed"}             (when a command took effect)
and takes commands as JSON lines on stdin:
    {"send":"text"}  {"send_b64":"AAE="}  {"pause":true}  {"resume":true}  {"close":true}
While paused it reads nothing, so the library stops reading the socket once its queue is
full. Exits once the connection is closed, or when stdin closes.
"""

import base64
import json
import sys
import threading

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect, unix_connect

out_lock = threading.Lock()


def report(event, **fields):
    with out_lock:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()


def main():
    args = sys.argv[1:]
    url, unix, headers, origin, brief = args[0], None, [], None, False
    i = 1
    while i < len(args):
        if args[i] == "--unix":
            unix = args[i + 1]
        elif args[i] == "--header":
            name, value = args[i + 1].split(":", 1)
            headers.append((name, value))
        elif args[i] == "--origin":
            origin = args[i + 1]
        elif args[i] == "--brief":
            brief = True
        i += 2
    options = dict(
        additional_headers=headers,
        origin=origin,
        open_timeout=5,
        close_timeout=2,
        max_size=None,
        max_queue=4,
    )
    try:
        if unix:
            ws = unix_connect(unix, url, **options)
        else:
            ws = connect(url, proxy=None, **options)
    except InvalidStatus as e:
        response = e.response
        report(
            "refused",
            status=response.status_code,
            retry_after=response.headers.get("Retry-After"),
            body=response.body.decode("utf-8", "replace"),
        )
        return
    except Exception as e:  # a test reads the reason
        report("error", message=repr(e))
        return
    with ws:
        serve(ws, brief)


def serve(ws, brief):
    """Reports what arrives (in a thread) and runs the commands from stdin."""
    report("open")
    running = threading.Event()
    running.set()

    def read():
        try:
            while True:
                running.wait()
                message = ws.recv()
                if brief:
                    head = message[:16]
                    if isinstance(head, bytes):
                        head = head.decode("latin-1")
                    report("message", binary=isinstance(message, bytes), len=len(message), head=head)
                elif isinstance(message, bytes):
                    report("message", binary=True, data_b64=base64.b64encode(message).decode())
                else:
                    report("message", binary=False, data=message)
        except ConnectionClosed as e:
            frame = e.rcvd
            report(
                "close",
                code=frame.code if frame else 1006,
                reason=frame.reason if frame else "",
            )
        except Exception as e:
            report("error", message=repr(e))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if "send" in command:
                ws.send(command["send"])
            elif "send_b64" in command:
                ws.send(base64.b64decode(command["send_b64"]))
            elif "pause" in command:
                running.clear()
                report("paused")
            elif "resume" in command:
                running.set()
                report("resumed")
            elif "close" in command:
                ws.close()
                break
        except ConnectionClosed:
            pass  # the reader reports the close
    reader.join(timeout=5)


if __name__ == "__main__":
    main()
