// Starting the Rust examples (echo, chat) for the tests: each on a port the
// operating system picks, found in the example's own log line.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import net from "node:net";
import { fileURLToPath } from "node:url";
import path from "node:path";

export const root = fileURLToPath(new URL("../../../../", import.meta.url));

function binary(name) {
  const target = process.env.CARGO_TARGET_DIR || path.join(root, "target");
  const file = path.join(target, "debug", "examples", name);
  if (!existsSync(file)) {
    throw new Error(`${file} is missing: run \`cargo build --example ${name}\` (test/run.sh does)`);
  }
  return file;
}

/**
 * Starts `cargo`'s build of example `name` on `addr` (default: a free
 * loopback port), with `args` after it, and resolves once it listens:
 * `{ origin, port, stop() }`.
 */
export function startExample(name, { addr = "127.0.0.1:0", args = [], timeout = 15000 } = {}) {
  const child = spawn(binary(name), ["--addr", addr, ...args], {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn,echo=info,chat=info" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill();
      reject(new Error(`${name} did not start within ${timeout} ms:\n${log}`));
    }, timeout);
    const onData = (chunk) => {
      log += chunk;
      const found = /on http:\/\/([\d.]+):(\d+)/.exec(log);
      if (!found) return;
      clearTimeout(timer);
      child.stdout.off("data", onData);
      child.stderr.off("data", onData);
      child.stdout.resume();
      child.stderr.resume();
      const port = Number(found[2]);
      resolve({
        origin: `http://${found[1]}:${port}`,
        port,
        child,
        stop: () => stopChild(child),
      });
    };
    child.stdout.setEncoding("utf8").on("data", onData);
    child.stderr.setEncoding("utf8").on("data", onData);
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited with ${code} before listening:\n${log}`));
    });
  });
}

/** Kills a child process and waits (bounded) for it to be gone. */
export function stopChild(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
    }, 3000);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill("SIGTERM");
  });
}

/** A loopback port nobody listens on (now). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Fails clearly when a server embeds an older holdfast.js than the one
 * under test (the examples embed it at build time). */
export async function assertEmbedsCurrentClient(origin) {
  const { readFile } = await import("node:fs/promises");
  const local = await readFile(new URL("../../holdfast.js", import.meta.url), "utf8");
  const served = await (await fetch(`${origin}/realtime/client.js`)).text();
  if (served !== local) {
    throw new Error(
      "the example serves an older holdfast.js than client/js/holdfast.js: " +
        "rebuild it (cargo build --example echo --example chat; test/run.sh does)",
    );
  }
}
