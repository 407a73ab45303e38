"""The reconnect and resume rules of ``wsmux.session.Session``, frame by frame, without I/O:
what is written after a reconnect and in which order, the seam rule, the events and their
order, the bounds. The end-to-end tests (test_reconnect.py) run the same rules against real
daemons."""

from __future__ import annotations

from typing import Any

import pytest

import wsmux
from wsmux.session import CLOSED, CONNECTED, DISCONNECTED, Backoff, Options, Session

WELCOME = {"type": "welcome", "version": 1, "server": "t", "endpoints": [], "epoch": "e1"}


def welcome(epoch: str | None) -> dict[str, Any]:
    return {**WELCOME, "epoch": epoch}


def msg(seq: int, endpoint: str = "feed", **extra: Any) -> dict[str, Any]:
    return {"type": "message", "endpoint": endpoint, "seq": seq, "data": "x", **extra}


def ack(request_id: int, **extra: Any) -> dict[str, Any]:
    return {"type": "ack", "id": request_id, **extra}


class Peer:
    """Drives a session like a client does and records what it asks for."""

    def __init__(self, **options: Any) -> None:
        self.s = Session(Options(**options))
        self.s.connected(WELCOME)
        self.done: dict[object, tuple[Any, BaseException | None]] = {}

    def written(self) -> list[dict[str, Any]]:
        return [wsmux.decode_frame(f) for f in self.s.take_writes()]

    def events(self) -> list[Any]:
        out = []
        for event, size in self.s.take_events():
            self.s.taken(size)
            out.append(event)
        return out

    def finish(self) -> None:
        for waiter, result, error in self.s.take_done():
            self.done[waiter] = (result, error)

    def feed(self, *frames: dict[str, Any]) -> None:
        for frame in frames:
            self.s.receive(frame, 100)
        self.finish()

    def subscribed(self, endpoint: str = "feed", first_seq: int = 1, **kw: Any) -> int:
        waiter = object()
        rid = self.s.subscribe(waiter, endpoint, **kw)
        self.written()
        self.feed(ack(rid, first_seq=first_seq))
        result, error = self.done[waiter]
        assert error is None and isinstance(result, wsmux.Subscription)
        return rid


def test_backoff_doubles_to_the_cap_with_jitter_and_resets() -> None:
    top = Backoff(rng=lambda: 1.0)
    assert [round(top.next_delay(), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    low = Backoff(rng=lambda: 0.0)
    assert [round(low.next_delay(), 3) for _ in range(5)] == [0.05, 0.1, 0.2, 0.4, 0.5]
    low.reset()
    assert round(low.next_delay(), 3) == 0.05
    many = Backoff()
    assert all(0.05 <= many.next_delay() <= 1.0 for _ in range(1000))


def test_the_ack_gives_the_position_and_messages_move_it() -> None:
    p = Peer()
    p.subscribed(first_seq=41)
    assert p.s.position("feed") == ("e1", 40)
    p.feed(msg(41), msg(42, topic="t"))
    assert p.s.position("feed") == ("e1", 42)
    assert [e.seq for e in p.events()] == [41, 42]


def test_reconnect_resubscribes_from_the_position_then_stickies_then_buffered_sends() -> None:
    p = Peer()
    p.subscribed("feed", first_seq=5)
    p.feed(msg(5), msg(6))
    p.subscribed("topics", first_seq=1, topics=["a", "b"])
    p.subscribed("both", first_seq=3)
    p.subscribed("both", first_seq=3, topics=["c"])
    p.subscribed("fresh", first_seq=1)
    sticky = object()
    rid = p.s.send(sticky, "feed", "sub", sticky=True, undo="unsub")
    p.written()
    p.feed(ack(rid))
    p.s.disconnected("gone")
    assert p.s.state == DISCONNECTED
    assert isinstance(p.events()[-1], wsmux.Disconnected)
    buffered = object()
    p.s.send(buffered, "feed", "later")
    assert p.written() == []  # nothing can be written while disconnected

    p.s.connected(welcome("e1"))
    out = p.written()
    subs = [(f["endpoint"], f.get("topics"), f.get("since"), f.get("epoch")) for f in out[:5]]
    assert subs == [
        ("both", None, 2, "e1"),
        ("both", ["c"], None, None),  # topics on top of the whole endpoint: without since
        ("feed", None, 6, "e1"),
        ("fresh", None, 0, "e1"),
        ("topics", ["a", "b"], 0, "e1"),
    ]
    assert [(f["type"], f["data"], f.get("sticky"), f.get("undo")) for f in out[5:]] == [
        ("send", "sub", True, "unsub"),
        ("send", "later", None, None),
    ]
    assert len({f["id"] for f in out}) == len(out)


def test_reconnected_comes_after_the_last_resubscribe_and_holds_what_arrived_before() -> None:
    p = Peer()
    p.subscribed("a", first_seq=10)
    p.subscribed("b", first_seq=20)
    p.events()
    p.s.disconnected("gone")
    p.events()
    p.s.connected(welcome("e2"))
    a_id, b_id = (f["id"] for f in p.written())
    assert p.s.restoring
    p.feed(
        ack(a_id, recovered=False, first_seq=1), {"type": "state", "endpoint": "a", "state": "open"}
    )
    p.feed(msg(1, "a"), msg(2, "a"))
    assert p.events() == []  # held until b is answered too
    p.feed(ack(b_id, recovered=False, first_seq=1), msg(1, "b"))
    events = p.events()
    first = events[0]
    assert isinstance(first, wsmux.Reconnected)
    assert (first.epoch, first.new_epoch, first.recovered) == ("e2", True, False)
    assert [(e.endpoint, e.recovered, e.first_seq) for e in first.endpoints] == [
        ("a", False, 1),
        ("b", False, 1),
    ]
    assert [type(e).__name__ for e in events[1:]] == ["State", "Message", "Message", "Message"]
    assert p.s.position("a") == ("e2", 2) and p.s.position("b") == ("e2", 1)
    # A new epoch: seq counts from 1 again, which is not a gap.
    assert [e.missed for e in events[2:]] == [0, 0, 0]


def test_a_recovered_reconnect_in_the_same_epoch() -> None:
    p = Peer()
    p.subscribed(first_seq=1)
    p.feed(msg(1), msg(2))
    p.s.disconnected("killed")
    p.s.connected(welcome("e1"))
    (sub,) = p.written()
    assert (sub["since"], sub["epoch"]) == (2, "e1")
    p.feed(ack(sub["id"], recovered=True, first_seq=3), msg(3))
    reconnected, message = p.events()[-2:]
    assert isinstance(reconnected, wsmux.Reconnected)
    assert reconnected.recovered and not reconnected.new_epoch
    assert isinstance(message, wsmux.Message) and message.seq == 3 and message.missed == 0


def test_a_refused_resubscribe_is_reported_and_forgotten() -> None:
    p = Peer()
    p.subscribed("gone", first_seq=1)
    p.subscribed("kept", first_seq=1)
    p.s.disconnected("reload")
    p.s.connected(welcome("e1"))
    gone, kept = p.written()
    error = {"type": "error", "id": gone["id"], "code": "unknown_endpoint", "message": "no"}
    p.feed(error, ack(kept["id"], recovered=True, first_seq=2))
    (reconnected,) = [e for e in p.events() if isinstance(e, wsmux.Reconnected)]
    assert not reconnected.recovered
    entry = reconnected.endpoints[0]
    assert (entry.endpoint, entry.recovered) == ("gone", False)
    assert entry.error is not None and entry.error.code == "unknown_endpoint"
    assert reconnected.endpoints[1].recovered
    p.s.disconnected("again")
    p.s.connected(welcome("e1"))
    assert [f["endpoint"] for f in p.written()] == ["kept"]


def test_lagged_resumes_at_once_and_the_seam_rule_discards_until_the_ack() -> None:
    p = Peer()
    p.subscribed(first_seq=1001)
    p.feed(msg(1001), {"type": "lagged", "endpoint": "feed", "dropped": 250})
    (resume,) = p.written()
    assert (resume["type"], resume["since"], resume["epoch"]) == ("subscribe", 1001, "e1")
    assert "topics" not in resume
    p.feed(msg(1252), msg(1253))  # queued before the request: sent again after the ack
    assert p.s.position("feed") == ("e1", 1001)
    p.feed(ack(resume["id"], recovered=True, first_seq=1002), msg(1002), msg(1003))
    events = p.events()
    names = [type(e).__name__ for e in events]
    assert names == ["Message", "Lagged", "Resumed", "Message", "Message"]
    resumed = events[2]
    assert (resumed.endpoint, resumed.recovered, resumed.first_seq) == ("feed", True, 1002)
    assert [e.seq for e in events if isinstance(e, wsmux.Message)] == [1001, 1002, 1003]


def test_lagged_on_topics_resumes_the_topics_held() -> None:
    p = Peer()
    p.subscribed(first_seq=7, topics=["a", "b"])
    p.feed({"type": "lagged", "endpoint": "feed", "dropped": 1})
    (resume,) = p.written()
    assert (resume["topics"], resume["since"]) == (["a", "b"], 6)


def test_without_reconnect_lagged_is_only_surfaced() -> None:
    p = Peer(reconnect=False)
    p.subscribed(first_seq=1)
    p.feed({"type": "lagged", "endpoint": "feed", "dropped": 1})
    assert p.written() == []
    assert isinstance(p.events()[-1], wsmux.Lagged)


def test_an_applications_since_gets_the_seam_and_the_answer() -> None:
    p = Peer()
    waiter = object()
    rid = p.s.subscribe(waiter, "feed", since=99, epoch="e0")
    (sub,) = p.written()
    assert (sub["since"], sub["epoch"]) == (99, "e0")
    p.feed(msg(150), ack(rid, recovered=False, first_seq=120), msg(120))
    result, _ = p.done[waiter]
    assert (result.first_seq, result.recovered) == (120, False)
    assert [e.seq for e in p.events() if isinstance(e, wsmux.Message)] == [120]
    with pytest.raises(ValueError, match="epoch"):
        p.s.subscribe(object(), "feed", epoch="e0")


def test_requests_in_flight_fail_with_connection_lost_and_are_not_retried() -> None:
    p = Peer()
    waiter = object()
    p.s.send(waiter, "feed", "maybe")
    p.written()
    p.s.disconnected("killed")
    p.finish()
    _, error = p.done[waiter]
    assert isinstance(error, wsmux.ConnectionLost) and "outcome is unknown" in str(error)
    p.s.connected(welcome("e1"))
    assert p.written() == []


def test_sends_while_disconnected_buffer_within_bounds_or_fail() -> None:
    p = Peer(max_buffered_sends=2, max_buffered_bytes=200)
    p.s.disconnected("down")
    p.s.send(object(), "feed", "a")
    second = p.s.send(object(), "feed", "b")
    with pytest.raises(wsmux.LimitExceeded) as err:
        p.s.send(object(), "feed", "c")
    assert err.value.limit == "max_buffered_sends"
    p.s.cancel(second)  # timed out: removed, never written
    with pytest.raises(wsmux.LimitExceeded) as err:
        p.s.send(object(), "feed", "x" * 300)
    assert err.value.limit == "max_buffered_bytes" and "max_buffered_bytes = 200" in str(err.value)
    p.s.connected(welcome("e1"))
    assert [f["data"] for f in p.written()] == ["a"]

    failing = Peer(when_disconnected="fail")
    failing.s.disconnected("down")
    with pytest.raises(wsmux.NotConnected, match="not connected to the daemon"):
        failing.s.send(object(), "feed", "a")
    with pytest.raises(ValueError, match="when_disconnected"):
        Options(when_disconnected="drop")


def test_other_requests_wait_for_the_connection() -> None:
    p = Peer()
    p.s.disconnected("down")
    assert p.s.request(object(), "ping", {}) is None
    p.s.connected(welcome("e1"))
    assert p.s.state == CONNECTED
    assert p.s.request(object(), "ping", {}) is not None


def test_subscribe_and_unsubscribe_while_disconnected_change_the_desired_state() -> None:
    p = Peer()
    p.subscribed("old", first_seq=1)
    p.s.disconnected("down")
    sub = object()
    p.s.subscribe(sub, "new", since=5)
    unsub = object()
    assert p.s.unsubscribe(unsub, "old") is not None
    assert p.s.unsubscribe(object(), "never") is None  # the daemon answers that one
    p.s.connected(welcome("e1"))
    (resub,) = p.written()
    assert (resub["endpoint"], resub["since"]) == ("new", 5)
    p.finish()
    assert p.done[unsub][1] is None
    p.feed(ack(resub["id"], recovered=True, first_seq=6))
    result, _ = p.done[sub]
    assert (result.endpoint, result.first_seq, result.recovered) == ("new", 6, True)


def test_sticky_sends_are_remembered_replaced_and_bounded() -> None:
    p = Peer(max_sticky=2)
    for data in ("a", "b", "a"):
        rid = p.s.send(object(), "feed", data, sticky=True)
        p.feed(ack(rid))
    assert p.s.sticky_count("feed") == 2
    with pytest.raises(wsmux.LimitExceeded) as err:
        p.s.send(object(), "feed", "c", sticky=True)
    assert err.value.limit == "max_sticky"
    refused = p.s.send(object(), "other", "z", sticky=True)
    p.feed({"type": "error", "id": refused, "code": "sticky_full", "message": "full"})
    p.written()
    p.s.disconnected("down")
    p.s.connected(welcome("e1"))
    resent = p.written()
    assert [f["data"] for f in resent] == ["b", "a"]  # the re-send of a moved it last
    # One refused after the reconnect is forgotten, and said so.
    p.feed({"type": "error", "id": resent[0]["id"], "code": "sticky_full", "message": "full"})
    (error,) = [e for e in p.events() if isinstance(e, wsmux.ErrorEvent)]
    assert error.code == "sticky_full" and error.endpoint == "feed"
    assert p.s.sticky_count("feed") == 1
    with pytest.raises(ValueError, match="undo"):
        p.s.send(object(), "feed", "x", undo="y")


def test_the_event_bound_drops_messages_then_announces_and_resumes() -> None:
    s = Session(Options(max_event_bytes=1000))
    s.connected(WELCOME)
    rid = s.subscribe(object(), "feed")
    s.take_writes()
    s.receive(ack(rid, first_seq=1), 10)
    for seq in range(1, 21):
        s.receive(msg(seq), 100)  # the application takes nothing
    events = s.take_events()
    assert [e.seq for e, _ in events if isinstance(e, wsmux.Message)] == list(range(1, 11))
    assert s.take_writes() == []  # no resume while the application is still behind
    for _, size in events[:6]:
        s.taken(size)
    (resume,) = (wsmux.decode_frame(f) for f in s.take_writes())
    assert resume["since"] == 10
    (lagged,) = [e for e, _ in s.take_events()]
    assert isinstance(lagged, wsmux.ClientLagged) and lagged.dropped == 10


def test_close_fails_everything_that_waits() -> None:
    p = Peer()
    p.s.disconnected("down")
    buffered, sub = object(), object()
    p.s.send(buffered, "feed", "a")
    p.s.subscribe(sub, "feed")
    p.s.close(wsmux.ConnectionClosed("closed by the client"))
    p.finish()
    assert p.s.state == CLOSED
    assert all(isinstance(p.done[w][1], wsmux.ConnectionClosed) for w in (buffered, sub))
    with pytest.raises(wsmux.ConnectionClosed):
        p.s.send(object(), "feed", "b")


def test_an_unsubscribe_in_flight_when_the_connection_drops_is_not_undone() -> None:
    p = Peer()
    p.subscribed("gone", first_seq=1)
    p.subscribed("kept", first_seq=1)
    p.feed(msg(1, "gone"))
    waiter = object()
    p.s.unsubscribe(waiter, "gone")
    (unsub,) = p.written()
    assert unsub["type"] == "unsubscribe"
    p.feed(msg(2, "gone"))  # already on its way
    p.s.disconnected("killed")  # before the ack
    p.finish()
    assert isinstance(p.done[waiter][1], wsmux.ConnectionLost)
    assert p.s.position("gone") is None
    p.s.connected(welcome("e1"))
    assert [f["endpoint"] for f in p.written()] == ["kept"]


def test_a_sticky_answered_send_failed_stays_remembered() -> None:
    p = Peer()
    failed = object()
    rid = p.s.send(failed, "feed", "sub", sticky=True, undo="unsub")
    p.written()
    p.feed({"type": "error", "id": rid, "code": "send_failed", "message": "write failed"})
    assert isinstance(p.done[failed][1], wsmux.DaemonError)
    assert p.s.sticky_count("feed") == 1  # the daemon keeps it sticky (PROTOCOL.md 9.4)
    p.s.disconnected("down")
    p.s.connected(welcome("e1"))
    (resent,) = p.written()
    assert (resent["data"], resent["sticky"], resent["undo"]) == ("sub", True, "unsub")
    p.feed({"type": "error", "id": resent["id"], "code": "send_failed", "message": "again"})
    assert p.s.sticky_count("feed") == 1
    assert not [e for e in p.events() if isinstance(e, wsmux.ErrorEvent)]
    p.s.disconnected("down")
    p.s.connected(welcome("e1"))
    assert [f["data"] for f in p.written()] == ["sub"]


def test_a_second_lagged_before_the_resume_is_answered_sends_no_second_resume() -> None:
    p = Peer()
    p.subscribed(first_seq=1)
    p.feed(msg(1), {"type": "lagged", "endpoint": "feed", "dropped": 5})
    (resume,) = p.written()
    p.feed({"type": "lagged", "endpoint": "feed", "dropped": 3}, msg(9))
    assert p.written() == []  # the resume in flight covers it
    p.feed(ack(resume["id"], recovered=True, first_seq=2), msg(2))
    p.feed({"type": "lagged", "endpoint": "feed", "dropped": 1})  # a new loss
    (again,) = p.written()
    assert again["since"] == 2


def test_the_backoff_is_reset_only_once_the_resync_is_complete() -> None:
    p = Peer()
    p.s.backoff = Backoff(rng=lambda: 1.0)
    p.subscribed(first_seq=1)

    def outage(attempts: int) -> list[float]:
        p.s.disconnected("down")
        return [round(p.s.backoff.next_delay(), 3) for _ in range(attempts)]

    assert outage(2) == [0.1, 0.2]
    p.s.connected(welcome("e1"))  # greeted, then dropped before the resubscribe's ack
    assert outage(1) == [0.4]
    p.s.connected(welcome("e1"))
    (sub,) = p.written()[-1:]
    p.feed(ack(sub["id"], recovered=True, first_seq=2))
    assert outage(1) == [0.1]
