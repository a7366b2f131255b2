#!/usr/bin/env bash
# The lab demo, on a fresh Debian 12 machine as root: installs what it needs, builds
# bootgate, creates a two-namespace lab (gateway `gw0` = 10.250.0.1/24 on a bridge with a
# client NIC), runs `bootgate serve` on inventory/lab with the embedded SQLite store, and
# shows the hosts and health. Everything stays inside the namespaces it creates; they and
# the daemon are removed on exit (pass --keep to leave them running).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1
GW_NS=bgdemo-gw
RACK_NS=bgdemo-rack
CONFIG=inventory/lab/bootgate.toml
API=http://10.250.0.1:8080
BIN=target/release/bootgate
PIDFILE=/tmp/bootgate-demo.pid

[ "$(id -u)" = 0 ] || die "run as root: the demo creates network namespaces"

step "installing dependencies"
apt_install iproute2 curl gcc ca-certificates

step "building bootgate (release)"
cargo build --release --bin bootgate

teardown() {
  if [ -f "$PIDFILE" ]; then
    kill "$(cat "$PIDFILE")" 2>/dev/null || true
    rm -f "$PIDFILE"
  fi
  ip netns del "$GW_NS" 2>/dev/null || true
  ip netns del "$RACK_NS" 2>/dev/null || true
}

step "creating the lab: netns $GW_NS (gw0 10.250.0.1/24) and $RACK_NS (bridge br0, client eth0)"
teardown
ip netns add "$GW_NS"; ip netns add "$RACK_NS"
ip -n "$GW_NS" link set lo up; ip -n "$RACK_NS" link set lo up
ip -n "$RACK_NS" link add br0 type bridge stp_state 0 forward_delay 0
ip -n "$RACK_NS" link set br0 up
ip -n "$RACK_NS" link add rk0 type veth peer name gw0 netns "$GW_NS"
ip -n "$RACK_NS" link set rk0 master br0 up
ip -n "$GW_NS" addr add 10.250.0.1/24 dev gw0
ip -n "$GW_NS" link set gw0 up
ip -n "$RACK_NS" link add eth0 type veth peer name eth0-br
ip -n "$RACK_NS" link set eth0-br master br0 up
ip -n "$RACK_NS" link set eth0 up
[ "$KEEP" = 1 ] || trap teardown EXIT

step "checking the config: $BIN check-config --config $CONFIG"
"$BIN" check-config --config "$CONFIG"

step "starting: ip netns exec $GW_NS $BIN --config $CONFIG serve"
ip netns exec "$GW_NS" "$BIN" --config "$CONFIG" serve > /tmp/bootgate-demo.log 2>&1 &
echo $! > "$PIDFILE"
for _ in $(seq 1 100); do
  ip netns exec "$GW_NS" curl -sf "$API/healthz" >/dev/null 2>&1 && break
  kill -0 "$(cat "$PIDFILE")" 2>/dev/null || { cat /tmp/bootgate-demo.log; die "bootgate exited"; }
  sleep 0.1
done

step "health: curl $API/healthz"
ip netns exec "$GW_NS" curl -s "$API/healthz"; echo

step "hosts: bootgate hosts list --api $API"
ip netns exec "$GW_NS" "$BIN" hosts list --api "$API"

step "events: bootgate events --limit 8 (read from the store directly)"
"$BIN" --config "$CONFIG" events --limit 8

if [ "$KEEP" = 1 ]; then
  echo
  echo "left running: daemon pid $(cat "$PIDFILE"), log /tmp/bootgate-demo.log, namespaces $GW_NS $RACK_NS"
  echo "try: ip netns exec $GW_NS $BIN hosts show vm0 --api $API"
else
  step "stopping (SIGTERM) and removing the lab"
fi
echo "demo ok"
