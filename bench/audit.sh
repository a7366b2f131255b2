#!/usr/bin/env bash
# `bootgate audit` at scale: a /16 with 10,000 inventory hosts and 100,000 leases (a /16
# holds at most 65,534 leases, one per address, so the last ~41,000 strangers overflow into
# a second /16) plus one lease-committed event per lease.
#
#   1. examples/audit_bench.rs writes the site to a temporary directory, times the pure
#      audit (inventory + leases in memory → report; target < 1 s) over 5 rounds, and
#      writes the leases and events into the site's SQLite store through LeaseStore;
#   2. the real binary runs `bootgate audit -o json` on that site ROUNDS times (end to end:
#      config, inventory load, two store reads, audit, JSON out), wall time each.
#
# Usage: bench/audit.sh [ROUNDS]   (default 3; no root, no network; exits 0 whatever the
# numbers say, non-zero only if the build or the fixture fails). BGAUDIT_TMPDIR=dir picks
# where the fixture goes (default /tmp); --keep leaves it there.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=3
KEEP=0
for a in "$@"; do
    case "$a" in
        --keep) KEEP=1 ;;
        *) ROUNDS=$a ;;
    esac
done
cd "$REPO"
cargo build --release --bin bootgate --example audit_bench
DIR=$(mktemp -d "${BGAUDIT_TMPDIR:-/tmp}/bgaudit.XXXXXX")
[[ $KEEP == 1 ]] || trap 'rm -rf "$DIR"' EXIT
echo "== fixture and pure audit ($DIR)"
target/release/examples/audit_bench --dir "$DIR" --store --rounds 5
echo "== bootgate audit -o json, end to end"
for i in $(seq "$ROUNDS"); do
    start=$(date +%s.%N)
    set +e
    target/release/bootgate --config "$DIR/bootgate.toml" --log-level error audit -o json >"$DIR/report.json"
    rc=$?
    set -e
    end=$(date +%s.%N)
    printf 'round %d: %.2f s (exit %d)\n' "$i" "$(echo "$end - $start" | bc)" "$rc"
done
python3 - "$DIR/report.json" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
for s in v["subnets"]:
    print(f'  {s["name"]} {s["cidr"]}: size {s["size"]} reserved {s["reserved"]} leased {s["leased"]} free {s["free"]}')
codes = {}
for f in v["findings"]:
    codes[f["code"]] = codes.get(f["code"], 0) + 1
print("  findings:", codes)
PY
