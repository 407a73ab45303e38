// End to end against a real `wsmuxd --demo`: its built-in upstream sends a tick every 500 ms
// and echoes text as {"type":"echo","data":...} (binary unchanged).

import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";

import { ConnectionClosedError, DaemonUnavailableError, WsmuxError, connect } from "../src/index.js";
import { startDaemon } from "../testlib/daemon.js";

const TIMEOUT = 10000;
let daemon;

beforeEach(async () => {
  daemon = await startDaemon();
});

afterEach(async () => {
  await daemon?.stop();
});

const isText = (event) => event.type === "message" && typeof event.data === "string";
const json = (event) => JSON.parse(event.data);

test("subscribe, ticks, send and echo, status, ping, shutdown without reconnect", async () => {
  const client = await connect({ socket: daemon.socket, clientName: "node-test", reconnect: false });
  assert.deepEqual(client.endpoints, ["demo"]);
  const states = [];
  client.on("state", (event) => states.push(event.state));

  await client.subscribe("demo");
  const first = await client.nextEvent({ timeout: TIMEOUT });
  assert.equal(first.type, "state");
  assert.equal(first.endpoint, "demo");
  if (first.state !== "open") await client.waitForState("demo", "open", { timeout: TIMEOUT });

  const ticks = [];
  for await (const event of client.events({ timeout: TIMEOUT })) {
    if (isText(event) && json(event).type === "tick") ticks.push(event);
    if (ticks.length === 2) break;
  }
  assert.equal(ticks[1].seq, ticks[0].seq + 1);
  assert.equal(ticks[1].missed, 0);

  const ack = await client.send("demo", "hello from node ✓");
  assert.equal(ack.type, "ack");
  await client.send("demo", Buffer.from([0, 1, 255]));
  let echoText;
  let echoBin;
  for await (const event of client.events({ timeout: TIMEOUT })) {
    if (event.type === "message" && event.data instanceof Uint8Array) echoBin = event.data;
    else if (isText(event) && json(event).type === "echo") echoText = json(event);
    if (echoText && echoBin) break;
  }
  assert.deepEqual(echoText, { type: "echo", data: "hello from node ✓" });
  assert.deepEqual([...echoBin], [0, 1, 255]);

  await assert.rejects(client.send("nope", "x"), (err) => {
    assert.ok(err instanceof WsmuxError);
    assert.equal(err.code, "unknown_endpoint");
    assert.equal(err.fatal, false);
    return true;
  });

  const [status] = await client.status();
  assert.equal(status.name, "demo");
  assert.equal(status.state, "open");
  assert.equal(status.subscribers, 1);
  assert.ok(status.messages_out >= 2);
  assert.ok((await client.ping()) >= 0);

  assert.equal(await daemon.terminate(), 0);
  let last;
  for await (const event of client.events({ timeout: TIMEOUT })) {
    if (event.type === "state") last = event;
  }
  assert.equal(last?.state, "closed");
  assert.equal(last.reason, "daemon shutting down");
  assert.equal(states.at(-1), "closed");
  assert.ok(client.closed);
  await assert.rejects(client.ping(), ConnectionClosedError);
  await client.close();
});

test("callbacks, default socket discovery and unsubscribe", async () => {
  const saved = process.env.WSMUX_SOCKET;
  process.env.WSMUX_SOCKET = daemon.socket;
  let client;
  try {
    client = await connect();
  } finally {
    if (saved === undefined) delete process.env.WSMUX_SOCKET;
    else process.env.WSMUX_SOCKET = saved;
  }
  const got = [];
  let sent = false;
  const echoed = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no echo; got ${JSON.stringify(got)}`)), TIMEOUT);
    client.subscribe("demo", async (event) => {
      got.push(event);
      if (event.type === "state" && event.state === "open" && !sent) {
        sent = true;
        await client.send("demo", "from a callback");
      }
      if (isText(event) && json(event).type === "echo") {
        clearTimeout(timer);
        resolve(json(event));
      }
    });
  });
  assert.deepEqual(await echoed, { type: "echo", data: "from a callback" });
  assert.equal(got[0].type, "state");
  await client.unsubscribe("demo");
  const count = got.length;
  await client.ping();
  await new Promise((r) => setTimeout(r, 600)); // longer than one tick
  assert.equal(got.length, count);
  await client.close();
  assert.ok(client.closed);
});

test("a missing socket fails with a clear error", async () => {
  await assert.rejects(connect({ socket: `${daemon.dir}/none.sock` }), (err) => {
    assert.ok(err instanceof DaemonUnavailableError);
    assert.match(err.message, /none\.sock/);
    return true;
  });
});
