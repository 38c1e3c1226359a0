// A real redis-server for the cluster tests: on a free loopback port, no
// persistence, files in a temporary directory, stopped (and its files
// removed) by `stop()`. The repository's ./test.sh installs redis-server.

import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";

import { freePort } from "./servers.js";

/** Whether a Redis answers PING on `port`. */
function pong(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    let answer = "";
    socket.setTimeout(1000, () => socket.destroy());
    socket.on("connect", () => socket.write("PING\r\n"));
    socket.on("data", (chunk) => {
      answer += chunk;
      if (answer.includes("\r\n")) {
        socket.end();
        resolve(answer.startsWith("+PONG"));
      }
    });
    socket.on("error", () => resolve(false));
    socket.on("close", () => resolve(false));
  });
}

/** Starts redis-server: `{ url, stop() }`. */
export async function startRedis() {
  const dir = await mkdtemp(path.join(tmpdir(), "holdfast-redis-"));
  const port = await freePort();
  const child = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let failed = null;
  child.once("error", (error) => (failed = error));
  const deadline = Date.now() + 10000;
  while (!(await pong(port))) {
    if (failed) throw new Error(`redis-server is missing: the repository's ./test.sh installs it (${failed.message})`);
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill("SIGKILL");
      await rm(dir, { recursive: true, force: true });
      throw new Error("redis-server did not start");
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      child.kill("SIGKILL");
      await new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once("exit", resolve)));
      await rm(dir, { recursive: true, force: true });
    },
  };
}
