// Many tabs, one connection (PROTOCOL.md §11.3), in a real browser: tabs
// of one origin share one SSE stream or one poll loop, each keeping its own
// session, over HTTP/1.1 where a browser opens at most six connections per
// host. Every tab must get exactly its own echoes, in order — also when
// the tab holding the shared connection closes or is frozen.

import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";

import { launchBrowser } from "../support/browser.js";
import { startProxy } from "../support/proxy.js";
import { within } from "../support/helpers.js";
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

/** Every tab a test opened: closed after it, passed or failed (a tab left
 * open would keep its connections, and maybe the lock, for the next). */
const opened = new Set();
afterEach(async () => {
  for (const page of opened) if (!page.isClosed()) await page.close();
  opened.clear();
});

/** Opens `n` tabs, each with its own session, all open (bounded). */
async function openTabs(n, options) {
  const pages = await Promise.all(
    Array.from({ length: n }, async () => {
      const page = await browser.page(`${proxy.origin}/test/tabs.html`);
      opened.add(page);
      await page.waitForFunction(() => window.tabsReady === true, null, { timeout: 10000 });
      await page.evaluate((o) => window.tabs.start(o), options);
      return page;
    }),
  );
  try {
    await Promise.all(
      pages.map((page) =>
        page.waitForFunction(() => window.tabs.status().readyState === 1, null, { timeout: 20000 }),
      ),
    );
  } catch (error) {
    // Say which tabs did not open, and how they stood.
    const all = await Promise.all(pages.map((page) => status(page).catch((e) => String(e))));
    throw new Error(`not every tab opened within 20 s: ${JSON.stringify(all)} (${error.message})`);
  }
  return pages;
}

const status = (page) => page.evaluate(() => window.tabs.status());

/** Waits (bounded) until every tab got every echo of what it sent, and
 * checks each got exactly its own messages, in order. */
async function allEchoed(pages, ms = 20000) {
  const deadline = Date.now() + ms;
  for (const page of pages) {
    for (;;) {
      const now = await status(page);
      assert.equal(now.firstWrong, null, `a tab got ${JSON.stringify(now.firstWrong)}`);
      assert.deepEqual(now.errors, [], "no error or close");
      if (now.received === now.sent) break;
      assert.ok(now.received < now.sent, `more echoes (${now.received}) than sent (${now.sent})`);
      if (Date.now() > deadline) {
        const all = await Promise.all(pages.map(status));
        throw new Error(`not every echo arrived: ${JSON.stringify(all.map((s) => [s.sent, s.received, s.transport]))}`);
      }
      await page.waitForTimeout(20);
    }
  }
}

async function leaderOf(pages) {
  const flags = await Promise.all(pages.map((page) => page.evaluate(() => window.tabs.isLeader())));
  assert.equal(flags.filter(Boolean).length, 1, `exactly one leader: ${flags}`);
  return pages[flags.indexOf(true)];
}

async function closeAll(pages) {
  for (const page of pages) {
    if (page.isClosed()) continue;
    assert.deepEqual(page.problems, []);
    await page.close();
  }
}

describe("many tabs, one connection", () => {
  for (const kind of ["long-poll", "sse"]) {
    test(`12 tabs on ${kind}: 20 messages each, every tab exactly its own echoes`, async () => {
      await proxy.resetMax();
      const before = (await proxy.stats()).counts;
      const pages = await openTabs(12, { ...FAST, transports: [kind] });
      await Promise.all(pages.map((page, i) => page.evaluate((label) => window.tabs.send(label, 20), `tab${i}`)));
      await allEchoed(pages);
      for (const page of pages) {
        const now = await status(page);
        assert.equal(now.transport, kind);
        assert.equal(now.received, 20);
      }
      const endpoint = kind === "sse" ? "sse" : "poll";
      const stats = await proxy.stats();
      const figures = {
        requests: stats.counts[endpoint] - before[endpoint],
        maxHeldAtOnce: stats.maxInFlight[endpoint],
        maxConnections: stats.maxConnections,
        connectionsNow: stats.connections,
      };
      console.log(`# 12 tabs on ${kind}: ${JSON.stringify(figures)}`);
      // One shared request at a time (plus one being replaced).
      assert.ok(stats.maxInFlight[endpoint] <= 2, `${stats.maxInFlight[endpoint]} ${endpoint} requests at once`);
      await closeAll(pages);
    });
  }

  /** Ways a leader tab goes: each releases its lock. */
  const leaderGoes = {
    closed: (leader) => leader.close(),
    navigated: (leader) => leader.goto(`${proxy.origin}/`),
    crashed: async (leader) => {
      const crashed = new Promise((resolve) => leader.once("crash", resolve));
      const cdp = await browser.context.newCDPSession(leader);
      // Never answered: the renderer is gone.
      cdp.send("Page.crash").catch(() => {});
      await within(10000, crashed, "the leader tab crashed");
    },
  };

  for (const [kind, how] of [
    ["sse", "closed"],
    ["long-poll", "closed"],
    ["long-poll", "navigated"],
    ["sse", "crashed"],
  ]) {
    test(`${kind}: the leader tab ${how} mid-stream, the others get every echo exactly once`, async () => {
      const pages = await openTabs(5, { ...FAST, transports: [kind] });
      await Promise.all(pages.map((page, i) => page.evaluate((label) => window.tabs.startStream(label, 20), `tab${i}`)));
      const leader = await leaderOf(pages);
      const others = pages.filter((page) => page !== leader);
      // Flowing everywhere, then the leader goes.
      await Promise.all(others.map((page) => page.waitForFunction(() => window.tabs.status().received >= 10, null, { timeout: 10000 })));
      await leaderGoes[how](leader);
      const marks = await Promise.all(others.map(async (page) => (await status(page)).received));
      await Promise.all(
        others.map((page, i) =>
          page.waitForFunction((n) => window.tabs.status().received >= n + 20, marks[i], { timeout: 15000 }),
        ),
      );
      await Promise.all(others.map((page) => page.evaluate(() => window.tabs.stopStream())));
      await allEchoed(others);
      for (const page of others) {
        // Re-joined the new leader at once: no backoff, no `reconnecting`.
        assert.equal((await status(page)).reconnects, 0);
      }
      await leaderOf(others);
      await closeAll(others);
    });
  }

  for (const kind of ["long-poll", "sse"]) {
    test(`${kind}: a frozen follower does not stall the others; a frozen leader is replaced, and recovers when thawed`, async (t) => {
      const pages = await openTabs(4, { ...FAST, transports: [kind] });
      t.after(async () => {
        for (const cdp of sessions.values()) await cdp.send("Debugger.resume").catch(() => {});
      });
      await Promise.all(pages.map((page, i) => page.evaluate((label) => window.tabs.startStream(label, 25), `tab${i}`)));
      // A frozen tab runs no script: no timer, no message, no network
      // callback — while it keeps its locks. Headless Chromium ignores
      // `Page.setWebLifecycleState` "frozen" for its pages (they are never
      // hidden), so the test stops the page's script in the debugger, which
      // is what freezing does to it.
      const sessions = new Map();
      const freeze = async (page, state) => {
        let cdp = sessions.get(page);
        if (!cdp) {
          cdp = await browser.context.newCDPSession(page);
          await cdp.send("Debugger.enable");
          sessions.set(page, cdp);
        }
        if (state === "frozen") {
          const paused = new Promise((resolve) => cdp.once("Debugger.paused", resolve));
          await cdp.send("Debugger.pause");
          // A pause takes effect when the page next runs JavaScript: an
          // idle tab may run none for a while. Run some now (never
          // awaited: it is what stops).
          cdp.send("Runtime.evaluate", { expression: "void 0" }).catch(() => {});
          await within(15000, paused, "the page did not stop");
        } else {
          await cdp.send("Debugger.resume");
        }
      };
      const flowing = async (group, more = 20) => {
        try {
          await Promise.all(
            group.map(async (page) => {
              const mark = (await status(page)).received;
              await page.waitForFunction((n) => window.tabs.status().received >= n, mark + more, { timeout: 30000 });
            }),
          );
        } catch (error) {
          const all = await Promise.all(group.map(status));
          throw new Error(`${error.message}: ${JSON.stringify(all)}`);
        }
      };

      let leader = await leaderOf(pages);
      const follower = pages.find((page) => page !== leader);
      await flowing(pages);

      await freeze(follower, "frozen");
      const awake = pages.filter((page) => page !== follower);
      await flowing(awake);
      await freeze(follower, "active");
      await flowing(pages);

      leader = await leaderOf(pages);
      await freeze(leader, "frozen");
      const rest = pages.filter((page) => page !== leader);
      await flowing(rest);
      // Another tab took the lock from the frozen one.
      await leaderOf(rest);
      await freeze(leader, "active");
      await flowing(pages);
      assert.notEqual(await leaderOf(pages), leader, "the thawed tab stepped down");

      await Promise.all(pages.map((page) => page.evaluate(() => window.tabs.stopStream())));
      await allEchoed(pages);
      await closeAll(pages);
    });
  }

  for (const [code, what] of [
    [405, "a server without shared requests (405)"],
    [400, "the shared request refused as a whole (400, close 4400)"],
  ]) {
    test(`${what}: the tabs go on with their own requests`, async (t) => {
      await proxy.refuseShared(code);
      t.after(() => proxy.refuseShared(0));
      const before = (await proxy.stats()).counts;
      const pages = await openTabs(2, { ...FAST, transports: ["long-poll"] });
      await Promise.all(pages.map((page, i) => page.evaluate((label) => window.tabs.send(label, 20), `tab${i}`)));
      await allEchoed(pages);
      for (const page of pages) assert.equal((await status(page)).transport, "long-poll");
      // A refused shared poll, then plain ones.
      assert.ok((await proxy.stats()).counts.poll - before.poll > 4, "plain polls");
      await closeAll(pages);
    });
  }

  test("a buffering proxy holds the shared stream: the tabs fall back to long-polling", async (t) => {
    await proxy.set({ bufferSse: true });
    t.after(() => proxy.set({ bufferSse: false }));
    const pages = await openTabs(3, { ...FAST, transports: ["sse", "long-poll"], probeTimeout: 500, reprobeAfter: 60000 });
    await Promise.all(pages.map((page, i) => page.evaluate((label) => window.tabs.send(label, 20), `tab${i}`)));
    await allEchoed(pages);
    for (const page of pages) assert.equal((await status(page)).transport, "long-poll");
    await closeAll(pages);
  });

  test("share: false — three tabs each with their own requests", async () => {
    await proxy.resetMax();
    const pages = await openTabs(3, { ...FAST, transports: ["long-poll"], share: false });
    await Promise.all(pages.map((page, i) => page.evaluate((label) => window.tabs.send(label, 20), `tab${i}`)));
    await allEchoed(pages);
    const { maxInFlight } = await proxy.stats();
    assert.ok(maxInFlight.poll >= 3, `${maxInFlight.poll} polls at once: one per tab`);
    await closeAll(pages);
  });
});
