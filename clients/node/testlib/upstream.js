// Test helper: a WebSocket server on 127.0.0.1 (the `ws` package) as the daemon's upstream.
// It records every text message it receives and publishes text to every connection.

import { WebSocket, WebSocketServer } from "ws";

/**
 * Starts the server. `onText(reply, text)` is called for every text message after it is
 * recorded; `reply(text)` answers on that connection only.
 */
export async function startUpstream({ onText } = {}) {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, maxPayload: 1024 * 1024 });
  await new Promise((resolve, reject) => {
    wss.once("listening", resolve);
    wss.once("error", reject);
  });
  const received = [];
  let wakeUp = [];
  const notify = () => {
    const waiting = wakeUp;
    wakeUp = [];
    for (const wake of waiting) wake();
  };
  wss.on("connection", (ws) => {
    notify();
    ws.on("message", (data, isBinary) => {
      if (isBinary) return;
      const text = data.toString("utf8");
      received.push(text);
      notify();
      onText?.((answer) => ws.send(answer), text);
    });
    ws.on("error", () => {});
  });

  /** Resolves once `predicate()` holds, re-checked whenever something arrives. */
  async function until(predicate, ms, what) {
    const deadline = Date.now() + ms;
    while (!predicate()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`the upstream never saw ${what}; it received ${JSON.stringify(received)}`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        wakeUp.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  return {
    url: `ws://127.0.0.1:${wss.address().port}/`,
    /** The text messages received so far, in order. */
    received,
    publish(text) {
      for (const ws of wss.clients) if (ws.readyState === WebSocket.OPEN) ws.send(text);
    },
    /** Resolves with `received` once `predicate(received)` holds. */
    async waitFor(predicate, ms, what = "what was expected") {
      await until(() => predicate(received), ms, what);
      return [...received];
    },
    waitConnected(ms) {
      return until(() => wss.clients.size > 0, ms, "a connection");
    },
    close() {
      for (const ws of wss.clients) ws.terminate();
      return new Promise((resolve) => wss.close(resolve));
    },
  };
}
