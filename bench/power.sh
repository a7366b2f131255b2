#!/usr/bin/env bash
# BMC power benchmark (issue 5): `bootgate power status` over a fleet of emulated Redfish
# BMCs (sushy-emulator, fake driver), against the bound
#
#     bound = BMC latency x ceil(N / concurrency)
#
# i.e. what a perfect client with `concurrency` requests in flight would take if every BMC
# answered in the latency measured here. Everything runs on the host's loopback (no
# namespaces are needed: nothing but TCP to 127.0.0.1 is sent).
#
# bootgate also bounds BMC calls per process ([bmc] concurrency, default 32). The bench
# config sets it to --concurrency, so `--concurrency 64` really means 64 in flight; pass
# --bmc-concurrency K to set it apart (e.g. 32, the default, to see its effect).
#
# Two emulator layouts are measured in one run, interleaved round by round:
#   one   one sushy-emulator holding all N systems (a Flask/Werkzeug server: threaded, but
#         one Python process, so one core at most under the GIL);
#   split one sushy-emulator per --per-emulator systems (default 100: 5 processes for 500),
#         each host's bmc pointing at its emulator's port, so the emulator side can use
#         both cores and the measurement shows bootgate's concurrency rather than the GIL.
#
# Per layout, in the same run:
#   L_curl  median of --samples single `curl` GETs of one system's resource (basic auth),
#           a new connection each: the cheapest possible BMC round trip;
#   L_one   median wall time of --samples `bootgate power status hNNN` (one host): the whole
#           per-host Redfish exchange bootgate does (service root, system), plus process
#           start and loading the N-host inventory;
#   fleet   `bootgate --output json power status --rack R --concurrency C` over all N hosts
#           (median of --rounds), checked: N rows, every one with a power state;
#   peer    `curl --parallel --parallel-max C` doing the same HTTP requests bootgate makes
#           for each host (the service root and the system, basic auth) for all N hosts:
#           the emulator's own capacity at that concurrency (median of --rounds);
#   serial  `bootgate power status h000 .. h(K-1) --concurrency 1` once (K = --serial-hosts,
#           default 50, spread over the emulators): L_host = the median per-host elapsed_ms
#           bootgate reports there = the BMC latency used for the bound.
# It prints wall / bound (1.0 = perfect overlap; below 1 is possible when the bound's
# latency includes process start), wall / peer, and the emulators' CPU use during the fleet
# run (near 1.0 CPU-s/s per process = the emulator is the bottleneck).
#
# Usage: bench/power.sh [--hosts N] [--concurrency C] [--rounds R] [--samples S]
#                       [--per-emulator M] [--delay MS] [--serial-hosts K] [--bmc-concurrency K]
#                       [--quick] [--keep]
#   --quick        N=100, 2 rounds, 10 samples: a smoke test (about 1 min)
#   --delay MS     every emulator request sleeps MS ms before it is handled (a Flask
#                  before_request hook added by the emulator's config file; the sleep holds
#                  no CPU and releases the GIL). Real BMCs take 0.1-1 s per Redfish request;
#                  with a delay the bound is latency-dominated, as in production, instead of
#                  being set by how much CPU the Python emulators get on a small machine.
#   --keep         keep the temporary directory (configs, emulator logs, JSON outputs)
# The runs in bench/RESULTS.md: `bench/power.sh --delay 100`, `bench/power.sh` and
# `bench/power.sh --delay 500 --serial-hosts 10 --samples 10 --rounds 2` (the last one is the
# one where bootgate's concurrency, not the emulators' CPU, decides the wall time).
#   BGBENCH_TMPDIR where the temporary directory goes (default /tmp)
# Needs: the release binary target/release/bootgate (built with `cargo build --release
# --bin bootgate` only when missing), the venv /var/tmp/bootgate-venv with sushy-tools 2.2.0
# and bcrypt (created when missing, as tests/support/sushy.rs does), curl (apt when missing).
# Exits 0 whatever the numbers say; non-zero only when setup fails, an emulator doesn't
# start, or bootgate fails to report a host. Kills only the PIDs it started.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=/var/tmp/bootgate-venv
N=500 CONC=64 ROUNDS=3 SAMPLES=30 PER_EMU=100 KEEP=0 DELAY_MS=0 NSERIAL=50 BMC_CONC=""
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --hosts) N=${2:?}; shift ;;
    --concurrency) CONC=${2:?}; shift ;;
    --rounds) ROUNDS=${2:?}; shift ;;
    --samples) SAMPLES=${2:?}; shift ;;
    --per-emulator) PER_EMU=${2:?}; shift ;;
    --delay) DELAY_MS=${2:?}; shift ;;
    --serial-hosts) NSERIAL=${2:?}; shift ;;
    --bmc-concurrency) BMC_CONC=${2:?}; shift ;;
    --quick) N=100 ROUNDS=2 SAMPLES=10; PER_EMU=50 ;;
    --keep) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$N" -lt 1 ] || [ "$N" -gt 1000 ]; then echo "--hosts must be 1..1000" >&2; exit 2; fi
BMC_CONC=${BMC_CONC:-$CONC}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

exec 9>/tmp/bgbench-power.lock
flock -n 9 || die "another bench/power.sh is running (lock /tmp/bgbench-power.lock)"

TMP=$(mktemp -d "${BGBENCH_TMPDIR:-/tmp}/bgbench-power.XXXXXX")
EMU_PIDS=() OK=0
stop_pid() {   # one of our children, by PID: TERM, up to 5 s, then KILL; reap it
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
stop_emulators() {
  local p
  for p in "${EMU_PIDS[@]}"; do stop_pid "$p"; done
  EMU_PIDS=()
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_emulators
  if [ "$OK" = 1 ] && [ "$KEEP" = 0 ]; then rm -rf "$TMP"
  else log "logs and state kept in $TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- tools
if ! command -v curl >/dev/null; then
  log "installing curl (apt)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl; } \
    >"$TMP/apt.log" 2>&1 || { tail -20 "$TMP/apt.log" >&2; die "apt-get install curl failed"; }
fi
curl --help all 2>/dev/null | grep -q -- '--parallel-max' || die "curl has no --parallel (needs curl >= 7.66)"
if [ ! -x "$VENV/bin/sushy-emulator" ]; then
  log "creating $VENV with sushy-tools 2.2.0 (pip)"
  { [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"; } >"$TMP/venv.log" 2>&1 \
    || die "python3 -m venv $VENV failed (apt-get install python3-venv)"
  "$VENV/bin/pip" install -q sushy-tools==2.2.0 bcrypt >>"$TMP/venv.log" 2>&1 \
    || { tail -20 "$TMP/venv.log" >&2; die "pip install sushy-tools failed"; }
fi
CLK_TCK=$(getconf CLK_TCK)

BIN="$REPO/target/release/bootgate"
if [ ! -x "$BIN" ]; then
  log "no $BIN: cargo build --release --bin bootgate (log $TMP/build.log; may take minutes)"
  (cd "$REPO" && cargo build --release --bin bootgate) >"$TMP/build.log" 2>&1 \
    || { tail -30 "$TMP/build.log" >&2; die "bootgate build failed"; }
fi
cp "$BIN" "$TMP/bootgate"   # private copy: a rebuild by someone else can't swap it mid-run
BOOTGATE_COMMIT="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)(binary built $(date -r "$BIN" +%FT%T))"

# ---------------------------------------------------------------- inventory
# The lab's site/profiles/racks; the subnet widened to a /22 (10.250.0.0/22: room for 1000
# reserved hosts; only a config value here, no address of it is ever used); N hosts in rack
# lab-r1 with a bmc on a loopback address each.
INV="$TMP/inventory"
mkdir -p "$INV" "$TMP/state"
for f in site profiles racks subnets; do cp "$REPO/inventory/lab/$f.toml" "$INV/"; done
RACK=$(sed -n 's/^name = "\(.*\)"/\1/p' "$INV/racks.toml" | head -1)
[ -n "$RACK" ] || die "no rack name in $INV/racks.toml"
PROFILE=$(sed -n 's/^name = "\(.*\)"/\1/p' "$INV/profiles.toml" | head -1)
# no [[interface]] in this config: drop the subnet's interface binding (as bench/http.sh does)
sed -i -e '/^interface = /d' \
       -e 's#^cidr = .*#cidr = "10.250.0.0/22"#' \
       -e 's#^dynamic_ranges = .*#dynamic_ranges = [{ start = "10.250.3.100", end = "10.250.3.250" }]#' \
       "$INV/subnets.toml"
grep -q '^cidr = "10.250.0.0/22"' "$INV/subnets.toml" || die "could not widen the subnet (format changed?)"
printf '[bmc.bench]\nusername = "admin"\npassword = "password"\n' >"$TMP/secrets.toml"
chmod 0600 "$TMP/secrets.toml"
cat >"$TMP/bootgate.toml" <<EOF
state_dir = "$TMP/state"
inventory = "$INV"
boot_images = "$REPO/boot-images"
secrets = "$TMP/secrets.toml"

[http]
listen = "127.0.0.1:0"

[bmc]
# BMC calls in flight from this process (bootgate's own bound; default 32)
concurrency = $BMC_CONC
EOF
host_name() { printf 'h%03d' "$1"; }
# endpoint_of I: "ip port" of host I's emulator in the current layout
endpoint_of() { echo "${LAYOUT_EPS[$(( ${#LAYOUT_EPS[@]} == 1 ? 0 : $1 / PER_EMU ))]}"; }
# write_hosts: host i's BMC is its emulator's endpoint
write_hosts() {
  local i ep
  for ((i = 0; i < N; i++)); do
    read -r -a ep <<<"$(endpoint_of "$i")"
    printf '[[host]]\nname = "%s"\nrole = "gpu"\nrack = "%s"\nposition = %d\nmacs = ["02:bb:00:00:%02x:%02x"]\nprofile = "%s"\naddresses = { provisioning = "10.250.%d.%d" }\nbmc = { address = "%s", port = %d, scheme = "http", system = "%s", vendor = "generic", protocol = "redfish", credential = "bench" }\n\n' \
      "$(host_name "$i")" "$RACK" $((i + 1)) $((i / 256)) $((i % 256)) "$PROFILE" \
      $((1 + i / 250)) $((1 + i % 250)) "${ep[0]}" "${ep[1]}" "$(host_name "$i")"
  done >"$INV/hosts.toml"
}

# ---------------------------------------------------------------- emulators
"$VENV/bin/python" -c "import bcrypt;print('admin:'+bcrypt.hashpw(b'password',bcrypt.gensalt(rounds=4)).decode())" \
  >"$TMP/htpasswd" || die "bcrypt htpasswd failed"
free_port() { "$VENV/bin/python" -c 'import socket,sys;s=socket.socket();s.bind((sys.argv[1],0));print(s.getsockname()[1])' "$1"; }
# start_emulator ID FIRST LAST -> EMU_EP "ip port"; systems h(FIRST)..h(LAST-1), all Off.
# All emulators listen on 127.0.0.1, each on its own port (bootgate >= b4f98b9 treats one
# address with different ports as different BMCs; older binaries fail check-config here).
start_emulator() {
  local id=$1 first=$2 last=$3 ip=127.0.0.1 port dir="$TMP/emu-$1" pid
  for _attempt in 1 2 3; do
    port=$(free_port "$ip")
    mkdir -p "$dir"
    cat >"$dir/sushy.conf.py" <<EOF
# written by bench/power.sh (after tests/support/sushy.rs)
import hashlib
def _mac(n):
    h = hashlib.md5(n.encode()).hexdigest()
    return '52:54:00:%s:%s:%s' % (h[0:2], h[2:4], h[4:6])
def _uuid(n):
    h = hashlib.md5(('uuid-' + n).encode()).hexdigest()
    return '%s-%s-%s-%s-%s' % (h[0:8], h[8:12], h[12:16], h[16:20], h[20:32])
SUSHY_EMULATOR_LISTEN_IP = '$ip'
SUSHY_EMULATOR_LISTEN_PORT = $port
SUSHY_EMULATOR_STATE_DIR = '$dir/state'
SUSHY_EMULATOR_AUTH_FILE = '$TMP/htpasswd'
SUSHY_EMULATOR_FAKE_DRIVER = True
if $DELAY_MS > 0:   # --delay: emulate a slow BMC without spending CPU
    import time as _time
    from sushy_tools.emulator import main as _main
    _main.app.before_request(lambda: _time.sleep($DELAY_MS / 1000.0))
SUSHY_EMULATOR_FAKE_SYSTEMS = [
    {'uuid': _uuid(n), 'name': n, 'power_state': 'Off', 'external_notifier': False,
     'nics': [{'mac': _mac(n), 'ip': ''}]}
    for n in ['h%03d' % i for i in range($first, $last)]
]
EOF
    "$VENV/bin/sushy-emulator" --config "$dir/sushy.conf.py" >"$dir/sushy.log" 2>&1 </dev/null &
    pid=$!
    for _ in $(seq 300); do
      if curl -s -o /dev/null -m 1 "http://$ip:$port/redfish/v1/"; then
        EMU_PIDS+=("$pid"); EMU_EP="$ip $port"; return 0
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    stop_pid "$pid"
    log "emulator $id did not come up on $ip:$port; retrying (log $dir/sushy.log)"
  done
  tail -20 "$dir/sushy.log" >&2
  die "sushy-emulator $id did not start (3 attempts)"
}
# start_layout one|split: fresh emulators (fresh state), hosts.toml pointed at them
start_layout() {
  stop_emulators
  rm -rf "$TMP"/emu-*
  local k first i ep
  LAYOUT_EPS=()
  if [ "$1" = one ]; then
    start_emulator 0 0 "$N"; LAYOUT_EPS=("$EMU_EP")
  else
    k=0
    for ((first = 0; first < N; first += PER_EMU)); do
      start_emulator "$k" "$first" $(( first + PER_EMU < N ? first + PER_EMU : N ))
      LAYOUT_EPS+=("$EMU_EP"); k=$((k + 1))
    done
  fi
  write_hosts
  # the first and last system of every emulator answer
  for ((i = 0; i < N; i++)); do
    if [ $((i % PER_EMU)) = 0 ] || [ $(((i + 1) % PER_EMU)) = 0 ] || [ $((i + 1)) = "$N" ]; then
      read -r -a ep <<<"$(endpoint_of "$i")"
      curl -sf -o /dev/null -u admin:password "http://${ep[0]}:${ep[1]}/redfish/v1/Systems/$(host_name "$i")" \
        || die "emulator on ${ep[0]}:${ep[1]} has no system $(host_name "$i")"
    fi
  done
}
emu_ticks() {   # utime+stime of all our emulators (all threads)
  local p t=0
  for p in "${EMU_PIDS[@]}"; do t=$(( t + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}') )); done
  echo "$t"
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", b - a }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.6g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

ms() { awk -v x="$1" 'BEGIN { printf "%.1f", x * 1000 }'; }
# elapsed_median FILE: median of the rows' elapsed_ms, in seconds
elapsed_median() {
  "$VENV/bin/python" -c 'import json,sys,statistics as s;print("%.6f" % (s.median(r["elapsed_ms"] for r in json.load(open(sys.argv[1]))) / 1000))' "$1"
}
bg() { "$TMP/bootgate" --config "$TMP/bootgate.toml" --output json --log-level warn power status "$@"; }
# check_fleet FILE [COUNT]: COUNT (default N) rows, each host once, each with a power state and no error
check_fleet() {
  "$VENV/bin/python" - "$1" "${2:-$N}" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1])); n = int(sys.argv[2])
hosts = {r.get("host") for r in rows}
bad = [r for r in rows if r.get("error") or r.get("ok") is False]
if len(rows) != n or len(hosts) != n or bad:
    print(f"{len(rows)} rows, {len(hosts)} hosts, {len(bad)} failed; first failure: {bad[:1]}")
    sys.exit(1)
EOF
}

# curl peer: for each host the same requests bootgate makes (service root, system), with
# basic auth, C at once.
write_curl_config() {
  local i ep
  for ((i = 0; i < N; i++)); do
    read -r -a ep <<<"$(endpoint_of "$i")"
    printf 'url = "http://%s:%d/redfish/v1/"\noutput = "/dev/null"\nurl = "http://%s:%d/redfish/v1/Systems/%s"\noutput = "/dev/null"\n' \
      "${ep[0]}" "${ep[1]}" "${ep[0]}" "${ep[1]}" "$(host_name "$i")"
  done >"$TMP/curl-$1.cfg"
}

# ---------------------------------------------------------------- run
T0=$(date +%s)
[ "$NSERIAL" -le "$N" ] || NSERIAL=$N
SERIAL_HOSTS=()
for ((i = 0; i < NSERIAL; i++)); do SERIAL_HOSTS+=("$(host_name $(( i * N / NSERIAL )))"); done
NEMU=$(( (N + PER_EMU - 1) / PER_EMU ))
WAVES=$(( (N + CONC - 1) / CONC ))
log "bootgate $BOOTGATE_COMMIT; $N hosts, concurrency $CONC ([bmc] concurrency $BMC_CONC), delay $DELAY_MS ms (ceil(N/C) = $WAVES), $ROUNDS round(s), $SAMPLES latency samples; layouts: one emulator, $NEMU emulators x $PER_EMU; tmp $TMP"
log "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
LAYOUTS=(one split)
declare -A LCURL LONE LSEQ LHOST WALLS PEERS CPU SERIAL REQS FLAT BCPU PCPU
for l in "${LAYOUTS[@]}"; do WALLS[$l]=""; PEERS[$l]=""; CPU[$l]=""; FLAT[$l]=""; BCPU[$l]=""; PCPU[$l]=""; done

# Latency and serial runs: once per layout, before the rounds.
for l in "${LAYOUTS[@]}"; do
  start_layout "$l"
  "$TMP/bootgate" --config "$TMP/bootgate.toml" check-config >"$TMP/check-$l.log" 2>&1 \
    || { cat "$TMP/check-$l.log" >&2; die "bootgate check-config rejected the bench inventory"; }
  read -r -a ep <<<"$(endpoint_of 0)"
  : >"$TMP/lat-curl-$l.txt"; : >"$TMP/lat-one-$l.txt"
  # sushy redirects a system's name to its UUID: time one GET of the resource itself
  sys_url=$(curl -sf -o /dev/null -u admin:password -w '%{url_effective}' -L \
    "http://${ep[0]}:${ep[1]}/redfish/v1/Systems/h000") || die "curl GET h000 failed"
  for ((s = 0; s < SAMPLES; s++)); do
    curl -sf -o /dev/null -u admin:password -w '%{time_total}\n' "$sys_url" >>"$TMP/lat-curl-$l.txt" \
      || die "curl GET $sys_url failed"
  done
  # requests per host: count the emulator's access-log lines for one single-host status
  before=$(grep -cE '(GET|POST|PATCH|DELETE) /redfish' "$TMP/emu-0/sushy.log" || true)
  for ((s = 0; s < SAMPLES; s++)); do
    t1=$(now); bg h000 >"$TMP/one-$l.json" 2>"$TMP/one-$l.err" || { cat "$TMP/one-$l.err" >&2; die "power status h000 failed ($l)"; }
    t2=$(now); elapsed "$t1" "$t2" >>"$TMP/lat-one-$l.txt"
  done
  after=$(grep -cE '(GET|POST|PATCH|DELETE) /redfish' "$TMP/emu-0/sushy.log" || true)
  REQS[$l]=$(awk -v a="$before" -v b="$after" -v n="$SAMPLES" 'BEGIN { printf "%.1f", (b - a) / n }')
  LCURL[$l]=$(median <"$TMP/lat-curl-$l.txt")
  LONE[$l]=$(median <"$TMP/lat-one-$l.txt")
  t1=$(now); bg "${SERIAL_HOSTS[@]}" --concurrency 1 >"$TMP/serial-$l.json" 2>"$TMP/serial-$l.err" \
    || { tail -5 "$TMP/serial-$l.err" >&2; die "serial power status failed ($l)"; }
  t2=$(now); SERIAL[$l]=$(elapsed "$t1" "$t2")
  check_fleet "$TMP/serial-$l.json" "${#SERIAL_HOSTS[@]}" || die "serial run ($l) did not report every host ($TMP/serial-$l.json)"
  LSEQ[$l]=$(awk -v w="${SERIAL[$l]}" -v n="${#SERIAL_HOSTS[@]}" 'BEGIN { printf "%.6f", w / n }')
  LHOST[$l]=$(elapsed_median "$TMP/serial-$l.json")
  log "$(printf '%-5s L_curl %.1f ms  L_one %.1f ms (%s HTTP requests/host)  serial (C=1) %.2f s: L_host %.1f ms, wall/N %.1f ms' \
    "$l" "$(ms "${LCURL[$l]}")" "$(ms "${LONE[$l]}")" "${REQS[$l]}" "${SERIAL[$l]}" "$(ms "${LHOST[$l]}")" "$(ms "${LSEQ[$l]}")")"
  cp "$INV/hosts.toml" "$TMP/hosts-$l.toml"
done

# Fleet rounds, interleaved: one, split, one, split, ... (fresh emulators each time)
for ((r = 1; r <= ROUNDS; r++)); do
  for l in "${LAYOUTS[@]}"; do
    start_layout "$l"
    write_curl_config "$l"
    c1=$(emu_ticks); t1=$(now)
    /usr/bin/time -f '%U %S' -o "$TMP/fleet-$l-$r.time" \
      "$TMP/bootgate" --config "$TMP/bootgate.toml" --output json --log-level warn power status \
      --rack "$RACK" --concurrency "$CONC" >"$TMP/fleet-$l-$r.json" 2>"$TMP/fleet-$l-$r.err" \
      || { tail -5 "$TMP/fleet-$l-$r.err" >&2; die "power status --rack failed ($l round $r)"; }
    t2=$(now); c2=$(emu_ticks)
    check_fleet "$TMP/fleet-$l-$r.json" || die "fleet run ($l round $r) did not report every host"
    w=$(elapsed "$t1" "$t2")
    cpu=$(awk -v t=$((c2 - c1)) -v hz="$CLK_TCK" -v w="$w" -v k="${#EMU_PIDS[@]}" 'BEGIN { printf "%.2f", t / hz / w }')
    t1=$(now)
    /usr/bin/time -f '%U %S' -o "$TMP/peer-$l-$r.time" \
      curl -s -L --parallel --parallel-immediate --parallel-max "$CONC" -u admin:password -K "$TMP/curl-$l.cfg" \
      -w '%{http_code}\n' >"$TMP/peer-$l-$r.codes" 2>"$TMP/peer-$l-$r.err" || true
    t2=$(now)
    p=$(elapsed "$t1" "$t2")
    nok=$(grep -c '^200$' "$TMP/peer-$l-$r.codes" || true)
    [ "$nok" = $((2 * N)) ] || die "curl peer ($l round $r): $nok of $((2 * N)) requests got 200"
    fl=$(elapsed_median "$TMP/fleet-$l-$r.json")
    bcpu=$(awk '{ printf "%.2f", $1 + $2 }' "$TMP/fleet-$l-$r.time")
    pcpu=$(awk '{ printf "%.2f", $1 + $2 }' "$TMP/peer-$l-$r.time")
    WALLS[$l]+="$w "; PEERS[$l]+="$p "; CPU[$l]+="$cpu "; FLAT[$l]+="$(ms "$fl") "; BCPU[$l]+="$bcpu "; PCPU[$l]+="$pcpu "
    log "$(printf '%-5s round %d  bootgate %.2f s (CPU %s s; per-host p50 %.0f ms; emulators %s CPU-s/s over %d process(es))  curl peer %.2f s (CPU %s s)' \
      "$l" "$r" "$w" "$bcpu" "$(ms "$fl")" "$cpu" "${#EMU_PIDS[@]}" "$p" "$pcpu")"
  done
done
stop_emulators

# ---------------------------------------------------------------- report
OK=1
med_of() { tr ' ' '\n' <<<"$1" | grep . | median; }
r2() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
{
  echo
  echo "== bootgate power status: $N hosts, concurrency $CONC ([bmc] concurrency $BMC_CONC), ceil(N/C) = $WAVES, emulator delay $DELAY_MS ms/request; bootgate $BOOTGATE_COMMIT =="
  echo "sushy-tools $("$VENV/bin/pip" show sushy-tools 2>/dev/null | sed -n 's/^Version: //p') (fake driver, Werkzeug threaded dev server), $(curl --version | head -1 | awk '{print $1, $2}'); $(nproc) CPUs; $ROUNDS round(s) (medians); $(( $(date +%s) - T0 )) s; load average now $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  printf '| %-20s | %-9s | %-9s | %-9s | %-8s | %-8s | %-10s | %-10s | %-9s | %-10s | %-8s | %-8s |\n' \
    layout "L_curl" "L_one" "L_host" "req/host" bootgate "bound" "wall/bound" "curl peer" "bg/peer" "emu CPU" "p50 host"
  echo "|----------------------|-----------|-----------|-----------|----------|----------|------------|------------|-----------|------------|----------|----------|"
  for l in "${LAYOUTS[@]}"; do
    if [ "$l" = one ]; then name="1 emulator"; else name="$NEMU emulators x $PER_EMU"; fi
    w=$(med_of "${WALLS[$l]}"); p=$(med_of "${PEERS[$l]}")
    b=$(awk -v l="${LHOST[$l]}" -v k="$WAVES" 'BEGIN { printf "%.3f", l * k }')
    printf '| %-20s | %6s ms | %6s ms | %6s ms | %-8s | %6.2f s | %8.3f s | %-10s | %7.2f s | %-10s | %-8s | %5s ms |\n' \
      "$name" "$(ms "${LCURL[$l]}")" "$(ms "${LONE[$l]}")" "$(ms "${LHOST[$l]}")" "${REQS[$l]}" \
      "$w" "$b" "x$(r2 "$w" "$b")" "$p" "x$(r2 "$w" "$p")" "$(med_of "${CPU[$l]}")" "$(med_of "${FLAT[$l]}")"
  done
  echo
  for l in "${LAYOUTS[@]}"; do
    w=$(med_of "${WALLS[$l]}")
    echo "$l: bootgate walls [${WALLS[$l]% }] s, CPU [${BCPU[$l]% }] s; curl peer [${PEERS[$l]% }] s, CPU [${PCPU[$l]% }] s; emulator CPU during bootgate [${CPU[$l]% }] CPU-s/s;"
    echo "     per-host p50 elapsed_ms in the fleet runs [${FLAT[$l]% }]; serial (C=1, ${#SERIAL_HOSTS[@]} hosts) ${SERIAL[$l]} s = $(ms "${LSEQ[$l]}") ms/host;"
    echo "     other bounds: L_curl x $WAVES = $(awk -v l="${LCURL[$l]}" -v k="$WAVES" 'BEGIN { printf "%.3f", l * k }') s (wall/bound x$(r2 "$w" "$(awk -v l="${LCURL[$l]}" -v k="$WAVES" 'BEGIN { print l * k }')")), L_one x $WAVES = $(awk -v l="${LONE[$l]}" -v k="$WAVES" 'BEGIN { printf "%.3f", l * k }') s (x$(r2 "$w" "$(awk -v l="${LONE[$l]}" -v k="$WAVES" 'BEGIN { print l * k }')")); speed-up over serial x$(awk -v s="${LSEQ[$l]}" -v n="$N" -v w="$w" 'BEGIN { printf "%.1f", s * n / w }')"
  done
  echo
  echo "L_curl: one curl GET of h000's system resource (median of $SAMPLES). L_one: one 'bootgate power status h000', process start"
  echo "included (median of $SAMPLES). L_host: median per-host elapsed_ms reported by 'power status h000.. --concurrency 1' ($NSERIAL hosts)"
  echo "(the whole per-host Redfish exchange, ${REQS[one]} HTTP requests). bound = L_host x ceil($N/$CONC). curl peer: curl -L --parallel-max $CONC,"
  echo "the same requests per host. emu CPU: emulators' CPU-s per wall-s during the bootgate run (1 process ~ 1.0 max, GIL)."
  echo "(JSON outputs and emulator logs: $TMP with --keep)"
}
