#!/usr/bin/env bash
# Two-gateway DHCPv4 benchmark: two bootgate daemons on one PostgreSQL database vs two Kea
# servers (kea-dhcp4, PostgreSQL lease backend) on one PostgreSQL database, driven by
# perfdhcp in one run. Both pairs answer every client (bootgate has no RFC 3074 load
# balancing, and the Kea pair runs without the HA hook, sharing the lease database).
#
#   [ns bgbha-gwa] gw0 10.250.0.1/16 ==veth== rka --+
#   [ns bgbha-gwb] gw0 10.250.0.2/16 ==veth== rkb --+-- br0 [ns bgbha-rack]
#                  perfdhcp -l eth0 10.250.0.3/16 ==veth== eth0-br --+
#
# PostgreSQL (Debian's server binaries, initdb'd in the temporary directory, run as the
# postgres user through setpriv, like tests/support/postgres.rs) listens on a unix socket
# only (listen_addresses = ''), with fsync and synchronous_commit on. The servers in the
# gateway namespaces reach it through the socket file: no TCP, no route to the host.
#
# Measures, per pair: the highest offered rate (4-way exchanges/s) with < 1 % drops in both
# DISCOVER-OFFER and REQUEST-ACK, stepping the rate up; the achieved "Rate:" there; and the
# CPU (servers + postmaster and its backends) per 1,000 ACKs at each step. The pairs are
# interleaved per step; every run starts fresh servers on an emptied lease table.
#
# Usage: bench/ha.sh [--quick] [--keep]
#   --quick  rates 125 500 2000 at 3 s a step (a smoke test)
#   default  rates 125 250 500 1000 2000 4000 8000 at 5 s a step
#   --keep   keep the temporary directory (configs, logs, perfdhcp outputs)
# Needs root; installs postgresql, kea-dhcp4-server, kea-admin with apt when missing; uses
# target/release/bootgate (built with `cargo build --release --bin bootgate` only when
# missing). Exits 0 whatever the numbers say; non-zero only when setup or a server fails.
# Kills only the PIDs it started; deletes its namespaces on exit.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NS_A=bgbha-gwa NS_B=bgbha-gwb NS_R=bgbha-rack
IP_A=10.250.0.1 IP_B=10.250.0.2 CLIENT_IP=10.250.0.3 PREFIX=16 NET=10.250.0.0
POOL_FIRST=10.250.1.0 POOL_LAST=10.250.254.254 NCLIENTS=50000
MODE=full KEEP=0
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick ;;
    --keep) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$MODE" = quick ]; then RATES=(125 500 2000); STEP_SECS=3
else RATES=(125 250 500 1000 2000 4000 8000); STEP_SECS=5; fi
PAIRS=(bootgate kea)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (network namespaces, postgres via setpriv)"
exec 9>/run/bgbench-ha.lock
flock -n 9 || die "another bench/ha.sh is running (lock /run/bgbench-ha.lock)"

TMP=$(mktemp -d "${BGBENCH_TMPDIR:-/tmp}/bgbench-ha.XXXXXX")
chmod 0755 "$TMP"   # the postgres user needs to reach $TMP/pg
PG_PID="" SRV_PIDS=() OK=0
stop_pid() {
  local pid=$1
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do
    case "$(ps -o stat= -p "$pid" 2>/dev/null)" in ""|Z*) break ;; esac
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
stop_servers() { local p; for p in "${SRV_PIDS[@]}"; do stop_pid "$p"; done; SRV_PIDS=(); }
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_servers
  if [ -n "$PG_PID" ]; then stop_pid "$PG_PID"; fi   # SIGTERM = smart shutdown of our postmaster
  for ns in "$NS_R" "$NS_A" "$NS_B"; do ip netns del "$ns" 2>/dev/null || true; done
  if [ "$OK" = 1 ] && [ "$KEEP" = 0 ]; then rm -rf "$TMP"
  else log "logs and state kept in $TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- tools
need=()
command -v perfdhcp >/dev/null || need+=(kea-admin)
command -v kea-admin >/dev/null || need+=(kea-admin)
command -v kea-dhcp4 >/dev/null || need+=(kea-dhcp4-server)
command -v psql >/dev/null || need+=(postgresql-client)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]} (apt)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"; } \
    >"$TMP/apt.log" 2>&1 || { tail -20 "$TMP/apt.log" >&2; die "apt-get install ${need[*]} failed"; }
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
CLK_TCK=$(getconf CLK_TCK)
BIN="$REPO/target/release/bootgate"
if [ ! -x "$BIN" ]; then
  log "no $BIN: cargo build --release --bin bootgate (log $TMP/build.log)"
  (cd "$REPO" && cargo build --release --bin bootgate) >"$TMP/build.log" 2>&1 \
    || { tail -30 "$TMP/build.log" >&2; die "bootgate build failed"; }
fi
cp "$BIN" "$TMP/bootgate"
BOOTGATE_COMMIT="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)(binary built $(date -r "$BIN" +%FT%T))"

# ---------------------------------------------------------------- PostgreSQL (unix socket only)
PGDIR="$TMP/pg" PGPORT=5432
mkdir -p "$PGDIR"; chown postgres:postgres "$PGDIR"
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }
as_pg "$PGBIN/initdb" -D "$PGDIR/data" --username=bootgate --auth-local=trust --auth-host=reject \
  --encoding=UTF8 --locale=C --no-sync >"$TMP/initdb.log" 2>&1 || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
setpriv --reuid=postgres --regid=postgres --init-groups -- "$PGBIN/postgres" -D "$PGDIR/data" \
  -c listen_addresses= -c port=$PGPORT -c unix_socket_directories="$PGDIR" \
  -c fsync=on -c synchronous_commit=on -c max_connections=200 -c shared_buffers=64MB \
  >"$TMP/postgres.log" 2>&1 </dev/null &
PG_PID=$!
for _ in $(seq 100); do
  "$PGBIN/pg_isready" -q -h "$PGDIR" -p $PGPORT && break
  kill -0 "$PG_PID" 2>/dev/null || { cat "$TMP/postgres.log" >&2; die "postgres did not start"; }
  sleep 0.2
done
"$PGBIN/pg_isready" -q -h "$PGDIR" -p $PGPORT || die "postgres never became ready"
psqlc() { psql -X -q -v ON_ERROR_STOP=1 -h "$PGDIR" -p $PGPORT -U bootgate "$@"; }
psqlc -d postgres -c 'CREATE DATABASE kea' -c 'CREATE DATABASE bootgate' >/dev/null
kea-admin db-init pgsql -u bootgate -p unused -n kea -h "$PGDIR" -P $PGPORT >"$TMP/kea-admin.log" 2>&1 \
  || { cat "$TMP/kea-admin.log" >&2; die "kea-admin db-init pgsql failed"; }

# ---------------------------------------------------------------- configs
mkdir -p "$TMP/inventory"
for f in "$REPO"/inventory/lab/*.toml; do
  case "$(basename "$f")" in bootgate.toml|secrets.example.toml) ;; *) cp "$f" "$TMP/inventory/" ;; esac
done
sed -i -e "s#^cidr = .*#cidr = \"$NET/$PREFIX\"#" \
       -e "s#^dynamic_ranges = .*#dynamic_ranges = [{ start = \"$POOL_FIRST\", end = \"$POOL_LAST\" }]#" \
       "$TMP/inventory/subnets.toml"
grep -q "^cidr = \"$NET/$PREFIX\"" "$TMP/inventory/subnets.toml" || die "could not widen the subnet"
STORE_URL="postgres://bootgate@localhost/bootgate?host=$PGDIR&port=$PGPORT"
for g in a b; do
  ip=$([ $g = a ] && echo $IP_A || echo $IP_B)
  cat >"$TMP/bootgate-$g.toml" <<EOF
state_dir = "$TMP/state-$g"
store = "$STORE_URL"
inventory = "$TMP/inventory"
boot_images = "$REPO/boot-images"

[http]
listen = "$ip:8080"

[[interface]]
name = "gw0"
address = "$ip/$PREFIX"

[dhcp]
conflict_probe = "off"

# RFC 3074 load balancing between the two (README "Two gateways").
[ha]
gateway_id = "gw-$g"
peer = "gw-$([ $g = a ] && echo b || echo a)"
heartbeat_interval_ms = 200
peer_timeout_ms = 1000
EOF
  cat >"$TMP/kea-$g.json" <<EOF
{
  "Dhcp4": {
    "interfaces-config": { "interfaces": [ "gw0" ], "dhcp-socket-type": "raw" },
    "multi-threading": { "enable-multi-threading": false },
    "control-socket": { "socket-type": "unix", "socket-name": "$TMP/kea-$g.sock" },
    "lease-database": { "type": "postgresql", "name": "kea", "host": "$PGDIR", "port": $PGPORT,
                        "user": "bootgate", "password": "unused" },
    "valid-lifetime": 43200, "renew-timer": 21600, "rebind-timer": 37800,
    "authoritative": true,
    "subnet4": [ {
      "id": 1, "subnet": "$NET/$PREFIX",
      "pools": [ { "pool": "$POOL_FIRST - $POOL_LAST" } ],
      "option-data": [ { "name": "routers", "data": "$IP_A" },
                       { "name": "domain-name-servers", "data": "$IP_A" },
                       { "name": "domain-name", "data": "lab.internal" } ]
    } ],
    "loggers": [ { "name": "kea-dhcp4", "output_options": [ { "output": "stderr" } ], "severity": "WARN" } ]
  }
}
EOF
done
export KEA_PIDFILE_DIR="$TMP" KEA_LOCKFILE_DIR="$TMP"

# ---------------------------------------------------------------- namespaces
for ns in "$NS_A" "$NS_B" "$NS_R"; do
  if ip netns list | awk '{print $1}' | grep -qx "$ns"; then log "removing stale netns $ns"; ip netns del "$ns"; fi
  ip netns add "$ns"; ip -n "$ns" link set lo up
done
ip -n "$NS_R" link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0
ip -n "$NS_R" link set br0 up
for g in a b; do
  ns=$([ $g = a ] && echo $NS_A || echo $NS_B); ip=$([ $g = a ] && echo $IP_A || echo $IP_B)
  ip -n "$NS_R" link add "rk$g" type veth peer name gw0 netns "$ns"
  ip -n "$NS_R" link set "rk$g" master br0 up
  ip -n "$ns" addr add "$ip/$PREFIX" dev gw0
  ip -n "$ns" link set gw0 up
done
ip -n "$NS_R" link add eth0 type veth peer name eth0-br
ip -n "$NS_R" link set eth0-br master br0 up
ip -n "$NS_R" addr add "$CLIENT_IP/$PREFIX" dev eth0
ip -n "$NS_R" link set eth0 up
for ns in "$NS_A" "$NS_B" "$NS_R"; do
  if ip -n "$ns" route show default | grep -q .; then die "default route found in $ns"; fi
done
ip netns exec "$NS_A" "$TMP/bootgate" --config "$TMP/bootgate-a.toml" check-config >"$TMP/check.log" 2>&1 \
  || { cat "$TMP/check.log" >&2; die "bootgate check-config failed"; }
ip netns exec "$NS_A" kea-dhcp4 -t "$TMP/kea-a.json" >"$TMP/kea-check.log" 2>&1 \
  || { cat "$TMP/kea-check.log" >&2; die "kea-dhcp4 -t rejected its config"; }

# ---------------------------------------------------------------- servers
alive() { case "$(ps -o stat= -p "$1" 2>/dev/null)" in ""|Z*) return 1 ;; *) return 0 ;; esac; }
# empty the lease tables (and bootgate's event log, so both pairs start from the same state)
reset_db() {
  psqlc -d kea -c 'TRUNCATE lease4' >/dev/null
  psqlc -d postgres -c 'DROP DATABASE IF EXISTS bootgate WITH (FORCE)' -c 'CREATE DATABASE bootgate' >/dev/null
}
# Gateway a is started and ready before b starts: two bootgate daemons started at the same
# moment on an empty database race in the inventory reconcile (duplicate key on hosts_pkey),
# and the second one exits. Kea is started the same way, for symmetry.
start_pair() {
  local pair=$1 g ns pid
  reset_db
  for g in a b; do
    start_one "$pair" "$g"
  done
  sleep 0.3
  for _ in 1 2 3 4 5; do
    run_perfdhcp 20 1 "$TMP/probe-$pair.txt"
    [ "${P_ACKS:-0}" -gt 0 ] && break
  done
  [ "${P_ACKS:-0}" -gt 0 ] || die "$pair pair does not answer DHCP (probe: $TMP/probe-$pair.txt)"
  sleep 0.5
}
start_one() {
  local pair=$1 g=$2 ns ip ok=0 pid
  ns=$([ $g = a ] && echo $NS_A || echo $NS_B); ip=$([ $g = a ] && echo $IP_A || echo $IP_B)
  case "$pair" in
    bootgate)
      rm -rf "$TMP/state-$g"
      ip netns exec "$ns" "$TMP/bootgate" --config "$TMP/bootgate-$g.toml" --log-level warn serve >>"$TMP/bootgate-$g.log" 2>&1 &
      ;;
    kea)
      rm -f "$TMP"/kea-$g.sock* "$TMP"/kea-$g.kea-dhcp4.pid
      ip netns exec "$ns" kea-dhcp4 -c "$TMP/kea-$g.json" >>"$TMP/kea-$g.log" 2>&1 &
      ;;
  esac
  SRV_PIDS+=("$!")
  for _ in $(seq 300); do
    case "$pair" in
      bootgate) ip netns exec "$ns" curl -sf -m 1 "http://$ip:8080/healthz" >/dev/null 2>&1 && { ok=1; break; } ;;
      kea) [ -S "$TMP/kea-$g.sock" ] && { ok=1; break; } ;;
    esac
    for pid in "${SRV_PIDS[@]}"; do alive "$pid" || { tail -20 "$TMP/$pair-$g.log" >&2; die "$pair ($g) died at start"; }; done
    sleep 0.1
  done
  [ "$ok" = 1 ] || { tail -20 "$TMP/$pair-$g.log" >&2; die "$pair ($g) never became ready"; }
}
# CPU ticks of our servers plus the postmaster and every backend (children of PG_PID)
cpu_ticks() {
  local pids=("${SRV_PIDS[@]}" "$PG_PID") p t=0
  mapfile -t -O "${#pids[@]}" pids < <(pgrep -P "$PG_PID" || true)
  for p in "${pids[@]}"; do
    [ -r "/proc/$p/stat" ] && t=$(( t + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}') ))
  done
  echo "$t"
}
# log_counts PAIR -> "NAKS HOSTDUPS": bootgate's warnings so far (both gateways' logs):
# "address taken meanwhile; NAK" (the shared store refused a commit: the other gateway had
# given that address to another MAC) and "recording a discovered host failed" (both
# gateways inserted the same new MAC into hosts).
log_counts() {
  if [ "$1" != bootgate ]; then echo "0 0"; return; fi
  echo "$(cat "$TMP"/bootgate-[ab].log | grep -c 'address taken meanwhile' || true) $(cat "$TMP"/bootgate-[ab].log | grep -c 'recording a discovered host failed' || true)"
}
run_perfdhcp() {
  local rate=$1 secs=$2 out=$3
  P_RC=0
  timeout $((secs + 30)) ip netns exec "$NS_R" perfdhcp -4 -B -l eth0 -r "$rate" -R "$NCLIENTS" -p "$secs" >"$out" 2>&1 || P_RC=$?
  read -r P_RATE P_DO_DROP P_ACKS P_RA_DROP < <(awk '
    function num(x) { return (x ~ /^[0-9.]+$/) ? x : 100 }
    /^Rate:/ { rate = $2 }
    /Statistics for: DISCOVER-OFFER/ { s = "do" }
    /Statistics for: REQUEST-ACK/ { s = "ra" }
    /^received packets:/ { recv[s] = $3 }
    /^drops ratio:/ { ratio[s] = num($3) }
    END { printf "%s %s %d %s\n", (rate == "" ? 0 : rate), (ratio["do"] == "" ? 100 : ratio["do"]),
          recv["ra"], (ratio["ra"] == "" ? 100 : ratio["ra"]) }' "$out")
  case "$P_RC" in 0|3) ;; *) log "perfdhcp exited $P_RC (output: $out)" ;; esac
}

# ---------------------------------------------------------------- ramp
T0=$(date +%s)
log "bootgate $BOOTGATE_COMMIT x2 vs $(kea-dhcp4 -V | head -1) x2 on PostgreSQL $("$PGBIN/postgres" -V | awk '{print $3}'); rates ${RATES[*]} (${STEP_SECS}s); tmp $TMP"
log "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A ALIVE BEST BEST_RATE FAIL_INFO CPUK
for p in "${PAIRS[@]}"; do ALIVE[$p]=1; BEST[$p]=0; BEST_RATE[$p]=0; FAIL_INFO[$p]="none up to ${RATES[-1]}/s"; CPUK[$p]=""; done
for rate in "${RATES[@]}"; do
  for p in "${PAIRS[@]}"; do
    [ "${ALIVE[$p]}" = 1 ] || continue
    start_pair "$p"
    n1=$(log_counts "$p"); t1=$(cpu_ticks)
    run_perfdhcp "$rate" "$STEP_SECS" "$TMP/ramp-$p-$rate.txt"
    t2=$(cpu_ticks); n2=$(log_counts "$p")
    naks=$(( ${n2% *} - ${n1% *} )) hostdup=$(( ${n2#* } - ${n1#* } ))
    died=""
    for pid in "${SRV_PIDS[@]}"; do alive "$pid" || died=" A SERVER DIED"; done
    stop_servers
    pass=$(awk -v a="$P_DO_DROP" -v b="$P_RA_DROP" 'BEGIN { print (a < 1 && b < 1) ? 1 : 0 }')
    [ -z "$died" ] || pass=0
    cpuk=$(awk -v t=$((t2 - t1)) -v hz="$CLK_TCK" -v n="$P_ACKS" 'BEGIN { if (n) printf "%.3f", t / hz / n * 1000; else print "n/a" }')
    extra=""
    [ "$p" = bootgate ] && extra=$(printf '  conflict NAKs %d, discovered-host insert failures %d' "$naks" "$hostdup")
    log "$(printf '%-8s x2 offered %5d/s  achieved %8.1f/s  drops DO %6.2f%%  RA %6.2f%%  ACKs %6d  CPU-s/1000 (servers+pg) %6s  %s%s%s' \
      "$p" "$rate" "$P_RATE" "$P_DO_DROP" "$P_RA_DROP" "$P_ACKS" "$cpuk" "$([ "$pass" = 1 ] && echo ok || echo FAIL)" "$died" "$extra")"
    if [ "$pass" = 1 ]; then BEST[$p]=$rate; BEST_RATE[$p]=$P_RATE; CPUK[$p]=$cpuk
    else ALIVE[$p]=0; FAIL_INFO[$p]=$(printf 'at %d/s: %.0f/s achieved, drops DO %.1f%% RA %.1f%%%s' "$rate" "$P_RATE" "$P_DO_DROP" "$P_RA_DROP" "$died"); fi
  done
done

OK=1
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
{
  echo
  echo "== two gateways on one PostgreSQL: bootgate $BOOTGATE_COMMIT vs $(kea-dhcp4 -V | head -1) (pgsql lease backend) =="
  echo "mode $MODE; perfdhcp -4 -B -l eth0 -R $NCLIENTS; ramp ${RATES[*]} /s x ${STEP_SECS}s; PostgreSQL $("$PGBIN/postgres" -V | awk '{print $3}') (fsync on, unix socket); $(nproc) CPUs; $(( $(date +%s) - T0 )) s; load average now $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  printf '| %-11s | %-14s | %-13s | %-34s | %-50s |\n' pair "max ok offered" "achieved rate" "CPU-s/1000 ACKs at that step (+pg)" "first failing step"
  echo "|-------------|----------------|---------------|------------------------------------|----------------------------------------------------|"
  for p in "${PAIRS[@]}"; do
    if [ "${BEST[$p]}" = 0 ]; then off="< ${RATES[0]}/s"; ach="-"; else off="${BEST[$p]}/s"; ach=$(printf '%.0f/s' "${BEST_RATE[$p]}"); fi
    printf '| %-11s | %-14s | %-13s | %-34s | %-50s |\n' "$p x2" "$off" "$ach" "${CPUK[$p]:-n/a}" "${FAIL_INFO[$p]}"
  done
  echo
  echo "bootgate pair / kea pair: sustained exchanges/s x$(ratio "${BEST_RATE[bootgate]}" "${BEST_RATE[kea]}")"
  echo "(perfdhcp outputs and server logs: $TMP with --keep)"
}
