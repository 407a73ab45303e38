// Reconnect and resume against a scripted daemon on a real Unix socket: the exact order of
// what the client writes after a reconnect, the events held back until `reconnected`, the
// requests in flight when the connection drops, and the seam rule after `lagged`. The frames
// a real daemon sends in these cases depend on timing; here the script fixes them.

import assert from "node:assert/strict";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";

import { ConnectionLostError, FrameDecoder, TimeoutError, connect, encodeFrame } from "../src/index.js";

const TIMEOUT = 5000;

let dir;
before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "wsmux-node-reconnect-"));
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

/**
 * A scripted daemon: greets every connection with a welcome of `epoch`, then the test drives
 * it: `accepted()` resolves with the next connection, whose `next()` resolves with the next
 * request and `send(msg, ...)` writes frames in one write. The connections numbered in
 * `refuse` (from 1) are answered `permission_denied` instead.
 */
async function scriptedDaemon(name, epoch, { refuse = [] } = {}) {
  const socket = path.join(dir, `${name}.sock`);
  const waiting = [];
  const ready = [];
  let connections = 0;
  let refused = 0;
  const server = net.createServer((sock) => {
    connections += 1;
    const number = connections;
    const decoder = new FrameDecoder();
    const requests = [];
    const wanted = [];
    const conn = {
      sock,
      send: (...msgs) => sock.write(Buffer.concat(msgs.map((m) => encodeFrame(m)))),
      next: () =>
        requests.length > 0
          ? Promise.resolve(requests.shift())
          : new Promise((resolve, reject) => {
              const timer = setTimeout(() => reject(new Error("no request from the client")), TIMEOUT);
              wanted.push((msg) => {
                clearTimeout(timer);
                resolve(msg);
              });
            }),
      kill: () => sock.destroy(),
    };
    sock.on("data", (chunk) => {
      for (const msg of decoder.push(chunk)) {
        if (msg.type === "hello" && refuse.includes(number)) {
          refused += 1;
          conn.send({ type: "error", id: msg.id, code: "permission_denied", message: "uid 1234 may not connect" });
          sock.end();
          continue;
        }
        if (msg.type === "hello") {
          conn.send({ type: "welcome", version: 1, server: "scripted", endpoints: [{ name: "feed", state: "open" }], epoch });
          const take = waiting.shift();
          if (take) take(conn);
          else ready.push(conn);
          continue;
        }
        const want = wanted.shift();
        if (want) want(msg);
        else requests.push(msg);
      }
    });
    sock.on("error", () => {});
  });
  await new Promise((resolve) => server.listen(socket, resolve));
  return {
    socket,
    accepted: () => (ready.length > 0 ? Promise.resolve(ready.shift()) : new Promise((resolve) => waiting.push(resolve))),
    close: () => new Promise((resolve) => server.close(resolve)),
    /** Connections refused (`refuse`: their numbers, from 1) since the last reset. */
    refused: () => refused,
    resetRefused: () => {
      refused = 0;
    },
  };
}

/** Runs `body(daemon, client)` with a scripted daemon and a client of it; closes both after. */
async function withClient(name, options, body) {
  const daemon = await scriptedDaemon(name, "A");
  const client = await connect({ socket: daemon.socket, timeout: TIMEOUT, reconnectDelay: 10, reconnectMaxDelay: 20, ...options });
  try {
    await body(daemon, client);
  } finally {
    await client.close();
    await daemon.close();
  }
}

const message = (seq, endpoint = "feed") => ({ type: "message", endpoint, seq, data: `m${seq}` });
const state = (endpoint = "feed") => ({ type: "state", endpoint, state: "open" });

/** A request without its id, for comparing. */
const strip = ({ id, ...rest }) => rest;

/** Reads `count` events from the iterator. */
async function take(client, count) {
  const out = [];
  while (out.length < count) out.push(await client.nextEvent({ timeout: TIMEOUT }));
  return out;
}

const brief = (e) => (e.type === "message" ? `${e.endpoint}:${e.seq}` : e.type);

test("after a reconnect: subscribes with since, sticky, buffered sends, and held events after reconnected", () =>
  withClient("order", {}, async (daemon, client) => {
    const one = await daemon.accepted();
    const subscribed = client.subscribe("feed");
    const sub = await one.next();
    one.send({ type: "ack", id: sub.id, first_seq: 1 }, state(), message(1), message(2));
    assert.deepEqual(await subscribed, { firstSeq: 1, recovered: undefined });
    const other = client.subscribe("other", { topics: ["t"] });
    const otherSub = await one.next();
    one.send({ type: "ack", id: otherSub.id, first_seq: 10 });
    await other;
    const sticky = client.send("feed", "sub", { sticky: true, undo: "unsub" });
    one.send({ type: "ack", id: (await one.next()).id });
    await sticky;
    // A request in flight when the connection drops fails: its outcome is unknown.
    const status = client.status();
    assert.equal((await one.next()).type, "status");
    assert.deepEqual((await take(client, 3)).map(brief), ["state", "feed:1", "feed:2"]);
    one.kill();
    await assert.rejects(status, (err) => {
      assert.ok(err instanceof ConnectionLostError, err);
      assert.match(err.message, /lost .* before the reply to status .*outcome is unknown/);
      return true;
    });
    assert.equal((await client.nextEvent({ timeout: TIMEOUT })).type, "disconnected");
    // While disconnected: a send waits in the buffer; one that waits too long is never sent.
    const expired = client.send("feed", "expires", { timeout: 1 });
    await assert.rejects(expired, (err) => err instanceof TimeoutError && /never will be/.test(err.message));
    const buffered = client.send("feed", "while down");

    const two = await daemon.accepted();
    const requests = [];
    for (let i = 0; i < 4; i++) requests.push(await two.next());
    assert.deepEqual(requests.map(strip), [
      { type: "subscribe", endpoint: "feed", since: 2, epoch: "A" },
      { type: "subscribe", endpoint: "other", topics: ["t"], since: 9, epoch: "A" },
      { type: "send", endpoint: "feed", data: "sub", sticky: true, undo: "unsub" },
      { type: "send", endpoint: "feed", data: "while down" },
    ]);
    const [feedSub, otherResub, , send] = requests;
    // feed is answered, then one of its messages arrives before other's answer: held back.
    two.send({ type: "ack", id: feedSub.id, recovered: true, first_seq: 3 }, state(), message(3));
    two.send({ type: "ack", id: send.id });
    assert.equal((await buffered).type, "ack"); // replies do not wait for the resubscribes
    two.send({ type: "ack", id: otherResub.id, recovered: true, first_seq: 10 }, message(4));
    const [reconnected, ...rest] = await take(client, 4);
    assert.deepEqual(reconnected, {
      type: "reconnected",
      epoch: "A",
      new_epoch: false,
      recovered: true,
      endpoints: [
        { endpoint: "feed", recovered: true, first_seq: 3 },
        { endpoint: "other", recovered: true, first_seq: 10 },
      ],
    });
    assert.deepEqual(rest.map(brief), ["state", "feed:3", "feed:4"]);
    assert.deepEqual(
      rest.filter((e) => e.type === "message").map((e) => e.missed),
      [0, 0],
    );
  }));

test("a refused resubscribe is reported and forgotten; a subscribe made while down is answered by the reconnect", () =>
  withClient("refused", {}, async (daemon, client) => {
    const one = await daemon.accepted();
    const subscribed = client.subscribe("gone");
    one.send({ type: "ack", id: (await one.next()).id, first_seq: 5 });
    await subscribed;
    one.kill();
    assert.equal((await client.nextEvent({ timeout: TIMEOUT })).type, "disconnected");
    const later = client.subscribe("feed", { since: 41, epoch: "A" });

    const two = await daemon.accepted();
    const gone = await two.next();
    const feed = await two.next();
    assert.deepEqual([gone, feed].map(strip), [
      { type: "subscribe", endpoint: "gone", since: 4, epoch: "A" },
      { type: "subscribe", endpoint: "feed", since: 41, epoch: "A" },
    ]);
    two.send(
      { type: "error", id: gone.id, code: "unknown_endpoint", message: "no endpoint named `gone`" },
      { type: "ack", id: feed.id, recovered: false, first_seq: 50 },
    );
    assert.deepEqual(await later, { firstSeq: 50, recovered: false });
    const reconnected = await client.nextEvent({ timeout: TIMEOUT });
    assert.equal(reconnected.recovered, false);
    assert.deepEqual(reconnected.endpoints, [
      {
        endpoint: "gone",
        recovered: false,
        first_seq: undefined,
        error: { code: "unknown_endpoint", message: "no endpoint named `gone`" },
      },
      { endpoint: "feed", recovered: false, first_seq: 50 },
    ]);
    // The refused endpoint is not asked for again.
    two.kill();
    const three = await daemon.accepted();
    assert.deepEqual(strip(await three.next()), { type: "subscribe", endpoint: "feed", since: 41, epoch: "A" });
  }));

test("lagged: the resume goes out at once, the seam is discarded, every seq comes once", () =>
  withClient("lagged", {}, async (daemon, client) => {
    const conn = await daemon.accepted();
    const got = [];
    const subscribed = client.subscribe("feed", (event) => got.push(event));
    conn.send({ type: "ack", id: (await conn.next()).id, first_seq: 1 }, state(), message(1), message(2));
    await subscribed;
    // 3 and 4 were dropped; 5 and 6 were queued behind the lagged.
    conn.send({ type: "lagged", endpoint: "feed", dropped: 2 }, message(5), message(6));
    const resume = await conn.next();
    assert.deepEqual(strip(resume), { type: "subscribe", endpoint: "feed", since: 2, epoch: "A" });
    conn.send(message(7), { type: "ack", id: resume.id, recovered: true, first_seq: 3 }, state());
    conn.send(...[3, 4, 5, 6, 7, 8].map((seq) => message(seq)));
    const pong = client.ping();
    conn.send({ type: "pong", id: (await conn.next()).id });
    await pong;
    assert.deepEqual(got.map(brief), [
      "state",
      "feed:1",
      "feed:2",
      "lagged",
      "resumed",
      "state",
      "feed:3",
      "feed:4",
      "feed:5",
      "feed:6",
      "feed:7",
      "feed:8",
    ]);
    const resumed = got.find((e) => e.type === "resumed");
    assert.deepEqual(resumed, { type: "resumed", endpoint: "feed", recovered: true, first_seq: 3 });
    assert.ok(got.filter((e) => e.type === "message").every((e) => e.missed === 0));
  }));

test("an unsubscribe in flight when the connection drops is not undone by the reconnect", () =>
  withClient("unsub", {}, async (daemon, client) => {
    const one = await daemon.accepted();
    const got = [];
    for (const endpoint of ["feed", "other"]) {
      const subscribed = client.subscribe(endpoint, (event) => got.push(event));
      one.send({ type: "ack", id: (await one.next()).id, first_seq: 1 }, message(1, endpoint));
      await subscribed;
    }
    const unsubscribed = client.unsubscribe("feed");
    assert.equal((await one.next()).type, "unsubscribe");
    // Still on its way before the ack: delivered to the callback as before.
    one.send(message(2));
    one.kill(); // no ack
    await assert.rejects(unsubscribed, (err) => err instanceof ConnectionLostError);

    const two = await daemon.accepted();
    const resub = await two.next();
    assert.deepEqual(strip(resub), { type: "subscribe", endpoint: "other", since: 1, epoch: "A" });
    two.send({ type: "ack", id: resub.id, recovered: true, first_seq: 2 });
    // The next request is the application's own: feed was not subscribed again.
    const pong = client.ping();
    const ping = await two.next();
    assert.equal(ping.type, "ping");
    two.send({ type: "pong", id: ping.id });
    await pong;
    const [disconnected, reconnected] = await take(client, 2);
    assert.deepEqual([disconnected.type, reconnected.type], ["disconnected", "reconnected"]);
    assert.deepEqual(reconnected.endpoints, [{ endpoint: "other", recovered: true, first_seq: 2 }]);
    assert.deepEqual(got.map(brief), ["feed:1", "other:1", "feed:2"]);
    // Its callback is gone too: a later subscribe without one queues its events.
    const again = client.subscribe("feed");
    two.send({ type: "ack", id: (await two.next()).id, first_seq: 9 }, message(9));
    await again;
    assert.equal(brief(await client.nextEvent({ timeout: TIMEOUT })), "feed:9");
    assert.equal(got.length, 3);
  }));

test("close() during the backoff returns at once and fails what waits", async () => {
  const daemon = await scriptedDaemon("close", "A");
  // Long delays: the client is in its backoff sleep when closed.
  const client = await connect({ socket: daemon.socket, timeout: TIMEOUT, reconnectDelay: 5000, reconnectMaxDelay: 5000 });
  try {
    (await daemon.accepted()).kill();
    assert.equal((await client.nextEvent({ timeout: TIMEOUT })).type, "disconnected");
    const waiting = client.ping();
    const started = performance.now();
    await client.close();
    assert.ok(performance.now() - started < 1000);
    await assert.rejects(waiting, /closed by the client/);
    assert.equal(await client.nextEvent(), null);
    assert.ok(client.closed);
  } finally {
    await daemon.close();
  }
});

test("events held back past maxHeldBytes are fetched again by a resume, not lost", () =>
  withClient("held", { maxHeldBytes: 120 }, async (daemon, client) => {
    const one = await daemon.accepted();
    for (const endpoint of ["feed", "other"]) {
      const subscribed = client.subscribe(endpoint);
      one.send({ type: "ack", id: (await one.next()).id, first_seq: 1 });
      await subscribed;
    }
    one.send(message(1));
    one.kill();
    const two = await daemon.accepted();
    const [feed, other] = [await two.next(), await two.next()];
    assert.deepEqual([feed, other].map(strip), [
      { type: "subscribe", endpoint: "feed", since: 1, epoch: "A" },
      { type: "subscribe", endpoint: "other", since: 0, epoch: "A" },
    ]);
    // feed is answered and replays while other's answer is still to come.
    two.send({ type: "ack", id: feed.id, recovered: true, first_seq: 2 }, ...range(2, 12).map((seq) => message(seq)));
    const resume = await two.next();
    const { since } = resume;
    assert.deepEqual(strip(resume), { type: "subscribe", endpoint: "feed", since, epoch: "A" });
    assert.ok(since >= 2 && since < 12, `${since}`);
    two.send({ type: "ack", id: other.id, recovered: true, first_seq: 1 });
    two.send({ type: "ack", id: resume.id, recovered: true, first_seq: since + 1 }, ...range(since + 1, 12).map((seq) => message(seq)));
    const events = await take(client, 3 + (since - 1) + 1 + (12 - since));
    assert.deepEqual(events.map(brief), [
      "feed:1",
      "disconnected",
      "reconnected",
      ...range(2, since).map((seq) => `feed:${seq}`),
      "resumed",
      ...range(since + 1, 12).map((seq) => `feed:${seq}`),
    ]);
  }));

test("events() is bounded by eventBufferBytes: the oldest messages go, announced by a client lagged", () =>
  withClient("bounded", { eventBufferBytes: 64 * 1024 }, async (daemon, client) => {
    const conn = await daemon.accepted();
    const subscribed = client.subscribe("feed");
    const big = (seq) => ({ ...message(seq), data: "x".repeat(10000) });
    conn.send({ type: "ack", id: (await conn.next()).id, first_seq: 1 }, ...range(1, 20).map(big));
    await subscribed;
    const pong = client.ping(); // answered after the messages: they have been read
    conn.send({ type: "pong", id: (await conn.next()).id });
    await pong;
    // About 10 KiB each: the last six fit in 64 KiB.
    const events = await take(client, 7);
    assert.deepEqual(events[0], { type: "lagged", endpoint: "feed", dropped: 14, client: true });
    assert.deepEqual(events.slice(1).map(brief), range(15, 20).map((seq) => `feed:${seq}`));
    // The stream goes on: nothing else is dropped once the application reads.
    conn.send(big(21));
    assert.equal(brief(await client.nextEvent({ timeout: TIMEOUT })), "feed:21");
    await assert.rejects(connect({ socket: daemon.socket, eventBufferBytes: 1000 }), /eventBufferBytes must be an integer of at least 65536/);
  }));

test("close() while a reconnect's subscribes are unanswered still delivers the events held back", () =>
  withClient("finish", {}, async (daemon, client) => {
    const one = await daemon.accepted();
    for (const endpoint of ["feed", "other"]) {
      const subscribed = client.subscribe(endpoint);
      one.send({ type: "ack", id: (await one.next()).id, first_seq: 1 });
      await subscribed;
    }
    one.kill();
    const two = await daemon.accepted();
    const [feed, other] = [await two.next(), await two.next()];
    assert.deepEqual([feed, other].map((r) => r.endpoint), ["feed", "other"]);
    // feed is answered and replays; other's answer never comes.
    two.send({ type: "ack", id: feed.id, recovered: true, first_seq: 1 }, state(), message(1), message(2));
    const pong = client.ping(); // answered after those frames: they have been read
    two.send({ type: "pong", id: (await two.next()).id });
    await pong;
    await client.close();
    const events = [];
    for (let e = await client.nextEvent(); e !== null; e = await client.nextEvent()) events.push(e);
    assert.deepEqual(events.map(brief), ["disconnected", "state", "feed:1", "feed:2"]);
  }));

test("every reconnect checks the socket again: an untrusted one is reported once, and the client keeps trying", async () => {
  const daemon = await scriptedDaemon("trust", "A");
  const client = await connect({ socket: daemon.socket, timeout: TIMEOUT, reconnectDelay: 10, reconnectMaxDelay: 20 });
  const other = await scriptedDaemon("trust-other", "B");
  try {
    const conn = await daemon.accepted();
    const stopped = daemon.close(); // done once its last connection ends
    // Someone else's socket now answers at the path: here, a symbolic link to another one.
    fs.rmSync(daemon.socket, { force: true });
    fs.symlinkSync(other.socket, daemon.socket);
    conn.kill();
    await stopped;
    assert.equal((await client.nextEvent({ timeout: TIMEOUT })).type, "disconnected");
    const refused = await client.nextEvent({ timeout: TIMEOUT });
    assert.equal(refused.type, "error");
    assert.equal(refused.code, "permission_denied");
    assert.match(refused.message, /symbolic link.*keeps trying/);
    assert.equal(refused.error.code, "ERR_WSMUX_UNTRUSTED");
    // Several more attempts (10-20 ms apart) meet the link; none of them is told again.
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(client.closed, false);
    fs.rmSync(daemon.socket, { force: true });
    const back = await scriptedDaemon("trust", "C");
    try {
      await back.accepted();
      const reconnected = await client.nextEvent({ timeout: TIMEOUT });
      assert.equal(reconnected.type, "reconnected");
      assert.equal(reconnected.epoch, "C");
    } finally {
      await client.close();
      await back.close();
    }
  } finally {
    await client.close();
    await other.close();
  }
});

test("a daemon refusing the uid on reconnect: one error event per outage, and the client comes back", async () => {
  const daemon = await scriptedDaemon("denied", "A", { refuse: [2, 3, 4, 6, 7] });
  const client = await connect({ socket: daemon.socket, timeout: TIMEOUT, reconnectDelay: 10, reconnectMaxDelay: 20 });
  try {
    // Two outages, refused three times then twice.
    for (const refusals of [3, 2]) {
      (await daemon.accepted()).kill();
      assert.equal((await client.nextEvent({ timeout: TIMEOUT })).type, "disconnected");
      const refused = await client.nextEvent({ timeout: TIMEOUT });
      assert.deepEqual([refused.type, refused.code], ["error", "permission_denied"]);
      assert.match(refused.message, /uid 1234 may not connect.*keeps trying/);
      assert.equal((await client.nextEvent({ timeout: TIMEOUT })).type, "reconnected");
      assert.equal(daemon.refused(), refusals);
      daemon.resetRefused();
    }
    assert.equal(client.closed, false);
  } finally {
    await client.close();
    await daemon.close();
  }
});

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

function withDeadline(promise) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error("timed out")), TIMEOUT);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}
