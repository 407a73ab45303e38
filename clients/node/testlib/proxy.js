// Test helper: a Unix-socket proxy between a client and the daemon. It accepts on its own
// path, connects each client to the daemon's path and copies bytes both ways; `kill()`
// closes every connection pair at once (the daemon stays up), as a real fault would.

import fs from "node:fs";
import net from "node:net";

export async function startProxy(listenPath, targetPath) {
  const pairs = new Set();
  let accepted = 0;
  const server = net.createServer((client) => {
    accepted += 1;
    const daemon = net.createConnection({ path: targetPath });
    const pair = { client, daemon };
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      daemon.destroy();
    };
    for (const sock of [client, daemon]) {
      sock.on("error", end);
      sock.on("close", end);
    }
    client.pipe(daemon);
    daemon.pipe(client);
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(listenPath, resolve);
  });
  return {
    socket: listenPath,
    /** Connections accepted so far. */
    get accepted() {
      return accepted;
    },
    /** Closes every connection pair now. */
    kill() {
      for (const { client, daemon } of pairs) {
        client.destroy();
        daemon.destroy();
      }
      pairs.clear();
    },
    close() {
      this.kill();
      return new Promise((resolve) => server.close(() => resolve(fs.rmSync(listenPath, { force: true }))));
    },
  };
}
