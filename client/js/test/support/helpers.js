// Bounded waits and the message exchange the tests share.

import assert from "node:assert/strict";

/** Rejects with `describe()` if `promise` has not settled after `ms`. */
export function within(ms, promise, describe) {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`timed out after ${ms} ms: ${typeof describe === "function" ? describe() : describe}`)),
      ms,
    );
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

/** The next `type` event on `target` that passes `filter`, within `ms`. */
export function nextEvent(target, type, ms, filter = () => true) {
  let listener;
  const promise = new Promise((resolve) => {
    listener = (event) => {
      if (filter(event)) resolve(event);
    };
    target.addEventListener(type, listener);
  });
  return within(ms, promise, `no ${type} event`).finally(() =>
    target.removeEventListener(type, listener),
  );
}

/** Resolves once `condition()` holds (it may return a promise, e.g. of
 * the proxy's stats), checking every 20 ms, within `ms`. */
export function until(condition, ms, describe) {
  let over = false;
  return within(
    ms,
    new Promise((resolve, reject) => {
      const check = async () => {
        try {
          if (await condition()) resolve();
          else if (!over) setTimeout(check, 20);
        } catch (error) {
          reject(error);
        }
      };
      check();
    }),
    describe,
  ).finally(() => (over = true));
}

/** Records every event of a client, in order. */
export function record(client) {
  const events = [];
  for (const type of ["open", "close", "error", "reconnecting", "resumed", "transportchange"]) {
    client.addEventListener(type, (event) => {
      const { code, reason, wasClean, sessionLost, attempt, delay, transport, from, to, message } =
        event;
      events.push({ type, code, reason, wasClean, sessionLost, attempt, delay, transport, from, to, message });
    });
  }
  return events;
}

/** Message `i` of an exchange: even ones text (with non-ASCII), odd ones
 * binary (every byte value appears across the run). */
export function payload(i) {
  if (i % 2 === 0) return `message ${i} — ünïcødé ✓ "quoted" \\ ${"x".repeat(i % 37)}`;
  const bytes = new Uint8Array(9 + (i % 61));
  for (let j = 0; j < bytes.length; j++) bytes[j] = (i * 31 + j * 7) & 0xff;
  bytes[0] = i & 0xff;
  bytes[1] = i >> 8;
  return bytes;
}

export function assertPayload(received, i) {
  const expected = payload(i);
  if (typeof expected === "string") {
    assert.equal(received, expected, `message ${i}`);
  } else {
    assert.ok(received instanceof ArrayBuffer, `message ${i} is an ArrayBuffer`);
    assert.deepEqual(new Uint8Array(received), expected, `message ${i}`);
  }
}

/**
 * Sends `count` messages to the echo server in small waves and waits for
 * every echo; calls `cut()` after every `cutEvery` echoes. Asserts exact,
 * in-order delivery; returns how many cuts were made and the received
 * messages (still recorded afterwards, so a late duplicate shows).
 */
export async function echoExchange(client, { count = 1000, cut, cutEvery = 150, timeout = 30000 } = {}) {
  const received = [];
  let cuts = 0;
  let failure;
  const done = new Promise((resolve, reject) => {
    const onMessage = (event) => {
      received.push(event.data);
      if (received.length > count) failure = new Error(`more than ${count} messages arrived`);
      if (cut && received.length % cutEvery === 0 && received.length < count) {
        cuts += 1;
        cut();
      }
      if (received.length === count) resolve();
    };
    client.addEventListener("message", onMessage);
    client.addEventListener("close", (event) =>
      reject(new Error(`the session closed mid-exchange: ${event.code} ${event.reason}`)),
    );
  });
  let sent = 0;
  while (sent < count) {
    for (let i = 0; i < 25 && sent < count; i++) client.send(payload(sent++));
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
  await within(timeout, done, () => `${received.length} of ${count} echoes arrived`);
  if (failure) throw failure;
  received.forEach(assertPayload);
  return { cuts, received };
}

/** Sends `"<label> 0"`, `"<label> 1"`, … to an echo server every `ms`
 * until `stop()`; `allEchoed()` stops, waits for the echoes and checks they
 * came back exactly once, in order. */
export function steadyStream(client, label, ms = 10) {
  const received = [];
  client.addEventListener("message", (event) => received.push(event.data));
  let sent = 0;
  const sender = setInterval(() => client.send(`${label} ${sent++}`), ms);
  const stop = () => clearInterval(sender);
  return {
    received,
    stop,
    async allEchoed() {
      stop();
      await until(() => received.length >= sent, 5000, () => `${received.length} of ${sent} echoes`);
      assert.deepEqual(
        received,
        Array.from({ length: sent }, (_, i) => `${label} ${i}`),
        "exactly once, in order",
      );
    },
  };
}
