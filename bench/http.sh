#!/usr/bin/env bash
# HTTP boot-serving benchmark: bootgate's HTTP listener vs nginx, in one run, with the two
# servers' rounds interleaved (A B A B ...), both in the same pair of throw-away namespaces.
#
#   [ns bghttpb-gw]  gw0 10.250.0.1/24 ==veth== cl0 10.250.0.2/24  [ns bghttpb-cl]
#    bootgate :8080 (serve, no [[interface]]: HTTP only)            curl, wrk
#    nginx    :8081 (worker_processes 2, sendfile, keep-alive, access_log off)
#
# Measures, per server:
#   1. a 256 MiB random image (generated once): full GETs with curl, MB/s (10^6 bytes/s),
#      several sequential fetches per round and 4 parallel fetches per round (aggregate);
#   2. small requests with wrk (keep-alive, -t1 -c32), requests/s:
#        nginx    /small.txt                              static file, same size as the script
#        bootgate /ipxe/mac/02:00:00:00:00:01             rendered discovery script (unknown MAC;
#                                                         one boot-script-served event per request,
#                                                         repeats queued behind one commit fold
#                                                         into one row with a count)
#        bootgate /ipxe/mac/02:00:00:01:xx:yy             the same, 1,000 MACs round robin (no
#                                                         folding: a row per request)
#        bootgate /images/small.txt                       same bytes from the RAM image cache
#                                                         (boot-file-served event per request)
#      plus a diagnostic pair without bootgate's event write: both small files fetched with
#      "Range: bytes=1-" (bootgate records boot-file-served only for ranges starting at 0).
#   Server CPU (utime+stime of all server processes/threads) is sampled around each run.
#
# Usage: bench/http.sh [--quick] [--build|--no-build|--bin PATH] [--keep]
#   --quick     2 rounds, wrk 2 s, 2 sequential fetches: a smoke test (about 1 min)
#   (default)   5 rounds, wrk 5 s, 3 sequential fetches (about 3-4 min)
#   --build / --no-build   force / skip `cargo build --release --bin bootgate` (default: build
#               only when target/release/bootgate is missing or older than the sources)
#   --bin PATH  bench that bootgate binary instead (no build): e.g. a patched build, for a what-if
#   --keep      keep the temporary directory (configs, logs, raw wrk/curl output)
#   BGHTTPB_TMPDIR=dir     where the temporary directory goes (default /tmp; use a real disk:
#               bootgate fsyncs SQLite per event)
# Needs root. Exits 0 whatever the numbers say; non-zero only if a server (or the build, or
# the setup) fails. All traffic stays inside the bghttpb-* namespaces; nothing is changed in
# the host namespace and no default route is ever added.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GW_NS=bghttpb-gw
CL_NS=bghttpb-cl
GW_IP=10.250.0.1
CL_IP=10.250.0.2
BG_PORT=8080
NG_PORT=8081
BIG_MIB=256
SCRIPT_MAC=02:00:00:00:00:01
PAR=4

MODE=full BUILD=auto KEEP=0 CUSTOM_BIN=""
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick ;;
    --build) BUILD=yes ;;
    --no-build) BUILD=no ;;
    --bin) CUSTOM_BIN=${2:?--bin needs a path}; BUILD=custom; shift ;;
    --keep) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$MODE" = quick ]; then ROUNDS=2 WRK_SECS=2 SEQ=2
else ROUNDS=5 WRK_SECS=5 SEQ=3; fi
WRK_ARGS=(-t1 -c32 "-d${WRK_SECS}s" --latency)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (network namespaces)"

# ---------------------------------------------------------------- one run at a time, cleanup
exec 9>/run/bghttpb.lock
flock -n 9 || die "another bench/http.sh is running (lock /run/bghttpb.lock)"

TMP=$(mktemp -d "${BGHTTPB_TMPDIR:-/tmp}/bghttpb.XXXXXX")
BG_PID="" NG_PID="" ST_PID="" OK=0
alive() { case "$(ps -o stat= -p "$1" 2>/dev/null)" in ""|Z*) return 1 ;; *) return 0 ;; esac; }
stop_pid() {   # one of our children, by PID: TERM, up to 5 s, then KILL; reap it
  local pid=$1
  alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # nginx's master (our child) stops its own workers on TERM
  if [ -n "$ST_PID" ]; then stop_pid "$ST_PID"; fi
  if [ -n "$NG_PID" ]; then stop_pid "$NG_PID"; fi
  if [ -n "$BG_PID" ]; then stop_pid "$BG_PID"; fi
  ip netns del "$CL_NS" 2>/dev/null || true
  ip netns del "$GW_NS" 2>/dev/null || true
  if [ "$OK" = 1 ] && [ "$KEEP" = 0 ]; then rm -rf "$TMP"
  else log "logs kept in $TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- tools (Debian packages)
need_pkgs=()
command -v nginx >/dev/null || need_pkgs+=(nginx-light)
command -v wrk >/dev/null || need_pkgs+=(wrk)
command -v curl >/dev/null || need_pkgs+=(curl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]} (apt, --no-install-recommends)"
  # The package's postinst must not start a system nginx on the host: without a
  # policy-rc.d (Docker images ship one), add a temporary "deny" one for the install.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; own_policy=1
  fi
  rc=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends "${need_pkgs[@]}"; } >"$TMP/apt.log" 2>&1 || rc=$?
  [ "$own_policy" = 0 ] || rm -f /usr/sbin/policy-rc.d
  [ "$rc" = 0 ] || { tail -20 "$TMP/apt.log" >&2; die "apt-get install ${need_pkgs[*]} failed"; }
fi
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- bootgate binary
BIN="$REPO/target/release/bootgate"
[ "$BUILD" != custom ] || BIN=$(realpath "$CUSTOM_BIN")
if [ "$BUILD" = auto ]; then
  if [ ! -x "$BIN" ]; then BUILD=yes; log "no $BIN: building it"
  elif [ -n "$(find "$REPO/src" "$REPO/migrations" "$REPO/Cargo.toml" "$REPO/Cargo.lock" \
                   "$REPO/build.rs" -newer "$BIN" -print -quit 2>/dev/null)" ]; then
    BUILD=yes; log "$BIN is older than the sources: rebuilding it"
  fi
fi
if [ "$BUILD" = yes ]; then
  # Others may be editing the tree: a failed build is retried after a minute (twice).
  built=0
  for attempt in 1 2 3; do
    log "cargo build --release --bin bootgate (attempt $attempt, log $TMP/build.log)"
    if (cd "$REPO" && cargo build --release --bin bootgate) >"$TMP/build.log" 2>&1; then built=1; break; fi
    tail -15 "$TMP/build.log" >&2
    [ "$attempt" = 3 ] || { log "build failed; retrying in 60 s"; sleep 60; }
  done
  [ "$built" = 1 ] || die "bootgate build failed (use --no-build to bench the existing binary)"
fi
[ -x "$BIN" ] || die "no $BIN"
cp "$BIN" "$TMP/bootgate"   # private copy: a concurrent rebuild can't swap it mid-run
BOOTGATE_COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ "$BUILD" = custom ]; then BOOTGATE_COMMIT="custom binary $BIN ($(date -r "$BIN" +%FT%T))"
elif [ -n "$(git -C "$REPO" status --porcelain -- src migrations Cargo.toml Cargo.lock build.rs 2>/dev/null)" ]; then
  BOOTGATE_COMMIT="$BOOTGATE_COMMIT+uncommitted"
fi
[ "$BUILD" = yes ] || [ "$BUILD" = custom ] || BOOTGATE_COMMIT="$BOOTGATE_COMMIT(prebuilt $(date -r "$BIN" +%FT%T))"

# ---------------------------------------------------------------- files and configs
IMG="$TMP/boot-images"
mkdir -p "$TMP/inventory" "$IMG/ipxe" "$TMP/state" "$TMP/nginx-tmp" "$TMP/raw"
for f in "$REPO"/inventory/lab/*.toml; do
  [ "$(basename "$f")" = bootgate.toml ] || cp "$f" "$TMP/inventory/"
done
# No [[interface]] in bootgate.toml (HTTP only, no DHCP/TFTP), so the subnet must not name one.
sed -i '/^interface *= *"gw0"/d' "$TMP/inventory/subnets.toml"
! grep -q '^interface *=' "$TMP/inventory/subnets.toml" \
  || die "could not drop the subnet's interface from $TMP/inventory/subnets.toml (format changed?)"
cp "$REPO/boot-images/images.toml" "$IMG/"
cp "$REPO"/boot-images/ipxe/*.ipxe "$IMG/ipxe/"
log "generating $IMG/big.img ($BIG_MIB MiB of random data)"
head -c "$((BIG_MIB * 1024 * 1024))" /dev/urandom >"$IMG/big.img"
BIG_BYTES=$(stat -c %s "$IMG/big.img")
cat "$IMG/big.img" >/dev/null   # in the page cache for both servers

cat >"$TMP/bootgate.toml" <<EOF
state_dir = "$TMP/state"
inventory = "$TMP/inventory"
boot_images = "$IMG"

[http]
listen = "$GW_IP:$BG_PORT"
EOF
"$TMP/bootgate" --config "$TMP/bootgate.toml" check-config >"$TMP/bootgate-check.log" 2>&1 \
  || { cat "$TMP/bootgate-check.log" >&2; die "bootgate check-config failed"; }

cat >"$TMP/nginx.conf" <<EOF
# bench/http.sh: private nginx, foreground (-g 'daemon off;'); everything under $TMP.
user root root;
worker_processes 2;            # bootgate's tokio runtime uses both cores too
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 1000000;   # like hyper (no per-connection request cap)
    types { text/plain txt ipxe; application/octet-stream img; }
    default_type application/octet-stream;
    client_body_temp_path $TMP/nginx-tmp/body;
    proxy_temp_path $TMP/nginx-tmp/proxy;
    fastcgi_temp_path $TMP/nginx-tmp/fastcgi;
    uwsgi_temp_path $TMP/nginx-tmp/uwsgi;
    scgi_temp_path $TMP/nginx-tmp/scgi;
    server {
        listen $GW_IP:$NG_PORT;
        root $IMG;
    }
}
EOF

# ---------------------------------------------------------------- namespaces
for ns in "$GW_NS" "$CL_NS"; do   # leftovers of an aborted run of this script (we hold the lock)
  if ip netns list | awk '{print $1}' | grep -qx "$ns"; then log "removing stale netns $ns"; ip netns del "$ns"; fi
done
ip netns add "$GW_NS"
ip netns add "$CL_NS"
ip -n "$GW_NS" link set lo up
ip -n "$CL_NS" link set lo up
ip -n "$GW_NS" link add gw0 type veth peer name cl0 netns "$CL_NS"
ip -n "$GW_NS" addr add "$GW_IP/24" dev gw0
ip -n "$CL_NS" addr add "$CL_IP/24" dev cl0
ip -n "$GW_NS" link set gw0 up
ip -n "$CL_NS" link set cl0 up
for ns in "$GW_NS" "$CL_NS"; do
  if ip -n "$ns" route show default | grep -q .; then die "default route found in $ns"; fi
done
gw() { ip netns exec "$GW_NS" "$@"; }
cl() { ip netns exec "$CL_NS" "$@"; }
gw nginx -t -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" >"$TMP/nginx-check.log" 2>&1 \
  || { cat "$TMP/nginx-check.log" >&2; die "nginx -t rejected $TMP/nginx.conf"; }

# ---------------------------------------------------------------- servers
BG="http://$GW_IP:$BG_PORT"
NG="http://$GW_IP:$NG_PORT"
start_failed() { log "$1 failed to start; last lines of $2:"; tail -20 "$2" >&2 || true; exit 1; }
# started with ip netns exec directly (not via a shell function), so $! is the server
ip netns exec "$GW_NS" "$TMP/bootgate" --config "$TMP/bootgate.toml" --log-level warn serve \
  >"$TMP/bootgate.log" 2>&1 &
BG_PID=$!
ready=0
for _ in $(seq 300); do
  if cl curl -sf -m 1 "$BG/healthz" >/dev/null 2>&1; then ready=1; break; fi
  alive "$BG_PID" || start_failed bootgate "$TMP/bootgate.log"
  sleep 0.1
done
[ "$ready" = 1 ] || start_failed "bootgate (/healthz never answered)" "$TMP/bootgate.log"
[ "$(cat "/proc/$BG_PID/comm")" = bootgate ] || start_failed "bootgate (PID $BG_PID is not bootgate)" "$TMP/bootgate.log"

# The small file is exactly as long as the script the wrk run gets from bootgate.
SCRIPT_URL="$BG/ipxe/mac/$SCRIPT_MAC"
cl curl -sf -m 5 -o "$TMP/script.txt" "$SCRIPT_URL" || start_failed "bootgate (GET $SCRIPT_URL)" "$TMP/bootgate.log"
SCRIPT_BYTES=$(stat -c %s "$TMP/script.txt")
head -c "$SCRIPT_BYTES" /dev/urandom | base64 -w 76 | head -c "$SCRIPT_BYTES" >"$IMG/small.txt"
SMALL_BYTES=$(stat -c %s "$IMG/small.txt")

ip netns exec "$GW_NS" nginx -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" -g 'daemon off;' \
  >"$TMP/nginx.log" 2>&1 &
NG_PID=$!
ready=0
for _ in $(seq 100); do
  if cl curl -sf -m 1 -o /dev/null "$NG/small.txt" 2>/dev/null; then ready=1; break; fi
  alive "$NG_PID" || start_failed nginx "$TMP/nginx-error.log"
  sleep 0.1
done
[ "$ready" = 1 ] || start_failed "nginx (GET /small.txt never answered)" "$TMP/nginx-error.log"
[ "$(cat "/proc/$NG_PID/comm")" = nginx ] || start_failed "nginx (PID $NG_PID is not nginx)" "$TMP/nginx-error.log"
cmp -s <(cl curl -sf "$NG/small.txt") <(cl curl -sf "$BG/images/small.txt") \
  || die "bootgate and nginx serve different bytes for small.txt"

# server CPU ticks (utime+stime, all threads; for nginx master + workers)
server_pids() { if [ "$1" = bootgate ]; then echo "$BG_PID"; else echo "$NG_PID"; ps -o pid= --ppid "$NG_PID"; fi; }
cpu_ticks() {
  local t=0 p
  for p in $(server_pids "$1"); do
    t=$(( t + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}') ))
  done
  echo "$t"
}
check_alive() {
  alive "$BG_PID" || start_failed "bootgate (died during the run)" "$TMP/bootgate.log"
  alive "$NG_PID" || start_failed "nginx (died during the run)" "$TMP/nginx-error.log"
}
last_event_id() { cl curl -sf -m 5 "$BG/api/v1/events?limit=1" | jq -r '.[-1].id // 0'; }

# ---------------------------------------------------------------- measurements
declare -A RES   # RES[test,server] = space-separated per-round values
declare -A CPU   # CPU[test,server] = total ticks;  WORK[test,server] = requests or bytes
declare -A WORK
add() { RES[$1]="${RES[$1]:-} $2"; }

# seq_fetch SERVER URL ROUND: SEQ sequential full GETs -> MB/s = bytes / summed transfer time
seq_fetch() {
  local s=$1 url=$2 r=$3 out="$TMP/raw/seq-$1-$3.txt" t0 t1
  t0=$(cpu_ticks "$s")
  for _ in $(seq "$SEQ"); do
    cl curl -s -o /dev/null -w '%{http_code} %{size_download} %{time_total} %{speed_download}\n' "$url" >>"$out" || true
  done
  t1=$(cpu_ticks "$s")
  local mbs
  mbs=$(awk -v want="$BIG_BYTES" '$1 == 200 && $2 == want { b += $2; t += $3; n++ }
          END { if (n && t > 0) printf "%.0f", b / t / 1e6; else print "fail" }' "$out")
  [ "$(awk -v want="$BIG_BYTES" '$1 == 200 && $2 == want' "$out" | wc -l)" = "$SEQ" ] || log "$s: some sequential fetches failed (see $out)"
  add "seq,$s" "$mbs"
  CPU[seq,$s]=$(( ${CPU[seq,$s]:-0} + t1 - t0 )); WORK[seq,$s]=$(( ${WORK[seq,$s]:-0} + SEQ * BIG_BYTES ))
  log "$(printf '%-8s round %d  %d x GET big.img sequential   %6s MB/s   (speed_download: %s)' "$s" "$r" "$SEQ" "$mbs" \
        "$(awk '{ printf "%s%.0f", (NR > 1 ? " " : ""), $4 / 1e6 }' "$out")")"
}
# par_fetch SERVER URL ROUND: PAR GETs at once -> aggregate MB/s = bytes / wall time of the batch
par_fetch() {
  local s=$1 url=$2 r=$3 out="$TMP/raw/par-$1-$3" pids=() i t0 t1 w0 w1
  t0=$(cpu_ticks "$s"); w0=$(date +%s.%N)
  for i in $(seq "$PAR"); do
    ip netns exec "$CL_NS" curl -s -o /dev/null -w '%{http_code} %{size_download} %{time_total} %{speed_download}\n' "$url" >"$out.$i" &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || true; done
  w1=$(date +%s.%N); t1=$(cpu_ticks "$s")
  local ok mbs
  ok=$(cat "$out".* | awk -v want="$BIG_BYTES" '$1 == 200 && $2 == want' | wc -l)
  mbs=$(awk -v n="$ok" -v b="$BIG_BYTES" -v w0="$w0" -v w1="$w1" 'BEGIN { if (n) printf "%.0f", n * b / (w1 - w0) / 1e6; else print "fail" }')
  [ "$ok" = "$PAR" ] || log "$s: only $ok of $PAR parallel fetches completed (see $out.*)"
  add "par,$s" "$mbs"
  CPU[par,$s]=$(( ${CPU[par,$s]:-0} + t1 - t0 )); WORK[par,$s]=$(( ${WORK[par,$s]:-0} + ok * BIG_BYTES ))
  log "$(printf '%-8s round %d  %d x GET big.img in parallel  %6s MB/s aggregate (per fetch: %s)' "$s" "$r" "$PAR" "$mbs" \
        "$(cat "$out".* | awk '{ printf "%s%.0f", (NR > 1 ? " " : ""), $4 / 1e6 }')")"
}
# wrk_run TEST SERVER URL ROUND [extra wrk args]
wrk_run() {
  local test=$1 s=$2 url=$3 r=$4; shift 4
  local out="$TMP/raw/wrk-$test-$s-$r.txt" t0 t1 e0=0 e1=0
  [ "$s" = bootgate ] && e0=$(last_event_id)
  t0=$(cpu_ticks "$s")
  cl wrk "${WRK_ARGS[@]}" "$@" "$url" >"$out" 2>&1 || log "wrk exited non-zero (see $out)"
  t1=$(cpu_ticks "$s")
  [ "$s" = bootgate ] && e1=$(last_event_id)
  local rps reqs non2xx sockerr p50 p99
  rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out"); rps=${rps:-0}
  reqs=$(awk '/requests in/ { print $1 }' "$out"); reqs=${reqs:-0}
  non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out"); non2xx=${non2xx:-0}
  sockerr=$(awk '/Socket errors:/ { sub(/.*Socket errors: /, ""); print }' "$out")
  # wrk prints latencies as 123.45us / 1.23ms / 1.23s
  lat() { awk -v q="$1" '$1 == q { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
            m = (u == "us") ? 0.001 : (u == "s") ? 1000 : 1; printf "%.2f", v * m }' "$out"; }
  p50=$(lat 50%); p99=$(lat 99%)
  [ "$non2xx" = 0 ] || log "$s $test: $non2xx non-2xx responses (see $out)"
  add "$test,$s" "$rps"
  add "p50,$test,$s" "${p50:-0}"; add "p99,$test,$s" "${p99:-0}"
  CPU[$test,$s]=$(( ${CPU[$test,$s]:-0} + t1 - t0 )); WORK[$test,$s]=$(( ${WORK[$test,$s]:-0} + reqs ))
  local ev=""
  if [ "$s" = bootgate ]; then
    WORK[ev,$test]=$(( ${WORK[ev,$test]:-0} + e1 - e0 ))
    ev=$(awk -v e=$((e1 - e0)) -v n="$reqs" 'BEGIN { printf "  events/req %.2f", (n ? e / n : 0) }')
  fi
  log "$(printf '%-8s round %d  %-12s %7s req/s  p50 %6s ms  p99 %6s ms  CPU %5.2fs%s%s' "$s" "$r" "$test" "$rps" "${p50:-?}" "${p99:-?}" \
        "$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" 'BEGIN { print t / hz }')" "$ev" \
        "$([ -n "$sockerr" ] && echo "  socket errors: $sockerr")")"
}

median() { tr ' ' '\n' | awk 'NF' | sort -g | awk -v fmt="${1:-%.0f}" '{ v[NR] = $1 } END { if (!NR) { print "n/a"; exit }
  if (v[1] !~ /^[0-9.]+$/) { print "n/a"; exit }
  printf fmt "\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range_of() { tr ' ' '\n' | awk 'NF' | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print (NR ? lo ".." hi : "") }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "n/a" }'; }

# wrk request generator for the "1,000 MACs" row: each request asks for another unknown
# MAC's script (round robin), so no two queued events are alike and none fold.
cat >"$TMP/macs.lua" <<'LUA'
local i = 0
request = function()
  i = (i + 1) % 1000
  return wrk.format(nil, string.format("/ipxe/mac/02:00:00:01:%02x:%02x", math.floor(i / 256), i % 256))
end
LUA

T0=$(date +%s)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
log "bootgate $BOOTGATE_COMMIT vs $(nginx -v 2>&1 | sed 's/.*version: //'), mode $MODE: $ROUNDS rounds, wrk ${WRK_ARGS[*]}, tmp $TMP"
log "script $SCRIPT_URL is $SCRIPT_BYTES bytes; small.txt is $SMALL_BYTES bytes; big.img $BIG_BYTES bytes"

# warm-up (not counted): one fetch of the image and 1 s of wrk per target
for u in "$NG/big.img" "$BG/images/big.img"; do cl curl -s -o /dev/null "$u" || true; done
for u in "$NG/small.txt" "$SCRIPT_URL" "$BG/images/small.txt"; do
  cl wrk -t1 -c32 -d1s "$u" >/dev/null 2>&1 || true
done
check_alive

for r in $(seq "$ROUNDS"); do
  # alternate which server goes first, so drift within a round hits both alike
  if [ $((r % 2)) = 1 ]; then order=(nginx bootgate); else order=(bootgate nginx); fi
  log "round $r/$ROUNDS (${order[*]})"
  for s in "${order[@]}"; do
    if [ "$s" = nginx ]; then seq_fetch nginx "$NG/big.img" "$r"; else seq_fetch bootgate "$BG/images/big.img" "$r"; fi
  done
  for s in "${order[@]}"; do
    if [ "$s" = nginx ]; then par_fetch nginx "$NG/big.img" "$r"; else par_fetch bootgate "$BG/images/big.img" "$r"; fi
  done
  for s in "${order[@]}"; do
    if [ "$s" = nginx ]; then
      wrk_run small nginx "$NG/small.txt" "$r"
    else
      wrk_run script bootgate "$SCRIPT_URL" "$r"
      wrk_run scripts1k bootgate "$BG/" "$r" -s "$TMP/macs.lua"
      wrk_run small bootgate "$BG/images/small.txt" "$r"
    fi
  done
  for s in "${order[@]}"; do
    if [ "$s" = nginx ]; then url="$NG/small.txt"; else url="$BG/images/small.txt"; fi
    wrk_run range "$s" "$url" "$r" -H 'Range: bytes=1-'
  done
  check_alive
done

# ---------------------------------------------------------------- diagnostics (not in the table)
# One connection (-c1): the per-request latency without queueing. ~40 ms per request is the
# signature of Nagle's algorithm meeting the client's delayed ACK (a response sent in two
# writes on a socket without TCP_NODELAY).
declare -A DIAG
diag_c1() {
  local name=$1 url=$2 out="$TMP/raw/wrk-c1-$1.txt"
  cl wrk -t1 -c1 -d2s --latency "$url" >"$out" 2>&1 || true
  DIAG[$name]=$(awk '/^Requests\/sec:/ { rps = $2 } $1 == "50%" { p50 = $2 } END { printf "%.0f req/s, p50 %s", rps, p50 }' "$out")
  log "diag -c1  $(printf '%-22s %s' "$name" "${DIAG[$name]}")"
}
diag_c1 "nginx small.txt" "$NG/small.txt"
diag_c1 "bootgate small.txt" "$BG/images/small.txt"
diag_c1 "bootgate script" "$SCRIPT_URL"
# How bootgate's responses leave the socket (tcpdump in bghttpb-gw, if installed): 20
# keep-alive GETs on one connection (one curl); server->client data segments are counted. A
# response split into a header segment and a body segment, with ~40 ms between them, is
# Nagle's algorithm (no TCP_NODELAY) meeting the client's delayed ACK.
WIRE_NOTE=""
if command -v tcpdump >/dev/null; then
  for what in images/small.txt "ipxe/mac/$SCRIPT_MAC"; do
    td="$TMP/raw/tcpdump-${what//\//_}.txt"
    ip netns exec "$GW_NS" tcpdump -i gw0 -nn -l -ttt -q "tcp src port $BG_PORT and tcp[tcpflags] & tcp-push != 0" >"$td" 2>"$td.err" &
    ST_PID=$!
    sleep 1
    args=(); for _ in $(seq 20); do args+=(-o /dev/null "$BG/$what"); done
    total=$(cl curl -s -w '%{time_total}\n' "${args[@]}" | awk '{ t += $1 } END { printf "%.3f", t }' || true)
    sleep 0.5
    stop_pid "$ST_PID"; ST_PID=""
    WIRE_NOTE+="  /$what: 20 GETs in $total s; $(awk 'NF && $NF > 0 { n++; t = $1; sub(/^00:00:/, "", t); if (t * 1000 >= 30) slow++ }
      END { printf "%d data segments (%d responses split in two), %d gaps >= 30 ms", n, n - 20, slow }' "$td")"$'\n'
  done
  log "diag wire (bootgate):"$'\n'"$WIRE_NOTE"
fi

# ---------------------------------------------------------------- report
med() { echo "${RES[$1]:-}" | median "${2:-%.0f}"; }
rng() { echo "${RES[$1]:-}" | range_of; }
cpu_per() {  # CPU ms per unit of work: per 1,000 requests, or per GB
  awk -v t="${CPU[$1]:-0}" -v hz="$CLK_TCK" -v w="${WORK[$1]:-0}" -v k="$2" \
    'BEGIN { if (w > 0) printf "%.0f", t / hz * 1000 / w * k; else print "n/a" }'; }
OK=1
{
  echo
  echo "== HTTP boot serving: bootgate $BOOTGATE_COMMIT vs nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') =="
  echo "$(date -u +%FT%TZ)  $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo))  mode $MODE: $ROUNDS rounds interleaved, median (min..max) of rounds"
  echo "images: $BIG_MIB MiB random file, curl full GETs ($SEQ sequential per round; $PAR parallel per round, aggregate), MB/s = 10^6 B/s"
  echo "small requests: wrk ${WRK_ARGS[*]} (keep-alive); script $SCRIPT_BYTES B, small.txt $SMALL_BYTES B"
  echo
  printf '| %-54s | %-25s | %-25s | %-14s | %-6s |\n' "test" "bootgate" "nginx" "bootgate/nginx" "target"
  printf '|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..56})" "$(printf -- '-%.0s' {1..27})" "$(printf -- '-%.0s' {1..27})" "$(printf -- '-%.0s' {1..16})" "$(printf -- '-%.0s' {1..8})"
  row() {  # label bootgate-key nginx-key unit target
    local b n; b=$(med "$2"); n=$(med "$3")
    printf '| %-54s | %-25s | %-25s | %-14s | %-6s |\n' "$1" "$b ($(rng "$2"))" "$n ($(rng "$3"))" "$(ratio "$b" "$n")" "$4"
  }
  row "big.img MB/s, $SEQ sequential GETs" seq,bootgate seq,nginx ">= 0.9"
  row "big.img MB/s, $PAR parallel GETs (aggregate)" par,bootgate par,nginx ">= 0.9"
  row "req/s: iPXE script (bootgate) vs small.txt (nginx)" script,bootgate small,nginx ">= 0.9"
  row "req/s: iPXE scripts of 1,000 MACs round robin" scripts1k,bootgate small,nginx ""
  row "req/s: small.txt (static, both)" small,bootgate small,nginx ""
  row "req/s: small.txt, Range: bytes=1- (no bootgate event)" range,bootgate range,nginx ""
  echo
  echo "server CPU (all threads/processes), and wrk latency (median of rounds):"
  printf '  %-30s %-28s %-28s\n' "" bootgate nginx
  printf '  %-30s %-28s %-28s\n' "big.img sequential" "$(cpu_per seq,bootgate 1e9) ms/GB" "$(cpu_per seq,nginx 1e9) ms/GB"
  printf '  %-30s %-28s %-28s\n' "big.img parallel" "$(cpu_per par,bootgate 1e9) ms/GB" "$(cpu_per par,nginx 1e9) ms/GB"
  for t in script scripts1k small range; do
    case $t in script|scripts1k) nk=small ;; *) nk=$t ;; esac
    printf '  %-30s %-28s %-28s\n' "$t: CPU per 1,000 req" "$(cpu_per "$t,bootgate" 1000) ms" "$(cpu_per "$nk,nginx" 1000) ms"
    printf '  %-30s %-28s %-28s\n' "$t: latency p50 / p99" "$(med "p50,$t,bootgate" %.2f) / $(med "p99,$t,bootgate" %.2f) ms" "$(med "p50,$nk,nginx" %.2f) / $(med "p99,$nk,nginx" %.2f) ms"
  done
  printf '  %-30s script %s, scripts1k %s, small %s, range %s\n' "bootgate event rows per request" \
    "$(ratio "${WORK[ev,script]:-0}" "${WORK[script,bootgate]:-0}")" \
    "$(ratio "${WORK[ev,scripts1k]:-0}" "${WORK[scripts1k,bootgate]:-0}")" \
    "$(ratio "${WORK[ev,small]:-0}" "${WORK[small,bootgate]:-0}")" \
    "$(ratio "${WORK[ev,range]:-0}" "${WORK[range,bootgate]:-0}")"
  echo
  echo "diagnostics, one connection (wrk -t1 -c1 -d2s):"
  for k in "nginx small.txt" "bootgate small.txt" "bootgate script"; do printf '  %-22s %s\n' "$k" "${DIAG[$k]}"; done
  [ -z "$WIRE_NOTE" ] || printf 'bootgate on the wire (tcpdump, 20 keep-alive GETs on one connection, one curl):\n%s' "$WIRE_NOTE"
  echo
  echo "(the nginx column of the script row is nginx's small.txt: the same bytes count as the rendered script)"
  echo "load average (1/5/15 min) at start: $LOAD0, at end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine shows here)"
  echo "wall time $(( $(date +%s) - T0 )) s; clients (curl, wrk) share the same $(nproc) CPUs with the servers."
} | tee "$TMP/summary.txt"
