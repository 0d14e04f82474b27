# Sourced by bench/pg/run.sh and bench/pg/warehouse.sh: the benchmark's orders table and the
# emulator. Expects PG_URL, BIN and WORK; `sql` runs one statement.

sql() { psql "$PG_URL" -v ON_ERROR_STOP=1 -q -c "$1" >/dev/null; }

# Ten columns; every value a function of the key g.
ROW_SQL="g AS order_id,
  'customer' || (g % 200000) || '@example.com' AS customer_email,
  timestamptz '2026-01-01T00:00:00Z' + g * interval '7 seconds' AS ordered_at,
  ((g::bigint * 7919) % 100000) / 100.0 AS amount,
  (ARRAY['EUR', 'USD', 'GBP'])[1 + g % 3] AS currency,
  g % 7 = 0 AS gift,
  CASE WHEN g % 5 = 0 THEN NULL ELSE (ARRAY['black_friday', 'vip', 'newsletter', 'spring_sale'])[1 + g % 4] END AS campaign,
  'paid' AS status,
  (1 + g % 9)::int AS quantity,
  (g % 1000) / 8.0::float8 AS score"

# create_orders TABLE ROWS: the table with ids 1..ROWS, stored in a scrambled order (md5 of the
# key), as a real table's heap would hold them: a sorted heap would flatter the snapshot.
create_orders() {
  echo "bench: creating $1 with $2 rows" >&2
  sql "CREATE TABLE $1 (
    order_id bigint PRIMARY KEY, customer_email text NOT NULL, ordered_at timestamptz NOT NULL,
    amount numeric(10, 2), currency text, gift boolean, campaign text, status text,
    quantity int, score float8)"
  sql "INSERT INTO $1 SELECT $ROW_SQL FROM generate_series(1, $2) g ORDER BY md5(g::text)"
  sql "VACUUM ANALYZE $1"
}

# orders_config TABLE: the benchmarks' sync of TABLE, [source] to [destination], on stdout (the
# caller adds its [state]). Expects PG_URL and ENDPOINT.
orders_config() {
  cat <<EOF
[source]
type = "postgres"
url = "$PG_URL"
query = "SELECT * FROM $1"
primary_key = ["order_id"]

[mapping]
custom_id = "customer_email"
event = "order_completed"
time = "ordered_at"
label = "campaign"
attributes = ["amount", "currency", "gift", "status", "quantity", "score"]

[sync]
late_events = "send"

[destination]
endpoint = "$ENDPOINT"
rate = 1000000
mass_rate = 1000000
EOF
}

# start_emulator: `batchsync emulate --no-limits` on a free port; sets EMU_PID and ENDPOINT.
start_emulator() {
  export BATCH_REST_API_KEY="bench-rest-key" BATCH_PROJECT_KEY="bench-project-key"
  "$BIN" emulate --no-limits --port 0 >"$WORK/emulator.out" 2>"$WORK/emulator.err" &
  EMU_PID=$!
  for _ in $(seq 1 100); do
    [ -s "$WORK/emulator.out" ] && break
    sleep 0.1
  done
  ENDPOINT=$(jq -r .endpoint "$WORK/emulator.out")
}
