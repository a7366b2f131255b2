#!/usr/bin/env bash
# Builds the small boot image bootgate's end-to-end tests PXE-boot in QEMU, plus the iPXE
# binaries, into a cache (default /var/tmp/bootgate-cache, override with BOOTGATE_CACHE):
#
#   $CACHE/vmlinuz                  Debian's stock kernel (the linux-image-*-amd64 package that
#                                   linux-image-amd64 depends on; `apt-get download` + dpkg-deb,
#                                   never installed on the host)
#   $CACHE/initrd.gz                busybox-static + dropbear initramfs whose /init phones home
#                                   to bootgate (see the /init below for the cmdline it reads)
#   $CACHE/ipxe/undionly.kpxe       \
#   $CACHE/ipxe/ipxe.efi             > from Debian's `ipxe` package (extracted, never installed)
#   $CACHE/ipxe/snponly.efi         /
#   $CACHE/node_id_ed25519{,.pub}   ssh key whose public half is root's authorized_keys in the
#                                   initramfs (bootgate.after=ssh: Ansible hand-off)
#
# Rebuilds only when an input changed: $CACHE/stamp holds the sha256 of this script, of the
# host's busybox and of the node public key; `--force` (or BOOTGATE_FORCE=1) rebuilds anyway.
# Downloaded .debs stay in $CACHE/debs. Concurrent runs serialise on $CACHE/.lock.
# `--publish DIR` also copies vmlinuz and initrd.gz into DIR (e.g. boot-images/test, where
# images.toml's lab-debian image points; copies, not symlinks, so they stay inside the root
# bootgate serves) when they differ.
# Host packages: busybox-static cpio gzip openssh-client (installed here with apt-get when
# missing); `apt-get download` only needs apt (and `apt-get update` once, done here if needed).
set -euo pipefail

CACHE=${BOOTGATE_CACHE:-/var/tmp/bootgate-cache}
FORCE=${BOOTGATE_FORCE:-0}
PUBLISH=""
while [ $# -gt 0 ]; do
  case "$1" in
    --force) FORCE=1 ;;
    --publish) PUBLISH=${2:?--publish DIR}; shift ;;
    *) echo "usage: $0 [--force] [--publish DIR]" >&2; exit 2 ;;
  esac
  shift
done
SELF=$(readlink -f "${BASH_SOURCE[0]}")

log() { printf '[build-test-image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

mkdir -p "$CACHE"
chmod 755 "$CACHE"   # apt-get download drops privileges to _apt
exec 9>"$CACHE/.lock"
flock 9

publish() {
  [ -n "$PUBLISH" ] || return 0
  mkdir -p "$PUBLISH"
  for f in vmlinuz initrd.gz; do
    cmp -s "$CACHE/$f" "$PUBLISH/$f" || { cp "$CACHE/$f" "$PUBLISH/$f.tmp" && mv -f "$PUBLISH/$f.tmp" "$PUBLISH/$f"; }
  done
  log "published vmlinuz, initrd.gz -> $PUBLISH"
}

print_outputs() {
  echo "vmlinuz=$CACHE/vmlinuz"
  echo "initrd=$CACHE/initrd.gz"
  echo "undionly=$CACHE/ipxe/undionly.kpxe"
  echo "ipxe_efi=$CACHE/ipxe/ipxe.efi"
  echo "snponly=$CACHE/ipxe/snponly.efi"
  echo "node_key=$CACHE/node_id_ed25519"
  echo "kernel_version=$(cat "$CACHE/kernel-version" 2>/dev/null || echo unknown)"
}

# --- host tools -------------------------------------------------------------------------------
APT_UPDATED=0
apt_update_once() {
  if [ $APT_UPDATED = 0 ]; then apt-get update -qq >&2 || die "apt-get update failed"; APT_UPDATED=1; fi
}
installed() { dpkg-query -W -f '${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
need=()
installed busybox-static || need+=(busybox-static)   # replaces the dynamic `busybox` package
command -v cpio >/dev/null || need+=(cpio)
command -v gzip >/dev/null || need+=(gzip)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt_update_once
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
BB=/bin/busybox
ldd "$BB" >/dev/null 2>&1 && die "$BB is dynamically linked (need busybox-static)"

# key the daemon/Ansible uses to log into booted nodes (kept across rebuilds)
[ -f "$CACHE/node_id_ed25519" ] && [ -f "$CACHE/node_id_ed25519.pub" ] ||
  { rm -f "$CACHE/node_id_ed25519" "$CACHE/node_id_ed25519.pub"
    ssh-keygen -q -t ed25519 -N '' -C bootgate-test-node -f "$CACHE/node_id_ed25519"; }

STAMP="script=$(sha256sum < "$SELF" | cut -d' ' -f1)
busybox=$(sha256sum < "$BB" | cut -d' ' -f1)
node_key=$(sha256sum < "$CACHE/node_id_ed25519.pub" | cut -d' ' -f1)"
outputs_present() {
  for f in vmlinuz initrd.gz ipxe/undionly.kpxe ipxe/ipxe.efi ipxe/snponly.efi; do
    [ -s "$CACHE/$f" ] || return 1
  done
}
if [ "$FORCE" != 1 ] && outputs_present && [ "$(cat "$CACHE/stamp" 2>/dev/null)" = "$STAMP" ]; then
  log "up to date (cache $CACHE)"
  publish
  print_outputs
  exit 0
fi
log "building into $CACHE"
rm -f "$CACHE/stamp"

# --- .debs (downloaded once, kept) --------------------------------------------------------------
mkdir -p "$CACHE/debs"; chmod 755 "$CACHE/debs"
# let apt's sandbox user write there (else: "Download is performed unsandboxed as root")
id -u _apt >/dev/null 2>&1 && chown _apt "$CACHE/debs"
kpkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
KPKG=${BOOTGATE_KERNEL_PKG:-$(kpkg)}
if [ -z "$KPKG" ]; then apt_update_once; KPKG=$(kpkg); fi
[ -n "$KPKG" ] || die "cannot resolve the kernel package linux-image-amd64 depends on"
KVER=${KPKG#linux-image-}
fetch() {   # fetch PKG...: apt-get download the ones without a .deb in $CACHE/debs
  local missing=() p
  for p in "$@"; do ls "$CACHE/debs/${p}_"*.deb >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get download ${missing[*]}"
  (cd "$CACHE/debs" && apt-get download "${missing[@]}" >&2) ||
    { apt_update_once; (cd "$CACHE/debs" && apt-get download "${missing[@]}" >&2); }
}
fetch "$KPKG" ipxe dropbear-bin libtomcrypt1 libtommath1

W=$CACHE/build.tmp
rm -rf "$W"; mkdir -p "$W/out/ipxe"

# --- kernel + the NIC modules it needs (virtio_net and e1000 are modules in Debian's kernel) ------
dpkg-deb -x "$CACHE/debs/${KPKG}_"*.deb "$W/kernel"
cp "$W/kernel/boot/vmlinuz-$KVER" "$W/out/vmlinuz"
MODS="drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_legacy_dev
      drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci net/core/failover
      drivers/net/net_failover drivers/net/virtio_net drivers/net/ethernet/intel/e1000/e1000"

# --- iPXE binaries ------------------------------------------------------------------------------
dpkg-deb -x "$CACHE/debs/ipxe_"*.deb "$W/ipxe"
cp "$W/ipxe/boot/ipxe.efi" "$W/ipxe/usr/lib/ipxe/snponly.efi" "$W/ipxe/usr/lib/ipxe/undionly.kpxe" "$W/out/ipxe/"

# --- dropbear (sshd + dropbearkey) --------------------------------------------------------------
mkdir -p "$W/db"
for p in dropbear-bin libtomcrypt1 libtommath1; do dpkg-deb -x "$CACHE/debs/${p}_"*.deb "$W/db"; done

# --- initramfs ----------------------------------------------------------------------------------
R=$W/root
mkdir -p "$R"/{bin,dev,proc,sys,tmp,etc/dropbear,lib/modules,lib64,lib/x86_64-linux-gnu,root/.ssh,usr/share/udhcpc}
cp "$BB" "$R/bin/busybox"
for m in $MODS; do
  f=$W/kernel/lib/modules/$KVER/kernel/$m.ko
  if [ -f "$f" ]; then cp "$f" "$R/lib/modules/"
  elif [ -f "$f.xz" ]; then xz -dc "$f.xz" > "$R/lib/modules/$(basename "$m").ko"
  else die "module $m missing in $KPKG"; fi
done
cp "$W/db/usr/sbin/dropbear" "$W/db/usr/bin/dropbearkey" "$R/bin/"
# every shared lib ldd resolves (libtomcrypt/libtommath from the .debs, the rest -- libc,
# libz, libcrypt, libgmp -- from the host, which is the same Debian release as the .debs)
for b in dropbear dropbearkey; do
  LD_LIBRARY_PATH=$W/db/usr/lib/x86_64-linux-gnu ldd "$R/bin/$b" | awk '/=> \//{print $3}'
done | sort -u | while read -r l; do cp -L "$l" "$R/lib/x86_64-linux-gnu/"; done
cp -L /lib64/ld-linux-x86-64.so.2 "$R/lib64/"
cp "$CACHE/node_id_ed25519.pub" "$R/root/.ssh/authorized_keys"
chmod 700 "$R/root" "$R/root/.ssh"; chmod 600 "$R/root/.ssh/authorized_keys"
echo 'root:x:0:0:root:/root:/bin/sh' > "$R/etc/passwd"
echo 'root:x:0:' > "$R/etc/group"
echo '/bin/sh' > "$R/etc/shells"
cat > "$R/init" <<'EOF'
#!/bin/busybox sh
# bootgate test image /init (PID 1). Kernel cmdline it reads:
#   bootgate.url=<http base>     e.g. http://10.250.0.1:8080   (no phone-home without it)
#   bootgate.mac=<mac>           the MAC the event is filed under (default: the NIC's MAC)
#   bootgate.token=<token>       per-boot token, echoed in the body and X-Bootgate-Token
#   bootgate.after=poweroff|ssh  poweroff (default): "booted", "installed", poweroff -f
#                                ssh: "booted", then stay up with dropbear on :22
# Markers on the console (ttyS0): BOOTGATE-MARKER: PHONED-HOME status=ok|failed, ...
export PATH=/bin HOME=/root
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
say() { echo "BOOTGATE-INIT: $*"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
say "/init running (uptime $(uptime_s)s) cmdline: $(cat /proc/cmdline)"

URL=""; WANT_MAC=""; TOKEN=""; AFTER=poweroff
for x in $(cat /proc/cmdline); do
  case "$x" in
    bootgate.url=*) URL=${x#bootgate.url=} ;;
    bootgate.mac=*) WANT_MAC=${x#bootgate.mac=} ;;
    bootgate.token=*) TOKEN=${x#bootgate.token=} ;;
    bootgate.after=*) AFTER=${x#bootgate.after=} ;;
  esac
done
URL=${URL%/}
case "$AFTER" in poweroff|ssh) ;; *) say "unknown bootgate.after=$AFTER, using poweroff"; AFTER=poweroff ;; esac

for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net e1000; do
  insmod /lib/modules/$m.ko 2>/dev/null
done
ip link set lo up
# the NIC: the one with bootgate.mac (any case, ':' or '-'), else the first non-lo one
norm() { echo "$1" | tr 'A-F-' 'a-f:'; }
IF=""
for i in $(seq 100); do
  for n in $(ls /sys/class/net); do
    [ "$n" = lo ] && continue
    if [ -z "$WANT_MAC" ] || [ "$(norm "$(cat /sys/class/net/$n/address)")" = "$(norm "$WANT_MAC")" ]; then IF=$n; break; fi
  done
  [ -n "$IF" ] && break
  sleep 0.1
done
[ -n "$IF" ] || { IF=$(ls /sys/class/net | grep -v '^lo$' | head -1); say "no NIC with mac $WANT_MAC, using ${IF:-none}"; }
NIC_MAC=$(cat /sys/class/net/$IF/address 2>/dev/null)
MAC=${WANT_MAC:-$NIC_MAC}
ip link set "$IF" up
say "nic $IF mac $NIC_MAC, running udhcpc"
IP=""
for try in 1 2 3; do
  udhcpc -i "$IF" -n -q -t 5 -T 2 -s /usr/share/udhcpc/default.script -x hostname:bootgate-node && break
  say "udhcpc attempt $try failed"
done
IP=$(ip -4 -o addr show dev "$IF" | awk '{print $4}' | head -1); IP=${IP%/*}
say "ip ${IP:-none} (uptime $(uptime_s)s)"
hostname bootgate-node

# ssh host key (sent home so the hand-off can pin it)
HOSTKEY=/etc/dropbear/dropbear_ed25519_host_key
dropbearkey -t ed25519 -f "$HOSTKEY" >/tmp/dropbearkey.log 2>&1 || say "dropbearkey FAILED: $(cat /tmp/dropbearkey.log)"
PUB=$(dropbearkey -y -f "$HOSTKEY" 2>/dev/null | grep '^ssh-' | awk '{print $1" "$2}')
say "ssh host key: ${PUB:-none}"
if [ "$AFTER" = ssh ]; then
  if dropbear -r "$HOSTKEY" -p 22 -s 2>/tmp/dropbear.log; then say "dropbear up on :22"
  else say "dropbear FAILED: $(cat /tmp/dropbear.log)"; fi
fi

jstr() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
KEYS="[]"; [ -n "$PUB" ] && KEYS="[$(jstr "$PUB")]"
# phone_home EVENT -> 0 when the server answered 2xx (busybox wget fails on 4xx/5xx)
phone_home() {
  [ -n "$URL" ] || { say "no bootgate.url on the cmdline"; return 1; }
  body="{\"event\":$(jstr "$1"),\"ip\":$(jstr "$IP"),\"token\":$(jstr "$TOKEN"),\"ssh_host_keys\":$KEYS}"
  for try in 1 2 3 4 5; do
    # no `wget -T`: Debian's busybox wget lacks it and segfaults on it; use timeout(1)
    if timeout 15 wget -q -O /tmp/reply --header "Content-Type: application/json" \
         --header "X-Bootgate-Token: $TOKEN" --post-data "$body" "$URL/api/v1/hosts/$MAC/events" 2>/tmp/wget.err; then
      say "POST $1 ok (try $try): $(head -c 300 /tmp/reply)"; return 0
    fi
    say "POST $1 failed (try $try): $(cat /tmp/wget.err)"; sleep 1
  done
  return 1
}
if phone_home booted; then ST=ok; else ST=failed; fi
echo "BOOTGATE-MARKER: PHONED-HOME status=$ST mac=$MAC ip=$IP uptime=$(uptime_s)"
if [ "$AFTER" = ssh ]; then
  echo "BOOTGATE-MARKER: STAYING-UP ssh=$([ -n "$(pidof dropbear)" ] && echo up || echo down)"
  while :; do sleep 3600; done   # PID 1 must never exit
fi
# the test image installs nothing: "installed" marks the end of provisioning
if phone_home installed; then ST=ok; else ST=failed; fi
echo "BOOTGATE-MARKER: INSTALLED status=$ST"
echo "BOOTGATE-MARKER: POWEROFF"
sync; poweroff -f
while :; do sleep 3600; done   # poweroff failed: still never exit
EOF
cat > "$R/usr/share/udhcpc/default.script" <<'EOF'
#!/bin/sh
# minimal hook: address only, never a route or resolv.conf
case "$1" in
  deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew) ip addr replace "$ip/${mask:-24}" dev "$interface"
               echo "BOOTGATE-INIT: udhcpc $1 ip=$ip server=$serverid" ;;
esac
EOF
chmod 755 "$R/init" "$R/usr/share/udhcpc/default.script"
(cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -9) > "$W/out/initrd.gz"

# --- publish (each output replaced atomically) ---------------------------------------------------
mkdir -p "$CACHE/ipxe"
for f in vmlinuz initrd.gz ipxe/undionly.kpxe ipxe/ipxe.efi ipxe/snponly.efi; do
  chmod 644 "$W/out/$f"; mv -f "$W/out/$f" "$CACHE/$f"
done
echo "$KVER" > "$CACHE/kernel-version"
rm -rf "$W"
printf '%s\n' "$STAMP" > "$CACHE/stamp"
log "built: kernel $KVER ($(stat -c %s "$CACHE/vmlinuz") B), initrd $(stat -c %s "$CACHE/initrd.gz") B"
publish
print_outputs
