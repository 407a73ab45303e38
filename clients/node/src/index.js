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
// When the connection to the daemon drops, the client reconnects by itself, subscribes again
// from where each endpoint's stream was (PROTOCOL.md section 19) and repeats its sticky
// sends; the application sees `disconnected` and `reconnected` events.

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
  subscribeFields,
  topicList,
} from "./protocol.js";
import { Backlog, Backoff, EventQueue, Holdings, MIN_EVENT_BUFFER_BYTES, StickyList } from "./state.js";

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

/**
 * The connection to the daemon was lost while this request was waiting for its reply: its
 * outcome is unknown (a send may or may not have been written upstream). It is not retried.
 * The client itself reconnects.
 */
export class ConnectionLostError extends Error {
  constructor(message, { cause } = {}) {
    super(message, { cause });
    this.name = "ConnectionLostError";
    this.code = "ERR_WSMUX_LOST";
  }
}

/** A send while the client is reconnecting, with `whenDisconnected: "fail"`. */
export class NotConnectedError extends Error {
  constructor(message) {
    super(message);
    this.name = "NotConnectedError";
    this.code = "ERR_WSMUX_NOT_CONNECTED";
  }
}

/**
 * A bound of the client was reached: `limit` names the option. Nothing was sent for
 * `bufferBytes`, `bufferMessages`, `maxSticky` or `maxStickyBytes`; with `eventBufferBytes`
 * the client closed (the application stopped taking events, see `events()`).
 */
export class LimitError extends Error {
  constructor(limit, message) {
    super(message);
    this.name = "LimitError";
    this.code = "ERR_WSMUX_LIMIT";
    this.limit = limit;
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

const MIB = 1024 * 1024;

/**
 * Errors of a connection attempt that another attempt would likely meet again: the first
 * `connect()` fails with them; a reconnect reports them once per outage and keeps trying.
 */
const permanent = new WeakSet();

/** The options of `connect`, defaulted and checked. */
function clientOptions(options) {
  const reconnect = options.reconnect ?? true;
  const o = {
    socket: options.socket || defaultSocketPath(),
    clientName: options.clientName ?? `wsmux-node/${VERSION}`,
    timeout: options.timeout ?? 10000,
    requestTimeout: options.requestTimeout ?? 30000,
    maxFrame: options.maxFrame ?? DEFAULT_MAX_FRAME,
    expectedUid: expectedDaemonUid(options.daemonUid),
    reconnect: Boolean(reconnect),
    resumeOnLagged: Boolean(options.resumeOnLagged ?? reconnect),
    whenDisconnected: options.whenDisconnected ?? "buffer",
    bufferBytes: options.bufferBytes ?? MIB,
    bufferMessages: options.bufferMessages ?? 1000,
    maxSticky: options.maxSticky ?? 1024,
    maxStickyBytes: options.maxStickyBytes ?? 16 * MIB,
    maxHeldBytes: options.maxHeldBytes ?? 16 * MIB,
    eventBufferBytes: options.eventBufferBytes ?? 2 * DEFAULT_MAX_FRAME,
    reconnectDelay: options.reconnectDelay ?? 100,
    reconnectMaxDelay: options.reconnectMaxDelay ?? 1000,
  };
  if (o.whenDisconnected !== "buffer" && o.whenDisconnected !== "fail") {
    throw new TypeError(`whenDisconnected must be "buffer" or "fail", not ${JSON.stringify(o.whenDisconnected)}`);
  }
  for (const key of ["bufferBytes", "bufferMessages", "maxSticky", "maxStickyBytes", "maxHeldBytes"]) {
    if (!Number.isSafeInteger(o[key]) || o[key] < 0) throw new TypeError(`${key} must be a non-negative integer`);
  }
  if (!Number.isSafeInteger(o.eventBufferBytes) || o.eventBufferBytes < MIN_EVENT_BUFFER_BYTES) {
    throw new TypeError(`eventBufferBytes must be an integer of at least ${MIN_EVENT_BUFFER_BYTES} (64 KiB)`);
  }
  if (!(o.reconnectDelay > 0) || !(o.reconnectMaxDelay >= o.reconnectDelay)) {
    throw new TypeError("reconnectDelay and reconnectMaxDelay must be milliseconds with 0 < reconnectDelay <= reconnectMaxDelay");
  }
  return o;
}

/**
 * Connects to the daemon, sends `hello` and waits for `welcome`.
 *
 * @param {object} [options]
 * @param {string} [options.socket] socket path (default: `defaultSocketPath()`)
 * @param {string} [options.clientName] name shown in the daemon's logs
 * @param {number} [options.timeout=10000] ms allowed for connecting and the handshake (each
 *   reconnect attempt too)
 * @param {number} [options.requestTimeout=30000] default ms allowed for each reply
 * @param {number} [options.maxFrame] largest frame body accepted (default 16 MiB)
 * @param {number} [options.daemonUid] one more uid the daemon may run as (default
 *   `$WSMUX_DAEMON_UID`); otherwise the socket must belong to this user or root
 * @param {boolean} [options.reconnect=true] reconnect when the connection drops; `false`:
 *   the client closes instead
 * @param {boolean} [options.resumeOnLagged] resume from the daemon's history after `lagged`
 *   (default: the value of `reconnect`)
 * @param {"buffer"|"fail"} [options.whenDisconnected="buffer"] what `send` does while the
 *   client is reconnecting
 * @param {number} [options.bufferBytes=1048576] encoded bytes of requests waiting for a
 *   reconnect
 * @param {number} [options.bufferMessages=1000] number of requests waiting for a reconnect
 * @param {number} [options.maxSticky=1024] sticky sends remembered per endpoint
 * @param {number} [options.maxStickyBytes=16777216] their bytes per endpoint
 * @param {number} [options.maxHeldBytes=16777216] bytes of events held back while a
 *   reconnect's subscribes are answered
 * @param {number} [options.eventBufferBytes=33554432] bytes of events kept for `events()`
 *   (at least 64 KiB): beyond, the oldest messages are dropped and announced by a `lagged`
 *   event with `client: true`
 * @param {number} [options.reconnectDelay=100] first delay before reconnecting, in ms
 * @param {number} [options.reconnectMaxDelay=1000] largest delay, in ms
 * @returns {Promise<Client>}
 */
export async function connect(options = {}) {
  const opts = clientOptions(options);
  return new Client(await openLink(opts), opts);
}

/**
 * Opens one connection: checks the socket file, connects, sends `hello` and waits for
 * `welcome`. Resolves with `{sock, decoder, welcome, rest}` (`rest`: the frames that came with
 * the welcome, as `[msg, size]`), the socket paused. `track(sock)` is told the socket while
 * the attempt is under way (and `null` after), so that `close()` can end it.
 */
async function openLink(o, track = () => {}) {
  // Before connecting, and again once connected (the file must still be the same one).
  const identity = checkSocketFile(o.socket, o.expectedUid);
  const sock = net.createConnection({ path: o.socket });
  track(sock);
  const decoder = new FrameDecoder(o.maxFrame);
  const handshake = new Promise((resolve, reject) => {
    const onError = (err) => {
      cleanup();
      if (["ENOENT", "ECONNREFUSED", "EACCES", "ENOTDIR"].includes(err.code)) {
        reject(new DaemonUnavailableError(o.socket, err));
      } else {
        reject(err);
      }
    };
    const onData = (chunk) => {
      let msgs;
      const sizes = [];
      try {
        msgs = decoder.push(chunk, sizes);
      } catch (err) {
        cleanup();
        reject(err);
        return;
      }
      if (msgs.length === 0) return;
      cleanup();
      sock.pause(); // keep further data until the Client attaches its reader
      resolve(msgs.map((msg, i) => [msg, sizes[i]]));
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
        const now = checkSocketFile(o.socket, o.expectedUid);
        if (identity && (!now || now.dev !== identity.dev || now.ino !== identity.ino)) {
          throw new UntrustedDaemonError(o.socket, {
            reason: "the socket file was replaced while connecting",
            ownUid: process.geteuid(),
            expectedUid: o.expectedUid,
          });
        }
      } catch (err) {
        cleanup();
        reject(err);
        return;
      }
      const hello = request("hello", undefined, { version: PROTOCOL_VERSION, client: o.clientName });
      // If the daemon refused us right away (permission_denied, too_many_clients), the write
      // may fail but its error frame is still read above.
      sock.write(encodeFrame(hello, o.maxFrame), () => {});
    });
  });
  let frames;
  try {
    frames = await withTimeout(handshake, o.timeout, "connecting to wsmuxd");
  } catch (err) {
    sock.destroy();
    throw err;
  } finally {
    track(null);
  }
  const [[welcome], ...rest] = frames;
  let refusal;
  if (welcome.type === "error") {
    refusal = WsmuxError.fromFrame(welcome);
    if (refusal.code === "permission_denied" || refusal.code === "unsupported_version") permanent.add(refusal);
  } else if (welcome.type !== "welcome") {
    refusal = new ProtocolError(`expected welcome, got ${welcome.type}`);
  } else if (welcome.version !== PROTOCOL_VERSION) {
    refusal = new ProtocolError(`the daemon speaks protocol version ${welcome.version}`);
    permanent.add(refusal);
  }
  if (refusal) {
    sock.destroy();
    throw refusal;
  }
  return { sock, decoder, welcome, rest };
}

/**
 * The `error` event of a reconnect attempt that another attempt would meet again (an untrusted
 * socket, a refused uid, another protocol version): the client keeps trying all the same.
 */
function refusalEvent(err) {
  let code = "unsupported_version";
  if (err instanceof UntrustedDaemonError) code = "permission_denied";
  else if (err instanceof WsmuxError) code = err.code;
  const message = `cannot reconnect to the daemon yet: ${err.message}; the client keeps trying`;
  return { type: "error", code, message, error: err };
}

/** What an event the client makes itself counts against `eventBufferBytes`. */
function ownEventSize(event) {
  const text = typeof event.message === "string" ? event.message.length : 0;
  const entries = Array.isArray(event.endpoints) ? event.endpoints.length : 0;
  return 64 + text + 64 * entries;
}

/** Events that are also emitted under their own name (besides `"event"`). */
const NAMED_EVENTS = new Set(["state", "message", "disconnected", "reconnected", "resumed"]);

/** An application's `data`: a string (text) or bytes (binary), as sent on the wire. */
function asData(data, what) {
  if (typeof data === "string") return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new TypeError(`${what} must be a string (text) or a Uint8Array/Buffer (binary)`);
}

/**
 * A connection to wsmuxd that reconnects by itself. Create it with `connect()`.
 *
 * Emits `"state"`, `"message"`, `"disconnected"`, `"reconnected"` and `"resumed"` (each event
 * of that type), `"event"` (every event) as notifications, and `"close"` (with the reason)
 * when the client closes. These listeners do not consume events: events of an endpoint
 * subscribed with a callback go to that callback, all others are queued for `events()`.
 */
export class Client extends EventEmitter {
  /** The options of `connect`, checked. */
  #opts;
  /** The current connection `{sock, decoder, welcome}`; null while reconnecting or closed. */
  #link = null;
  /** The socket of a reconnect attempt under way, to end on close(). */
  #connecting = null;
  #nextId = 1;
  /** id -> request the application waits for (written or in the backlog). */
  #pending = new Map();
  /** id -> request written on the current connection and not answered yet. */
  #inflight = new Map();
  /** Requests waiting for a connection. */
  #backlog;
  /** What is held per endpoint and where each stream is: the state a reconnect restores. */
  #holdings = new Holdings();
  /** The sticky sends to make again on a new connection. */
  #sticky;
  #backoff;
  #callbacks = new Map();
  /** Events for `events()`, bounded in bytes. */
  #queue;
  #waiters = [];
  /** While a reconnect's subscribes are unanswered: `{waiting, endpoints, errors, ...}`. */
  #resync = null;
  /** Events held back until the reconnect's subscribes are answered: `[event, size]`. */
  #held = [];
  #heldBytes = 0;
  /** endpoint -> waiters of subscribes made while disconnected (answered by the resubscribe). */
  #folded = new Map();
  /** Waiters of unsubscribes made while disconnected (done once reconnected). */
  #reconnectWaiters = [];
  /** The application was told `disconnected` and not yet `reconnected`. */
  #disconnected = false;
  /** An attempt of this outage was refused for good reason (see `refusalEvent`): told once. */
  #warned = false;
  /** The fatal error frame of the current connection, the reason it is about to end. */
  #fatal = null;
  /** Ends the backoff delay under way. */
  #wake = null;
  #closed = false;
  #closeReason = null;
  #closedPromise;
  #resolveClosed;

  constructor(link, opts) {
    super();
    this.#opts = opts;
    this.maxFrame = opts.maxFrame;
    this.requestTimeout = opts.requestTimeout;
    this.#backoff = new Backoff({ initial: opts.reconnectDelay, max: opts.reconnectMaxDelay });
    this.#backlog = new Backlog({ maxBytes: opts.bufferBytes, maxMessages: opts.bufferMessages });
    this.#sticky = new StickyList({ maxMessages: opts.maxSticky, maxBytes: opts.maxStickyBytes });
    this.#queue = new EventQueue({ maxBytes: opts.eventBufferBytes });
    this.#closedPromise = new Promise((resolve) => {
      this.#resolveClosed = resolve;
    });
    this.#attach(link, false);
  }

  /** Names of the endpoints configured in the daemon (from the latest `welcome`). */
  get endpoints() {
    return (this.welcome.endpoints ?? []).map((e) => e.name);
  }

  /** The daemon's epoch (from the latest `welcome`; new each time the daemon starts). */
  get epoch() {
    return this.welcome.epoch;
  }

  /** Whether the client has closed (by `close()`, or for good); not while reconnecting. */
  get closed() {
    return this.#closed;
  }

  /** Whether a connection to the daemon is up now (false while reconnecting). */
  get connected() {
    return this.#link !== null;
  }

  /** Resolves with the reason once the client has closed. */
  waitClosed() {
    return this.#closedPromise;
  }

  /**
   * Subscribes to `endpoint`, or to some of its `topics`, and resolves on the ack with
   * `{firstSeq, recovered}`. A `state` event with the current state follows, then messages and
   * state changes. With `callback`, the events of `endpoint` are passed to it (synchronously,
   * in order) instead of being queued for `events()`; one callback serves the endpoint (a
   * later one replaces it).
   *
   * `topics` (an array of strings; endpoints with `[endpoints.NAME.topics]`) adds those topics
   * to what this connection holds on the endpoint: only their messages come (and, unless the
   * endpoint says `unmatched = "drop"`, messages without a topic). Without `topics`, every
   * message of the endpoint comes. Refusals reject with a WsmuxError whose `code` is
   * `topics_unsupported`, `invalid_topic` or `too_many_topics`; the upstream's refusal of a
   * topic comes later as an `error` event with `code: "topic_rejected"` and `topic`.
   *
   * `since` (the last seq the application processed) resumes from the daemon's history, and
   * `epoch` names the daemon run it belongs to (PROTOCOL.md section 19): `recovered` then
   * says whether nothing after `since` was lost, and `firstSeq` is the first seq that comes.
   * While the client is reconnecting, the subscription is added to what it holds at once and
   * made by the reconnect; the promise resolves with that answer.
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
    const fields = subscribeFields(endpoint, topics, options.since, options.epoch);
    if (this.#closed) throw this.#closedError();
    if (!this.#link) return this.#subscribeLater(fields, callback, timeout);
    const previous = this.#callbacks.get(endpoint);
    if (callback) this.#callbacks.set(endpoint, callback);
    try {
      const ack = await this.#request("subscribe", fields, { timeout }, {
        onWrite: (entry) => {
          if (fields.since !== undefined) this.#holdings.openSeam(endpoint, entry.id, fields.since);
        },
        // Before the frames that follow the ack are routed.
        onReply: (reply, entry) => {
          this.#holdings.closeSeam(endpoint, entry.id);
          if (reply.type !== "ack") return;
          this.#holdings.add(endpoint, topics);
          this.#holdings.acked(endpoint, reply, fields.since, fields.epoch);
        },
      });
      return { firstSeq: ack.first_seq, recovered: ack.recovered };
    } catch (err) {
      if (callback) {
        if (previous) this.#callbacks.set(endpoint, previous);
        else this.#callbacks.delete(endpoint);
      }
      throw err;
    }
  }

  // A subscribe while reconnecting: added to the holdings now, made by the reconnect.
  #subscribeLater({ endpoint, topics, since, epoch }, callback, timeout) {
    if (callback) this.#callbacks.set(endpoint, callback);
    this.#holdings.add(endpoint, topics);
    if (since !== undefined) this.#holdings.setPosition(endpoint, since, epoch);
    let list = this.#folded.get(endpoint);
    if (!list) this.#folded.set(endpoint, (list = []));
    return this.#wait(list, timeout, `subscribe to ${endpoint}`, "it stays subscribed and is made once the daemon is back");
  }

  /**
   * Unsubscribes from `endpoint` (everything), or from some of its `topics`, and resolves on
   * the ack. Once nothing is held on the endpoint, no event of it follows the ack and its
   * callback is not called again. Topics not held are ignored; `not_subscribed` means nothing
   * at all was held on the endpoint. What it removes is forgotten as soon as it is asked for:
   * if the connection drops before the ack (the promise rejects with ConnectionLostError), the
   * reconnect does not subscribe it again. While the client is reconnecting, what it holds
   * changes at once (no event of it is delivered any more) and the promise resolves once
   * reconnected.
   */
  async unsubscribe(endpoint, { timeout, topics } = {}) {
    const dropped = topicList(topics);
    if (this.#closed) throw this.#closedError();
    if (!this.#link && this.#holdings.holds(endpoint)) {
      this.#unsubscribed(endpoint, dropped);
      await this.#wait(this.#reconnectWaiters, timeout, `unsubscribe from ${endpoint}`, "it is unsubscribed all the same");
      return;
    }
    // Out of the desired state as soon as it is asked for: a reconnect before the ack does not
    // subscribe it again. Its events and callback stay until the ack (or until no ack can come).
    this.#holdings.remove(endpoint, dropped);
    await this.#request("unsubscribe", { endpoint, topics: dropped }, { timeout }, {
      onReply: (reply) => {
        if (reply.type === "ack") this.#unsubscribed(endpoint, dropped);
      },
      onDrop: () => this.#unsubscribed(endpoint, dropped),
    });
  }

  /**
   * Sends one message upstream: a string as a text message, a Uint8Array (or Buffer) as a
   * binary message. Resolves with the ack once the daemon has written it to the upstream
   * WebSocket (or `{queued: true}` when the endpoint is down and the daemon holds it); rejects
   * with a WsmuxError whose `.code` is e.g. `not_connected`.
   *
   * `sticky: true` (with an optional `undo`) makes the daemon write it again after every
   * upstream reconnect while this client is connected; the client sends it again itself after
   * reconnecting to the daemon. `queue: false` fails at once if the endpoint is not open.
   * While the client is reconnecting, the send waits for the daemon (`whenDisconnected:
   * "buffer"`, bounded by `bufferBytes`/`bufferMessages`) or fails with NotConnectedError
   * (`"fail"`).
   */
  async send(endpoint, data, { timeout, queue, sticky = false, undo } = {}) {
    data = asData(data, "data");
    if (undo !== undefined && undo !== null) {
      if (!sticky) throw new TypeError("undo is only meaningful with sticky: true");
      undo = asData(undo, "undo");
    } else {
      undo = undefined;
    }
    if (!sticky) {
      return this.#request("send", { endpoint, data, queue: queue === undefined ? undefined : Boolean(queue) }, { timeout });
    }
    // Kept to be sent again after a reconnect: copies, in case the caller reuses its buffers.
    if (typeof data !== "string") data = Uint8Array.from(data);
    if (undo !== undefined && typeof undo !== "string") undo = Uint8Array.from(undo);
    const token = this.#sticky.reserve(endpoint, data, undo);
    if (token.limit) throw new LimitError(token.limit, `the sticky send was not made: ${token.message}`);
    const fields = { endpoint, data, queue: queue === undefined ? undefined : Boolean(queue), sticky: true, undo };
    return this.#request("send", fields, { timeout }, {
      onReply: (reply) => {
        // A send_failed sticky message stays sticky in the daemon (PROTOCOL.md 7.1).
        if (reply.type === "ack" || reply.code === "send_failed") this.#sticky.add(token, data, undo);
        else this.#sticky.release(token);
      },
      onDrop: () => this.#sticky.release(token),
    });
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
   * be made with it before this package knows them. While the client is reconnecting, the
   * request waits for the daemon (within its timeout).
   */
  request(type, fields = {}, { timeout } = {}) {
    return this.#request(type, fields, { timeout });
  }

  // A request of the application. `hooks`: `onWrite(entry)` when it is written,
  // `onReply(reply, entry)` when its reply arrives (before the frames after it are routed,
  // also after a timeout), `onDrop(entry)` when no reply will ever come.
  #request(type, fields, { timeout }, hooks = {}) {
    if (this.#closed) {
      hooks.onDrop?.();
      return Promise.reject(this.#closedError());
    }
    const id = this.#nextId++;
    let frame;
    try {
      frame = encodeFrame(request(type, id, fields), this.maxFrame);
    } catch (err) {
      hooks.onDrop?.();
      return Promise.reject(err);
    }
    const entry = { id, type, frame, hooks };
    const reply = new Promise((resolve, reject) => {
      entry.resolve = resolve;
      entry.reject = reject;
    });
    if (this.#link) {
      this.#write(entry);
    } else if (type === "send" && this.#opts.whenDisconnected === "fail") {
      hooks.onDrop?.();
      return Promise.reject(
        new NotConnectedError(
          `not connected to the daemon (reconnecting to ${this.#opts.socket}): the send was not made (whenDisconnected = "fail")`,
        ),
      );
    } else {
      const full = this.#backlog.push(entry, frame.length);
      if (full) {
        hooks.onDrop?.();
        return Promise.reject(new LimitError(full.limit, `the ${type} was not made while reconnecting: ${full.message}`));
      }
    }
    this.#pending.set(id, entry);
    const ms = timeout ?? this.requestTimeout;
    if (Number.isFinite(ms)) entry.timer = setTimeout(() => this.#timedOut(entry, ms), ms);
    return reply.then((msg) => {
      if (msg.type === "error") throw WsmuxError.fromFrame(msg);
      return msg;
    });
  }

  // A request of the client itself (resubscribe, resume, sticky re-send): written now.
  #internal(type, fields, hooks) {
    const id = this.#nextId++;
    const entry = { id, type, hooks };
    try {
      entry.frame = encodeFrame(request(type, id, fields), this.maxFrame);
    } catch (err) {
      hooks.onReply?.({ type: "error", id, code: "too_large", message: err.message }, entry);
      return;
    }
    this.#write(entry);
  }

  #write(entry) {
    this.#inflight.set(entry.id, entry);
    entry.hooks.onWrite?.(entry);
    this.#link.sock.write(entry.frame);
    entry.frame = undefined;
  }

  #timedOut(entry, ms) {
    if (this.#pending.get(entry.id) !== entry) return;
    this.#pending.delete(entry.id);
    const unsent = this.#backlog.remove(entry);
    if (unsent) entry.hooks.onDrop?.(entry);
    const note = unsent ? " (the client was reconnecting: it was not sent, and never will be)" : "";
    entry.reject(new TimeoutError(`timed out: no reply to ${entry.type} (id ${entry.id}) from the daemon within ${ms} ms${note}`));
  }

  // Resolves (with what the reconnect answers) or rejects on timeout; `list` holds the waiter.
  #wait(list, timeout, what, note) {
    return new Promise((resolve, reject) => {
      const waiter = { settled: false };
      const settle = (fn) => (value) => {
        if (waiter.settled) return;
        waiter.settled = true;
        clearTimeout(waiter.timer);
        fn(value);
      };
      waiter.resolve = settle(resolve);
      waiter.reject = settle(reject);
      const ms = timeout ?? this.requestTimeout;
      if (Number.isFinite(ms)) {
        waiter.timer = setTimeout(() => {
          const i = list.indexOf(waiter);
          if (i >= 0) list.splice(i, 1);
          waiter.reject(new TimeoutError(`timed out: ${what}: the daemon was not back within ${ms} ms (${note})`));
        }, ms);
      }
      list.push(waiter);
    });
  }

  /**
   * The next queued event, or `null` once the client has closed and every event was taken.
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
   * refused `topic`), `{type: "disconnected", reason}`, `{type: "reconnected", epoch,
   * new_epoch, recovered, endpoints}`, `{type: "resumed", endpoint, recovered, first_seq}` and
   * frames of types added later. `data` is a string for a text message and a Uint8Array for a
   * binary one; `missed` counts messages missed just before this one (of the endpoint, or of
   * the topic for a subscription to topics only). Ends when the client closes. `timeout`
   * bounds each wait. Events not taken are bounded by `eventBufferBytes`: the oldest messages
   * beyond it are dropped and announced by `{type: "lagged", endpoint, dropped, client: true}`.
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

  /**
   * Closes the client: stops reconnecting, rejects waiting requests with
   * ConnectionClosedError, ends the event stream (after the events not taken yet, and those
   * held back by a reconnect whose subscribes were not all answered).
   */
  async close() {
    this.#finish(new ConnectionClosedError("closed by the client"));
    await this.#closedPromise;
  }

  #closedError() {
    return new ConnectionClosedError(`the connection to the daemon ended: ${this.#closeReason?.message}`);
  }

  // Takes `link` as the current connection: reads it, and after a reconnect restores what
  // the client holds.
  #attach(link, reconnected) {
    const { sock, decoder } = link;
    this.#link = link;
    this.#fatal = null;
    sock.on("data", (chunk) => {
      const sizes = [];
      let msgs;
      try {
        msgs = decoder.push(chunk, sizes);
      } catch (err) {
        this.#lost(link, err);
        return;
      }
      for (let i = 0; i < msgs.length && this.#link === link; i++) this.#route(msgs[i], sizes[i]);
    });
    sock.on("error", (err) => this.#lost(link, new ConnectionClosedError(`connection lost: ${err.message}`)));
    sock.on("end", () => {
      const why = decoder.buffered
        ? new ProtocolError("the connection ended inside a frame")
        : new ConnectionClosedError("the daemon closed the connection");
      this.#lost(link, why);
    });
    sock.on("close", () => this.#lost(link, new ConnectionClosedError("the connection was closed")));
    /** The daemon's latest welcome: `{type, version, server, endpoints: [{name, state}], epoch}`. */
    this.welcome = link.welcome;
    const newEpoch = this.#holdings.connected(link.welcome.epoch);
    if (reconnected) this.#resubscribe(link, newEpoch);
    for (const [msg, size] of link.rest) if (this.#link === link) this.#route(msg, size);
    sock.resume();
  }

  // The connection `link` ended (`reason`): reconnect, or close without `reconnect`.
  #lost(link, reason) {
    if (link !== this.#link || this.#closed) return;
    this.#link = null;
    link.sock.destroy();
    const why = this.#fatal ?? reason;
    this.#fatal = null;
    if (!this.#opts.reconnect) {
      this.#finish(why);
      return;
    }
    this.#holdings.clearSeams();
    const inflight = [...this.#inflight.values()];
    this.#inflight.clear();
    for (const entry of inflight) {
      entry.hooks.onDrop?.(entry);
      if (this.#pending.get(entry.id) !== entry) continue;
      this.#pending.delete(entry.id);
      clearTimeout(entry.timer);
      const upstream = entry.type === "send" ? " (the message may or may not have been written upstream)" : "";
      const message =
        `the connection to the daemon was lost (${why.message}) before the reply to ${entry.type} ` +
        `(id ${entry.id}): its outcome is unknown${upstream}; it is not retried`;
      entry.reject(new ConnectionLostError(message, { cause: why }));
    }
    if (this.#resync) {
      clearTimeout(this.#resync.timer);
      this.#resync = null; // the events it held stay held, for the next reconnect
    }
    if (!this.#disconnected) {
      this.#disconnected = true;
      this.#deliver({ type: "disconnected", reason: why.message });
    }
    if (!this.#closed) {
      this.#reconnectLoop().catch((err) => this.#finish(err));
    }
  }

  async #reconnectLoop() {
    while (!this.#closed) {
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, this.#backoff.next());
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = null;
      if (this.#closed) return;
      let link;
      try {
        link = await openLink(this.#opts, (sock) => {
          this.#connecting = sock;
        });
      } catch (err) {
        if (this.#closed) return;
        // An untrusted socket, a refused uid or another protocol version: the application
        // hears of it once per outage, and the client keeps trying (the path may be fixed).
        if ((err instanceof UntrustedDaemonError || permanent.has(err)) && !this.#warned) {
          this.#warned = true;
          this.#deliver(refusalEvent(err));
        }
        continue;
      }
      if (this.#closed) {
        link.sock.destroy();
        return;
      }
      this.#attach(link, true);
      return;
    }
  }

  // On a new connection: every holding's subscribe (with since/epoch), then the sticky sends,
  // then the requests that waited. `reconnected` follows once every subscribe is answered.
  #resubscribe(link, newEpoch) {
    const resync = { waiting: 0, endpoints: new Map(), errors: new Map(), epoch: link.welcome.epoch, newEpoch };
    this.#resync = resync;
    for (const { endpoint, fields, last } of this.#holdings.resubscribes()) {
      const waiters = last ? (this.#folded.get(endpoint) ?? []) : [];
      if (last) this.#folded.delete(endpoint);
      resync.waiting += 1;
      this.#internal("subscribe", fields, {
        onWrite: (entry) => {
          if (fields.since !== undefined) this.#holdings.openSeam(endpoint, entry.id, fields.since);
        },
        onReply: (reply, entry) => this.#resubscribed(resync, fields, last ? waiters : undefined, reply, entry),
        onDrop: () => this.#refold(endpoint, waiters),
      });
    }
    for (const sticky of this.#sticky.entries()) {
      const fields = { endpoint: sticky.endpoint, data: sticky.data, sticky: true, undo: sticky.undo };
      this.#internal("send", fields, {
        onReply: (reply) => {
          if (reply.type !== "error") return;
          if (reply.code !== "send_failed") this.#sticky.remove(sticky);
          const message = `a sticky message could not be sent again after reconnecting: ${reply.message}`;
          this.#emitEvent({ type: "error", code: String(reply.code), message, endpoint: sticky.endpoint });
        },
      });
    }
    for (const entry of this.#backlog.drain()) this.#write(entry);
    const ms = this.requestTimeout;
    if (Number.isFinite(ms)) {
      resync.timer = setTimeout(() => {
        this.#lost(link, new TimeoutError(`timed out: the daemon did not answer the subscribes of a reconnect within ${ms} ms`));
      }, ms);
    }
    if (resync.waiting === 0) this.#resynced(resync);
  }

  #resubscribed(resync, fields, waiters, reply, entry) {
    const { endpoint } = fields;
    this.#holdings.closeSeam(endpoint, entry.id);
    if (reply.type === "ack") {
      this.#holdings.acked(endpoint, reply, fields.since, fields.epoch);
      if (!resync.endpoints.has(endpoint)) {
        const result = { endpoint, recovered: reply.recovered === true, first_seq: reply.first_seq };
        resync.endpoints.set(endpoint, Object.assign(result, { ack: reply }));
      }
    } else {
      // Refused (e.g. the endpoint was removed by a reload): reported, and forgotten.
      const error = { code: String(reply.code), message: String(reply.message ?? "") };
      const result = resync.endpoints.get(endpoint) ?? { endpoint, first_seq: undefined };
      resync.endpoints.set(endpoint, Object.assign(result, { recovered: false, error }));
      resync.errors.set(endpoint, WsmuxError.fromFrame(reply));
      this.#unsubscribed(endpoint, fields.topics);
    }
    if (waiters) {
      const result = resync.endpoints.get(endpoint);
      const error = resync.errors.get(endpoint);
      for (const waiter of waiters) {
        if (error) waiter.reject(error);
        else waiter.resolve({ firstSeq: result.ack.first_seq, recovered: result.ack.recovered });
      }
    }
    resync.waiting -= 1;
    if (resync.waiting === 0 && this.#resync === resync) this.#resynced(resync);
  }

  // A reconnect's subscribe will not be answered (the connection dropped again): its folded
  // subscribes wait for the next one.
  #refold(endpoint, waiters) {
    const open = waiters.filter((w) => !w.settled);
    if (open.length === 0 || !this.#holdings.holds(endpoint)) return;
    const list = this.#folded.get(endpoint) ?? [];
    this.#folded.set(endpoint, [...open, ...list]);
  }

  // Every subscribe of the reconnect is answered: `reconnected`, then the events held back.
  #resynced(resync) {
    clearTimeout(resync.timer);
    this.#resync = null;
    this.#backoff.reset();
    this.#disconnected = false;
    this.#warned = false;
    const endpoints = [...resync.endpoints.values()].map(({ ack, ...entry }) => entry);
    const recovered = endpoints.every((e) => e.recovered);
    const held = this.#held;
    this.#held = [];
    this.#heldBytes = 0;
    this.#deliver({ type: "reconnected", epoch: resync.epoch, new_epoch: resync.newEpoch, recovered, endpoints });
    for (const [event, size] of held) {
      if (this.#closed) return;
      this.#deliver(event, size);
    }
    for (const waiter of this.#reconnectWaiters.splice(0)) waiter.resolve();
  }

  #route(msg, size = 0) {
    if (REPLY_TYPES.has(msg.type) && typeof msg.id === "number") {
      const entry = this.#inflight.get(msg.id);
      if (entry) {
        this.#inflight.delete(msg.id);
        entry.hooks.onReply?.(msg, entry); // before the frames that follow the reply
      }
      // Replies nobody waits for any more (e.g. after a timeout) are ignored.
      if (entry && this.#pending.get(msg.id) === entry) {
        this.#pending.delete(msg.id);
        clearTimeout(entry.timer);
        entry.resolve(msg);
      }
      return;
    }
    if (REPLY_TYPES.has(msg.type) && msg.type !== "error") return;
    if (msg.type === "error" && FATAL_CODES.has(msg.code)) this.#fatal = WsmuxError.fromFrame(msg);
    if (msg.type === "message" && typeof msg.endpoint === "string") {
      if (!this.#admit(msg, size)) return;
    } else if (msg.type === "lagged" && typeof msg.endpoint === "string" && this.#opts.resumeOnLagged) {
      this.#resume(msg.endpoint); // at once, before further messages of the endpoint
    }
    this.#emitEvent(msg, size);
  }

  // Whether to take a message: not if the seam rule discards it, nor if it would overflow
  // the events held back during a reconnect (then it is fetched again by a resume).
  #admit(msg, size) {
    if (this.#resync && this.#heldBytes + size > this.#opts.maxHeldBytes && !this.#holdings.discards(msg)) {
      if (!this.#resume(msg.endpoint)) this.#heldDrop(msg.endpoint);
      return false;
    }
    return this.#holdings.message(msg);
  }

  // A message dropped from the held-back events that cannot be fetched again (the daemon
  // keeps no history): announced like the daemon's own `lagged`.
  #heldDrop(endpoint) {
    const last = this.#held.at(-1)?.[0];
    if (last?.type === "lagged" && last.endpoint === endpoint && last.client) last.dropped += 1;
    else this.#held.push([{ type: "lagged", endpoint, dropped: 1, client: true }, 0]);
  }

  // Resumes `endpoint` from the last seq received (after `lagged`); false if it cannot.
  #resume(endpoint) {
    const fields = this.#holdings.resume(endpoint);
    const link = this.#link;
    if (!fields || !link) return false;
    let timer;
    this.#internal("subscribe", fields, {
      onWrite: (entry) => {
        this.#holdings.openSeam(endpoint, entry.id, fields.since);
        const ms = this.requestTimeout;
        if (!Number.isFinite(ms)) return;
        // Without the answer the seam never ends: start again on a new connection.
        timer = setTimeout(() => {
          this.#lost(link, new TimeoutError(`timed out: the daemon did not answer the resume of ${endpoint} within ${ms} ms`));
        }, ms);
      },
      onReply: (reply, entry) => {
        clearTimeout(timer);
        this.#resumed(fields, reply, entry);
      },
      onDrop: () => clearTimeout(timer),
    });
    return true;
  }

  #resumed(fields, reply, entry) {
    const { endpoint } = fields;
    this.#holdings.closeSeam(endpoint, entry.id);
    let event;
    if (reply.type === "ack") {
      this.#holdings.acked(endpoint, reply, fields.since, fields.epoch);
      event = { type: "resumed", endpoint, recovered: reply.recovered === true, first_seq: reply.first_seq };
    } else {
      const error = { code: String(reply.code), message: String(reply.message ?? "") };
      event = { type: "resumed", endpoint, recovered: false, first_seq: undefined, error };
      if (reply.code === "unknown_endpoint") this.#unsubscribed(endpoint, undefined);
    }
    this.#emitEvent(event);
  }

  // What an unsubscribe removed is gone: once nothing is held on the endpoint, none of its
  // events is delivered any more (not even those held back) and its callback goes.
  #unsubscribed(endpoint, topics) {
    if (this.#holdings.remove(endpoint, topics)) return;
    this.#callbacks.delete(endpoint);
    this.#held = this.#held.filter(([event]) => event.endpoint !== endpoint);
    this.#heldBytes = this.#held.reduce((sum, [, size]) => sum + size, 0);
    const folded = this.#folded.get(endpoint) ?? [];
    this.#folded.delete(endpoint);
    for (const waiter of folded) waiter.resolve({ firstSeq: undefined, recovered: undefined });
  }

  // Delivers an event, or holds it back while a reconnect's subscribes are unanswered.
  #emitEvent(event, size = 0) {
    if (this.#resync) {
      this.#held.push([event, size]);
      this.#heldBytes += size;
      return;
    }
    this.#deliver(event, size);
  }

  // Hands `event` (its frame `size` bytes; 0 for the client's own) to its callback, to a
  // waiting `nextEvent`, or to the bounded queue.
  #deliver(event, size = 0) {
    this.emit("event", event);
    if (NAMED_EVENTS.has(event.type)) this.emit(event.type, event);
    const callback = typeof event.endpoint === "string" ? this.#callbacks.get(event.endpoint) : undefined;
    if (callback) {
      try {
        const result = callback(event);
        if (result && typeof result.then === "function") {
          result.then(undefined, (err) => this.#callbackFailed(err));
        }
      } catch (err) {
        this.#callbackFailed(err);
      }
      return;
    }
    const waiter = this.#waiters.shift();
    if (waiter) {
      waiter.resolve(event);
      return;
    }
    const full = this.#queue.push(event, size || ownEventSize(event));
    if (full) this.#finish(new LimitError(full.limit, `the client closed: ${full.message}`));
  }

  #callbackFailed(err) {
    if (this.listenerCount("callbackError") > 0) this.emit("callbackError", err);
    else console.error("wsmux-client: subscription callback failed:", err);
  }

  #finish(reason) {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeReason = reason;
    this.#wake?.();
    this.#connecting?.destroy();
    const link = this.#link;
    this.#link = null;
    link?.sock.destroy();
    if (this.#resync) clearTimeout(this.#resync.timer);
    this.#resync = null;
    // What arrived while a reconnect's subscribes were unanswered is real: handed on.
    const held = this.#held;
    this.#held = [];
    this.#heldBytes = 0;
    for (const [event, size] of held) this.#deliver(event, size);
    const err = this.#closedError();
    for (const entry of this.#pending.values()) {
      clearTimeout(entry.timer);
      entry.reject(err);
    }
    this.#pending.clear();
    for (const entry of this.#inflight.values()) entry.hooks.onDrop?.(entry);
    this.#inflight.clear();
    for (const entry of this.#backlog.drain()) entry.hooks.onDrop?.(entry);
    for (const waiter of [...this.#folded.values()].flat()) waiter.reject(err);
    this.#folded.clear();
    for (const waiter of this.#reconnectWaiters.splice(0)) waiter.reject(err);
    for (const waiter of this.#waiters.splice(0)) waiter.resolve(null);
    this.emit("close", this.#closeReason);
    this.#resolveClosed(this.#closeReason);
  }
}
