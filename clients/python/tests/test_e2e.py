"""End to end against a real `wsmuxd --demo`: its built-in upstream sends a tick every 500 ms
and echoes text as {"type":"echo","data":...} (binary unchanged)."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from conftest import Daemon

import wsmux

TIMEOUT = 10.0


def _is_tick(event: wsmux.Event) -> bool:
    return (
        isinstance(event, wsmux.Message)
        and not event.is_binary
        and json.loads(event.text).get("type") == "tick"
    )


def test_blocking_client(daemon: Daemon) -> None:
    # reconnect=False: the client ends with the connection (checked at the end).
    client = wsmux.Client.connect(
        daemon.socket, client_name="pytest", timeout=TIMEOUT, reconnect=False
    )
    assert client.welcome["version"] == wsmux.PROTOCOL_VERSION
    assert client.endpoints == ["demo"]

    client.subscribe("demo", timeout=TIMEOUT)
    # The first event after subscribe is the endpoint's current state.
    first = client.next_event(TIMEOUT)
    assert isinstance(first, wsmux.State) and first.endpoint == "demo"
    if not first.is_open:
        client.wait_for_state("demo", "open", timeout=TIMEOUT)

    ticks: list[wsmux.Message] = []
    for event in client.events(timeout=TIMEOUT):
        if _is_tick(event):
            assert isinstance(event, wsmux.Message)
            ticks.append(event)
            if len(ticks) == 2:
                break
    assert ticks[1].seq == ticks[0].seq + 1 and ticks[1].missed == 0

    ack = client.send("demo", "hello from python ✓", timeout=TIMEOUT)
    assert ack["type"] == "ack"
    client.send("demo", b"\x00\x01\xff", timeout=TIMEOUT)
    echo_text = echo_bin = None
    for event in client.events(timeout=TIMEOUT):
        if isinstance(event, wsmux.Message):
            if event.is_binary:
                echo_bin = event.data
            elif json.loads(event.text).get("type") == "echo":
                echo_text = json.loads(event.text)
        if echo_text is not None and echo_bin is not None:
            break
    assert echo_text == {"type": "echo", "data": "hello from python ✓"}
    assert echo_bin == b"\x00\x01\xff"

    with pytest.raises(wsmux.DaemonError) as err:
        client.send("nope", "x", timeout=TIMEOUT)
    assert err.value.code == "unknown_endpoint" and not err.value.fatal

    (status,) = client.status(timeout=TIMEOUT)
    assert status["name"] == "demo" and status["state"] == "open"
    assert status["subscribers"] == 1 and status["messages_out"] >= 2
    assert client.ping(timeout=TIMEOUT) >= 0

    assert daemon.terminate() == 0
    states = [e for e in client.events(timeout=TIMEOUT) if isinstance(e, wsmux.State)]
    assert states and states[-1].state == "closed"
    assert states[-1].reason == "daemon shutting down"
    assert client.wait_closed(TIMEOUT) and client.closed
    with pytest.raises(wsmux.ConnectionClosed):
        client.ping(timeout=TIMEOUT)
    client.close()


def test_blocking_callbacks_and_default_socket(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSMUX_SOCKET", daemon.socket)
    with wsmux.Client.connect(timeout=TIMEOUT) as client:
        got: list[wsmux.Event] = []
        done = threading.Event()
        sent = []

        def on_event(event: wsmux.Event) -> None:
            got.append(event)
            if isinstance(event, wsmux.State) and event.is_open and not sent:
                # Calling the client from a callback works: callbacks run on their own thread.
                sent.append(client.send("demo", "from a callback", timeout=TIMEOUT))
            if isinstance(event, wsmux.Message) and '"echo"' in event.text:
                done.set()

        client.subscribe("demo", on_event, timeout=TIMEOUT)
        assert done.wait(TIMEOUT), got
        assert isinstance(got[0], wsmux.State)
        client.unsubscribe("demo", timeout=TIMEOUT)
        count = len(got)
        client.ping(timeout=TIMEOUT)
        assert len(got) == count  # nothing about demo after the unsubscribe ack


def test_connect_to_a_missing_socket_fails_clearly(tmp_path) -> None:
    with pytest.raises(wsmux.DaemonUnavailable) as err:
        wsmux.Client.connect(str(tmp_path / "none.sock"), timeout=TIMEOUT)
    assert "none.sock" in str(err.value)


def test_async_client(daemon: Daemon) -> None:
    async def main() -> None:
        client = await wsmux.AsyncClient.connect(daemon.socket, timeout=TIMEOUT, reconnect=False)
        assert client.endpoints == ["demo"]
        await client.subscribe("demo", timeout=TIMEOUT)
        await client.wait_for_state("demo", "open", timeout=TIMEOUT)

        ticks = 0
        async for event in client.events(timeout=TIMEOUT):
            if _is_tick(event):
                ticks += 1
                if ticks == 2:
                    break

        await client.send("demo", "hello async", timeout=TIMEOUT)
        async for event in client.events(timeout=TIMEOUT):
            if isinstance(event, wsmux.Message) and json.loads(event.text).get("type") == "echo":
                assert json.loads(event.text)["data"] == "hello async"
                break

        with pytest.raises(wsmux.DaemonError) as err:
            await client.unsubscribe("nope", timeout=TIMEOUT)
        assert err.value.code == "unknown_endpoint"

        (status,) = await client.status(timeout=TIMEOUT)
        assert status["state"] == "open" and status["subscribers"] == 1
        assert await client.ping(timeout=TIMEOUT) >= 0

        # A coroutine callback for a second subscription on another connection.
        other = await wsmux.AsyncClient.connect(daemon.socket, timeout=TIMEOUT)
        seen: asyncio.Queue[wsmux.Event] = asyncio.Queue()

        async def on_event(event: wsmux.Event) -> None:
            await seen.put(event)

        await other.subscribe("demo", on_event, timeout=TIMEOUT)
        first = await asyncio.wait_for(seen.get(), TIMEOUT)
        assert isinstance(first, wsmux.State) and first.is_open
        await other.close()

        await asyncio.get_running_loop().run_in_executor(None, daemon.terminate)
        last_state = None
        async for event in client.events(timeout=TIMEOUT):
            if isinstance(event, wsmux.State):
                last_state = event
        assert last_state is not None and last_state.state == "closed"
        assert client.closed
        with pytest.raises(wsmux.ConnectionClosed):
            await client.ping(timeout=TIMEOUT)
        await client.close()

    asyncio.run(main())
