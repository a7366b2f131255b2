#!/usr/bin/env bash
# DHCPv4 benchmark: bootgate vs Kea (kea-dhcp4, single-threaded, memfile) vs dnsmasq,
# driven by Kea's perfdhcp, all in the same pair of throw-away network namespaces.
#
#   [ns bgbench-gw]  gw0 10.250.0.1/16 ==veth== rk0 --+
#                                                     |  [ns bgbench-rack] br0 (bridge)
#                    perfdhcp -l eth0  10.250.0.2/16 ==veth== eth0-br --+
#
# Measures, per server:
#   (a) the highest offered rate (4-way DORA exchanges/s) with < 1 % drops in both
#       DISCOVER-OFFER and REQUEST-ACK, stepping the rate up (doubling) and stopping a
#       server's ramp at its first failing step; the achieved "Rate:" perfdhcp reports there;
#   (b) server CPU seconds (utime+stime from /proc/PID/stat) per 1,000 ACKs at one fixed
#       rate that every server sustained in (a) (at most 500/s; see --cpu-rate).
# Servers are interleaved (bootgate kea dnsmasq, bootgate kea dnsmasq, ...) and each
# measurement starts a fresh server with empty state.
#
# Usage: bench/dhcp.sh [--quick] [--build|--no-build|--commit REV] [--cpu-rate N] [--probe] [--keep]
# Needs root. Exits 0 whatever the numbers say; non-zero only if a server (or the bootgate
# build, or the setup) fails. All traffic stays inside the bgbench-* namespaces; nothing is
# changed in the host namespace and no default route is ever added.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GW_NS=bgbench-gw
RACK_NS=bgbench-rack
GW_IF=gw0
GW_IP=10.250.0.1
CLIENT_IP=10.250.0.2
PREFIX=16
NET=10.250.0.0
POOL_FIRST=10.250.1.0
POOL_LAST=10.250.254.254
NCLIENTS=50000
SERVERS=(bootgate kea dnsmasq)

MODE=full BUILD=auto CPU_RATE_OPT="" PROBE=off KEEP=0 COMMIT=""
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick ;;
    --build) BUILD=yes ;;
    --no-build) BUILD=no ;;
    --commit) COMMIT=${2:?--commit needs a git revision}; BUILD=commit; shift ;;
    --cpu-rate) CPU_RATE_OPT=${2:?--cpu-rate needs a number}; shift ;;
    --probe) PROBE=icmp ;;   # keep bootgate's ICMP conflict probe on (default: off, see README)
    --keep) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$MODE" = quick ]; then
  RATES=(125 500 1000 4000 16000); STEP_SECS=3; CPU_SECS=5; CPU_ROUNDS=1
else
  RATES=(125 250 500 1000 2000 4000 8000 16000 32000); STEP_SECS=5; CPU_SECS=10; CPU_ROUNDS=3
fi
CPU_RATE_CANDIDATES=(500 250 125 100 50)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (network namespaces)"

# ---------------------------------------------------------------- one run at a time, cleanup
exec 9>/run/bgbench-dhcp.lock
flock -n 9 || die "another bench/dhcp.sh is running (lock /run/bgbench-dhcp.lock)"

TMP=$(mktemp -d "${BGBENCH_TMPDIR:-/tmp}/bgbench.XXXXXX")   # on disk: fsync costs are real
SERVER_PID="" SERVER_NAME="" OK=0
stop_pid() {   # stop one of our children by PID: TERM, wait up to 5 s, then KILL; reap it
  local pid=$1
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    case "$(ps -o stat= -p "$pid" 2>/dev/null)" in ""|Z*) break ;; esac
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$SERVER_PID" ]; then stop_pid "$SERVER_PID"; fi
  ip netns del "$RACK_NS" 2>/dev/null || true
  ip netns del "$GW_NS" 2>/dev/null || true
  if [ "$OK" = 1 ] && [ "$KEEP" = 0 ]; then rm -rf "$TMP"
  else log "logs and state kept in $TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- tools (Debian packages)
need_pkgs=()
command -v perfdhcp >/dev/null || need_pkgs+=(kea-admin)
command -v kea-dhcp4 >/dev/null || need_pkgs+=(kea-dhcp4-server)
command -v dnsmasq >/dev/null || need_pkgs+=(dnsmasq-base)
command -v curl >/dev/null || need_pkgs+=(curl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]} (apt)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends "${need_pkgs[@]}"; } >"$TMP/apt.log" 2>&1 \
    || { tail -20 "$TMP/apt.log" >&2; die "apt-get install ${need_pkgs[*]} failed"; }
fi
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- bootgate binary
BIN="$REPO/target/release/bootgate"
SRC_ROOT=$REPO   # where inventory/lab and boot-images come from
if [ "$BUILD" = commit ]; then
  # Build exactly REV from `git archive` (read-only on the repo): edits in progress in the
  # work tree can neither break the build nor leak into the binary.
  rev=$(git -C "$REPO" rev-parse --verify --quiet "$COMMIT^{commit}") || die "no such commit: $COMMIT"
  BOOTGATE_COMMIT=$(git -C "$REPO" rev-parse --short "$rev")
  TARGET_DIR=${BGBENCH_TARGET_DIR:-/var/tmp/bgbench-target}
  # Fixed source path; `tar -m` stamps files with the current time, so cargo always sees a
  # checked-out commit as changed. The commit last built is remembered, so benching the same
  # commit again doesn't rebuild.
  SRC_ROOT="$TARGET_DIR/src"
  full_rev=$(git -C "$REPO" rev-parse "$rev")
  if [ -x "$TARGET_DIR/release/bootgate" ] && [ "$(cat "$TARGET_DIR/built-commit" 2>/dev/null)" = "$full_rev" ]; then
    log "bootgate $BOOTGATE_COMMIT already built in $TARGET_DIR"
  else
    rm -rf "$SRC_ROOT" "$TARGET_DIR/built-commit"; mkdir -p "$SRC_ROOT"
    git -C "$REPO" archive "$rev" | tar -x -m -C "$SRC_ROOT"
    log "building bootgate $BOOTGATE_COMMIT from git archive (target dir $TARGET_DIR, log $TMP/build.log; may take minutes)"
    (cd "$SRC_ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --bin bootgate) >"$TMP/build.log" 2>&1 \
      || { tail -30 "$TMP/build.log" >&2; die "bootgate build of $BOOTGATE_COMMIT failed"; }
    echo "$full_rev" >"$TARGET_DIR/built-commit"
  fi
  BIN="$TARGET_DIR/release/bootgate"
elif [ "$BUILD" = auto ]; then
  if [ ! -x "$BIN" ]; then BUILD=yes; log "no $BIN: building it"
  elif [ -n "$(find "$REPO/src" "$REPO/migrations" "$REPO/Cargo.toml" "$REPO/Cargo.lock" \
                   "$REPO/build.rs" -newer "$BIN" -print -quit 2>/dev/null)" ]; then
    BUILD=yes; log "$BIN is older than the sources: rebuilding it"
  fi
fi
if [ "$BUILD" = yes ]; then
  log "cargo build --release --bin bootgate (log: $TMP/build.log; may take minutes)"
  (cd "$REPO" && cargo build --release --bin bootgate) >"$TMP/build.log" 2>&1 \
    || { tail -30 "$TMP/build.log" >&2; die "bootgate build failed (use --no-build to bench the existing binary)"; }
fi
[ -x "$BIN" ] || die "no $BIN"
# A private copy: a rebuild by someone else during the run cannot swap binaries mid-bench.
cp "$BIN" "$TMP/bootgate"
if [ "$BUILD" != commit ]; then
  BOOTGATE_COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git -C "$REPO" status --porcelain -- src migrations Cargo.toml Cargo.lock build.rs 2>/dev/null)" ]; then
    BOOTGATE_COMMIT="$BOOTGATE_COMMIT+uncommitted"
  fi
  # not built by this run: the binary may be older than the tree it is labelled with
  [ "$BUILD" = yes ] || BOOTGATE_COMMIT="$BOOTGATE_COMMIT(prebuilt $(date -r "$BIN" +%FT%T))"
fi

# ---------------------------------------------------------------- configs
mkdir -p "$TMP/inventory"
for f in "$SRC_ROOT"/inventory/lab/*.toml; do
  [ "$(basename "$f")" = bootgate.toml ] || cp "$f" "$TMP/inventory/"
done
sed -i -e "s#^cidr = .*#cidr = \"$NET/$PREFIX\"#" \
       -e "s#^dynamic_ranges = .*#dynamic_ranges = [{ start = \"$POOL_FIRST\", end = \"$POOL_LAST\" }]#" \
       "$TMP/inventory/subnets.toml"
grep -q "^cidr = \"$NET/$PREFIX\"" "$TMP/inventory/subnets.toml" \
  && grep -q "start = \"$POOL_FIRST\"" "$TMP/inventory/subnets.toml" \
  || die "could not widen the subnet in $TMP/inventory/subnets.toml (format changed?)"
cat >"$TMP/bootgate.toml" <<EOF
state_dir = "$TMP/state"
inventory = "$TMP/inventory"
boot_images = "$SRC_ROOT/boot-images"

[http]
listen = "$GW_IP:8080"

[[interface]]
name = "$GW_IF"
address = "$GW_IP/$PREFIX"

[dhcp]
# off = like dnsmasq --no-ping (Kea has no such probe); --probe keeps the default (icmp)
conflict_probe = "$PROBE"
EOF
"$TMP/bootgate" --config "$TMP/bootgate.toml" check-config >"$TMP/bootgate-check.log" 2>&1 \
  || { cat "$TMP/bootgate-check.log" >&2; die "bootgate check-config failed"; }

cat >"$TMP/kea.json" <<EOF
{
  "Dhcp4": {
    "interfaces-config": { "interfaces": [ "$GW_IF" ], "dhcp-socket-type": "raw" },
    "multi-threading": { "enable-multi-threading": false },
    "control-socket": { "socket-type": "unix", "socket-name": "$TMP/kea4-ctrl.sock" },
    "lease-database": { "type": "memfile", "persist": true,
                        "name": "$TMP/kea-leases4.csv", "lfc-interval": 0 },
    "valid-lifetime": 43200, "renew-timer": 21600, "rebind-timer": 37800,
    "authoritative": true,
    "subnet4": [ {
      "id": 1, "subnet": "$NET/$PREFIX",
      "pools": [ { "pool": "$POOL_FIRST - $POOL_LAST" } ],
      "option-data": [ { "name": "routers", "data": "$GW_IP" },
                       { "name": "domain-name-servers", "data": "$GW_IP" },
                       { "name": "domain-name", "data": "lab.internal" } ]
    } ],
    "loggers": [ { "name": "kea-dhcp4", "output_options": [ { "output": "stderr" } ],
                   "severity": "WARN" } ]
  }
}
EOF
export KEA_PIDFILE_DIR="$TMP" KEA_LOCKFILE_DIR="$TMP"

# ---------------------------------------------------------------- namespaces
for ns in "$GW_NS" "$RACK_NS"; do   # leftovers of an aborted run of this script (we hold the lock)
  if ip netns list | awk '{print $1}' | grep -qx "$ns"; then log "removing stale netns $ns"; ip netns del "$ns"; fi
done
ip netns add "$GW_NS"
ip netns add "$RACK_NS"
ip -n "$GW_NS" link set lo up
ip -n "$RACK_NS" link set lo up
ip -n "$RACK_NS" link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0
ip -n "$RACK_NS" link set br0 up
ip -n "$RACK_NS" link add rk0 type veth peer name "$GW_IF" netns "$GW_NS"
ip -n "$RACK_NS" link set rk0 master br0 up
ip -n "$GW_NS" addr add "$GW_IP/$PREFIX" dev "$GW_IF"
ip -n "$GW_NS" link set "$GW_IF" up
ip -n "$RACK_NS" link add eth0 type veth peer name eth0-br
ip -n "$RACK_NS" link set eth0-br master br0 up
ip -n "$RACK_NS" addr add "$CLIENT_IP/$PREFIX" dev eth0
ip -n "$RACK_NS" link set eth0 up
for ns in "$GW_NS" "$RACK_NS"; do
  if ip -n "$ns" route show default | grep -q .; then die "default route found in $ns"; fi
done
gw()   { ip netns exec "$GW_NS" "$@"; }
rack() { ip netns exec "$RACK_NS" "$@"; }

gw kea-dhcp4 -t "$TMP/kea.json" >"$TMP/kea-check.log" 2>&1 \
  || { cat "$TMP/kea-check.log" >&2; die "kea-dhcp4 -t rejected $TMP/kea.json"; }

# ---------------------------------------------------------------- servers
server_alive() { [ -n "$SERVER_PID" ] && case "$(ps -o stat= -p "$SERVER_PID" 2>/dev/null)" in ""|Z*) false ;; *) true ;; esac; }
start_failed() {
  log "$SERVER_NAME failed to start; last lines of $TMP/$SERVER_NAME.log:"
  tail -20 "$TMP/$SERVER_NAME.log" >&2 || true
  exit 1
}
# Start a fresh server (empty state), wait until it is ready and answers a probe.
start_server() {
  SERVER_NAME=$1
  local lf="$TMP/$1.log" ready=0
  printf '\n===== start %s %s\n' "$(date +%T)" "$2" >>"$lf"
  case "$1" in
    bootgate)
      rm -rf "$TMP/state"
      # started with ip netns exec directly (not via a shell function), so $! is the server
      ip netns exec "$GW_NS" "$TMP/bootgate" --config "$TMP/bootgate.toml" --log-level warn serve >>"$lf" 2>&1 &
      SERVER_PID=$!
      for _ in $(seq 300); do
        if gw curl -sf -m 1 "http://$GW_IP:8080/healthz" >/dev/null 2>&1; then ready=1; break; fi
        server_alive || start_failed
        sleep 0.1
      done
      [ "$ready" = 1 ] || { log "bootgate /healthz never answered"; start_failed; }
      ;;
    kea)
      rm -f "$TMP"/kea-leases4.csv* "$TMP"/kea.kea-dhcp4.pid "$TMP"/kea4-ctrl.sock*
      ip netns exec "$GW_NS" kea-dhcp4 -c "$TMP/kea.json" >>"$lf" 2>&1 &
      SERVER_PID=$!
      for _ in $(seq 100); do
        if [ -S "$TMP/kea4-ctrl.sock" ]; then break; fi
        server_alive || start_failed
        sleep 0.1
      done
      ;;
    dnsmasq)
      rm -f "$TMP/dnsmasq.leases" "$TMP/dnsmasq.pid"
      ip netns exec "$GW_NS" dnsmasq --no-daemon --conf-file=/dev/null --port=0 --no-resolv --no-hosts \
        --interface="$GW_IF" --bind-interfaces \
        --dhcp-range="$POOL_FIRST,$POOL_LAST,255.255.0.0,12h" \
        --dhcp-leasefile="$TMP/dnsmasq.leases" --dhcp-lease-max=100000 \
        --no-ping --dhcp-authoritative --quiet-dhcp --log-facility=- \
        --pid-file="$TMP/dnsmasq.pid" >>"$lf" 2>&1 &
      SERVER_PID=$!
      ;;
  esac
  sleep 0.3
  server_alive || start_failed
  local comm; comm=$(cat "/proc/$SERVER_PID/comm")
  case "$comm" in bootgate|kea-dhcp4|dnsmasq) ;; *) log "PID $SERVER_PID is '$comm', not the server"; start_failed ;; esac
  # The probe: a 1-second perfdhcp run must get at least one ACK (up to 5 tries).
  for _ in 1 2 3 4 5; do
    run_perfdhcp 20 1 "$TMP/probe-$1.txt"
    [ "${P_ACKS:-0}" -gt 0 ] && break
    server_alive || start_failed
  done
  [ "${P_ACKS:-0}" -gt 0 ] || { log "$1 does not answer DHCP (probe: $TMP/probe-$1.txt)"; start_failed; }
  sleep 0.5   # let stragglers of the probe drain
}
stop_server() {
  local pid=$SERVER_PID
  SERVER_PID=""
  if [ -n "$pid" ]; then stop_pid "$pid"; fi
}
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }   # utime+stime

# run_perfdhcp RATE SECONDS OUTFILE -> P_RATE P_DO_SENT P_DO_RECV P_DO_DROP P_RA_SENT P_ACKS P_RA_DROP P_RC
run_perfdhcp() {
  local rate=$1 secs=$2 out=$3
  P_RC=0
  timeout $((secs + 30)) ip netns exec "$RACK_NS" \
    perfdhcp -4 -B -l eth0 -r "$rate" -R "$NCLIENTS" -p "$secs" >"$out" 2>&1 || P_RC=$?
  # shellcheck disable=SC2034  # P_DO_SENT P_DO_RECV P_RA_SENT: kept for debugging/extension
  # drops ratio is "-nan %" when nothing was sent in that phase: count it as 100 %
  read -r P_RATE P_DO_SENT P_DO_RECV P_DO_DROP P_RA_SENT P_ACKS P_RA_DROP < <(awk '
    function num(x) { return (x ~ /^[0-9.]+$/) ? x : 100 }
    /^Rate:/ { rate = $2 }
    /Statistics for: DISCOVER-OFFER/ { s = "do" }
    /Statistics for: REQUEST-ACK/ { s = "ra" }
    /^sent packets:/ { sent[s] = $3 }
    /^received packets:/ { recv[s] = $3 }
    /^drops ratio:/ { ratio[s] = num($3) }
    END { printf "%s %d %d %s %d %d %s\n", (rate == "" ? 0 : rate), sent["do"], recv["do"],
          (ratio["do"] == "" ? 100 : ratio["do"]), sent["ra"], recv["ra"],
          (ratio["ra"] == "" ? 100 : ratio["ra"]) }' "$out")
  case "$P_RC" in 0|3) ;; *) log "perfdhcp exited $P_RC (output: $out)" ;; esac
}

# ---------------------------------------------------------------- (a) rate ramp
T0=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)   # other work on the box skews everything: say so
log "bootgate $BOOTGATE_COMMIT, mode $MODE: rates ${RATES[*]} (${STEP_SECS}s each), $NCLIENTS clients, tmp $TMP"
log "phase (a): rate ramp, servers interleaved per step, fresh state per run"
declare -A ALIVE BEST_OFFERED BEST_RATE FAIL_AT FAIL_INFO
for s in "${SERVERS[@]}"; do ALIVE[$s]=1; BEST_OFFERED[$s]=0; BEST_RATE[$s]=0; FAIL_AT[$s]=""; FAIL_INFO[$s]=""; done
for rate in "${RATES[@]}"; do
  for s in "${SERVERS[@]}"; do
    [ "${ALIVE[$s]}" = 1 ] || continue
    start_server "$s" "ramp $rate/s"
    t1=$(cpu_ticks "$SERVER_PID")
    run_perfdhcp "$rate" "$STEP_SECS" "$TMP/ramp-$s-$rate.txt"
    crashed=""; t2=$t1
    if server_alive; then t2=$(cpu_ticks "$SERVER_PID"); else crashed=" SERVER DIED (see $TMP/$s.log)"; fi
    stop_server
    pass=$(awk -v a="$P_DO_DROP" -v b="$P_RA_DROP" 'BEGIN { print (a < 1 && b < 1) ? 1 : 0 }')
    [ -z "$crashed" ] || pass=0
    cpuk=$(awk -v t=$((t2 - t1)) -v hz="$CLK_TCK" -v n="$P_ACKS" 'BEGIN { if (n) printf "%.3f", t / hz / n * 1000; else print "n/a" }')
    log "$(printf '%-8s offered %6d/s  achieved %9.1f/s  drops DO %6.2f%%  RA %6.2f%%  ACKs %6d  CPU-s/1000 %6s  %s%s' \
      "$s" "$rate" "$P_RATE" "$P_DO_DROP" "$P_RA_DROP" "$P_ACKS" "$cpuk" "$([ "$pass" = 1 ] && echo ok || echo FAIL)" "$crashed")"
    if [ "$pass" = 1 ]; then
      BEST_OFFERED[$s]=$rate; BEST_RATE[$s]=$P_RATE
    else
      ALIVE[$s]=0; FAIL_AT[$s]=$rate
      FAIL_INFO[$s]=$(printf 'at %d/s: %.0f/s achieved, drops DO %.1f%% RA %.1f%%%s' "$rate" "$P_RATE" "$P_DO_DROP" "$P_RA_DROP" "$crashed")
    fi
  done
done
for s in "${SERVERS[@]}"; do
  if [ -z "${FAIL_AT[$s]}" ]; then FAIL_INFO[$s]="none up to ${RATES[-1]}/s"; fi
done

# ---------------------------------------------------------------- (b) CPU per lease
if [ -n "$CPU_RATE_OPT" ]; then CPU_RATE=$CPU_RATE_OPT
else
  min_ok=${BEST_OFFERED[${SERVERS[0]}]}
  for s in "${SERVERS[@]}"; do
    if [ "${BEST_OFFERED[$s]}" -lt "$min_ok" ]; then min_ok=${BEST_OFFERED[$s]}; fi
  done
  CPU_RATE=${CPU_RATE_CANDIDATES[-1]}
  for c in "${CPU_RATE_CANDIDATES[@]}"; do
    if [ "$c" -le "$min_ok" ]; then CPU_RATE=$c; break; fi
  done
fi
log "phase (b): server CPU per lease at $CPU_RATE/s for ${CPU_SECS}s, $CPU_ROUNDS round(s) interleaved (CLK_TCK $CLK_TCK)"
declare -A CPU_TICKS CPU_ACKS CPU_MAXDROP CPU_IDLE
for s in "${SERVERS[@]}"; do CPU_TICKS[$s]=0; CPU_ACKS[$s]=0; CPU_MAXDROP[$s]=0; CPU_IDLE[$s]=0; done
for round in $(seq "$CPU_ROUNDS"); do
  for s in "${SERVERS[@]}"; do
    start_server "$s" "cpu round $round"
    t0=$(cpu_ticks "$SERVER_PID"); sleep 2   # idle baseline: background CPU with no traffic
    t1=$(cpu_ticks "$SERVER_PID"); CPU_IDLE[$s]=$(( CPU_IDLE[$s] + t1 - t0 ))
    run_perfdhcp "$CPU_RATE" "$CPU_SECS" "$TMP/cpu-$s-$round.txt"
    server_alive || { log "$s died during the CPU run (see $TMP/$s.log)"; exit 1; }
    t2=$(cpu_ticks "$SERVER_PID")
    stop_server
    CPU_TICKS[$s]=$(( CPU_TICKS[$s] + t2 - t1 )); CPU_ACKS[$s]=$(( CPU_ACKS[$s] + P_ACKS ))
    CPU_MAXDROP[$s]=$(awk -v m="${CPU_MAXDROP[$s]}" -v a="$P_DO_DROP" -v b="$P_RA_DROP" 'BEGIN { x = m; if (a > x) x = a; if (b > x) x = b; print x }')
    log "$(awk -v s="$s" -v r="$round" -v t=$((t2 - t1)) -v hz="$CLK_TCK" -v n="$P_ACKS" -v a="$P_DO_DROP" -v b="$P_RA_DROP" 'BEGIN {
      printf "%-8s round %d  CPU %6.2fs  ACKs %6d  -> %7.3f CPU-s/1000 leases  drops DO %.2f%% RA %.2f%%", s, r, t / hz, n, (n ? t / hz / n * 1000 : 0), a, b }')"
  done
done

# ---------------------------------------------------------------- report
cpu_per_k() { awk -v t="${CPU_TICKS[$1]}" -v hz="$CLK_TCK" -v n="${CPU_ACKS[$1]}" 'BEGIN { if (n) printf "%.3f", t / hz / n * 1000; else print "n/a" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "n/a" }'; }
rate_of() { if [ "${BEST_OFFERED[$1]}" = 0 ]; then echo 0; else echo "${BEST_RATE[$1]}"; fi; }
OK=1
{
  echo
  echo "== DHCPv4 benchmark: bootgate $BOOTGATE_COMMIT vs kea-dhcp4 $(kea-dhcp4 -V | head -1) vs $(dnsmasq --version | head -1 | awk '{print $1, $3}') =="
  echo "mode $MODE; perfdhcp -4 -B -l eth0 -R $NCLIENTS; ramp ${RATES[*]} /s x ${STEP_SECS}s; CPU at $CPU_RATE/s x ${CPU_SECS}s x $CPU_ROUNDS round(s); $(nproc) CPUs; $(( $(date +%s) - T0 ))s"
  echo "load average (1/5/15 min) at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  printf '| %-8s | %-14s | %-13s | %-22s | %-52s |\n' server "max ok offered" "achieved rate" "CPU-s / 1000 leases" "first failing step"
  printf '|----------|----------------|---------------|------------------------|------------------------------------------------------|\n'
  for s in "${SERVERS[@]}"; do
    if [ "${BEST_OFFERED[$s]}" = 0 ]; then off="< ${RATES[0]}/s"; ach="-"
    else off="${BEST_OFFERED[$s]}/s"; ach=$(printf '%.0f/s' "${BEST_RATE[$s]}"); fi
    printf '| %-8s | %-14s | %-13s | %-22s | %-52s |\n' "$s" "$off" "$ach" "$(cpu_per_k "$s") @ $CPU_RATE/s" "${FAIL_INFO[$s]}"
  done
  echo
  for s in "${SERVERS[@]}"; do
    printf 'CPU phase %-8s: %6d ACKs in %d round(s), %6.2f CPU-s, worst drop ratio %.2f%%; idle %.1f%% of a core\n' \
      "$s" "${CPU_ACKS[$s]}" "$CPU_ROUNDS" "$(awk -v t="${CPU_TICKS[$s]}" -v hz="$CLK_TCK" 'BEGIN { print t / hz }')" \
      "${CPU_MAXDROP[$s]}" "$(awk -v t="${CPU_IDLE[$s]}" -v hz="$CLK_TCK" -v n="$CPU_ROUNDS" 'BEGIN { print t / hz / (2 * n) * 100 }')"
  done
  echo
  rk=$(ratio "$(rate_of bootgate)" "$(rate_of kea)"); rd=$(ratio "$(rate_of bootgate)" "$(rate_of dnsmasq)")
  ck=$(ratio "$(cpu_per_k bootgate)" "$(cpu_per_k kea)"); cd=$(ratio "$(cpu_per_k bootgate)" "$(cpu_per_k dnsmasq)")
  verdict() { awk -v x="$1" -v op="$2" -v t="$3" 'BEGIN { if (x !~ /^[0-9.]+$/) { print "n/a"; exit }
    ok = (op == ">=") ? (x + 0 >= t + 0) : (x + 0 <= t + 0); print ok ? "MET" : "NOT MET" }'; }
  echo "bootgate / kea     : sustained rate x$rk   CPU per lease x$ck"
  echo "bootgate / dnsmasq : sustained rate x$rd   CPU per lease x$cd"
  echo
  echo "targets: sustained rate >= Kea single-threaded (x >= 1): $(verdict "$rk" ">=" 1)"
  echo "         CPU per lease <= 0.5 x Kea's (x <= 0.5):          $(verdict "$ck" "<=" 0.5)"
  echo "         CPU per lease >= 10x better than dnsmasq (x <= 0.1): $(verdict "$cd" "<=" 0.1)"
  echo "(raw perfdhcp outputs and server logs: ${TMP} with --keep)"
}
