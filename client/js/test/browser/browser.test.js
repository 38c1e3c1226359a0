// The client in a real browser (Debian's Chromium, headless): the harness
// page, served through the hostile proxy in front of the echo example,
// loads the client the server embeds (`/realtime/client.js`).

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { after, before, describe, test } from "node:test";

import { launchBrowser } from "../support/browser.js";
import { startProxy } from "../support/proxy.js";
import { assertEmbedsCurrentClient, startExample } from "../support/servers.js";

const FAST = { backoff: { initial: 20, max: 200, jitter: 0.5 }, rememberFor: 0 };

let echo;
let proxy;
let browser;
before(async () => {
  echo = await startExample("echo");
  await assertEmbedsCurrentClient(echo.origin);
  proxy = await startProxy(echo.port);
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await proxy?.close();
  await echo?.stop();
});

async function harness() {
  const page = await browser.page(`${proxy.origin}/test/harness.html`);
  await page.waitForFunction(() => window.harnessReady === true, null, { timeout: 10000 });
  return page;
}

describe("browser", () => {
  for (const transports of [["websocket"], ["sse"], ["long-poll"], undefined]) {
    const name = transports ? transports[0] : "auto";
    test(`${name}: 300 messages each way (text, bytes, Blobs), exactly once and in order`, async () => {
      const page = await harness();
      const result = await page.evaluate(
        (options) => window.harness.exchange(options),
        { ...FAST, transports, count: 300 },
      );
      assert.equal(result.transport, transports ? transports[0] : "websocket");
      assert.equal(result.received, 300);
      assert.equal(result.mismatch, null, `message ${result.mismatch} differs`);
      assert.equal(result.bufferedAmount, 0);
      const close = result.events.find((e) => e.type === "close");
      assert.deepEqual([close.code, close.reason], [1000, "done"]);
      assert.deepEqual(result.events.filter((e) => e.type === "error"), []);
      assert.deepEqual(page.problems, []);
      await page.close();
    });
  }

  test("a hostile proxy refusing WebSocket upgrades: SSE within a second", async () => {
    await proxy.set({ refuseWebSocket: true });
    try {
      const page = await harness();
      const result = await page.evaluate(
        (options) => window.harness.exchange(options),
        { ...FAST, reprobeAfter: 60000, count: 100 },
      );
      assert.equal(result.transport, "sse");
      assert.ok(result.openedAfter < 1000, `opened after ${result.openedAfter} ms`);
      assert.equal(result.mismatch, null);
      assert.equal(result.received, 100);
      await page.close();
    } finally {
      await proxy.set({ refuseWebSocket: false });
    }
  });

  for (const transports of [["websocket"], ["sse"], ["long-poll"]]) {
    test(`${transports[0]}: keeps receiving while the network is cut and restored`, async (t) => {
      const page = await harness();
      const context = browser.context;
      t.after(async () => {
        await proxy.set({ down: false });
        await context.setOffline(false);
      });
      // A long backoff: only the browser's `online` event (and then the
      // tab becoming visible) can bring the session back within the test.
      await page.evaluate(
        (options) => window.harness.startStream(options),
        { transports, backoff: { initial: 20000, max: 20000, jitter: 0 }, rememberFor: 0 },
      );
      const status = () => page.evaluate(() => window.harness.streamStatus());
      /** Waits (bounded) until `condition(status)` holds; returns the status. */
      const waitStatus = async (condition, what) => {
        const started = Date.now();
        for (;;) {
          const now = await status();
          if (condition(now)) return now;
          if (Date.now() - started > 5000) throw new Error(`${what}: ${JSON.stringify(now)}`);
          await page.waitForTimeout(20);
        }
      };
      const receiving = async (what) => {
        const before = (await status()).received;
        return waitStatus((now) => now.received >= before + 10, `${what}: no messages flowing`);
      };
      await receiving("at first");

      // Cut: every connection dies, then the browser goes offline.
      await proxy.set({ down: true });
      await proxy.cut();
      let now = await waitStatus(
        (s) => s.events.some((e) => e.type === "reconnecting"),
        "no reconnecting event",
      );
      const reconnecting = now.events.find((e) => e.type === "reconnecting");
      assert.equal(reconnecting.delay, 20000);
      assert.equal(now.readyState, 1, "the session stays open while the network is down");
      await context.setOffline(true);
      await page.waitForTimeout(300); // the page keeps sending meanwhile

      // Restore: `online` ends the 20 s backoff at once.
      await proxy.set({ down: false });
      await context.setOffline(false);
      await receiving("after the network came back");
      now = await status();
      assert.equal(now.transport, transports[0]);
      assert.ok(now.events.some((e) => e.type === "resumed"), "resumed");

      // Again, woken by the tab becoming visible this time.
      await proxy.set({ down: true });
      await proxy.cut();
      await waitStatus(
        (s) => s.events.filter((e) => e.type === "reconnecting").length >= 2,
        "no second reconnecting event",
      );
      await proxy.set({ down: false });
      await page.evaluate(() => document.dispatchEvent(new Event("visibilitychange")));
      await receiving("after the tab became visible");

      const result = await page.evaluate(() => window.harness.stopStream());
      assert.ok(result.sent > 30, `sent ${result.sent}`);
      assert.equal(result.received, result.sent, "every message came back");
      assert.equal(result.inOrder, true, "exactly once, in order");
      assert.deepEqual(page.problems, []);
      await page.close();
    });
  }

  test("a WebSocket gone silent is caught at once when the browser comes online", async () => {
    const page = await harness();
    // Heartbeats would take 30 s and the backoff 20 s: only the check that
    // `online` triggers (a ping that must be answered) can help in time.
    await page.evaluate(
      (options) => window.harness.startStream(options),
      {
        transports: ["websocket"],
        probeTimeout: 500,
        backoff: { initial: 20000, max: 20000, jitter: 0 },
        rememberFor: 0,
      },
    );
    const status = () => page.evaluate(() => window.harness.streamStatus());
    const flowing = async (what) => {
      const before = (await status()).received;
      const started = Date.now();
      for (;;) {
        const now = await status();
        if (now.received >= before + 10) return now;
        if (Date.now() - started > 5000) throw new Error(`${what}: ${JSON.stringify(now)}`);
        await page.waitForTimeout(20);
      }
    };
    await flowing("at first");
    await proxy.silenceTunnels();
    await page.waitForTimeout(200);
    const stalled = (await status()).received;
    await page.waitForTimeout(200);
    assert.equal((await status()).received, stalled, "nothing gets through the silent tunnel");
    await page.evaluate(() => window.dispatchEvent(new Event("online")));
    const now = await flowing("after the online check");
    assert.ok(now.events.some((e) => e.type === "resumed"), "resumed on a new socket");
    assert.ok(!now.events.some((e) => e.type === "reconnecting"), "at once, no backoff");
    const result = await page.evaluate(() => window.harness.stopStream());
    assert.equal(result.received, result.sent);
    assert.equal(result.inOrder, true);
    await page.close();
  });

  test("the README's example page works as written", async () => {
    const readme = await readFile(new URL("../../README.md", import.meta.url), "utf8");
    const html = /```html\n([\s\S]*?)```/.exec(readme)[1];
    proxy.page("readme.html", html);
    const page = await browser.page(`${proxy.origin}/test/readme.html`);
    await page.locator("#status", { hasText: "open via websocket" }).waitFor({ timeout: 5000 });
    for (const text of ["hello", "world"]) {
      await page.locator("#text").fill(text);
      await page.locator("#text").press("Enter");
    }
    await page.locator("#log li", { hasText: "← world" }).waitFor({ timeout: 5000 });
    const lines = await page.locator("#log li").allTextContents();
    assert.deepEqual([...lines].sort(), ["→ hello", "→ world", "← hello", "← world"].sort());
    assert.ok(lines.indexOf("← hello") < lines.indexOf("← world"), "echoes in order");
    assert.deepEqual(page.problems, []);
    await page.close();
  });
});
