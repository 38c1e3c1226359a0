// The JavaScript client in Chromium against three echo nodes that keep
// their sessions in a real Redis, behind a real nginx balancing
// round-robin with no affinity: every request of a session may reach any
// node. Every transport delivers exactly; a stream keeps going, losing and
// doubling nothing, while the nodes are killed (SIGKILL) and restarted.

import assert from "node:assert/strict";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";

import { launchBrowser } from "../support/browser.js";

import { startBalancedNginx } from "../support/nginx.js";
import { startRedis } from "../support/redis.js";
import { startExample } from "../support/servers.js";

const pages = fileURLToPath(new URL("./pages", import.meta.url));
const FAST = { backoff: { initial: 20, max: 200, jitter: 0.5 }, rememberFor: 0 };

let redis;
let nodes = [];
let nginx;
let browser;

/** Polls the async `condition` until it holds, or fails after `ms`. */
async function waitUntil(condition, ms, what) {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** Starts the echo example as a node of the cluster on `port`. */
function node(port) {
  return startExample("echo", { addr: `127.0.0.1:${port}`, args: ["--redis", redis.url] });
}

before(async () => {
  redis = await startRedis();
  for (let i = 0; i < 3; i++) nodes.push(await node(0));
  nginx = await startBalancedNginx(
    nodes.map((n) => n.port),
    path.resolve(pages),
  );
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await nginx?.stop();
  for (const n of nodes) await n?.stop();
  await redis?.stop();
});

async function harness() {
  const page = await browser.page(`${nginx.origin}/test/harness.html`);
  await page.waitForFunction(() => window.harnessReady === true, null, { timeout: 10000 });
  return page;
}

describe("three nodes and Redis behind round-robin nginx", () => {
  for (const transport of ["websocket", "sse", "long-poll"]) {
    test(`${transport}: 300 messages each way, exactly once and in order`, async () => {
      const page = await harness();
      const result = await page.evaluate((options) => window.harness.exchange(options), {
        ...FAST,
        transports: [transport],
        count: 300,
      });
      assert.equal(result.transport, transport);
      assert.equal(result.received, 300);
      assert.equal(result.mismatch, null, `message ${result.mismatch} differs`);
      assert.deepEqual(page.problems, []);
      await page.close();
    });
  }

  for (const transport of ["websocket", "long-poll"]) {
    test(`${transport}: nodes killed and restarted one by one, nothing lost or doubled`, async () => {
      const page = await harness();
      await page.evaluate((options) => window.harness.startStream(options), {
        ...FAST,
        transports: [transport],
        interval: 10,
      });
      const received = () => page.evaluate(() => window.harness.streamStatus().received);
      for (let i = 0; i < nodes.length; i++) {
        const before = await received();
        await waitUntil(async () => (await received()) > before + 20, 20000, "the stream flows");
        // SIGKILL: the node dies with what it holds in memory; it comes
        // back on the same port (nginx's upstream list does not change).
        const port = nodes[i].port;
        nodes[i].child.kill("SIGKILL");
        await new Promise((resolve) => nodes[i].child.once("exit", resolve));
        nodes[i] = await node(port);
      }
      const before = await received();
      await waitUntil(async () => (await received()) > before + 20, 20000, "the stream flows after the restarts");
      const result = await page.evaluate(() => window.harness.stopStream());
      assert.equal(result.received, result.sent, `${result.received} of ${result.sent} echoes`);
      assert.ok(result.inOrder, "in order, none doubled");
      assert.ok(!result.events.some((e) => e.type === "close" && e.code !== 1000), "the session never ended");
      await page.close();
    });
  }
});
