#!/usr/bin/env bash
# PostgreSQL benchmark: the second run of a sync whose segment is a 1,000,000-row, 10-column
# orders table.
#
#   1. Build the release binary.
#   2. Create the table with generate_series, rows stored in a scrambled key order (as a real
#      table's heap would hold them: the snapshot must sort, a sorted heap would flatter it).
#   3. First run, `--initial baseline`: records the baseline, sends nothing.
#   4. Change the table: 2% rows added, 1% changed (a mapped column), 1% removed.
#   5. The measured run, REPEAT times from a copy of the same baseline: reads the whole table,
#      diffs it, commits, and ships the 2% added rows as events to `batchsync emulate
#      --no-limits` on loopback. Reported: rows read per second (wall clock of the whole run)
#      and peak RSS, median of REPEAT, with each run's figures.
#
# Usage: bench/pg/run.sh
#   BATCHSYNC_TEST_PG_URL   the database (default postgres://postgres@127.0.0.1:5432/test);
#                           the script creates and drops its own table there
#   ROWS=1000000 REPEAT=3   size and repetitions
#   CARGO_TARGET_DIR        where cargo builds (default ./target)
# Needs psql and jq. Peak RSS comes from /usr/bin/time -v when present, else from polling
# VmHWM in /proc every 20 ms (which can miss the last 20 ms of growth).
#
# Shipping is paced at 1,000,000 updates/s so that the figure measures batchsync, not
# Batch's rate limit (10,000 updates/s on mass-update would add about 2 s for 20,000 events).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

PG_URL=${BATCHSYNC_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}
ROWS=${ROWS:-1000000}
REPEAT=${REPEAT:-3}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
TABLE="bench_orders_$$"
ADDED=$((ROWS / 50))

for tool in psql jq; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 1; }
done

echo "bench: building the release binary" >&2
cargo build --release --quiet
BIN="$TARGET/release/batchsync"

WORK=$(mktemp -d)
EMU_PID=""
cleanup() {
  [ -n "$EMU_PID" ] && kill "$EMU_PID" 2>/dev/null && wait "$EMU_PID" 2>/dev/null
  psql "$PG_URL" -q -c "DROP TABLE IF EXISTS $TABLE" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

. "$ROOT/bench/pg/orders.sh"
create_orders "$TABLE" "$ROWS"
start_emulator

orders_config "$TABLE" >"$WORK/batchsync.toml"

# measure NAME: runs `batchsync run --json` in $WORK; sets MS (wall clock) and RSS_KB.
measure() {
  local name=$1 start end
  start=$(date +%s%N)
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -v -o "$WORK/$name.time" "$BIN" run --json --quiet --config "$WORK/batchsync.toml" "${@:2}" \
      >"$WORK/$name.json" 2>"$WORK/$name.err" || { cat "$WORK/$name.err" "$WORK/$name.json" >&2; exit 1; }
    RSS_KB=$(awk -F': *' '/Maximum resident set size/ {print $2}' "$WORK/$name.time")
  else
    "$BIN" run --json --quiet --config "$WORK/batchsync.toml" "${@:2}" >"$WORK/$name.json" 2>"$WORK/$name.err" &
    local pid=$! hwm=0 v
    while kill -0 "$pid" 2>/dev/null; do
      v=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
      [ -n "$v" ] && hwm=$v
      sleep 0.02
    done
    wait "$pid" || { cat "$WORK/$name.err" "$WORK/$name.json" >&2; exit 1; }
    RSS_KB=$hwm
  fi
  end=$(date +%s%N)
  MS=$(((end - start) / 1000000))
}

echo "bench: first run (baseline)" >&2
measure first --initial baseline
FIRST_MS=$MS FIRST_RSS=$RSS_KB
cp -a "$WORK/.batchsync" "$WORK/baseline"

echo "bench: changing the table: +$ADDED rows, 1% changed, 1% removed" >&2
sql "INSERT INTO $TABLE SELECT $ROW_SQL FROM generate_series($ROWS + 1, $ROWS + $ADDED) g ORDER BY md5(g::text)"
sql "UPDATE $TABLE SET amount = amount + 1 WHERE order_id % 100 = 1 AND order_id <= $ROWS"
sql "DELETE FROM $TABLE WHERE order_id % 100 = 2 AND order_id <= $ROWS"
sql "VACUUM ANALYZE $TABLE"

declare -a RATES RSSES
RESULTS=""
for i in $(seq 1 "$REPEAT"); do
  rm -rf "$WORK/.batchsync"
  cp -a "$WORK/baseline" "$WORK/.batchsync"
  echo "bench: second run $i/$REPEAT" >&2
  measure "second$i"
  j="$WORK/second$i.json"
  [ "$(jq -r .status "$j")" = completed ] || { echo "bench: run $i did not complete" >&2; cat "$j" >&2; exit 1; }
  rows=$(jq .rows "$j")
  rate=$((rows * 1000 / MS))
  RATES+=("$rate")
  RSSES+=("$RSS_KB")
  RESULTS+=$(printf '| %d | %d | %d | %d | %d | %d | %.2f | %d | %.0f |' "$i" "$rows" \
    "$(jq .added "$j")" "$(jq .changed "$j")" "$(jq .removed "$j")" "$(jq .events_sent "$j")" \
    "$(awk "BEGIN {print $MS / 1000}")" "$rate" "$(awk "BEGIN {print $RSS_KB / 1024}")")$'\n'
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
MED_RATE=$(median "${RATES[@]}")
MED_RSS=$(median "${RSSES[@]}")

cat <<EOF
## PostgreSQL, second run ($ROWS-row table, 10 columns; +2% / ~1% / ~1%)

Median of $REPEAT: **$MED_RATE rows/s**, peak RSS **$(awk "BEGIN {printf \"%.0f\", $MED_RSS / 1024}") MiB**.

| run | rows read | added | changed | removed | events sent | wall s | rows/s | peak RSS MiB |
|---|---|---|---|---|---|---|---|---|
$RESULTS
First run (\`--initial baseline\`, $ROWS rows, nothing sent): $(awk "BEGIN {printf \"%.2f\", $FIRST_MS / 1000}") s, peak RSS $(awk "BEGIN {printf \"%.0f\", $FIRST_RSS / 1024}") MiB.

Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -h | awk '/^Mem:/ {print $2}') RAM; $(psql "$PG_URL" -Atc 'SHOW server_version') on the same machine.
Command: \`bench/pg/run.sh\` (ROWS=$ROWS REPEAT=$REPEAT)
EOF
