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
apt-get install -y -q /root/prom-daemon_upgrade_amd64.deb >/root/upgrade.log 2>&1 || { cat /root/upgrade.log; fail "upgrade"; }
wait_active || fail "not active after the upgrade"
pid2=$(prop MainPID)
[ "$pid2" != "$pid1" ] && ok "upgrade restarted the service: MainPID $pid1 -> $pid2" || fail "upgrade did not restart (MainPID $pid2)"
apt-get remove -y -q prom-daemon >/root/remove.log 2>&1 || fail "remove"
state=$(systemctl is-active prom-daemon)
[ "$state" != active ] && ok "remove stopped the service ($state)" || fail "still active after remove"
echo "in-systemd: $result"
