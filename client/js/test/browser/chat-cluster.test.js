// The chat example on two nodes sharing a real redis-server, in Chromium:
// Ada's page on node 1 over WebSocket, Grace's on node 2 forced to
// long-polling. They see each other online and each other's lines; then
// node 1 is restarted (SIGTERM: it hands Ada's session over; then started
// again on its port) while Grace keeps talking and Ada has a line on its
// way. Afterwards both pages show every line exactly once, in one order,
// and nobody joined or left twice.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { launchBrowser } from "../support/browser.js";
import { startRedis } from "../support/redis.js";
import { assertEmbedsCurrentClient, startExample } from "../support/servers.js";

let redis;
let nodes = [];
let browser;

/** Starts the chat example as a node sharing the room in Redis. */
function node(port = 0) {
  return startExample("chat", { addr: `127.0.0.1:${port}`, args: ["--redis", redis.url] });
}

before(async () => {
  redis = await startRedis();
  nodes = [await node(), await node()];
  await assertEmbedsCurrentClient(nodes[0].origin);
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  for (const n of nodes) await n?.stop();
  await redis?.stop();
});

async function join(origin, name, transport) {
  const page = await browser.page(`${origin}/?transport=${transport}&name=${name}`);
  await page.locator("#status[data-state=live]").waitFor({ timeout: 10000 });
  return { page, name, shown: await page.locator("#transport").textContent() };
}

async function say(person, text) {
  await person.page.locator("#text").fill(text);
  await person.page.locator("#text").press("Enter");
}

/** The bubbles a page shows, once all of `texts` are there (confirmed). */
async function bubbles(page, texts) {
  await page.waitForFunction(
    (wanted) => {
      const confirmed = [...document.querySelectorAll(".row:not(.pending) .bubble")].map((b) => b.textContent);
      return wanted.every((text) => confirmed.includes(text));
    },
    texts,
    { timeout: 20000 },
  );
  return page.locator(".bubble").allTextContents();
}

/** Waits until a page lists exactly `names` online. */
async function online(page, names) {
  await page.waitForFunction(
    (wanted) =>
      JSON.stringify([...document.querySelectorAll("#people li > span:first-of-type")].map((s) => s.textContent)) ===
      JSON.stringify(wanted),
    names,
    { timeout: 15000 },
  );
}

/** The system lines ("Ada joined · 10:42") a page shows, without times. */
async function systemLines(page) {
  const lines = await page.locator(".system").allTextContents();
  return lines.map((line) => line.replace(/ · .*$/, ""));
}

test("two nodes share one room across a restart: every line once, one order", async () => {
  const ada = await join(nodes[0].origin, "Ada", "websocket");
  const grace = await join(nodes[1].origin, "Grace", "long-poll");
  assert.equal(ada.shown, "· WebSocket");
  assert.equal(grace.shown, "· Long-polling");
  for (const person of [ada, grace]) await online(person.page, ["Ada", "Grace"]);

  // Across nodes and transports, both ways.
  await say(ada, "Hi Grace, from node one over a WebSocket.");
  assert.deepEqual(await bubbles(grace.page, ["Hi Grace, from node one over a WebSocket."]), [
    "Hi Grace, from node one over a WebSocket.",
  ]);
  await say(grace, "Hello Ada! Node two here, long-polling.");
  const before = ["Hi Grace, from node one over a WebSocket.", "Hello Ada! Node two here, long-polling."];
  for (const person of [ada, grace]) assert.deepEqual(await bubbles(person.page, before), before, person.name);

  // Node 1 restarts (a deploy): SIGTERM hands Ada's session over, and
  // the node comes back on the same port a moment later.
  const session = await ada.page.evaluate(() => window.chat.client.sessionId);
  const port = nodes[0].port;
  const exited = new Promise((resolve) => nodes[0].child.once("exit", resolve));
  nodes[0].child.kill("SIGTERM");
  await exited;
  await ada.page.locator("#status:not([data-state=live])").waitFor({ timeout: 10000 });
  // Ada types while her server is away: the line waits, "sending".
  await say(ada, "Did the server just restart? This line waits for it.");
  assert.equal(await ada.page.locator(".row.pending").count(), 1);
  await say(grace, "I'm still here on node two.");
  await say(grace, "Talking while node one restarts.");
  nodes[0] = await node(port);
  await say(grace, "Node one is back, I think.");
  await ada.page.locator("#status[data-state=live]").waitFor({ timeout: 20000 });
  await say(ada, "Back, and nothing lost.");
  // The same session, continued on the new process (not a new one).
  assert.equal(await ada.page.evaluate(() => window.chat.client.sessionId), session);

  const lines = [
    ...before,
    "Did the server just restart? This line waits for it.",
    "I'm still here on node two.",
    "Talking while node one restarts.",
    "Node one is back, I think.",
    "Back, and nothing lost.",
  ];
  const shown = [];
  for (const person of [ada, grace]) {
    const bubblesShown = await bubbles(person.page, lines);
    assert.equal(bubblesShown.length, lines.length, `${person.name}: every line exactly once: ${bubblesShown}`);
    assert.deepEqual([...bubblesShown].sort(), [...lines].sort(), person.name);
    assert.equal(await person.page.locator(".row.pending").count(), 0, person.name);
    shown.push(bubblesShown);
  }
  assert.deepEqual(shown[0], shown[1], "one order on both pages");
  // Each page's own lines keep their order, and so do the other's.
  for (const [i, name] of ["Ada", "Grace"].entries()) {
    const own = lines.filter((line, n) => (name === "Ada" ? [0, 2, 6] : [1, 3, 4, 5]).includes(n));
    assert.deepEqual(
      shown[i].filter((line) => own.includes(line)),
      own,
      `${name}'s lines in the order said`,
    );
  }

  // Still both online; the move was no leave and no second join.
  for (const person of [ada, grace]) await online(person.page, ["Ada", "Grace"]);
  assert.deepEqual(await systemLines(grace.page), ["Grace joined"]);
  assert.equal((await systemLines(ada.page)).filter((line) => line.startsWith("Ada")).length, 1);
  assert.ok(!(await systemLines(ada.page)).some((line) => line.endsWith("left")));

  // A newcomer on the restarted node gets the whole conversation.
  const linus = await join(nodes[0].origin, "Linus", "sse");
  assert.deepEqual(await bubbles(linus.page, lines), shown[0]);
  await online(ada.page, ["Ada", "Grace", "Linus"]);

  for (const person of [ada, grace, linus]) {
    assert.deepEqual(person.page.problems, [], person.name);
    await person.page.close();
  }
});
