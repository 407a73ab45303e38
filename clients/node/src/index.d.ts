// Type declarations for wsmux-client.

import { EventEmitter } from "node:events";

export const PROTOCOL_VERSION: 1;
export const DEFAULT_MAX_FRAME: number;
export const VERSION: string;
/** Every error code this package knows (PROTOCOL.md section 11); daemons may send others. */
export const ERROR_CODES: ReadonlySet<string>;
/** The codes after which the daemon closes the connection. */
export const FATAL_CODES: ReadonlySet<string>;

/** `str` = text message, `bin` = binary message. */
export type Data = string | Uint8Array;

export interface MessageEvent {
  type: "message";
  endpoint: string;
  seq: number;
  data: Data;
  /**
   * Messages this connection missed just before this one: the seq gap for a subscription to
   * the whole endpoint; for one to topics only, the gap in this topic's `topic_seq`.
   */
  missed: number;
  /** The topic the endpoint's `key` found in the message (endpoints with topics). */
  topic?: string;
  /** Rises by exactly 1 per message of `topic`, per daemon run; absent for unknown topics. */
  topic_seq?: number;
  [key: string]: unknown;
}

export interface StateEvent {
  type: "state";
  endpoint: string;
  /** `connecting`, `open`, `backoff`, `failed`, `closed`, or a value added later. */
  state: string;
  attempt?: number;
  retry_in_ms?: number;
  reason?: string;
  [key: string]: unknown;
}

export interface ErrorEvent {
  type: "error";
  /**
   * E.g. `lagged`, or `topic_rejected` (the upstream refused `topic`; not fatal). From the
   * client itself, once per outage: `permission_denied` (an untrusted socket, or the daemon
   * refused this uid) or `unsupported_version` when a reconnect attempt was refused; it keeps
   * trying.
   */
  code: string;
  message: string;
  endpoint?: string;
  topic?: string;
  /** The refusal of a reconnect attempt (UntrustedDaemonError, WsmuxError or ProtocolError). */
  error?: Error;
  [key: string]: unknown;
}

/** The daemon dropped messages of `endpoint` for this client (it read too slowly). */
export interface LaggedEvent {
  type: "lagged";
  endpoint: string;
  dropped: number;
  /**
   * Set when the client itself dropped them: `events()` not taken past `eventBufferBytes` (the
   * oldest messages go; not fetched again), or events held back over `maxHeldBytes` from a
   * daemon without history. Comes before any later message of `endpoint`.
   */
  client?: boolean;
  [key: string]: unknown;
}

/** The connection to the daemon dropped; the client is reconnecting. */
export interface DisconnectedEvent {
  type: "disconnected";
  reason: string;
}

/** How one endpoint came back after a reconnect, or after a resume. */
export interface ResumeResult {
  endpoint: string;
  /** True when nothing after the last seq received was lost. */
  recovered: boolean;
  /** The first seq delivered now (absent from daemons without history). */
  first_seq?: number;
  /** The daemon refused the subscribe (the endpoint is forgotten then). */
  error?: { code: string; message: string };
}

/**
 * Reconnected, and every subscribe of the reconnect was answered; the events that arrived
 * meanwhile follow.
 */
export interface ReconnectedEvent {
  type: "reconnected";
  /** The new connection's `welcome.epoch`. */
  epoch?: string;
  /** The daemon restarted (another epoch): seq numbers started again. */
  new_epoch: boolean;
  /** Every endpoint recovered. */
  recovered: boolean;
  endpoints: ResumeResult[];
}

/** An endpoint was resumed from the daemon's history after `lagged`. */
export interface ResumedEvent extends ResumeResult {
  type: "resumed";
}

export interface OtherEvent {
  type: string;
  [key: string]: unknown;
}

export type Event =
  | MessageEvent
  | StateEvent
  | ErrorEvent
  | LaggedEvent
  | DisconnectedEvent
  | ReconnectedEvent
  | ResumedEvent
  | OtherEvent;

export interface EndpointStatus {
  name: string;
  url: string;
  state: string;
  since: number;
  attempt?: number;
  connects: number;
  last_error?: string;
  heartbeat_rtt_us?: number;
  messages_in: number;
  bytes_in: number;
  messages_out: number;
  bytes_out: number;
  subscribers: number;
  reconnects?: number;
  queued?: number;
  lagged_drops?: number;
  /** Upstream connections open now (more than one when topics are sharded). */
  connections?: number;
  /** Topics of the endpoint (endpoints with topics configured), sorted by topic. */
  topics?: TopicStatus[];
  /** Messages held in the endpoint's history now. */
  history_messages?: number;
  /** Bytes held in the endpoint's history now. */
  history_bytes?: number;
  /** The oldest seq the history holds; absent when it is empty. */
  history_first_seq?: number;
  [key: string]: unknown;
}

export interface TopicStatus {
  topic: string;
  /** Local clients that hold it. */
  subscribers: number;
  /** `pending`, `active`, `rejected`, or a value added later. */
  state: string;
  /** Which upstream connection carries it (0 is the first). */
  connection: number;
  /** Messages of the topic so far (its last `topic_seq`). */
  messages: number;
  /** Why the upstream refused it (`rejected`). */
  reason?: string;
  [key: string]: unknown;
}

export interface Welcome {
  type: "welcome";
  version: number;
  server: string;
  endpoints: { name: string; state: string }[];
  /** New each time the daemon starts; absent from daemons without history. */
  epoch?: string;
  [key: string]: unknown;
}

export interface Reply {
  type: string;
  id?: number;
  [key: string]: unknown;
}

export interface ConnectOptions {
  /** Socket path; default `defaultSocketPath()`. */
  socket?: string;
  clientName?: string;
  /** Milliseconds for connecting and the handshake (default 10000). */
  timeout?: number;
  /** Default milliseconds for each reply (default 30000). */
  requestTimeout?: number;
  maxFrame?: number;
  /**
   * One more uid the daemon may run as (default `$WSMUX_DAEMON_UID`). Otherwise the socket
   * file and its directory must belong to this user or root (see `checkSocketFile`).
   */
  daemonUid?: number;
  /** Reconnect when the connection drops (default true); false: the client closes instead. */
  reconnect?: boolean;
  /** Resume from the daemon's history after `lagged` (default: the value of `reconnect`). */
  resumeOnLagged?: boolean;
  /** What `send` does while reconnecting: wait for the daemon (default) or fail at once. */
  whenDisconnected?: "buffer" | "fail";
  /** Encoded bytes of requests waiting for a reconnect (default 1 MiB). */
  bufferBytes?: number;
  /** Requests waiting for a reconnect (default 1000). */
  bufferMessages?: number;
  /** Sticky sends remembered per endpoint, to send again after a reconnect (default 1024). */
  maxSticky?: number;
  /** Their bytes per endpoint, data and undo plus 64 each (default 16 MiB). */
  maxStickyBytes?: number;
  /** Bytes of events held back while a reconnect's subscribes are answered (default 16 MiB). */
  maxHeldBytes?: number;
  /**
   * Bytes of frames of the events kept for `events()` (default 32 MiB, at least 64 KiB). Beyond,
   * the oldest messages are dropped and announced by a `lagged` event with `client: true`; if
   * other events alone fill it, the client closes with LimitError (`eventBufferBytes`).
   */
  eventBufferBytes?: number;
  /** First delay before reconnecting, in ms (default 100); doubles up to `reconnectMaxDelay`. */
  reconnectDelay?: number;
  /** Largest delay before reconnecting, in ms (default 1000); each is jittered to 50-100 %. */
  reconnectMaxDelay?: number;
}

export interface TimeoutOption {
  timeout?: number;
}

export interface TopicsOption extends TimeoutOption {
  /** Topics of an endpoint with `[endpoints.NAME.topics]`; absent: the whole endpoint. */
  topics?: Iterable<string>;
}

export interface SubscribeOptions extends TopicsOption {
  /** Resume: the last seq of the endpoint the application processed (PROTOCOL.md 19). */
  since?: number;
  /** With `since`: the `welcome.epoch` it belongs to; absent: the daemon's current one. */
  epoch?: string;
}

export interface SubscribeResult {
  /** The first seq this subscription delivers (absent from daemons without history). */
  firstSeq?: number;
  /** With `since`: whether nothing after `since` was lost. */
  recovered?: boolean;
}

export interface SendOptions extends TimeoutOption {
  /** false: fail with `not_connected` if the endpoint is not open, instead of queueing. */
  queue?: boolean;
  /** Written again after every upstream reconnect while this client is connected. */
  sticky?: boolean;
  /** With `sticky`: written upstream when this client disconnects. */
  undo?: string | Uint8Array | ArrayBuffer | ArrayBufferView;
}

export type Callback = (event: Event) => unknown;

export function connect(options?: ConnectOptions): Promise<Client>;

export class Client extends EventEmitter {
  /** The latest welcome (a reconnect replaces it). */
  readonly welcome: Welcome;
  readonly endpoints: string[];
  /** The daemon's epoch, from the latest welcome. */
  readonly epoch: string | undefined;
  /** Closed by `close()` or for good (not while reconnecting). */
  readonly closed: boolean;
  /** A connection to the daemon is up now. */
  readonly connected: boolean;
  readonly maxFrame: number;
  requestTimeout: number;
  waitClosed(): Promise<Error>;
  subscribe(endpoint: string, callback?: Callback, options?: SubscribeOptions): Promise<SubscribeResult>;
  subscribe(endpoint: string, options: SubscribeOptions): Promise<SubscribeResult>;
  /**
   * What it removes is forgotten at once: a reconnect before the ack (which rejects it with
   * ConnectionLostError) does not subscribe it again.
   */
  unsubscribe(endpoint: string, options?: TopicsOption): Promise<void>;
  send(endpoint: string, data: string | Uint8Array | ArrayBuffer | ArrayBufferView, options?: SendOptions): Promise<Reply>;
  status(options?: TimeoutOption): Promise<EndpointStatus[]>;
  /** Round trip in milliseconds. */
  ping(options?: TimeoutOption): Promise<number>;
  request(type: string, fields?: Record<string, unknown>, options?: TimeoutOption): Promise<Reply>;
  nextEvent(options?: TimeoutOption): Promise<Event | null>;
  events(options?: TimeoutOption): AsyncGenerator<Event, void, undefined>;
  waitForState(endpoint: string, state?: string, options?: TimeoutOption): Promise<StateEvent>;
  close(): Promise<void>;

  on(event: "state", listener: (event: StateEvent) => void): this;
  on(event: "message", listener: (event: MessageEvent) => void): this;
  on(event: "event", listener: (event: Event) => void): this;
  on(event: "disconnected", listener: (event: DisconnectedEvent) => void): this;
  on(event: "reconnected", listener: (event: ReconnectedEvent) => void): this;
  on(event: "resumed", listener: (event: ResumedEvent) => void): this;
  on(event: "close", listener: (reason: Error) => void): this;
  on(event: "callbackError", listener: (error: unknown) => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
}

export class WsmuxError extends Error {
  /** The daemon's stable error code, e.g. `not_connected`. */
  readonly code: string;
  readonly daemonMessage: string;
  readonly requestId?: number;
  readonly frame?: Record<string, unknown>;
  /** The endpoint the error frame names, if any. */
  readonly endpoint?: string;
  /** The topic the error frame names, if any. */
  readonly topic?: string;
  readonly fatal: boolean;
  static fromFrame(frame: Record<string, unknown>): WsmuxError;
}

export class ConnectionClosedError extends Error {
  readonly code: "ERR_WSMUX_CLOSED";
}

/** The connection was lost before this request's reply: its outcome is unknown. */
export class ConnectionLostError extends Error {
  readonly code: "ERR_WSMUX_LOST";
}

/** A send while reconnecting, with `whenDisconnected: "fail"`. */
export class NotConnectedError extends Error {
  readonly code: "ERR_WSMUX_NOT_CONNECTED";
}

/**
 * A bound of the client was reached: nothing was sent (`bufferBytes`, `bufferMessages`,
 * `maxSticky`, `maxStickyBytes`), or the client closed (`eventBufferBytes`: the application
 * stopped taking events).
 */
export class LimitError extends Error {
  readonly code: "ERR_WSMUX_LIMIT";
  /** The option naming the bound. */
  readonly limit: string;
}

export class TimeoutError extends Error {
  readonly code: "ERR_WSMUX_TIMEOUT";
}

export class DaemonUnavailableError extends Error {
  readonly code: "ERR_WSMUX_UNAVAILABLE";
  readonly socketPath: string;
}

/** The socket path does not look like the daemon's (another user's file, a symlink, ...). */
export class UntrustedDaemonError extends Error {
  readonly code: "ERR_WSMUX_UNTRUSTED";
  readonly socketPath: string;
  /** The owner found, when another user's ownership is the reason. */
  readonly uid: number | undefined;
}

export const DAEMON_UID_ENV: "WSMUX_DAEMON_UID";
export function expectedDaemonUid(explicit?: number): number | undefined;
/** Throws UntrustedDaemonError; returns the file's identity, or null if there is nothing to check. */
export function checkSocketFile(socketPath: string, expectedUid?: number): { dev: number; ino: number } | null;

export class ProtocolError extends Error {
  readonly code: "ERR_WSMUX_PROTOCOL";
}

export class FrameDecoder {
  constructor(maxFrame?: number);
  readonly maxFrame: number;
  readonly buffered: number;
  /** With `sizes`, each message's frame length is appended to it. */
  push(chunk: Uint8Array, sizes?: number[]): Record<string, unknown>[];
}

export function encodeFrame(msg: Record<string, unknown>, maxFrame?: number): Buffer;
export function decodeFrame(frame: Uint8Array, maxFrame?: number): Record<string, unknown>;
export function decodeBody(body: Uint8Array): Record<string, unknown>;
export function defaultSocketPath(env?: Record<string, string | undefined>, platform?: string): string;
