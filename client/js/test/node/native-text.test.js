// Native text messages on WebSocket (PROTOCOL.md §2.2.1): the client offers
// them (`wstext=1`), and once the greeting grants them sends and receives
// large texts as binary messages of type 2 — and never with a server that
// does not grant them (the echo example with --no-native-text, which
// refuses type 2 as a server from before it would).

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Holdfast } from "../../holdfast.js";
import { nextEvent, within } from "../support/helpers.js";
import { startExample } from "../support/servers.js";

/** A text JSON must escape, with multi-byte characters; `n` first. */
function big(n) {
  let text = `${n}:"quoted"\n\\ é ☃ 𝄞 `;
  while (text.length < 1500) text += 'line "x"\t\n';
  return text;
}

/** A WebSocket that records what it sends and receives: for each unit,
 * "text" or the type byte of a binary message. */
function spyWebSocket(log) {
  const kind = (data) =>
    typeof data === "string" ? "text" : new Uint8Array(data.buffer ?? data, data.byteOffset ?? 0)[0];
  return class extends globalThis.WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      log.urls.push(url);
    }
    send(data) {
      log.sent.push(kind(data));
      super.send(data);
    }
    set onmessage(handler) {
      super.onmessage = handler && ((event) => {
        log.received.push(kind(event.data));
        handler(event);
      });
    }
    get onmessage() {
      return super.onmessage;
    }
  };
}

/** Echoes texts (every fourth small) and checks they come back exactly,
 * in order; returns the spy's log. */
async function echoTexts(origin) {
  const log = { urls: [], sent: [], received: [] };
  const client = new Holdfast(`${origin}/realtime`, {
    transports: ["websocket"],
    WebSocket: spyWebSocket(log),
  });
  await nextEvent(client, "open", 5000);
  const texts = Array.from({ length: 40 }, (_, i) => (i % 4 === 3 ? `small ${i}` : big(i)));
  const received = [];
  const done = new Promise((resolve) => {
    client.addEventListener("message", (event) => {
      received.push(event.data);
      if (received.length === texts.length) resolve();
    });
  });
  for (const text of texts) client.send(text);
  await within(10000, done, () => `${received.length}/${texts.length} echoes`);
  assert.deepEqual(received, texts, "every text back exactly once, in order, intact");
  client.close(1000, "done");
  return log;
}

describe("native text on WebSocket", () => {
  let native;
  let old;
  before(async () => {
    native = await startExample("echo");
    old = await startExample("echo", { args: ["--no-native-text"] });
  });
  after(async () => {
    await native?.stop();
    await old?.stop();
  });

  test("granted: large texts go and come as type-2 binary messages, small ones in JSON", async () => {
    const log = await echoTexts(native.origin);
    assert.match(log.urls[0], /[?&]wstext=1(&|$)/, "the client offers native text");
    assert.equal(log.sent.filter((k) => k === 2).length, 30, `sent ${log.sent}`);
    assert.equal(log.received.filter((k) => k === 2).length, 30, `received ${log.received}`);
    assert.ok(log.sent.includes("text") && log.received.includes("text"), "small texts in JSON");
  });

  test("not granted: every text in JSON both ways, and the echo still exact", async () => {
    const log = await echoTexts(old.origin);
    assert.match(log.urls[0], /[?&]wstext=1(&|$)/);
    assert.deepEqual(log.sent.filter((k) => k !== "text"), [], "nothing native sent");
    assert.deepEqual(log.received.filter((k) => k !== "text"), [], "nothing native received");
  });

  test("a type-2 message that is not UTF-8 ends the attachment, which resumes", async () => {
    // The server never sends one; a WebSocket that corrupts the first
    // native text it receives plays a broken server.
    let corrupted = false;
    const Base = spyWebSocket({ urls: [], sent: [], received: [] });
    class Corrupting extends Base {
      set onmessage(handler) {
        super.onmessage = handler && ((event) => {
          if (!corrupted && typeof event.data !== "string" && new Uint8Array(event.data)[0] === 2) {
            corrupted = true;
            const bytes = new Uint8Array(event.data.slice(0));
            bytes[9] = 0xff; // never valid in UTF-8
            return handler({ data: bytes.buffer });
          }
          handler(event);
        });
      }
      get onmessage() {
        return super.onmessage;
      }
    }
    const client = new Holdfast(`${native.origin}/realtime`, {
      transports: ["websocket"],
      WebSocket: Corrupting,
      backoff: { initial: 20, max: 200, jitter: 0.5 },
    });
    await nextEvent(client, "open", 5000);
    const received = [];
    const done = new Promise((resolve) => {
      client.addEventListener("message", (event) => {
        received.push(event.data);
        if (received.length === 3) resolve();
      });
    });
    const resumed = nextEvent(client, "resumed", 5000);
    for (let i = 0; i < 3; i++) client.send(big(i));
    await resumed;
    await within(10000, done, () => `${received.length}/3 echoes`);
    assert.ok(corrupted);
    assert.deepEqual(received, [big(0), big(1), big(2)], "the bad message was not delivered, and came again");
    client.close(1000, "done");
  });
});
