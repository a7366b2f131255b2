#!/usr/bin/env bash
# The lab demo, on a fresh Debian 12 machine as root: installs what it needs, builds
# bootgate and the test boot image, creates a two-namespace lab (gateway `gw0` =
# 10.250.0.1/24 on a bridge), runs `bootgate serve` on inventory/lab with the embedded
# SQLite store, and PXE-boots the QEMU VM `vm0` (SeaBIOS + iPXE, TCG) through bootgate's
# DHCP and HTTP alone until it phones home and ends `provisioned`. Everything stays inside
# the namespaces it creates; they, the VM and the daemon are removed on exit (pass --keep to
# leave the daemon running; `--uefi` boots with OVMF instead of SeaBIOS).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

KEEP=0 FW=bios
for a in "$@"; do
  case "$a" in --keep) KEEP=1 ;; --uefi) FW=uefi ;; *) die "usage: $0 [--keep] [--uefi]" ;; esac
done
GW_NS=bgdemo-gw
RACK_NS=bgdemo-rack
CONFIG=inventory/lab/bootgate.toml
STATE=/var/lib/bootgate-lab          # state_dir of $CONFIG
API=http://10.250.0.1:8080
BIN=target/release/bootgate
RUN=/tmp/bootgate-demo
VM=vm0
MAC=52:54:00:d7:8e:1d                 # vm0's boot MAC in inventory/lab/hosts.toml

[ "$(id -u)" = 0 ] || die "run as root: the demo creates network namespaces"

step "installing dependencies"
apt_install iproute2 curl gcc ca-certificates python3 qemu-system-x86 ipxe-qemu seabios ovmf cpio

step "building bootgate (release)"
cargo build --release --bin bootgate

step "building the test boot image (Debian kernel + busybox initramfs that phones home)"
bash boot-images/build-test-image.sh --publish boot-images/test

mkdir -p "$RUN"
teardown() {
  for f in "$RUN"/*.pid; do
    [ -e "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  ip netns del "$GW_NS" 2>/dev/null || true
  ip netns del "$RACK_NS" 2>/dev/null || true
}

step "creating the lab: netns $GW_NS (gw0 10.250.0.1/24) and $RACK_NS (bridge br0, VM tap)"
teardown
rm -rf "$STATE"                       # the demo starts from an empty store every time
ip netns add "$GW_NS"; ip netns add "$RACK_NS"
ip -n "$GW_NS" link set lo up; ip -n "$RACK_NS" link set lo up
ip -n "$RACK_NS" link add br0 type bridge stp_state 0 forward_delay 0
ip -n "$RACK_NS" link set br0 up
ip -n "$RACK_NS" link add rk0 type veth peer name gw0 netns "$GW_NS"
ip -n "$RACK_NS" link set rk0 master br0 up
ip netns exec "$GW_NS" sysctl -qw net.ipv6.conf.gw0.accept_dad=0
ip -n "$GW_NS" addr add 10.250.0.1/24 dev gw0
ip -n "$GW_NS" link set gw0 up
ip -n "$RACK_NS" tuntap add dev tap-$VM mode tap
ip -n "$RACK_NS" link set tap-$VM master br0 up
[ "$KEEP" = 1 ] || trap teardown EXIT

step "checking the config: $BIN check-config --config $CONFIG"
"$BIN" check-config --config "$CONFIG"

step "starting: ip netns exec $GW_NS $BIN --config $CONFIG serve"
ip netns exec "$GW_NS" "$BIN" --config "$CONFIG" serve > "$RUN/bootgate.log" 2>&1 &
echo $! > "$RUN/bootgate.pid"
# iPXE waits ~13 s for IPv6 autoconf unless a router tells it there is none.
ip netns exec "$GW_NS" python3 tests/support/ra.py gw0 > "$RUN/ra.log" 2>&1 &
echo $! > "$RUN/ra.pid"
for _ in $(seq 1 100); do
  ip netns exec "$GW_NS" curl -sf "$API/healthz" >/dev/null 2>&1 && break
  kill -0 "$(cat "$RUN/bootgate.pid")" 2>/dev/null || { cat "$RUN/bootgate.log"; die "bootgate exited"; }
  sleep 0.1
done

step "health: curl $API/healthz"
ip netns exec "$GW_NS" curl -s "$API/healthz"; echo

step "hosts: bootgate hosts list --api $API"
ip netns exec "$GW_NS" "$BIN" hosts list --api "$API"

FWARGS=()
if [ "$FW" = uefi ]; then
  cp /usr/share/OVMF/OVMF_VARS_4M.fd "$RUN/$VM.vars.fd"
  FWARGS=(-drive "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
          -drive "if=pflash,format=raw,file=$RUN/$VM.vars.fd")
fi
step "PXE-booting $VM ($FW, QEMU TCG, MAC $MAC) through bootgate; serial console: $RUN/$VM.serial"
: > "$RUN/$VM.serial"
ip netns exec "$RACK_NS" qemu-system-x86_64 -name "$VM" -machine q35 -accel tcg -cpu max -smp 1 -m 512 \
  "${FWARGS[@]}" -nographic -serial "file:$RUN/$VM.serial" -monitor none -parallel none -nodefaults -vga none \
  -netdev "tap,id=n0,ifname=tap-$VM,script=no,downscript=no" \
  -device "virtio-net-pci,netdev=n0,mac=$MAC,bootindex=1" -no-reboot \
  </dev/null > "$RUN/$VM.qemu.log" 2>&1 &
echo $! > "$RUN/qemu.pid"
ok=0
for _ in $(seq 1 1200); do
  if grep -aq "BOOTGATE-MARKER: INSTALLED status=ok" "$RUN/$VM.serial"; then ok=1; break; fi
  grep -aqE "No bootable device|PXE-E|Kernel panic" "$RUN/$VM.serial" && break
  kill -0 "$(cat "$RUN/qemu.pid")" 2>/dev/null || break
  sleep 0.2
done
tr -d '\r' < "$RUN/$VM.serial" | grep -aE "bootgate|BOOTGATE|iPXE|Linux version" | head -20 || true
[ "$ok" = 1 ] || { tail -20 "$RUN/bootgate.log"; die "$VM did not boot through bootgate (see $RUN)"; }
sleep 1

step "$VM after the boot: bootgate hosts show $VM --api $API"
ip netns exec "$GW_NS" "$BIN" hosts show "$VM" --api "$API"

step "leases: bootgate leases list (read from the store directly)"
"$BIN" --config "$CONFIG" leases list

if [ "$KEEP" = 1 ]; then
  echo
  echo "left running: bootgate pid $(cat "$RUN/bootgate.pid"), log $RUN/bootgate.log, namespaces $GW_NS $RACK_NS"
  echo "stop it all with: kill \$(cat $RUN/*.pid); ip netns del $GW_NS; ip netns del $RACK_NS"
else
  step "stopping (SIGTERM) and removing the lab"
fi
echo "demo ok: $VM PXE-booted through bootgate and is $(ip netns exec "$GW_NS" "$BIN" hosts show "$VM" --api "$API" -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')"
