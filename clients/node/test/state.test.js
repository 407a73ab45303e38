// The client's bookkeeping across connections, without sockets or clocks (src/state.js): the
// reconnect delays, what a reconnect and a lagged resume ask for, the seam rule, the sticky
// list, the backlog of requests waiting for the daemon and the bounded queue of events.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Backlog, Backoff, EventQueue, Holdings, StickyList, sameData } from "../src/state.js";

const msg = (seq, extra = {}) => ({ type: "message", endpoint: "feed", seq, data: "x", ...extra });

test("reconnect delays: 100 ms doubling to 1 s, each jittered to 50-100 %", () => {
  const low = new Backoff({ random: () => 0 });
  assert.deepEqual(Array.from({ length: 7 }, () => low.next()), [50, 100, 200, 400, 500, 500, 500]);
  const high = new Backoff({ random: () => 0.999999 });
  const delays = Array.from({ length: 6 }, () => Math.round(high.next()));
  assert.deepEqual(delays, [100, 200, 400, 800, 1000, 1000]);
  high.reset();
  assert.equal(Math.round(high.next()), 100);
  // Any random value stays within the bounds.
  const any = new Backoff();
  for (let i = 0; i < 100; i++) {
    const d = any.next();
    assert.ok(d >= 50 && d <= 1000, `${d}`);
  }
  assert.throws(() => new Backoff({ initial: 0 }), RangeError);
});

test("a reconnect subscribes again from the last seq, with the old epoch, in order", () => {
  const h = new Holdings();
  h.connected("e1");
  h.add("whole");
  h.add("topics", ["a", "b"]);
  h.add("both");
  h.add("both", ["t"]);
  h.add("fresh");
  h.acked("whole", { first_seq: 10 });
  assert.equal(h.message({ ...msg(10), endpoint: "whole" }), true);
  assert.equal(h.message({ ...msg(11), endpoint: "whole" }), true);
  h.acked("topics", { first_seq: 5 });
  h.message({ ...msg(7, { topic: "a", topic_seq: 1 }), endpoint: "topics" });
  h.acked("both", { first_seq: 1 });
  // "fresh" never got an ack with first_seq (nor a message): no since.
  assert.equal(h.connected("e2"), true);
  assert.deepEqual(h.resubscribes(), [
    { endpoint: "whole", fields: { endpoint: "whole", since: 11, epoch: "e1" }, last: true },
    { endpoint: "topics", fields: { endpoint: "topics", topics: ["a", "b"], since: 7, epoch: "e1" }, last: true },
    { endpoint: "both", fields: { endpoint: "both", since: 0, epoch: "e1" }, last: false },
    { endpoint: "both", fields: { endpoint: "both", topics: ["t"] }, last: true },
    { endpoint: "fresh", fields: { endpoint: "fresh" }, last: true },
  ]);
});

test("a daemon without epochs is not resumed: plain subscribes, no resume on lagged", () => {
  const h = new Holdings();
  h.connected(undefined);
  h.add("feed");
  h.message(msg(3));
  assert.equal(h.resume("feed"), undefined);
  assert.equal(h.connected(undefined), true);
  assert.deepEqual(h.resubscribes()[0].fields, { endpoint: "feed" });
  // Positions from an epoch-less daemon are not offered to a daemon with epochs either.
  assert.equal(h.connected("e1"), true);
  assert.deepEqual(h.resubscribes()[0].fields, { endpoint: "feed" });
});

test("the seam rule: after a resume request, messages after since wait for the ack", () => {
  const h = new Holdings();
  h.connected("e1");
  h.add("feed");
  h.acked("feed", { first_seq: 1 });
  for (const seq of [1, 2, 3]) assert.equal(h.message(msg(seq)), true);
  const fields = h.resume("feed");
  assert.deepEqual(fields, { endpoint: "feed", topics: undefined, since: 3, epoch: "e1" });
  h.openSeam("feed", 7, fields.since);
  // A second lagged while the resume is in flight asks for nothing more.
  assert.equal(h.resume("feed"), undefined);
  // Queued before the request: discarded, the daemon sends them again after the ack.
  assert.equal(h.message(msg(9)), false);
  assert.equal(h.message(msg(10)), false);
  // Another request's reply does not end the seam.
  h.closeSeam("feed", 6);
  assert.equal(h.message(msg(11)), false);
  h.closeSeam("feed", 7);
  h.acked("feed", { recovered: true, first_seq: 4 }, 3, "e1");
  const replayed = [4, 5, 6].map((seq) => {
    const m = msg(seq);
    assert.equal(h.message(m), true);
    return m.missed;
  });
  assert.deepEqual(replayed, [0, 0, 0]);
  assert.deepEqual(h.resume("feed"), { endpoint: "feed", topics: undefined, since: 6, epoch: "e1" });
  // A new connection has no seam left.
  h.openSeam("feed", 8, 6);
  h.connected("e1");
  assert.equal(h.message(msg(7)), true);
});

test("a resume with topics names them; the whole endpoint does not", () => {
  const h = new Holdings();
  h.connected("e1");
  h.add("feed", ["a", "b"]);
  h.acked("feed", { first_seq: 20 });
  assert.deepEqual(h.resume("feed"), { endpoint: "feed", topics: ["a", "b"], since: 19, epoch: "e1" });
  h.add("feed");
  assert.deepEqual(h.resume("feed"), { endpoint: "feed", topics: undefined, since: 19, epoch: "e1" });
  assert.equal(h.resume("other"), undefined);
});

test("what is lost shows in missed in the same epoch; another epoch starts afresh", () => {
  const h = new Holdings();
  h.connected("e1");
  h.add("feed");
  h.add("topics", ["a"]);
  h.acked("feed", { first_seq: 1 });
  h.message(msg(1));
  h.message(msg(2));
  h.acked("topics", { first_seq: 1 });
  h.message({ ...msg(1, { topic: "a", topic_seq: 40 }), endpoint: "topics" });
  // Same epoch, history evicted: the first seq after the resume shows the gap.
  h.acked("feed", { recovered: false, first_seq: 6 }, 2, "e1");
  const m = msg(6);
  h.message(m);
  assert.equal(m.missed, 3);
  // Another epoch: seq and topic_seq started again, nothing counts as missed.
  h.connected("e2");
  h.acked("feed", { recovered: false, first_seq: 1 }, 6, "e1");
  const first = msg(1);
  h.message(first);
  assert.equal(first.missed, 0);
  h.acked("topics", { recovered: false, first_seq: 1 }, 1, "e1");
  const topical = { ...msg(2, { topic: "a", topic_seq: 1 }), endpoint: "topics" };
  h.message(topical);
  assert.equal(topical.missed, 0);
});

test("the application's own since, given while disconnected, is where the reconnect resumes", () => {
  const h = new Holdings();
  h.connected("e1");
  h.add("feed");
  h.setPosition("feed", 500, "e0");
  h.connected("e1");
  assert.deepEqual(h.resubscribes()[0].fields, { endpoint: "feed", since: 500, epoch: "e0" });
  h.setPosition("feed", 7, undefined); // no epoch: the daemon's current one
  assert.deepEqual(h.resubscribes()[0].fields, { endpoint: "feed", since: 7, epoch: undefined });
});

test("unsubscribing everything forgets the position; topics alone keep it", () => {
  const h = new Holdings();
  h.connected("e1");
  h.add("feed");
  h.add("feed", ["a"]);
  h.message(msg(4));
  assert.equal(h.remove("feed", ["a"]), true);
  assert.deepEqual(h.position("feed"), { since: 4, epoch: "e1" });
  assert.equal(h.remove("feed", undefined), false);
  assert.equal(h.holds("feed"), false);
  assert.equal(h.position("feed"), undefined);
});

test("sticky sends: in order, an identical one replaces the earlier, bounded per endpoint", () => {
  const list = new StickyList({ maxMessages: 2, maxBytes: 1000 });
  const add = (endpoint, data, undo) => {
    const token = list.reserve(endpoint, data, undo);
    assert.equal(token.limit, undefined, token.message);
    list.add(token, data, undo);
  };
  add("feed", "sub a", "unsub a");
  add("feed", new Uint8Array([1, 2]));
  add("other", "sub x");
  // The same text again replaces (and moves to the end); the same bytes too.
  add("feed", "sub a", "unsub a");
  add("feed", new Uint8Array([1, 2]));
  const shown = list.entries().map((e) => [e.endpoint, typeof e.data === "string" ? e.data : [...e.data], e.undo]);
  assert.deepEqual(shown, [
    ["feed", "sub a", "unsub a"],
    ["feed", [1, 2], undefined],
    ["other", "sub x", undefined],
  ]);
  // A third one on feed is over maxSticky; a different undo is a different message.
  const full = list.reserve("feed", "sub a", "other undo");
  assert.equal(full.limit, "maxSticky");
  assert.match(full.message, /3 sticky messages on feed, more than maxSticky \(2\)/);
  // Sends in flight reserve their room; a released reservation gives it back.
  const big = new StickyList({ maxMessages: 10, maxBytes: 200 });
  const first = big.reserve("feed", "x".repeat(100));
  assert.equal(big.reserve("feed", "y".repeat(100)).limit, "maxStickyBytes");
  big.release(first);
  big.release(first); // twice is harmless
  const second = big.reserve("feed", "y".repeat(100));
  assert.equal(second.limit, undefined);
  big.add(second, "y".repeat(100));
  big.remove(big.entries()[0]);
  assert.deepEqual(big.entries(), []);
  assert.equal(big.reserve("feed", "z".repeat(100)).limit, undefined);
});

test("text and binary with the same bytes are different messages", () => {
  assert.equal(sameData("ab", new Uint8Array([0x61, 0x62])), false);
  assert.equal(sameData(new Uint8Array([1]), new Uint8Array([1])), true);
  assert.equal(sameData(new Uint8Array([1]), new Uint8Array([2])), false);
  assert.equal(sameData(undefined, undefined), true);
  assert.equal(sameData(undefined, ""), false);
});

test("the backlog is bounded in count and bytes, and a removed entry is never drained", () => {
  const backlog = new Backlog({ maxBytes: 100, maxMessages: 3 });
  const [a, b, c, d] = ["a", "b", "c", "d"].map((name) => ({ name }));
  assert.equal(backlog.push(a, 40), undefined);
  assert.equal(backlog.push(b, 40), undefined);
  const tooBig = backlog.push(c, 21);
  assert.equal(tooBig.limit, "bufferBytes");
  assert.match(tooBig.message, /80 bytes already wait .* has 21, more than bufferBytes \(100\)/);
  assert.equal(backlog.push(c, 20), undefined);
  assert.equal(backlog.push(d, 0).limit, "bufferMessages");
  assert.equal(backlog.remove(b), true);
  assert.equal(backlog.remove(b), false);
  assert.equal(backlog.bytes, 60);
  assert.deepEqual(backlog.drain(), [a, c]);
  assert.equal(backlog.length, 0);
});

const drain = (queue) => {
  const out = [];
  for (let e = queue.shift(); e !== undefined; e = queue.shift()) out.push(e);
  return out;
};
const short = (e) => (e.type === "message" ? `${e.endpoint}:${e.seq}` : e.client ? `lagged:${e.endpoint}:${e.dropped}` : e.type);

test("the event queue: in arrival order within its bound", () => {
  const queue = new EventQueue({ maxBytes: 1000 });
  queue.push(msg(1), 100);
  queue.push({ type: "state", endpoint: "feed" }, 100);
  queue.push(msg(2), 100);
  assert.equal(queue.bytes, 300);
  assert.deepEqual(drain(queue).map(short), ["feed:1", "state", "feed:2"]);
  assert.equal(queue.bytes, 0);
  assert.equal(queue.length, 0);
});

test("a full event queue drops the oldest messages, never other events, and says so first", () => {
  const queue = new EventQueue({ maxBytes: 1000 });
  queue.push({ type: "state", endpoint: "feed" }, 100);
  for (let seq = 1; seq <= 4; seq++) queue.push(msg(seq), 200);
  queue.push(msg(1, { endpoint: "other" }), 200);
  // 100 + 5 * 200 > 1000: feed:1 went; then feed:2 and feed:3 for 400 more.
  queue.push({ type: "disconnected", reason: "x" }, 400);
  assert.equal(queue.bytes, 900);
  assert.equal(queue.length, 5); // the notice, state, feed:4, other:1, disconnected
  assert.deepEqual(drain(queue).map(short), ["lagged:feed:3", "state", "feed:4", "other:1", "disconnected"]);
  // Counts add up per endpoint until announced, in order of the first drop.
  for (let seq = 1; seq <= 5; seq++) queue.push(msg(seq, { endpoint: seq % 2 ? "a" : "b" }), 400);
  assert.deepEqual(drain(queue).map(short), ["lagged:a:2", "lagged:b:1", "b:4", "a:5"]);
});

test("a message larger than the bound goes with its endpoint's queued ones; other events that fill it are refused", () => {
  const queue = new EventQueue({ maxBytes: 1000 });
  queue.push(msg(1), 100);
  queue.push(msg(1, { endpoint: "other" }), 100);
  queue.push({ type: "state", endpoint: "feed" }, 500);
  queue.push(msg(2), 600); // 500 + 600 > 1000 even without any message
  assert.deepEqual(drain(queue).map(short), ["lagged:feed:2", "other:1", "state"]);
  queue.push({ type: "state", endpoint: "feed" }, 900);
  queue.push(msg(3), 100);
  assert.equal(queue.push({ type: "error", code: "x" }, 100), undefined); // feed:3 makes room
  const full = queue.push({ type: "error", code: "y" }, 1);
  assert.equal(full.limit, "eventBufferBytes");
  assert.match(full.message, /took no events while 1000 bytes .* eventBufferBytes \(1000\)/);
  assert.deepEqual(drain(queue).map(short), ["lagged:feed:1", "state", "error"]);
});
