// Type declarations for wsmux-client.

import { EventEmitter } from "node:events";

export const PROTOCOL_VERSION: 1;
export const DEFAULT_MAX_FRAME: number;
export const VERSION: string;

/** `str` = text message, `bin` = binary message. */
export type Data = string | Uint8Array;

export interface MessageEvent {
  type: "message";
  endpoint: string;
  seq: number;
  data: Data;
  /** Messages of this endpoint this connection missed just before this one (a seq gap). */
  missed: number;
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
  code: string;
  message: string;
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

export type Callback = (event: Event) => unknown;

export function connect(options?: ConnectOptions): Promise<Client>;

export class Client extends EventEmitter {
  readonly welcome: Welcome;
  readonly endpoints: string[];
  readonly closed: boolean;
  readonly maxFrame: number;
  requestTimeout: number;
  waitClosed(): Promise<Error>;
  subscribe(endpoint: string, callback?: Callback, options?: TimeoutOption): Promise<void>;
  unsubscribe(endpoint: string, options?: TimeoutOption): Promise<void>;
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
