// The WebSocket-like API: constants, URLs, events and handlers, argument
// checks, and the refusals a server makes (origin, message too big).

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { CloseCodes, Holdfast, VERSION } from "../../holdfast.js";
import { nextEvent, until } from "../support/helpers.js";
import { startExample } from "../support/servers.js";

let echo;
let url;
before(async () => {
  echo = await startExample("echo");
  url = `${echo.origin}/realtime`;
});
after(async () => {
  await echo?.stop();
});

describe("API", () => {
  test("readyState constants on the class and on instances", async () => {
    assert.deepEqual(
      [Holdfast.CONNECTING, Holdfast.OPEN, Holdfast.CLOSING, Holdfast.CLOSED],
      [0, 1, 2, 3],
    );
    const client = new Holdfast(url);
    assert.deepEqual([client.CONNECTING, client.OPEN, client.CLOSING, client.CLOSED], [0, 1, 2, 3]);
    assert.ok(client instanceof EventTarget);
    assert.equal(client.readyState, Holdfast.CONNECTING);
    assert.equal(client.transport, null);
    assert.equal(client.sessionId, null);
    assert.equal(client.bufferedAmount, 0);
    assert.equal(client.binaryType, "arraybuffer");
    assert.match(VERSION, /^\d+\.\d+\.\d+$/);
    assert.equal(CloseCodes.SESSION_LOST, 4410);
    client.close();
    assert.equal(client.readyState, Holdfast.CLOSED, "closed before it opened");
    const closed = await nextEvent(client, "close", 1000);
    assert.deepEqual([closed.code, closed.wasClean, closed.sessionLost], [1000, false, false]);
  });

  test("URLs: ws(s):// become http(s)://, trailing slashes and fragments go, the query stays", () => {
    const a = new Holdfast("ws://127.0.0.1:9/realtime/#x", { transports: ["long-poll"] });
    assert.equal(a.url, "http://127.0.0.1:9/realtime");
    a.close();
    const b = new Holdfast("wss://example.test/rt?token=abc", { transports: ["long-poll"] });
    assert.equal(b.url, "https://example.test/rt?token=abc");
    b.close();
    assert.throws(() => new Holdfast("ftp://example.test/rt"), SyntaxError);
    assert.throws(() => new Holdfast("not a url"), SyntaxError);
    assert.throws(() => new Holdfast(url, { transports: ["carrier-pigeon"] }), TypeError);
    assert.throws(() => new Holdfast(url, { transports: [] }), TypeError);
  });

  test("on… handlers and addEventListener both fire; assigning replaces", async () => {
    const client = new Holdfast(url);
    const seen = [];
    client.onopen = () => seen.push("first handler");
    client.onopen = (event) => seen.push(`handler ${event.transport}`);
    client.addEventListener("open", () => seen.push("listener"));
    assert.equal(typeof client.onopen, "function");
    await nextEvent(client, "open", 5000);
    assert.deepEqual(seen.sort(), ["handler websocket", "listener"]);
    assert.equal(client.transport, "websocket");
    assert.match(client.sessionId, /^[0-9a-f]+$/);
    client.onopen = null;
    assert.equal(client.onopen, null);
    client.close(4321, "app reason");
    const closed = await nextEvent(client, "close", 5000);
    assert.deepEqual([closed.code, closed.reason, closed.wasClean], [4321, "app reason", true]);
  });

  test("send and close check their arguments", async () => {
    const client = new Holdfast(url);
    assert.throws(() => client.send({}), TypeError);
    assert.throws(() => client.send(42), TypeError);
    assert.throws(() => client.close(1001), { name: "InvalidAccessError" });
    assert.throws(() => client.close(1000, "x".repeat(124)), SyntaxError);
    assert.throws(() => {
      client.binaryType = "nodebuffer";
    }, SyntaxError);
    await nextEvent(client, "open", 5000);
    const big = "x".repeat(64 * 1024 + 1);
    assert.throws(() => client.send(big), { name: "RangeError", code: "TOO_BIG" });
    client.close();
    await nextEvent(client, "close", 5000);
    assert.throws(() => client.send("late"), { name: "InvalidStateError" });
  });

  test("binary: ArrayBuffer, typed arrays, DataView and Blob in; ArrayBuffer or Blob out", async () => {
    const client = new Holdfast(url);
    const got = [];
    client.onmessage = (event) => got.push(event.data);
    const bytes = new Uint8Array([0, 1, 2, 253, 254, 255]);
    client.send(bytes.buffer);
    client.send(new Uint16Array([0x0102, 0x0304]).subarray(1));
    client.send(new DataView(bytes.buffer, 2, 2));
    client.send(new Blob([new Uint8Array([9, 8, 7])]));
    client.send("text after a blob");
    await until(() => got.length === 5, 5000, () => `${got.length} of 5 echoes`);
    assert.deepEqual(new Uint8Array(got[0]), bytes);
    assert.deepEqual(new Uint8Array(got[1]), new Uint8Array(new Uint16Array([0x0304]).buffer));
    assert.deepEqual(new Uint8Array(got[2]), new Uint8Array([2, 253]));
    assert.deepEqual(new Uint8Array(got[3]), new Uint8Array([9, 8, 7]));
    assert.equal(got[4], "text after a blob");

    client.binaryType = "blob";
    client.send(new Uint8Array([42]));
    await until(() => got.length === 6, 5000, "the blob echo");
    assert.ok(got[5] instanceof Blob);
    assert.deepEqual(new Uint8Array(await got[5].arrayBuffer()), new Uint8Array([42]));
    client.close();
    await nextEvent(client, "close", 5000);
  });

  test("bufferedAmount counts bytes until the server acknowledges them", async () => {
    const client = new Holdfast(url, { transports: ["long-poll"] });
    client.send("héllo"); // 6 bytes of UTF-8
    client.send(new Uint8Array(10));
    assert.equal(client.bufferedAmount, 16);
    await nextEvent(client, "open", 5000);
    await until(() => client.bufferedAmount === 0, 5000, "acknowledged");
    client.close();
    await nextEvent(client, "close", 5000);
  });

  test("maxUnackedBytes bounds what may wait for acknowledgement", async () => {
    const client = new Holdfast(url, { maxUnackedBytes: 100 });
    client.send("x".repeat(60));
    assert.throws(() => client.send("y".repeat(60)), { code: "BUFFER_FULL" });
    client.close();
  });

  test("close delivers queued messages first, then the server confirms", async () => {
    for (const transports of [["websocket"], ["sse"], ["long-poll"]]) {
      const client = new Holdfast(url, { transports });
      const got = [];
      client.onmessage = (event) => got.push(event.data);
      await nextEvent(client, "open", 5000);
      for (let i = 0; i < 50; i++) client.send(`last words ${i}`);
      client.close(1000, "bye");
      assert.equal(client.readyState, Holdfast.CLOSING);
      const closed = await nextEvent(client, "close", 5000);
      assert.deepEqual([closed.code, closed.reason, closed.wasClean], [1000, "bye", true]);
      assert.equal(client.bufferedAmount, 0, `${transports[0]}: all 50 acknowledged`);
      assert.deepEqual(got, Array.from({ length: got.length }, (_, i) => `last words ${i}`));
    }
  });
});

describe("refusals", () => {
  test("a page from a foreign origin is refused: 4403, an error, no retries", async () => {
    const client = new Holdfast(url, { headers: { Origin: "http://evil.test" } });
    const errors = [];
    client.onerror = (event) => errors.push(event.message);
    let reconnects = 0;
    client.onreconnecting = () => reconnects++;
    const closed = await nextEvent(client, "close", 5000);
    assert.equal(closed.code, 4403);
    assert.match(closed.reason, /origin "http:\/\/evil\.test" is not allowed/);
    assert.equal(closed.sessionLost, false);
    assert.equal(errors.length, 1);
    assert.match(errors[0], /4403/);
    assert.equal(reconnects, 0);
  });

  test("a message the server refuses as too big ends the session with 1009", async () => {
    for (const transports of [["websocket"], ["long-poll"]]) {
      const client = new Holdfast(url, { transports });
      const errors = [];
      client.onerror = (event) => errors.push(event.message);
      // Before `open` the client does not know the limit yet: the server
      // enforces it.
      client.send("x".repeat(64 * 1024 + 1));
      const closed = await nextEvent(client, "close", 5000);
      assert.equal(closed.code, 1009, transports[0]);
      assert.match(closed.reason, /65537 bytes/);
      assert.equal(errors.length, 1);
    }
  });
});
