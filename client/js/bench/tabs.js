// Many tabs of one origin against the echo example, with and without
// sharing one connection between them (PROTOCOL.md §11): how many tabs get
// all their echoes, how many streams or polls were held at once, how many
// TCP connections the browser kept, and how much the server grew. The
// tabs go through the tests' counting proxy (test/support/proxy.js).
// Prints a table for BENCHMARKS.md; asserts nothing.
//
//   node bench/tabs.js [tabs=12] [messages=20]
//
// Uses the debug build of the echo example (`cargo build --example echo`,
// as test/run.sh does) and Debian's Chromium (see test/support/browser.js).

import { readFile } from "node:fs/promises";

import { launchBrowser } from "../test/support/browser.js";
import { startProxy } from "../test/support/proxy.js";
import { startExample } from "../test/support/servers.js";

const TABS = Number(process.argv[2] ?? 12);
const MESSAGES = Number(process.argv[3] ?? 20);
const WAIT = 15000;

/** The server's resident memory, in KiB. */
async function rssKiB(pid) {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
}

/** Opens `TABS` tabs, each with its own Holdfast on `transport`, each
 * sending `MESSAGES` messages; resolves with the figures once every tab is
 * done or `WAIT` ms passed. */
async function run(browser, echo, proxy, transport, share) {
  const before = await rssKiB(echo.child.pid);
  proxy.resetMax();
  // Every tab loaded first, then all start at once: as tabs restored
  // when the browser starts, or a user who opened them earlier.
  const pages = [];
  for (let i = 0; i < TABS; i++) {
    const page = await browser.page();
    await page.goto(`${proxy.origin}/`);
    await page.evaluate(async () => {
      window.Holdfast = (await import("/realtime/client.js")).Holdfast;
    });
    pages.push(page);
  }
  const started = performance.now() + 1000; // after the idle second
  const exchanges = pages.map((page, tab) =>
    page
      .evaluate(
        async ({ transport, share, count, wait, tab }) => {
          const hf = new window.Holdfast("/realtime", { transports: [transport], share });
          const got = [];
          hf.onmessage = (e) => got.push(e.data);
          window.hf = hf;
          // Open, then idle a moment, as a user reading the page: every
          // tab's stream or poll is held by the time anyone sends.
          await new Promise((resolve) => {
            hf.addEventListener("open", resolve, { once: true });
            setTimeout(resolve, wait);
          });
          await new Promise((resolve) => setTimeout(resolve, 1000));
          for (let i = 0; i < count; i++) hf.send(`tab ${tab} message ${i}`);
          const deadline = performance.now() + wait;
          while (got.length < count && performance.now() < deadline) {
            await new Promise((resolve) => setTimeout(resolve, 20));
          }
          const exact = got.length === count && got.every((m, i) => m === `tab ${tab} message ${i}`);
          return { exact, got: got.length };
        },
        { transport, share, count: MESSAGES, wait: WAIT, tab },
      )
      .catch(() => ({ exact: false, got: 0 })),
  );
  const results = await Promise.all(exchanges);
  const seconds = (performance.now() - started) / 1000;
  const endpoint = transport === "long-poll" ? "poll" : transport === "sse" ? "sse" : "ws";
  const heldAtOnce = endpoint === "ws" ? "—" : proxy.maxInFlight[endpoint];
  const browserConnections = proxy.maxConnections;
  const after = await rssKiB(echo.child.pid);
  for (const page of pages) {
    await page.evaluate(() => window.hf?.close()).catch(() => {});
    await page.close();
  }
  return {
    transport,
    share,
    exact: results.filter((r) => r.exact).length,
    seconds,
    heldAtOnce,
    browserConnections,
    grewKiB: after - before,
  };
}

const echo = await startExample("echo");
const proxy = await startProxy(echo.port);
const browser = await launchBrowser();
const rows = [];
try {
  // A first round, not shown, so that the server's allocator has grown
  // to its working size before anything is compared.
  await run(browser, echo, proxy, "long-poll", true);
  for (const transport of ["long-poll", "sse", "websocket"]) {
    for (const share of [false, true]) {
      rows.push(await run(browser, echo, proxy, transport, share));
    }
  }
} finally {
  await browser.close();
  await proxy.close();
  await echo.stop();
}
console.log(`\n${TABS} tabs, ${MESSAGES} messages each, echo example (one browser, HTTP/1.1)\n`);
console.log(
  "| transport | sharing | tabs with every echo | time | streams or polls held at once | browser connections (most) | server RSS growth |",
);
console.log("|---|---|--:|--:|--:|--:|--:|");
for (const r of rows) {
  const time = r.exact === TABS ? `${r.seconds.toFixed(1)} s` : `> ${WAIT / 1000} s`;
  console.log(
    `| ${r.transport} | ${r.share ? "on" : "off"} | ${r.exact} / ${TABS} | ${time} | ${r.heldAtOnce} | ${r.browserConnections} | ${r.grewKiB} KiB |`,
  );
}
