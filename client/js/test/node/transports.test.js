// Every transport, forced and automatic, against the echo example behind a
// proxy that cuts every connection now and then: 1,000 messages each way,
// text and binary, delivered exactly once and in order.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Holdfast } from "../../holdfast.js";
import { echoExchange, nextEvent, record, until } from "../support/helpers.js";
import { startProxy } from "../support/proxy.js";
import { startExample } from "../support/servers.js";

const FAST = { backoff: { initial: 20, max: 200, jitter: 0.5 }, probeTimeout: 1500 };

let echo;
before(async () => {
  echo = await startExample("echo");
});
after(async () => {
  await echo?.stop();
});

for (const transports of [["websocket"], ["sse"], ["long-poll"], undefined]) {
  const name = transports ? transports[0] : "auto";
  describe(`${name}`, () => {
    let proxy;
    before(async () => {
      proxy = await startProxy(echo.port);
    });
    after(async () => {
      await proxy.close();
    });

    test("1,000 messages each way through cuts, exactly once and in order", async () => {
      const client = new Holdfast(`${proxy.origin}/realtime`, { ...FAST, transports });
      const events = record(client);
      const open = await nextEvent(client, "open", 5000);
      assert.equal(open.transport, transports ? transports[0] : "websocket");
      assert.equal(client.readyState, Holdfast.OPEN);
      assert.match(client.sessionId, /^\w+$/);

      const { cuts, received } = await echoExchange(client, {
        count: 1000,
        cut: () => proxy.cut(),
        cutEvery: 150,
      });
      assert.ok(cuts >= 5, `the network was cut ${cuts} times`);
      // A cut can fall where no request is in flight (every echo read,
      // the next poll not yet sent): it then forces no resume. One more
      // cut while the session idles on its held stream or poll always
      // does, and the exchange goes on after it.
      // (On long-polling the new poll is announced as resumed once it is
      // answered: the exchange after the cut answers it.)
      // On long-polling a cut can be absorbed by the next poll, which
      // continues the session without a `resumed` (PROTOCOL.md §2.1):
      // there, exactly-once through the cuts is what is checked.
      const streaming = transports?.[0] !== "long-poll";
      const resumed = streaming ? nextEvent(client, "resumed", 10000) : null;
      await proxy.cut();
      const after = await echoExchange(client, { count: 20 });
      assert.equal(after.received.length, 20);
      await resumed;
      const resumes = events.filter((e) => e.type === "resumed");
      if (streaming) assert.ok(resumes.length >= 1, "the session resumed after cuts");
      assert.ok(
        resumes.every((e) => e.transport === open.transport),
        `stayed on ${open.transport}: ${JSON.stringify(resumes)}`,
      );
      assert.equal(client.readyState, Holdfast.OPEN, "a cut never closes the session");
      await until(() => client.bufferedAmount === 0, 5000, "every message acknowledged");

      client.close(1000, "done");
      assert.equal(client.readyState, Holdfast.CLOSING);
      const closed = await nextEvent(client, "close", 5000);
      assert.deepEqual(
        [closed.code, closed.reason, closed.wasClean, closed.sessionLost],
        [1000, "done", true, false],
      );
      assert.equal(client.readyState, Holdfast.CLOSED);
      // (The first exchange's record also holds the 20 after the last cut.)
      assert.equal(received.length, 1000 + after.received.length, "nothing arrived twice, even late");
      assert.deepEqual(
        events.filter((e) => e.type === "error"),
        [],
        "no error events",
      );
    });

    test("messages queued before the session opens go out first, in order", async () => {
      const client = new Holdfast(`${proxy.origin}/realtime`, { ...FAST, transports });
      const got = [];
      client.onmessage = (event) => got.push(event.data);
      for (let i = 0; i < 20; i++) client.send(`early ${i}`);
      assert.equal(client.readyState, Holdfast.CONNECTING);
      assert.ok(client.bufferedAmount > 0);
      await nextEvent(client, "open", 5000);
      client.send("after open");
      await until(() => got.length === 21, 5000, () => `${got.length} of 21 echoes`);
      assert.deepEqual(got, [...Array.from({ length: 20 }, (_, i) => `early ${i}`), "after open"]);
      client.close();
      await nextEvent(client, "close", 5000);
    });

    test("large messages, hundreds of KiB in all (SSE streams get recycled)", async () => {
      const client = new Holdfast(`${proxy.origin}/realtime`, { ...FAST, transports });
      const events = record(client);
      const got = [];
      client.onmessage = (event) => got.push(event.data);
      await nextEvent(client, "open", 5000);
      const streams = (await proxy.stats()).counts.sse;
      const big = (i) => `${i}:${"é".repeat(20000)}`; // 40 KB of UTF-8 each
      for (let i = 0; i < 12; i++) client.send(big(i));
      await until(() => got.length === 12, 10000, () => `${got.length} of 12 echoes`);
      got.forEach((text, i) => assert.equal(text, big(i)));
      assert.deepEqual(
        events.filter((e) => e.type === "reconnecting"),
        [],
        "a recycled stream is resumed at once, without backoff",
      );
      if (name === "sse") {
        assert.ok((await proxy.stats()).counts.sse - streams >= 1, "the 256 KiB stream budget ran out: recycled");
      }
      client.close();
      await nextEvent(client, "close", 5000);
    });

    if (name === "long-poll" || name === "sse") {
      test("send batches stay within max_msg, brackets and commas included (§2.3)", async () => {
        const client = new Holdfast(`${proxy.origin}/realtime`, { ...FAST, transports });
        await nextEvent(client, "open", 5000);
        await proxy.resetMax();
        const sendsBefore = (await proxy.stats()).counts.send;
        const got = [];
        client.onmessage = (event) => got.push(event.data);
        // Many small messages (where commas add up), a few large ones
        // (escaped to more on the wire) and binary ones.
        const count = 3000;
        for (let i = 0; i < count; i++) {
          if (i % 100 === 99) client.send(`"${i}"\n`.repeat(300).slice(0, 1500));
          else if (i % 10 === 9) client.send(new Uint8Array(20).fill(i));
          else client.send(`m${i}`);
        }
        await until(() => got.length === count, 10000, () => `${got.length} of ${count} echoes`);
        const { counts, largestSend } = await proxy.stats();
        // Each message is at most ~3 KB on the wire: a body over 60,000
        // bytes holds many, and none may pass max_msg.
        const sends = counts.send - sendsBefore;
        assert.ok(sends < count / 10, `messages were batched (${sends} sends for ${count} messages)`);
        assert.ok(largestSend <= 65536, `a send body is ${largestSend} bytes`);
        assert.ok(largestSend > 60000, `batches are filled up to the limit (largest ${largestSend} bytes)`);
        client.close();
        await nextEvent(client, "close", 5000);
      });
    }

    test("a cut before the first message resumes an empty session", async () => {
      const endpoint = { sse: "sse", "long-poll": "poll" }[name] ?? "ws";
      const before = (await proxy.stats()).counts[endpoint];
      const client = new Holdfast(`${proxy.origin}/realtime`, { ...FAST, transports });
      await nextEvent(client, "open", 5000);
      // Cut while the session idles on its held stream, socket or poll:
      // on long-polling the first poll opened the session and the next one
      // is held (the proxy opens a connection per request, so a poll not
      // yet sent would escape the cut).
      const held = endpoint === "poll" ? 2 : 1;
      await until(
        async () => {
          const { counts, inFlight } = await proxy.stats();
          return counts[endpoint] - before >= held && inFlight[endpoint] >= 1;
        },
        5000,
        `a held ${endpoint} request at the proxy`,
      );
      const resumed = nextEvent(client, "resumed", 5000);
      await proxy.cut();
      await resumed;
      client.send("still here");
      const echoed = await nextEvent(client, "message", 5000);
      assert.equal(echoed.data, "still here");
      client.close();
      await nextEvent(client, "close", 5000);
    });
  });
}
