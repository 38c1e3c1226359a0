// holdfast — the browser and Node client.
//
// One ordered, exactly-once message stream to a holdfast server over
// WebSocket, Server-Sent Events or HTTP long-polling, whichever the network
// allows. The API mirrors the browser WebSocket:
//
//   import { Holdfast } from "/realtime/client.js";
//   const hf = new Holdfast("/realtime");
//   hf.onmessage = (event) => console.log(event.data);
//   hf.send("hello");
//
// Connections drop and transports switch; the session — and every message
// in it — survives them. The wire protocol is PROTOCOL.md (version 1).
// Plain ES module, no dependencies, no build step; browsers and Node >= 20.

export const VERSION = "0.1.0";

const PROTOCOL_VERSION = 1;
/** Texts of at least this many UTF-8 bytes travel as native WebSocket
 * messages where the greeting granted it (PROTOCOL.md §2.2.1); smaller ones
 * share a JSON batch with their neighbours and the acks, which is cheaper. */
const NATIVE_TEXT_MIN = 1024;

/** Transport names, best first. */
const TRANSPORTS = Object.freeze(["websocket", "sse", "long-poll"]);
const ENDPOINTS = { websocket: "ws", sse: "sse", "long-poll": "poll" };

/** Where the session key travels instead of the URL (PROTOCOL.md §1): URLs
 * end up in proxies' access logs. HTTP requests carry it in this header;
 * a WebSocket offers it as the subprotocol `holdfast.key.<key>`, beside
 * `holdfast.v1`, which the server selects (browsers cannot set headers on
 * a WebSocket). */
const KEY_HEADER = "Holdfast-Key";
const SUBPROTOCOL = "holdfast.v1";
const KEY_SUBPROTOCOL = "holdfast.key.";

/** Close codes of PROTOCOL.md §7. */
export const CloseCodes = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  RECONNECT: 4000,
  BAD_REQUEST: 4400,
  UNAUTHORIZED: 4401,
  FORBIDDEN: 4403,
  TIMEOUT: 4408,
  REPLACED: 4409,
  SESSION_LOST: 4410,
  TOO_SLOW: 4429,
  OVERLOADED: 4503,
});

const DEFAULTS = Object.freeze({
  transports: TRANSPORTS,
  probeTimeout: 2000,
  heartbeatTolerance: null, // null: half the server's ping interval
  backoff: Object.freeze({ initial: 250, max: 30000, jitter: 0.5, resetAfter: 10000 }),
  maxUnackedBytes: 1024 * 1024,
  closeTimeout: 5000,
  // null: a page keeps trying to open its session for as long as it is open.
  connectTimeout: null,
  reprobeAfter: 15000,
  rememberFor: 10 * 60 * 1000,
  credentials: "same-origin",
  share: true,
});

/** Acknowledge after this many messages… (PROTOCOL.md §3) */
const ACK_EVERY = 32;
/** …or this long after the first unacknowledged one. */
const ACK_DELAY = 100;
/** The close code when the client gave up before the session opened
 * (`connectTimeout`): WebSocket's "abnormal closure", never on the wire. */
const GAVE_UP = 1006;
/** Message limit assumed until the server's `open` says otherwise. */
const DEFAULT_MAX_MESSAGE = 64 * 1024;
/** Shortest timeout of a send request. */
const MIN_SEND_TIMEOUT = 10000;
/** An SSE event larger than this is a broken stream, not data. */
const MAX_SSE_EVENT = 16 * 1024 * 1024;

const now = () => Date.now();
const inBrowser = typeof window !== "undefined" && typeof document !== "undefined";

// ---------------------------------------------------------------------------
// Events

class HoldfastEvent extends Event {
  constructor(type, fields) {
    super(type);
    Object.assign(this, fields);
  }
}

/** `close`: the session is over. */
export class HoldfastCloseEvent extends HoldfastEvent {
  constructor(fields) {
    super("close", fields);
  }
}

/** `error`: something went wrong that the application should hear about. */
export class HoldfastErrorEvent extends HoldfastEvent {
  constructor(fields) {
    super("error", fields);
  }
}

function messageEvent(data) {
  return typeof MessageEvent === "function"
    ? new MessageEvent("message", { data })
    : new HoldfastEvent("message", { data });
}

// ---------------------------------------------------------------------------
// Small helpers

/** UTF-8 length of a well-formed string. */
function utf8Length(text) {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) bytes += 1;
    else if (c < 0x800) bytes += 2;
    else if (c >= 0xd800 && c <= 0xdbff) {
      bytes += 4;
      i++;
    } else bytes += 3;
  }
  return bytes;
}

/** Replaces lone surrogates with U+FFFD, as WebSocket.send does. */
function wellFormed(text) {
  if (typeof text.toWellFormed === "function") return text.toWellFormed();
  return text.replace(
    /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g,
    "\ufffd",
  );
}

function toBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function fromBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** A protocol violation by the server (the transport is dropped and the
 * session resumed). */
class ProtocolViolation extends Error {}

/** A request that got no answer in time. */
class RequestTimeout extends Error {
  name = "TimeoutError";
}

/** Parses one batch (a JSON array of frames). */
function parseBatch(text) {
  let batch;
  try {
    batch = JSON.parse(text);
  } catch {
    throw new ProtocolViolation(`not JSON: ${preview(text)}`);
  }
  if (!Array.isArray(batch)) throw new ProtocolViolation(`not a batch: ${preview(text)}`);
  checkFrames(batch);
  return batch;
}

function checkFrames(batch) {
  for (const frame of batch) {
    if (frame === null || typeof frame !== "object" || typeof frame.t !== "string") {
      throw new ProtocolViolation(`not a frame: ${preview(JSON.stringify(frame))}`);
    }
  }
}

/** Parses one shared batch (PROTOCOL.md §11.2): `[[tag, batch], …]`. */
function parseSharedBatch(text) {
  let pairs;
  try {
    pairs = JSON.parse(text);
  } catch {
    throw new ProtocolViolation(`not JSON: ${preview(text)}`);
  }
  if (!Array.isArray(pairs)) throw new ProtocolViolation(`not a shared batch: ${preview(text)}`);
  for (const pair of pairs) {
    if (!Array.isArray(pair) || pair.length !== 2 || !Number.isInteger(pair[0]) || !Array.isArray(pair[1])) {
      throw new ProtocolViolation(`not a [tag, batch] pair: ${preview(JSON.stringify(pair))}`);
    }
    checkFrames(pair[1]);
  }
  return pairs;
}

function preview(text) {
  const s = String(text);
  return s.length > 80 ? `${s.slice(0, 80)}…` : s;
}

function describeError(error) {
  if (!error) return "unknown error";
  const cause = error.cause;
  const detail = cause && (cause.code || cause.message);
  return detail ? `${error.message} (${detail})` : String(error.message || error);
}

/** `Retry-After` (seconds or an HTTP date) in milliseconds. */
function parseRetryAfter(value) {
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds) && seconds >= 0) return seconds * 1000;
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now());
}

/** The close fields of a `close` or `detach` frame. */
function closeOf(frame) {
  return {
    code: Number.isInteger(frame.code) ? frame.code : CloseCodes.INTERNAL_ERROR,
    reason: typeof frame.reason === "string" ? frame.reason : "",
    retryAfter: Number.isFinite(frame.retry_after) ? frame.retry_after : undefined,
  };
}

/** What a non-200 answer means: holdfast's own refusals carry a JSON
 * `close` or `detach` frame (`{ closeFrame }`, `{ detach }`); anything else
 * (502, 504, an HTML page) comes from an intermediary and is never data
 * (`{ retryAfter }`, from its `Retry-After`). */
function classifyHttp(text, headers) {
  let first;
  try {
    first = parseBatch(text)[0];
  } catch {
    first = undefined;
  }
  if (first && first.t === "close") return { closeFrame: first };
  const retryAfter = parseRetryAfter(headers.get("retry-after"));
  if (first && first.t === "detach") {
    const detach = closeOf(first);
    return { detach: { ...detach, retryAfter: detach.retryAfter ?? retryAfter } };
  }
  return { retryAfter };
}

/** Whether a failed fetch never reached any server (refused, DNS, no
 * network). Browsers do not say; their network errors count as such. */
function unreachable(error) {
  if (error instanceof RequestTimeout || (error && error.name === "AbortError")) return false;
  const code = error && error.cause && error.cause.code;
  if (!code) return true;
  return [
    "ECONNREFUSED",
    "ENOTFOUND",
    "EAI_AGAIN",
    "EHOSTUNREACH",
    "ENETUNREACH",
    "ENETDOWN",
    "EADDRNOTAVAIL",
    "UND_ERR_CONNECT_TIMEOUT",
  ].includes(code);
}

/** The ending of an attachment whose request failed without an answer. */
function failedRequest(error) {
  if (unreachable(error)) return "unreachable";
  return error instanceof RequestTimeout ? "timeout" : "closed";
}

/** Reads a response body as text, giving up after `timeout` ms. */
async function readText(response, timeout) {
  let timer;
  const expired = new Promise((resolve) => {
    timer = setTimeout(() => resolve(""), timeout);
  });
  try {
    return await Promise.race([response.text().catch(() => ""), expired]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------
// What worked, per server: sessionStorage in browsers (this tab, with an
// expiry), memory in Node.

const memory = new Map();

function storage() {
  try {
    return typeof sessionStorage !== "undefined" ? sessionStorage : null;
  } catch {
    return null; // sandboxed frames throw on access
  }
}

function recall(base) {
  const key = `holdfast:transport:${base}`;
  let entry = memory.get(key);
  const store = storage();
  if (store) {
    try {
      entry = JSON.parse(store.getItem(key) || "null");
    } catch {
      entry = null;
    }
  }
  return entry && entry.until > now() ? entry.transport : null;
}

function remember(base, transport, duration) {
  const key = `holdfast:transport:${base}`;
  const entry = { transport, until: now() + duration };
  memory.set(key, entry);
  const store = storage();
  if (store) {
    try {
      store.setItem(key, JSON.stringify(entry));
    } catch {
      // quota or privacy mode: memory only
    }
  }
}

// ---------------------------------------------------------------------------
// The upstream replay buffer (PROTOCOL.md §3)
//
//      acked          cursor                 sent
//   ─────┤───────────────┤─────────────────────┤
//        │ sent, unacked │ queued, not yet sent │
//        └────────── replay buffer ─────────────┘
//
// Messages leave only when acknowledged; a new attachment rewinds the
// cursor to `acked`, so anything unacknowledged goes out again.

/** What a message counts against the server's upstream window
 * (PROTOCOL.md §3.1): its payload bytes plus this. */
const MESSAGE_OVERHEAD = 128;

function charge(entry) {
  return entry.size + MESSAGE_OVERHEAD;
}

class Outbox {
  entries = []; // entries[i].seq === acked + 1 + i
  nextSeq = 1;
  acked = 0;
  cursor = 0;
  bytes = 0;
  /** What the messages in (acked, cursor] — sent on the current path, not
   * acknowledged — count against the upstream window. */
  inFlight = 0;

  get sent() {
    return this.nextSeq - 1;
  }

  /** Queues a message: `{ text }` or `{ bytes }` (or a Blob still being
   * read, `ready: false`). */
  push(entry) {
    entry.seq = this.nextSeq++;
    this.entries.push(entry);
    this.bytes += entry.size;
    return entry;
  }

  /** A cumulative acknowledgement; returns the bytes it freed. */
  ack(seq) {
    if (!Number.isSafeInteger(seq) || seq < 0) throw new ProtocolViolation(`bad ack ${seq}`);
    if (seq > this.sent) {
      throw new ProtocolViolation(`ack ${seq} is beyond the last message sent (${this.sent})`);
    }
    if (seq <= this.acked) return 0;
    const sentOnPath = this.cursor - this.acked;
    const freed = this.entries.splice(0, seq - this.acked);
    let bytes = 0;
    freed.forEach((entry, i) => {
      bytes += entry.size;
      if (i < sentOnPath) this.inFlight -= charge(entry);
    });
    this.bytes -= bytes;
    this.acked = seq;
    this.cursor = Math.max(this.cursor, seq);
    return bytes;
  }

  rewind() {
    this.cursor = this.acked;
    this.inFlight = 0;
  }

  /** What the messages an acknowledgement of `seq` would free count
   * against the window. */
  chargeThrough(seq) {
    let total = 0;
    for (const entry of this.entries.slice(0, Math.max(0, seq - this.acked))) total += charge(entry);
    return total;
  }

  /** Whether a message is ready to go out. */
  hasPending() {
    const next = this.entries[this.cursor - this.acked];
    return next !== undefined && next.ready;
  }

  /** Whether messages are waiting to be transmitted (ready or not). */
  hasUnsent() {
    return this.cursor < this.sent;
  }

  /** The next messages to transmit: JSON frames while they fit in
   * `budget` bytes (a comma each; a single large one travels alone), and
   * with `nativeBinary` binary entries as they are (§2.2: no part of any
   * batch), with `nativeText` also texts of NATIVE_TEXT_MIN bytes or more
   * (§2.2.1) — all while their charges fit in `window` (§3.1; `null`: no
   * limit). Returns whether it took any. */
  take(budget, nativeBinary, parts, window, nativeText) {
    let took = false;
    let json = false;
    while (this.hasPending()) {
      const entry = this.entries[this.cursor - this.acked];
      if (window !== null) {
        if (charge(entry) > window) break;
        window -= charge(entry);
      }
      if (
        nativeBinary &&
        (entry.bytes !== undefined || (nativeText && entry.size >= NATIVE_TEXT_MIN))
      ) {
        parts.push(entry);
      } else {
        const size = encodedSize(entry) + 1;
        if (json && size > budget) break;
        budget -= size;
        parts.push(encodedFrame(entry));
        json = true;
      }
      this.cursor++;
      this.inFlight += charge(entry);
      took = true;
    }
    return took;
  }
}

/** The JSON frame of a queued message, computed once. */
function encodedFrame(entry) {
  if (entry.json === undefined) {
    entry.json =
      entry.text !== undefined
        ? JSON.stringify({ t: "msg", seq: entry.seq, d: entry.text })
        : `{"t":"bin","seq":${entry.seq},"d":"${toBase64(entry.bytes)}"}`;
  }
  return entry.json;
}

function encodedSize(entry) {
  if (entry.jsonSize === undefined) entry.jsonSize = utf8Length(encodedFrame(entry));
  return entry.jsonSize;
}

/** Room for `,{"t":"ack","seq":<53-bit number>}` in a batch. */
const ACK_ROOM = 36;

function closeFrame({ code, reason }) {
  return JSON.stringify({ t: "close", code, reason });
}

/** A native WebSocket message (PROTOCOL.md §2.2): binary, or a text
 * (type 2, §2.2.1; `entry.size` is its UTF-8 length). */
function binaryMessage(entry) {
  const text = entry.bytes === undefined;
  const out = new Uint8Array(9 + (text ? entry.size : entry.bytes.length));
  const view = new DataView(out.buffer);
  view.setUint8(0, text ? 2 : 1);
  view.setUint32(1, Math.floor(entry.seq / 2 ** 32));
  view.setUint32(5, entry.seq >>> 0);
  if (text) new TextEncoder().encodeInto(entry.text, out.subarray(9));
  else out.set(entry.bytes, 9);
  return out;
}

// ---------------------------------------------------------------------------
// Attachments: one transport carrying the session, from its request to its
// end. Each ends exactly once, with one of the connection policy's endings
// ("closed", "silent", { status, retryAfter }, … — see "The connection
// policy" below), which the engine reports to its Connector.

class Attachment {
  constructor(engine, kind, target, greetingTimeout = engine.options.probeTimeout) {
    this.engine = engine;
    this.kind = kind;
    this.target = target;
    // How long (ms) it has to deliver its first frame: the connection
    // policy's deadline for it (the probe timeout, longer for a transport
    // this session already used).
    this.greetingTimeout = greetingTimeout;
    this.startedAt = now();
    this.lastHeard = this.startedAt;
    this.greeted = false;
    // The server proved this transport works: its greeting, or on a
    // continuing poll (greeted at once) the first answer. Until then an
    // ending is a failed attempt.
    this.proven = false;
    // Something answered (an upgrade, response headers): a transport with
    // no first frame past the probe timeout had no answer, or was buffered
    // or silent.
    this.responded = false;
    this.announced = false;
    this.sentAny = false;
    this.receivedAny = false;
    this.ackDue = false;
    this.verifyBy = 0;
    this.reportedTrusted = false;
    // The report its requests carry until it opens (`offerReport`).
    this.report = null;
    this.reporting = 0;
    this.ended = false;
    this.done = new Promise((resolve) => {
      this.resolve = resolve;
    });
  }

  get streaming() {
    return this.kind !== "long-poll";
  }

  get trusted() {
    return this.sentAny && this.receivedAny;
  }

  /** Ends the attachment (once) with a connection-policy ending. */
  end(ending) {
    if (this.ended) return;
    this.ended = true;
    this.teardown();
    this.resolve(ending);
  }

  /** The transport itself ended, failed or was cut (no `detach`, no
   * `close`). */
  lost() {
    this.end("closed");
  }

  /** A non-200 answer from an HTTP endpoint. */
  refused(response, text) {
    const verdict = classifyHttp(text, response.headers);
    if (verdict.closeFrame) {
      this.engine.onFrames(this, [verdict.closeFrame], true);
      return;
    }
    this.end(
      verdict.detach
        ? { detached: verdict.detach }
        : { status: response.status, retryAfter: verdict.retryAfter },
    );
  }

  /** A closer look after the network came back or the tab woke up. */
  check() {}

  flush() {}

  teardown() {}
}

class WebSocketAttachment extends Attachment {
  start() {
    const url = this.engine.endpoint("websocket", this.target, false, this.report);
    try {
      this.ws = this.engine.newWebSocket(url, this.target.key);
    } catch {
      // A URL or protocols the WebSocket refuses, or a page forbidding it.
      this.lost();
      return;
    }
    const ws = this.ws;
    this.nativeText = false;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      this.responded = true;
    };
    ws.onmessage = (event) => this.receive(event.data);
    // A WebSocket does not say why it failed (a refused upgrade and a
    // server that is down look alike): "closed" falls back to the next
    // transport, whose HTTP answer (or none) tells.
    ws.onclose = ws.onerror = () => this.lost();
  }

  receive(data) {
    if (this.ended) return;
    let frames;
    try {
      frames = typeof data === "string" ? parseBatch(data) : [this.binaryFrame(data)];
    } catch {
      this.end("invalid");
      return;
    }
    // The greeting's answer to our offer (§2.2.1), for this socket only.
    if (!this.greeted && frames[0] && frames[0].wstext === 1) this.nativeText = true;
    this.engine.onFrames(this, frames, false);
  }

  /** A native binary message (§2.2) as a frame. */
  binaryFrame(data) {
    const buffer =
      data instanceof ArrayBuffer
        ? data
        : ArrayBuffer.isView(data)
          ? data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength)
          : null;
    if (!buffer || buffer.byteLength < 9) throw new ProtocolViolation("short binary message");
    const view = new DataView(buffer);
    const type = view.getUint8(0);
    const seq = view.getUint32(1) * 2 ** 32 + view.getUint32(5);
    // A text (§2.2.1) must be UTF-8: a fatal decoder throws otherwise.
    if (type === 2) return { t: "msg", seq, d: new TextDecoder("utf-8", { fatal: true }).decode(new Uint8Array(buffer, 9)) };
    if (type !== 1) throw new ProtocolViolation(`binary message of unknown type ${type}`);
    return { t: "bin", seq, payload: buffer.slice(9) };
  }

  flush() {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) return;
    let parts;
    while (!this.ended && (parts = this.engine.transmit(this, true, this.nativeText))) {
      let text = [];
      for (const part of parts) {
        if (typeof part === "string") {
          text.push(part);
          continue;
        }
        if (text.length) ws.send(`[${text.join(",")}]`);
        text = [];
        ws.send(binaryMessage(part));
      }
      if (text.length) ws.send(`[${text.join(",")}]`);
    }
  }

  /** Pings: a socket that does not answer within the probe timeout after
   * the network changed is dead, whatever TCP thinks. */
  check() {
    if (!this.greeted || !this.ws || this.ws.readyState !== 1) return;
    this.engine.pingOnce(this);
    this.verifyBy = now() + this.engine.options.probeTimeout;
    this.engine.schedule();
  }

  teardown() {
    const ws = this.ws;
    if (!ws) return;
    ws.onmessage = ws.onclose = ws.onerror = ws.onopen = null;
    try {
      ws.close(1000);
    } catch {
      // already closing
    }
  }
}

/** Whether a send request's frames hold messages (or the close behind
 * them), rather than only acks, pings and pongs. */
function carriesMessages(parts) {
  return parts.some(
    (p) => p.startsWith('{"t":"msg"') || p.startsWith('{"t":"bin"') || p.startsWith('{"t":"close"'),
  );
}

/** Sends the client's frames for SSE and long-polling: one request in
 * flight at a time, each answered with an ack (PROTOCOL.md §8.4). What to
 * do when one fails — send the same messages again (the server drops what
 * it already has) and when, or give the attachment up — is the connection
 * policy's verdict (`Connector.sendFailed`).
 *
 * A failed request holds back only what it carried: messages refused for
 * now (a 503's Retry-After) or lost (a failed request's backoff) wait, and
 * meanwhile acks, pongs and pings still go in ack-only requests, on time —
 * the server needs those acks to free the buffers that made it refuse. */
class Upstream {
  constructor(attachment) {
    this.attachment = attachment;
    this.busy = false;
    /** What the request in flight carries: "messages" or "control". */
    this.carried = null;
    /** Messages wait until then (ms), ack-only requests until then. */
    this.messagesAt = null;
    this.controlAt = null;
    this.retry = null;
  }

  start() {
    const att = this.attachment;
    if (this.busy || att.ended) return;
    this.expire();
    let only = null;
    if (this.messagesAt !== null && this.controlAt !== null) return;
    if (this.messagesAt !== null) only = "control";
    else if (this.controlAt !== null) only = "messages";
    const parts = att.engine.transmit(att, false, false, only);
    if (!parts) return;
    this.busy = true;
    this.carried = carriesMessages(parts) ? "messages" : "control";
    this.post(`[${parts.join(",")}]`);
  }

  stop() {
    clearTimeout(this.retry);
  }

  /** A request failed (`failure`: a Connector send failure). */
  failed(failure) {
    const att = this.attachment;
    const engine = att.engine;
    const carried = this.carried;
    this.busy = false;
    // What it carried goes again: the messages from the oldest
    // unacknowledged one, the acknowledgement as it then stands.
    engine.requestFailed();
    const verdict = engine.connector.sendFailed(failure, carried);
    if (verdict.resend === undefined) {
      att.lost();
      return;
    }
    const at = now() + verdict.resend;
    if (carried === "messages") this.messagesAt = at;
    else this.controlAt = at;
    this.wake();
    // Whatever may still go (acks, while the messages wait) goes now.
    this.start();
  }

  /** Forgets the holds that are over. */
  expire() {
    const t = now();
    if (this.messagesAt !== null && t >= this.messagesAt) this.messagesAt = null;
    if (this.controlAt !== null && t >= this.controlAt) this.controlAt = null;
  }

  /** Starts what may go when the next hold ends (a request in flight
   * then starts it when it is answered). */
  wake() {
    clearTimeout(this.retry);
    this.expire();
    const holds = [this.messagesAt, this.controlAt].filter((at) => at !== null);
    if (holds.length === 0) return;
    this.retry = setTimeout(
      () => {
        this.expire();
        this.start();
        this.wake();
      },
      Math.max(0, Math.min(...holds) - now()),
    );
  }

  async post(body) {
    const att = this.attachment;
    const engine = att.engine;
    const timeout = Math.max(engine.options.probeTimeout, MIN_SEND_TIMEOUT);
    let response;
    let text;
    try {
      ({ response, text } = await engine.fetchText(att, engine.sendUrl(), timeout, {
        method: "POST",
        headers: {
          "Content-Type": "text/plain;charset=UTF-8",
          ...engine.keyHeaders(engine.params.key),
        },
        body,
      }));
    } catch {
      if (!att.ended) this.failed("failed");
      return;
    }
    if (att.ended) return;
    if (response.status !== 200) {
      const verdict = classifyHttp(text, response.headers);
      if (verdict.closeFrame) {
        engine.requestFailed();
        engine.onFrames(att, [verdict.closeFrame], true);
      } else if (verdict.detach) {
        const { code, retryAfter } = verdict.detach;
        // 4503: the application is not keeping up, or the session is
        // between nodes; anything else from holdfast is for good.
        this.failed(code === CloseCodes.OVERLOADED ? { overloaded: { retryAfter } } : "refused");
      } else {
        this.failed({ failed: { retryAfter: verdict.retryAfter } });
      }
      return;
    }
    let frames;
    try {
      frames = parseBatch(text);
    } catch {
      // Not a holdfast batch: an intermediary answered.
      this.failed("failed");
      return;
    }
    this.busy = false;
    engine.connector.sendSucceeded(this.carried);
    engine.onFrames(att, frames, true);
    if (!att.ended) engine.confirm(att);
  }
}

class SseAttachment extends Attachment {
  constructor(...args) {
    super(...args);
    this.upstream = new Upstream(this);
  }

  async start() {
    const engine = this.engine;
    const url = engine.endpoint("sse", this.target, false, this.report);
    let response;
    try {
      response = await engine.fetchStream(this, url, this.greetingTimeout, {
        headers: { Accept: "text/event-stream", ...engine.keyHeaders(this.target.key) },
      });
    } catch (error) {
      if (this.ended) return;
      this.end(failedRequest(error));
      return;
    }
    if (this.ended) return;
    this.responded = true;
    if (response.status !== 200) {
      this.refused(response, await readText(response, engine.options.probeTimeout));
      return;
    }
    const type = response.headers.get("content-type") || "";
    if (!type.startsWith("text/event-stream") || !response.body) {
      this.end("invalid"); // not an event stream: an intermediary
      return;
    }
    this.reader = response.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SseParser();
    for (;;) {
      let chunk;
      try {
        chunk = await this.reader.read();
      } catch {
        this.lost(); // cut
        return;
      }
      if (this.ended) return;
      if (chunk.done) {
        this.lost(); // ended without a detach
        return;
      }
      engine.heard(this);
      let events;
      try {
        events = parser.push(decoder.decode(chunk.value, { stream: true }));
      } catch {
        this.end("invalid"); // an impossibly large event
        return;
      }
      for (const data of events) {
        let frames;
        try {
          frames = parseBatch(data);
        } catch {
          this.end("invalid");
          return;
        }
        engine.onFrames(this, frames, false);
        if (this.ended) return;
      }
    }
  }

  flush() {
    this.upstream.start();
  }

  /** A stream may be dead after a network change: take a fresh one. */
  check() {
    if (this.greeted) this.end("stopped");
  }

  teardown() {
    this.upstream.stop();
    this.engine.abortRequests(this);
    if (this.reader) this.reader.cancel().catch(() => {});
  }
}

/** `text/event-stream` parsing: events' data, comments skipped. */
class SseParser {
  buffer = "";
  data = null;

  push(text) {
    this.buffer += text;
    const events = [];
    let start = 0;
    for (;;) {
      const lf = this.buffer.indexOf("\n", start);
      const cr = this.buffer.indexOf("\r", start);
      let end = lf;
      if (cr !== -1 && (lf === -1 || cr < lf)) end = cr;
      if (end === -1) break;
      // A CR at the very end may be the first half of a CRLF.
      if (end === cr && end === this.buffer.length - 1) break;
      const line = this.buffer.slice(start, end);
      start = end + (end === cr && this.buffer[end + 1] === "\n" ? 2 : 1);
      this.line(line, events);
    }
    this.buffer = this.buffer.slice(start);
    if (this.buffer.length + (this.data ? this.data.length : 0) > MAX_SSE_EVENT) {
      throw new ProtocolViolation("an event on the stream is impossibly large");
    }
    return events;
  }

  line(line, events) {
    if (line === "") {
      if (this.data !== null) events.push(this.data);
      this.data = null;
      return;
    }
    if (line.startsWith(":")) return; // a comment: keep-alive or padding
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data = this.data === null ? value : `${this.data}\n${value}`;
  }
}

class PollAttachment extends Attachment {
  constructor(engine, kind, target, greetingTimeout) {
    super(engine, kind, target, greetingTimeout);
    this.upstream = new Upstream(this);
    this.answered = false;
    // A resumed poll may be held with nothing to deliver (a continuing
    // poll gets no `resumed`): a ping through a send request confirms the
    // session at once.
    this.pingDue = engine.params !== null;
  }

  async start() {
    const engine = this.engine;
    let target = this.target;
    while (!this.ended) {
      const last = target.last;
      // The server holds a poll up to `hold` ms (PROTOCOL.md §2.1); allow
      // the network time on top. The first poll is answered at once.
      const timeout = engine.params
        ? (engine.params.hold ?? engine.params.timeout) + Math.max(engine.options.probeTimeout, 5000)
        : this.greetingTimeout;
      this.polling = new AbortController();
      const url = engine.endpoint("long-poll", target, false, this.report);
      let response;
      let text;
      try {
        const init = { headers: engine.keyHeaders(target.key) };
        ({ response, text } = await engine.fetchText(this, url, timeout, init, this.polling.signal));
      } catch (error) {
        if (this.ended) return;
        if (this.polling.signal.aborted && this.polling.signal.reason === "recheck") {
          target = engine.target();
          continue;
        }
        // A server that answered before and a poll that proved the
        // session are not "unreachable" nor "timeout": the connection was
        // lost.
        const ending = failedRequest(error);
        this.end(
          (ending === "unreachable" && this.answered) || (ending === "timeout" && this.proven)
            ? "closed"
            : ending,
        );
        return;
      }
      if (this.ended) return;
      this.responded = true;
      if (response.status !== 200) {
        this.refused(response, text);
        return;
      }
      let frames;
      try {
        frames = parseBatch(text);
      } catch {
        this.end("invalid"); // not a holdfast batch: an intermediary
        return;
      }
      this.answered = true;
      engine.ackedThrough(last);
      engine.onFrames(this, frames, false);
      if (this.ended) return;
      engine.confirm(this);
      target = engine.target();
    }
  }

  flush() {
    this.upstream.start();
  }

  /** A held poll may sit on a dead connection after a network change:
   * poll again (the server takes the new poll in its place). */
  check() {
    if (this.polling) this.polling.abort("recheck");
  }

  teardown() {
    this.upstream.stop();
    this.engine.abortRequests(this);
  }
}

// ---------------------------------------------------------------------------
// One connection for all the tabs (PROTOCOL.md §11.3)
//
// Browsers open at most six HTTP/1.1 connections per host, for every tab
// together: six tabs each holding an SSE stream or a held poll leave none
// for their sends, and the app stops in every tab. So the tabs of one
// origin using one mount share: they elect a **leader** with a Web Lock
// (`holdfast:<origin><mount>`), which runs at most one shared stream
// (`POST <mount>/sse`) and one shared poll loop (`POST <mount>/poll`)
// carrying every tab's sessions, and relays each session's frames to its
// tab over a BroadcastChannel of the same name. Each tab keeps its own
// session, engine and connection policy: a `SharedAttachment` is only how
// its SSE or long-poll attachment is made; its sends are its own short
// `POST …/send` requests.
//
// Why a BroadcastChannel and not a SharedWorker: a SharedWorker needs a
// same-origin script URL of its own (this client is one module that
// applications bundle or serve anywhere, and CSP `worker-src` may forbid
// it), Chrome on Android has none, and a worker's requests are not the
// page's (service workers, some privacy modes treat them apart). Web
// Locks give what a worker would: one owner at a time, released by the
// browser when the tab closes, crashes or navigates, and taken over by the
// next tab waiting. The relay costs a structured clone per tab per
// message, negligible next to the network.
//
// Every tab talks to the leader — its own included — through the same
// messages (the leader's tab hears its own posts through a local
// loopback). Messages on the channel:
//
//   tab → leader  join {id, tab, kind, url, headers, credentials, key, last, mux, hold, probeTimeout}
//                 leave {id}   report {id, received}   recheck {kind}   ping   hello
//   leader → tabs leader (announcement)   joined {ids}   frames {items: [[id, frames, last?]]}
//                 end {ids, how, …}   pong   resign   off
//
// Leader messages carry `epoch` (higher than any the leader had seen when
// it took over) and `reign` (one leadership of one tab): a tab follows
// the newest leader it heard and ignores anything from another.
//
// Keys travel over the channel (a join names its session): only pages of
// the same origin can listen, and they could read the session's storage
// anyway.

/** Membership changes are gathered this long before the shared request
 * is made again (many tabs join at once). */
const SHARE_DEBOUNCE = 5;
/** On long-polling, a tab that got frames has this long to report what it
 * handed its application; after it, polls go on without it until it does
 * (a frozen tab never holds the others back). */
const REPORT_GRACE = 1000;
/** How many times an unreported poll answer is relayed again. */
const MAX_RESENDS = 5;
/** A follower with attachments pings the leader after hearing nothing
 * from it this long… */
const LEADER_QUIET = 1500;
/** …and takes the lock from it (steal) after this long: a frozen leader.
 * Pings are answered from the leader's message handler, which background
 * tabs do not throttle (timers they do), so a healthy leader in a hidden
 * tab always answers. */
const LEADER_DEAD = 3000;
const HUB_TICK = 250;
/** An attachment no leader took within this long fails like any other
 * that got no first frame. */
const UNCARRIED_LIMIT = 10000;
/** How often the leader looks for tabs gone without a word (crashed). */
const TAB_SWEEP = 3000;
const DEFAULT_MUX = 64;
const DEFAULT_HOLD = 25000;
/** Tags are integers from 0 to 2^31 − 1 (PROTOCOL.md §11.1). */
const MAX_TAG = 2 ** 31 - 1;

const hubs = new Map();

function sharingPossible() {
  // Web Locks exist in secure contexts only (HTTPS, and http://localhost):
  // a page served over plain HTTP elsewhere does not share. Nor does an
  // opaque origin (a sandboxed frame), which has no locks to share.
  return (
    inBrowser &&
    globalThis.location?.origin !== "null" &&
    typeof BroadcastChannel === "function" &&
    typeof navigator === "object" &&
    !!navigator.locks &&
    typeof navigator.locks.request === "function"
  );
}

function randomId() {
  if (globalThis.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
  return `${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
}

function hubFor(name) {
  let hub = hubs.get(name);
  if (!hub) {
    hub = new Hub(name);
    hubs.set(name, hub);
  }
  return hub;
}

/** The page's end of the sharing for one shared name: this tab's member
 * attachments, the election, and (while this tab leads) the `Leader`. */
class Hub {
  constructor(name) {
    this.name = name;
    this.tab = randomId();
    /** The server has no shared requests (404/405): no sharing here. */
    this.off = false;
    this.members = new Map(); // id -> SharedAttachment of this tab
    this.nextId = 1;
    this.current = null; // the leader followed: { epoch, from, reign }
    this.maxEpoch = 0;
    this.lastFromLeader = now();
    this.busySince = now();
    this.pingedAt = 0;
    this.leading = null; // Leader, while this tab holds the lock
    this.clientId = undefined;
    this.lockGen = 0;
    this.waitCtl = null;
    this.stealing = false;
    this.tick = null;
    this.lastTick = now();
    this.channel = new BroadcastChannel(name);
    this.channel.onmessage = (event) => this.receive(event.data);
    // Held for the tab's life: the leader sees from it which tabs are gone.
    navigator.locks.request(this.tabLock(this.tab), () => new Promise(() => {})).catch(() => {});
    this.requestLock(false);
    this.post({ t: "hello", from: this.tab });
    window.addEventListener("pagehide", () => {
      for (const id of this.members.keys()) this.post({ t: "leave", id });
      // Navigating away aborts the shared requests before the lock goes:
      // stop them quietly, so that no tab mistakes the aborts for a
      // failing network (and backs off) — they re-join the next leader.
      const leading = this.leading;
      if (leading) {
        this.leading = null;
        leading.stop();
        this.post({ t: "resign", reign: leading.reign, from: this.tab });
      }
    });
    window.addEventListener("pageshow", (event) => {
      if (!event.persisted) return;
      for (const att of [...this.members.values()]) att.leaderGone(); // the page came back from the cache
    });
    window.addEventListener("online", () => this.leading?.recheck(null));
  }

  tabLock(tab) {
    return `${this.name} tab ${tab}`;
  }

  /** To every other tab over the channel, and to this one (the same path
   * for the leader's own tab). */
  post(message) {
    try {
      this.channel.postMessage(message);
    } catch {
      // a closed channel (the page is going away)
    }
    queueMicrotask(() => this.receive(message));
  }

  receive(message) {
    if (message === null || typeof message !== "object") return;
    switch (message.t) {
      case "leader":
        this.heardLeader(message);
        return;
      case "resign":
        if (this.current && this.current.reign === message.reign) this.current = null;
        return;
      case "off":
        this.off = true;
        return;
      case "hello":
        if (this.leading) this.announce();
        return;
      case "ping":
        this.leading?.post({ t: "pong" });
        return;
      case "outdated":
        if (this.leading && this.leading.reign === message.reign) this.outdated(message.epoch);
        return;
      case "join":
      case "leave":
      case "report":
      case "recheck":
        this.leading?.receive(message);
        return;
      default:
    }
    // From a leader to the tabs: only the one this tab follows counts.
    if (!this.current || message.reign !== this.current.reign) return;
    this.lastFromLeader = now();
    switch (message.t) {
      case "joined":
        for (const id of message.ids) this.members.get(id)?.carried(message.reign);
        return;
      case "frames":
        for (const [id, frames, last, n] of message.items) this.members.get(id)?.fromHub(frames, last, n);
        return;
      case "end":
        for (const id of message.ids) this.members.get(id)?.hubEnded(message);
        return;
      default:
    }
  }

  // ---- following -----------------------------------------------------------

  heardLeader({ epoch, from, reign }) {
    if (this.leading && reign !== this.leading.reign) {
      // Another tab says it leads while this one thinks it does: one of
      // them lost the lock (stolen while frozen) and may not know yet.
      this.outdated(epoch);
      return;
    }
    const current = this.current;
    if (current && current.reign === reign) {
      if (epoch > current.epoch) current.epoch = this.maxEpoch = Math.max(this.maxEpoch, epoch);
      this.lastFromLeader = now();
      return;
    }
    const newer = current ? epoch > current.epoch : epoch >= this.maxEpoch;
    if (!newer) {
      // A leader that was replaced (frozen, then thawed) — or one that
      // took over without having heard of the newest epoch (a tab that
      // opened as the leader closed): tell it; if it holds the lock it
      // announces itself again, higher.
      this.post({ t: "outdated", epoch: this.maxEpoch, reign, from: this.tab });
      return;
    }
    this.current = { epoch, from, reign };
    this.maxEpoch = Math.max(this.maxEpoch, epoch);
    this.lastFromLeader = now();
    this.stealing = false;
    for (const att of [...this.members.values()]) {
      if (att.boundTo === null) this.postJoin(att);
      else if (att.boundTo !== reign) att.leaderGone(); // its leader went away
    }
  }

  join(att) {
    const id = `${this.tab}.${this.nextId++}`;
    att.sharedId = id;
    if (this.members.size === 0) this.busySince = now();
    this.members.set(id, att);
    att.joinedAt = now();
    if (!this.tick) {
      this.lastTick = now();
      this.tick = setInterval(() => this.onTick(), HUB_TICK);
    }
    this.postJoin(att);
  }

  postJoin(att) {
    const engine = att.engine;
    this.post({
      t: "join",
      id: att.sharedId,
      tab: this.tab,
      kind: att.kind,
      url: engine.sharedUrl(att.kind),
      headers: engine.options.headers || {},
      credentials: engine.options.credentials,
      key: att.target.key,
      last: att.target.last,
      report: att.report,
      mux: engine.params?.mux,
      hold: engine.params?.hold,
      probeTimeout: att.greetingTimeout,
    });
  }

  leave(att) {
    if (!this.members.delete(att.sharedId)) return;
    this.post({ t: "leave", id: att.sharedId });
  }

  /** What the tab handed its application (PROTOCOL.md §11.3): the `last`
   * the leader names for it next. */
  report(att) {
    this.post({ t: "report", id: att.sharedId, received: att.engine.received });
  }

  recheck(kind) {
    this.post({ t: "recheck", kind });
  }

  /** A follower with attachments watches its leader. */
  onTick() {
    if (this.members.size === 0) {
      clearInterval(this.tick);
      this.tick = null;
      return;
    }
    const t = now();
    // Hidden tabs run timers about once a second: a longer gap means this
    // tab did not run at all.
    const slept = t - this.lastTick > LEADER_QUIET;
    this.lastTick = t;
    if (!slept) this.checkMembers(t);
    if (this.leading) return;
    if (slept) {
      // This tab was asleep (frozen, throttled, a laptop lid): the
      // leader's silence was its own. Hear what queued up first.
      this.busySince = t;
      return;
    }
    const quiet = t - Math.max(this.lastFromLeader, this.busySince);
    if (quiet >= LEADER_DEAD) {
      this.steal();
    } else if (quiet >= LEADER_QUIET && now() - this.pingedAt >= LEADER_QUIET / 2) {
      this.pingedAt = now();
      this.post({ t: "ping", from: this.tab });
    }
  }

  /** Relay messages can be lost (to a frozen tab): a join no leader
   * answered is sent again, and a poll attachment that hears nothing for
   * longer than a held poll lasts is given up (and resumed). */
  checkMembers(t) {
    for (const att of [...this.members.values()]) {
      if (att.ended) continue;
      if (att.carriedAt === null) {
        if (this.current && t - att.joinedAt >= 1000) {
          att.joinedAt = t;
          this.postJoin(att);
        }
      } else if (!att.streaming) {
        const hold = att.engine.params?.hold ?? DEFAULT_HOLD;
        const quiet = t - Math.max(att.heardAt, att.carriedAt);
        if (quiet > hold + Math.max(att.engine.options.probeTimeout, 5000) + REPORT_GRACE) {
          att.end("silent"); // nothing from the shared poll for too long
        }
      }
    }
  }

  /** The leader is frozen (or gone without releasing): take the lock from
   * it. A random pause first, so that of several followers one usually
   * takes over and the others hear it. */
  steal() {
    if (this.stealing || this.leading) return;
    this.stealing = true;
    const since = this.lastFromLeader;
    setTimeout(() => {
      if (this.leading || this.lastFromLeader !== since || this.members.size === 0) {
        this.stealing = false;
        return;
      }
      this.requestLock(true);
    }, Math.random() * 300);
  }

  // ---- the lock ------------------------------------------------------------

  /** Waits in the lock's queue (or, with `steal`, takes it at once). */
  requestLock(steal) {
    const gen = ++this.lockGen;
    if (this.waitCtl) this.waitCtl.abort();
    this.waitCtl = null;
    const options = {};
    if (steal) options.steal = true;
    else {
      this.waitCtl = new AbortController();
      options.signal = this.waitCtl.signal;
    }
    navigator.locks
      .request(this.name, options, () => {
        if (gen !== this.lockGen) return undefined; // superseded: pass it on
        return new Promise((release) => this.becomeLeader(gen, release));
      })
      .catch(() => {
        // Taken from us (steal) while leading — or a wait we gave up.
        if (this.leading && this.leading.gen === gen) this.stepDown();
      });
  }

  becomeLeader(gen, release) {
    this.stealing = false;
    this.waitCtl = null;
    this.clientId = undefined;
    const leading = new Leader(this, gen, release, this.maxEpoch + 1);
    this.leading = leading;
    // Which client holds the lock now is this one: remembered, so that a
    // leader can check it still holds it before each request.
    navigator.locks
      .query()
      .then(({ held }) => {
        const mine = held.filter((lock) => lock.name === this.name);
        if (this.leading === leading && mine.length === 1) this.clientId = mine[0].clientId;
      })
      .catch(() => {});
    this.announce();
  }

  /** A tab follows a leader with a newer epoch than this one's: if this
   * tab still holds the lock, it announces itself above it. */
  outdated(epoch) {
    const leading = this.leading;
    this.maxEpoch = Math.max(this.maxEpoch, epoch);
    if (leading.epoch > epoch || leading.checking) return;
    leading.checking = true;
    this.stillLeader().then((still) => {
      leading.checking = false;
      if (this.leading !== leading) return;
      if (still) {
        leading.epoch = this.maxEpoch + 1;
        this.announce();
      } else {
        this.stepDown();
      }
    });
  }

  announce() {
    const leading = this.leading;
    if (leading) this.post({ t: "leader", epoch: leading.epoch, from: this.tab, reign: leading.reign });
  }

  /** Whether this tab still holds the lock (a frozen leader's was maybe
   * stolen and it has not heard yet). */
  async stillLeader() {
    const leading = this.leading;
    if (!leading) return false;
    if (this.clientId === undefined) return true;
    try {
      const { held } = await navigator.locks.query();
      return (
        this.leading === leading &&
        held.some((lock) => lock.name === this.name && lock.clientId === this.clientId)
      );
    } catch {
      return this.leading === leading;
    }
  }

  /** The lock is gone: drop the carriers without forwarding anything more,
   * and follow whoever leads now. */
  stepDown() {
    const leading = this.leading;
    if (!leading) return;
    this.leading = null;
    leading.stop();
    if (this.current && this.current.reign === leading.reign) this.current = null;
    this.post({ t: "resign", reign: leading.reign, from: this.tab });
    this.requestLock(false);
    this.post({ t: "hello", from: this.tab });
  }
}

/** The leader's side: one carrier per kind (and request profile), each
 * carrying its members' sessions on one shared request. */
class Leader {
  constructor(hub, gen, release, epoch) {
    this.hub = hub;
    this.gen = gen;
    this.release = release;
    this.epoch = epoch;
    this.reign = randomId();
    this.carriers = new Map(); // profile -> Carrier
    this.carrierOf = new Map(); // member id -> Carrier
    this.sweep = setInterval(() => this.sweepTabs(), TAB_SWEEP);
  }

  post(message) {
    this.hub.post({ ...message, epoch: this.epoch, from: this.hub.tab, reign: this.reign });
  }

  receive(message) {
    switch (message.t) {
      case "join":
        this.join(message);
        return;
      case "leave":
        this.carrierOf.get(message.id)?.leave(message.id);
        this.carrierOf.delete(message.id);
        return;
      case "report":
        if (Number.isSafeInteger(message.received)) {
          this.carrierOf.get(message.id)?.report(message.id, message.received);
        }
        return;
      case "recheck":
        this.recheck(message.kind);
        return;
      default:
    }
  }

  join(message) {
    if (this.hub.off) {
      this.post({ t: "end", ids: [message.id], how: "unshared", why: "the server has no shared requests" });
      return;
    }
    const existing = this.carrierOf.get(message.id);
    if (existing) {
      existing.rejoin(message.id);
      return;
    }
    const profile = JSON.stringify([message.kind, message.url, message.headers, message.credentials]);
    let carrier = this.carriers.get(profile);
    if (!carrier) {
      const Carrier = message.kind === "sse" ? StreamCarrier : PollCarrier;
      carrier = new Carrier(this, message);
      this.carriers.set(profile, carrier);
    }
    if (carrier.join(message)) this.carrierOf.set(message.id, carrier);
  }

  /** Members leave when their attachment ends; these never said so. */
  async sweepTabs() {
    let held;
    try {
      ({ held } = await navigator.locks.query());
    } catch {
      return;
    }
    if (this.hub.leading !== this) return;
    const alive = new Set(held.map((lock) => lock.name));
    for (const carrier of this.carriers.values()) {
      for (const member of [...carrier.members.values()]) {
        if (!alive.has(this.hub.tabLock(member.tab))) {
          carrier.leave(member.id);
          this.carrierOf.delete(member.id);
        }
      }
    }
  }

  /** The network changed: make the shared requests again. */
  recheck(kind) {
    for (const carrier of this.carriers.values()) {
      if (kind === null || carrier.kind === kind) carrier.recheck();
    }
  }

  /** The server has no shared requests: nobody on this page shares. */
  turnOff() {
    this.hub.off = true;
    this.hub.post({ t: "off" });
  }

  /** Ends members with an outcome their tabs map onto their attachment. */
  end(carrier, ids, fields) {
    const gone = ids.filter((id) => carrier.members.has(id));
    for (const id of gone) {
      carrier.remove(id);
      this.carrierOf.delete(id);
    }
    if (gone.length) this.post({ t: "end", ids: gone, ...fields });
  }

  stop() {
    clearInterval(this.sweep);
    for (const carrier of this.carriers.values()) carrier.stop();
    this.carriers.clear();
    this.carrierOf.clear();
    this.release();
  }
}

/** What a shared request that failed means for its members. */
function sharedFailure(error) {
  return {
    how: "fail",
    cause: failedRequest(error),
    why: `shared request failed: ${describeError(error)}`,
  };
}

/** What a non-200 answer to a shared request means for its members:
 * `404`/`405` — the server has no shared requests (§11), and nobody on
 * this page shares any more; `400`/`413` — the server refused the request
 * as a whole (its list: more sessions than it allows, a body too large),
 * which says nothing about the sessions: they go on with their own
 * requests rather than end; anything else (a refused `Origin`, an
 * intermediary's error) as the answer to each member's own request would
 * be. */
function sharedRefusal(leader, response, text) {
  if (response.status === 404 || response.status === 405) {
    leader.turnOff();
    return { how: "unshared", why: `the server has no shared requests (HTTP ${response.status})` };
  }
  if (response.status === 400 || response.status === 413) {
    let reason = "";
    try {
      reason = closeOf(parseBatch(text)[0]).reason;
    } catch {
      // not holdfast's own refusal: the reason stays empty
    }
    return {
      how: "full",
      why: `the server refused the shared request (HTTP ${response.status}${reason ? `: ${reason}` : ""})`,
    };
  }
  const headers = {};
  for (const name of ["content-type", "retry-after"]) {
    const value = response.headers.get(name);
    if (value !== null) headers[name] = value;
  }
  return { how: "http", status: response.status, text, headers };
}

class Carrier {
  constructor(leader, join) {
    this.leader = leader;
    this.kind = join.kind;
    this.url = join.url;
    this.headers = join.headers || {};
    this.credentials = join.credentials;
    this.members = new Map(); // id -> { id, tab, tag, key, last, awaiting, carried }
    this.byTag = new Map();
    this.nextTag = 1;
    this.mux = DEFAULT_MUX;
    this.hold = DEFAULT_HOLD;
    this.probeTimeout = 0;
    this.stopped = false;
    this.debounce = null;
  }

  /** Adds a member; false (and the member told) when the request is full. */
  join(message) {
    if (Number.isSafeInteger(message.mux) && message.mux > 0) this.mux = Math.min(this.mux, message.mux);
    if (Number.isSafeInteger(message.hold)) this.hold = Math.max(message.hold, 0);
    if (Number.isFinite(message.probeTimeout)) {
      this.probeTimeout = Math.max(this.probeTimeout, message.probeTimeout);
    }
    if (this.members.size >= this.mux) {
      this.leader.post({
        t: "end",
        ids: [message.id],
        how: "full",
        why: `the shared ${this.kind} request carries the most sessions the server allows (${this.mux})`,
      });
      return false;
    }
    let tag = this.nextTag;
    while (this.byTag.has(tag)) tag = tag >= MAX_TAG ? 0 : tag + 1;
    this.nextTag = tag >= MAX_TAG ? 0 : tag + 1;
    const member = {
      id: message.id,
      tab: message.tab,
      tag,
      key: typeof message.key === "string" ? message.key : null,
      last: Number.isSafeInteger(message.last) ? message.last : 0,
      report: typeof message.report === "string" ? message.report : null,
      awaiting: 0,
      carried: false,
      n: 0, // relay items sent to it, numbered
      pending: null, // on long-polling, the item it has not reported yet
      resent: 0, // how many times `pending` was relayed again
    };
    this.members.set(member.id, member);
    this.byTag.set(tag, member);
    this.changed();
    return true;
  }

  /** A join repeated (the tab heard of this leader late). */
  rejoin(id) {
    if (this.members.get(id)?.carried) this.leader.post({ t: "joined", ids: [id] });
  }

  remove(id) {
    const member = this.members.get(id);
    if (!member) return null;
    this.members.delete(id);
    this.byTag.delete(member.tag);
    return member;
  }

  leave(id) {
    this.remove(id);
  }

  report(id, received) {
    const member = this.members.get(id);
    if (!member) return;
    member.last = Math.max(member.last, received);
    member.awaiting = 0;
    member.pending = null;
    this.reported(member);
  }

  reported() {}

  /** Members named by a request about to be made learn they are carried:
   * their probe timeout counts from now. */
  carry(members) {
    for (const member of members) member.carried = true;
    this.leader.post({ t: "joined", ids: members.map((m) => m.id) });
  }

  /** The frames of a shared batch for the members of `ids`, as relay
   * items; records keys of sessions opened, and drops members whose part
   * ended (detach, close). */
  items(pairs, ids, last) {
    const items = [];
    const found = new Map();
    for (const [tag, frames] of pairs) {
      const member = this.byTag.get(tag);
      if (!member || !ids.has(member.id)) continue;
      found.set(member.id, (found.get(member.id) || []).concat(frames));
    }
    for (const id of ids) {
      const member = this.members.get(id);
      const frames = found.get(id);
      if (!member || (frames === undefined && last === undefined)) continue;
      let ended = false;
      // Answered: the server has its report.
      if (frames) member.report = null;
      for (const frame of frames || []) {
        if (frame.t === "open" && typeof frame.key === "string") {
          member.key = frame.key;
          if (Number.isSafeInteger(frame.mux) && frame.mux > 0) this.mux = Math.min(this.mux, frame.mux);
          if (Number.isSafeInteger(frame.hold)) this.hold = frame.hold;
        }
        if (frame.t === "close" || frame.t === "detach") ended = true;
      }
      member.n += 1;
      const item =
        last === undefined ? [id, frames, undefined, member.n] : [id, frames || [], last.get(id), member.n];
      items.push(item);
      if (frames && frames.length) {
        member.awaiting = now();
        member.pending = item;
        member.resent = 0;
      }
      if (ended) {
        this.remove(id);
        this.leader.carrierOf.delete(id);
      }
    }
    return items;
  }

  async request(body, accept, timeout, signal) {
    const controller = new AbortController();
    const expired = new RequestTimeout(`no answer within ${timeout} ms`);
    const timer = setTimeout(() => controller.abort(expired), timeout);
    signal.addEventListener("abort", () => controller.abort(signal.reason), { once: true });
    try {
      const response = await globalThis.fetch(this.url, {
        method: "POST",
        headers: { ...this.headers, "Content-Type": "text/plain;charset=UTF-8", Accept: accept },
        body,
        cache: "no-store",
        credentials: this.credentials,
        signal: controller.signal,
      });
      return { response, controller, timer, expired };
    } catch (error) {
      clearTimeout(timer);
      throw controller.signal.reason === expired ? expired : error;
    }
  }

  static body(members) {
    return JSON.stringify(
      members.map((m) => ({
        s: m.tag,
        ...(m.key === null ? {} : { key: m.key, last: m.last }),
        ...(m.report ? { report: m.report } : {}),
      })),
    );
  }
}

/** One shared event stream (`POST <mount>/sse`): made again with the new
 * list whenever a member joins; each member attaches with the `last` its
 * tab reported, so the server replays what it did not acknowledge and the
 * tab's engine drops what it already had. */
class StreamCarrier extends Carrier {
  constructor(leader, join) {
    super(leader, join);
    this.run = null; // { controller, ids, startedAt }
    this.seq = 0;
  }

  changed() {
    clearTimeout(this.debounce);
    this.debounce = setTimeout(() => this.restart(), SHARE_DEBOUNCE);
  }

  recheck() {
    this.changed();
  }

  leave(id) {
    // The session stays on the stream until the server ends its part (or
    // the stream is made again without it): nothing to do now.
    this.remove(id);
    if (this.members.size === 0) this.abortRun();
  }

  abortRun() {
    const run = this.run;
    this.run = null;
    if (run) run.controller.abort("restart");
  }

  async restart() {
    if (this.stopped) return;
    const run = this.run;
    // A session opened by the running stream whose `open` has not come
    // yet: made again now, the stream would open it twice.
    const opening =
      run && [...run.ids].some((id) => this.members.get(id)?.key === null) &&
      now() - run.startedAt < Math.max(this.probeTimeout, 500);
    if (opening) {
      // Made again as soon as the `open`s are in (see the read loop), or
      // after the probe timeout.
      this.deferred = true;
      clearTimeout(this.debounce);
      this.debounce = setTimeout(() => this.restart(), Math.max(this.probeTimeout, 500) + run.startedAt - now());
      return;
    }
    this.deferred = false;
    const seq = ++this.seq;
    this.abortRun();
    if (this.members.size === 0) return;
    if (!(await this.leader.hub.stillLeader()) || this.stopped || seq !== this.seq) return;
    const members = [...this.members.values()];
    const mine = { controller: new AbortController(), ids: new Set(members.map((m) => m.id)), startedAt: now() };
    this.run = mine;
    this.carry(members);
    const timeout = Math.max(this.probeTimeout, 1000);
    let response;
    let timer;
    try {
      ({ response, timer } = await this.request(Carrier.body(members), "text/event-stream", timeout, mine.controller.signal));
    } catch (error) {
      if (this.run === mine) this.fail(mine, sharedFailure(error));
      return;
    }
    clearTimeout(timer);
    if (this.run !== mine) {
      response.body?.cancel().catch(() => {});
      return;
    }
    if (response.status !== 200) {
      const text = await readText(response, timeout);
      if (this.run === mine) this.fail(mine, sharedRefusal(this.leader, response, text));
      return;
    }
    const type = response.headers.get("content-type") || "";
    if (!type.startsWith("text/event-stream") || !response.body) {
      this.fail(mine, {
        how: "notstream",
        why: `the shared answer is not an event stream (${type || "no type"}): an intermediary?`,
      });
      return;
    }
    const reader = response.body.getReader();
    mine.controller.signal.addEventListener("abort", () => reader.cancel().catch(() => {}), { once: true });
    const decoder = new TextDecoder();
    const parser = new SseParser();
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (error) {
        this.fail(mine, { how: "lost", why: `shared stream cut: ${describeError(error)}` });
        return;
      }
      if (this.run !== mine) return;
      if (chunk.done) {
        this.fail(mine, { how: "lost", why: "the shared stream ended" });
        return;
      }
      try {
        for (const data of parser.push(decoder.decode(chunk.value, { stream: true }))) {
          const items = this.items(parseSharedBatch(data), mine.ids);
          if (items.length) this.leader.post({ t: "frames", items });
        }
        if (this.deferred && ![...mine.ids].some((id) => this.members.get(id)?.key === null)) {
          this.deferred = false;
          this.changed();
        }
      } catch (error) {
        this.fail(mine, { how: "lost", why: `bad event on the shared stream: ${error.message}` });
        return;
      }
    }
  }

  fail(run, fields) {
    if (this.run !== run) return;
    this.run = null;
    run.controller.abort("failed");
    this.leader.end(this, [...run.ids], fields);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.debounce);
    this.abortRun();
  }
}

/** One shared poll loop (`POST <mount>/poll`). Each poll names, for each
 * member, the `last` its tab reported after handing the previous answer
 * to its engine — never more than the tab's application was given. A
 * member that got frames and has not reported within REPORT_GRACE is left
 * out until it does. */
class PollCarrier extends Carrier {
  constructor(leader, join) {
    super(leader, join);
    this.active = null; // { controller, ids, keyless }
    this.timer = null;
  }

  changed() {
    clearTimeout(this.debounce);
    this.debounce = setTimeout(() => this.kick(), SHARE_DEBOUNCE);
  }

  /** Membership changed: a held poll is made again to include it (a poll
   * opening a session is answered at once anyway). */
  kick() {
    if (this.stopped) return;
    if (this.active) {
      if (!this.active.keyless) this.active.controller.abort("change");
    } else {
      this.next();
    }
  }

  recheck() {
    if (this.active) this.active.controller.abort("change");
    else this.next();
  }

  reported(member) {
    if (!this.active) this.next();
    else if (!this.active.ids.has(member.id)) this.changed();
  }

  leave(id) {
    this.remove(id);
    if (this.members.size === 0 && this.active) this.active.controller.abort("change");
  }

  /** Polls when nobody it waits for is due to report. */
  next() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.stopped) return;
    const members = [...this.members.values()];
    this.resendOverdue(members);
    if (this.active) return;
    const due = members.filter((m) => m.awaiting && now() - m.awaiting < REPORT_GRACE);
    if (due.length) {
      const at = Math.min(...due.map((m) => m.awaiting)) + REPORT_GRACE;
      this.timer = setTimeout(() => this.next(), Math.max(0, at - now()));
      return;
    }
    if (members.some((m) => !m.awaiting)) this.poll();
  }

  /** A tab that has not reported its answer may never have got it (a
   * relay message lost while the tab was frozen): it gets it again, every
   * REPORT_GRACE, up to MAX_RESENDS times. Items are numbered, so a tab
   * that had it just reports again. After that it is sent no more — a tab
   * frozen for hours must not find hours of copies queued for it: when it
   * runs again, its own hub gives the silent poll up and resumes. */
  resendOverdue(members) {
    const overdue = members.filter(due);
    if (overdue.length === 0) {
      clearInterval(this.resend);
      this.resend = null;
      return;
    }
    if (this.resend) return;
    this.resend = setInterval(() => {
      const still = [...this.members.values()].filter(due);
      if (still.length === 0 || this.stopped) {
        clearInterval(this.resend);
        this.resend = null;
        return;
      }
      for (const m of still) m.resent += 1;
      this.leader.post({ t: "frames", items: still.map((m) => m.pending) });
    }, REPORT_GRACE);
  }

  async poll() {
    const members = [...this.members.values()].filter((m) => !m.awaiting);
    if (members.length === 0) return;
    const keyless = members.some((m) => m.key === null);
    const active = { controller: new AbortController(), ids: new Set(members.map((m) => m.id)), keyless };
    this.active = active;
    const finished = () => {
      if (this.active !== active) return false;
      this.active = null;
      return true;
    };
    if (!(await this.leader.hub.stillLeader()) || this.stopped) {
      finished();
      return;
    }
    const last = new Map(members.map((m) => [m.id, m.last]));
    this.carry(members);
    const allNew = members.every((m) => m.key === null);
    const timeout = allNew
      ? Math.max(this.probeTimeout, 1000)
      : this.hold + Math.max(this.probeTimeout, 5000);
    let response;
    let text;
    try {
      let timer;
      let expired;
      let controller;
      ({ response, timer, expired, controller } = await this.request(
        Carrier.body(members),
        "application/json",
        timeout,
        active.controller.signal,
      ));
      try {
        text = await response.text();
      } catch (error) {
        throw controller.signal.reason === expired ? expired : error;
      } finally {
        clearTimeout(timer);
      }
    } catch (error) {
      if (this.active !== active) return;
      if (active.controller.signal.reason === "change") {
        finished();
        this.next();
        return;
      }
      finished();
      this.leader.end(this, [...active.ids], sharedFailure(error));
      this.next();
      return;
    }
    if (!finished()) return;
    if (response.status !== 200) {
      this.leader.end(this, [...active.ids], sharedRefusal(this.leader, response, text));
      this.next();
      return;
    }
    let pairs;
    try {
      pairs = parseSharedBatch(text);
    } catch (error) {
      this.leader.end(this, [...active.ids], {
        how: "lost",
        why: `the shared poll answer is not a holdfast batch (an intermediary?): ${error.message}`,
      });
      this.next();
      return;
    }
    const items = this.items(pairs, active.ids, last);
    if (items.length) this.leader.post({ t: "frames", items });
    this.next();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.debounce);
    clearTimeout(this.timer);
    clearInterval(this.resend);
    if (this.active) this.active.controller.abort("stopped");
    this.active = null;
  }
}

/** A member whose poll answer went unreported past REPORT_GRACE and may
 * be relayed again. */
function due(member) {
  return member.pending && member.resent < MAX_RESENDS && now() - member.awaiting >= REPORT_GRACE;
}

/** An SSE or long-poll attachment made through the tabs' shared request
 * (its `kind` is the transport's, so the engine's policy — fallback,
 * re-probing, flaps, liveness — is the same). Downstream comes from the
 * hub; upstream is its own `POST …/send`. */
class SharedAttachment extends Attachment {
  constructor(engine, kind, target, hub, greetingTimeout) {
    super(engine, kind, target, greetingTimeout);
    this.hub = hub;
    this.upstream = new Upstream(this);
    this.sharedId = null;
    this.carriedAt = null;
    this.boundTo = null; // the leader's reign that carries it
    this.answered = false;
    this.relayed = 0; // the number of the last relay item handled
    this.heardAt = 0; // when the leader last relayed anything for it
    this.joinedAt = 0;
    // As for PollAttachment: a continuing poll gets no greeting; a ping in
    // a send request confirms the session at once.
    this.pingDue = kind === "long-poll" && engine.params !== null;
  }

  /** The probe timeout counts from when a leader carried it (an election
   * under way is not a blocked transport) — but not forever. */
  get startedAt() {
    if (this.carriedAt) return this.carriedAt;
    return Math.min(now(), this.createdAt + UNCARRIED_LIMIT);
  }

  set startedAt(value) {
    this.createdAt = value;
  }

  start() {
    this.hub.join(this);
  }

  carried(reign) {
    if (this.ended) return;
    this.boundTo = reign;
    if (this.carriedAt === null) {
      this.carriedAt = now();
      this.engine.schedule();
    }
  }

  fromHub(frames, last, n) {
    if (this.ended) return;
    this.heardAt = now();
    if (Number.isSafeInteger(n)) {
      if (n <= this.relayed) {
        // Sent again: this tab's report was lost, or is on its way.
        if (frames.length && last !== undefined) this.hub.report(this);
        return;
      }
      if (n !== this.relayed + 1 && this.streaming) {
        // A relay message was lost (a frozen tab): the stream has a hole.
        this.relayed = n;
        // (A message from the tab holding the shared connection was lost.)
        this.end(this.proven ? "closed" : "stopped");
        return;
      }
      this.relayed = n;
    }
    if (last !== undefined) {
      this.answered = true;
      this.engine.ackedThrough(last);
    }
    if (frames.length || last !== undefined) this.engine.onFrames(this, frames, false);
    if (this.ended) return;
    if (last !== undefined) this.engine.confirm(this);
    if (frames.length) this.hub.report(this);
  }

  hubEnded(message) {
    if (this.ended) return;
    switch (message.how) {
      case "http":
        this.refused(
          { status: message.status, headers: new Headers(message.headers || {}) },
          String(message.text ?? ""),
        );
        return;
      case "unshared":
        this.hub.off = true;
        this.end("stopped");
        return;
      case "full":
        this.engine.unshared = true;
        this.end("stopped");
        return;
      case "fail": {
        const cause = ["unreachable", "timeout"].includes(message.cause) ? message.cause : "closed";
        this.end(this.proven ? "closed" : cause);
        return;
      }
      case "notstream":
        this.end(this.proven ? "closed" : "invalid");
        return;
      default:
        this.lost();
    }
  }

  /** The leader changed: re-join the new one, at once and without
   * backoff; the session resumes from what this tab was given. */
  leaderGone() {
    this.end("stopped");
  }

  flush() {
    this.upstream.start();
  }

  /** The network changed: the leader makes its shared requests again. */
  check() {
    if (this.greeted) this.hub.recheck(this.kind);
  }

  teardown() {
    this.upstream.stop();
    this.engine.abortRequests(this);
    this.hub.leave(this);
  }
}

const ATTACHMENTS = {
  websocket: WebSocketAttachment,
  sse: SseAttachment,
  "long-poll": PollAttachment,
};

// ---------------------------------------------------------------------------
// The connection policy: which transport to attach, when to fall back, how
// long to back off, when to probe a better transport and switch up, when to
// give up. A state machine with no IO — time is passed in (ms), random
// numbers are injected — ported from the Rust client's
// `protocol/src/connector/`, with the same names; both are checked against
// the scenario vectors in `protocol/vectors/` (test/node/vectors.test.js
// here). The engine below is its driver:
//
//   opened / trusted / ended(now, ending) ──▶           ──▶ poll(now): action
//   probed(now, id, works) / wake(…)      ──▶ Connector ──▶ pollTimeout()
//   sendFailed(failure, carried) ─────────▶           ──▶ verdict (at once)
//
// Endings (how an attachment ended): "unreachable" (nothing answered),
// { status, retryAfter } (an HTTP answer not from holdfast), "timeout" (no
// answer within the probe timeout), "no_first_frame" (answered, then no
// first frame within it), "invalid" (an answer that is not holdfast's),
// "closed", "silent", { detached: close }, { refused: close } (holdfast
// ended the attachment / closed the session), "session_closed", "stopped"
// (the driver stopped it); `close` is { code, reason, retryAfter }.
//
// Actions: { attach: transport, fresh, greeting }, { stop: true }, { probe: transport,
// id }, { remember: transport }, { reconnecting: { attempt, delay, reason } },
// { check: true }, { giveUp: { refused: close } | { noTransport: [failure] } }.
//
// Send failures: "failed", { failed: { retryAfter } }, { overloaded:
// { retryAfter } }, "refused", of a request that `carried` "messages" or
// only "control" frames (acks, pings, pongs); verdicts: { resend: ms },
// { endAttachment: true }.
//
// The rules:
// - a transport that never delivers its first frame (refused upgrade, error
//   page, timeout, silence, closed early) is blocked: the next one is tried
//   at once, and the step goes in the fallback report;
// - a transport that cannot even connect means the server (or the network)
//   is down: no fallback, the best transport again after a backoff;
// - before the session ever opened, the client keeps trying for
//   `connectTimeout` (null: forever), then gives up; afterwards it never
//   gives up (the server says when the session is lost);
// - a transport that dies twice within 10 s of opening without carrying
//   frames both ways is demoted;
// - a transport that carried frames both ways is remembered, and resets the
//   backoff;
// - on a fallback transport, better transports are probed now and then, and
//   the session switches up when one works;
// - a send request that failed is sent again (up to `sendRetries` times,
//   then the attachment is given up); one refused with 4503 is sent again
//   after its `retryAfter`, as often as it takes; meanwhile acks, pings and
//   pongs still go, in ack-only requests that count their failures apart;
// - a server's `retryAfter` is a floor: the client waits a random delay
//   between it and half as long again (RETRY_AFTER_SPREAD), so that the
//   clients it refused together do not come back together;
// - an attachment has `probeTimeout` to deliver its first frame; a
//   transport that carried frames both ways in this session gets
//   PROVEN_GREETING_FACTOR times that when attached again, and each
//   greeting timeout in a row doubles it, up to MAX_GREETING_FACTOR times
//   (the attach action's `greeting`), so that a busy server is not sent a
//   new handshake every 2 s by each of its returning clients.

/** A transport that died without carrying frames both ways within this
 * long (ms) after opening counts as a flap… */
const FLAP_WINDOW = 10000;
/** …and this many flaps demote it. */
const FLAPS_TO_DEMOTE = 2;
/** A fallback report entry on the wire (PROTOCOL.md §1.2). */
const reportEntry = (f) =>
  `${f.from}:${f.to}:${f.cause}:${f.status ?? f.code ?? ""}:${Math.max(0, Math.floor(f.after))}`;

/** The most bytes of report on a session's own request, and in a shared
 * request's entry (its body allows 256 bytes a session). */
const REPORT_BYTES = 1024;
const SHARED_REPORT_BYTES = 128;

/** The most steps a fallback report holds (the first ones are kept). */
const MAX_FALLBACKS = 16;
/** The most failures kept for a reconnect reason or a give-up. */
const MAX_FAILURES = 8;
/** The first retry of a failed send request waits this long (ms), doubling. */
const SEND_RETRY = 100;
/** Longest wait (ms) between re-probes of a better transport. */
const MAX_REPROBE = 5 * 60 * 1000;
/** A server's Retry-After is waited out plus up to this fraction of it, at
 * random (see `RETRY_AFTER_SPREAD` in the Rust connector for why half). */
const RETRY_AFTER_SPREAD = 0.5;
/** A transport that carried frames both ways in this session has this many
 * probe timeouts to greet when attached again (a slow attempt is far more
 * likely a busy server than a buffering proxy)… */
const PROVEN_GREETING_FACTOR = 2;
/** …and greeting timeouts in a row double its deadline up to this many
 * (16 s by default: past the kernel's SYN retransmissions at 1, 3, 7 and
 * 15 s, under the 30 s connect timeout). */
const MAX_GREETING_FACTOR = 8;

const CONNECTOR_DEFAULTS = Object.freeze({
  transports: TRANSPORTS,
  remembered: null,
  backoff: DEFAULTS.backoff,
  reprobeAfter: 15000,
  connectTimeout: 30000,
  sendRetries: 3,
  probeTimeout: 2000,
});

const FAILURE_ENDINGS = ["unreachable", "timeout", "no_first_frame", "invalid", "closed", "silent"];

function clamp01(x) {
  return Math.min(Math.max(x, 0), 1);
}

/** `ms` as Rust computes `Duration::as_secs_f64() * 1000.0`: whole seconds
 * plus nanoseconds over 1e9, so that both clients round the same way. */
function durationMillis(ms) {
  const secs = Math.floor(ms / 1000);
  const nanos = Math.round((ms - secs * 1000) * 1e6);
  return (secs + nanos / 1e9) * 1000;
}

/** Rounded down to a whole millisecond: both clients must agree to the
 * millisecond on the scenario vectors. */
function wholeMillis(ms) {
  return ms > 0 ? Math.floor(ms) : 0;
}

/** The delay (ms) before reconnect attempt `attempt` (0-based), given a
 * uniform random number in [0, 1): a random delay in
 * `[base × (1 − jitter), base]`, `base = min(initial × 2^attempt, max)`. */
function backoffDelay(backoff, attempt, random) {
  const base = Math.min(backoff.initial * 2 ** Math.min(attempt, 30), backoff.max);
  const jitter = clamp01(backoff.jitter) * clamp01(random);
  return wholeMillis(durationMillis(base) * (1 - jitter));
}

/** The wait (ms) for a server's `retryAfter`: a random delay in
 * `[after, after × (1 + RETRY_AFTER_SPREAD)]`, whole milliseconds. */
function spreadRetryAfter(after, random) {
  return wholeMillis(after * (1 + RETRY_AFTER_SPREAD * clamp01(random)));
}

/** `delay` spread over ±25 %. */
function jittered(delay, random) {
  return wholeMillis(durationMillis(delay) * (0.75 + 0.5 * clamp01(random)));
}

/** When to probe the transports better than the one in use, and what the
 * probes found. The clock survives reconnects: a busy session on a
 * fallback transport reconnects often (event streams are recycled every
 * few hundred kilobytes) and must still get to probe. A probe that finds
 * nothing pushes the next one back, doubling (with jitter) up to
 * MAX_REPROBE. */
class Reprobe {
  constructor(now, first, random) {
    this.delay = first; // the wait after the next failed round
    this.due = now + jittered(first, random); // when the next round starts
    this.probing = null; // the round under way: { id, candidate }
    this.found = null; // a better transport the last round found
    this.nextId = 0;
  }

  /** Starts the clock afresh (after a fallback or a switch): any probe
   * under way is forgotten. */
  reset(now, first, random) {
    const nextId = this.nextId;
    Object.assign(this, new Reprobe(now, first, random));
    this.nextId = nextId;
  }

  /** When the next round is due, while none is under way or found. */
  dueAt() {
    return this.probing === null && this.found === null ? this.due : null;
  }

  /** Starts a round at `now` if one is due: `{ id, candidate }` (the best
   * transport first). */
  start(now) {
    const due = this.dueAt();
    if (due === null || now < due) return null;
    return this.probe(0);
  }

  probe(candidate) {
    this.nextId += 1;
    this.probing = { id: this.nextId, candidate };
    return this.probing;
  }

  /** The candidate probe `id` was for, if it is the one under way. */
  current(id) {
    return this.probing !== null && this.probing.id === id ? this.probing.candidate : null;
  }

  works(candidate) {
    this.probing = null;
    this.found = candidate;
  }

  /** The candidate does not work: probe the next one better than `index`,
   * or end the round and wait longer. */
  next(now, candidate, index, random) {
    if (candidate + 1 < index) return this.probe(candidate + 1);
    this.probing = null;
    this.delay = Math.min(this.delay * 2, MAX_REPROBE);
    this.due = now + jittered(this.delay, random);
    return null;
  }

  takeFound() {
    const found = this.found;
    this.found = null;
    return found;
  }
}

/** The cause an ending records, `{ cause, status, code }` (cause one of
 * the labels of the fallback report), or null for the endings that are
 * not failures. Throws on an unknown ending (a driver's bug). */
function causeOf(end) {
  if (typeof end === "string") {
    if (FAILURE_ENDINGS.includes(end)) return { cause: end, status: null, code: null };
    if (end === "stopped" || end === "session_closed") return null;
  } else if (end && typeof end === "object") {
    if (Number.isInteger(end.status)) return { cause: "status", status: end.status, code: null };
    if (end.detached) return { cause: "detached", status: null, code: end.detached.code };
    if (end.refused) return { cause: "refused", status: null, code: end.refused.code };
  }
  throw new TypeError(`not an attempt ending: ${JSON.stringify(end)}`);
}

/** How long the server (or an intermediary) asked to wait, if it did. */
function retryAfterOf(end) {
  if (typeof end !== "object") return null;
  const close = end.detached || end.refused;
  const after = close ? close.retryAfter : end.retryAfter;
  return Number.isFinite(after) ? after : null;
}

/** A failure `{ transport, cause, status, code, afterOpen }` for people
 * (the same words as the Rust client's). */
function describeFailure({ transport, cause, status, code, afterOpen }) {
  switch (cause) {
    case "unreachable":
      return `${transport}: unreachable`;
    case "status":
      return transport === "websocket" && !afterOpen
        ? `${transport}: upgrade refused with HTTP ${status}`
        : `${transport}: answered HTTP ${status}`;
    case "timeout":
      return `${transport}: no answer within the probe timeout`;
    case "no_first_frame":
      return `${transport}: no first frame within the probe timeout`;
    case "invalid":
      return `${transport}: the answer is not holdfast's`;
    case "closed":
      return afterOpen ? `${transport}: connection lost` : `${transport}: closed before its first frame`;
    case "silent":
      return `${transport}: nothing heard from the server for too long`;
    case "detached":
      return `${transport}: detached by the server (${code})`;
    case "refused":
      return `${transport}: refused by the server (${code})`;
    case "flapping":
      return `${transport}: keeps dying right after opening`;
    default:
      return `${transport}: ${cause}`;
  }
}

/**
 * The connection policy of one client session (see the comment above):
 * the JS port of the Rust client's `Connector`, exported for tests and the
 * curious. Time is a number of ms passed to every call, never read.
 *
 * `config` (all optional): `transports` (best first), `remembered` (a
 * transport or null), `backoff` ({ initial, max, jitter, resetAfter }, ms),
 * `reprobeAfter`, `connectTimeout` (null: forever; default 30 s),
 * `sendRetries` (default 3), `probeTimeout` (default 2 s). `random()` gives
 * uniform numbers in [0, 1).
 */
export class Connector {
  /** A failure of a give-up's `noTransport` list, for people. */
  static describe(failure) {
    return describeFailure(failure);
  }

  constructor(config = {}, now = 0, random = Math.random) {
    this.config = {
      transports: [...(config.transports ?? CONNECTOR_DEFAULTS.transports)],
      remembered: config.remembered ?? null,
      backoff: { ...CONNECTOR_DEFAULTS.backoff, ...(config.backoff || {}) },
      reprobeAfter: config.reprobeAfter ?? CONNECTOR_DEFAULTS.reprobeAfter,
      connectTimeout:
        config.connectTimeout === undefined ? CONNECTOR_DEFAULTS.connectTimeout : config.connectTimeout,
      sendRetries: config.sendRetries ?? CONNECTOR_DEFAULTS.sendRetries,
      probeTimeout: config.probeTimeout ?? CONNECTOR_DEFAULTS.probeTimeout,
    };
    this.random = random;
    this.started = now;
    this.reprobe = new Reprobe(now, this.config.reprobeAfter, random());
    // "ready" (attach at the next poll), "attached", "waiting" (backing
    // off until `until`) or "done" (gave up, or the session is over).
    this.phase = "ready";
    /** The attachment under way: { index, started, opened, trusted, stopping }. */
    this.attached = null;
    this.until = 0;
    /** The transport in use, as an index in `config.transports`. */
    this.index = 0;
    /** Backoff attempts since the connection last worked. */
    this.attempt = 0;
    /** Early deaths per transport. */
    this.flaps = this.config.transports.map(() => 0);
    /** Per transport: whether it carried frames both ways in this session,
     * and its greeting timeouts in a row (since an attachment opened). */
    this.proven = this.config.transports.map(() => false);
    this.greetingTimeouts = this.config.transports.map(() => 0);
    /** Whether any attachment ever opened (the session exists). */
    this.sessionOpen = false;
    this.freshSession = false;
    /** Failures since the last wait, and the most any of them asked to wait. */
    this.failures = [];
    this.failuresRetryAfter = 0;
    /** The better transport to attach once the stopped one ended. */
    this.switchTo = null;
    this.report = [];
    /** Failures in a row of send requests carrying messages, and of
     * ack-only ones. */
    this.sendFailures = { messages: 0, control: 0 };
    this.actions = [];
    if (this.config.transports.length === 0) this.giveUp({ noTransport: [] });
    this.index = this.bestIndex();
  }

  // ---- inputs ---------------------------------------------------------------

  /** The current attachment's first frame arrived: the transport works. */
  opened(now) {
    if (this.phase !== "attached") return;
    this.attached.opened ??= now;
    this.sessionOpen = true;
    this.freshSession = false;
    // Whatever made attempts slow has passed: every deadline starts again.
    this.greetingTimeouts.fill(0);
  }

  /** The current attachment carried frames both ways. */
  trusted(now) {
    if (this.phase !== "attached") return;
    const a = this.attached;
    a.opened ??= now;
    if (a.trusted) return;
    a.trusted = true;
    this.sessionOpen = true;
    this.flaps[a.index] = 0;
    this.greetingTimeouts.fill(0);
    this.proven[a.index] = true;
    if (this.config.transports.length > 1) {
      const kind = this.config.transports[a.index];
      this.config.remembered = kind;
      this.actions.push({ remember: kind });
    }
  }

  /** The current attachment ended (`end`: an ending, see above). */
  ended(now, end) {
    causeOf(end); // an unknown ending throws before anything changes
    if (this.phase !== "attached") return;
    const a = this.attached;
    this.attached = null;
    this.phase = "ready";
    this.sendFailures = { messages: 0, control: 0 };
    if (end === "session_closed") {
      this.phase = "done";
      return;
    }
    if (a.opened === null) this.failed(now, a, end);
    else this.dropped(now, a, a.opened, end);
  }

  /** What the probe `id` found. Results of probes forgotten since (after a
   * fallback or a switch) are ignored. */
  probed(now, id, works) {
    const candidate = this.reprobe.current(id);
    if (candidate === null) return;
    if (works) {
      this.reprobe.works(candidate);
      return;
    }
    const next = this.reprobe.next(now, candidate, this.index, this.random());
    if (next !== null) this.requestProbe(next.id, next.candidate);
  }

  /** The network came back (`networkChanged`: `online`) or the page became
   * visible: a backoff ends now (an `online` also starts the backoff
   * afresh), and an attachment that may have died unseen is checked. */
  wake(now, networkChanged) {
    if (this.phase === "waiting") {
      if (networkChanged) this.attempt = 0;
      this.phase = "ready";
    } else if (this.phase === "attached" && this.attached.opened !== null) {
      this.actions.push({ check: true });
    }
  }

  /** A send request that `carried` "messages" (or the close behind them)
   * or only "control" frames (acks, pings, pongs) failed: what to do with
   * what it carried. The two kinds count their failures in a row apart. */
  sendFailed(failure, carried = "messages") {
    const kind = typeof failure === "string" ? failure : Object.keys(failure ?? {})[0];
    const fields = typeof failure === "object" && failure !== null ? failure[kind] : undefined;
    const retryAfter = Number.isFinite(fields?.retryAfter) ? fields.retryAfter : null;
    if (carried !== "messages" && carried !== "control") {
      throw new TypeError(`a send request carries "messages" or "control", not ${JSON.stringify(carried)}`);
    }
    // One draw per failure, used or not, as the Rust connector does.
    const random = this.random();
    switch (kind) {
      case "overloaded":
        // Without a Retry-After our own wait stands in for it, spread alike.
        return { resend: spreadRetryAfter(retryAfter ?? this.config.backoff.initial, random) };
      case "refused":
        return { endAttachment: true };
      case "failed": {
        if (this.sendFailures[carried] >= this.config.sendRetries) return { endAttachment: true };
        this.sendFailures[carried] += 1;
        const delay = SEND_RETRY * 2 ** (this.sendFailures[carried] - 1);
        return { resend: retryAfter === null ? delay : Math.max(delay, spreadRetryAfter(retryAfter, random)) };
      }
      default:
        throw new TypeError(`not a send failure: ${JSON.stringify(failure)}`);
    }
  }

  /** A send request that `carried` "messages" or "control" was answered:
   * its retry count starts again. */
  sendSucceeded(carried = "messages") {
    if (carried === "messages" || carried === "control") this.sendFailures[carried] = 0;
  }

  // ---- outputs --------------------------------------------------------------

  /** The next thing to do at `now`, or null. Call after every input, and
   * when `pollTimeout()` passes, until null. */
  poll(now) {
    if (this.actions.length > 0) return this.actions.shift();
    if (this.phase === "waiting" && now >= this.until) this.phase = "ready";
    if (this.phase === "ready") {
      const found = this.reprobe.takeFound();
      if (found !== null && found < this.index) this.switch(now, found);
      this.phase = "attached";
      this.attached = { index: this.index, started: now, opened: null, trusted: false, stopping: false };
      const fresh = this.freshSession;
      this.freshSession = false;
      return {
        attach: this.config.transports[this.index],
        fresh,
        greeting: this.greetingTimeout(this.index),
      };
    }
    if (!this.probingAllowed()) return null;
    const found = this.reprobe.found;
    if (found !== null && this.phase === "attached" && !this.attached.stopping) {
      this.attached.stopping = true;
      this.switchTo = found;
      return { stop: true };
    }
    const probe = this.reprobe.start(now);
    if (probe !== null) {
      this.requestProbe(probe.id, probe.candidate);
      return this.poll(now);
    }
    return null;
  }

  /** When (ms, on the caller's clock) `poll` has something to do next
   * without any input: the end of a backoff, or the next re-probe. */
  pollTimeout() {
    const waiting = this.phase === "waiting" ? this.until : null;
    const reprobe = this.probingAllowed() ? this.reprobe.dueAt() : null;
    if (waiting !== null && reprobe !== null) return Math.min(waiting, reprobe);
    return waiting ?? reprobe;
  }

  /** The fallback report: every step down the transport order so far,
   * oldest first (at most MAX_FALLBACKS), as `{ from, to, cause, status,
   * code, after }`. */
  fallbacks() {
    return this.report.slice();
  }

  /** Whether the connector is done (gave up, or the session is over). */
  get done() {
    return this.phase === "done";
  }

  // ---- the rules ------------------------------------------------------------

  /** An attempt that never delivered its first frame. */
  failed(now, a, end) {
    // A switch asked of an attempt that failed on its own before it
    // stopped is stale: the next probe round decides afresh.
    const switchTo = this.switchTo;
    this.switchTo = null;
    if (typeof end === "object" && end.refused) {
      this.refused(now, end.refused);
      return;
    }
    if (end === "stopped") {
      if (switchTo !== null) this.switch(now, switchTo);
      return;
    }
    const cause = causeOf(end);
    if (cause === null) return;
    if (cause.cause === "timeout" || cause.cause === "no_first_frame") this.greetingTimeouts[a.index] += 1;
    this.record({ transport: this.config.transports[a.index], ...cause, afterOpen: false });
    this.failuresRetryAfter = Math.max(this.failuresRetryAfter, retryAfterOf(end) ?? 0);
    if (cause.cause !== "unreachable" && a.index + 1 < this.config.transports.length) {
      this.fallBack(now, a.index, cause, now - a.started);
      return;
    }
    // The server is down, or nothing is left: from the best again, after a
    // backoff.
    this.index = this.bestIndex();
    const backoff = this.nextBackoff();
    const delay = Math.max(backoff, this.spread(this.failuresRetryAfter));
    this.failuresRetryAfter = 0;
    this.wait(now, delay, this.failures.map(describeFailure).join("; "));
  }

  /** holdfast refused to open the session (or closed it). */
  refused(now, close) {
    if (this.sessionOpen) {
      this.phase = "done";
      return;
    }
    if (close.code === CloseCodes.OVERLOADED && Number.isFinite(close.retryAfter)) {
      // Overloaded before the session opened: honour retryAfter, spread,
      // and open a fresh session then.
      const backoff = this.nextBackoff();
      const delay = Math.max(backoff, this.spread(close.retryAfter));
      const reason = `the server is overloaded (${close.code} ${close.reason ?? ""})`;
      if (!this.pastConnectTimeout(now, delay)) {
        this.freshSession = true;
        this.wait(now, delay, reason);
        return;
      }
    }
    this.giveUp({ refused: close });
  }

  /** A connection that worked, then ended. */
  dropped(now, a, opened, end) {
    this.failures = [];
    this.failuresRetryAfter = 0;
    const lasted = Math.max(0, now - opened);
    if (!a.trusted && lasted < FLAP_WINDOW && end !== "stopped") {
      this.flaps[a.index] += 1;
      if (this.flaps[a.index] >= FLAPS_TO_DEMOTE && a.index + 1 < this.config.transports.length) {
        this.flaps[a.index] = 0;
        this.fallBack(now, a.index, { cause: "flapping", status: null, code: null }, lasted);
      }
    }
    // A connection that carried frames both ways proves the network works:
    // the next drop starts the backoff afresh, however short.
    if (a.trusted || lasted >= this.config.backoff.resetAfter) this.attempt = 0;
    if (this.switchTo !== null) {
      const better = this.switchTo;
      this.switchTo = null;
      this.switch(now, better);
    }
    let immediate = false;
    if (end === "stopped") immediate = true;
    else if (typeof end === "object" && end.detached) {
      const code = end.detached.code;
      immediate = code === CloseCodes.RECONNECT || code === CloseCodes.REPLACED;
    } else if (typeof end === "object" && end.refused) {
      this.phase = "done";
      return;
    }
    if (immediate) {
      this.phase = "ready";
      return;
    }
    const cause = causeOf(end);
    let reason = "";
    if (cause !== null) {
      const failure = { transport: this.config.transports[a.index], ...cause, afterOpen: true };
      const detail = typeof end === "object" && end.detached ? end.detached.reason : "";
      reason = detail ? `${describeFailure(failure)}: ${detail}` : describeFailure(failure);
    }
    const backoff = this.nextBackoff();
    const delay = Math.max(backoff, this.spread(retryAfterOf(end) ?? 0));
    this.wait(now, delay, reason);
  }

  /** Steps down from `from` to the next transport, at once. */
  fallBack(now, from, cause, after) {
    if (this.report.length < MAX_FALLBACKS) {
      this.report.push({
        from: this.config.transports[from],
        to: this.config.transports[from + 1],
        cause: cause.cause,
        status: cause.status,
        code: cause.code,
        after: Math.max(0, after),
      });
    }
    this.index = from + 1;
    this.resetReprobe(now);
    this.phase = "ready";
  }

  /** Moves up to a better transport a probe found. */
  switch(now, better) {
    this.index = better;
    this.resetReprobe(now);
    this.phase = "ready";
  }

  /** Backs off for `delay`, or gives up when that would pass the connect
   * timeout of a session that never opened. */
  /** Whether waiting `delay` from `now` would pass the connect timeout of
   * a session that never opened. */
  pastConnectTimeout(now, delay) {
    const timeout = this.config.connectTimeout;
    return !this.sessionOpen && timeout !== null && now + delay >= this.started + timeout;
  }

  wait(now, delay, reason) {
    if (this.pastConnectTimeout(now, delay)) {
      const failures = this.failures;
      this.failures = [];
      this.giveUp({ noTransport: failures });
      return;
    }
    this.failures = [];
    this.phase = "waiting";
    this.until = now + delay;
    this.actions.push({ reconnecting: { attempt: this.attempt, delay, reason } });
  }

  giveUp(why) {
    this.phase = "done";
    this.actions.push({ giveUp: why });
  }

  /** The next backoff delay; counts the attempt. */
  nextBackoff() {
    const delay = backoffDelay(this.config.backoff, this.attempt, this.random());
    this.attempt += 1;
    return delay;
  }

  /** The wait (ms) for a server's `retryAfter` (0: none), spread; draws a
   * random number only when there is one. */
  spread(retryAfter) {
    return retryAfter > 0 ? spreadRetryAfter(retryAfter, this.random()) : 0;
  }

  /** How long (ms) an attachment of transport `index` has to greet: the
   * probe timeout, times PROVEN_GREETING_FACTOR once it carried frames both
   * ways in this session, doubled for each greeting timeout in a row, at
   * most MAX_GREETING_FACTOR times. A first attempt on a transport never
   * proven gets the plain probe timeout. */
  greetingTimeout(index) {
    const base = this.proven[index] ? PROVEN_GREETING_FACTOR : 1;
    const factor = Math.min(base * 2 ** Math.min(this.greetingTimeouts[index], 16), MAX_GREETING_FACTOR);
    return this.config.probeTimeout * factor;
  }

  record(failure) {
    if (this.failures.length === MAX_FAILURES) this.failures.shift();
    this.failures.push(failure);
  }

  requestProbe(id, candidate) {
    const transport = this.config.transports[candidate];
    if (transport === "long-poll") {
      // Long-polling goes through anything that passes requests.
      this.reprobe.works(candidate);
      return;
    }
    this.actions.push({ probe: transport, id });
  }

  resetReprobe(now) {
    this.reprobe.reset(now, this.config.reprobeAfter, this.random());
  }

  /** Probes run on a fallback transport of an open session, while attached
   * or backing off. */
  probingAllowed() {
    return (
      this.index > 0 && this.sessionOpen && (this.phase === "attached" || this.phase === "waiting")
    );
  }

  /** The transport to try first: the one remembered, else the best. */
  bestIndex() {
    const index =
      this.config.remembered === null ? -1 : this.config.transports.indexOf(this.config.remembered);
    return index === -1 ? 0 : index;
  }
}

// ---------------------------------------------------------------------------
// The engine: the session state and the driver that keeps it attached.

class Engine {
  constructor(client, base, options) {
    this.client = client;
    this.base = base; // URL: http(s)://host/mount (query kept)
    this.options = options;
    this.memoryKey = `${base.origin}${base.pathname}`;
    this.fetch = options.fetch || globalThis.fetch;
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    // The key goes in a header on HTTP requests to the page's own origin
    // (and everywhere outside a browser). Cross-origin, a custom header
    // makes the browser send a CORS preflight before each request whose
    // URL it has not seen (our URLs change with `last`): there the key
    // stays in the query (PROTOCOL.md §1.1) — unless the application's own
    // headers already make every request preflighted.
    const here = globalThis.location?.origin;
    this.keyInHeader =
      typeof here !== "string" || here === base.origin || preflighted(options.headers);
    const usable = (kind) => (kind === "websocket" ? !!this.WebSocket : !!this.fetch);
    this.order = options.transports.filter(usable);
    this.readyState = Holdfast.CONNECTING;
    this.params = null;
    /** The upstream window: [R, room], the greatest the server granted. */
    this.grant = null;
    this.closing = null; // { code, reason, sentAt, deadline }
    this.out = new Outbox();
    this.received = 0;
    this.ackedOut = 0;
    this.unackedSince = null;
    this.resendAck = false;
    this.pongDue = false;
    this.attachment = null;
    this.transport = null; // the transport carrying the session now
    this.lastTransport = null;
    this.requests = new Map(); // attachment -> Set<AbortController>
    this.timer = null;
    this.timerAt = 0;
    /** The connection policy (created by `run`). */
    this.connector = null;
    /** Fallback report entries the server has been told. */
    this.reported = 0;
    this.driving = false;
    /** What woke the engine, while the Connector's answer is acted on. */
    this.wokenBy = null;
    /** The shared request had no room for this session: its own from now. */
    this.unshared = false;
    this.listen();
  }

  // ---- the application's side --------------------------------------------

  get closed() {
    return this.readyState === Holdfast.CLOSED;
  }

  send(data) {
    if (this.readyState === Holdfast.CLOSING || this.closed) {
      throw stateError(`cannot send: the session is ${this.closed ? "closed" : "closing"}`);
    }
    let entry;
    if (typeof data === "string") {
      const text = wellFormed(data);
      entry = { text, size: utf8Length(text), ready: true };
    } else if (data instanceof ArrayBuffer) {
      entry = { bytes: new Uint8Array(data.slice(0)), size: data.byteLength, ready: true };
    } else if (ArrayBuffer.isView(data)) {
      const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
      entry = { bytes, size: bytes.length, ready: true };
    } else if (typeof Blob === "function" && data instanceof Blob) {
      entry = { size: data.size, ready: false };
    } else {
      throw new TypeError(
        "send() takes a string, an ArrayBuffer, a typed array, a DataView or a Blob",
      );
    }
    const max = this.params ? this.params.max_msg : Infinity;
    if (entry.size > max) {
      const error = new RangeError(
        `message of ${entry.size} bytes is larger than the server accepts (max_msg ${max})`,
      );
      error.code = "TOO_BIG";
      throw error;
    }
    if (this.out.bytes > 0 && this.out.bytes + entry.size > this.options.maxUnackedBytes) {
      const error = new RangeError(
        `${this.out.bytes} bytes are waiting for the server's acknowledgement; ` +
          `sending ${entry.size} more would pass maxUnackedBytes (${this.options.maxUnackedBytes}). ` +
          "Wait for bufferedAmount to go down.",
      );
      error.code = "BUFFER_FULL";
      throw error;
    }
    this.out.push(entry);
    if (!entry.ready) this.readBlob(entry, data);
    this.flushSoon();
  }

  async readBlob(entry, blob) {
    try {
      entry.bytes = new Uint8Array(await blob.arrayBuffer());
      entry.ready = true;
      this.flush();
    } catch (error) {
      // Its sequence number is taken: nothing after it could be delivered.
      const reason = `a Blob passed to send() could not be read: ${describeError(error)}`;
      this.finish({ code: CloseCodes.INTERNAL_ERROR, reason }, false);
    }
  }

  close(code, reason) {
    if (this.closing || this.closed) return;
    if (!this.params) {
      // Never opened: there is nobody to tell. (Events fire after this
      // call returns, as for a WebSocket.)
      this.finish({ code, reason }, false, true);
      return;
    }
    this.readyState = Holdfast.CLOSING;
    this.closing = { code, reason, sentAt: null, deadline: now() + this.options.closeTimeout };
    this.flush();
    this.schedule();
    if (!this.attachment && this.connector) {
      // Backing off: attach now, to tell the server.
      this.connector.wake(now(), false);
      this.drive();
    }
  }

  // ---- what the attachments call ------------------------------------------

  /** The URL of a downstream endpoint. The key is in it only where it
   * cannot travel outside (see `keyInHeader`): never for a WebSocket. */
  endpoint(kind, { key, last }, probe = false, report = null) {
    const url = new URL(this.base.href);
    url.pathname = `${this.base.pathname.replace(/\/+$/, "")}/${ENDPOINTS[kind]}`;
    if (kind === "websocket") url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("v", String(PROTOCOL_VERSION));
    if (key) {
      if (kind !== "websocket" && !this.keyInHeader) url.searchParams.set("key", key);
      url.searchParams.set("last", String(last));
    }
    if (probe) url.searchParams.set("probe", "1");
    if (report) url.searchParams.set("report", report);
    // Offers native text (§2.2.1); servers without it ignore the parameter.
    if (kind === "websocket" && !probe) url.searchParams.set("wstext", "1");
    return url.href;
  }

  /** The URL of a shared request (PROTOCOL.md §11.1): keys travel in its
   * body only. */
  sharedUrl(kind) {
    const url = new URL(this.base.href);
    url.pathname = `${this.base.pathname.replace(/\/+$/, "")}/${ENDPOINTS[kind]}`;
    url.searchParams.set("v", String(PROTOCOL_VERSION));
    return url.href;
  }

  /** The tabs' hub when this attachment is to be shared (PROTOCOL.md
   * §11.3): SSE and long-polling, in a browser page with Web Locks and
   * BroadcastChannel, unless turned off (`share: false`, a `fetch` of the
   * application's own, which another tab could not use), the server has
   * no shared requests, or the shared request was full for this session. */
  sharedHub(kind) {
    if (kind === "websocket" || !this.options.share || this.unshared || this.options.fetch) return null;
    if (!sharingPossible()) return null;
    const hub = hubFor(`holdfast:${this.memoryKey}`);
    return hub.off ? null : hub;
  }

  sendUrl() {
    const url = new URL(this.base.href);
    url.pathname = `${this.base.pathname.replace(/\/+$/, "")}/send`;
    url.searchParams.set("v", String(PROTOCOL_VERSION));
    if (!this.keyInHeader) url.searchParams.set("key", this.params.key);
    return url.href;
  }

  /** The headers naming session `key` on an HTTP request (none when the
   * key travels in the URL, or there is no session yet). */
  keyHeaders(key) {
    return key && this.keyInHeader ? { [KEY_HEADER]: key } : {};
  }

  /** Where the next attachment points. */
  target() {
    return { key: this.params ? this.params.key : null, last: this.received };
  }

  /** A WebSocket to `url`, naming session `key` (if any) in a subprotocol. */
  newWebSocket(url, key) {
    const Ctor = this.WebSocket;
    const protocols = key ? [SUBPROTOCOL, `${KEY_SUBPROTOCOL}${key}`] : [];
    if (this.options.headers && !inBrowser) {
      // Node with headers: undici's WebSocket takes `{ protocols, headers }`,
      // the `ws` package reads `headers` from its options but protocols
      // only from an array: the key goes in a header as well.
      const headers = { ...this.options.headers, ...this.keyHeaders(key) };
      return new Ctor(url, { protocols, headers });
    }
    return protocols.length ? new Ctor(url, protocols) : new Ctor(url);
  }

  /** A request tied to an attachment (aborted when it ends), read whole:
   * `{ response, text }`. Fails after `timeout` ms without the whole
   * answer, or when `signal` aborts. */
  async fetchText(att, url, timeout, init = {}, signal = undefined) {
    const controller = this.controller(att, signal);
    const expired = new RequestTimeout(`no answer within ${timeout} ms`);
    const timer = setTimeout(() => controller.abort(expired), timeout);
    try {
      const response = await this.fetch.call(globalThis, url, this.init(init, controller));
      const text = await response.text();
      return { response, text };
    } catch (error) {
      throw controller.signal.reason === expired ? expired : error;
    } finally {
      clearTimeout(timer);
      this.release(att, controller);
    }
  }

  /** A streaming request tied to an attachment: fails after `timeout` ms
   * without response headers; the body is read by the caller (and the
   * request aborted when the attachment ends). */
  async fetchStream(att, url, timeout, init = {}) {
    const controller = this.controller(att);
    const expired = new RequestTimeout(`no answer within ${timeout} ms`);
    const timer = setTimeout(() => controller.abort(expired), timeout);
    try {
      return await this.fetch.call(globalThis, url, this.init(init, controller));
    } catch (error) {
      throw controller.signal.reason === expired ? expired : error;
    } finally {
      clearTimeout(timer);
    }
  }

  init(init, controller) {
    return {
      ...init,
      headers: { ...this.options.headers, ...init.headers },
      cache: "no-store",
      credentials: this.options.credentials,
      signal: controller.signal,
    };
  }

  controller(att, signal) {
    const controller = new AbortController();
    if (signal) {
      if (signal.aborted) controller.abort(signal.reason);
      else signal.addEventListener("abort", () => controller.abort(signal.reason), { once: true });
    }
    let set = this.requests.get(att);
    if (!set) this.requests.set(att, (set = new Set()));
    set.add(controller);
    return controller;
  }

  release(att, controller) {
    const set = this.requests.get(att);
    if (set) set.delete(controller);
  }

  abortRequests(att) {
    const set = this.requests.get(att);
    if (!set) return;
    this.requests.delete(att);
    for (const controller of set) controller.abort("the attachment ended");
  }

  /** Any byte arrived on the attachment's downstream: it is alive. */
  heard(att) {
    if (att === this.attachment) att.lastHeard = now();
  }

  /** Frames from the server: on the attachment's downstream, or (via a
   * request) in a send reply. */
  onFrames(att, frames, viaRequest) {
    if (att !== this.attachment || att.ended) return;
    if (!viaRequest) {
      att.lastHeard = now();
      att.verifyBy = 0;
    }
    try {
      for (const frame of frames) {
        if (this.closed || att.ended) break;
        this.frame(att, frame, viaRequest);
      }
    } catch (error) {
      if (!(error instanceof ProtocolViolation)) throw error;
      this.requestFailed();
      att.end("invalid"); // the server broke the protocol
      return;
    }
    if (!att.ended) {
      if (this.received - this.ackedOut >= ACK_EVERY && att.streaming) att.ackDue = true;
      this.flush();
      this.schedule();
    }
  }

  frame(att, frame, viaRequest) {
    const greeting = !viaRequest && !att.greeted;
    switch (frame.t) {
      case "open":
        if (!greeting || this.params) throw new ProtocolViolation("unexpected open");
        this.opened(att, frame);
        return;
      case "resumed":
        if (viaRequest || !this.params) throw new ProtocolViolation("unexpected resumed");
        this.ack(frame.ack, frame.room);
        this.out.rewind();
        if (greeting || att.kind === "long-poll") this.greet(att, true);
        return;
      case "close":
        this.closedByServer(closeOf(frame));
        return;
      case "detach":
        if (viaRequest) return;
        this.detached(att, closeOf(frame));
        return;
      default:
    }
    if (greeting) throw new ProtocolViolation(`${frame.t} before open or resumed`);
    switch (frame.t) {
      case "msg":
        if (typeof frame.d !== "string") throw new ProtocolViolation("msg without text");
        this.deliver(att, frame.seq, frame.d, viaRequest);
        return;
      case "bin": {
        let payload = frame.payload;
        if (payload === undefined) {
          if (typeof frame.d !== "string") throw new ProtocolViolation("bin without data");
          try {
            payload = fromBase64(frame.d).buffer;
          } catch {
            throw new ProtocolViolation("bin data is not base64");
          }
        }
        this.deliver(att, frame.seq, payload, viaRequest);
        return;
      }
      case "ack":
        // On every transport: room that came back arrives downstream too.
        this.ack(frame.seq, frame.room);
        return;
      case "ping":
        this.pongDue = true;
        if (!viaRequest) att.receivedAny = true;
        return;
      case "pong":
        return;
      default:
        throw new ProtocolViolation(`unknown frame type ${JSON.stringify(frame.t)}`);
    }
  }

  opened(att, params) {
    for (const field of ["key", "sid", "ping", "timeout", "max_msg", "max_batch"]) {
      if (params[field] === undefined) throw new ProtocolViolation(`open without ${field}`);
    }
    this.params = params;
    // The upstream window (§3.1); a server without one sets no limit.
    this.grant = Number.isSafeInteger(params.win) && params.win >= 0 ? [0, params.win] : null;
    this.greet(att, false);
  }

  /** An acknowledgement of `seq`, with the room the server left after it
   * (§3.1): the greatest [seq, room] wins, as acks may arrive out of
   * order (a send reply racing the downstream). */
  ack(seq, room) {
    const freedCharge = this.out.chargeThrough(seq);
    this.ackMessages(seq);
    if (this.grant === null) return;
    const [acked, left] = this.grant;
    if (Number.isSafeInteger(room) && room >= 0) {
      if (seq > acked || (seq === acked && room > left)) this.grant = [seq, room];
    } else if (seq > acked) {
      // No room given: what it freed is in the server's queue.
      this.grant = [seq, Math.max(0, left - freedCharge)];
    }
  }

  ackMessages(seq) {
    if (this.out.ack(seq) > 0 && this.closing) {
      this.closing.deadline = Math.max(this.closing.deadline, now() + this.options.closeTimeout);
    }
  }

  deliver(att, seq, data, viaRequest) {
    if (!Number.isSafeInteger(seq) || seq < 1) throw new ProtocolViolation(`bad seq ${seq}`);
    if (seq <= this.received) return; // a replay: drop it
    if (seq !== this.received + 1) {
      throw new ProtocolViolation(`gap: expected message ${this.received + 1}, got ${seq}`);
    }
    this.received = seq;
    if (this.unackedSince === null) this.unackedSince = now();
    if (!viaRequest) {
      att.receivedAny = true;
      this.trust(att);
    }
    if (typeof data !== "string" && this.client.binaryType === "blob") data = new Blob([data]);
    this.client.dispatchEvent(messageEvent(data));
  }

  /** The attachment's first frame arrived (or, on long-polling, its first
   * answer). */
  greet(att, resumed) {
    att.greeted = true;
    att.lastHeard = now();
    const opened = !att.proven;
    att.proven = true;
    if (!att.announced) this.announce(att, resumed);
    if (opened) this.attachmentOpened(att);
  }

  /** On long-polling: a poll answered, so the session is on this attachment
   * (a continuing poll gets no `resumed`). */
  confirm(att) {
    const opened = att.greeted && !att.proven;
    if (opened) att.proven = true;
    if (!att.announced && att.greeted) this.announce(att, true);
    if (opened) this.attachmentOpened(att);
  }

  announce(att, resumed) {
    att.announced = true;
    const previous = this.lastTransport;
    this.transport = this.lastTransport = att.kind;
    if (this.readyState === Holdfast.CONNECTING) {
      this.readyState = Holdfast.OPEN;
      this.client.dispatchEvent(
        new HoldfastEvent("open", { transport: att.kind, sessionId: this.params.sid }),
      );
    } else if (resumed) {
      this.client.dispatchEvent(new HoldfastEvent("resumed", { transport: att.kind }));
    }
    if (previous && previous !== att.kind) {
      this.client.dispatchEvent(
        new HoldfastEvent("transportchange", { from: previous, to: att.kind }),
      );
    }
  }

  detached(att, close) {
    att.end({ detached: close });
  }

  closedByServer(close) {
    if (!this.params) {
      // Refused before a session opened.
      const att = this.attachment;
      if (att) att.end({ refused: close });
      return;
    }
    if (this.closing && this.closing.sentAt !== null) {
      // The answer to our `close`, which went out after every message: the
      // server received them all (it would have refused a gap).
      this.out.ack(this.out.sent);
    }
    this.finish(close, true);
  }

  /** On long-polling, a poll's `last` acknowledged everything up to it. */
  ackedThrough(last) {
    if (last >= this.received) {
      this.ackedOut = this.received;
      this.unackedSince = null;
      this.resendAck = false;
    } else if (last > this.ackedOut) {
      this.ackedOut = last;
    }
  }

  /** A send request failed: what it carried goes out again, acks included. */
  requestFailed() {
    this.out.rewind();
    if (this.received > 0) {
      this.resendAck = true;
      if (this.unackedSince === null) this.unackedSince = now();
    }
    if (this.closing) this.closing.sentAt = null;
  }

  /** Frames to send now: strings (JSON frames), and with `nativeBinary`,
   * queued binary entries (with `nativeText` large texts too) to send as
   * WebSocket binary messages. `null` when there is nothing to send.
   *
   * `only`, for a send request while part of the upstream waits
   * (PROTOCOL.md §8.4): "control" takes only the ack, pong and ping due
   * (the messages, and the close behind them, wait out a refusal's
   * Retry-After or a failed request's backoff, and must not hold back the
   * acks that free the server's buffers); "messages" takes nothing unless
   * a message or the close goes, acks and pongs riding along (a failed
   * ack-only request's acks wait their own retry delay). */
  transmit(att, nativeBinary, nativeText = false, only = null) {
    if (att !== this.attachment || !att.greeted || att.ended || this.closed) return null;
    const messages = only !== "control";
    const parts = [];
    if (this.pongDue) parts.push('{"t":"pong"}');
    if (att.pingDue) parts.push('{"t":"ping"}');
    const control = parts.length;
    let sentMessages = false;
    if (messages && (!this.closing || this.closing.sentAt === null)) {
      // A batch stays within max_msg bytes, brackets, commas and control
      // frames included (§2.3): room is kept for an ack and a close.
      let budget = this.params.max_msg - 2 - ACK_ROOM;
      for (const part of parts) budget -= part.length + 1;
      if (this.closing) budget -= utf8Length(closeFrame(this.closing)) + 1;
      const window = this.grant === null ? null : Math.max(0, this.grant[1] - this.out.inFlight);
      sentMessages = this.out.take(budget, nativeBinary, parts, window, nativeText);
    }
    const closeDue = messages && this.closing && this.closing.sentAt === null && !this.out.hasUnsent();
    if (only === "messages" && !sentMessages && !closeDue) return null;
    if (control > 0) {
      // Taken: they go in this batch.
      this.pongDue = false;
      att.pingDue = false;
    }
    const unacked = this.received > this.ackedOut || this.resendAck;
    // An ack rides along only in a JSON batch going out anyway: a native
    // text is no batch (§2.3), so next to one alone the ack waits for its
    // deadline.
    const batchGoing = parts.some((p) => typeof p === "string" || p.bytes !== undefined);
    if (unacked && (att.ackDue || batchGoing)) {
      att.ackDue = false;
      parts.push(`{"t":"ack","seq":${this.received}}`);
      this.ackedOut = this.received;
      this.unackedSince = null;
      this.resendAck = false;
    }
    if (closeDue) {
      parts.push(closeFrame(this.closing));
      this.closing.sentAt = now();
    }
    if (parts.length === 0) return null;
    if (sentMessages || parts.some((p) => typeof p === "string" && !p.startsWith('{"t":"close"'))) {
      att.sentAny = true;
      this.trust(att);
    }
    return parts;
  }

  /** Once frames went both ways on an attachment, its transport works
   * here: the connection policy hears it (and has it remembered). */
  trust(att) {
    if (att.reportedTrusted || !att.trusted || !att.announced || att !== this.attachment) return;
    att.reportedTrusted = true;
    this.connector.trusted(now());
    this.drive();
  }

  /** Sends a `ping` on the attachment (the connection check). */
  pingOnce(att) {
    if (att.kind === "websocket" && att.ws && att.ws.readyState === 1) att.ws.send('[{"t":"ping"}]');
  }

  flush() {
    const att = this.attachment;
    if (att && att.greeted && !att.ended) att.flush();
  }

  flushSoon() {
    if (this.flushQueued) return;
    this.flushQueued = true;
    queueMicrotask(() => {
      this.flushQueued = false;
      this.flush();
      this.schedule();
    });
  }

  // ---- timers -------------------------------------------------------------
  // One timer, re-armed after every change. Deadlines compare wall-clock
  // time, so a timer that fires late (a throttled background tab, a
  // sleeping laptop) still sees how long it has really been.

  deadAfter() {
    const ping = this.params ? this.params.ping : 20000;
    const tolerance = this.options.heartbeatTolerance ?? ping / 2;
    return ping + tolerance;
  }

  ackDeadline() {
    if (this.unackedSince === null) return null;
    const count = this.received - this.ackedOut;
    return this.resendAck || count >= ACK_EVERY ? this.unackedSince : this.unackedSince + ACK_DELAY;
  }

  nextDeadline() {
    const deadlines = [];
    if (this.closing) deadlines.push(this.closing.deadline);
    const att = this.attachment;
    if (att && !att.ended) {
      if (!att.greeted) deadlines.push(att.startedAt + att.greetingTimeout);
      else {
        if (att.streaming) deadlines.push(att.lastHeard + this.deadAfter());
        if (att.verifyBy) deadlines.push(att.verifyBy);
        const ack = this.ackDeadline();
        if (att.streaming && !att.ackDue && ack !== null) deadlines.push(ack);
      }
    }
    // The end of a backoff, or the next re-probe.
    const policy = this.connector ? this.connector.pollTimeout() : null;
    if (policy !== null) deadlines.push(policy);
    return deadlines.length ? Math.min(...deadlines) : null;
  }

  schedule() {
    if (this.closed) return;
    const at = this.nextDeadline();
    // An armed timer that fires no later is kept: `onTimer` re-arms (a
    // busy connection moves its liveness deadline with every frame).
    if (this.timer && at !== null && this.timerAt <= at) return;
    clearTimeout(this.timer);
    this.timer = null;
    this.timerAt = at;
    if (at !== null) this.timer = setTimeout(() => this.onTimer(), Math.max(0, at - now()));
  }

  onTimer() {
    this.timer = null;
    if (this.closed) return;
    const t = now();
    if (this.closing && t >= this.closing.deadline) {
      const { code, reason } = this.closing;
      this.finish({ code, reason }, false);
      return;
    }
    const att = this.attachment;
    if (att && !att.ended) {
      if (!att.greeted) {
        if (t >= att.startedAt + att.greetingTimeout) {
          att.end(att.responded ? "no_first_frame" : "timeout");
        }
      } else if (att.streaming && t >= att.lastHeard + this.deadAfter()) {
        att.end("silent");
      } else if (att.verifyBy && t >= att.verifyBy) {
        // No answer to a connection check after the network came back:
        // reconnect at once.
        att.end("stopped");
      } else {
        const ack = this.ackDeadline();
        if (att.streaming && ack !== null && t >= ack) {
          att.ackDue = true;
          this.flush();
        }
      }
    }
    this.drive();
    this.schedule();
  }

  // ---- the browser's hints --------------------------------------------------

  listen() {
    this.onOnline = () => this.check(true);
    this.onVisible = () => {
      if (document.visibilityState === "visible") this.check(false);
    };
    if (inBrowser) {
      window.addEventListener("online", this.onOnline);
      document.addEventListener("visibilitychange", this.onVisible);
    }
  }

  unlisten() {
    if (inBrowser) {
      window.removeEventListener("online", this.onOnline);
      document.removeEventListener("visibilitychange", this.onVisible);
    }
  }

  /** The network came back (`online`), or the tab became visible: run the
   * timers now, and tell the connection policy (a backoff ends; a
   * connection that may have died meanwhile is checked). */
  check(networkChanged) {
    if (this.closed || !this.connector) return;
    this.onTimer();
    if (this.closed) return;
    this.connector.wake(now(), networkChanged);
    this.wokenBy = networkChanged ? "online" : "visible";
    try {
      this.drive();
    } finally {
      this.wokenBy = null;
    }
  }

  // ---- the driver -----------------------------------------------------------
  // Every decision — which transport, fallback, backoff, re-probing and
  // switching up, giving up — is the Connector's (the connection policy
  // above). The engine reports how each attachment went, runs the probes it
  // is asked for, and does what it says.

  /** Keeps the session attached until it is over. */
  run() {
    if (this.order.length === 0) {
      this.error(
        "no usable transport: there is no WebSocket here (Node 20 needs --experimental-websocket, " +
          "or pass `WebSocket`, e.g. from the ws package) or no fetch (pass `fetch`)",
      );
      this.finish({ code: CloseCodes.GOING_AWAY, reason: "no usable transport" }, false);
      return;
    }
    if (this.closed) return;
    const options = this.options;
    this.connector = new Connector(
      {
        transports: this.order,
        remembered: recall(this.memoryKey),
        backoff: options.backoff,
        reprobeAfter: options.reprobeAfter,
        connectTimeout: options.connectTimeout,
        probeTimeout: options.probeTimeout,
      },
      now(),
      Math.random,
    );
    this.drive();
  }

  /** Does what the connection policy asks until it has nothing to do now,
   * then sleeps until it next may (`pollTimeout`, on the engine's one
   * timer). */
  drive() {
    if (!this.connector || this.driving) return;
    this.driving = true;
    try {
      for (let action; !this.closed && (action = this.connector.poll(now())) !== null; ) {
        this.perform(action);
      }
    } finally {
      this.driving = false;
    }
    this.schedule();
  }

  perform(action) {
    if (action.attach !== undefined) {
      this.attach(action.attach, action.greeting);
    } else if (action.stop) {
      // A better transport works: this attachment ends, that one follows.
      this.attachment?.end("stopped");
    } else if (action.probe !== undefined) {
      this.runProbe(action.id, action.probe);
    } else if (action.remember !== undefined) {
      remember(this.memoryKey, action.remember, this.options.rememberFor);
    } else if (action.reconnecting) {
      const { attempt, delay, reason } = action.reconnecting;
      this.client.dispatchEvent(new HoldfastEvent("reconnecting", { attempt, delay, reason }));
    } else if (action.check) {
      this.checkAttachment();
    } else if (action.giveUp) {
      this.giveUp(action.giveUp);
    }
  }

  /** Attaches transport `kind`. (The Connector's `fresh`, a new session
   * after the server refused to open one, needs nothing here: there is no
   * session to resume until one opened.) */
  attach(kind, greetingTimeout = this.options.probeTimeout) {
    this.out.rewind();
    if (this.closing) this.closing.sentAt = null;
    const hub = this.sharedHub(kind);
    const att = hub
      ? new SharedAttachment(this, kind, this.target(), hub, greetingTimeout)
      : new ATTACHMENTS[kind](this, kind, this.target(), greetingTimeout);
    this.attachment = att;
    this.offerReport(att, hub ? SHARED_REPORT_BYTES : REPORT_BYTES);
    if (kind === "long-poll" && this.params) {
      // Usable at once: a continuing poll gets no greeting (PROTOCOL.md §5).
      att.greeted = true;
    }
    att.done.then((ending) => this.attachmentEnded(att, ending));
    att.start();
    this.flush();
  }

  attachmentEnded(att, ending) {
    if (this.attachment === att) {
      this.attachment = null;
      this.transport = null;
      this.out.rewind();
    }
    if (this.closed) return;
    this.connector.ended(now(), ending);
    this.drive();
  }

  /** The report entries the server has not had, within `max` bytes, for
   * `att`'s requests: once it opens, the server has them. */
  offerReport(att, max) {
    const unsent = this.connector.fallbacks().slice(this.reported);
    let n = unsent.length;
    let value = "";
    while (n > 0 && (value = unsent.slice(0, n).map(reportEntry).join(",")).length > max) n--;
    att.report = n ? value : null;
    att.reporting = this.reported + n;
  }

  /** The attachment's first frame arrived (or its first poll answer). */
  attachmentOpened(att) {
    this.reported = Math.max(this.reported, att.reporting);
    att.report = null;
    if (att !== this.attachment || !this.connector) return;
    this.connector.opened(now());
    this.drive();
  }

  /** A `check` after a wake-up: an `online` checks the connection; a page
   * becoming visible only one that has been quiet for a ping interval (a
   * busy one is plainly alive). */
  checkAttachment() {
    const att = this.attachment;
    if (!att || att.ended || !att.greeted) return;
    const quiet = now() - att.lastHeard > (this.params ? this.params.ping : 20000);
    if (this.wokenBy !== "visible" || quiet) att.check();
  }

  /** Probes a better transport for the Connector. */
  runProbe(id, kind) {
    const probing = this.params && !this.closed ? this.probe(kind) : Promise.resolve(false);
    probing.then((works) => {
      if (this.closed) return;
      this.connector.probed(now(), id, works);
      this.drive();
    });
  }

  /** The connection policy gave up before the session opened. */
  giveUp(why) {
    if (why.refused) {
      this.finish(why.refused, true);
      return;
    }
    const failures = why.noTransport.map(describeFailure).join("; ");
    this.finish(
      {
        code: GAVE_UP,
        reason: `no transport reached the server within connectTimeout${failures ? ` (${failures})` : ""}`,
      },
      false,
    );
  }

  probe(kind) {
    const url = this.endpoint(kind, { key: this.params.key, last: 0 }, true);
    const timeout = this.options.probeTimeout;
    return kind === "websocket" ? this.probeWebSocket(url, timeout) : this.probeSse(url, timeout);
  }

  /** A WebSocket works once a `ping` got its `pong`: a frame went both ways. */
  probeWebSocket(url, timeout) {
    return new Promise((resolve) => {
      let ws;
      let settled = false;
      const done = (works) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (ws) {
          ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
          try {
            ws.close(1000);
          } catch {
            // already closed
          }
        }
        resolve(works);
      };
      const timer = setTimeout(() => done(false), timeout);
      try {
        ws = this.newWebSocket(url, this.params.key);
      } catch {
        done(false);
        return;
      }
      ws.onopen = () => ws.send('[{"t":"ping"}]');
      ws.onmessage = (event) => {
        if (typeof event.data !== "string") return;
        try {
          if (parseBatch(event.data).some((f) => f.t === "pong")) done(true);
        } catch {
          done(false);
        }
      };
      ws.onclose = ws.onerror = () => done(false);
    });
  }

  /** An event stream works if its first event arrives within the probe
   * timeout: a buffering proxy would hold it. */
  async probeSse(url, timeout) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort("probe timeout"), timeout);
    try {
      const response = await this.fetch.call(globalThis, url, {
        headers: {
          ...this.options.headers,
          Accept: "text/event-stream",
          ...this.keyHeaders(this.params.key),
        },
        cache: "no-store",
        credentials: this.options.credentials,
        signal: controller.signal,
      });
      const type = response.headers.get("content-type") || "";
      if (response.status !== 200 || !type.startsWith("text/event-stream") || !response.body) {
        return false;
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      const parser = new SseParser();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return false;
        for (const data of parser.push(decoder.decode(value, { stream: true }))) {
          if (parseBatch(data).some((f) => f.t === "ping")) return true;
        }
      }
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
      controller.abort("probe done");
    }
  }

  // ---- endings --------------------------------------------------------------

  error(message, cause) {
    this.client.dispatchEvent(new HoldfastErrorEvent({ message, error: cause }));
  }

  /** The session is over. `wasClean`: it ended with a `close` frame
   * (rather than the client giving up). */
  finish(close, wasClean, later = false) {
    if (this.closed) return;
    this.readyState = Holdfast.CLOSED;
    this.closing = null;
    clearTimeout(this.timer);
    this.timer = null;
    this.unlisten();
    const att = this.attachment;
    this.attachment = null;
    this.transport = null;
    if (att) {
      // Let a close answer on the WebSocket reach the server before the
      // socket goes.
      att.end("session_closed");
    }
    const code = close.code;
    const sessionLost = code === CloseCodes.SESSION_LOST;
    const failure = !(code === 1000 || code === 1001 || (code >= 3000 && code < 4000));
    const dispatch = () => {
      if (failure) {
        const what = sessionLost
          ? "the session is lost (the server no longer knows it; messages in flight may be lost)"
          : `the session ended with ${code}`;
        this.error(`${what}: ${close.reason}`, undefined);
      }
      this.client.dispatchEvent(
        new HoldfastCloseEvent({
          code,
          reason: close.reason ?? "",
          wasClean,
          sessionLost,
          retryAfter: close.retryAfter,
        }),
      );
    };
    if (later) queueMicrotask(dispatch);
    else dispatch();
  }
}

function stateError(message) {
  if (typeof DOMException === "function") return new DOMException(message, "InvalidStateError");
  const error = new Error(message);
  error.name = "InvalidStateError";
  return error;
}

function validCloseCode(code) {
  return code === 1000 || (Number.isInteger(code) && code >= 3000 && code <= 4999);
}

/** Whether a cross-origin request with these headers needs a CORS
 * preflight anyway: one is not CORS-safelisted (of those, only `Accept`,
 * `Accept-Language` and `Content-Language` can be set here). */
function preflighted(headers) {
  const safe = ["accept", "accept-language", "content-language"];
  return Object.keys(headers || {}).some((name) => !safe.includes(name.toLowerCase()));
}

/** The `http(s)://host/mount` base of a URL given as http(s), ws(s) or
 * (in a page) relative. */
function baseUrl(url) {
  const location = typeof globalThis.location === "object" ? globalThis.location.href : undefined;
  let parsed;
  try {
    parsed = new URL(String(url), location);
  } catch {
    throw new SyntaxError(`not a URL: ${url}`);
  }
  if (parsed.protocol === "ws:") parsed.protocol = "http:";
  else if (parsed.protocol === "wss:") parsed.protocol = "https:";
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new SyntaxError(`holdfast URLs are http(s):// or ws(s)://, not ${parsed.protocol}`);
  }
  parsed.hash = "";
  parsed.pathname = parsed.pathname.replace(/\/+$/, "");
  return parsed;
}

function resolveOptions(options = {}) {
  const merged = { ...DEFAULTS, ...options };
  merged.backoff = { ...DEFAULTS.backoff, ...(options.backoff || {}) };
  const transports = [...(options.transports || DEFAULTS.transports)];
  for (const kind of transports) {
    if (!TRANSPORTS.includes(kind)) {
      throw new TypeError(`unknown transport ${JSON.stringify(kind)}; use ${TRANSPORTS.join(", ")}`);
    }
  }
  if (transports.length === 0) throw new TypeError("`transports` is empty");
  merged.transports = transports;
  for (const name of ["probeTimeout", "maxUnackedBytes", "closeTimeout", "reprobeAfter", "rememberFor"]) {
    if (!(merged[name] >= 0)) throw new TypeError(`\`${name}\` must be a non-negative number`);
  }
  merged.connectTimeout ??= null;
  if (merged.connectTimeout !== null && !(merged.connectTimeout >= 0)) {
    throw new TypeError("`connectTimeout` must be a non-negative number, or null (forever)");
  }
  return merged;
}

// ---------------------------------------------------------------------------
// The public class

const HANDLERS = ["open", "message", "close", "error", "reconnecting", "resumed", "transportchange"];

/**
 * A holdfast session: one ordered, exactly-once message stream to the
 * server, carried by whichever transport works. Mirrors the browser
 * WebSocket API; see README.md.
 */
export class Holdfast extends EventTarget {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;

  #engine;
  #url;
  #binaryType = "arraybuffer";
  #handlers = {};

  constructor(url, options = {}) {
    super();
    const base = baseUrl(url);
    this.#url = base.href;
    for (const type of HANDLERS) {
      this.addEventListener(type, (event) => {
        const handler = this.#handlers[type];
        if (typeof handler === "function") handler.call(this, event);
      });
    }
    this.#engine = new Engine(this, base, resolveOptions(options));
    queueMicrotask(() => this.#engine.run());
  }

  get CONNECTING() {
    return 0;
  }
  get OPEN() {
    return 1;
  }
  get CLOSING() {
    return 2;
  }
  get CLOSED() {
    return 3;
  }

  /** The server's base URL, `http(s)://host/mount`. */
  get url() {
    return this.#url;
  }

  get readyState() {
    return this.#engine.readyState;
  }

  /** Bytes sent or queued but not yet acknowledged by the server. */
  get bufferedAmount() {
    return this.#engine.out.bytes;
  }

  /** `"websocket"`, `"sse"` or `"long-poll"` while a transport carries the
   * session; `null` while connecting or reconnecting. */
  get transport() {
    return this.#engine.transport;
  }

  /** The session's public id (for logs and support), once open. */
  get sessionId() {
    return this.#engine.params ? this.#engine.params.sid : null;
  }

  /** Why the page is on this transport: `{ transport, fallbacks: [{ from,
   * to, reason, status, code, afterMs }] }` (see the README). */
  get diagnostics() {
    const engine = this.#engine;
    const fallbacks = (engine.connector ? engine.connector.fallbacks() : []).map((f) => ({
      from: f.from,
      to: f.to,
      reason: f.cause,
      status: f.status,
      code: f.code,
      afterMs: Math.floor(f.after),
    }));
    return { transport: engine.transport, fallbacks };
  }

  /** How binary messages are delivered: `"arraybuffer"` or `"blob"`. */
  get binaryType() {
    return this.#binaryType;
  }

  set binaryType(value) {
    if (value !== "arraybuffer" && value !== "blob") {
      throw new SyntaxError(`binaryType must be "arraybuffer" or "blob", not ${JSON.stringify(value)}`);
    }
    if (value === "blob" && typeof Blob !== "function") throw new TypeError("Blob is not available");
    this.#binaryType = value;
  }

  /** Queues a message. Messages reach the server in order, exactly once,
   * across reconnects; while offline they wait and go out first. */
  send(data) {
    this.#engine.send(data);
  }

  /** Ends the session: queued messages are delivered first, then the
   * server confirms and `close` fires. */
  close(code = 1000, reason = "") {
    if (code !== undefined && !validCloseCode(code)) {
      const message = `close code must be 1000 or 3000-4999, not ${code}`;
      if (typeof DOMException === "function") throw new DOMException(message, "InvalidAccessError");
      throw new RangeError(message);
    }
    reason = String(reason ?? "");
    if (utf8Length(reason) > 123) throw new SyntaxError("close reason is longer than 123 bytes");
    this.#engine.close(code ?? 1000, reason);
  }

  static {
    for (const type of HANDLERS) {
      Object.defineProperty(this.prototype, `on${type}`, {
        get() {
          return this.#handlers[type] ?? null;
        },
        set(handler) {
          this.#handlers[type] = typeof handler === "function" ? handler : null;
        },
        configurable: true,
        enumerable: true,
      });
    }
  }
}
