// Topics end to end: a real wsmuxd with `[endpoints.feed.topics]`, its upstream a `ws` server
// in this process (testlib/upstream.js).
//
// `feed` keys messages by `/stream` and subscribes with {"op":"sub","args":[...]}; its answers
// carry no id, so a topic is active once its subscribe is written. `strict` puts `{id}` in its
// subscribes, and its upstream answers {"id":N,"error":"..."} for topics starting with `bad`.

import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";

import { WsmuxError, connect } from "../src/index.js";
import { startDaemon } from "../testlib/daemon.js";
import { startUpstream } from "../testlib/upstream.js";

const TIMEOUT = 10000;

const config = (feed, strict) => `
[endpoints.feed]
url = "${feed}"
reconnect = { initial_delay = "100ms" }

[endpoints.feed.topics]
key = "/stream"
subscribe = '{"op":"sub","args":{topics}}'
unsubscribe = '{"op":"unsub","args":{topics}}'
max_per_client = 8

[endpoints.strict]
url = "${strict}"
reconnect = { initial_delay = "100ms" }

[endpoints.strict.topics]
key = "/stream"
subscribe = '{"op":"sub","args":{topics},"id":{id}}'
max_per_message = 1

[endpoints.plain]
url = "${strict}"
`;

/** The `strict` upstream: refuses topics starting with `bad`, accepts the others. */
function answerStrict(reply, text) {
  const msg = JSON.parse(text);
  if (msg.op !== "sub") return;
  const bad = (msg.args ?? []).filter((t) => t.startsWith("bad"));
  reply(JSON.stringify(bad.length ? { id: msg.id, error: `unknown topic ${bad[0]}` } : { id: msg.id, result: null }));
}

let feed;
let strict;
let daemon;
const clients = [];

beforeEach(async () => {
  daemon = undefined;
  feed = await startUpstream();
  strict = await startUpstream({ onText: answerStrict });
  daemon = await startDaemon({ config: config(feed.url, strict.url) });
  await feed.waitConnected(TIMEOUT);
  await strict.waitConnected(TIMEOUT);
});

afterEach(async () => {
  for (const client of clients.splice(0)) await client.close();
  await daemon?.stop();
  await feed?.close();
  await strict?.close();
});

async function client() {
  const c = await connect({ socket: daemon.socket, timeout: TIMEOUT });
  clients.push(c);
  return c;
}

/** The `args` of every message with this `op` the upstream received, in order. */
const ops = (received, op) =>
  received
    .map((text) => JSON.parse(text))
    .filter((msg) => msg.op === op)
    .map((msg) => msg.args);
const topicsOf = (received, op) => new Set(ops(received, op).flat());
const hasAll = (set, wanted) => wanted.every((t) => set.has(t));

const publish = (topic, n) => feed.publish(JSON.stringify({ stream: topic, data: { n } }));

/** The next `count` message events (others are skipped). */
async function messages(c, count) {
  const out = [];
  for await (const event of c.events({ timeout: TIMEOUT })) {
    if (event.type === "message") out.push(event);
    if (out.length === count) break;
  }
  return out;
}

const seen = (events) => events.map((e) => [e.topic, JSON.parse(e.data).data.n]);

async function waitStatus(c, endpoint, ok) {
  const deadline = Date.now() + TIMEOUT;
  for (;;) {
    const status = (await c.status()).find((e) => e.name === endpoint);
    if (ok(status)) return status;
    if (Date.now() > deadline) throw new Error(`status never as expected: ${JSON.stringify(status)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test("two clients each receive only their topics; the last holder unsubscribes upstream", async () => {
  const a = await client();
  const b = await client();
  await a.subscribe("feed", { topics: ["a1", "a2", "shared"] });
  await b.subscribe("feed", { topics: new Set(["b1", "b2", "shared"]) });
  const wanted = ["a1", "a2", "b1", "b2", "shared"];
  let received = await feed.waitFor((r) => hasAll(topicsOf(r, "sub"), wanted), TIMEOUT, "the subscribes");
  // One upstream subscribe per distinct topic, `shared` included.
  assert.deepEqual(ops(received, "sub").flat().sort(), wanted);

  ["a1", "b1", "a2", "b2", "shared", "a1", "b1"].forEach((topic, n) => publish(topic, n));
  // Frames to a client keep the upstream's order, so anything misrouted shows up before each
  // client's last message.
  const gotA = await messages(a, 4);
  const gotB = await messages(b, 4);
  assert.deepEqual(seen(gotA), [
    ["a1", 0],
    ["a2", 2],
    ["shared", 4],
    ["a1", 5],
  ]);
  assert.deepEqual(seen(gotB), [
    ["b1", 1],
    ["b2", 3],
    ["shared", 4],
    ["b1", 6],
  ]);
  for (const event of [...gotA, ...gotB]) {
    assert.equal(event.endpoint, "feed");
    assert.equal(typeof event.topic_seq, "number");
    assert.equal(event.missed, 0, "other clients' topics make gaps in seq; that is not a miss");
  }
  assert.equal(gotA[3].topic_seq, gotA[0].topic_seq + 1);
  assert.equal(gotA[2].topic_seq, gotB[2].topic_seq); // the same message of `shared`
  assert.equal(gotA[2].seq, gotB[2].seq);

  const status = await waitStatus(
    a,
    "feed",
    (s) => s.topics?.length > 0 && s.topics.every((t) => t.state === "active"),
  );
  assert.equal(status.connections, 1);
  assert.deepEqual(
    status.topics.map((t) => t.topic),
    wanted,
  );
  const byTopic = Object.fromEntries(status.topics.map((t) => [t.topic, t]));
  assert.equal(byTopic.shared.subscribers, 2);
  assert.equal(byTopic.a1.subscribers, 1);
  assert.equal(byTopic.a1.messages, 2);
  assert.equal(byTopic.a1.connection, 0);

  // The first holder leaving a topic changes nothing upstream; the last one unsubscribes.
  await a.unsubscribe("feed", { topics: ["shared", "never-held"] });
  publish("shared", 7);
  publish("a2", 8);
  assert.deepEqual(seen(await messages(a, 1)), [["a2", 8]]);
  assert.deepEqual(seen(await messages(b, 1)), [["shared", 7]]);
  await b.unsubscribe("feed", { topics: ["shared"] });
  await feed.waitFor((r) => topicsOf(r, "unsub").has("shared"), TIMEOUT, "the unsubscribe");
  // A fence: writes upstream are in order, so a second unsubscribe would be here by now.
  await a.subscribe("feed", { topics: ["fence"] });
  received = await feed.waitFor((r) => topicsOf(r, "sub").has("fence"), TIMEOUT, "the fence");
  assert.deepEqual(ops(received, "unsub"), [["shared"]]);

  // Unsubscribing without topics drops them all.
  await b.unsubscribe("feed");
  await feed.waitFor((r) => hasAll(topicsOf(r, "unsub"), ["b1", "b2"]), TIMEOUT, "b's unsubscribes");
  await assert.rejects(
    b.unsubscribe("feed"),
    (err) => err instanceof WsmuxError && err.code === "not_subscribed" && !err.fatal,
  );
});

test("refusals are errors that keep the connection", async () => {
  const c = await client();
  const cases = [
    ["plain", ["x"], "topics_unsupported"],
    ["feed", [""], "invalid_topic"],
    ["feed", [], "invalid_topic"],
    ["feed", Array.from({ length: 9 }, (_, i) => `t${i}`), "too_many_topics"], // max_per_client = 8
    ["nope", ["x"], "unknown_endpoint"],
  ];
  for (const [endpoint, topics, code] of cases) {
    await assert.rejects(c.subscribe(endpoint, { topics }), (err) => {
      assert.ok(err instanceof WsmuxError, String(err));
      assert.equal(err.code, code, `${endpoint} ${JSON.stringify(topics)}: ${err.message}`);
      assert.equal(err.fatal, false);
      return true;
    });
  }
  // Checked as a whole: nothing of the refused requests was taken.
  await assert.rejects(c.unsubscribe("feed"), (err) => err.code === "not_subscribed");
  // Types are checked here, before anything is sent.
  await assert.rejects(c.subscribe("feed", { topics: "a1" }), TypeError);
  await assert.rejects(c.unsubscribe("feed", { topics: [1] }), TypeError);
  assert.ok((await c.ping()) >= 0);
  assert.equal(c.closed, false);
});

test("a callback gets topic_rejected as an event, and the connection stays", async () => {
  const a = await client();
  const b = await client();
  const got = [];
  let wake = () => {};
  const nextEvent = async () => {
    // The next event that is not a state (state changes may come at any time).
    const deadline = Date.now() + TIMEOUT;
    for (;;) {
      const i = got.findIndex((e) => e.type !== "state");
      if (i >= 0) return got.splice(0, i + 1).at(-1);
      if (Date.now() > deadline) throw new Error("no event");
      await new Promise((resolve) => {
        wake = resolve;
        setTimeout(resolve, 50);
      });
    }
  };
  await a.subscribe(
    "strict",
    (event) => {
      got.push(event);
      wake();
    },
    { topics: ["good1"] },
  );
  await a.subscribe("strict", { topics: ["bad1"] }); // the same callback
  await b.subscribe("strict", { topics: ["good2"] });

  const rejected = await nextEvent();
  assert.equal(rejected.type, "error");
  assert.equal(rejected.code, "topic_rejected");
  assert.equal(rejected.endpoint, "strict");
  assert.equal(rejected.topic, "bad1");
  assert.match(rejected.message, /unknown topic bad1/);
  assert.equal(a.closed, false);
  assert.ok((await a.ping()) >= 0);

  await strict.waitFor((r) => hasAll(topicsOf(r, "sub"), ["good1", "good2"]), TIMEOUT, "the subscribes");
  strict.publish(JSON.stringify({ stream: "good2", data: { n: 1 } }));
  strict.publish(JSON.stringify({ stream: "good1", data: { n: 2 } }));
  // The upstream's answers to the daemon's subscribes are not delivered: the first message is
  // the data.
  const first = await nextEvent();
  assert.equal(first.type, "message");
  assert.deepEqual(seen([first]), [["good1", 2]]);
  const [other] = await messages(b, 1);
  assert.deepEqual([other.topic, other.missed], ["good2", 0]);

  const status = (await a.status()).find((s) => s.name === "strict");
  const bad = status.topics.find((t) => t.topic === "bad1");
  assert.equal(bad.state, "rejected");
  assert.match(bad.reason ?? "", /unknown topic bad1/);

  // Dropping one of two topics keeps the callback; dropping the last one ends it.
  await a.unsubscribe("strict", { topics: ["bad1"] });
  strict.publish(JSON.stringify({ stream: "good1", data: { n: 3 } }));
  const third = await nextEvent();
  assert.deepEqual(seen([third]), [["good1", 3]]);
  await a.unsubscribe("strict", { topics: ["good1"] });
  await assert.rejects(a.unsubscribe("strict"), (err) => err.code === "not_subscribed");
  await a.subscribe("strict", { topics: ["good1"] }); // no callback now
  const state = await a.nextEvent({ timeout: TIMEOUT });
  assert.equal(state.type, "state");
  assert.equal(state.endpoint, "strict");
  assert.ok(got.every((e) => e.type === "state"));
});
