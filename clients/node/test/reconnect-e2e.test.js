// The client reconnects by itself, against real wsmuxd processes with a real upstream (a `ws`
// server in this process, or in a worker thread for the slow-reader case): a daemon restart,
// a connection killed by a Unix-socket proxy while the daemon stays up, `reconnect: false`,
// sends while disconnected, and the automatic resume after `lagged`.

import assert from "node:assert/strict";
import { once } from "node:events";
import path from "node:path";
import { afterEach, test } from "node:test";

import { ConnectionClosedError, LimitError, NotConnectedError, TimeoutError, connect } from "../src/index.js";
import { startDaemon } from "../testlib/daemon.js";
import { startProducer } from "../testlib/producer.js";
import { startProxy } from "../testlib/proxy.js";
import { startUpstream } from "../testlib/upstream.js";

const TIMEOUT = 10000;

const config = (url, top = "") => `
${top}
[endpoints.feed]
url = "${url}"
reconnect = { initial_delay = "100ms" }
`;

// Everything a test starts, stopped after it whatever happened.
const cleanups = [];
const later = (fn) => cleanups.push(fn);
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

async function setUp() {
  const upstream = await startUpstream();
  later(() => upstream.close());
  const daemon = await startDaemon({ config: config(upstream.url) });
  later(() => daemon.stop());
  await upstream.waitConnected(TIMEOUT);
  return { upstream, daemon };
}

async function client(options) {
  const c = await connect({ timeout: TIMEOUT, requestTimeout: TIMEOUT, ...options });
  later(() => c.close());
  return c;
}

/** Resolves once `predicate()` holds, checked every 5 ms, or fails after `ms`. */
async function until(predicate, what, ms = TIMEOUT) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function deadline(promise, what, ms = TIMEOUT) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

test("daemon restart: disconnected, then reconnected with a new epoch; messages and sticky sends come back", async () => {
  const { upstream, daemon } = await setUp();
  const c = await client({ socket: daemon.socket });
  const firstEpoch = c.epoch;
  assert.equal(typeof firstEpoch, "string");
  await c.subscribe("feed");
  await c.waitForState("feed", "open", { timeout: TIMEOUT });
  await c.send("feed", "sub:book", { sticky: true, undo: "unsub:book" });
  await upstream.waitFor((r) => r.includes("sub:book"), TIMEOUT, "the sticky message");
  const before = upstream.received.length;

  assert.equal(await daemon.terminate(), 0);
  const listening = await daemon.start();
  const seen = [];
  let reconnected;
  for await (const event of c.events({ timeout: TIMEOUT })) {
    seen.push(event.type);
    if (event.type === "reconnected") {
      reconnected = event;
      break;
    }
  }
  const took = performance.now() - listening;
  console.log(`# reconnected ${took.toFixed(0)} ms after the new daemon listened`);
  assert.ok(took < TIMEOUT, `${took} ms`);
  assert.ok(seen.indexOf("disconnected") >= 0 && seen.indexOf("disconnected") < seen.indexOf("reconnected"), `${seen}`);
  assert.equal(reconnected.new_epoch, true);
  assert.equal(reconnected.recovered, false);
  assert.equal(reconnected.epoch, c.epoch);
  assert.notEqual(c.epoch, firstEpoch);
  assert.deepEqual(
    reconnected.endpoints.map((e) => [e.endpoint, e.recovered, e.error]),
    [["feed", false, undefined]],
  );
  assert.ok(!c.closed && c.connected);

  // The sticky message reached the new daemon's upstream connection; then messages flow.
  await upstream.waitFor((r) => r.slice(before).includes("sub:book"), TIMEOUT, "the sticky message again");
  upstream.publish("after the restart");
  for await (const event of c.events({ timeout: TIMEOUT })) {
    if (event.type === "message" && event.data === "after the restart") break;
  }
  assert.ok((await c.ping()) >= 0);
});

test("connection killed, daemon alive: the client resumes, and sees every seq once, in order", async () => {
  const { upstream, daemon } = await setUp();
  const proxy = await startProxy(path.join(daemon.dir, "proxy.sock"), daemon.socket);
  later(() => proxy.close());
  const c = await client({ socket: proxy.socket });
  const messages = [];
  let open = false;
  await c.subscribe("feed", (event) => {
    if (event.type === "message") messages.push(event);
    if (event.type === "state" && event.state === "open") open = true;
  });
  await until(() => open, "the endpoint to be open");
  const reconnected = once(c, "reconnected");
  let published = 0;
  const producing = setInterval(() => {
    for (let i = 0; i < 5; i++) upstream.publish(String(published++));
  }, 2);
  later(() => clearInterval(producing));

  await until(() => messages.length >= 100, "100 messages");
  proxy.kill();
  const [event] = await deadline(reconnected, "reconnected");
  const after = messages.length;
  await until(() => messages.length >= after + 100, "100 more messages");
  clearInterval(producing);
  await until(() => messages.at(-1)?.seq === published, `seq ${published}`);

  assert.equal(proxy.accepted, 2);
  assert.deepEqual(event.endpoints, [{ endpoint: "feed", recovered: true, first_seq: event.endpoints[0].first_seq }]);
  assert.equal(event.recovered, true);
  assert.equal(event.new_epoch, false);
  assert.deepEqual(
    messages.map((m) => m.seq),
    range(1, published),
  );
  assert.ok(messages.every((m) => m.data === String(m.seq - 1) && m.missed === 0));
});

test("reconnect: false keeps the old behaviour: the client closes and requests fail", async () => {
  const { daemon } = await setUp();
  const proxy = await startProxy(path.join(daemon.dir, "proxy.sock"), daemon.socket);
  later(() => proxy.close());
  const c = await client({ socket: proxy.socket, reconnect: false });
  await c.subscribe("feed");
  const types = [];
  c.on("event", (event) => types.push(event.type));
  proxy.kill();
  const reason = await deadline(c.waitClosed(), "the client to close");
  assert.ok(reason instanceof ConnectionClosedError);
  assert.ok(c.closed && !c.connected);
  for (const call of [() => c.ping(), () => c.send("feed", "x"), () => c.subscribe("feed")]) {
    await assert.rejects(call(), (err) => err instanceof ConnectionClosedError && /connection to the daemon ended/.test(err.message));
  }
  for await (const event of c.events({ timeout: TIMEOUT })) types.push(event.type);
  assert.ok(!types.includes("disconnected"), `${types}`);
  assert.equal(proxy.accepted, 1);
});

test("sends while disconnected: buffered ones arrive after the restart; fail and a full buffer fail at once", async () => {
  const { upstream, daemon } = await setUp();
  const buffering = await client({ socket: daemon.socket, bufferMessages: 2 });
  const failing = await client({ socket: daemon.socket, whenDisconnected: "fail" });
  const down = Promise.all([once(buffering, "disconnected"), once(failing, "disconnected")]);
  await daemon.terminate();
  await deadline(down, "disconnected");

  // Waited too long: fails, and is never written.
  await assert.rejects(buffering.send("feed", "expired", { timeout: 20 }), TimeoutError);
  const first = buffering.send("feed", "buffered 1");
  const second = buffering.send("feed", "buffered 2");
  await assert.rejects(buffering.send("feed", "over the bound"), (err) => {
    assert.ok(err instanceof LimitError, err);
    assert.equal(err.limit, "bufferMessages");
    assert.match(err.message, /bufferMessages allows \(2\)/);
    return true;
  });
  await assert.rejects(failing.send("feed", "refused"), (err) => {
    assert.ok(err instanceof NotConnectedError, err);
    assert.match(err.message, /not connected to the daemon/);
    return true;
  });
  assert.ok(!buffering.connected && !failing.connected);

  await daemon.start();
  for (const ack of await deadline(Promise.all([first, second]), "the buffered sends")) assert.equal(ack.type, "ack");
  const received = await upstream.waitFor(
    (r) => r.includes("buffered 1") && r.includes("buffered 2"),
    TIMEOUT,
    "the buffered sends",
  );
  assert.ok(received.indexOf("buffered 1") < received.indexOf("buffered 2"));
  for (const text of ["expired", "over the bound", "refused"]) assert.ok(!received.includes(text), text);
});

test("lagged: a subscriber that stopped reading resumes by itself and sees every seq once, in order", async () => {
  const producer = await startProducer();
  later(() => producer.close());
  const top = "client_queue_messages = 16";
  const daemon = await startDaemon({ config: config(producer.url, top) });
  later(() => daemon.stop());
  await producer.waitConnected(TIMEOUT);
  const c = await client({ socket: daemon.socket });
  const seqs = [];
  const resumed = [];
  let lagged = 0;
  let open = false;
  let blocked = false;
  await c.subscribe("feed", (event) => {
    if (event.type === "state" && event.state === "open") open = true;
    if (event.type === "lagged") lagged += 1;
    if (event.type === "resumed") resumed.push(event);
    if (event.type !== "message") return;
    seqs.push(event.seq);
    if (!blocked) {
      // The application stops reading for a while (the thread is blocked; the producer runs
      // in its own): the daemon's queue for this client overflows.
      blocked = true;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 500);
    }
  });
  await until(() => open, "the endpoint to be open");
  const count = 3000;
  await producer.produce({ count, batch: 5, every: 2, size: 1024 });
  await until(() => seqs.length >= count, `${count} messages (got ${seqs.length})`);

  assert.ok(lagged >= 1, "the daemon reported lagged");
  assert.ok(resumed.length >= 1 && resumed.every((e) => e.recovered), JSON.stringify(resumed));
  assert.deepEqual(seqs, range(1, count));
});
