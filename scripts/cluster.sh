#!/usr/bin/env bash
# A local holdfast cluster to try: a Redis, three echo nodes that keep their
# sessions in it, and nginx balancing round-robin (no affinity) in front.
#
#   scripts/cluster.sh            start it; Ctrl-C stops everything
#
# Then connect to http://127.0.0.1:3000/realtime (e.g.
# `cargo run --example client -- --url http://127.0.0.1:3000/realtime`),
# and kill or restart nodes while it runs:
#
#   kill -9 $(cat "$dir"/node2.pid)      # the path is printed at start
#
# Needs redis-server and nginx (`apt-get install -y redis-server nginx`).
# Ports: nginx 3000, nodes 3001-3003, Redis 6390 (override with
# HOLDFAST_PORT, HOLDFAST_REDIS_PORT).
set -euo pipefail
cd "$(dirname "$0")/.."

port=${HOLDFAST_PORT:-3000}
redis_port=${HOLDFAST_REDIS_PORT:-6390}
nginx=$(command -v nginx || echo /usr/sbin/nginx)
for tool in redis-server "$nginx"; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install -y redis-server nginx" >&2; exit 1; }
done

cargo build --example echo
dir=$(mktemp -d -t holdfast-cluster-XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$dir" --logfile "$dir/redis.log" &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

upstreams=""
for n in 1 2 3; do
  node_port=$((port + n))
  target/debug/examples/echo --addr "127.0.0.1:$node_port" --redis "redis://127.0.0.1:$redis_port" \
    >"$dir/node$n.log" 2>&1 &
  pids+=($!)
  echo $! >"$dir/node$n.pid"
  upstreams+="    server 127.0.0.1:$node_port max_fails=1 fail_timeout=1s;"$'\n'
done

cat >"$dir/nginx.conf" <<CONF
daemon off;
master_process off;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log $dir/nginx-access.log;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  upstream holdfast_nodes {
$upstreams  }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://holdfast_nodes;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_buffering off;
      proxy_read_timeout 1h;
    }
  }
}
CONF
"$nginx" -p "$dir" -c "$dir/nginx.conf" -e "$dir/nginx-error.log" &
pids+=($!)

cat <<INFO
holdfast cluster on http://127.0.0.1:$port/realtime (nginx, round-robin)
  nodes: 127.0.0.1:$((port + 1)) $((port + 2)) $((port + 3)), Redis on 127.0.0.1:$redis_port
  logs and pid files: $dir
  kill a node:    kill -9 \$(cat $dir/node2.pid)
  restart it:     target/debug/examples/echo --addr 127.0.0.1:$((port + 2)) --redis redis://127.0.0.1:$redis_port
Ctrl-C stops everything.
INFO
wait
