#!/usr/bin/env bash
# `status` on a 1,000,000-row local store: the count of present baseline entries that each
# commit records, against the full read of the baseline it replaced (the same store with that
# count removed, which makes `status` count by reading), in the same run.
#
# Usage: bench/status.sh      ROWS=1000000 REPEAT=9 CARGO_TARGET_DIR=…
# Needs python3 (for the medians). Builds the release binary and bench/gen.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}
REPEAT=${REPEAT:-9}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release --quiet
cargo build --release --quiet --manifest-path bench/gen/Cargo.toml --target-dir "$TARGET/bench-gen"
BIN="$TARGET/release/batchsync"
GEN="$TARGET/bench-gen/release/bench-gen"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
"$GEN" --rows "$ROWS" --out "$W/base.csv" >/dev/null
"$GEN" --rows "$ROWS" --evolved --out "$W/evolved.csv" >/dev/null
config() {
  cat <<EOF
[source]
type = "csv"
path = "$1"
primary_key = ["id"]
[mapping]
custom_id = "email"
event = "segment_entered"
attributes = ["plan", "score"]
[sync]
initial = "baseline"
max_added = "off"
max_removed = "off"
[destination]
endpoint = "http://127.0.0.1:9"
[state]
path = "$W/state.db"
EOF
}
config "$W/base.csv" >"$W/base.toml"
config "$W/evolved.csv" >"$W/evolved.toml"
export BATCH_REST_API_KEY=bench BATCH_PROJECT_KEY=bench
"$BIN" -q --config "$W/base.toml" run --json >/dev/null
# The second run commits a delta layer (events pending: the endpoint is closed; not shipped).
"$BIN" -q --config "$W/evolved.toml" run --json --max-requests 0 >/dev/null
time_status() { # prints the median ms of REPEAT runs of `status --json`
  python3 - "$BIN" "$W/evolved.toml" "$REPEAT" <<'PY'
import statistics, subprocess, sys, time
bin_, cfg, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ms = []
for _ in range(n):
    t = time.perf_counter()
    subprocess.run([bin_, "-q", "--config", cfg, "status", "--json"], check=True, capture_output=True)
    ms.append((time.perf_counter() - t) * 1000)
print(f"{statistics.median(ms):.1f}")
PY
}
COUNTED=$(time_status)
ROWS_SHOWN=$("$BIN" -q --config "$W/evolved.toml" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["baseline_rows"])')
python3 -c "import sqlite3; c = sqlite3.connect('$W/state.db'); c.execute(\"DELETE FROM meta WHERE name = 'present_rows'\"); c.commit()"
READ=$(time_status)
ROWS_READ=$("$BIN" -q --config "$W/evolved.toml" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["baseline_rows"])')
[ "$ROWS_SHOWN" = "$ROWS_READ" ] || { echo "bench: the recorded count $ROWS_SHOWN is not the baseline's $ROWS_READ" >&2; exit 1; }
echo "status --json on a $ROWS-row store ($ROWS_SHOWN present entries), median of $REPEAT: ${COUNTED} ms with the recorded count, ${READ} ms reading the baseline"
echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)). Command: bench/status.sh (ROWS=$ROWS REPEAT=$REPEAT)"
