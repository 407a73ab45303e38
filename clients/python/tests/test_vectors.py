"""The golden vectors of proto/vectors: encoding the JSON form gives the file's bytes, and
decoding the file gives the JSON form back (str stays str, bin stays bytes)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import VECTORS_DIR, from_json, load_vectors

import wsmux
from wsmux.protocol import FrameDecoder
from wsmux.session import Session

CASES = load_vectors()


def test_vectors_cover_both_directions() -> None:
    directions = {case["direction"] for case in CASES}
    assert directions == {"client", "server"}
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_encode_matches_file(case: dict[str, Any]) -> None:
    expected = (VECTORS_DIR / case["file"]).read_bytes()
    assert wsmux.encode_frame(from_json(case["message"])) == expected


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_decode_matches_json(case: dict[str, Any]) -> None:
    frame = (VECTORS_DIR / case["file"]).read_bytes()
    decoded = wsmux.decode_frame(frame)
    expected = from_json(case["message"])
    assert decoded == expected
    assert list(decoded) == list(expected)  # same keys; the daemon writes `type` first
    if "data" in expected:
        assert type(decoded["data"]) is type(expected["data"])


def test_all_frames_split_into_single_bytes() -> None:
    stream = b"".join((VECTORS_DIR / case["file"]).read_bytes() for case in CASES)
    decoder = FrameDecoder()
    out = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        out.extend(decoder)
    assert out == [from_json(case["message"]) for case in CASES]
    assert decoder.buffered == 0


def test_oversized_length_is_rejected_before_the_body() -> None:
    decoder = FrameDecoder(max_frame=16)
    decoder.feed(b"\x00\x00\x00\x11")
    with pytest.raises(wsmux.ProtocolError):
        decoder.next_frame()


def test_state_event_objects_from_vectors() -> None:
    by_name = {c["name"]: from_json(c["message"]) for c in CASES}
    factory = wsmux.events.EventFactory()
    state = factory.make(by_name["state_full"])
    assert isinstance(state, wsmux.State)
    assert (state.endpoint, state.state, state.attempt, state.retry_in_ms) == (
        "feed",
        "backoff",
        3,
        1500,
    )
    assert state.reason == "HTTP 503 Service Unavailable" and not state.is_open
    minimal = factory.make(by_name["state_minimal"])
    assert isinstance(minimal, wsmux.State) and minimal.is_open and minimal.attempt is None
    first = factory.make(by_name["message_text"])
    assert isinstance(first, wsmux.Message) and first.data == '{"px":1}' and first.missed == 0
    gap = factory.make(by_name["message_binary"])  # seq 42 -> 1043
    assert isinstance(gap, wsmux.Message) and gap.is_binary and gap.missed == 1000
    lagged = factory.make(by_name["error_no_id"])
    assert isinstance(lagged, wsmux.ErrorEvent) and lagged.code == "lagged"
    lagged_frame = factory.make(by_name["lagged"])
    assert isinstance(lagged_frame, wsmux.Lagged)
    assert (lagged_frame.endpoint, lagged_frame.dropped) == ("feed", 3)
    other = factory.make({"type": "something_new", "endpoint": "feed"})
    assert isinstance(other, wsmux.OtherEvent) and other.endpoint == "feed"


def test_default_socket_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSMUX_SOCKET", "/run/x.sock")
    assert wsmux.default_socket_path() == "/run/x.sock"
    monkeypatch.setenv("WSMUX_SOCKET", "")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert wsmux.default_socket_path() == "/run/user/1000/wsmux/wsmuxd.sock"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative")
    monkeypatch.setenv("TMPDIR", "/var/tmp")
    import os

    assert wsmux.default_socket_path() == f"/var/tmp/wsmux-{os.geteuid()}/wsmuxd.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.delenv("TMPDIR")
    assert wsmux.default_socket_path() == f"/tmp/wsmux-{os.geteuid()}/wsmuxd.sock"


def test_the_session_writes_and_reads_the_resume_vectors() -> None:
    """What the clients write when they resume is the golden frames, byte for byte, and
    they read the epoch and the subscribe answers from the golden frames."""
    by_name = {c["name"]: c for c in CASES}

    def golden(name: str) -> bytes:
        return (VECTORS_DIR / by_name[name]["file"]).read_bytes()

    def message(name: str) -> dict[str, Any]:
        return from_json(by_name[name]["message"])  # type: ignore[no-any-return]

    session = Session()
    session.connected(message("welcome_epoch"))
    assert session.epoch == "193a1f2b4c0-5e2d9a71"
    session._next_id = 20  # the ids the vectors use
    waiter = object()
    session.subscribe(waiter, "feed", since=1042, epoch=session.epoch)
    assert session.take_writes() == [golden("subscribe_since")]
    session.receive(message("ack_recovered"), len(golden("ack_recovered")))
    ((done, result, error),) = session.take_done()
    assert done is waiter and error is None
    assert (result.first_seq, result.recovered) == (1043, True)
    assert session.position("feed") == ("193a1f2b4c0-5e2d9a71", 1042)

    session.subscribe(object(), "feed", since=0)
    assert session.take_writes() == [golden("subscribe_since_no_epoch")]
    session.subscribe(
        object(), "binance", topics=["btcusdt@trade"], since=70000, epoch=session.epoch
    )
    assert session.take_writes() == [golden("subscribe_topics_since")]
    session.receive(message("ack_not_recovered"), 0)
    ((_, result, _),) = session.take_done()
    assert (result.endpoint, result.first_seq, result.recovered) == ("binance", 70313, False)

    status = message("status_reply_history")["endpoints"][0]
    assert (status["history_messages"], status["history_first_seq"]) == (1010, 33)
