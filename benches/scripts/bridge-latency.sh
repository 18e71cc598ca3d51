#!/usr/bin/env bash
# prom-bridge's figures (issue 14 targets): the time from a D-Bus Classified signal to the
# MQTT message at a subscriber, and the bridge's memory, with the real daemon (two
# test-pattern cameras), a private dbus-daemon and mosquitto on loopback.
# Usage: benches/scripts/bridge-latency.sh [SECONDS=60] [FPS=30]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
secs=${1:-60}
fps=${2:-30}
cargo build --release -q -p prom-daemon --bin prom-daemon
cargo build --release -q -p prom-bridge --bin prom-bridge --example bridge_latency
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
cat >"$dir/bus.conf" <<CONF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>unix:path=$dir/bus</listen><auth>EXTERNAL</auth>
<policy context="default"><allow send_destination="*"/><allow eavesdrop="true"/><allow own="*"/>
</policy></busconfig>
CONF
dbus-daemon --config-file="$dir/bus.conf" --fork --print-pid >"$dir/bus.pid"
pids+=("$(cat "$dir/bus.pid")")
bus="unix:path=$dir/bus"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" >"$dir/mosquitto.conf"
/usr/sbin/mosquitto -c "$dir/mosquitto.conf" >/dev/null 2>&1 &
pids+=($!)
cat >"$dir/daemon.toml" <<CONF
model = "$PWD/models/fashion-mnist-prom.prom"
threads = 1
[[camera]]
name = "cam_a"
source = "testpattern"
fps = $fps
[[camera]]
name = "cam_b"
source = "testpattern"
fps = $fps
CONF
sleep 0.5
target/release/prom-daemon --config "$dir/daemon.toml" --bus-address "$bus" 2>"$dir/daemon.log" &
pids+=($!)
metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# As systemd/prom-bridge.service runs it (Environment=MALLOC_ARENA_MAX=1), unless the
# caller's environment says otherwise.
MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-1} target/release/prom-bridge --bus-address "$bus" --mqtt "mqtt://127.0.0.1:$port" --node bench \
  --metrics "127.0.0.1:$metrics_port" 2>"$dir/bridge.log" &
bridge=$!
pids+=("$bridge")
sleep 2
# The bridge's resident memory (KiB; all of it, and its anonymous part, without the
# binary's pages that the kernel maps in as code first runs) and live heap (bytes,
# prom_bridge_heap_bytes, counted by its allocator) once a second.
( while kill -0 "$bridge" 2>/dev/null; do
    rss=$(awk '/^(VmRSS|RssAnon):/ {printf "%s ", $2}' "/proc/$bridge/status" 2>/dev/null)
    heap=$(curl -s "http://127.0.0.1:$metrics_port/metrics" | awk '/^prom_bridge_heap_bytes/ {print $2}')
    echo "$rss${heap:-0}" >>"$dir/rss.txt"; sleep 1
  done ) &
pids+=($!)
target/release/examples/bridge_latency "$bus" "$port" bench "$secs" || { echo "daemon log:"; cat "$dir/daemon.log"; echo "bridge log:"; cat "$dir/bridge.log"; exit 1; }
awk '/^VmHWM/ {printf "bridge peak RSS (VmHWM): %.1f MiB\n", $2/1024}' "/proc/$bridge/status"
# Per minute: RSS and live heap (min, max); growth is judged after the first minute, once
# every buffer has reached its working size.
python3 - "$dir/rss.txt" <<'PY'
import sys
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if len(l.split()) == 3]
print(f"bridge RSS: min {min(r[0] for r in rows) / 1024:.1f} MiB, max {max(r[0] for r in rows) / 1024:.1f} MiB over {len(rows)} samples")
print("minute  RSS KiB (min-max)  anon KiB (min-max)  heap bytes (min-max)")
for m in range(0, len(rows), 60):
    part = rows[m:m + 60]
    cols = [[r[i] for r in part] for i in range(3)]
    print(f"{m // 60 + 1:6d}  " + "  ".join(f"{min(c):9d}-{max(c):<9d}" for c in cols))
after = rows[60:]
if len(after) >= 120:
    first, last = after[:60], after[-60:]
    mean = lambda xs: sum(xs) / len(xs)
    for name, i, unit in (("RSS", 0, "KiB"), ("anon RSS", 1, "KiB"), ("heap", 2, "bytes")):
        a, b = mean([r[i] for r in first]), mean([r[i] for r in last])
        print(f"{name}: minute 2 mean {a:.0f} {unit}, last minute mean {b:.0f} {unit}, change {b - a:+.0f} ({100 * (b - a) / a:+.2f}%)")
PY
