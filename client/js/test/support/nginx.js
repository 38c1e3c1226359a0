// A real nginx in front of a test server, started by the tests with a
// configuration they write: loopback only, files in a temporary directory,
// stopped (and its files removed) by `stop()`.
//
// Profiles mirror the Rust tests' (tests/nginx_support): `corporate` is
// nginx's default proxying — HTTP/1.0 to the upstream, Upgrade/Connection
// not forwarded, proxy_buffering on, default buffer sizes — with the
// `Host` header kept.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";

// `Host` is kept: nginx's default rewrites it to the upstream's address,
// which defeats any same-origin check (holdfast's default refuses such
// browser requests with 403; the README's nginx section says so).
const PROFILES = {
  corporate: ["proxy_http_version 1.0;", "proxy_buffering on;", "proxy_set_header Host $http_host;"],
};

function nginxBinary() {
  const dirs = (process.env.PATH || "").split(":").concat(["/usr/sbin", "/usr/local/sbin"]);
  for (const dir of dirs) {
    const file = path.join(dir, "nginx");
    if (existsSync(file)) return file;
  }
  throw new Error("nginx is missing: the repository's ./test.sh installs it (apt-get install nginx)");
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Starts nginx proxying everything to `upstreamPort`: `{ origin, stop() }`. */
export async function startNginx(upstreamPort, profile = "corporate") {
  const directives = PROFILES[profile];
  if (!directives) throw new Error(`unknown nginx profile ${profile}`);
  return launch(
    (port, dir, token) => `${preamble(dir)}    server {
        listen 127.0.0.1:${port};
        location = /__holdfast_ready { return 200 '${token}'; }
        location / {
            proxy_pass http://127.0.0.1:${upstreamPort};
            ${directives.join("\n            ")}
        }
    }
}
`,
  );
}

/**
 * Starts nginx balancing round-robin (no affinity) over holdfast nodes on
 * `upstreamPorts`, as the README advises (upgrades forwarded, buffering
 * off, `Host` kept), and serving the files of `pages` at `/test/`:
 * `{ origin, stop() }`.
 */
export async function startBalancedNginx(upstreamPorts, pages) {
  const servers = upstreamPorts.map((port) => `        server 127.0.0.1:${port} max_fails=1 fail_timeout=1s;`).join("\n");
  return launch(
    (port, dir, token) => `${preamble(dir)}    map $http_upgrade $connection_upgrade { default upgrade; '' close; }
    upstream holdfast_nodes {
${servers}
    }
    server {
        listen 127.0.0.1:${port};
        location = /__holdfast_ready { return 200 '${token}'; }
        location /test/ {
            alias ${pages}/;
            default_type text/html;
            add_header Cache-Control no-store;
        }
        location / {
            proxy_pass http://holdfast_nodes;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_read_timeout 1h;
        }
    }
}
`,
  );
}

/** What every configuration starts with: one foreground process, every
 * file in `dir`. Ends inside the `http` block. */
function preamble(dir) {
  return `daemon off;
master_process off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
events { worker_connections 1024; }
http {
    access_log ${dir}/access.log;
    client_body_temp_path ${dir}/client_body;
    proxy_temp_path ${dir}/proxy;
    fastcgi_temp_path ${dir}/fastcgi;
    uwsgi_temp_path ${dir}/uwsgi;
    scgi_temp_path ${dir}/scgi;
`;
}

/**
 * Runs nginx with the configuration `conf(port, dir, token)` on a free
 * port, in a fresh temporary directory, and resolves once that very
 * instance answers `/__holdfast_ready` with `token`.
 */
async function launch(conf) {
  const binary = nginxBinary();
  const dir = await mkdtemp(path.join(tmpdir(), "holdfast-nginx-"));
  const token = `ready-${process.pid}-${Date.now()}`;
  for (let tries = 0; tries < 5; tries++) {
    const port = await freePort();
    await writeFile(path.join(dir, "nginx.conf"), conf(port, dir, token));
    const child = spawn(binary, ["-p", dir, "-c", path.join(dir, "nginx.conf")], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (chunk) => (stderr += chunk));
    const origin = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 10000;
    let exited = false;
    child.once("exit", () => (exited = true));
    while (!exited && Date.now() < deadline) {
      try {
        const response = await fetch(`${origin}/__holdfast_ready`);
        if ((await response.text()) === token) {
          return {
            origin,
            async stop() {
              child.kill("SIGTERM");
              await new Promise((resolve) => (child.exitCode !== null ? resolve() : child.once("exit", resolve)));
              await rm(dir, { recursive: true, force: true });
            },
          };
        }
      } catch {
        // not listening yet
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    child.kill("SIGKILL");
    if (!/Address already in use/.test(stderr)) {
      await rm(dir, { recursive: true, force: true });
      throw new Error(`nginx did not start:\n${stderr}`);
    }
    // Another process took the port between the probe and nginx: retry.
  }
  await rm(dir, { recursive: true, force: true });
  throw new Error("nginx could not find a free port");
}
