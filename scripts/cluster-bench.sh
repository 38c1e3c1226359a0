#!/usr/bin/env bash
# Figures for BENCHMARKS.md's "Several nodes (Redis)" section, measured with
# the examples as users run them (release builds):
#
#   1. server CPU per echoed message on each transport, memory store against
#      Redis store, and redis-server's own CPU per message (the echo node and
#      redis-server pinned to CPU 0, the client example to CPU 1);
#   2. takeover after kill -9: two nodes behind nginx round-robin, a
#      client streaming; the owner is killed; the time until the session is
#      attached again on the other node (its log), several trials;
#   3. a rolling restart's pause: the same with SIGTERM (hand-over);
#   4. a long-poll echo's round trip (send, then the poll that brings the
#      echo; keep-alive connections) on the owner node and on the other
#      node, which carries it to the owner over Redis.
#
#   scripts/cluster-bench.sh [MESSAGES]     (default 20000 per transport)
#
# Needs redis-server, nginx and taskset. Prints figures; writes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-20000}
nginx=$(command -v nginx || echo /usr/sbin/nginx)
cargo build --release --example echo --example client >/dev/null 2>&1
bin=target/release/examples
dir=$(mktemp -d -t holdfast-cbench-XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, 1/100 s
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

redis_port=$(free_port)
taskset -c 0 redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
  --logfile "$dir/redis.log" &
redis_pid=$!; pids+=("$redis_pid")
wait_port "$redis_port"
redis="redis://127.0.0.1:$redis_port"

echo "== 1. CPU per echoed message ($count messages of a few bytes, one client, pipelined)"
printf '%-10s %-10s %14s %14s\n' transport store "node µs/msg" "redis µs/msg"
for store in memory redis; do
  port=$(free_port)
  args=(--addr "127.0.0.1:$port"); [ "$store" = redis ] && args+=(--redis "$redis")
  RUST_LOG=warn taskset -c 0 "$bin/echo" "${args[@]}" >"$dir/echo-$store.log" 2>&1 &
  node=$!; pids+=("$node")
  wait_port "$port"
  for transport in websocket sse long-poll; do
    n0=$(ticks "$node"); r0=$(ticks "$redis_pid")
    taskset -c 1 "$bin/client" --url "http://127.0.0.1:$port/realtime" --transport "$transport" \
      --count "$count" >"$dir/client.json"
    n1=$(ticks "$node"); r1=$(ticks "$redis_pid")
    grep -q '"lost":0,"duplicated":0,"reordered":0' "$dir/client.json" || { cat "$dir/client.json"; exit 1; }
    awk -v n=$((n1 - n0)) -v r=$((r1 - r0)) -v c="$count" -v t="$transport" -v s="$store" \
      'BEGIN { printf "%-10s %-10s %14.1f %14.1f\n", t, s, n * 10000 / c, r * 10000 / c }'
  done
  kill "$node"; wait "$node" 2>/dev/null || true
done

# Two nodes behind nginx round-robin; prints the nginx port.
start_pair() {
  a=$(free_port); b=$(free_port); front=$(free_port)
  for p in "$a" "$b"; do
    RUST_LOG=info,holdfast_server::session=debug "$bin/echo" --addr "127.0.0.1:$p" --redis "$redis" \
      >"$dir/node-$p.log" 2>&1 &
    pids+=($!); echo $! >"$dir/node-$p.pid"
    wait_port "$p"
  done
  cat >"$dir/nginx.conf" <<CONF
daemon off; master_process off; pid $dir/nginx.pid; error_log $dir/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off; client_body_temp_path $dir/body; proxy_temp_path $dir/proxy;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  upstream nodes { server 127.0.0.1:$a max_fails=1 fail_timeout=1s; server 127.0.0.1:$b max_fails=1 fail_timeout=1s; }
  server { listen 127.0.0.1:$front;
    location / { proxy_pass http://nodes; proxy_http_version 1.1; proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade; proxy_buffering off; proxy_read_timeout 1h; } }
}
CONF
  "$nginx" -p "$dir" -c "$dir/nginx.conf" &
  pids+=($!)
  wait_port "$front"
}

# Seconds since the epoch of a log line's timestamp (UTC, RFC 3339).
stamp() { date -u -d "$(sed 's/\x1b\[[0-9;]*m//g' <<<"$1" | cut -d' ' -f1)" +%s.%N; }

measure() {  # $1: KILL or TERM
  signal=$1
  start_pair
  for transport in websocket long-poll; do
    for trial in 1 2 3; do
      la=$(wc -l <"$dir/node-$a.log"); lb=$(wc -l <"$dir/node-$b.log")
      RUST_LOG=warn "$bin/client" --url "http://127.0.0.1:$front/realtime" --transport "$transport" \
        --count 400000 --timeout 60 >"$dir/soak.json" 2>/dev/null &
      client=$!
      sleep 1.5
      owner=$a; other=$b
      if tail -n +"$((lb + 1))" "$dir/node-$b.log" | grep -q "session opened"; then owner=$b; other=$a; fi
      lines=$(wc -l <"$dir/node-$other.log")
      t0=$(date -u +%s.%N)
      kill -"$signal" "$(cat "$dir/node-$owner.pid")"
      resumed=""
      for _ in $(seq 200); do
        resumed=$(tail -n +"$((lines + 1))" "$dir/node-$other.log" | grep -m1 "session resumed" || true)
        [ -n "$resumed" ] && break
        sleep 0.05
      done
      kill "$client" 2>/dev/null || true; wait "$client" 2>/dev/null || true
      if [ -n "$resumed" ]; then
        awk -v a="$t0" -v b="$(stamp "$resumed")" -v t="$transport" -v n="$trial" \
          'BEGIN { printf "%-10s trial %d: %6.0f ms\n", t, n, (b - a) * 1000 }'
      else
        echo "$transport trial $trial: not resumed within 10 s"
      fi
      # The killed node comes back on its port, with a clean log.
      RUST_LOG=info,holdfast_server::session=debug "$bin/echo" --addr "127.0.0.1:$owner" --redis "$redis" \
        >"$dir/node-$owner.log" 2>&1 &
      pids+=($!); echo $! >"$dir/node-$owner.pid"
      wait_port "$owner"
    done
  done
}

echo
echo "== 2. kill -9 of the owner → the session attached again on the other node"
measure KILL
echo
echo "== 3. SIGTERM (hand-over) of the owner → the session attached again on the other node"
measure TERM

echo
echo "== 4. long-poll echo round trip on the owner and on the other node"
start_pair
cat >"$dir/rtt.py" <<'PY'
# Long-poll echo round trip (POST /send, then the poll that brings the echo)
# on the owner node and on another node, keep-alive connections.
import http.client, json, sys, time
a, b, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def conn(port): return http.client.HTTPConnection("127.0.0.1", port)
ca = conn(a)
ca.request("GET", "/realtime/poll?v=1"); body = ca.getresponse().read()
key = json.loads(body)[0]["key"]
seq = 0; last = 0
def rtt(port_conn):
    global seq, last
    seq += 1
    t0 = time.perf_counter()
    port_conn.request("POST", "/realtime/send?v=1", body=json.dumps([{"t":"msg","seq":seq,"d":"x"*64}]),
                      headers={"Holdfast-Key": key, "Content-Type": "application/json"})
    port_conn.getresponse().read()
    while True:
        port_conn.request("GET", f"/realtime/poll?v=1&last={last}", headers={"Holdfast-Key": key})
        frames = json.loads(port_conn.getresponse().read())
        msgs = [f for f in frames if f.get("t") == "msg"]
        if msgs:
            last = msgs[-1]["seq"]; break
    return (time.perf_counter() - t0) * 1000
for name, port in (("owner", a), ("other node", b), ("owner", a), ("other node", b)):
    c = conn(port)
    for _ in range(20): rtt(c)
    xs = sorted(rtt(c) for _ in range(n))
    print(f"{name:10s} p50 {xs[len(xs)//2]:.2f} ms  p99 {xs[int(len(xs)*0.99)]:.2f} ms")
PY
python3 "$dir/rtt.py" "$a" "$b" 300
