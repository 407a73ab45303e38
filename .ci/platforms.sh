#!/usr/bin/env bash
# Windows and macOS on a Debian 12 machine, as root:
#   - clippy for x86_64-pc-windows-gnu (mingw-w64) and aarch64-apple-darwin (clang, no SDK),
#   - a debug build of wsmuxd.exe and wsmux.exe,
#   - an end-to-end smoke of those binaries under Wine: the daemon on a named pipe, a real
#     WebSocket upstream on the Linux side (tests/platform/echo_upstream.py), and the CLI's
#     status, subscribe and send; the pipe's security descriptor; a graceful Ctrl-C.
# It installs what it needs itself (apt packages, rustup targets). Every wait has a deadline,
# and everything it starts is stopped on exit; on failure it prints the daemon's log.
#
# Usage: .ci/platforms.sh [--clean | --smoke-only]
#   --clean       first remove this script's outputs (the two targets' build directories under
#                 the cargo target dir, and <target dir>/platforms: Wine prefix, shim, logs).
#   --smoke-only  skip installing, clippy and building: run the Wine smoke again on the
#                 binaries a previous run left in <target dir>/platforms/bin.
# Honours CARGO_TARGET_DIR (default: ./target, shared with the rest of CI).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

WIN=x86_64-pc-windows-gnu
MAC=aarch64-apple-darwin
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$TARGET_DIR/platforms
APT_PACKAGES=(gcc-mingw-w64-x86-64 wine64 clang python3-websockets)
# Debian's wine64 package keeps its launcher here (the `wine` wrapper package is not needed).
WINE64=/usr/lib/wine/wine64
WINESERVER=/usr/lib/wine/wineserver
# Debian's Python, which python3-websockets installs into (PATH may have another one first).
PYTHON=/usr/bin/python3
# Upper bound for any single wait below, in seconds.
WAIT=30

step() { echo "== $*"; }
started=$SECONDS

# Installs the tools, runs clippy for both targets and builds the Windows binaries and the
# test-rig helpers into $BIN.
prepare() {
    step "install: apt packages (${APT_PACKAGES[*]})"
    local p missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
            >/dev/null
    fi
    x86_64-w64-mingw32-gcc --version | head -1
    "$WINE64" --version
    clang --version | head -1

    step "install: rustup targets $WIN $MAC"
    rustup target add "$WIN" "$MAC"

    # The test harness (wsmux-tests) and the benchmark (wsmux-bench) drive Unix sockets, signals
    # and /proc: they are Linux tools and are not built for the other targets.
    PRODUCT=(--workspace --exclude wsmux-tests --exclude wsmux-bench)

    step "clippy $WIN (product crates, all targets, -D warnings)"
    cargo clippy "${PRODUCT[@]}" --all-targets --target "$WIN" -- -D warnings

    # ring compiles C and assembly for the target. Without a macOS SDK, Debian's clang does it
    # with no system headers at all (-nostdlibinc and ring's RING_CORE_NOSTDLIBINC, as ring does
    # for wasm) and a stand-in TargetConditionals.h. clippy never links, so no linker is needed.
    step "clippy $MAC (whole workspace, all targets, -D warnings)"
    CC_aarch64_apple_darwin=clang \
        CFLAGS_aarch64_apple_darwin="-nostdlibinc -DRING_CORE_NOSTDLIBINC=1 -I$ROOT/tests/platform/macos-include" \
        cargo clippy --workspace --all-targets --target "$MAC" -- -D warnings

    # Line tables only: backtraces keep file and line, the binaries and the link stay small.
    step "build $WIN: wsmuxd.exe, wsmux.exe (debug)"
    CARGO_PROFILE_DEV_DEBUG=line-tables-only cargo build -p wsmuxd -p wsmux-client --target "$WIN"

    mkdir -p "$BIN"
    cp "$TARGET_DIR/$WIN/debug/wsmuxd.exe" "$TARGET_DIR/$WIN/debug/wsmux.exe" "$BIN/"

    step "build test-rig helpers: bcryptprimitives.dll (Wine 8 shim), pipe_sddl.exe"
    # Rust's std imports ProcessPrng from bcryptprimitives.dll, which Wine 8 lacks: without this
    # shim next to the .exe every Rust program dies at load time (c0000135) without a word.
    x86_64-w64-mingw32-gcc -shared -O2 -Wall -Werror -o "$BIN/bcryptprimitives.dll" \
        tests/platform/processprng.c tests/platform/bcryptprimitives.def -ladvapi32
    x86_64-w64-mingw32-gcc -municode -O2 -Wall -Werror -o "$BIN/pipe_sddl.exe" \
        tests/platform/pipe_sddl.c -ladvapi32
}

BIN=$OUT/bin
mode=${1:-}
case $mode in
"") prepare ;;
--clean)
    step "clean: $TARGET_DIR/{$WIN,$MAC,platforms}"
    rm -rf "${TARGET_DIR:?}/$WIN" "${TARGET_DIR:?}/$MAC" "$OUT"
    prepare
    ;;
--smoke-only)
    [[ -f $BIN/wsmuxd.exe ]] || { echo "no $BIN/wsmuxd.exe: run without --smoke-only first" >&2; exit 2; }
    ;;
*)
    echo "usage: $0 [--clean | --smoke-only]" >&2
    exit 2
    ;;
esac

SMOKE=$OUT/smoke
rm -rf "$SMOKE"
mkdir -p "$SMOKE"
# No Mono or Gecko (their installers would ask for a display); no colours in the logs.
export WINEPREFIX=$OUT/wineprefix WINEARCH=win64 WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml=" \
    NO_COLOR=1
DAEMON_LOG=$SMOKE/wsmuxd.log
daemon_pid=""
upstream_pid=""

cleanup() {
    local rc=$?
    if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -KILL "$daemon_pid" 2>/dev/null || true
    fi
    if [[ -n $upstream_pid ]] && kill -0 "$upstream_pid" 2>/dev/null; then
        kill "$upstream_pid" 2>/dev/null || true
        wait "$upstream_pid" 2>/dev/null || true
    fi
    # Ends whatever is left in this script's own Wine prefix (its wineserver included).
    if [[ -d $WINEPREFIX ]]; then
        timeout 20 "$WINESERVER" -k 2>/dev/null || true
    fi
    if ((rc != 0)); then
        echo "!! platforms: failed (exit $rc)" >&2
        if [[ -f $DAEMON_LOG ]]; then
            echo "-- last 200 lines of $DAEMON_LOG" >&2
            tail -n 200 "$DAEMON_LOG" >&2
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT

fail() {
    echo "!! $*" >&2
    exit 1
}

# Runs a Windows program with a deadline: win SECONDS PROGRAM.exe ARGS...
win() {
    local secs=$1 exe=$2
    shift 2
    timeout -k 5 "$secs" "$WINE64" "$BIN/$exe" "$@"
}

# The Windows view of a Linux path (Wine maps / to Z:).
winpath() { printf 'Z:%s' "${1//\//\\}"; }

# Waits up to WAIT seconds for a command to succeed: until_ok DESCRIPTION COMMAND...
until_ok() {
    local what=$1 deadline=$((SECONDS + WAIT))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || fail "timed out after ${WAIT}s waiting for $what"
        sleep 0.5
    done
}

if [[ ! -f $WINEPREFIX/system.reg ]]; then
    step "create Wine prefix $WINEPREFIX"
    # Only wine64 is installed, so Wine's note that the 32-bit rundll32 is missing is expected.
    timeout 180 "$WINE64" wineboot --init >"$OUT/wineboot.log" 2>&1 || {
        cat "$OUT/wineboot.log" >&2
        fail "wineboot failed"
    }
fi

if [[ $mode != --smoke-only ]]; then
    # The tests that need no Unix socket: the wire format and its golden vectors, config
    # unit tests and file references, the daemon's sans-IO cores, and the CLI's own tests
    # (which run wsmux.exe). Wine finds the shim DLL through WINEPATH.
    step "test $WIN under Wine (proto, config, wsmuxd unit tests, wsmux CLI)"
    export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="timeout -k 5 300 $WINE64"
    export WINEPATH
    WINEPATH=$(winpath "$BIN")
    CARGO_PROFILE_DEV_DEBUG=line-tables-only cargo test --target "$WIN" \
        -p wsmux-proto -p wsmux-client --tests
    CARGO_PROFILE_DEV_DEBUG=line-tables-only cargo test --target "$WIN" \
        -p wsmux-config --lib --test portable_paths
    CARGO_PROFILE_DEV_DEBUG=line-tables-only cargo test --target "$WIN" -p wsmuxd --lib
    unset WINEPATH CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER
fi

step "smoke $WIN under Wine"
win "$WAIT" wsmuxd.exe --version

echo "upstream: tests/platform/echo_upstream.py on 127.0.0.1"
"$PYTHON" tests/platform/echo_upstream.py "$SMOKE/port" "$SMOKE/received" 300 \
    >"$SMOKE/upstream.log" 2>&1 &
upstream_pid=$!
until_ok "the upstream's port" test -s "$SMOKE/port"
port=$(<"$SMOKE/port")

pipe="\\\\.\\pipe\\wsmux-smoke-$$"
cat >"$SMOKE/wsmux.toml" <<EOF
socket = '$pipe'

[log]
level = "debug"

[endpoints.echo]
url = "ws://127.0.0.1:$port/"
EOF
config=$(winpath "$SMOKE/wsmux.toml")

echo "check: wsmuxd.exe --check"
win "$WAIT" wsmuxd.exe --check --config "$config" >"$SMOKE/check.out" 2>&1 ||
    { cat "$SMOKE/check.out" >&2; fail "wsmuxd --check rejected the smoke configuration"; }

echo "daemon: wsmuxd.exe on $pipe"
"$WINE64" "$BIN/wsmuxd.exe" --config "$config" >"$DAEMON_LOG" 2>&1 &
daemon_pid=$!

daemon_alive() { kill -0 "$daemon_pid" 2>/dev/null || fail "wsmuxd.exe exited early"; }
answers() { daemon_alive && win 20 wsmux.exe --socket "$pipe" status >/dev/null 2>&1; }
until_ok "the daemon to answer on $pipe" answers
win "$WAIT" wsmux.exe --socket "$pipe" wait echo --state open --timeout 20s ||
    fail "endpoint echo did not open"

echo "check: status"
win "$WAIT" wsmux.exe --socket "$pipe" status | tee "$SMOKE/status.out"
grep -Eq '^echo +open ' "$SMOKE/status.out" || fail "status does not show echo open"
win "$WAIT" wsmux.exe --socket "$pipe" status --json >"$SMOKE/status.json"
"$PYTHON" - "$SMOKE/status.json" "$port" <<'EOF' || fail "status --json is not what was expected"
import json, sys
endpoints = json.load(open(sys.argv[1]))
[e] = endpoints
assert e["name"] == "echo" and e["state"] == "open", e
assert e["url"] == f"ws://127.0.0.1:{sys.argv[2]}/", e
EOF

echo "check: the pipe's security descriptor gives access to this account only"
win "$WAIT" pipe_sddl.exe "$pipe" | tr -d '\r' | tee "$SMOKE/sddl.out"
sid=$(sed -n 's/^user=//p' "$SMOKE/sddl.out")
sddl=$(sed -n 's/^sddl=//p' "$SMOKE/sddl.out")
[[ $sid == S-1-* ]] || fail "no user SID from pipe_sddl.exe"
# Windows may show the generic right (GA) mapped to the file-specific one (FA).
want="^O:${sid}D:P\\(A;;(GA|FA);;;${sid}\\)\$"
[[ $sddl =~ $want ]] ||
    fail "pipe security descriptor is '$sddl', expected O:${sid}D:P(A;;GA;;;${sid})"

echo "check: subscribe, send, and the upstream's echo comes back"
token="smoke-$$-$RANDOM"
win 60 wsmux.exe --socket "$pipe" subscribe echo --count 1 >"$SMOKE/subscribe.out" 2>&1 &
sub_pid=$!
# The subscription is in place once its first state event has been printed.
until_ok "the subscriber's state event" grep -q '"type":"state"' "$SMOKE/subscribe.out"
win "$WAIT" wsmux.exe --socket "$pipe" send echo "$token" || fail "send failed"
sub_deadline=$((SECONDS + WAIT))
while kill -0 "$sub_pid" 2>/dev/null; do
    ((SECONDS < sub_deadline)) || { kill "$sub_pid" 2>/dev/null || true; break; }
    sleep 0.5
done
wait "$sub_pid" || { cat "$SMOKE/subscribe.out" >&2; fail "subscribe did not end after one message"; }
cat "$SMOKE/subscribe.out"
grep -q "\"data\":\"echo:$token\"" "$SMOKE/subscribe.out" ||
    fail "the echo of '$token' did not come back through subscribe"
grep -qx "$token" "$SMOKE/received" || fail "the upstream did not receive '$token'"

echo "check: Ctrl-C shuts the daemon down gracefully; a subscriber is told"
# --no-reconnect: the subscriber exits (code 6) instead of waiting for a daemon to come back.
win 60 wsmux.exe --socket "$pipe" subscribe echo --no-reconnect >"$SMOKE/closing.out" 2>&1 &
closing_pid=$!
until_ok "the second subscriber's state event" grep -q '"type":"state"' "$SMOKE/closing.out"
kill -INT "$daemon_pid"
stop_deadline=$((SECONDS + WAIT))
while kill -0 "$daemon_pid" 2>/dev/null; do
    ((SECONDS < stop_deadline)) || fail "wsmuxd.exe still runs ${WAIT}s after Ctrl-C"
    sleep 0.5
done
daemon_rc=0
wait "$daemon_pid" || daemon_rc=$?
daemon_pid=""
((daemon_rc == 0)) || fail "wsmuxd.exe exited with $daemon_rc after Ctrl-C"
grep -q "Ctrl-C received" "$DAEMON_LOG" || fail "the daemon did not log the Ctrl-C"
grep -q "stopped" "$DAEMON_LOG" || fail "the daemon did not log its clean stop"
closing_rc=0
wait "$closing_pid" || closing_rc=$?
cat "$SMOKE/closing.out"
((closing_rc != 124)) || fail "the subscriber did not end when the daemon stopped"
((closing_rc == 6)) || fail "the subscriber exited with $closing_rc, not 6 (connection lost)"
grep -q '"state":"closed"' "$SMOKE/closing.out" || fail "the subscriber was not told 'closed'"

step "platforms: all checks passed in $((SECONDS - started))s"
