// The connection policy where the overload and reconnect-storm benchmarks
// found it wanting:
//
// - on SSE the client's acks travel in send requests: a send the server
//   refuses for now (503 + Retry-After: its buffer budget is full) must
//   hold back only its messages, never the acks (and pongs) the server
//   needs to free that budget (PROTOCOL.md §8.4);
// - a transport that carried this session already gets longer to greet
//   when it comes back (a slow upgrade in a storm is a busy server, not a
//   buffering proxy); one never used keeps the plain probe timeout.

import assert from "node:assert/strict";
import http from "node:http";
import { after, before, describe, test } from "node:test";

import { Holdfast } from "../../holdfast.js";
import { echoExchange, nextEvent, record, until } from "../support/helpers.js";
import { startProxy } from "../support/proxy.js";
import { startExample } from "../support/servers.js";

/** The server's side of one SSE session whose buffer budget is full, as
 * holdfast's own server behaves then (server/src/transport/send.rs): a
 * send request holding messages is refused with 503, `Retry-After` and a
 * `detach` 4503 — its acks applied all the same — until `admit`; a
 * request without messages costs nothing and is answered. Every request
 * is recorded with its time. */
async function startBusyServer(retryAfter) {
  const server = {
    admit: false,
    /** Send requests: { at, frames, refused }. */
    requests: [],
    /** The highest ack the client sent for the stream. */
    acked: 0,
    pongs: 0,
    /** Messages taken from the client, by seq. */
    received: [],
    stream: null,
    push(frames) {
      server.stream.write(`data: ${JSON.stringify(frames)}\n\n`);
    },
  };
  const open = {
    t: "open",
    v: 1,
    key: "K",
    sid: "s1",
    ping: 20000,
    timeout: 40000,
    resume: 120000,
    hold: 25000,
    max_msg: 65536,
    max_batch: 1048576,
    win: 1048576,
  };
  const http1 = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    if (req.method === "GET" && url.pathname === "/rt/sse") {
      res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache" });
      server.stream = res;
      server.push([open]);
      return;
    }
    if (req.method === "POST" && url.pathname === "/rt/send") {
      let body = "";
      req.setEncoding("utf8");
      req.on("data", (chunk) => (body += chunk));
      req.on("end", () => {
        const frames = JSON.parse(body);
        for (const f of frames) {
          if (f.t === "ack") server.acked = Math.max(server.acked, f.seq);
          if (f.t === "pong") server.pongs += 1;
        }
        const messages = frames.filter((f) => f.t === "msg");
        const refused = messages.length > 0 && !server.admit;
        server.requests.push({ at: Date.now(), frames, refused });
        const json = { "Content-Type": "application/json" };
        if (refused) {
          const detach = { t: "detach", code: 4503, reason: "not keeping up", retry_after: retryAfter };
          res.writeHead(503, { ...json, "Retry-After": String(Math.ceil(retryAfter / 1000)) });
          res.end(JSON.stringify([detach]));
          return;
        }
        for (const m of messages) {
          if (m.seq === server.received.length + 1) server.received.push(m.d);
        }
        const reply = [{ t: "ack", seq: server.received.length, room: 1048576 }];
        if (frames.some((f) => f.t === "close")) reply.push({ t: "close", code: 1000, reason: "" });
        res.writeHead(200, json).end(JSON.stringify(reply));
      });
      return;
    }
    res.writeHead(404).end();
  });
  await new Promise((resolve) => http1.listen(0, "127.0.0.1", resolve));
  server.url = `http://127.0.0.1:${http1.address().port}/rt`;
  server.close = () =>
    new Promise((resolve) => {
      http1.close(() => resolve());
      http1.closeAllConnections();
    });
  return server;
}

test("sse: acks and pongs go on while a refused send waits out its Retry-After", async () => {
  const RETRY_AFTER = 3000;
  const server = await startBusyServer(RETRY_AFTER);
  const client = new Holdfast(server.url, { transports: ["sse"], rememberFor: 0 });
  try {
    const events = record(client);
    const got = [];
    client.onmessage = (event) => got.push(event.data);
    await nextEvent(client, "open", 5000);
    client.send("first");
    await until(() => server.requests.some((r) => r.refused), 5000, "the send refused");
    const refusedAt = Date.now();
    // What the server delivers meanwhile must be acknowledged meanwhile.
    server.push([
      { t: "msg", seq: 1, d: "one" },
      { t: "msg", seq: 2, d: "two" },
      { t: "msg", seq: 3, d: "three" },
    ]);
    server.push([{ t: "ping" }]);
    await until(
      () => server.acked >= 3 && server.pongs >= 1,
      RETRY_AFTER - 1000,
      () => `acks and pong during the Retry-After (acked ${server.acked}, pongs ${server.pongs})`,
    );
    assert.deepEqual(got, ["one", "two", "three"]);
    const early = server.requests.filter((r) => r.at < refusedAt + RETRY_AFTER);
    const resent = early.filter((r) => r.frames.some((f) => f.t === "msg"));
    assert.equal(resent.length, 1, "the refused message waited: only its refusal came early");
    assert.ok(
      early.some((r) => !r.refused && r.frames.some((f) => f.t === "ack" && f.seq === 3)),
      "the ack went in an ack-only request",
    );

    // Admitted now: the same message, with the same seq, once.
    server.admit = true;
    await until(() => server.received.length === 1, RETRY_AFTER * 2, "the refused message again");
    const retry = server.requests.find((r) => !r.refused && r.frames.some((f) => f.t === "msg"));
    assert.ok(retry.at >= refusedAt + RETRY_AFTER - 50, "it waited out the Retry-After");
    assert.deepEqual(retry.frames.filter((f) => f.t === "msg"), [{ t: "msg", seq: 1, d: "first" }]);
    assert.deepEqual(server.received, ["first"]);
    assert.deepEqual(events.filter((e) => e.type === "reconnecting"), [], "no reconnect");
    client.close();
    await nextEvent(client, "close", 5000);
  } finally {
    client.close();
    await server.close();
  }
});

describe("greeting deadline", () => {
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

  test("a WebSocket that carried the session gets longer to greet when it comes back", async () => {
    const PROBE_TIMEOUT = 1000;
    // Slower than the probe timeout, well within twice it.
    const SLOW_UPGRADE = 1400;
    const options = {
      probeTimeout: PROBE_TIMEOUT,
      backoff: { initial: 20, max: 200, jitter: 0.5 },
      rememberFor: 0,
      reprobeAfter: 60000,
    };
    const client = new Holdfast(`${proxy.origin}/realtime`, options);
    try {
      const events = record(client);
      assert.equal((await nextEvent(client, "open", 5000)).transport, "websocket");
      await echoExchange(client, { count: 20 }); // frames both ways: proven
      await proxy.set({ upgradeDelay: SLOW_UPGRADE });
      const resumed = nextEvent(client, "resumed", 5000);
      await proxy.cut();
      assert.equal((await resumed).transport, "websocket");
      assert.deepEqual(events.filter((e) => e.type === "transportchange"), [], "no fallback");

      // The control: a first attempt keeps the plain probe timeout, and
      // the same slow upgrade makes it fall back at once.
      const started = Date.now();
      const other = new Holdfast(`${proxy.origin}/realtime`, options);
      try {
        assert.equal((await nextEvent(other, "open", 5000)).transport, "sse");
        const elapsed = Date.now() - started;
        assert.ok(elapsed < PROBE_TIMEOUT + SLOW_UPGRADE, `fell back after ${elapsed} ms`);
      } finally {
        other.close();
      }
      client.close();
      await nextEvent(client, "close", 5000);
    } finally {
      client.close();
      await proxy.set({ upgradeDelay: 0 });
    }
  });
});
