// Test helper: an upstream WebSocket server (the `ws` package) that produces a numbered
// stream at a steady rate. It runs in a worker thread, so it keeps producing while the test's
// own thread is blocked (a client that stops reading).

import { createRequire } from "node:module";
import { Worker } from "node:worker_threads";

const WORKER = `
const { parentPort } = require("node:worker_threads");
const { WebSocket, WebSocketServer } = require(process.env.WSMUX_WS_MODULE);
const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
wss.on("listening", () => parentPort.postMessage({ port: wss.address().port }));
wss.on("connection", (ws) => {
  ws.on("error", () => {});
  parentPort.postMessage({ connected: wss.clients.size });
});
parentPort.on("message", ({ count, batch, every, size }) => {
  const pad = "x".repeat(size);
  let n = 0;
  const timer = setInterval(() => {
    for (let i = 0; i < batch && n < count; i++, n++) {
      const text = JSON.stringify({ n, pad });
      for (const ws of wss.clients) if (ws.readyState === WebSocket.OPEN) ws.send(text);
    }
    if (n === count) {
      clearInterval(timer);
      parentPort.postMessage({ done: n });
    }
  }, every);
});
`;

/**
 * Starts the producer; resolves with `{url, waitConnected(ms), produce({count, batch, every,
 * size}), close()}`. `produce` sends `count` text messages `{"n": 0..count-1, "pad": ...}` to
 * every connection, `batch` of them every `every` ms, and resolves once all are sent.
 */
export async function startProducer() {
  const wsModule = createRequire(import.meta.url).resolve("ws");
  const worker = new Worker(WORKER, { eval: true, env: { ...process.env, WSMUX_WS_MODULE: wsModule } });
  const listeners = new Set();
  let connections = 0;
  worker.on("message", (msg) => {
    if (msg.connected !== undefined) connections = msg.connected;
    for (const listener of listeners) listener(msg);
  });
  const next = (predicate, ms, what) =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        listeners.delete(listener);
        reject(new Error(`the producer never reported ${what} within ${ms} ms`));
      }, ms);
      const listener = (msg) => {
        if (!predicate(msg)) return;
        clearTimeout(timer);
        listeners.delete(listener);
        resolve(msg);
      };
      listeners.add(listener);
    });
  const { port } = await next((msg) => msg.port !== undefined, 10000, "its port");
  return {
    url: `ws://127.0.0.1:${port}/`,
    waitConnected: (ms) => (connections > 0 ? Promise.resolve() : next((msg) => msg.connected > 0, ms, "a connection")),
    produce(options) {
      const done = next((msg) => msg.done !== undefined, 60000, "the end of the stream");
      worker.postMessage(options);
      return done;
    },
    close: () => worker.terminate(),
  };
}
