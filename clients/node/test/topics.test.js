// Topics on the wire, without wsmuxd: the frames of the topic fields byte for byte, and what
// the client makes of them, against a scripted peer on a real Unix socket.
//
// The byte layouts are written out here from the design (`type` first, then the fields in the
// daemon's order). Once proto/vectors holds the topic frames (`subscribe_topics`,
// `unsubscribe_topics`, `message_topic`, `error_topic_rejected`, `status_reply_topics`),
// vectors.test.js checks those files too; these tests stay as the readable account.

import assert from "node:assert/strict";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";

import { ERROR_CODES, FATAL_CODES, FrameDecoder, WsmuxError, connect, decodeFrame, encodeFrame } from "../src/index.js";
import { request, topicList } from "../src/protocol.js";

const TIMEOUT = 10000;
const NEW_CODES = ["topic_rejected", "invalid_topic", "too_many_topics", "topics_unsupported"];

/** A fixstr (up to 31 bytes): its header and its UTF-8 bytes, in hex. */
function s(text) {
  const raw = Buffer.from(text, "utf8");
  assert.ok(raw.length < 32);
  return (0xa0 | raw.length).toString(16) + raw.toString("hex");
}

function frame(bodyHex) {
  const body = Buffer.from(bodyHex, "hex");
  const header = Buffer.alloc(4);
  header.writeUInt32BE(body.length, 0);
  return new Uint8Array(Buffer.concat([header, body]));
}

// prettier-ignore
const SUBSCRIBE_TOPICS = frame(
  "84" + s("type") + s("subscribe") + s("id") + "01" + s("endpoint") + s("feed") +
  s("topics") + "92" + s("btcusdt@trade") + s("ethusdt@trade"),
);
// prettier-ignore
const UNSUBSCRIBE_TOPICS = frame(
  "84" + s("type") + s("unsubscribe") + s("id") + "08" + s("endpoint") + s("feed") +
  s("topics") + "91" + s("btcusdt@trade"),
);
// The daemon's data message: type, endpoint, seq, data, topic, topic_seq.
// prettier-ignore
const MESSAGE_TOPIC = frame(
  "86" + s("type") + s("message") + s("endpoint") + s("feed") + s("seq") + "ccc8" +
  s("data") + s('{"stream":"x"}') + s("topic") + s("btcusdt@trade") + s("topic_seq") + "07",
);
// No id: an event.
// prettier-ignore
const ERROR_TOPIC_REJECTED = frame(
  "85" + s("type") + s("error") + s("code") + s("topic_rejected") +
  s("message") + s("unknown stream") + s("endpoint") + s("feed") + s("topic") + s("nope@trade"),
);

test("subscribe and unsubscribe with topics encode as the design says", () => {
  const sub = request("subscribe", 1, { endpoint: "feed", topics: ["btcusdt@trade", "ethusdt@trade"] });
  assert.deepEqual(new Uint8Array(encodeFrame(sub)), SUBSCRIBE_TOPICS);
  assert.deepEqual(decodeFrame(SUBSCRIBE_TOPICS), sub);
  const unsub = request("unsubscribe", 8, { endpoint: "feed", topics: ["btcusdt@trade"] });
  assert.deepEqual(new Uint8Array(encodeFrame(unsub)), UNSUBSCRIBE_TOPICS);
  // Without topics the request is the old one (no `topics: nil`).
  assert.deepEqual(Object.keys(request("subscribe", 1, { endpoint: "feed", topics: undefined })), [
    "type",
    "id",
    "endpoint",
  ]);
});

test("a message with a topic and topic_seq decodes and encodes back", () => {
  const msg = decodeFrame(MESSAGE_TOPIC);
  assert.deepEqual(Object.keys(msg), ["type", "endpoint", "seq", "data", "topic", "topic_seq"]);
  assert.deepEqual(msg, {
    type: "message",
    endpoint: "feed",
    seq: 200,
    data: '{"stream":"x"}',
    topic: "btcusdt@trade",
    topic_seq: 7,
  });
  assert.deepEqual(new Uint8Array(encodeFrame(msg)), MESSAGE_TOPIC);
});

test("topic_rejected decodes with endpoint and topic; WsmuxError carries them", () => {
  const msg = decodeFrame(ERROR_TOPIC_REJECTED);
  assert.deepEqual(new Uint8Array(encodeFrame(msg)), ERROR_TOPIC_REJECTED);
  const err = WsmuxError.fromFrame(msg);
  assert.equal(err.code, "topic_rejected");
  assert.equal(err.endpoint, "feed");
  assert.equal(err.topic, "nope@trade");
  assert.equal(err.fatal, false);
  const plain = WsmuxError.fromFrame({ type: "error", id: 3, code: "x", message: "" });
  assert.equal(plain.endpoint, undefined);
  assert.equal(plain.topic, undefined);
});

test("the topic codes are known and none is fatal", () => {
  for (const code of NEW_CODES) {
    assert.ok(ERROR_CODES.has(code), code);
    assert.ok(!FATAL_CODES.has(code), code);
    assert.equal(new WsmuxError(code, "m").fatal, false);
  }
  for (const code of FATAL_CODES) assert.ok(ERROR_CODES.has(code), code);
});

test("a status with topics keeps connections and topics", () => {
  const status = {
    type: "status",
    id: 6,
    endpoints: [
      {
        name: "feed",
        state: "open",
        subscribers: 2,
        connections: 1,
        topics: [
          {
            topic: "bad@trade",
            subscribers: 1,
            state: "rejected",
            connection: 0,
            messages: 0,
            reason: "unknown stream",
          },
          { topic: "btcusdt@trade", subscribers: 2, state: "active", connection: 0, messages: 41 },
        ],
      },
    ],
  };
  assert.deepEqual(decodeFrame(encodeFrame(status)), status);
});

test("topics must be an array (an iterable) of strings", () => {
  assert.equal(topicList(undefined), undefined);
  assert.equal(topicList(null), undefined);
  assert.deepEqual(topicList(["a", "b"]), ["a", "b"]);
  assert.deepEqual(topicList(new Set(["a"])), ["a"]);
  assert.deepEqual(topicList([]), []); // the daemon answers invalid_topic: limits are its business
  for (const bad of ["btcusdt@trade", 5, { a: 1 }]) {
    assert.throws(() => topicList(bad), /topics must be an array of strings/);
  }
  assert.throws(() => topicList(["a", 1]), /every topic must be a string/);
  assert.throws(() => topicList(new Uint8Array([1])), /every topic must be a string/);
});

// A scripted daemon on a real Unix socket: answers hello with welcome, hands every later
// request to `script(msg, send)`, and records the requests.
let dir;
before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "wsmux-node-topics-"));
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

async function scriptedDaemon(name, script) {
  const socket = path.join(dir, `${name}.sock`);
  const requests = [];
  const conns = new Set();
  const server = net.createServer((conn) => {
    conns.add(conn);
    const decoder = new FrameDecoder();
    const send = (msg) => conn.write(encodeFrame(msg));
    conn.on("data", (chunk) => {
      for (const msg of decoder.push(chunk)) {
        if (msg.type === "hello") {
          send({ type: "welcome", version: 1, server: "scripted", endpoints: [{ name: "feed", state: "open" }] });
          continue;
        }
        requests.push(msg);
        script(msg, send);
      }
    });
    conn.on("error", () => {});
  });
  await new Promise((resolve) => server.listen(socket, resolve));
  return {
    socket,
    requests,
    close: () => {
      for (const conn of conns) conn.destroy();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

const message = (seq, topic, topicSeq) => {
  const msg = { type: "message", endpoint: "feed", seq, data: "x" };
  if (topic !== undefined) msg.topic = topic;
  if (topicSeq !== undefined) msg.topic_seq = topicSeq;
  return msg;
};

test("missed counts only the topics held; the callback stays while a topic is held", async () => {
  // What the daemon sends right after each ack, by request number.
  const followUps = [
    // subscribe topics a, b: seq jumps over other clients' topics, which is not a miss; a
    // gap in a held topic's own counter is; messages without a topic count nothing.
    [message(10, "a", 1), message(15, "b", 4), message(20, "a", 2), message(30, "a", 5), message(40)],
    // subscribe topic c (no callback given: the first one stays), then a topic_rejected event.
    [
      message(41, "c", 1),
      { type: "error", code: "topic_rejected", message: "unknown topic c", endpoint: "feed", topic: "c" },
    ],
    // unsubscribe a: b and c are still held.
    [message(50, "b", 5)],
    // subscribe the whole endpoint: the seq gap counts again.
    [message(52, "b", 6)],
    // unsubscribe everything: nothing may follow the ack.
    [],
    // subscribe again without a callback: a fresh start, no gap from before.
    [message(90), message(92)],
  ];
  let n = 0;
  const daemon = await scriptedDaemon("missed", (msg, send) => {
    if (msg.type === "ping") {
      send({ type: "pong", id: msg.id });
      return;
    }
    if (msg.type === "status") {
      send({ type: "error", id: msg.id, code: "invalid_topic", message: "no", endpoint: "feed", topic: "" });
      return;
    }
    send({ type: "ack", id: msg.id });
    if (msg.type === "subscribe") send({ type: "state", endpoint: "feed", state: "open" });
    for (const event of followUps[n] ?? []) send(event);
    n += 1;
  });
  const client = await connect({ socket: daemon.socket, timeout: TIMEOUT });
  try {
    const got = [];
    await client.subscribe("feed", (event) => got.push(event), { topics: ["a", "b"] });
    await client.subscribe("feed", { topics: ["c"] });
    await client.unsubscribe("feed", { topics: ["a"] });
    await client.subscribe("feed");
    await client.unsubscribe("feed");
    await client.subscribe("feed");
    // A reply that is an error carries the frame's endpoint and topic.
    await assert.rejects(
      client.status(),
      (err) => err instanceof WsmuxError && err.code === "invalid_topic" && err.endpoint === "feed",
    );
    const queued = [];
    for (let i = 0; i < 3; i++) queued.push(await client.nextEvent({ timeout: TIMEOUT }));

    assert.deepEqual(
      daemon.requests.map((r) => [r.type, r.topics]),
      [
        ["subscribe", ["a", "b"]],
        ["subscribe", ["c"]],
        ["unsubscribe", ["a"]],
        ["subscribe", undefined],
        ["unsubscribe", undefined],
        ["subscribe", undefined],
        ["status", undefined],
      ],
    );
    const messages = got.filter((e) => e.type === "message");
    assert.deepEqual(
      messages.map((e) => [e.seq, e.topic, e.topic_seq, e.missed]),
      [
        [10, "a", 1, 0],
        [15, "b", 4, 0],
        [20, "a", 2, 0],
        [30, "a", 5, 2],
        [40, undefined, undefined, 0],
        [41, "c", 1, 0],
        [50, "b", 5, 0],
        [52, "b", 6, 1],
      ],
    );
    const [rejected] = got.filter((e) => e.type === "error");
    assert.equal(rejected.code, "topic_rejected");
    assert.equal(rejected.endpoint, "feed");
    assert.equal(rejected.topic, "c");
    assert.ok(!client.closed, "topic_rejected does not end the connection");
    // After the full unsubscribe, the callback is gone: events are queued for events().
    assert.deepEqual(
      queued.map((e) => [e.type, e.seq, e.missed]),
      [
        ["state", undefined, undefined],
        ["message", 90, 0],
        ["message", 92, 1],
      ],
    );
    // Types are checked before anything is sent.
    const sent = daemon.requests.length;
    await assert.rejects(client.subscribe("feed", { topics: "a" }), TypeError);
    await assert.rejects(client.unsubscribe("feed", { topics: [1] }), TypeError);
    await assert.rejects(client.subscribe("feed", 5), TypeError);
    assert.equal(daemon.requests.length, sent);
    assert.ok((await client.ping()) >= 0);
  } finally {
    await client.close();
    await daemon.close();
  }
});

test("dropping the last topic ends the callback", async () => {
  const daemon = await scriptedDaemon("last", (msg, send) => {
    send({ type: "ack", id: msg.id });
    if (msg.type === "subscribe") send({ type: "state", endpoint: "feed", state: "open" });
    // A daemon sends nothing of the endpoint after this ack; the client goes by frame order.
    if (msg.type === "unsubscribe") send({ type: "state", endpoint: "feed", state: "open" });
  });
  const client = await connect({ socket: daemon.socket, timeout: TIMEOUT });
  try {
    const got = [];
    await client.subscribe("feed", (event) => got.push(event), { topics: ["a"] });
    await client.unsubscribe("feed", { topics: ["a", "never-held"] });
    const next = await client.nextEvent({ timeout: TIMEOUT });
    assert.equal(next.type, "state");
    assert.equal(got.length, 1);
  } finally {
    await client.close();
    await daemon.close();
  }
});
