// wsmux-client: a Node.js client for wsmuxd (see PROTOCOL.md in the wsmux repository).
//
//   import { connect } from "wsmux-client";
//
//   const client = await connect();                 // $WSMUX_SOCKET or the default socket
//   await client.subscribe("prices", (event) => console.log(event));
//   await client.send("prices", '{"op":"subscribe"}'); // resolves once written upstream
//   for await (const event of client.events()) { ... } // events without a callback
//
// Every frame is read as soon as it arrives; replies resolve the promise of their request
// (matched by id) and events go to the subscription's callback or to the `events()` queue.

import { EventEmitter } from "node:events";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";

import {
  DEFAULT_MAX_FRAME,
  ERROR_CODES,
  FATAL_CODES,
  FrameDecoder,
  PROTOCOL_VERSION,
  ProtocolError,
  REPLY_TYPES,
  decodeBody,
  decodeFrame,
  defaultSocketPath,
  encodeFrame,
  request,
  topicList,
} from "./protocol.js";

export {
  DEFAULT_MAX_FRAME,
  ERROR_CODES,
  FATAL_CODES,
  FrameDecoder,
  PROTOCOL_VERSION,
  ProtocolError,
  decodeBody,
  decodeFrame,
  defaultSocketPath,
  encodeFrame,
};

export const VERSION = "0.1.0";

/**
 * The daemon answered with an `error` frame. `code` is the stable, machine-readable code
 * (`not_connected`, `unknown_endpoint`, `invalid_topic`, ...; PROTOCOL.md section 11);
 * `endpoint` and `topic` are set when the frame names them.
 */
export class WsmuxError extends Error {
  constructor(code, message, { requestId, frame } = {}) {
    super(`${code}: ${message}`);
    this.name = "WsmuxError";
    this.code = code;
    this.daemonMessage = message;
    this.requestId = requestId;
    this.frame = frame;
    this.endpoint = typeof frame?.endpoint === "string" ? frame.endpoint : undefined;
    this.topic = typeof frame?.topic === "string" ? frame.topic : undefined;
  }

  static fromFrame(frame) {
    return new WsmuxError(String(frame.code), String(frame.message ?? ""), {
      requestId: frame.id,
      frame,
    });
  }

  /** Whether the daemon closes the connection after this error. */
  get fatal() {
    return FATAL_CODES.has(this.code);
  }
}

/** The connection to the daemon ended (daemon shutdown or restart, or `close()`). */
export class ConnectionClosedError extends Error {
  constructor(message) {
    super(message);
    this.name = "ConnectionClosedError";
    this.code = "ERR_WSMUX_CLOSED";
  }
}

/** No reply (or event) within the time allowed. */
export class TimeoutError extends Error {
  constructor(message) {
    super(message);
    this.name = "TimeoutError";
    this.code = "ERR_WSMUX_TIMEOUT";
  }
}

/** The daemon's socket could not be reached (not running, wrong path, no permission). */
export class DaemonUnavailableError extends Error {
  constructor(socketPath, cause) {
    super(
      `cannot connect to wsmuxd at ${socketPath}: ${cause.message} (is the daemon running? ` +
        "the path comes from the `socket` option, $WSMUX_SOCKET or the default location)",
      { cause },
    );
    this.name = "DaemonUnavailableError";
    this.code = "ERR_WSMUX_UNAVAILABLE";
    this.socketPath = socketPath;
  }
}

/** Environment variable naming one more uid the daemon may run as. */
export const DAEMON_UID_ENV = "WSMUX_DAEMON_UID";

/**
 * The socket path does not look like the daemon's: its file or directory belongs to another
 * user, or it is a symbolic link (someone may have taken the path). Nothing was sent to it.
 * `uid` is the owner found (when that is the reason), `socketPath` the path.
 */
export class UntrustedDaemonError extends Error {
  constructor(socketPath, { reason, uid, ownUid, expectedUid }) {
    const trusted = `this user (uid ${ownUid}) or root${expectedUid === undefined ? "" : ` or the expected uid ${expectedUid}`}`;
    super(
      `refusing ${socketPath}: ${reason}, not ${trusted}; another user may have taken the socket ` +
        `path (if the daemon deliberately runs as another user, name its uid with the ` +
        `\`daemonUid\` option or ${DAEMON_UID_ENV})`,
    );
    this.name = "UntrustedDaemonError";
    this.code = "ERR_WSMUX_UNTRUSTED";
    this.socketPath = socketPath;
    this.uid = uid;
  }
}

/** The extra trusted uid: the option, else $WSMUX_DAEMON_UID, else undefined. */
export function expectedDaemonUid(explicit) {
  if (explicit !== undefined && explicit !== null) {
    if (!Number.isSafeInteger(explicit) || explicit < 0) throw new TypeError("daemonUid must be a uid (a non-negative integer)");
    return explicit;
  }
  const text = (process.env[DAEMON_UID_ENV] ?? "").trim();
  if (text === "") return undefined;
  if (!/^[0-9]+$/.test(text)) {
    throw new TypeError(`${DAEMON_UID_ENV} must be a numeric user id, not ${JSON.stringify(text.slice(0, 40))}`);
  }
  return Number(text);
}

/**
 * What Node can check about who serves a Unix socket: it has no peer-credential call, so this
 * looks at the file instead (PROTOCOL.md section 2.3). The socket must not be a symbolic link
 * and must belong to this user, root or `expectedUid`; its directory (symbolic links resolved)
 * must belong to one of them too and must not be writable by everyone unless sticky, so nobody
 * else can put a socket there. Returns the file's identity (to compare after connecting), or
 * null when there is nothing to check (Windows; a missing file, which connect reports).
 */
export function checkSocketFile(socketPath, expectedUid) {
  if (process.platform === "win32" || typeof process.geteuid !== "function") return null;
  const ownUid = process.geteuid();
  const trusted = (uid) => uid === ownUid || uid === 0 || uid === expectedUid;
  const refuse = (reason, uid) => new UntrustedDaemonError(socketPath, { reason, uid, ownUid, expectedUid });
  let st;
  try {
    st = fs.lstatSync(socketPath);
  } catch {
    return null;
  }
  if (st.isSymbolicLink()) throw refuse("it is a symbolic link");
  if (!st.isSocket()) throw refuse("it is not a socket");
  if (!trusted(st.uid)) throw refuse(`the socket belongs to uid ${st.uid}`, st.uid);
  const dir = fs.realpathSync(path.dirname(path.resolve(socketPath)));
  const dst = fs.statSync(dir);
  if (!trusted(dst.uid)) throw refuse(`its directory ${dir} belongs to uid ${dst.uid}`, dst.uid);
  if ((dst.mode & 0o002) !== 0 && (dst.mode & 0o1000) === 0) {
    throw refuse(`its directory ${dir} is writable by everyone and not sticky`);
  }
  return { dev: st.dev, ino: st.ino };
}

function withTimeout(promise, ms, what) {
  if (ms === undefined || ms === null || ms === Infinity) return promise;
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`timed out: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Connects to the daemon, sends `hello` and waits for `welcome`.
 *
 * @param {object} [options]
 * @param {string} [options.socket] socket path (default: `defaultSocketPath()`)
 * @param {string} [options.clientName] name shown in the daemon's logs
 * @param {number} [options.timeout=10000] ms allowed for connecting and the handshake
 * @param {number} [options.requestTimeout=30000] default ms allowed for each reply
 * @param {number} [options.maxFrame] largest frame body accepted (default 16 MiB)
 * @param {number} [options.daemonUid] one more uid the daemon may run as (default
 *   `$WSMUX_DAEMON_UID`); otherwise the socket must belong to this user or root
 * @returns {Promise<Client>}
 */
export async function connect(options = {}) {
  const socketPath = options.socket || defaultSocketPath();
  const maxFrame = options.maxFrame ?? DEFAULT_MAX_FRAME;
  // Before connecting, and again once connected (the file must still be the same one).
  const expectedUid = expectedDaemonUid(options.daemonUid);
  const identity = checkSocketFile(socketPath, expectedUid);
  const sock = net.createConnection({ path: socketPath });
  const decoder = new FrameDecoder(maxFrame);
  const handshake = new Promise((resolve, reject) => {
    const onError = (err) => {
      cleanup();
      if (["ENOENT", "ECONNREFUSED", "EACCES", "ENOTDIR"].includes(err.code)) {
        reject(new DaemonUnavailableError(socketPath, err));
      } else {
        reject(err);
      }
    };
    const onData = (chunk) => {
      let msgs;
      try {
        msgs = decoder.push(chunk);
      } catch (err) {
        cleanup();
        reject(err);
        return;
      }
      if (msgs.length === 0) return;
      cleanup();
      sock.pause(); // keep further data until the Client attaches its reader
      resolve(msgs);
    };
    const onEnd = () => {
      cleanup();
      reject(new ConnectionClosedError("the daemon closed the connection before welcome"));
    };
    const cleanup = () => {
      sock.off("error", onError);
      sock.off("data", onData);
      sock.off("end", onEnd);
      sock.off("close", onEnd);
    };
    sock.on("error", onError);
    sock.on("data", onData);
    sock.on("end", onEnd);
    sock.on("close", onEnd);
    sock.once("connect", () => {
      try {
        const now = checkSocketFile(socketPath, expectedUid);
        if (identity && (!now || now.dev !== identity.dev || now.ino !== identity.ino)) {
          throw new UntrustedDaemonError(socketPath, {
            reason: "the socket file was replaced while connecting",
            ownUid: process.geteuid(),
            expectedUid,
          });
        }
      } catch (err) {
        cleanup();
        reject(err);
        return;
      }
      const hello = request("hello", undefined, {
        version: PROTOCOL_VERSION,
        client: options.clientName ?? `wsmux-node/${VERSION}`,
      });
      // If the daemon refused us right away (permission_denied, too_many_clients), the write
      // may fail but its error frame is still read above.
      sock.write(encodeFrame(hello, maxFrame), () => {});
    });
  });
  let frames;
  try {
    frames = await withTimeout(handshake, options.timeout ?? 10000, "connecting to wsmuxd");
  } catch (err) {
    sock.destroy();
    throw err;
  }
  const [welcome, ...rest] = frames;
  if (welcome.type === "error") {
    sock.destroy();
    throw WsmuxError.fromFrame(welcome);
  }
  if (welcome.type !== "welcome") {
    sock.destroy();
    throw new ProtocolError(`expected welcome, got ${welcome.type}`);
  }
  if (welcome.version !== PROTOCOL_VERSION) {
    sock.destroy();
    throw new ProtocolError(`the daemon speaks protocol version ${welcome.version}`);
  }
  return new Client(sock, decoder, welcome, rest, options);
}

/**
 * A connection to wsmuxd. Create it with `connect()`.
 *
 * Emits `"state"` (every state event), `"message"` (every message event), `"event"` (every
 * event) as notifications, and `"close"` (with the reason) when the connection ends. These
 * listeners do not consume events: events of an endpoint subscribed with a callback go to that
 * callback, all others are queued for `events()`.
 */
export class Client extends EventEmitter {
  #sock;
  #decoder;
  #nextId = 1;
  #pending = new Map();
  // What to do when a subscribe/unsubscribe is acked, before the frames after the ack are
  // routed; by id, kept after a timeout so that a late ack still updates #held.
  #onAck = new Map();
  // Per endpoint, what this connection holds: {whole, topics: Map(topic -> last topic_seq)}.
  #held = new Map();
  #callbacks = new Map();
  #queue = [];
  #waiters = [];
  #lastSeq = new Map();
  #closed = false;
  #closeReason = null;
  #closedPromise;
  #resolveClosed;

  constructor(sock, decoder, welcome, earlyFrames = [], options = {}) {
    super();
    this.#sock = sock;
    this.#decoder = decoder;
    /** The daemon's welcome: `{type, version, server, endpoints: [{name, state}]}`. */
    this.welcome = welcome;
    this.maxFrame = decoder.maxFrame;
    this.requestTimeout = options.requestTimeout ?? 30000;
    this.#closedPromise = new Promise((resolve) => {
      this.#resolveClosed = resolve;
    });
    sock.on("data", (chunk) => {
      let msgs;
      try {
        msgs = this.#decoder.push(chunk);
      } catch (err) {
        this.#finish(err);
        sock.destroy();
        return;
      }
      for (const msg of msgs) this.#route(msg);
    });
    sock.on("error", (err) => this.#finish(new ConnectionClosedError(`connection lost: ${err.message}`)));
    sock.on("end", () => {
      if (this.#decoder.buffered) this.#finish(new ProtocolError("the connection ended inside a frame"));
      this.#finish(new ConnectionClosedError("the daemon closed the connection"));
    });
    sock.on("close", () => this.#finish(new ConnectionClosedError("the connection was closed")));
    for (const msg of earlyFrames) this.#route(msg);
    sock.resume();
  }

  /** Names of the endpoints configured in the daemon (from `welcome`). */
  get endpoints() {
    return (this.welcome.endpoints ?? []).map((e) => e.name);
  }

  /** Whether the connection has ended. */
  get closed() {
    return this.#closed;
  }

  /** Resolves with the reason once the connection has ended. */
  waitClosed() {
    return this.#closedPromise;
  }

  /**
   * Subscribes to `endpoint`, or to some of its `topics`, and resolves on the ack. A `state`
   * event with the current state follows, then messages and state changes. With `callback`,
   * the events of `endpoint` are passed to it (synchronously, in order) instead of being
   * queued for `events()`; one callback serves the endpoint (a later one replaces it).
   *
   * `topics` (an array of strings; endpoints with `[endpoints.NAME.topics]`) adds those topics
   * to what this connection holds on the endpoint: only their messages come (and, unless the
   * endpoint says `unmatched = "drop"`, messages without a topic). Without `topics`, every
   * message of the endpoint comes. Refusals reject with a WsmuxError whose `code` is
   * `topics_unsupported`, `invalid_topic` or `too_many_topics`; the upstream's refusal of a
   * topic comes later as an `error` event with `code: "topic_rejected"` and `topic`.
   *
   * Called as `subscribe(endpoint, callback?, options?)` or `subscribe(endpoint, options)`.
   */
  async subscribe(endpoint, callback, options = {}) {
    if (callback !== undefined && callback !== null && typeof callback !== "function") {
      if (typeof callback !== "object") throw new TypeError("callback must be a function");
      options = callback;
      callback = undefined;
    }
    const { timeout } = options;
    const topics = topicList(options.topics);
    const previous = this.#callbacks.get(endpoint);
    if (callback) this.#callbacks.set(endpoint, callback);
    try {
      await this.#request("subscribe", { endpoint, topics }, { timeout }, () => this.#subscribed(endpoint, topics));
    } catch (err) {
      if (callback) {
        if (previous) this.#callbacks.set(endpoint, previous);
        else this.#callbacks.delete(endpoint);
      }
      throw err;
    }
  }

  /**
   * Unsubscribes from `endpoint` (everything), or from some of its `topics`, and resolves on
   * the ack. Once nothing is held on the endpoint, no event of it follows the ack and its
   * callback is not called again. Topics not held are ignored; `not_subscribed` means nothing
   * at all was held on the endpoint.
   */
  async unsubscribe(endpoint, { timeout, topics } = {}) {
    const dropped = topicList(topics);
    await this.#request("unsubscribe", { endpoint, topics: dropped }, { timeout }, () => {
      this.#unsubscribed(endpoint, dropped);
      if (!this.#held.has(endpoint)) this.#callbacks.delete(endpoint);
    });
  }

  /**
   * Sends one message upstream: a string as a text message, a Uint8Array (or Buffer) as a
   * binary message. Resolves with the ack once the daemon has written it to the upstream
   * WebSocket; rejects with a WsmuxError whose `.code` is e.g. `not_connected`.
   */
  async send(endpoint, data, { timeout } = {}) {
    if (typeof data !== "string") {
      if (data instanceof ArrayBuffer) data = new Uint8Array(data);
      else if (ArrayBuffer.isView(data)) data = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      else throw new TypeError("data must be a string (text) or a Uint8Array/Buffer (binary)");
    }
    return this.request("send", { endpoint, data }, { timeout });
  }

  /** Resolves with the status of every endpoint (EndpointStatus objects, PROTOCOL.md 7.2). */
  async status({ timeout } = {}) {
    const reply = await this.request("status", {}, { timeout });
    return reply.endpoints ?? [];
  }

  /** Pings the daemon; resolves with the round trip in milliseconds. */
  async ping({ timeout } = {}) {
    const started = performance.now();
    await this.request("ping", {}, { timeout });
    return performance.now() - started;
  }

  /**
   * Sends any request with a fresh id and resolves with its reply (`ack`, `status`, `pong`,
   * ...); rejects with WsmuxError on an `error` reply. Requests added to the protocol later can
   * be made with it before this package knows them.
   */
  request(type, fields = {}, { timeout } = {}) {
    return this.#request(type, fields, { timeout }, undefined);
  }

  #request(type, fields, { timeout }, onAck) {
    if (this.#closed) return Promise.reject(this.#closedError());
    const id = this.#nextId++;
    let frame;
    try {
      frame = encodeFrame(request(type, id, fields), this.maxFrame);
    } catch (err) {
      return Promise.reject(err);
    }
    const reply = new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
    });
    if (onAck) this.#onAck.set(id, onAck);
    this.#sock.write(frame);
    const ms = timeout ?? this.requestTimeout;
    return withTimeout(reply, ms, `no reply to ${type} (id ${id}) from the daemon`)
      .finally(() => this.#pending.delete(id))
      .then((msg) => {
        if (msg.type === "error") throw WsmuxError.fromFrame(msg);
        return msg;
      });
  }

  /**
   * The next queued event, or `null` once the connection has ended and every event was taken.
   * Rejects with TimeoutError after `timeout` ms if given.
   */
  nextEvent({ timeout } = {}) {
    if (this.#queue.length > 0) return Promise.resolve(this.#queue.shift());
    if (this.#closed) return Promise.resolve(null);
    const waiter = {};
    const next = new Promise((resolve) => {
      waiter.resolve = resolve;
      this.#waiters.push(waiter);
    });
    if (timeout === undefined || timeout === null) return next;
    return withTimeout(next, timeout, "no event from the daemon").catch((err) => {
      const i = this.#waiters.indexOf(waiter);
      if (i >= 0) this.#waiters.splice(i, 1);
      throw err;
    });
  }

  /**
   * `for await (const event of client.events())`: the events not taken by a callback, in
   * arrival order: `{type: "message", endpoint, seq, data, missed, topic?, topic_seq?}`,
   * `{type: "state", endpoint, state, attempt?, retry_in_ms?, reason?}`, `{type: "error",
   * code, message, endpoint?, topic?}` (e.g. `lagged`, or `topic_rejected`: the upstream
   * refused `topic`) and frames of types added later. `data` is a string for a text message
   * and a Uint8Array for a binary one; `missed` counts messages this connection missed just
   * before this one (of the endpoint, or of the topic for a subscription to topics only).
   * Ends when the connection ends. `timeout` bounds each wait.
   */
  async *events({ timeout } = {}) {
    for (;;) {
      const event = await this.nextEvent({ timeout });
      if (event === null) return;
      yield event;
    }
  }

  /** Reads events until `endpoint` reaches `state` (default `open`); others are dropped. */
  async waitForState(endpoint, state = "open", { timeout } = {}) {
    const wait = (async () => {
      for await (const event of this.events()) {
        if (event.type === "state" && event.endpoint === endpoint && event.state === state) return event;
      }
      throw this.#closedError();
    })();
    return withTimeout(wait, timeout, `${endpoint} did not reach ${state}`);
  }

  /** Closes the connection; pending requests reject with ConnectionClosedError. */
  async close() {
    if (!this.#closed) {
      this.#closeReason = new ConnectionClosedError("closed by the client");
      this.#sock.end();
      this.#sock.destroy();
    }
    await this.#closedPromise;
  }

  #closedError() {
    return new ConnectionClosedError(`the connection to the daemon ended: ${this.#closeReason?.message}`);
  }

  #route(msg) {
    if (REPLY_TYPES.has(msg.type) && typeof msg.id === "number") {
      const onAck = this.#onAck.get(msg.id);
      this.#onAck.delete(msg.id);
      if (onAck && msg.type === "ack") onAck(); // before the frames that follow the ack
      // Replies nobody waits for any more (e.g. after a timeout) are ignored.
      this.#pending.get(msg.id)?.resolve(msg);
      return;
    }
    if (REPLY_TYPES.has(msg.type) && msg.type !== "error") return;
    if (msg.type === "message") msg.missed = this.#missed(msg);
    if (msg.type === "error" && FATAL_CODES.has(msg.code)) {
      this.#closeReason = WsmuxError.fromFrame(msg);
    }
    this.emit("event", msg);
    if (msg.type === "state" || msg.type === "message") this.emit(msg.type, msg);
    const callback = typeof msg.endpoint === "string" ? this.#callbacks.get(msg.endpoint) : undefined;
    if (callback) {
      try {
        const result = callback(msg);
        if (result && typeof result.then === "function") {
          result.then(undefined, (err) => this.#callbackFailed(err));
        }
      } catch (err) {
        this.#callbackFailed(err);
      }
      return;
    }
    const waiter = this.#waiters.shift();
    if (waiter) waiter.resolve(msg);
    else this.#queue.push(msg);
  }

  // How many messages this connection missed just before `msg`: the seq gap for a
  // subscription to the whole endpoint; for one to topics only, the gap in the topic_seq of
  // msg's topic (other topics' messages are not missed, they are not wanted).
  #missed(msg) {
    let missed = gap(this.#lastSeq.get(msg.endpoint), msg.seq);
    this.#lastSeq.set(msg.endpoint, msg.seq);
    const held = this.#held.get(msg.endpoint);
    if (held && !held.whole) {
      missed = 0;
      const { topic, topic_seq: topicSeq } = msg;
      if (typeof topic === "string" && Number.isSafeInteger(topicSeq) && held.topics.has(topic)) {
        missed = gap(held.topics.get(topic), topicSeq);
        held.topics.set(topic, topicSeq);
      }
    }
    return missed;
  }

  #subscribed(endpoint, topics) {
    let held = this.#held.get(endpoint);
    if (!held) {
      held = { whole: false, topics: new Map() };
      this.#held.set(endpoint, held);
    }
    if (topics === undefined) held.whole = true;
    else for (const topic of topics) if (!held.topics.has(topic)) held.topics.set(topic, undefined);
  }

  #unsubscribed(endpoint, topics) {
    const held = this.#held.get(endpoint);
    if (held && topics !== undefined) {
      for (const topic of topics) held.topics.delete(topic);
      if (held.whole || held.topics.size > 0) return;
    }
    // Nothing held any more: a later subscription starts afresh, without a seq gap.
    this.#held.delete(endpoint);
    this.#lastSeq.delete(endpoint);
  }

  #callbackFailed(err) {
    if (this.listenerCount("callbackError") > 0) this.emit("callbackError", err);
    else console.error("wsmux-client: subscription callback failed:", err);
  }

  #finish(reason) {
    if (this.#closed) return;
    this.#closed = true;
    if (!this.#closeReason) this.#closeReason = reason;
    for (const { reject } of this.#pending.values()) reject(this.#closedError());
    this.#pending.clear();
    this.#onAck.clear();
    for (const waiter of this.#waiters.splice(0)) waiter.resolve(null);
    this.#sock.destroy();
    this.emit("close", this.#closeReason);
    this.#resolveClosed(this.#closeReason);
  }
}

function gap(last, now) {
  return last !== undefined && now > last + 1 ? now - last - 1 : 0;
}
