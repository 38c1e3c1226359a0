// Upstream flow control (PROTOCOL.md §3.1): a burst of 60 messages of
// 60,000 bytes each way, sent back to back, against the echo example's
// defaults. The client keeps within the window the server announces, so
// the server never refuses it (detach 1008) and the old WebSocket stall
// (17 echoes, then nothing for 40 s) cannot happen.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Holdfast } from "../../holdfast.js";
import { nextEvent, record, until } from "../support/helpers.js";
import { startExample } from "../support/servers.js";

let echo;
before(async () => {
  echo = await startExample("echo");
});
after(async () => {
  await echo?.stop();
});

for (const transport of ["websocket", "long-poll"]) {
  test(`${transport}: 60 × 60 KB back to back, every echo exactly once`, async () => {
    // A replay buffer that takes the whole burst at once: only the
    // server's window paces it.
    const client = new Holdfast(`${echo.origin}/realtime`, {
      transports: [transport],
      maxUnackedBytes: 4 * 1024 * 1024,
    });
    const events = record(client);
    const got = [];
    client.onmessage = (event) => got.push(event.data);
    await nextEvent(client, "open", 5000);
    const sent = [];
    for (let i = 0; i < 60; i++) {
      const text = `${i}:`.padEnd(60_000, "y");
      sent.push(text);
      client.send(text);
    }
    await until(() => got.length >= 60, 8000, `all 60 echoes (got ${got.length})`);
    assert.equal(got.length, 60);
    for (let i = 0; i < 60; i++) assert.equal(got[i], sent[i], `echo ${i}`);
    await until(() => client.bufferedAmount === 0, 5000, "every message acknowledged");
    const troubles = events.filter((e) => e.type === "resumed" || e.type === "error");
    assert.deepEqual(troubles, [], "no detach, no resume: the window was kept");
    client.close(1000, "done");
    await nextEvent(client, "close", 5000);
  });
}
