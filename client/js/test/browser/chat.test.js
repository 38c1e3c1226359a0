// The chat example in a real browser: three people on three transports in
// one room, typing into the page like people do, through a proxy that cuts
// every connection mid-conversation. Saves a screenshot of what
// they see (test/screenshots/chat.png with UPDATE_SCREENSHOTS=1, else
// chat.png.tmp beside it, which git ignores).

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";

import { launchBrowser } from "../support/browser.js";
import { startProxy } from "../support/proxy.js";
import { assertEmbedsCurrentClient, startExample } from "../support/servers.js";

let chat;
let proxy;
let browser;
/** What the chat server logged since it started listening. */
let chatLog = "";
before(async () => {
  chat = await startExample("chat");
  for (const stream of [chat.child.stdout, chat.child.stderr]) {
    stream.on("data", (chunk) => {
      chatLog += chunk;
    });
  }
  await assertEmbedsCurrentClient(chat.origin);
  proxy = await startProxy(chat.port);
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await proxy?.close();
  await chat?.stop();
});

const screenshot = fileURLToPath(
  new URL(`../screenshots/chat.png${process.env.UPDATE_SCREENSHOTS === "1" ? "" : ".tmp"}`, import.meta.url),
);

async function join(name, transport) {
  const query = transport ? `transport=${transport}&` : "";
  const page = await browser.page(`${proxy.origin}/?${query}name=${name}`);
  await page.locator("#status[data-state=live]").waitFor({ timeout: 10000 });
  const shown = await page.locator("#transport").textContent();
  return { page, name, transport, shown };
}

async function say(person, text) {
  await person.page.locator("#text").fill(text);
  await person.page.locator("#text").press("Enter");
}

/** The bubbles a page shows, once `count` are there and none is pending. */
async function bubbles(page, count) {
  await page.waitForFunction(
    (n) =>
      document.querySelectorAll(".bubble").length >= n &&
      document.querySelectorAll(".row.pending").length === 0,
    count,
    { timeout: 10000 },
  );
  return page.locator(".bubble").allTextContents();
}

test("three people on three transports chat in one room", async () => {
  const ada = await join("Ada", "websocket");
  const grace = await join("Grace", "long-poll");
  const linus = await join("Linus", "sse");
  assert.equal(ada.shown, "· WebSocket");
  assert.equal(grace.shown, "· Long-polling");
  assert.equal(linus.shown, "· SSE");

  const script = [
    [grace, "Morning! Anyone around? I'm stuck behind the office proxy again."],
    [ada, "Hi Grace — I'm here, on a WebSocket."],
    [linus, "Same room, on Server-Sent Events. Reading you both fine."],
    [grace, "Long-polling works for me. Nothing lost, nothing twice."],
    [ada, "That's the point of holdfast: one ordered stream, whatever the network allows."],
    [linus, "Shipping the release notes in 5 — the reconnect fixes are in."],
    [ada, "Nice. Ship it!"],
  ];
  const expected = [];
  for (const [index, [person, text]] of script.entries()) {
    if (index === 4) await proxy.cut(); // every connection drops mid-conversation
    await say(person, text);
    expected.push(text);
    // Everyone sees it before the next line: a conversation, in order.
    for (const reader of [ada, grace, linus]) {
      assert.deepEqual(await bubbles(reader.page, expected.length), expected, reader.name);
    }
  }

  // Everyone is listed online, on every page.
  for (const reader of [ada, grace, linus]) {
    await reader.page.waitForFunction(
      () => document.querySelectorAll("#people li").length === 3,
      null,
      { timeout: 5000 },
    );
    assert.deepEqual(await reader.page.locator("#people li > span:first-of-type").allTextContents(), [
      "Ada",
      "Grace",
      "Linus",
    ]);
  }

  // A newcomer gets the history, exactly once.
  const margaret = await join("Margaret", null);
  assert.deepEqual(await bubbles(margaret.page, expected.length), expected);

  await ada.page.screenshot({ path: screenshot, type: "png" });
  for (const person of [ada, grace, linus, margaret]) {
    assert.deepEqual(person.page.problems, [], person.name);
    await person.page.close();
  }
});

test("eight people in eight tabs on long-polling share one poll and chat", async () => {
  // Over HTTP/1.1 a browser opens six connections per host: without one
  // shared poll for all the tabs, eight held polls would leave no
  // connection for anyone's messages (PROTOCOL.md §11.3).
  await proxy.resetMax();
  const names = ["Ada", "Barbara", "Claude", "Dennis", "Edsger", "Frances", "Grace", "Hedy"];
  const people = [];
  for (const name of names) people.push(await join(name, "long-poll"));
  for (const person of people) assert.equal(person.shown, "· Long-polling", person.name);
  const expected = [];
  const before = (await bubbles(people[0].page, 0)).length;
  for (const [index, person] of people.entries()) {
    const text = `${person.name} here, tab ${index + 1} of 8.`;
    await say(person, text);
    expected.push(text);
    // Everyone sees it before the next line: a conversation, in order.
    for (const reader of people) {
      const seen = await bubbles(reader.page, before + expected.length);
      assert.deepEqual(seen.slice(before), expected, reader.name);
    }
  }
  for (const reader of people) {
    await reader.page.waitForFunction(
      (n) => document.querySelectorAll("#people li").length >= n,
      names.length,
      { timeout: 10000 },
    );
  }
  const { maxInFlight } = await proxy.stats();
  assert.ok(maxInFlight.poll <= 2, `${maxInFlight.poll} polls at once`);
  for (const person of people) {
    assert.deepEqual(person.page.problems, [], person.name);
    await person.page.close();
  }
});

/** Resolves once the chat server logged a line matching `pattern`. */
function logged(pattern, timeout = 5000) {
  const streams = [chat.child.stdout, chat.child.stderr];
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      for (const stream of streams) stream.off("data", check);
    };
    const check = () => {
      if (chatLog.split("\n").some((line) => pattern.test(line))) {
        done();
        resolve();
      }
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`the server logged no ${pattern}:\n${chatLog.slice(-3000)}`));
    }, timeout);
    for (const stream of streams) stream.on("data", check);
    check();
  });
}

test("a page forced off WebSocket says why, and the server heard it", async () => {
  await proxy.set({ refuseWebSocket: true });
  try {
    const ada = await join("Ada", null);
    // A browser's WebSocket does not tell the status of a refused upgrade.
    assert.equal(ada.shown, "· on SSE: WebSocket blocked (closed before it opened)");
    const chatSession = (await ada.page.locator("#status").getAttribute("title")).replace("session ", "");

    // Another client on the same page, as a support page would read it
    // (this tab's memory of what worked cleared first: it starts over).
    const { diagnostics, sessionId } = await ada.page.evaluate(async () => {
      sessionStorage.clear();
      const { Holdfast } = await import("/realtime/client.js");
      const hf = new Holdfast("/realtime", { rememberFor: 0 });
      await new Promise((resolve, reject) => {
        hf.onopen = resolve;
        hf.onclose = (event) => reject(new Error(`${event.code} ${event.reason}`));
      });
      const seen = { diagnostics: hf.diagnostics, sessionId: hf.sessionId };
      hf.close();
      return seen;
    });
    assert.equal(diagnostics.transport, "sse");
    assert.deepEqual(
      diagnostics.fallbacks.map((f) => [f.from, f.to, f.reason, f.status, f.code]),
      [["websocket", "sse", "closed", null, null]],
    );
    assert.ok(Number.isInteger(diagnostics.fallbacks[0].afterMs) && diagnostics.fallbacks[0].afterMs >= 0);

    // Both reports reached the server, which logs them from
    // `Session::fallbacks` (the second through the tab's shared request).
    assert.notEqual(sessionId, chatSession);
    for (const id of [chatSession, sessionId]) {
      await logged(new RegExp(`${id}.*websocket->sse: closed`));
    }
    assert.deepEqual(ada.page.problems, []);
    await ada.page.close();
  } finally {
    await proxy.set({ refuseWebSocket: false });
  }
});
