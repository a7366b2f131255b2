#!/usr/bin/env bash
# TFTP benchmark: bootgate (examples/tftpd.rs) vs tftpd-hpa vs dnsmasq vs atftpd, in a pair
# of throw-away network namespaces:
#
#   [ns bgtftpb-gw]  gw0 10.250.0.1/24 ==veth== rk0 --+
#                                                     |  [ns bgtftpb-rack] br0 (bridge)
#                    clients on eth0  10.250.0.2/24 ==veth== eth0-br --+
#
# Measures, per server and round:
#   (a) one 64 MiB random file, atftp --option "blksize 1468" --option "windowsize 16"
#       (servers without RFC 7440 windowsize leave it out of their OACK and atftp falls
#       back to lock-step), sha256 checked: MiB/s;
#   (b) 200 concurrent curl --tftp-blksize 1468 fetches of a 1 MiB file (all started at
#       once, xargs -P 200), every copy sha256 checked: aggregate MiB/s and failures.
# Servers are interleaved (bootgate tftpd-hpa dnsmasq atftpd, bootgate ...), each round
# starts a fresh server; the table shows the median over rounds and the failures summed.
#
# Usage: bench/tftp.sh [--rounds N] [--no-build] [--keep]
# Needs root. Installs what is missing with apt (atftp, curl, tftpd-hpa, dnsmasq-base).
# atftpd conflicts with tftpd-hpa as a package, so its .deb is fetched with
# `apt-get download` and unpacked into the temporary directory (never installed).
# Exits 0 whatever the numbers; non-zero if a server fails to start or setup fails.
# All traffic stays inside the bgtftpb-* namespaces, deleted on exit.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GW_NS=bgtftpb-gw
RACK_NS=bgtftpb-rack
GW_IP=10.250.0.1
CLIENT_IP=10.250.0.2
SERVERS=(bootgate tftpd-hpa dnsmasq atftpd)
ROUNDS=3 BUILD=1 KEEP=0
PAR=200

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
    --no-build) BUILD=0 ;;
    --keep) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (network namespaces)"

exec 9>/run/bgbench-tftp.lock
flock -n 9 || die "another bench/tftp.sh is running (lock /run/bgbench-tftp.lock)"

TMP=$(mktemp -d /tmp/bgtftpb.XXXXXX)
SERVER_PID=""
stop_server() {   # our own server, by PID: TERM, up to 5 s, then KILL
  local pid=$SERVER_PID
  SERVER_PID=""
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    case "$(ps -o stat= -p "$pid" 2>/dev/null)" in ""|Z*) break ;; esac
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  stop_server
  ip netns del "$GW_NS" 2>/dev/null || true
  ip netns del "$RACK_NS" 2>/dev/null || true
  if [ "$KEEP" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------------------ packages
need=()
command -v atftp >/dev/null || need+=(atftp)
command -v curl >/dev/null || need+=(curl)
command -v in.tftpd >/dev/null || need+=(tftpd-hpa)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
fi
ATFTPD=$(command -v atftpd || true)
if [ -z "$ATFTPD" ]; then
  log "fetching atftpd (.deb, unpacked into $TMP, not installed)"
  (cd "$TMP" && apt-get download atftpd >/dev/null 2>&1 && dpkg -x atftpd_*.deb atftpd-pkg) \
    || die "cannot fetch the atftpd package"
  ATFTPD=$TMP/atftpd-pkg/usr/sbin/atftpd
fi

if [ "$BUILD" = 1 ]; then
  log "cargo build --release --example tftpd"
  (cd "$REPO" && cargo build --release --example tftpd >/dev/null 2>&1) || die "build failed"
fi
BOOTGATE=$REPO/target/release/examples/tftpd
[ -x "$BOOTGATE" ] || die "$BOOTGATE missing (drop --no-build)"

# ------------------------------------------------------------------------------ topology
for ns in "$GW_NS" "$RACK_NS"; do
  ip netns del "$ns" 2>/dev/null || true
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done
ip -n "$RACK_NS" link add br0 type bridge stp_state 0 forward_delay 0
ip -n "$RACK_NS" link set br0 up
ip -n "$RACK_NS" link add rk0 type veth peer name gw0 netns "$GW_NS"
ip -n "$RACK_NS" link set rk0 master br0 up
ip -n "$GW_NS" addr add "$GW_IP/24" dev gw0
ip -n "$GW_NS" link set gw0 up
ip -n "$RACK_NS" link add eth0 type veth peer name eth0-br
ip -n "$RACK_NS" link set eth0-br master br0 up
ip -n "$RACK_NS" addr add "$CLIENT_IP/24" dev eth0
ip -n "$RACK_NS" link set eth0 up
rack() { ip netns exec "$RACK_NS" "$@"; }

# ------------------------------------------------------------------------------ files
ROOT=$TMP/root
mkdir -p "$ROOT" "$TMP/out"
chmod 755 "$TMP" "$ROOT"   # tftpd-hpa and atftpd drop to nobody
head -c 64M /dev/urandom > "$ROOT/big.bin"
head -c 1M /dev/urandom > "$ROOT/one.bin"
echo ready > "$ROOT/probe.txt"
chmod 644 "$ROOT"/*
BIG_SHA=$(sha256sum < "$ROOT/big.bin" | cut -d' ' -f1)
ONE_SHA=$(sha256sum < "$ROOT/one.bin" | cut -d' ' -f1)

probe() {   # does anything serve probe.txt right now?
  rm -f "$TMP/out/probe"
  rack timeout 2 atftp -g -r probe.txt -l "$TMP/out/probe" "$GW_IP" >/dev/null 2>&1 \
    && [ "$(cat "$TMP/out/probe" 2>/dev/null)" = ready ]
}

start_server() {   # name
  local log=$TMP/$1.log
  # Nothing may answer yet: a leftover server would silently take the measurement.
  ! probe || die "something already serves TFTP on $GW_IP before starting $1"
  # Started directly (not through a shell function) so that $! is the server itself:
  # `ip netns exec` execs it in place.
  case "$1" in
    bootgate)
      ip netns exec "$GW_NS" "$BOOTGATE" --iface gw0 --addr "$GW_IP" --root "$ROOT" \
        >"$log" 2>&1 & ;;
    tftpd-hpa)
      ip netns exec "$GW_NS" in.tftpd -L -s "$ROOT" -a "$GW_IP:69" -u nobody >"$log" 2>&1 & ;;
    dnsmasq)
      ip netns exec "$GW_NS" dnsmasq --no-daemon --port=0 --enable-tftp --tftp-root="$ROOT" \
        --interface=gw0 --bind-interfaces --conf-file=/dev/null --pid-file="$TMP/dnsmasq.pid" \
        --tftp-max=1000 --log-facility="$log" >/dev/null 2>&1 & ;;
    atftpd)
      ip netns exec "$GW_NS" "$ATFTPD" --daemon --no-fork --bind-address "$GW_IP" --port 69 \
        --user nobody --group nogroup --maxthread 1000 --logfile /dev/null "$ROOT" \
        >"$log" 2>&1 & ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 50); do
    probe && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || die "$1 exited at start (log: $log)"
    sleep 0.1
  done
  die "$1 did not serve probe.txt (log: $log)"
}

ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
mibs() { awk -v mib="$1" -v ms="$2" 'BEGIN { printf "%.1f", mib / (ms / 1000) }'; }

single() {   # -> "MiB/s ok|FAIL"
  local out=$TMP/out/big t0 ms
  rm -f "$out"
  t0=$(date +%s%N)
  rack timeout 300 atftp --option "blksize 1468" --option "windowsize 16" \
    -g -r big.bin -l "$out" "$GW_IP" >/dev/null 2>&1 || true
  ms=$(ms_since "$t0")
  if [ "$(sha256sum < "$out" 2>/dev/null | cut -d' ' -f1)" = "$BIG_SHA" ]; then
    echo "$(mibs 64 "$ms") ok"
  else
    echo "0 FAIL"
  fi
  rm -f "$out"
}

concurrent() {   # -> "MiB/s failures"
  local dir=$TMP/out/par t0 ms bad=0
  rm -rf "$dir"; mkdir -p "$dir"
  t0=$(date +%s%N)
  rack sh -c "seq $PAR | xargs -P $PAR -I {} timeout 120 curl -s --tftp-blksize 1468 \
    -o $dir/{} tftp://$GW_IP/one.bin" >/dev/null 2>&1 || true
  ms=$(ms_since "$t0")
  for i in $(seq "$PAR"); do
    [ "$(sha256sum < "$dir/$i" 2>/dev/null | cut -d' ' -f1)" = "$ONE_SHA" ] || bad=$((bad + 1))
  done
  rm -rf "$dir"
  echo "$(mibs "$((PAR - bad))" "$ms") $bad"
}

# ------------------------------------------------------------------------------ rounds
declare -A S C F SF
for s in "${SERVERS[@]}"; do S[$s]=""; C[$s]=""; F[$s]=0; SF[$s]=0; done
for r in $(seq "$ROUNDS"); do
  for s in "${SERVERS[@]}"; do
    start_server "$s"
    read -r sm sok <<<"$(single)"
    read -r cm cf <<<"$(concurrent)"
    stop_server
    ! probe || die "$s still answers after it was stopped"
    log "round $r $s: 64 MiB ${sm} MiB/s ($sok), ${PAR}x1 MiB ${cm} MiB/s ($cf failed)"
    S[$s]+="$sm "; C[$s]+="$cm "
    F[$s]=$((F[$s] + cf))
    [ "$sok" = ok ] || SF[$s]=$((SF[$s] + 1))
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

BS=$(median <<<"${S[bootgate]}") BC=$(median <<<"${C[bootgate]}")
echo
echo "TFTP, $ROUNDS interleaved rounds, median MiB/s (failures summed over rounds)"
echo
echo "| server | 64 MiB, atftp blksize 1468 windowsize 16 | failed | ${PAR} × 1 MiB, curl blksize 1468 in parallel | failed fetches | bootgate ÷ server (64 MiB / ${PAR}×1 MiB) |"
echo "| --- | --- | --- | --- | --- | --- |"
for s in "${SERVERS[@]}"; do
  sm=$(median <<<"${S[$s]}") cm=$(median <<<"${C[$s]}")
  echo "| $s | $sm | ${SF[$s]} | $cm | ${F[$s]} | $(ratio "$BS" "$sm") / $(ratio "$BC" "$cm") |"
done
