// A squatted socket path must not impersonate the daemon. Node has no peer-credential call, so
// the client checks the socket file: not a symlink, owned by this user, root or the expected
// uid, in a directory owned by one of them that strangers cannot write to (PROTOCOL.md 2.3).
// The fake daemons run as other uids (child processes with `uid`/`gid`); so do the clients that
// must not be root, from a copy of this package they can read. Needs Linux and root, as in CI.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";

import { UntrustedDaemonError, connect } from "../src/index.js";
import { PACKAGE_DIR, VECTORS_DIR } from "../testlib/daemon.js";

const SQUATTER = 65534;
const USER = 65533;
const skip = process.platform !== "linux" || process.geteuid?.() !== 0 ? "needs Linux and root" : false;
const WELCOME_HEX = fs.readFileSync(path.join(VECTORS_DIR, "welcome.bin")).toString("hex");

// A fake daemon: answers whatever it reads first with the golden `welcome` frame.
const LISTENER = `
const net = require("node:net");
const fs = require("node:fs");
const welcome = Buffer.from(process.env.WELCOME_HEX, "hex");
const server = net.createServer((c) => {
  c.once("data", () => c.end(welcome));
  c.on("error", () => {});
});
server.listen(process.env.SOCKET_PATH, () => {
  fs.chmodSync(process.env.SOCKET_PATH, 0o666);
  process.stdout.write("ready\\n");
});
setTimeout(() => process.exit(0), 60000).unref();
`;

const children = [];
let shared;
let copy;

function startListener(socketPath, uid) {
  const ids = uid === undefined ? {} : { uid, gid: uid };
  const child = spawn(process.execPath, ["-e", LISTENER], {
    ...ids,
    env: { WELCOME_HEX, SOCKET_PATH: socketPath },
    stdio: ["ignore", "pipe", "inherit"],
  });
  children.push(child);
  return new Promise((resolve, reject) => {
    child.stdout.once("data", () => resolve(socketPath));
    child.once("exit", (code) => reject(new Error(`listener exited with ${code}`)));
  });
}

/** Connects from a child process running as `uid`; resolves with its exit code and stderr. */
function connectAs(uid, socketPath, daemonUid) {
  const code = `
    import { connect } from ${JSON.stringify(path.join(copy, "src", "index.js"))};
    try {
      const c = await connect({ socket: ${JSON.stringify(socketPath)}, daemonUid: ${daemonUid ?? "undefined"}, timeout: 5000 });
      await c.close();
      process.exit(0);
    } catch (err) {
      process.stderr.write(err.message);
      process.exit(err.code === "ERR_WSMUX_UNTRUSTED" ? 3 : 1);
    }`;
  const child = spawn(process.execPath, ["--input-type=module", "-e", code], {
    uid,
    gid: uid,
    env: {},
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  return new Promise((resolve) => child.once("exit", (status) => resolve({ status, stderr })));
}

before(async () => {
  if (skip) return;
  // Like /tmp: anyone may create a socket here, nobody can remove another's.
  shared = fs.mkdtempSync(path.join(os.tmpdir(), "wsmux-node-peer-"));
  fs.chmodSync(shared, 0o1777);
  copy = fs.mkdtempSync(path.join(os.tmpdir(), "wsmux-node-copy-"));
  fs.cpSync(path.join(PACKAGE_DIR, "src"), path.join(copy, "src"), { recursive: true });
  fs.cpSync(path.join(PACKAGE_DIR, "package.json"), path.join(copy, "package.json"));
  fs.cpSync(path.join(PACKAGE_DIR, "node_modules"), path.join(copy, "node_modules"), { recursive: true });
  fs.chmodSync(copy, 0o755);
  await Promise.all([
    startListener(path.join(shared, "squatter.sock"), SQUATTER),
    startListener(path.join(shared, "user.sock"), USER),
    startListener(path.join(shared, "root.sock")),
  ]);
});

after(() => {
  for (const child of children) child.kill("SIGKILL");
  if (shared) fs.rmSync(shared, { recursive: true, force: true });
  if (copy) fs.rmSync(copy, { recursive: true, force: true });
});

test("a client refuses a socket that belongs to another user", { skip }, async () => {
  const socketPath = path.join(shared, "squatter.sock");
  const { status, stderr } = await connectAs(USER, socketPath);
  assert.equal(status, 3, stderr);
  assert.match(stderr, new RegExp(`uid ${SQUATTER}`));
  assert.ok(stderr.includes(socketPath), stderr);
});

test("a root client refuses it too, with a distinct error", { skip }, async () => {
  await assert.rejects(connect({ socket: path.join(shared, "squatter.sock") }), (err) => {
    assert.ok(err instanceof UntrustedDaemonError);
    assert.equal(err.code, "ERR_WSMUX_UNTRUSTED");
    assert.equal(err.uid, SQUATTER);
    return true;
  });
});

test("a client trusts its own user, root, and the uid it names", { skip }, async () => {
  for (const [name, daemonUid] of [["user.sock"], ["root.sock"], ["squatter.sock", SQUATTER]]) {
    const { status, stderr } = await connectAs(USER, path.join(shared, name), daemonUid);
    assert.equal(status, 0, `${name}: ${stderr}`);
  }
});

test("a symbolic link to a socket is refused", { skip }, async () => {
  const link = path.join(shared, "link.sock");
  fs.symlinkSync(path.join(shared, "root.sock"), link);
  await assert.rejects(connect({ socket: link }), /symbolic link/);
});

test("a socket in a directory everyone can write to is refused", { skip }, async () => {
  const open = fs.mkdtempSync(path.join(os.tmpdir(), "wsmux-node-open-"));
  try {
    fs.chmodSync(open, 0o777);
    const socketPath = await startListener(path.join(open, "s.sock"));
    await assert.rejects(connect({ socket: socketPath }), /writable by everyone and not sticky/);
  } finally {
    fs.rmSync(open, { recursive: true, force: true });
  }
});
