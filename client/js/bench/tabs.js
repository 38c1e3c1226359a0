// Many tabs of one origin against the echo example, with and without
// sharing one connection between them (PROTOCOL.md §11): how many tabs get
// all their echoes, how many TCP connections the server holds, and how
// much the server grew. Prints a table for BENCHMARKS.md; asserts nothing.
//
//   node bench/tabs.js [tabs=12] [messages=20]
//
// Uses the debug build of the echo example (`cargo build --example echo`,
// as test/run.sh does) and Debian's Chromium (see test/support/browser.js).

import { readFile } from "node:fs/promises";

import { launchBrowser } from "../test/support/browser.js";
import { startExample } from "../test/support/servers.js";

const TABS = Number(process.argv[2] ?? 12);
const MESSAGES = Number(process.argv[3] ?? 20);
const WAIT = 15000;

/** The server's resident memory, in KiB. */
async function rssKiB(pid) {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
}

/** Established TCP connections whose local port is `port` (the server's
 * side of each browser connection). */
async function connections(port) {
  let count = 0;
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text;
    try {
      text = await readFile(file, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields.length < 4) continue;
      const local = Number.parseInt(fields[1].split(":")[1], 16);
      if (local === port && fields[3] === "01") count += 1;
    }
  }
  return count;
}

/** Opens `TABS` tabs, each with its own Holdfast on `transport`, each
 * sending `MESSAGES` messages; resolves with the figures once every tab is
 * done or `WAIT` ms passed. */
async function run(browser, echo, transport, share) {
  const before = await rssKiB(echo.child.pid);
  // Every tab loaded first, then all start at once: as tabs restored
  // when the browser starts, or a user who opened them earlier.
  const pages = [];
  for (let i = 0; i < TABS; i++) {
    const page = await browser.page();
    await page.goto(`${echo.origin}/`);
    await page.evaluate(async () => {
      window.Holdfast = (await import("/realtime/client.js")).Holdfast;
    });
    pages.push(page);
  }
  const started = pages.map((page, tab) =>
    page
      .evaluate(
        async ({ transport, share, count, wait, tab }) => {
          const hf = new window.Holdfast("/realtime", { transports: [transport], share });
          const got = [];
          hf.onmessage = (e) => got.push(e.data);
          window.hf = hf;
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
  const results = await Promise.all(started);
  const held = await connections(echo.port);
  const after = await rssKiB(echo.child.pid);
  for (const page of pages) {
    await page.evaluate(() => window.hf?.close()).catch(() => {});
    await page.close();
  }
  return {
    transport,
    share,
    exact: results.filter((r) => r.exact).length,
    connections: held,
    grewKiB: after - before,
  };
}

const echo = await startExample("echo");
const browser = await launchBrowser();
const rows = [];
try {
  for (const transport of ["long-poll", "sse", "websocket"]) {
    for (const share of [false, true]) {
      rows.push(await run(browser, echo, transport, share));
    }
  }
} finally {
  await browser.close();
  await echo.stop();
}
console.log(`\n${TABS} tabs, ${MESSAGES} messages each, echo example (one browser, HTTP/1.1)\n`);
console.log("| transport | sharing | tabs with every echo | server connections | server RSS growth |");
console.log("|---|---|--:|--:|--:|");
for (const r of rows) {
  console.log(
    `| ${r.transport} | ${r.share ? "on" : "off"} | ${r.exact} / ${TABS} | ${r.connections} | ${r.grewKiB} KiB |`,
  );
}
