#!/usr/bin/env bash
# Runs every check and test of bootgate on a fresh Debian 12 machine, as root.
# Installs what it needs (apt), then: cargo fmt --check, clippy -D warnings, one release
# build of all targets, and the whole test suite against that build.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

[ "$(id -u)" = 0 ] || die "run as root: the tests create network namespaces"

step "installing test dependencies"
apt_install iproute2 procps curl systemd ca-certificates gcc \
  busybox-static udhcpc isc-dhcp-client isc-dhcp-relay kea-admin \
  tftp-hpa atftp nftables python3 qemu-system-x86 ipxe-qemu seabios ovmf cpio gzip openssh-client \
  python3-venv git postgresql \
  ipmitool openipmi openssl libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients \
  libvirt-dev pkg-config tcpdump debootstrap util-linux
id libvirt-qemu >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
  --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu
venv_install

step "building the test boot image (cached in /var/tmp/bootgate-cache)"
bash boot-images/build-test-image.sh >/dev/null

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --release -- -D warnings

step "cargo build --release --all-targets"
cargo build --release --all-targets

step "cargo test --release (reuses the build above)"
cargo test --release -- --test-threads "${TEST_THREADS:-2}"
