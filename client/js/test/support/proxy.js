// A hostile HTTP proxy for the tests, in front of a holdfast server.
//
// It forwards requests and WebSocket upgrades, serves the browser test pages
// from test/browser/, and on command misbehaves the way real middleboxes
// do:
//
//   proxy.refuseWebSocket = true   upgrades answered 403 (an HTML page)
//   proxy.bufferSse = true         event streams held back until they end
//   proxy.failNext(n, endpoint?)   the next n requests (to `ws`, `sse`,
//                                  `poll` or `send` only, if given)
//                                  answered 502 (HTML)
//   proxy.overloadNext(n, ms)      the next n requests answered 503 with
//                                  holdfast's own 4503 refusal (`close`)
//   proxy.busySendNext(n, ms)      the next n sends answered 503 with a
//                                  4503 `detach` (the application is not
//                                  keeping up: send again later)
//   proxy.silenceTunnels()         open WebSocket tunnels go silent (bytes
//                                  dropped both ways, connections kept)
//   proxy.upgradeDelay = ms        upgrades forwarded only after ms (a slow
//                                  gateway: a WebSocket probe takes longer)
//   proxy.cutStreams()             open event streams killed (TCP reset),
//                                  nothing else
//   proxy.cut()                    every open connection killed (TCP reset)
//   proxy.down = true              new connections killed at once
//   proxy.refuseShared = 405       shared requests (POST …/sse, POST
//                                  …/poll) answered 405, as by a server
//                                  without them; 400: refused as a whole
//                                  with holdfast's close 4400 (a list the
//                                  server does not take)
//
// and counts: `counts` (requests per endpoint), `inFlight` / `maxInFlight`
// (requests per endpoint open at once: held polls, streams), `connections`
// (client connections open now) and `maxConnections` (the most at once,
// since `resetMax()`).
//
// Everything listens on loopback only.

import http from "node:http";
import net from "node:net";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import path from "node:path";

const pages = fileURLToPath(new URL("../browser/pages/", import.meta.url));

const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8" };

const ERROR_PAGE = (status, text) =>
  `<!doctype html><html><head><title>${status} ${text}</title></head>` +
  `<body><h1>${status} ${text}</h1><p>hostile-proxy</p></body></html>`;

export async function startProxy(upstreamPort) {
  const sockets = new Set();
  const track = (socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  };
  let failing = 0;
  let failingEndpoint = null;
  let overloading = 0;
  let busySends = 0;
  let retryAfter = 0;
  const counts = { ws: 0, sse: 0, poll: 0, send: 0, probes: 0 };
  const inFlight = { ws: 0, sse: 0, poll: 0, send: 0 };
  const maxInFlight = { ws: 0, sse: 0, poll: 0, send: 0 };
  const clients = new Set();
  let maxConnections = 0;
  /** Every send body forwarded: its size and how many messages it held. */
  const sends = [];

  const extraPages = new Map();
  const tunnels = new Set();
  /** The client sockets of event streams being forwarded. */
  const streams = new Set();
  const proxy = {
    /** Serves `html` at `/test/<name>`. */
    page(name, html) {
      extraPages.set(name, html);
    },
    refuseWebSocket: false,
    refuseShared: 0,
    upgradeDelay: 0,
    bufferSse: false,
    down: false,
    counts,
    sends,
    inFlight,
    maxInFlight,
    get connections() {
      return clients.size;
    },
    get maxConnections() {
      return maxConnections;
    },
    resetMax() {
      maxConnections = clients.size;
      for (const name of Object.keys(maxInFlight)) maxInFlight[name] = inFlight[name];
    },
    failNext(n, endpoint = null) {
      failing = n;
      failingEndpoint = endpoint;
    },
    busySendNext(n, ms) {
      busySends = n;
      retryAfter = ms;
    },
    overloadNext(n, ms) {
      overloading = n;
      retryAfter = ms;
    },
    cut() {
      for (const socket of sockets) socket.destroy();
      sockets.clear();
    },
    cutStreams() {
      for (const socket of streams) socket.destroy();
      streams.clear();
    },
    silenceTunnels() {
      for (const tunnel of tunnels) tunnel.silent = true;
    },
    setUpstream(port) {
      upstreamPort = port;
    },
  };

  /** Answers the request itself instead of forwarding it, if it should. */
  function intercept(req, res) {
    const endpoint = new URL(req.url, "http://proxy").pathname.split("/").pop();
    if (proxy.refuseShared && req.method === "POST" && (endpoint === "sse" || endpoint === "poll")) {
      if (proxy.refuseShared === 400) {
        res.writeHead(400, { "Content-Type": "application/json" });
        res.end(JSON.stringify([{ t: "close", code: 4400, reason: "more sessions than allowed" }]));
      } else {
        res.writeHead(proxy.refuseShared, { Allow: "GET", "Content-Length": "0" });
        res.end();
      }
      return true;
    }
    if (busySends > 0 && endpoint === "send") {
      busySends -= 1;
      res.writeHead(503, {
        "Content-Type": "application/json",
        "Retry-After": String(Math.ceil(retryAfter / 1000)),
      });
      res.end(
        JSON.stringify([
          { t: "detach", code: 4503, reason: "the application is not keeping up", retry_after: retryAfter },
        ]),
      );
      return true;
    }
    if (failing > 0 && (failingEndpoint === null || failingEndpoint === endpoint)) {
      failing -= 1;
      res.writeHead(502, { "Content-Type": "text/html", Connection: "close" });
      res.end(ERROR_PAGE(502, "Bad Gateway"));
      return true;
    }
    if (overloading > 0) {
      overloading -= 1;
      res.writeHead(503, {
        "Content-Type": "application/json",
        "Retry-After": String(Math.ceil(retryAfter / 1000)),
      });
      res.end(
        JSON.stringify([
          { t: "close", code: 4503, reason: "too many sessions", retry_after: retryAfter },
        ]),
      );
      return true;
    }
    return false;
  }

  function count(url) {
    const { pathname, searchParams } = new URL(url, "http://proxy");
    const endpoint = pathname.split("/").pop();
    if (endpoint in counts) counts[endpoint] += 1;
    if (searchParams.get("probe") === "1") counts.probes += 1;
  }

  async function servePage(req, res) {
    const { pathname } = new URL(req.url, "http://proxy");
    const name = pathname.slice("/test/".length);
    if (extraPages.has(name)) {
      res.writeHead(200, { "Content-Type": TYPES[".html"], "Cache-Control": "no-store" });
      res.end(extraPages.get(name));
      return true;
    }
    if (!/^[\w-]+\.(html|js)$/.test(name)) return false;
    try {
      const body = await readFile(path.join(pages, name));
      res.writeHead(200, {
        "Content-Type": TYPES[path.extname(name)],
        "Cache-Control": "no-store",
      });
      res.end(body);
    } catch {
      res.writeHead(404).end("no such page");
    }
    return true;
  }

  /** Counts a request open until its answer ends (or is cut). */
  function open(url, res) {
    const endpoint = new URL(url, "http://proxy").pathname.split("/").pop();
    if (!(endpoint in inFlight)) return;
    inFlight[endpoint] += 1;
    maxInFlight[endpoint] = Math.max(maxInFlight[endpoint], inFlight[endpoint]);
    res.once("close", () => (inFlight[endpoint] -= 1));
  }

  const server = http.createServer(async (req, res) => {
    if (req.url.startsWith("/test/") && (await servePage(req, res))) return;
    count(req.url);
    open(req.url, res);
    if (intercept(req, res)) return;
    const upstream = http.request({
      host: "127.0.0.1",
      port: upstreamPort,
      method: req.method,
      path: req.url,
      headers: req.headers,
      agent: false,
    });
    upstream.on("socket", track);
    if (req.url.includes("/send")) {
      const chunks = [];
      req.on("data", (chunk) => chunks.push(chunk));
      req.on("end", () => {
        const body = Buffer.concat(chunks);
        let messages = 0;
        try {
          messages = JSON.parse(body).filter((f) => f.t === "msg" || f.t === "bin").length;
        } catch {
          messages = -1;
        }
        sends.push({ bytes: body.length, messages });
      });
    }
    req.pipe(upstream);
    upstream.on("response", (answer) => {
      const stream = (answer.headers["content-type"] || "").startsWith("text/event-stream");
      if (stream) {
        const socket = req.socket;
        streams.add(socket);
        res.once("close", () => streams.delete(socket));
      }
      res.writeHead(answer.statusCode, answer.headers);
      if (stream && proxy.bufferSse) {
        // A buffering middlebox: nothing until the whole body is in.
        const chunks = [];
        answer.on("data", (chunk) => chunks.push(chunk));
        answer.on("end", () => res.end(Buffer.concat(chunks)));
      } else {
        answer.pipe(res);
      }
      answer.on("error", () => res.destroy());
    });
    upstream.on("error", () => {
      if (!res.headersSent) {
        res.writeHead(502, { "Content-Type": "text/html" });
        res.end(ERROR_PAGE(502, "Bad Gateway"));
      } else {
        res.destroy();
      }
    });
    res.on("close", () => upstream.destroy());
  });

  server.on("connection", (socket) => {
    if (proxy.down) {
      socket.destroy();
      return;
    }
    track(socket);
    clients.add(socket);
    maxConnections = Math.max(maxConnections, clients.size);
    socket.once("close", () => clients.delete(socket));
  });

  server.on("upgrade", async (req, socket, head) => {
    count(req.url);
    if (proxy.upgradeDelay > 0) {
      await new Promise((resolve) => setTimeout(resolve, proxy.upgradeDelay));
      if (socket.destroyed) return;
    }
    const failingHere = failing > 0 && (failingEndpoint === null || failingEndpoint === "ws");
    if (proxy.refuseWebSocket || failingHere) {
      const status = proxy.refuseWebSocket ? [403, "Forbidden"] : [502, "Bad Gateway"];
      if (!proxy.refuseWebSocket) failing -= 1;
      const body = ERROR_PAGE(...status);
      socket.end(
        `HTTP/1.1 ${status[0]} ${status[1]}\r\nContent-Type: text/html\r\n` +
          `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      );
      return;
    }
    const upstream = net.connect(upstreamPort, "127.0.0.1");
    track(upstream);
    upstream.on("connect", () => {
      let headText = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) {
        headText += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      }
      upstream.write(`${headText}\r\n`);
      if (head.length) upstream.write(head);
      socket.on("data", (data) => tunnel.silent || upstream.write(data));
      upstream.on("data", (data) => tunnel.silent || socket.write(data));
    });
    const tunnel = { silent: false };
    tunnels.add(tunnel);
    const kill = () => {
      tunnels.delete(tunnel);
      socket.destroy();
      upstream.destroy();
    };
    upstream.on("error", kill);
    socket.on("error", kill);
    upstream.on("close", kill);
    socket.on("close", kill);
  });

  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  proxy.port = port;
  proxy.origin = `http://127.0.0.1:${port}`;
  proxy.close = () =>
    new Promise((resolve) => {
      proxy.cut();
      server.close(() => resolve());
      server.closeAllConnections?.();
    });
  return proxy;
}
