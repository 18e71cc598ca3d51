#!/bin/bash
# Runs as a oneshot service inside a booted Debian 12 (systemd as PID 1, in systemd-nspawn).
exec >/root/systemd-test.log 2>&1
set -u
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
result=PASSED
fail() { echo "in-systemd: FAILED: $*"; result=FAILED; }
ok() { echo "in-systemd: ok: $*"; }
wait_active() {
  for _ in $(seq 100); do [ "$(systemctl is-active prom-daemon)" = active ] && return 0; sleep 0.1; done
  return 1
}
prop() { systemctl show -P "$1" prom-daemon; }
apt-get update -q >/dev/null
apt-get install -y -q prom-daemon >/root/install.log 2>&1 || { cat /root/install.log; fail "install"; }
if wait_active; then ok "installed and started by systemd: $(prop ActiveState)/$(prop SubState), MainPID $(prop MainPID), user $(ps -o user= -p "$(prop MainPID)" 2>/dev/null || awk '/^Uid:/{print $2}' /proc/$(prop MainPID)/status)"; else fail "not active after install: $(systemctl status prom-daemon --no-pager)"; fi
[ "$(systemctl is-enabled prom-daemon)" = enabled ] && ok "enabled" || fail "not enabled"
promctl status && ok "promctl status over the real system bus" || fail "promctl status"
journalctl -u prom-daemon --no-pager -o cat | tail -n 5
journalctl -u prom-daemon --no-pager -o cat | grep -q "serving on the system bus" && ok "logs in the journal (journalctl -u prom-daemon)" || fail "no 'serving' line in the journal"
systemd-analyze security prom-daemon --no-pager | tail -n 1
pid1=$(prop MainPID)
# The daemon checks its bus connection every second: it must stay up under the real
# system bus's policy (it once took a refused Peer.Ping for a lost bus and exited).
sleep 3
[ "$(prop MainPID)" = "$pid1" ] && [ "$(systemctl is-active prom-daemon)" = active ] \
  && ok "still running after 3 s ($pid1)" \
  || { fail "the service did not stay up: MainPID $pid1 -> $(prop MainPID), $(systemctl is-active prom-daemon)"; journalctl -u prom-daemon --no-pager -o cat | tail -n 8; }
systemctl reload prom-daemon || fail "systemctl reload"
sleep 1
pid_after=$(prop MainPID)
if journalctl -u prom-daemon --no-pager -o cat | grep -q "SIGHUP: reloading" && [ "$pid_after" = "$pid1" ] \
  && [ "$(systemctl is-active prom-daemon)" = active ]; then
  ok "systemctl reload: SIGHUP reload in the same process ($pid1)"
else
  fail "reload: MainPID $pid1 -> $pid_after, $(systemctl is-active prom-daemon)"
  journalctl -u prom-daemon --no-pager -o cat | tail -n 20
fi
# prom-bridge under systemd: installed (enabled and started: the default broker address
# has none, so it retries), pointed at the host's broker, restarted; Type=notify, as its
# own user; what it publishes lands in /root/mqtt.txt (mosquitto_sub on the host).
bprop() { systemctl show -P "$1" prom-bridge; }
apt-get install -y -q prom-bridge >/root/install-bridge.log 2>&1 || { cat /root/install-bridge.log; fail "install prom-bridge"; }
[ "$(systemctl is-enabled prom-bridge)" = enabled ] && ok "prom-bridge enabled" || fail "prom-bridge not enabled"
sed -i "s|^#mqtt = .*|mqtt = \"mqtt://127.0.0.1:$(cat /root/mqtt-port)\"|; s|^#node = .*|node = \"booted\"|" \
  /etc/prom/prom-bridge.toml
systemctl restart prom-bridge || fail "systemctl restart prom-bridge"
for _ in $(seq 100); do grep -q '^prom/booted/availability online' /root/mqtt.txt 2>/dev/null && break; sleep 0.1; done
if [ "$(systemctl is-active prom-bridge)" = active ] && grep -q '^prom/booted/availability online' /root/mqtt.txt; then
  buid=$(awk '/^Uid:/{print $2}' "/proc/$(bprop MainPID)/status")
  ok "prom-bridge started by systemd (Type=$(bprop Type)): $(bprop ActiveState)/$(bprop SubState), uid $buid, online at the broker"
  [ "$buid" = "$(id -u prom-bridge)" ] && ok "prom-bridge runs as its user prom-bridge ($buid)" || fail "prom-bridge runs as uid $buid"
else
  fail "prom-bridge: $(systemctl is-active prom-bridge); $(journalctl -u prom-bridge --no-pager -o cat | tail -n 5)"
fi
for _ in $(seq 100); do grep -q '^homeassistant/sensor/prom_booted/cam0_label/config ' /root/mqtt.txt && break; sleep 0.1; done
grep -q '^homeassistant/sensor/prom_booted/cam0_label/config ' /root/mqtt.txt \
  && ok "Home Assistant discovery for the daemon's camera cam0 published" \
  || { fail "no discovery of cam0: $(grep -c . /root/mqtt.txt) messages"; cut -c1-160 /root/mqtt.txt; journalctl -u prom-bridge --no-pager -o cat | tail -n 8; promctl status; }
systemd-analyze security prom-bridge --no-pager | tail -n 1
apt-get remove -y -q prom-bridge >/root/remove-bridge.log 2>&1 || fail "remove prom-bridge"
[ "$(systemctl is-active prom-bridge)" != active ] && ok "remove stopped prom-bridge" || fail "prom-bridge active after remove"
apt-get install -y -q /root/prom-daemon_upgrade_amd64.deb >/root/upgrade.log 2>&1 || { cat /root/upgrade.log; fail "upgrade"; }
wait_active || fail "not active after the upgrade"
pid2=$(prop MainPID)
[ "$pid2" != "$pid1" ] && ok "upgrade restarted the service: MainPID $pid1 -> $pid2" || fail "upgrade did not restart (MainPID $pid2)"
apt-get remove -y -q prom-daemon >/root/remove.log 2>&1 || fail "remove"
state=$(systemctl is-active prom-daemon)
[ "$state" != active ] && ok "remove stopped the service ($state)" || fail "still active after remove"
echo "in-systemd: $result"
