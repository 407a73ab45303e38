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
  /** E.g. `lagged`, or `topic_rejected` (the upstream refused `topic`; not fatal). */
  code: string;
  message: string;
  endpoint?: string;
  topic?: string;
  [key: string]: unknown;
}

export interface OtherEvent {
  type: string;
  [key: string]: unknown;
}

export type Event = MessageEvent | StateEvent | ErrorEvent | OtherEvent;

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
}

export interface TimeoutOption {
  timeout?: number;
}

export interface TopicsOption extends TimeoutOption {
  /** Topics of an endpoint with `[endpoints.NAME.topics]`; absent: the whole endpoint. */
  topics?: Iterable<string>;
}

export type Callback = (event: Event) => unknown;

export function connect(options?: ConnectOptions): Promise<Client>;

export class Client extends EventEmitter {
  readonly welcome: Welcome;
  readonly endpoints: string[];
  readonly closed: boolean;
  readonly maxFrame: number;
  requestTimeout: number;
  waitClosed(): Promise<Error>;
  subscribe(endpoint: string, callback?: Callback, options?: TopicsOption): Promise<void>;
  subscribe(endpoint: string, options: TopicsOption): Promise<void>;
  unsubscribe(endpoint: string, options?: TopicsOption): Promise<void>;
  send(endpoint: string, data: string | Uint8Array | ArrayBuffer | ArrayBufferView, options?: TimeoutOption): Promise<Reply>;
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
  push(chunk: Uint8Array): Record<string, unknown>[];
}

export function encodeFrame(msg: Record<string, unknown>, maxFrame?: number): Buffer;
export function decodeFrame(frame: Uint8Array, maxFrame?: number): Record<string, unknown>;
export function decodeBody(body: Uint8Array): Record<string, unknown>;
export function defaultSocketPath(env?: Record<string, string | undefined>, platform?: string): string;
