// The hostile proxy of the tests: the testkit's proxy (testkit/src, the one
// the Rust tests use) run as the `hostile-proxy` program in front of a
// holdfast server, driven over its stdin. It also routes `/test/…` to a
// small page server here (the browser test pages in test/browser/pages/).
//
// Every command resolves once the proxy applied it, so a client started
// after `await proxy.set(…)` meets the new behaviour:
//
//   await proxy.set({ refuseWebSocket: true })   upgrades answered 403 (an
//                                  HTML page)
//   await proxy.set({ bufferSse: true })          event streams (…/sse) held
//                                  back until they end
//   await proxy.set({ upgradeDelay: ms })         upgrades forwarded only
//                                  after ms (a slow gateway)
//   await proxy.set({ down: true })               every connection, new ones
//                                  included, closed at once
//   (set merges: the fields not named keep their value)
//   proxy.failNext(n, endpoint?)   the next n requests (to `ws`, `sse`,
//                                  `poll` or `send` only, if given)
//                                  answered 502 (HTML)
//   proxy.overloadNext(n, ms)      the next n requests answered 503 with
//                                  holdfast's own 4503 refusal (`close`)
//   proxy.busySendNext(n, ms)      the next n sends answered 503 with a
//                                  4503 `detach` (send again later)
//   proxy.refuseShared(status)     shared requests (POST …/sse, POST
//                                  …/poll) answered 405, as by a server
//                                  without them; 400: refused as a whole
//                                  with holdfast's close 4400; 0: stop
//   proxy.silenceTunnels()         open WebSocket tunnels go silent (bytes
//                                  dropped both ways, connections kept)
//   proxy.cutStreams()             open event streams closed, nothing else
//   proxy.cut()                    every open connection closed
//   proxy.stats()                  { counts, inFlight, maxInFlight,
//                                  connections, maxConnections,
//                                  largestSend }: requests per endpoint
//                                  (`ws`, `sse`, `poll`, `send`, and
//                                  `probes`), requests open now and the
//                                  most at once, client connections open
//                                  now and the most at once, the largest
//                                  send body (bytes)
//   proxy.resetMax()               the "most at once" figures start over
//   proxy.page(name, html)         serves `html` at /test/<name>
//
// The proxy closes every connection after one response (no keep-alive).
// Everything listens on loopback only; the program exits when this process
// does (its stdin closes).

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import http from "node:http";
import { readFile } from "node:fs/promises";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";

import { root } from "./servers.js";

const pages = fileURLToPath(new URL("../browser/pages/", import.meta.url));
const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8" };
/** The longest a command may take to be answered. */
const COMMAND_TIMEOUT = 5000;
const ENDPOINTS = ["ws", "sse", "poll", "send"];

/** The `hostile-proxy` program: $HOLDFAST_HOSTILE_PROXY, or cargo's build. */
function binary() {
  if (process.env.HOLDFAST_HOSTILE_PROXY) return process.env.HOLDFAST_HOSTILE_PROXY;
  const target = process.env.CARGO_TARGET_DIR || path.join(root, "target");
  const file = path.join(target, "debug", "hostile-proxy");
  if (!existsSync(file)) {
    throw new Error(
      `${file} is missing: run \`cargo build -p holdfast-testkit --bin hostile-proxy\` (test/run.sh does)`,
    );
  }
  return file;
}

/** Serves the browser test pages, and the ones added with `page()`. */
async function startPages() {
  const extra = new Map();
  const server = http.createServer(async (req, res) => {
    const name = new URL(req.url, "http://pages").pathname.slice("/test/".length);
    const headers = (type) => ({ "Content-Type": type, "Cache-Control": "no-store" });
    if (extra.has(name)) {
      res.writeHead(200, headers(TYPES[".html"])).end(extra.get(name));
      return;
    }
    if (!/^[\w-]+\.(html|js)$/.test(name)) {
      res.writeHead(404).end("no such page");
      return;
    }
    try {
      const body = await readFile(path.join(pages, name));
      res.writeHead(200, headers(TYPES[path.extname(name)])).end(body);
    } catch {
      res.writeHead(404).end("no such page");
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, extra, port: server.address().port };
}

/** Sums `map` (path → number) by endpoint (the path's last segment). */
function byEndpoint(map, combine) {
  const out = Object.fromEntries(ENDPOINTS.map((e) => [e, 0]));
  for (const [p, n] of Object.entries(map)) {
    const endpoint = p.split("/").pop();
    if (endpoint in out) out[endpoint] = combine(out[endpoint], n);
  }
  return out;
}

/** A holdfast JSON body of frames, as the server writes it. */
const frames = (...list) => JSON.stringify(list);

export async function startProxy(upstreamPort) {
  const pageServer = await startPages();
  const child = spawn(
    binary(),
    ["--upstream", `127.0.0.1:${upstreamPort}`, "--route", `/test/=127.0.0.1:${pageServer.port}`],
    { stdio: ["pipe", "pipe", "inherit"] },
  );
  const lines = createInterface({ input: child.stdout });
  /** Waiting for an answer, in the order the commands went. */
  const waiting = [];
  let gone = null;
  let first;
  const started = new Promise((resolve, reject) => (first = { resolve, reject }));
  const fail = (error) => {
    gone = error;
    first?.reject(error);
    first = null;
    for (const w of waiting.splice(0)) w.reject(error);
  };
  child.on("error", (error) => fail(new Error(`hostile-proxy: ${error.message}`)));
  child.on("exit", (code, signal) => fail(new Error(`hostile-proxy exited (${signal ?? code})`)));
  child.stdin.on("error", () => {}); // the exit reports it
  lines.on("line", (line) => {
    let answer;
    try {
      answer = JSON.parse(line);
    } catch {
      fail(new Error(`hostile-proxy said ${JSON.stringify(line)}`));
      return;
    }
    if (first) {
      const once = first;
      first = null;
      once.resolve(answer);
      return;
    }
    const w = waiting.shift();
    if (!w) return;
    if (answer.ok) w.resolve(answer);
    else w.reject(new Error(`hostile-proxy refused ${w.command}: ${answer.error}`));
  });

  /** Sends one command; resolves with the answer once applied. */
  function command(cmd) {
    if (gone) return Promise.reject(gone);
    const text = JSON.stringify(cmd);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`hostile-proxy did not answer ${text} within ${COMMAND_TIMEOUT} ms`)),
        COMMAND_TIMEOUT,
      );
      const settle = (f) => (value) => {
        clearTimeout(timer);
        f(value);
      };
      waiting.push({ command: text, resolve: settle(resolve), reject: settle(reject) });
      child.stdin.write(`${text}\n`);
    });
  }

  const timer = setTimeout(() => fail(new Error("hostile-proxy did not start within 10 s")), 10000);
  let port;
  try {
    ({ port } = await started);
  } catch (error) {
    child.kill("SIGKILL");
    pageServer.server.close();
    throw error;
  } finally {
    clearTimeout(timer);
  }

  const state = { refuseWebSocket: false, bufferSse: false, upgradeDelay: 0, down: false };
  let failing = null;
  let sharedRefusal = null;
  /** Installs an answer in place of the one `slot` names, if any. */
  async function replace(slot, answer) {
    if (slot !== null) await command({ cmd: "withdraw", id: slot });
    return answer ? (await command({ cmd: "answer", ...answer })).id : null;
  }
  const endpointPaths = (endpoint) => (endpoint ? { ends_with: `/${endpoint}` } : undefined);

  return {
    port,
    origin: `http://127.0.0.1:${port}`,
    page(name, html) {
      pageServer.extra.set(name, html);
    },
    async set(changes) {
      for (const key of Object.keys(changes)) {
        if (!(key in state)) throw new Error(`proxy.set: unknown field ${key}`);
      }
      Object.assign(state, changes);
      await command({
        cmd: "set",
        refuse_upgrade: state.refuseWebSocket ? 403 : null,
        buffer: state.bufferSse ? { paths: { ends_with: "/sse" } } : null,
        upgrade_delay_ms: state.upgradeDelay,
        cut: state.down ? { bytes: 0 } : null,
      });
    },
    async failNext(n, endpoint = null) {
      failing = await replace(failing, { status: 502, times: n, paths: endpointPaths(endpoint) });
    },
    async overloadNext(n, ms) {
      await command({
        cmd: "answer",
        status: 503,
        times: n,
        headers: { "Retry-After": String(Math.ceil(ms / 1000)) },
        content_type: "application/json",
        body: frames({ t: "close", code: 4503, reason: "too many sessions", retry_after: ms }),
      });
    },
    async busySendNext(n, ms) {
      await command({
        cmd: "answer",
        status: 503,
        times: n,
        paths: { ends_with: "/send" },
        headers: { "Retry-After": String(Math.ceil(ms / 1000)) },
        content_type: "application/json",
        body: frames({
          t: "detach",
          code: 4503,
          reason: "the application is not keeping up",
          retry_after: ms,
        }),
      });
    },
    async refuseShared(status) {
      // One answer per shared endpoint: a path filter takes one suffix.
      for (const id of sharedRefusal ?? []) await command({ cmd: "withdraw", id });
      sharedRefusal = null;
      if (!status) return;
      const answer =
        status === 400
          ? {
              status,
              content_type: "application/json",
              body: frames({ t: "close", code: 4400, reason: "more sessions than allowed" }),
            }
          : { status, headers: { Allow: "GET" }, content_type: "text/plain", body: "" };
      sharedRefusal = [];
      for (const endpoint of ["sse", "poll"]) {
        const { id } = await command({ cmd: "answer", method: "POST", paths: endpointPaths(endpoint), ...answer });
        sharedRefusal.push(id);
      }
    },
    async cut() {
      await command({ cmd: "cut" });
    },
    async cutStreams() {
      await command({ cmd: "cut", paths: { ends_with: "/sse" } });
    },
    async silenceTunnels() {
      await command({ cmd: "silence_tunnels" });
    },
    async resetMax() {
      await command({ cmd: "reset_max" });
    },
    async stats() {
      const { stats } = await command({ cmd: "stats" });
      const counts = byEndpoint(stats.requests, (a, n) => a + n);
      counts.probes = stats.probes;
      return {
        counts,
        inFlight: byEndpoint(stats.open, (a, n) => a + n),
        maxInFlight: byEndpoint(stats.max_open, Math.max),
        connections: stats.live,
        maxConnections: stats.max_live,
        largestSend: byEndpoint(stats.largest_body, Math.max).send,
      };
    },
    async close() {
      if (!gone) {
        const exited = new Promise((resolve) => child.once("exit", resolve));
        child.stdin.end(); // the program exits when its stdin closes
        const killer = setTimeout(() => child.kill("SIGKILL"), 3000);
        await exited;
        clearTimeout(killer);
      }
      await new Promise((resolve) => {
        pageServer.server.close(() => resolve());
        pageServer.server.closeAllConnections?.();
      });
    },
  };
}
