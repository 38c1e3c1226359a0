// Native text messages on WebSocket (PROTOCOL.md §2.2.1) in a real browser:
// the client the server embeds, in the harness page, echoes large texts
// over WebSocket — as type-2 binary messages both ways with a server that
// grants them, all in JSON with one that does not (the echo example with
// --no-native-text). A spy WebSocket in the page sees what travels.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { launchBrowser } from "../support/browser.js";
import { startProxy } from "../support/proxy.js";
import { startExample } from "../support/servers.js";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

/** Runs in the page: echoes 40 texts (every fourth small) over WebSocket
 * through a spy, and says what went each way. */
async function echoTexts() {
  const { Holdfast } = await import("/realtime/client.js");
  const log = { urls: [], sent: [], received: [] };
  const kind = (data) =>
    typeof data === "string" ? "text" : new Uint8Array(data.buffer ?? data, data.byteOffset ?? 0)[0];
  class Spy extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      log.urls.push(url);
    }
    send(data) {
      log.sent.push(kind(data));
      super.send(data);
    }
    set onmessage(handler) {
      super.onmessage = handler && ((event) => {
        log.received.push(kind(event.data));
        handler(event);
      });
    }
    get onmessage() {
      return super.onmessage;
    }
  }
  const big = (n) => {
    let text = `${n}:"quoted"\n\\ é ☃ 𝄞 `;
    while (text.length < 1500) text += 'line "x"\t\n';
    return text;
  };
  const texts = Array.from({ length: 40 }, (_, i) => (i % 4 === 3 ? `small ${i}` : big(i)));
  const hf = new Holdfast("/realtime", { transports: ["websocket"], WebSocket: Spy, rememberFor: 0 });
  const received = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${received.length}/40 echoes`)), 10000);
    hf.onmessage = (event) => {
      received.push(event.data);
      if (received.length === texts.length) {
        clearTimeout(timer);
        resolve();
      }
    };
    for (const text of texts) hf.send(text);
  });
  hf.close(1000, "done");
  const exact = received.every((text, i) => text === texts[i]);
  return { ...log, exact, count: received.length };
}

for (const [name, args, native] of [
  ["granted", [], true],
  ["not granted (--no-native-text)", ["--no-native-text"], false],
]) {
  describe(`browser, native text ${name}`, () => {
    let echo;
    let proxy;
    before(async () => {
      echo = await startExample("echo", { args });
      proxy = await startProxy(echo.port);
    });
    after(async () => {
      await proxy?.close();
      await echo?.stop();
    });

    test("40 texts echoed over WebSocket, exactly and in order", async () => {
      const page = await browser.page(`${proxy.origin}/test/harness.html`);
      await page.waitForFunction(() => window.harnessReady === true, null, { timeout: 10000 });
      const result = await page.evaluate(echoTexts);
      assert.equal(result.count, 40);
      assert.ok(result.exact, "every echo equal to what was sent");
      assert.match(result.urls[0], /[?&]wstext=1(&|$)/, "the client offers native text");
      const nativeSent = result.sent.filter((k) => k === 2).length;
      const nativeReceived = result.received.filter((k) => k === 2).length;
      if (native) {
        assert.equal(nativeSent, 30, `sent ${result.sent}`);
        assert.equal(nativeReceived, 30, `received ${result.received}`);
      } else {
        assert.deepEqual(result.sent.filter((k) => k !== "text"), []);
        assert.deepEqual(result.received.filter((k) => k !== "text"), []);
      }
      assert.deepEqual(page.problems, []);
      await page.close();
    });
  });
}
