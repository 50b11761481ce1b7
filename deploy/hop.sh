#!/usr/bin/env bash
# What the balancer hop costs: `iomux bench --addr` against one instance
# directly and through HAProxy (deploy/haproxy.cfg, every server line on
# that same instance), in the same rounds. The direct row's CPU is the
# instance's; the front row's is HAProxy's own (from /proc/PID/stat).
# The instance and HAProxy share CPU 0; the bench's load runs on the others.
#
#   deploy/hop.sh [extra bench flags, e.g. --json hop.json]
set -eu
cd "$(dirname "$0")/.."
command -v haproxy >/dev/null || {
  echo "hop.sh: haproxy is not installed; on Debian: apt-get install -y haproxy" >&2
  exit 1
}
if [ -z "${IOMUX:-}" ]; then
  cargo build --release --quiet -p iomux-cli
  IOMUX=target/release/iomux
fi
dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# The instance picks its own port and prints it.
"$IOMUX" serve --model epoll --addr 127.0.0.1:0 --pin-cpu 0 >"$dir/serve.out" &
pids+=($!)
instance_pid=$!
for _ in $(seq 100); do [ -s "$dir/serve.out" ] && break; sleep 0.05; done
instance=$(awk 'NR==1 {print $NF}' "$dir/serve.out")
export IOMUX_FRONT=127.0.0.1:$(free_port)
export IOMUX_I1=$instance IOMUX_I2=$instance IOMUX_I3=$instance
export IOMUX_HAPROXY_SOCK=$dir/haproxy.sock
taskset -c 0 haproxy -db -f deploy/haproxy.cfg >"$dir/haproxy.log" 2>&1 &
pids+=($!)
haproxy_pid=$!
for _ in $(seq 100); do [ -S "$IOMUX_HAPROXY_SOCK" ] && break; sleep 0.05; done
sleep 0.5 # the first health checks
echo "hop.sh: instance $instance (PID $instance_pid), HAProxy $IOMUX_FRONT (PID $haproxy_pid)" >&2
"$IOMUX" bench \
  --addr "$instance,pid=$instance_pid" \
  --addr "$IOMUX_FRONT,pid=$haproxy_pid" \
  --conns 1,100 --paced-conns 100 --rate 20000 --duration 2 --rounds 3 "$@"
