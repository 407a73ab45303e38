// Test helpers: the golden vectors of proto/vectors and a real `wsmuxd` process (`--demo`,
// or a configuration given as text).

import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const PACKAGE_DIR = path.resolve(here, "..");
export const REPO_ROOT = path.resolve(PACKAGE_DIR, "..", "..");
export const VECTORS_DIR = path.join(REPO_ROOT, "proto", "vectors");

export function loadVectors() {
  return JSON.parse(fs.readFileSync(path.join(VECTORS_DIR, "vectors.json"), "utf8")).cases;
}

/** vectors.json form -> JavaScript values: {"$bin": hex} becomes a Uint8Array. */
export function fromJson(value) {
  if (Array.isArray(value)) return value.map(fromJson);
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === "$bin") return new Uint8Array(Buffer.from(value.$bin, "hex"));
    return Object.fromEntries(keys.map((k) => [k, fromJson(value[k])]));
  }
  return value;
}

/** $WSMUX_DAEMON_BIN, else target/debug/wsmuxd of this repository (../../ from the package). */
export function daemonBinary() {
  const bin = process.env.WSMUX_DAEMON_BIN || path.join(PACKAGE_DIR, "..", "..", "target", "debug", "wsmuxd");
  try {
    fs.accessSync(bin, fs.constants.X_OK);
  } catch {
    throw new Error(
      `the wsmuxd binary was not found at ${path.resolve(bin)}: build it with ` +
        "`cargo build -p wsmuxd` at the repository root, or set WSMUX_DAEMON_BIN to its path",
    );
  }
  return bin;
}

function canConnect(socketPath) {
  return new Promise((resolve) => {
    const probe = net.createConnection({ path: socketPath });
    probe.once("connect", () => {
      probe.destroy();
      resolve(true);
    });
    probe.once("error", () => resolve(false));
  });
}

/**
 * Starts `wsmuxd --demo --socket <tmpdir>/s.sock`, or with `config` (TOML text) `wsmuxd
 * --config <tmpdir>/wsmux.toml --socket <tmpdir>/s.sock`, and waits until it listens.
 * `terminate()` stops it with SIGTERM, `start()` starts a new one on the same socket.
 */
export async function startDaemon({ config } = {}) {
  const bin = daemonBinary();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "wsmux-node-"));
  const socket = path.join(dir, "s.sock");
  const env = { ...process.env };
  delete env.WSMUX_SOCKET;
  delete env.WSMUX_CONFIG;
  let mode = ["--demo"];
  if (config !== undefined) {
    const configPath = path.join(dir, "wsmux.toml");
    fs.writeFileSync(configPath, config);
    mode = ["--config", configPath];
  }
  let log = "";
  let child;
  let exited;
  const running = () => child.exitCode === null && child.signalCode === null;
  const daemon = {
    socket,
    dir,
    get child() {
      return child;
    },
    log: () => log,
    /** Starts a daemon (again) and resolves with `performance.now()` once it listens. */
    async start() {
      child = spawn(bin, [...mode, "--socket", socket], { env, stdio: ["ignore", "pipe", "pipe"] });
      child.stdout.on("data", (d) => (log += d));
      child.stderr.on("data", (d) => (log += d));
      exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
      const deadline = Date.now() + 15000;
      while (Date.now() < deadline) {
        if (!running()) throw new Error(`wsmuxd exited with ${child.exitCode}:\n${log}`);
        if (fs.existsSync(socket) && (await canConnect(socket))) return performance.now();
        await new Promise((r) => setTimeout(r, 20));
      }
      throw new Error(`wsmuxd did not listen on ${socket} within 15 s:\n${log}`);
    },
    /** Sends SIGTERM and resolves with the exit code. */
    async terminate() {
      if (running()) child.kill("SIGTERM");
      return (await exited).code;
    },
    async stop() {
      if (child && running()) child.kill("SIGKILL");
      await exited;
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await daemon.start();
  } catch (err) {
    await daemon.stop();
    throw err;
  }
  return daemon;
}
