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
target/release/prom-bridge --bus-address "$bus" --mqtt "mqtt://127.0.0.1:$port" --node bench \
  2>"$dir/bridge.log" &
bridge=$!
pids+=("$bridge")
sleep 2
# The bridge's resident memory once a second.
( while kill -0 "$bridge" 2>/dev/null; do
    awk '/^VmRSS/ {print $2}' "/proc/$bridge/status" 2>/dev/null; sleep 1
  done ) >"$dir/rss.txt" &
pids+=($!)
target/release/examples/bridge_latency "$bus" "$port" bench "$secs" || { echo "daemon log:"; cat "$dir/daemon.log"; echo "bridge log:"; cat "$dir/bridge.log"; exit 1; }
sort -n "$dir/rss.txt" | awk 'NR==1 {min=$1} {max=$1; last=$1} END {
  printf "bridge RSS: min %.1f MiB, max %.1f MiB over %d samples\n", min/1024, max/1024, NR }'
awk '/^VmHWM/ {printf "bridge peak RSS (VmHWM): %.1f MiB\n", $2/1024}' "/proc/$bridge/status"
head -n 3 "$dir/rss.txt" | tr '\n' ' ' | sed 's/^/first RSS samples (KiB): /'; echo
tail -n 3 "$dir/rss.txt" | tr '\n' ' ' | sed 's/^/last RSS samples (KiB): /'; echo
