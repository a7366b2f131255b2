#!/usr/bin/env bash
# The lab demo, on a fresh Debian 12 machine as root: installs what it needs, builds
# bootgate and the test boot image, creates a two-namespace lab (gateway `gw0` =
# 10.250.0.1/24 on a bridge), runs `bootgate serve` on inventory/lab with the embedded
# SQLite store, and PXE-boots the QEMU VM `vm0` (SeaBIOS + iPXE, TCG) through bootgate's
# DHCP and HTTP alone until it phones home and ends `provisioned`. Then it onboards rack
# lab-r2: three libvirt VMs (vm4-vm6) in a private libvirtd behind sushy-emulator's libvirt
# driver (their Redfish BMC), added to the running daemon's inventory as the one file
# `rack plan --write` makes, with `bootgate rack onboard lab-r2 --no-handoff`, and prints
# the rack report and the site's IP audit. The daemon runs on a scratch copy of
# inventory/lab (the repository's inventory is never changed). Everything stays inside the
# namespaces it creates; they, the VMs, libvirtd, the BMC emulator and the daemon are removed
# on exit (pass --keep to leave them running; `--uefi` boots vm0 with OVMF instead of SeaBIOS).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

KEEP=0 FW=bios
for a in "$@"; do
  case "$a" in --keep) KEEP=1 ;; --uefi) FW=uefi ;; *) die "usage: $0 [--keep] [--uefi]" ;; esac
done
GW_NS=bgdemo-gw
RACK_NS=bgdemo-rack
RUN=/tmp/bootgate-demo
SITE=$RUN/site                        # scratch copy of inventory/lab the daemon runs on
CONFIG=$SITE/bootgate.toml
STATE=/var/lib/bootgate-lab          # state_dir of $CONFIG
API=http://10.250.0.1:8080
BIN=$PWD/target/release/bootgate
RACK=lab-r2
MANIFEST=inventory/lab/manifests/lab-r2.toml  # the rack manifest (nodes from lab-r2.csv)
RACK_VMS=(vm4 vm5 vm6)
LV=$RUN/libvirt                       # the private libvirtd's config, socket and logs
LV_URI="qemu:///system?socket=$LV/sock/libvirt-sock"
VM=vm0
MAC=52:54:00:d7:8e:1d                 # vm0's boot MAC in inventory/lab/hosts.toml

[ "$(id -u)" = 0 ] || die "run as root: the demo creates network namespaces"

step "installing dependencies"
apt_install iproute2 curl gcc ca-certificates python3 qemu-system-x86 ipxe-qemu seabios ovmf cpio \
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config python3-venv python3-dev
venv_install                          # sushy-emulator + libvirt-python (scripts/requirements-test.txt)

step "building bootgate (release)"
cargo build --release --bin bootgate

step "building the test boot image (Debian kernel + busybox initramfs that phones home)"
bash boot-images/build-test-image.sh --publish boot-images/test

mkdir -p "$RUN"
teardown() {
  # libvirtd's QEMUs outlive it: destroy our domains before killing it
  if [ -S "$LV/sock/libvirt-sock" ]; then
    for vm in "${RACK_VMS[@]}"; do
      timeout 30 virsh -q -c "$LV_URI" destroy "$vm" >/dev/null 2>&1 || true
      timeout 30 virsh -q -c "$LV_URI" undefine "$vm" >/dev/null 2>&1 || true
    done
  fi
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
rm -rf "$SITE" "$LV"
mkdir -p "$SITE"
cp inventory/lab/*.toml "$SITE/"
rm -f "$SITE"/secrets*.toml
sed -i "s|^boot_images = .*|boot_images = \"$PWD/boot-images\"|" "$CONFIG"
# The BMC login for the rack's Redfish emulator (lab-only credentials, private file).
install -m 0600 inventory/lab/secrets.example.toml "$RUN/secrets.toml"
sed -i "1i secrets = \"$RUN/secrets.toml\"" "$CONFIG"
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

step "rack $RACK: a private libvirtd in $RACK_NS (config, socket, logs in $LV)"
id libvirt-qemu >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
  --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu
mkdir -p "$LV/etc" "$LV/sock" "$LV/run" "$LV/lib" "$LV/cache"
cp /etc/libvirt/libvirt.conf "$LV/etc/" 2>/dev/null || true
printf '%s\n' "unix_sock_dir = \"$LV/sock\"" 'unix_sock_rw_perms = "0700"' \
  'auth_unix_rw = "none"' 'auth_unix_ro = "none"' 'listen_tls = 0' 'listen_tcp = 0' \
  "log_outputs = \"3:file:$LV/libvirtd.log\"" > "$LV/etc/libvirtd.conf"
# Root-run QEMU, no relabeling, cgroups or per-VM namespaces, no virtlogd.
printf '%s\n' 'user = "root"' 'group = "root"' 'dynamic_ownership = 0' 'remember_owner = 0' \
  'security_driver = "none"' 'cgroup_controllers = [ ]' 'namespaces = [ ]' \
  'stdio_handler = "file"' > "$LV/etc/qemu.conf"
# A private mount namespace: this libvirtd neither sees nor locks another one's domains.
# unshare, sh and ip all exec, so $! is libvirtd's PID.
mkdir -p /run/libvirt /var/lib/libvirt /var/cache/libvirt
unshare -m --propagation private sh -c "mount --bind '$LV/etc' /etc/libvirt && mount --bind '$LV/run' /run/libvirt && mount --bind '$LV/lib' /var/lib/libvirt && mount --bind '$LV/cache' /var/cache/libvirt && exec ip netns exec '$RACK_NS' libvirtd -f '$LV/etc/libvirtd.conf' -p '$LV/libvirtd.pid'" \
  > "$LV/stdout.log" 2>&1 &
echo $! > "$RUN/libvirtd.pid"
for _ in $(seq 1 300); do
  virsh -q -c "$LV_URI" version >/dev/null 2>&1 && break
  kill -0 "$(cat "$RUN/libvirtd.pid")" 2>/dev/null || { cat "$LV/stdout.log" "$LV/libvirtd.log"; die "libvirtd exited"; }
  sleep 0.2
done

md5() { printf %s "$1" | md5sum | cut -c1-32; }
for vm in "${RACK_VMS[@]}"; do
  h=$(md5 "$vm"); u=$(md5 "uuid-$vm")
  mac="52:54:00:${h:0:2}:${h:2:2}:${h:4:2}"
  grep -q "$mac" inventory/lab/manifests/lab-r2.csv || die "lab-r2.csv has no $mac for $vm"
  ip -n "$RACK_NS" tuntap add dev "tap-$vm" mode tap
  ip -n "$RACK_NS" link set "tap-$vm" master br0 up
  truncate -s 1M "$LV/$vm.img"
  sed -e "s|@NAME@|$vm|g" -e "s|@UUID@|${u:0:8}-${u:8:4}-${u:12:4}-${u:16:4}-${u:20:12}|" \
      -e "s|@MAC@|$mac|" -e "s|@DIR@|$LV|g" > "$LV/$vm.xml" <<'XML'
<domain type='qemu'>
  <name>@NAME@</name>
  <uuid>@UUID@</uuid>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><boot dev='network'/><bios useserial='yes'/></os>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='@DIR@/@NAME@.img'/><target dev='vda' bus='virtio'/></disk>
    <interface type='ethernet'><mac address='@MAC@'/><target dev='tap-@NAME@' managed='no'/><model type='virtio'/></interface>
    <serial type='file'><source path='@DIR@/@NAME@.serial.log' append='on'/><target port='0'/></serial>
    <console type='file'><source path='@DIR@/@NAME@.serial.log' append='on'/><target type='serial' port='0'/></console>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
XML
  virsh -q -c "$LV_URI" define "$LV/$vm.xml" >/dev/null
  echo "defined $vm (MAC $mac, powered off; serial console $LV/$vm.serial.log)"
done

step "rack $RACK: sushy-emulator (libvirt driver) as the VMs' Redfish BMC on $GW_NS's 127.0.0.1:8000"
"$BOOTGATE_VENV/bin/python" -c "import bcrypt;print('admin:'+bcrypt.hashpw(b'password',bcrypt.gensalt(rounds=4)).decode())" > "$RUN/htpasswd"
printf '%s\n' "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'" "SUSHY_EMULATOR_LISTEN_PORT = 8000" \
  "SUSHY_EMULATOR_STATE_DIR = '$RUN/sushy-state'" "SUSHY_EMULATOR_AUTH_FILE = '$RUN/htpasswd'" \
  "SUSHY_EMULATOR_LIBVIRT_URI = '$LV_URI'" "SUSHY_EMULATOR_IGNORE_BOOT_DEVICE = False" \
  > "$RUN/sushy.conf.py"
# ip execs sushy-emulator: $! is its PID.
ip netns exec "$GW_NS" "$BOOTGATE_VENV/bin/sushy-emulator" --config "$RUN/sushy.conf.py" > "$RUN/sushy.log" 2>&1 &
echo $! > "$RUN/sushy.pid"
for _ in $(seq 1 150); do
  ip netns exec "$GW_NS" curl -sf -u admin:password http://127.0.0.1:8000/redfish/v1/Systems >/dev/null 2>&1 && break
  kill -0 "$(cat "$RUN/sushy.pid")" 2>/dev/null || { cat "$RUN/sushy.log"; die "sushy-emulator exited"; }
  sleep 0.2
done

step "rack $RACK: the plan from its manifest (changes nothing): bootgate rack plan $MANIFEST"
"$BIN" --config "$CONFIG" rack plan "$MANIFEST"

step "rack $RACK: bootgate rack plan $MANIFEST --write (adds $SITE/rack-$RACK.toml); bootgate reload"
"$BIN" --config "$CONFIG" rack plan "$MANIFEST" --write
"$BIN" --config "$CONFIG" reload

step "rack $RACK: bootgate power status --rack $RACK"
ip netns exec "$GW_NS" "$BIN" --config "$CONFIG" power status --rack "$RACK"

step "onboarding: bootgate rack onboard $RACK --no-handoff (PXE-once + power on in waves; DHCP -> boot script -> phone-home)"
set +e
ip netns exec "$GW_NS" "$BIN" --config "$CONFIG" rack onboard "$RACK" --no-handoff --timeout 15m
onboard_rc=$?
set -e
[ "$onboard_rc" = 0 ] || { tail -20 "$RUN/bootgate.log"; die "rack onboard exited $onboard_rc (see $RUN, $LV)"; }

step "the rack report is an event too: bootgate events --kind rack-report --limit 1"
"$BIN" --config "$CONFIG" events --kind rack-report --limit 1 -o json \
  | python3 -c 'import json,sys; r=json.load(sys.stdin)[-1]["detail"]; print("rack %s ok=%s:" % (r["rack"], r["ok"]), ", ".join("%s %s" % (h["host"], h["outcome"]) for h in r["hosts"]))'

step "IP audit of the lab site: bootgate audit"
"$BIN" --config "$CONFIG" audit || true

state_of() { "$BIN" --config "$CONFIG" hosts show "$1" -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])'; }
if [ "$KEEP" = 1 ]; then
  echo
  echo "left running: bootgate pid $(cat "$RUN/bootgate.pid"), log $RUN/bootgate.log, namespaces $GW_NS $RACK_NS"
  echo "  libvirtd pid $(cat "$RUN/libvirtd.pid") (virsh -c '$LV_URI'), sushy-emulator pid $(cat "$RUN/sushy.pid")"
  echo "stop it all with: for d in ${RACK_VMS[*]}; do virsh -c '$LV_URI' destroy \$d; done; kill \$(cat $RUN/*.pid); ip netns del $GW_NS; ip netns del $RACK_NS"
else
  step "stopping (SIGTERM) and removing the lab"
fi
summary=""
for vm in "${RACK_VMS[@]}"; do summary+=" $vm $(state_of "$vm")"; done
echo "demo ok: $VM PXE-booted through bootgate and is $(state_of "$VM"); rack $RACK onboarded:$summary"
