// Key hygiene (PROTOCOL.md §1): the session key never travels in a URL the
// client can keep it out of — access logs record URLs. HTTP requests carry
// it in the `Holdfast-Key` header, a WebSocket offers it as the
// `holdfast.key.<key>` subprotocol beside `holdfast.v1` (which the server
// selects). Only a cross-origin page keeps it in the query of its HTTP
// requests (a custom header would cost a CORS preflight per request),
// unless its own headers make them preflighted anyway.
// Every transport, through cuts and probes, messages exactly once.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Holdfast } from "../../holdfast.js";
import { echoExchange, nextEvent, until } from "../support/helpers.js";
import { startProxy } from "../support/proxy.js";
import { startExample } from "../support/servers.js";

const FAST = { backoff: { initial: 20, max: 200, jitter: 0.5 }, probeTimeout: 1500, rememberFor: 0 };
const KEY_TOKEN = "holdfast.key.";

/** A `fetch` and a `WebSocket` to pass in the options, recording every
 * URL the client asks for and the key it named outside the URL. */
function recorder() {
  /** `{ kind, url, key, protocols, socket }`, in order. */
  const requests = [];
  const fetch = (url, init = {}) => {
    const key = new Headers(init.headers).get("holdfast-key");
    requests.push({ kind: "fetch", url: String(url), key });
    return globalThis.fetch(url, init);
  };
  class WebSocket extends globalThis.WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      // `protocols` is a list, or (Node, with headers) `{ protocols, headers }`.
      const init = Array.isArray(protocols) ? { protocols } : (protocols ?? {});
      const list = init.protocols ?? [];
      const token = list.find((p) => p.startsWith(KEY_TOKEN));
      const header = new Headers(init.headers).get("holdfast-key");
      const key = token ? token.slice(KEY_TOKEN.length) : header;
      requests.push({ kind: "websocket", url: String(url), key, header, protocols: list, socket: this });
    }
  }
  return {
    fetch,
    WebSocket,
    requests,
    /** Requests to `endpoint` (`ws`, `sse`, `poll`, `send`) naming a key
     * outside the URL, whose URL holds `also` (`""`: any). */
    keyed(endpoint, also = "") {
      return requests.filter((r) => {
        const url = new URL(r.url);
        return r.key && url.pathname.endsWith(`/${endpoint}`) && r.url.includes(also);
      });
    },
    /** Every key named outside URLs. */
    keys() {
      return [...new Set(requests.map((r) => r.key).filter(Boolean))];
    },
    assertNoKeyInUrls() {
      const keys = this.keys();
      assert.ok(keys.length > 0, "the session was named outside the URL at least once");
      for (const { url } of requests) {
        assert.equal(new URL(url).searchParams.get("key"), null, `a URL holds the key: ${url}`);
        for (const key of keys) assert.ok(!url.includes(key), `a URL holds the key: ${url}`);
      }
    },
  };
}

let echo;
let proxy;
before(async () => {
  echo = await startExample("echo");
  proxy = await startProxy(echo.port);
});
after(async () => {
  await proxy?.close();
  await echo?.stop();
});

describe("the session key stays out of URLs", () => {
  for (const transport of ["websocket", "sse", "long-poll"]) {
    test(`${transport}: through cuts, exactly once`, async () => {
      const record = recorder();
      const client = new Holdfast(`${proxy.origin}/realtime`, {
        ...FAST,
        transports: [transport],
        fetch: record.fetch,
        WebSocket: record.WebSocket,
      });
      try {
        await nextEvent(client, "open", 5000);
        // Cuts make the client resume, naming its session downstream too.
        const { cuts, received } = await echoExchange(client, {
          count: 300,
          cut: () => proxy.cut(),
          cutEvery: 100,
        });
        assert.ok(cuts >= 2, `cut ${cuts} times`);
        assert.equal(received.length, 300);
        await until(() => client.bufferedAmount === 0, 5000, "every message acknowledged");
        if (transport === "websocket") {
          const resumes = record.keyed("ws");
          assert.ok(resumes.length >= 1, "a WebSocket resume named the key as a subprotocol");
          for (const { protocols } of resumes) assert.ok(protocols.includes("holdfast.v1"));
          // The server selected ours, never the key token.
          const selected = resumes.map((r) => r.socket.protocol).filter(Boolean);
          assert.ok(selected.length >= 1);
          assert.ok(selected.every((p) => p === "holdfast.v1"), `selected ${selected}`);
        } else {
          const downstream = transport === "sse" ? "sse" : "poll";
          assert.ok(record.keyed(downstream).length >= 1, `a ${downstream} named the key in the header`);
          assert.ok(record.keyed("send").length >= 1, "sends named the key in the header");
        }
        record.assertNoKeyInUrls();
      } finally {
        client.close();
        await nextEvent(client, "close", 5000).catch(() => {});
      }
    });
  }

  test("Node with custom headers: a WebSocket names the key in both", async () => {
    const record = recorder();
    const client = new Holdfast(`${proxy.origin}/realtime`, {
      ...FAST,
      transports: ["websocket"],
      headers: { "X-Test": "keys" },
      fetch: record.fetch,
      WebSocket: record.WebSocket,
    });
    try {
      await nextEvent(client, "open", 5000);
      const { received } = await echoExchange(client, { count: 200, cut: () => proxy.cut(), cutEvery: 100 });
      assert.equal(received.length, 200);
      // As below: a cut after the last echo was read forces no resume.
      await proxy.cut();
      const more = await echoExchange(client, { count: 20 });
      assert.equal(more.received.length, 20);
      const resumes = record.keyed("ws");
      assert.ok(resumes.length >= 1, "a WebSocket resumed");
      for (const { key, header, protocols } of resumes) {
        assert.equal(header, key, "the key in a header (the `ws` package reads only that)");
        assert.deepEqual(protocols, ["holdfast.v1", `${KEY_TOKEN}${key}`]);
      }
      record.assertNoKeyInUrls();
    } finally {
      client.close();
      await nextEvent(client, "close", 5000).catch(() => {});
    }
  });

  test("probes name the key outside the URL too", async () => {
    await proxy.set({ refuseWebSocket: true });
    const record = recorder();
    const client = new Holdfast(`${proxy.origin}/realtime`, {
      ...FAST,
      reprobeAfter: 200,
      fetch: record.fetch,
      WebSocket: record.WebSocket,
    });
    try {
      assert.equal((await nextEvent(client, "open", 5000)).transport, "sse");
      const changed = nextEvent(client, "transportchange", 10000);
      await proxy.set({ refuseWebSocket: false });
      const change = await changed;
      assert.deepEqual([change.from, change.to], ["sse", "websocket"]);
      assert.ok(record.keyed("ws", "probe=1").length >= 1, "the WebSocket probe named the key");
      const { received } = await echoExchange(client, { count: 100 });
      assert.equal(received.length, 100);
      record.assertNoKeyInUrls();
    } finally {
      await proxy.set({ refuseWebSocket: false });
      client.close();
      await nextEvent(client, "close", 5000).catch(() => {});
    }

    await proxy.set({ refuseWebSocket: true, bufferSse: true });
    const polled = recorder();
    const fallback = new Holdfast(`${proxy.origin}/realtime`, {
      ...FAST,
      transports: ["sse", "long-poll"],
      reprobeAfter: 200,
      fetch: polled.fetch,
      WebSocket: polled.WebSocket,
    });
    try {
      assert.equal((await nextEvent(fallback, "open", 5000)).transport, "long-poll");
      const changed = nextEvent(fallback, "transportchange", 10000);
      await proxy.set({ bufferSse: false });
      const change = await changed;
      assert.deepEqual([change.from, change.to], ["long-poll", "sse"]);
      assert.ok(polled.keyed("sse", "probe=1").length >= 1, "the SSE probe named the key");
      const { received } = await echoExchange(fallback, { count: 100 });
      assert.equal(received.length, 100);
      polled.assertNoKeyInUrls();
    } finally {
      await proxy.set({ refuseWebSocket: false, bufferSse: false });
      fallback.close();
      await nextEvent(fallback, "close", 5000).catch(() => {});
    }
  });

  test("a cross-origin page keeps the key in the query of HTTP requests not preflighted anyway", async () => {
    // What a page from another origin does: the key in a header would make
    // every request with a new URL preflighted. A WebSocket still offers it
    // as a subprotocol.
    const crossOrigin = (transport, record, headers = undefined) => {
      globalThis.location = { origin: "http://page.test", href: "http://page.test/" };
      try {
        return new Holdfast(`${proxy.origin}/realtime`, {
          ...FAST,
          transports: [transport],
          headers,
          fetch: record.fetch,
          WebSocket: record.WebSocket,
        });
      } finally {
        delete globalThis.location;
      }
    };
    const polled = recorder();
    const socketed = recorder();
    const poller = crossOrigin("long-poll", polled);
    let socket;
    let authed;
    try {
      await nextEvent(poller, "open", 5000);
      const { received } = await echoExchange(poller, { count: 50 });
      assert.equal(received.length, 50);
      const inQuery = polled.requests.filter((r) => new URL(r.url).searchParams.get("key"));
      assert.ok(inQuery.some((r) => r.url.includes("/send?")), "sends name the key in the query");
      assert.ok(inQuery.some((r) => r.url.includes("/poll?")), "polls name the key in the query");
      assert.deepEqual(polled.keys(), [], "and no custom header");

      socket = crossOrigin("websocket", socketed);
      await nextEvent(socket, "open", 5000);
      const echoed = await echoExchange(socket, { count: 200, cut: () => proxy.cut(), cutEvery: 100 });
      assert.equal(echoed.received.length, 200);
      // A cut that fell after the last echo was already read forces no
      // resume (a loaded machine batches them all in one read): cut once
      // more, with messages still to go.
      await proxy.cut();
      const resumed = await echoExchange(socket, { count: 20 });
      assert.equal(resumed.received.length, 20);
      assert.ok(socketed.keyed("ws").length >= 1, "the WebSocket resumed with the subprotocol");
      socketed.assertNoKeyInUrls();

      // With a header of the application's own, every request is
      // preflighted anyway: the key goes in a header too.
      const authorized = recorder();
      authed = crossOrigin("long-poll", authorized, { Authorization: "Bearer test" });
      await nextEvent(authed, "open", 5000);
      const more = await echoExchange(authed, { count: 50 });
      assert.equal(more.received.length, 50);
      assert.ok(authorized.keyed("send").length >= 1, "sends name the key in the header");
      assert.ok(authorized.keyed("poll").length >= 1, "polls name the key in the header");
      authorized.assertNoKeyInUrls();
    } finally {
      for (const client of [poller, socket, authed].filter(Boolean)) {
        client.close();
        await nextEvent(client, "close", 5000).catch(() => {});
      }
    }
  });
});
