// The wire format of PROTOCOL.md, without any I/O.
//
// A frame is a 4-byte unsigned big-endian length N followed by N bytes holding exactly one
// MessagePack map with string keys and a string `type`. A MessagePack `str` is a JavaScript
// string (a WebSocket text message), a `bin` is a Uint8Array (a binary message).

import path from "node:path";
import { decode, encode } from "@msgpack/msgpack";

/** The protocol version this package speaks (`hello.version`). */
export const PROTOCOL_VERSION = 1;

/** The daemon's default `server.max_frame_size`: 16 MiB. */
export const DEFAULT_MAX_FRAME = 16 * 1024 * 1024;

/** Length of the frame header. */
export const HEADER_LEN = 4;

/** Error codes after which the daemon closes the connection (PROTOCOL.md section 11). */
export const FATAL_CODES = new Set([
  "frame_too_large",
  "bad_frame",
  "hello_required",
  "unsupported_version",
  "too_many_clients",
  "permission_denied",
  "lagged",
  "timeout",
]);

/**
 * Every error code of PROTOCOL.md section 11 this package knows. Daemons may send others
 * (treat them as generic failures); only `FATAL_CODES` end the connection. The topic codes:
 * `topic_rejected` (an event: the upstream refused a topic), `invalid_topic`,
 * `too_many_topics` and `topics_unsupported` (replies to `subscribe`).
 */
export const ERROR_CODES = new Set([
  "frame_too_large",
  "bad_frame",
  "invalid_msgpack",
  "not_a_map",
  "missing_type",
  "unknown_type",
  "invalid_message",
  "invalid_data",
  "hello_required",
  "unsupported_version",
  "already_greeted",
  "unknown_endpoint",
  "not_connected",
  "too_large",
  "not_subscribed",
  "too_many_subscriptions",
  "queue_full",
  "overflowed",
  "expired",
  "lagged",
  "too_many_clients",
  "permission_denied",
  "shutting_down",
  "send_failed",
  "fatal",
  "invalid_config",
  "unsupported",
  "internal",
  "sticky_full",
  "busy",
  "timeout",
  "topic_rejected",
  "invalid_topic",
  "too_many_topics",
  "topics_unsupported",
]);

/**
 * Checks the `topics` option of `subscribe`/`unsubscribe`: undefined/null, or an iterable of
 * strings that is not itself a string; returns it as an array. Only the types are checked; the
 * daemon checks the limits (empty topics, length, shape, count).
 */
export function topicList(topics) {
  if (topics === undefined || topics === null) return undefined;
  if (typeof topics === "string" || typeof topics[Symbol.iterator] !== "function") {
    throw new TypeError(`topics must be an array of strings, such as ["btcusdt@trade"], not ${describe(topics)}`);
  }
  const out = [...topics];
  for (const topic of out) {
    if (typeof topic !== "string") throw new TypeError(`every topic must be a string, not ${describe(topic)}`);
  }
  return out;
}

/**
 * The fields of a `subscribe` in wire order: `endpoint`, `topics`, `since`, `epoch` (absent
 * ones left out). `since` is the last seq processed (a non-negative integer); `epoch` the
 * `welcome.epoch` it belongs to, only with `since` (PROTOCOL.md section 19.3).
 */
export function subscribeFields(endpoint, topics, since, epoch) {
  if (since !== undefined && since !== null && !(Number.isSafeInteger(since) && since >= 0)) {
    throw new TypeError(`since must be a seq (a non-negative integer), not ${describe(since)}`);
  }
  if (epoch !== undefined && epoch !== null) {
    if (typeof epoch !== "string") throw new TypeError(`epoch must be a string (a welcome's epoch), not ${describe(epoch)}`);
    if (since === undefined || since === null) throw new TypeError("epoch is only meaningful with since");
  }
  return { endpoint, topics, since: since ?? undefined, epoch: epoch ?? undefined };
}

function describe(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeof value === "object" ? (value.constructor?.name ?? "an object") : `a ${typeof value}`;
}

/** Frame types that answer a request; they carry the request's `id` when it had one. */
export const REPLY_TYPES = new Set(["ack", "error", "status", "pong"]);

/** The daemon sent bytes that are not a valid frame. */
export class ProtocolError extends Error {
  constructor(message) {
    super(message);
    this.name = "ProtocolError";
    this.code = "ERR_WSMUX_PROTOCOL";
  }
}

/**
 * Builds a request map: `type` first, then `id`, then the other fields; fields whose value is
 * undefined or null are left out (absent optional fields are omitted, PROTOCOL.md section 4).
 */
export function request(type, id, fields = {}) {
  const msg = { type };
  if (id !== undefined && id !== null) msg.id = id;
  for (const [key, value] of Object.entries(fields)) {
    if (value !== undefined && value !== null) msg[key] = value;
  }
  return msg;
}

/**
 * Encodes one message as a whole frame (header included) and returns a Buffer.
 * Strings become MessagePack `str`, Uint8Array (and Buffer) `bin`.
 */
export function encodeFrame(msg, maxFrame = DEFAULT_MAX_FRAME) {
  const clean = {};
  for (const [key, value] of Object.entries(msg)) {
    if (value !== undefined && value !== null) clean[key] = value;
  }
  const body = encode(clean);
  if (body.length > maxFrame) {
    throw new RangeError(`frame body of ${body.length} bytes exceeds the maximum of ${maxFrame}`);
  }
  const frame = Buffer.allocUnsafe(HEADER_LEN + body.length);
  frame.writeUInt32BE(body.length, 0);
  frame.set(body, HEADER_LEN);
  return frame;
}

/** Decodes one frame body: exactly one MessagePack map with a string `type`. */
export function decodeBody(body) {
  let value;
  try {
    value = decode(body); // throws on bytes after the first value, as the protocol does
  } catch (err) {
    throw new ProtocolError(`invalid MessagePack in a frame body: ${err.message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value) || value instanceof Uint8Array) {
    throw new ProtocolError("the frame body is not a MessagePack map");
  }
  if (typeof value.type !== "string") {
    throw new ProtocolError("the frame has no string `type`");
  }
  return value;
}

/** Decodes exactly one whole frame (header included). */
export function decodeFrame(frame, maxFrame = DEFAULT_MAX_FRAME) {
  const decoder = new FrameDecoder(maxFrame);
  const msgs = decoder.push(frame);
  if (msgs.length !== 1 || decoder.buffered !== 0) {
    throw new ProtocolError("the bytes are not exactly one frame");
  }
  return msgs[0];
}

/**
 * Cuts frames out of a byte stream that arrives in arbitrary pieces. `push(chunk)` returns the
 * messages completed by that chunk (possibly none, possibly several); with `sizes` (an array),
 * it also appends each one's frame length (header included) to it.
 */
export class FrameDecoder {
  constructor(maxFrame = DEFAULT_MAX_FRAME) {
    this.maxFrame = maxFrame;
    this.chunks = [];
    this.buffered = 0;
  }

  push(chunk, sizes) {
    if (chunk.length > 0) {
      this.chunks.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length));
      this.buffered += chunk.length;
    }
    const out = [];
    for (;;) {
      if (this.buffered < HEADER_LEN) break;
      const header = this.#peek(HEADER_LEN);
      const length = header.readUInt32BE(0);
      // Checked before the body arrives: no amount of input can fix a bad length.
      if (length > this.maxFrame) {
        throw new ProtocolError(`frame length ${length} exceeds the maximum of ${this.maxFrame} bytes`);
      }
      if (this.buffered < HEADER_LEN + length) break;
      const frame = this.#take(HEADER_LEN + length);
      out.push(decodeBody(frame.subarray(HEADER_LEN)));
      sizes?.push(frame.length);
    }
    return out;
  }

  #peek(n) {
    if (this.chunks[0].length >= n) return this.chunks[0];
    this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0];
  }

  #take(n) {
    const first = this.#peek(n);
    const taken = first.subarray(0, n);
    if (first.length === n) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    this.buffered -= n;
    return taken;
  }
}

/**
 * Where the daemon listens by default, as PROTOCOL.md section 2.1 describes: `$WSMUX_SOCKET`
 * if set and not empty; on Unix `$XDG_RUNTIME_DIR/wsmux/wsmuxd.sock` if `XDG_RUNTIME_DIR` is
 * absolute, else `<tmp>/wsmux-<uid>/wsmuxd.sock` with `<tmp>` = `$TMPDIR` or `/tmp`; on
 * Windows `\\.\pipe\wsmuxd-<USERNAME>`.
 */
export function defaultSocketPath(env = process.env, platform = process.platform) {
  if (env.WSMUX_SOCKET) return env.WSMUX_SOCKET;
  if (platform === "win32") return `\\\\.\\pipe\\wsmuxd-${env.USERNAME || "default"}`;
  const runtimeDir = env.XDG_RUNTIME_DIR;
  if (runtimeDir && path.posix.isAbsolute(runtimeDir)) {
    return path.posix.join(runtimeDir, "wsmux", "wsmuxd.sock");
  }
  // The daemon uses Rust's std::env::temp_dir(): $TMPDIR, else /tmp (not os.tmpdir()).
  const tempDir = env.TMPDIR || "/tmp";
  return path.posix.join(tempDir, `wsmux-${process.geteuid()}`, "wsmuxd.sock");
}
