// The JavaScript client in Chromium behind a real nginx with its default
// proxying (what a corporate proxy does): no Upgrade/Connection forwarding,
// HTTP/1.0 to the upstream, buffering on. The chat page, loaded through
// nginx, must end on a transport that works and deliver exactly.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { launchBrowser } from "../support/browser.js";
import { startNginx } from "../support/nginx.js";
import { assertEmbedsCurrentClient, startExample } from "../support/servers.js";

let chat;
let nginx;
let browser;
before(async () => {
  chat = await startExample("chat");
  await assertEmbedsCurrentClient(chat.origin);
  nginx = await startNginx(chat.port, "corporate");
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await nginx?.stop();
  await chat?.stop();
});

test("behind nginx's default proxying, the page falls back and chats exactly", async () => {
  const ada = await browser.page(`${nginx.origin}/?name=Ada`);
  const bob = await browser.page(`${nginx.origin}/?name=Bob`);
  for (const page of [ada, bob]) {
    await page.locator("#status[data-state=live]").waitFor({ timeout: 15000 });
  }
  // nginx did not forward the upgrade: not WebSocket, and the badge says
  // why ("· on SSE: WebSocket blocked …").
  const badge = await ada.locator("#transport").textContent();
  const [, transport, why] = badge.match(/^· (?:on )?([^:]+)(?:: (.+))?$/) ?? [];
  assert.ok(transport, `a transport in the badge: ${badge}`);
  assert.doesNotMatch(transport, /websocket/i, `through nginx's defaults: ${badge}`);
  assert.match(why ?? "", /websocket/i, `the badge says why: ${badge}`);

  const sent = [];
  for (let i = 0; i < 20; i++) {
    const text = `hello ${i} through nginx`;
    sent.push(text);
    await ada.locator("#text").fill(text);
    await ada.locator("#text").press("Enter");
  }
  // Bob sees all of Ada's messages, once each, in order.
  await bob.waitForFunction(
    (n) => [...document.querySelectorAll(".bubble")].filter((b) => b.textContent.includes("through nginx")).length >= n,
    sent.length,
    { timeout: 15000 },
  );
  const seen = (await bob.locator(".bubble").allTextContents()).filter((t) => t.includes("through nginx"));
  assert.deepEqual(seen, sent);
  assert.deepEqual([...ada.problems, ...bob.problems], []);
});
