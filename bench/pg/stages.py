#!/usr/bin/env python3
"""The PostgreSQL source's second run, stage by stage, beside the server's own COPY of the same
table (issue 12's "which stage is the floor"):

    bench/pg/stages.py [--bin target/release/batchsync] [--before OLD_BINARY] [--rows 1000000]
                       [--rounds 5]

bench/pg/run.sh's table (bench/pg/orders.sh: ten columns, rows in a scrambled key order),
a baseline recorded by each binary, then +2% / ~1% / ~1% changes. Each round, in turn:
  - the server alone: `psql -c "COPY (SELECT * FROM t) TO '/dev/null' (FORMAT binary)"` (the
    server writes the stream itself: no socket, no client), and the same `TO STDOUT` into psql;
  - `--before`'s second run (the binary the target is a multiple of), timed whole;
  - `--bin`'s second run with `BATCHSYNC_LOG=batchsync=debug`, cut by its log into the read (to
    the last row sorted) and what comes after it (the merge with the baseline, the diff, the
    commit, shipping the 20,000 events to `batchsync emulate --no-limits`).
Two bounds, each plus the stages after the read as measured: the server's own COPY (the least
this pipeline could take if receiving, decoding, typing, hashing and sorting cost nothing at
all), and psql's (if they cost what a client that does nothing with the rows costs). Every run is checked to find the changes made. Needs psql;
the URL from BATCHSYNC_TEST_PG_URL (default postgres://postgres@127.0.0.1:5432/test); the
table is dropped at the end.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import harness as h  # noqa: E402
import stages  # noqa: E402

URL = os.environ.get("BATCHSYNC_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432/test")
TABLE = f"bench_orders_stages_{os.getpid()}"


def orders(script):
    """Runs bash with bench/pg/orders.sh sourced (its `sql`, `create_orders` and `ROW_SQL`)."""
    subprocess.run(["bash", "-c", f'. "{HERE}/orders.sh"; {script}'], check=True,
                   env=dict(os.environ, PG_URL=URL))


def config(work, endpoint):
    """bench/pg/orders.sh's sync of the table, with its store in `work`."""
    work.mkdir(parents=True, exist_ok=True)
    sync = subprocess.run(["bash", "-c", f'. "{HERE}/orders.sh"; orders_config {TABLE}'], check=True,
                          capture_output=True, text=True, env=dict(os.environ, PG_URL=URL, ENDPOINT=endpoint))
    (work / "batchsync.toml").write_text(f'{sync.stdout}\n[state]\npath = "{work}/state/state.db"\n')
    return work / "batchsync.toml"


def fresh(work):
    shutil.rmtree(work / "state", ignore_errors=True)
    shutil.copytree(work / "baseline", work / "state")


def checked(out, rows):
    s = json.loads(out)
    want = (rows // 50, rows // 100, rows // 100)
    got = (s["added"], s["changed"], s["removed"])
    if got != want or s["status"] != "completed":
        raise SystemExit(f"second run: {s['status']}, delta {got}, not {want}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=str(h.ROOT / "target" / "release" / "batchsync"))
    p.add_argument("--before")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    if a.rows % 100:
        raise SystemExit("--rows: a multiple of 100")
    env = dict(os.environ, BATCH_REST_API_KEY="bench-rest-key", BATCH_PROJECT_KEY="bench-project-key")
    tmp = Path(tempfile.mkdtemp(prefix="pg-stages-"))
    emu = subprocess.Popen([a.bin, "emulate", "--no-limits", "--port", "0"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        endpoint = json.loads(emu.stdout.readline())["endpoint"]
        orders(f"create_orders {TABLE} {a.rows}")
        bins = {"this": a.bin} | ({"before": a.before} if a.before else {})
        cfgs = {k: config(tmp / k, endpoint) for k in bins}
        for k, b in bins.items():
            subprocess.run([b, "run", "--json", "--quiet", "--initial", "baseline", "--config",
                            str(cfgs[k])], env=env, check=True, stdout=subprocess.DEVNULL)
            shutil.copytree(tmp / k / "state", tmp / k / "baseline")
        top = a.rows + a.rows // 50
        orders(f'sql "INSERT INTO {TABLE} SELECT $ROW_SQL FROM generate_series({a.rows + 1}, {top}) g '
               f'ORDER BY md5(g::text)"; '
               f'sql "UPDATE {TABLE} SET amount = amount + 1 WHERE order_id % 100 = 1 AND order_id <= {a.rows}"; '
               f'sql "DELETE FROM {TABLE} WHERE order_id % 100 = 2 AND order_id <= {a.rows}"; '
               f'sql "VACUUM ANALYZE {TABLE}"')
        copies, befores, runs, loads = [], [], [], []
        for r in range(a.rounds):
            loads.append((h.load(), h.pressure()))
            copied = []
            for to in ("'/dev/null'", "STDOUT"):
                t0 = time.time()
                with open(os.devnull, "wb") as null:
                    subprocess.run(["psql", URL, "-c", f"COPY (SELECT * FROM {TABLE}) TO {to} (FORMAT binary)"],
                                   check=True, stdout=null)
                copied.append(time.time() - t0)
            copies.append(copied)
            if a.before:
                fresh(tmp / "before")
                t0 = time.time()
                out = subprocess.run([a.before, "run", "--json", "--quiet", "--config", str(cfgs["before"])],
                                     env=env, check=True, capture_output=True, text=True).stdout
                befores.append(time.time() - t0)
                checked(out, a.rows)
            fresh(tmp / "this")
            s, out = stages.staged_run([a.bin, "run", "--json", "--quiet", "--config", str(cfgs["this"])], env)
            checked(out, a.rows)
            runs.append(s)
            h.log(f"round {r + 1} of {a.rounds} done")
    finally:
        emu.kill()
        orders(f'sql "DROP TABLE IF EXISTS {TABLE}"')
        shutil.rmtree(tmp, ignore_errors=True)

    med = lambda f: statistics.median(x[f] for x in runs)
    copy, psql = (statistics.median(c[i] for c in copies) for i in (0, 1))
    after = med("after")
    rows = a.rows + a.rows // 50 - a.rows // 100
    print(f"| {rows:,} rows, medians of {a.rounds} | seconds | rows/s |")
    print("|---|---:|---:|")
    print(f"| the server alone: binary COPY to its /dev/null | {copy:.2f} | {rows / copy:,.0f} |")
    print(f"| the same COPY to psql's stdout, /dev/null | {psql:.2f} | {rows / psql:,.0f} |")
    if befores:
        before = statistics.median(befores)
        print(f"| `--before`: the whole second run | {before:.2f} | {rows / before:,.0f} |")
        print(f"| target: twice `--before`'s rate | {before / 2:.2f} | {2 * rows / before:,.0f} |")
    print(f"| this binary: the whole second run | {med('total'):.2f} | {rows / med('total'):,.0f} |")
    print(f"| of which the read (to the last row sorted) | {med('read'):.2f} | |")
    print(f"| of which after the read | {after:.2f} | |")
    print(f"| of which `merge_ms` / `commit_ms` (diff and commit) | {med('merge'):.2f} / {med('commit'):.2f} | |")
    print(f"| bound: the server's own COPY + after the read | {copy + after:.2f} | {rows / (copy + after):,.0f} |")
    print(f"| bound: psql's COPY + after the read | {psql + after:.2f} | {rows / (psql + after):,.0f} |")
    print("\n" + h.load_line(loads))


if __name__ == "__main__":
    main()
