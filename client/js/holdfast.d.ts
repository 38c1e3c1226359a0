// Type declarations for holdfast.js, the holdfast browser and Node client.
// Hand-written; keep in step with holdfast.js and README.md.

/** The client's version. */
export declare const VERSION: string;

/** A transport, best first: WebSocket, Server-Sent Events, long-polling. */
export type Transport = "websocket" | "sse" | "long-poll";

/** Close codes of the wire protocol (PROTOCOL.md §7). */
export declare const CloseCodes: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  PROTOCOL_ERROR: 1002;
  TOO_BIG: 1009;
  INTERNAL_ERROR: 1011;
  RECONNECT: 4000;
  BAD_REQUEST: 4400;
  UNAUTHORIZED: 4401;
  FORBIDDEN: 4403;
  TIMEOUT: 4408;
  REPLACED: 4409;
  SESSION_LOST: 4410;
  TOO_SLOW: 4429;
  OVERLOADED: 4503;
}>;

/** Reconnect delays: attempt n waits a random delay in
 * `[base × (1 − jitter), base]`, `base = min(initial × 2ⁿ, max)`. */
export interface BackoffOptions {
  /** First delay, ms. Default 250. */
  initial?: number;
  /** Longest delay, ms. Default 30 000. */
  max?: number;
  /** Random fraction of each delay, 0–1. Default 0.5. */
  jitter?: number;
  /** A connection that lasted this long (ms) resets the backoff. Default 10 000. */
  resetAfter?: number;
}

export interface HoldfastOptions {
  /** Transports to use, in the order to try them. Default all:
   * `["websocket", "sse", "long-poll"]`. */
  transports?: Transport[];
  /** A first attempt on a transport that has not delivered its first
   * frame after this long (ms) is blocked: the next one is tried. Also the
   * time a re-probe of a better transport gets. A transport that already
   * carried this session gets twice as long when it comes back, and each
   * greeting timeout in a row doubles the deadline, up to 8 × this.
   * Default 2000. */
  probeTimeout?: number;
  /** A WebSocket or SSE connection is dead when nothing arrived for the
   * server's ping interval plus this (ms). Default: half the ping
   * interval. */
  heartbeatTolerance?: number | null;
  /** Reconnect backoff. */
  backoff?: BackoffOptions;
  /** Most bytes sent but not yet acknowledged; past it `send` throws a
   * `RangeError` with `code: "BUFFER_FULL"`. Default 1 MiB. */
  maxUnackedBytes?: number;
  /** How long `close()` waits for the server's answer (ms, extended while
   * acknowledgements arrive). Default 5000. */
  closeTimeout?: number;
  /** How long (ms) to keep trying before the session ever opened, then
   * give up (`close` with code 1006). Default `null`: forever, as a page
   * should keep trying while it is open. Once the session opened the
   * client never gives up: the server says when the session is lost. */
  connectTimeout?: number | null;
  /** First wait (ms) before re-probing a better transport while on a
   * fallback; doubles after each failed probe, up to 5 minutes.
   * Default 15 000. */
  reprobeAfter?: number;
  /** How long (ms) the transport that worked is remembered for this server
   * (sessionStorage in browsers, memory in Node). Default 10 minutes. */
  rememberFor?: number;
  /** Extra request headers. Node only for WebSocket (browsers cannot set
   * them); on HTTP transports cross-origin headers need CORS. */
  headers?: Record<string, string>;
  /** `fetch` credentials mode for the HTTP transports. Default
   * `"same-origin"`. */
  credentials?: "omit" | "same-origin" | "include";
  /** The WebSocket constructor. Default `globalThis.WebSocket` (Node 20:
   * run with `--experimental-websocket`, or pass the `ws` package's). It
   * is called as `new WebSocket(url, protocols)` — a resume offers the
   * session key as the subprotocol `holdfast.key.<key>` beside
   * `holdfast.v1` — and in Node with `headers` as
   * `new WebSocket(url, { protocols, headers })`. */
  WebSocket?: new (url: string, protocols?: unknown) => WebSocket;
  /** The fetch function. Default `globalThis.fetch`. Passing one turns
   * `share` off (another tab could not use it). */
  fetch?: typeof fetch;
  /** Share one connection among the tabs of this origin (PROTOCOL.md
   * §11.3). Default `true`. Browsers open at most six HTTP/1.1
   * connections per host for all tabs together; a session on SSE or
   * long-polling holds one for its stream or held poll, so six tabs
   * would leave none for sending. With sharing, the tabs elect a leader
   * (Web Locks) that holds one shared stream and one shared poll for all
   * of them (relayed over a BroadcastChannel); each tab keeps its own
   * session, and sends its own messages with short requests. It applies
   * in browser pages with Web Locks and BroadcastChannel (secure
   * contexts: HTTPS or localhost) to SSE and long-polling (WebSockets do
   * not count against the six); Node, workers and `share: false` give
   * each session its own requests — one long-lived request plus short
   * sends per tab, so at most five such tabs work over HTTP/1.1 (HTTP/2
   * lifts the limit). */
  share?: boolean;
}

export type ReadyState = 0 | 1 | 2 | 3;

/** `open`: the session opened (once). */
export interface HoldfastOpenEvent extends Event {
  readonly transport: Transport;
  readonly sessionId: string;
}

/** `close`: the session is over (the last event). */
export declare class HoldfastCloseEvent extends Event {
  readonly code: number;
  readonly reason: string;
  /** It ended with a `close` frame from the server (rather than the client
   * giving up or closing before it opened). */
  readonly wasClean: boolean;
  /** The server no longer knew the session (code 4410): resume window
   * expired or the server restarted. Messages in flight may be lost. */
  readonly sessionLost: boolean;
  /** For 4503 (overloaded): when the server asked to come back, ms. */
  readonly retryAfter?: number;
}

/** `error`: a failure the application should hear about; a `close`
 * follows. */
export declare class HoldfastErrorEvent extends Event {
  readonly message: string;
  readonly error?: unknown;
}

/** `reconnecting`: the transport dropped; the session resumes after
 * `delay`. */
export interface HoldfastReconnectingEvent extends Event {
  /** 1, 2, 3, … since the last stable connection. */
  readonly attempt: number;
  /** The wait, ms (backoff with jitter, or the server's Retry-After). */
  readonly delay: number;
  /** Why, for logs. */
  readonly reason: string;
}

/** `resumed`: the session is back, whole — nothing lost or duplicated. */
export interface HoldfastResumedEvent extends Event {
  readonly transport: Transport;
}

/** `transportchange`: the session now travels on another transport. */
export interface HoldfastTransportChangeEvent extends Event {
  readonly from: Transport;
  readonly to: Transport;
}

export interface HoldfastEventMap {
  open: HoldfastOpenEvent;
  message: MessageEvent<string | ArrayBuffer | Blob>;
  close: HoldfastCloseEvent;
  error: HoldfastErrorEvent;
  reconnecting: HoldfastReconnectingEvent;
  resumed: HoldfastResumedEvent;
  transportchange: HoldfastTransportChangeEvent;
}

/**
 * A holdfast session: one ordered, exactly-once message stream to the
 * server, over whichever transport the network allows, surviving reconnects
 * and transport switches. Mirrors the browser WebSocket.
 */
export declare class Holdfast extends EventTarget {
  static readonly CONNECTING: 0;
  static readonly OPEN: 1;
  static readonly CLOSING: 2;
  static readonly CLOSED: 3;
  readonly CONNECTING: 0;
  readonly OPEN: 1;
  readonly CLOSING: 2;
  readonly CLOSED: 3;

  /**
   * @param url `http(s)://host/mount` (or `ws(s)://`, or relative in a
   *   page), e.g. `"/realtime"`. Its query is kept on every request.
   * @throws SyntaxError for a URL that is not http(s) or ws(s); TypeError
   *   for bad options.
   */
  constructor(url: string | URL, options?: HoldfastOptions);

  /** The server's base URL, `http(s)://host/mount`. */
  readonly url: string;
  /** CONNECTING until the session opens; OPEN while it lives (also while
   * reconnecting); CLOSING after `close()`; CLOSED once over. */
  readonly readyState: ReadyState;
  /** Bytes sent or queued but not yet acknowledged by the server. */
  readonly bufferedAmount: number;
  /** The transport carrying the session now; null while connecting or
   * reconnecting. */
  readonly transport: Transport | null;
  /** The session's public id (for logs and support), once open. */
  readonly sessionId: string | null;
  /** Why the page is on the transport it is on: each step down the
   * transport order, oldest first. The server is told the same, once. */
  readonly diagnostics: {
    transport: Transport | null;
    fallbacks: {
      from: Transport;
      to: Transport;
      /** unreachable, status, timeout, no_first_frame, invalid, closed,
       * silent, detached, refused or flapping */
      reason: string;
      /** The HTTP status, for `reason: "status"`. */
      status: number | null;
      /** The close code, for `detached` and `refused`. */
      code: number | null;
      afterMs: number;
    }[];
  };
  /** How binary messages arrive. Default `"arraybuffer"`. */
  binaryType: "arraybuffer" | "blob";

  /**
   * Queues a message: text, or binary (ArrayBuffer, typed array, DataView,
   * Blob). Messages reach the server in order, exactly once, across
   * reconnects; while offline they wait and go out first.
   * @throws InvalidStateError once closing or closed; RangeError
   *   (`code: "TOO_BIG"`) past the server's message limit, or
   *   (`code: "BUFFER_FULL"`) past `maxUnackedBytes`; TypeError for other
   *   types.
   */
  send(data: string | ArrayBuffer | ArrayBufferView | Blob): void;

  /**
   * Ends the session: messages already queued are delivered first, then
   * the server confirms and `close` fires.
   * @param code 1000 or 3000–4999. Default 1000.
   * @param reason At most 123 bytes of UTF-8.
   */
  close(code?: number, reason?: string): void;

  onopen: ((this: Holdfast, event: HoldfastOpenEvent) => unknown) | null;
  onmessage: ((this: Holdfast, event: MessageEvent<string | ArrayBuffer | Blob>) => unknown) | null;
  onclose: ((this: Holdfast, event: HoldfastCloseEvent) => unknown) | null;
  onerror: ((this: Holdfast, event: HoldfastErrorEvent) => unknown) | null;
  onreconnecting: ((this: Holdfast, event: HoldfastReconnectingEvent) => unknown) | null;
  onresumed: ((this: Holdfast, event: HoldfastResumedEvent) => unknown) | null;
  ontransportchange: ((this: Holdfast, event: HoldfastTransportChangeEvent) => unknown) | null;

  addEventListener<K extends keyof HoldfastEventMap>(
    type: K,
    listener: (this: Holdfast, event: HoldfastEventMap[K]) => unknown,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof HoldfastEventMap>(
    type: K,
    listener: (this: Holdfast, event: HoldfastEventMap[K]) => unknown,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

/** How an attachment ended, as the Connector hears it. */
export type ConnectorEnding =
  | "unreachable"
  | "timeout"
  | "no_first_frame"
  | "invalid"
  | "closed"
  | "silent"
  | "stopped"
  | "session_closed"
  | { status: number; retryAfter?: number }
  | { detached: ConnectorClose }
  | { refused: ConnectorClose };

export interface ConnectorClose {
  code: number;
  reason: string;
  retryAfter?: number;
}

export interface ConnectorFailure {
  transport: Transport;
  cause: string;
  status: number | null;
  code: number | null;
  afterOpen: boolean;
}

export type ConnectorAction =
  /** `greeting`: ms the attachment has to deliver its first frame. */
  | { attach: Transport; fresh: boolean; greeting: number }
  | { stop: true }
  | { probe: Transport; id: number }
  | { remember: Transport }
  | { reconnecting: { attempt: number; delay: number; reason: string } }
  | { check: true }
  | { giveUp: { refused: ConnectorClose } | { noTransport: ConnectorFailure[] } };

/**
 * The client's connection policy — which transport to attach, when to fall
 * back, back off, re-probe, switch up or give up — as a state machine with
 * no IO: time (ms) is passed to every call, random numbers are injected.
 * The engine of `Holdfast` drives it; exported for tests and the curious.
 * It is the same machine as the Rust client's, checked against the same
 * scenario vectors.
 */
export declare class Connector {
  static describe(failure: ConnectorFailure): string;
  constructor(
    config?: {
      transports?: Transport[];
      remembered?: Transport | null;
      backoff?: BackoffOptions;
      reprobeAfter?: number;
      connectTimeout?: number | null;
      sendRetries?: number;
      probeTimeout?: number;
    },
    now?: number,
    random?: () => number,
  );
  opened(now: number): void;
  trusted(now: number): void;
  ended(now: number, end: ConnectorEnding): void;
  probed(now: number, id: number, works: boolean): void;
  wake(now: number, networkChanged: boolean): void;
  /** A send request failed. `carried`: whether it held messages (or the
   * close behind them) or only acks, pings and pongs; the two count their
   * failures apart. Default "messages". */
  sendFailed(
    failure:
      | "failed"
      | "refused"
      | { failed: { retryAfter?: number } }
      | { overloaded: { retryAfter?: number } },
    carried?: "messages" | "control",
  ): { resend: number } | { endAttachment: true };
  sendSucceeded(carried?: "messages" | "control"): void;
  poll(now: number): ConnectorAction | null;
  pollTimeout(): number | null;
  fallbacks(): {
    from: Transport;
    to: Transport;
    cause: string;
    status: number | null;
    code: number | null;
    after: number;
  }[];
  readonly done: boolean;
}
