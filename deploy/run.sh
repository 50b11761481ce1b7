#!/usr/bin/env bash
# Three `iomux serve` instances behind HAProxy (deploy/haproxy.cfg), in the
# foreground until Ctrl-C, which stops all four processes.
#
#   deploy/run.sh                   # front 127.0.0.1:1688, instances :1701-1703
#   iomux client                    # talks to the front (127.0.0.1:1688)
#   iomux bench --addr 127.0.0.1:1688
#
# Restart one instance without a client noticing (README, "Past one machine"):
#   echo "set server instances/i1 state drain" | socat stdio "$IOMUX_HAPROXY_SOCK"
#   kill -TERM <i1's PID, printed below>; start it again on its port
#   echo "set server instances/i1 state ready" | socat stdio "$IOMUX_HAPROXY_SOCK"
#
# Settings (environment): IOMUX (the binary; default: a release build of this
# checkout), IOMUX_MODEL (epoll), IOMUX_FRONT, IOMUX_I1..IOMUX_I3,
# IOMUX_HAPROXY_SOCK.
set -eu
cd "$(dirname "$0")/.."
command -v haproxy >/dev/null || {
  echo "run.sh: haproxy is not installed; on Debian: apt-get install -y haproxy" >&2
  exit 1
}
if [ -z "${IOMUX:-}" ]; then
  cargo build --release --quiet -p iomux-cli
  IOMUX=target/release/iomux
fi
export IOMUX_FRONT=${IOMUX_FRONT:-127.0.0.1:1688}
export IOMUX_I1=${IOMUX_I1:-127.0.0.1:1701}
export IOMUX_I2=${IOMUX_I2:-127.0.0.1:1702}
export IOMUX_I3=${IOMUX_I3:-127.0.0.1:1703}
export IOMUX_HAPROXY_SOCK=${IOMUX_HAPROXY_SOCK:-/tmp/iomux-haproxy.sock}

pids=()
stop() {
  trap - INT TERM EXIT
  # Only the processes started here, by PID: SIGTERM drains them.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait
}
trap stop INT TERM EXIT

for i in 1 2 3; do
  var=IOMUX_I$i
  "$IOMUX" serve --model "${IOMUX_MODEL:-epoll}" --addr "${!var}" &
  pids+=($!)
  echo "run.sh: instance i$i on ${!var}, PID $!"
done
haproxy -db -f deploy/haproxy.cfg &
pids+=($!)
echo "run.sh: HAProxy on $IOMUX_FRONT, PID $!, admin socket $IOMUX_HAPROXY_SOCK; Ctrl-C stops all"
wait -n || true
