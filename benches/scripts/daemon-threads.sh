#!/bin/bash
# Daemon throughput at 1 and 2 inference threads with a camera at high fps (issue 12 item 7).
#
# usage: [MODEL=FILE] [THREADS="1 2"] benches/scripts/daemon-threads.sh [ROUNDS [SECONDS [FPS]]]
#        [-- BIN_DIR...]
#
# For each round and each BIN_DIR (default target/release; give two to compare builds,
# alternating), and each value of THREADS in turn (default "1 2"; `auto` is the daemon's
# default): starts a private dbus-daemon and prom-daemon with MODEL (default: the embedded
# model) and the test-pattern camera at FPS (default 1000), waits 3 s, then reads
# the camera's counters over D-Bus (`promctl status --json`) at the start and end of a
# SECONDS window (default 10). Prints frames captured, dropped and classified per second
# and the daemon's latency percentiles. Build first: cargo build --release.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROUNDS=3 SECONDS_=10 FPS=1000
[ $# -gt 0 ] && [ "$1" != -- ] && { ROUNDS=$1; shift; }
[ $# -gt 0 ] && [ "$1" != -- ] && { SECONDS_=$1; shift; }
[ $# -gt 0 ] && [ "$1" != -- ] && { FPS=$1; shift; }
[ $# -gt 0 ] && [ "$1" = -- ] && shift
BINS=("$@")
read -r -a THREAD_COUNTS <<<"${THREADS:-1 2}"
MODEL_ARGS=(--embedded-model)
[ -n "${MODEL:-}" ] && MODEL_ARGS=(--model "$MODEL")
[ ${#BINS[@]} -eq 0 ] && BINS=(target/release)

measure() { # BIN THREADS
  local bin=$1 threads=$2 dir bus daemon a s1 s2 t1 t2 used
  dir=$(mktemp -d)
  a="unix:path=$dir/bus"
  dbus-daemon --session --address="$a" --nofork --nopidfile >/dev/null 2>&1 &
  bus=$!
  for _ in $(seq 50); do [ -S "$dir/bus" ] && break; sleep 0.1; done
  "$bin/prom-daemon" --bus-address "$a" "${MODEL_ARGS[@]}" --source testpattern --fps "$FPS" \
    --threads "$threads" >"$dir/log" 2>&1 &
  daemon=$!
  sleep 3
  s1=$("$bin/promctl" status --bus-address "$a" --json); t1=$(date +%s.%N)
  sleep "$SECONDS_"
  s2=$("$bin/promctl" status --bus-address "$a" --json); t2=$(date +%s.%N)
  used=$("$bin/promctl" status --bus-address "$a" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["threads"])')
  kill "$daemon" "$bus"; wait "$daemon" "$bus" 2>/dev/null || true
  rm -rf "$dir"
  printf '(ran %s)  ' "$used"
  python3 - "$s1" "$s2" "$t1" "$t2" <<'PY'
import json, sys
a, b = (json.loads(s)["cameras"][0] for s in sys.argv[1:3])
dt = float(sys.argv[4]) - float(sys.argv[3])
rate = {k: (b[k] - a[k]) / dt for k in ("frames_captured", "frames_dropped", "frames_classified")}
print("captured/s {frames_captured:6.1f}  dropped/s {frames_dropped:6.1f}  classified/s "
      "{frames_classified:6.1f}".format(**rate),
      f" p50 {b['latency_p50_ms']:.2f} ms  p99 {b['latency_p99_ms']:.2f} ms")
PY
}

for round in $(seq "$ROUNDS"); do
  for bin in "${BINS[@]}"; do
    for threads in "${THREAD_COUNTS[@]}"; do
      printf 'round %s  %-28s threads %s  ' "$round" "$bin" "$threads"
      measure "$bin" "$threads"
    done
  done
done
