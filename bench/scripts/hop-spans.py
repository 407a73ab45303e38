#!/usr/bin/env python3
"""Where one message's hop goes, from system calls: runs the latency case of wsmux-bench
(2 000 msg/s to 100 receivers unless told otherwise), records the system calls of wsmuxd,
then of the floor relay, with the harness, and prints for each relay

  wake: from the harness's `sendto` of a message to the relay's next `recvfrom` (the relay
        waking up for it);
  span: from that `recvfrom` to the end of its last `writev` to a client;
  in writev / between: the part of the span inside the `writev` calls, and the rest (the
        relay's own work per client);
  drain: from the end of the relay's last `writev` of a message to the harness's receiving
        thread's `recvfrom` that reads the last of its copies (the receivers' side).

Needs `perf` with access to syscall tracepoints (root) and a release build:
    cargo build --release -p wsmuxd -p wsmux-bench
    sudo python3 bench/scripts/hop-spans.py [--rate 2000] [--receivers 100]
"""
import argparse
import bisect
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter

EVENTS = ["syscalls:sys_enter_writev", "syscalls:sys_exit_writev",
          "syscalls:sys_enter_recvfrom", "syscalls:sys_enter_sendto"]
LINE = re.compile(r"\s*(\S+)\s+(\d+)/(\d+)\s+([\d.]+):\s+syscalls:(\S+):\s*(.*)")


def pgrep(*args):
    out = subprocess.run(["pgrep", *args], capture_output=True, text=True).stdout.split()
    return [p for p in out if p != str(os.getpid())]


def wait_for(args, deadline):
    while time.time() < deadline:
        found = pgrep(*args)
        if found:
            return found[0]
        time.sleep(0.1)
    sys.exit(f"no process matching {' '.join(args)} appeared")


def record(pids, out, seconds):
    # Attached to running processes, perf stops cleanly on SIGINT.
    rec = subprocess.run(["timeout", "-s", "INT", str(seconds), "perf", "record", "-q",
                          "-o", out, "-p", ",".join(pids),
                          *sum((["-e", e] for e in EVENTS), [])],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if not os.path.exists(out):
        sys.exit(f"perf record failed: {rec.stderr.strip()}")
    text = subprocess.run(["perf", "script", "-i", out, "-F", "comm,pid,tid,time,event,trace"],
                          capture_output=True, text=True).stdout
    events = []
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            comm, pid, tid, t, name, rest = m.groups()
            fd = re.search(r"fd: (\S+?),", rest)
            events.append((float(t), pid, tid, name, fd.group(1) if fd else None, comm))
    return events


def q(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def analyse(name, relay, events, receivers):
    mine = [e for e in events if e[1] == relay]
    reads = Counter(e[4] for e in mine if e[3] == "sys_enter_recvfrom")
    if not reads:
        return f"{name}: no reads recorded"
    upstream = reads.most_common(1)[0][0]
    bursts, cur = [], None
    for t, _, _, ev, fd, _ in mine:
        if ev == "sys_enter_recvfrom" and fd == upstream:
            if cur and cur["n"]:
                bursts.append(cur)
            cur = {"read": t, "n": 0, "end": t, "inside": 0.0, "enter": None}
        elif cur is not None and ev == "sys_enter_writev":
            cur["enter"] = t
        elif cur is not None and ev == "sys_exit_writev" and cur["enter"] is not None:
            cur["n"] += 1
            cur["inside"] += t - cur["enter"]
            cur["end"] = t
            cur["enter"] = None
    full = [b for b in bursts if b["n"] >= receivers * 0.9]
    if not full:
        return f"{name}: no message was written to {receivers} clients in the window"
    # The harness thread that sends the upstream messages, and the socket to this relay.
    sends = [e for e in events if e[1] != relay and e[3] == "sys_enter_sendto"]
    pacer = Counter(e[2] for e in sends).most_common(1)[0][0] if sends else None
    read_times = sorted(e[0] for e in mine if e[3] == "sys_enter_recvfrom" and e[4] == upstream)
    wake = None
    for fd in {e[4] for e in sends if e[2] == pacer}:
        gaps = []
        for t in (e[0] for e in sends if e[2] == pacer and e[4] == fd):
            i = bisect.bisect_right(read_times, t)
            if i < len(read_times):
                gaps.append(read_times[i] - t)
        if gaps and (wake is None or statistics.median(gaps) < statistics.median(wake)):
            wake = gaps
    # The receivers' thread reads one copy per client per message.
    got = sorted(e[0] for e in events
                 if e[5] == "through" and e[3] == "sys_enter_recvfrom")
    drain = []
    for b in full:
        i = bisect.bisect_right(got, b["read"])
        if i + receivers - 1 < len(got):
            drain.append(max(0.0, got[i + receivers - 1] - b["end"]))
    span = [b["end"] - b["read"] for b in full]
    inside = [b["inside"] for b in full]
    between = [s - i for s, i in zip(span, inside)]
    us = 1e6
    woke = f"{q(wake, .5) * us:6.1f} µs" if wake else "     -"
    return (f"{name:6} messages {len(full):5}  wake p50 {woke}  "
            f"span p50 {q(span, .5) * us:6.1f} p99 {q(span, .99) * us:7.1f} µs  "
            f"in writev p50 {q(inside, .5) * us:6.1f} µs ({q(inside, .5) * us / receivers:.2f} per client)  "
            f"between p50 {q(between, .5) * us:6.1f} µs ({q(between, .5) * us / receivers:.2f} per client)  "
            f"drain p50 {q(drain, .5) * us:6.1f} µs")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--receivers", type=int, default=100)
    ap.add_argument("--bench", default="target/release/wsmux-bench")
    args = ap.parse_args()
    duration = 8
    bench = subprocess.Popen(
        [args.bench, "latency", "--no-websocat", "--rates", str(args.rate),
         "--latency-subscribers", str(args.receivers), "--rounds", "1",
         "--duration", str(duration)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    with tempfile.TemporaryDirectory() as tmp:
        # Record both rounds (wsmux first, then the floor), 3 s into each, then analyse.
        daemon = wait_for(["-x", "wsmuxd"], deadline)
        time.sleep(3)
        d = record([daemon, str(bench.pid)], f"{tmp}/d.data", 2)
        floor = wait_for(["-f", "__floor-relay"], deadline)
        time.sleep(3)
        f = record([floor, str(bench.pid)], f"{tmp}/f.data", 2)
        lines = [analyse("wsmux", daemon, d, args.receivers),
                 analyse("floor", floor, f, args.receivers)]
    out, _ = bench.communicate(timeout=120)
    for line in out.splitlines():
        if re.match(r"(wsmux|floor)\s+1\s", line):
            print(line)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
