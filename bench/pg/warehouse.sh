#!/usr/bin/env bash
# The database mode against the local mode on the same PostgreSQL table (issue: the database
# mode). A ROWS-row, 10-column orders table (10,000,000 by default), then +2% added, 1% changed,
# 1% removed; each mode's second run is measured from a copy of the same baseline, alternating
# local and database REPEAT times, then a no-change run of the database mode.
#
# Reported per mode (medians): wall time, and per step: for the database mode the stage
# statement, fetch + map + commit, ship (from its debug log); for the local mode read+sort,
# merge+map, commit, ship. Peak RSS (/usr/bin/time -v), and the bytes received from the
# database on batchsync's own connections (counted on the socket, from the debug log), against
# the fetched rows' own size (the text of the rows that become events).
# Every run's delta is checked against the truth (added, changed, removed, events sent).
#
# Usage: bench/pg/warehouse.sh
#   BATCHSYNC_TEST_PG_URL   the database (default postgres://postgres@127.0.0.1:5432/test);
#                           the script creates and drops its own table and schema there
#   ROWS=10000000 REPEAT=3
#   CARGO_TARGET_DIR        where cargo builds (default ./target)
# Needs psql, jq and /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

PG_URL=${BATCHSYNC_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}
ROWS=${ROWS:-10000000}
REPEAT=${REPEAT:-3}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
TABLE="bench_wh_orders_$$"
SCHEMA="bench_wh_$$"
ADDED=$((ROWS / 50))
CHANGED=$((ROWS / 100))
REMOVED=$((ROWS / 100))

for tool in psql jq /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 1; }
done

echo "bench: building the release binary" >&2
cargo build --release --quiet
BIN="$TARGET/release/batchsync"

WORK=$(mktemp -d)
EMU_PID=""
cleanup() {
  [ -n "$EMU_PID" ] && kill "$EMU_PID" 2>/dev/null && wait "$EMU_PID" 2>/dev/null
  psql "$PG_URL" -q -c "DROP TABLE IF EXISTS $TABLE; DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

. "$ROOT/bench/pg/orders.sh"
val() { psql "$PG_URL" -v ON_ERROR_STOP=1 -Atq -c "$1"; }
create_orders "$TABLE" "$ROWS"
start_emulator

mkdir -p "$WORK/local" "$WORK/database"
config() {
  orders_config "$TABLE"
  printf '\n[state]\n%s\n' "$1"
}
config 'path = ".batchsync/state.db"' >"$WORK/local/batchsync.toml"
config "store = \"database\"
schema = \"$SCHEMA\"
name = \"orders\"" >"$WORK/database/batchsync.toml"
"$BIN" setup --quiet --config "$WORK/database/batchsync.toml"

# measure MODE NAME ARGS…: one `run --json` of MODE; sets MS, RSS_KB; keeps NAME.json/.err.
measure() {
  local mode=$1 name=$2 start end
  start=$(date +%s%N)
  (cd "$WORK/$mode" && BATCHSYNC_LOG=batchsync=debug /usr/bin/time -v -o "$name.time" "$BIN" run --json --quiet "${@:3}" \
    >"$name.json" 2>"$name.err") || { cat "$WORK/$mode/$name.err" "$WORK/$mode/$name.json" >&2; exit 1; }
  end=$(date +%s%N)
  MS=$(((end - start) / 1000000))
  RSS_KB=$(awk -F': *' '/Maximum resident set size/ {print $2}' "$WORK/$mode/$name.time")
}
# field FILE NAME: the last value of NAME=… in a debug log.
field() { grep -o "$2=[0-9]*" "$1" | tail -n1 | cut -d= -f2; }

echo "bench: first runs (--initial baseline)" >&2
measure local first --initial baseline
LOCAL_FIRST_MS=$MS LOCAL_FIRST_RSS=$RSS_KB
measure database first --initial baseline
DB_FIRST_MS=$MS DB_FIRST_RSS=$RSS_KB
cp -a "$WORK/local/.batchsync" "$WORK/local-baseline"
sql "CREATE TABLE $SCHEMA.saved_baseline AS SELECT * FROM $SCHEMA.orders_baseline"

echo "bench: changing the table: +$ADDED rows, $CHANGED changed, $REMOVED removed" >&2
sql "INSERT INTO $TABLE SELECT $ROW_SQL FROM generate_series($ROWS + 1, $ROWS + $ADDED) g ORDER BY md5(g::text)"
sql "UPDATE $TABLE SET amount = amount + 1 WHERE order_id % 100 = 1 AND order_id <= $ROWS"
sql "DELETE FROM $TABLE WHERE order_id % 100 = 2 AND order_id <= $ROWS"
sql "VACUUM ANALYZE $TABLE"
FETCHED_TEXT=$(val "SELECT sum(octet_length(t::text)) FROM $TABLE t WHERE order_id > $ROWS")

check() { # check FILE: the delta is the truth
  local j=$1
  local got
  got="$(jq -r '[.status, .added, .changed, .removed, .events_sent] | @tsv' "$j")"
  [ "$got" = "completed	$ADDED	$CHANGED	$REMOVED	$ADDED" ] ||
    { echo "bench: wrong delta in $j: $got (want completed $ADDED $CHANGED $REMOVED $ADDED)" >&2; exit 1; }
}

declare -a L_MS L_RSS D_MS D_RSS D_STAGE D_COMMIT D_SHIP D_BYTES D_FETCH L_READ L_MERGE L_COMMIT L_BYTES
ROWS_LOCAL=""
ROWS_DB=""
for i in $(seq 1 "$REPEAT"); do
  rm -rf "$WORK/local/.batchsync" && cp -a "$WORK/local-baseline" "$WORK/local/.batchsync"
  sql "BEGIN; DELETE FROM $SCHEMA.orders_baseline; INSERT INTO $SCHEMA.orders_baseline SELECT * FROM $SCHEMA.saved_baseline; COMMIT;"
  sql "VACUUM ANALYZE $SCHEMA.orders_baseline"
  echo "bench: second runs $i/$REPEAT" >&2
  measure local "second$i"
  check "$WORK/local/second$i.json"
  L_MS+=("$MS") L_RSS+=("$RSS_KB")
  e="$WORK/local/second$i.err"
  L_READ+=("$(field "$e" read_ms || echo 0)") L_MERGE+=("$(field "$e" merge_ms)") L_COMMIT+=("$(field "$e" commit_ms)")
  L_BYTES+=("$(field "$e" bytes_received || echo 0)")
  ROWS_LOCAL+="| local | $i | $(awk "BEGIN {printf \"%.2f\", $MS / 1000}") | $(field "$e" merge_ms) | $(field "$e" commit_ms) | - | $((RSS_KB / 1024)) | $(field "$e" bytes_received || echo ?) |"$'\n'
  measure database "second$i"
  check "$WORK/database/second$i.json"
  e="$WORK/database/second$i.err"
  D_MS+=("$MS") D_RSS+=("$RSS_KB") D_STAGE+=("$(field "$e" stage_ms)") D_COMMIT+=("$(field "$e" fetch_map_commit_ms)")
  D_SHIP+=("$(field "$e" ship_ms)") D_BYTES+=("$(field "$e" bytes_received)")
  # The bytes of the fetch alone: received by the end of the fetch, less by the end of the stage.
  staged_b=$(grep ' staged ' "$e" | grep -o 'bytes_received=[0-9]*' | tail -n1 | cut -d= -f2)
  fetched_b=$(grep ' fetched ' "$e" | grep -o 'bytes_received=[0-9]*' | tail -n1 | cut -d= -f2)
  D_FETCH+=("$((fetched_b - staged_b))")
  ROWS_DB+="| database | $i | $(awk "BEGIN {printf \"%.2f\", $MS / 1000}") | $(field "$e" stage_ms) | $(field "$e" fetch_map_commit_ms) | $(field "$e" ship_ms) | $((RSS_KB / 1024)) | $(field "$e" bytes_received) |"$'\n'
done

echo "bench: a no-change run of the database mode" >&2
measure database nochange
NC_MS=$MS NC_RSS=$RSS_KB
got="$(jq -r '[.status, .added, .changed, .removed, .requests] | @tsv' "$WORK/database/nochange.json")"
[ "$got" = "completed	0	0	0	0" ] || { echo "bench: the no-change run found a delta: $got" >&2; exit 1; }
NC_DELTA=$(grep -o 'candidates=[0-9]*' "$WORK/database/nochange.err" | tail -n1 | cut -d= -f2)
NC_BYTES=$(field "$WORK/database/nochange.err" bytes_received)

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
s() { awk "BEGIN {printf \"%.2f\", $1 / 1000}"; }
mib() { awk "BEGIN {printf \"%.0f\", $1 / 1024}"; }
DB_BYTES=$(median "${D_BYTES[@]}")
DB_FETCH=$(median "${D_FETCH[@]}")
L_BYTES_MED=$(median "${L_BYTES[@]}")
# The local mode reads the whole table (ROWS + ADDED - REMOVED rows) with a plain SELECT *.
WIRE=$((L_BYTES_MED * ADDED / (ROWS + ADDED - REMOVED)))

cat <<EOF
## The database mode against the local mode ($ROWS-row table, 10 columns; +$ADDED / $CHANGED changed / $REMOVED removed)

Medians of $REPEAT, alternating local and database runs from the same baseline:

| mode | second run s | peak RSS MiB | bytes received from the database |
|---|---|---|---|
| local | $(s "$(median "${L_MS[@]}")") | $(mib "$(median "${L_RSS[@]}")") | $(median "${L_BYTES[@]}") |
| database | $(s "$(median "${D_MS[@]}")") | $(mib "$(median "${D_RSS[@]}")") | $DB_BYTES |

Database mode steps (median ms): stage $(median "${D_STAGE[@]}"), fetch + map + commit $(median "${D_COMMIT[@]}"), ship $(median "${D_SHIP[@]}").
Local mode steps (median ms): read + diff + map (merge) $(median "${L_MERGE[@]}"), commit $(median "${L_COMMIT[@]}").
The fetched rows' own size: their text (\`octet_length(t::text)\` summed) $FETCHED_TEXT bytes; on the wire, at the local mode's bytes per row of a plain \`SELECT *\` of the same table, $WIRE bytes.
Bytes received by the database mode: $DB_BYTES in all, of which the fetch $DB_FETCH (the rest: reading the outbox's request bodies back to send them, and the statements' answers).
Fetch / the rows' wire size = $(awk "BEGIN {printf \"%.2f\", $DB_FETCH / $WIRE}"); fetch / their text = $(awk "BEGIN {printf \"%.2f\", $DB_FETCH / $FETCHED_TEXT}"); all received / their text = $(awk "BEGIN {printf \"%.2f\", $DB_BYTES / $FETCHED_TEXT}").

| mode | run | wall s | stage / merge ms | fetch+map+commit / commit ms | ship ms | peak RSS MiB | bytes received |
|---|---|---|---|---|---|---|---|
$ROWS_LOCAL$ROWS_DB
First run (\`--initial baseline\`, nothing sent): local $(s "$LOCAL_FIRST_MS") s ($(mib "$LOCAL_FIRST_RSS") MiB), database $(s "$DB_FIRST_MS") s ($(mib "$DB_FIRST_RSS") MiB).
No-change run of the database mode: $(s "$NC_MS") s, ${NC_DELTA:-0} delta rows fetched, 0 requests, $(mib "$NC_RSS") MiB, $NC_BYTES bytes received.

Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -h | awk '/^Mem:/ {print $2}') RAM; PostgreSQL $(val 'SHOW server_version') on the same machine (work_mem $(val 'SHOW work_mem'), shared_buffers $(val 'SHOW shared_buffers')).
Command: \`bench/pg/warehouse.sh\` (ROWS=$ROWS REPEAT=$REPEAT)
EOF
