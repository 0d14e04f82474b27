#!/usr/bin/env python3
"""The same job in plain Python, as a data engineer would first write it: read the segment with
the csv module, hash each row, diff against the baseline in SQLite with SQL, and commit the new
baseline and an outbox of events in one transaction.

    baseline.py --db state.db --csv segment.csv [--key id] [--custom-id email]

Prints one JSON line: rows, added, changed, removed, events, the hash used, seconds.

Kept short and honest. It does less than batchsync, which only flatters it: no typing or
validation of values (it hashes the raw text of the row), no canonical encoding, no rejects, no
event rules (an event is the row as a JSON object), no run record, no guards, no shipping.
Durability is the same: WAL and synchronous = FULL.
"""

import argparse
import csv
import json
import sqlite3
import sys
import time

try:
    from blake3 import blake3 as _blake3

    HASH = "blake3"

    def digest(data):
        return _blake3(data).digest(length=16)

except ImportError:  # the fallback the harness reports
    import hashlib

    HASH = "blake2b"

    def digest(data):
        return hashlib.blake2b(data, digest_size=16).digest()


CHUNK = 50_000


def read(path, key):
    """(key, hash) of every row, in file order."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        k = next(rows).index(key)
        for rec in rows:
            yield int(rec[k]), digest("\x1f".join(rec).encode())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--csv", required=True)
    p.add_argument("--key", default="id")
    p.add_argument("--custom-id", default="email")
    a = p.parse_args()
    t0 = time.perf_counter()

    db = sqlite3.connect(a.db, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE IF NOT EXISTS baseline (key INTEGER PRIMARY KEY, hash BLOB NOT NULL)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, custom_id TEXT NOT NULL, body TEXT NOT NULL)"
    )
    first = db.execute("SELECT NOT EXISTS (SELECT 1 FROM baseline)").fetchone()[0]

    # The snapshot, in a temporary table, loaded in chunks.
    db.execute("CREATE TEMP TABLE snap (key INTEGER PRIMARY KEY, hash BLOB NOT NULL)")
    it = read(a.csv, a.key)
    rows = 0
    while True:
        chunk = [r for _, r in zip(range(CHUNK), it)]
        if not chunk:
            break
        db.executemany("INSERT INTO snap VALUES (?, ?)", chunk)
        rows += len(chunk)

    # The diff, in SQL.
    added = [k for (k,) in db.execute(
        "SELECT s.key FROM snap s LEFT JOIN baseline b ON b.key = s.key WHERE b.key IS NULL")]
    changed = db.execute(
        "SELECT COUNT(*) FROM snap s JOIN baseline b ON b.key = s.key WHERE b.hash != s.hash").fetchone()[0]
    removed = db.execute(
        "SELECT COUNT(*) FROM baseline b WHERE NOT EXISTS (SELECT 1 FROM snap s WHERE s.key = b.key)").fetchone()[0]

    # The events of the added rows (none on the first run, which records the baseline): a
    # second pass over the file, since the rows were not kept.
    events = []
    if not first and added:
        wanted = set(added)
        with open(a.csv, newline="", encoding="utf-8") as f:
            for rec in csv.DictReader(f):
                if int(rec[a.key]) in wanted:
                    events.append((rec[a.custom_id], json.dumps(rec)))

    # The commit: new baseline and outbox, one transaction.
    db.execute("BEGIN IMMEDIATE")
    db.execute(
        "INSERT OR REPLACE INTO baseline SELECT s.key, s.hash FROM snap s "
        "LEFT JOIN baseline b ON b.key = s.key WHERE b.hash IS NULL OR b.hash != s.hash")
    db.execute("DELETE FROM baseline WHERE NOT EXISTS (SELECT 1 FROM snap s WHERE s.key = baseline.key)")
    db.executemany("INSERT INTO outbox (custom_id, body) VALUES (?, ?)", events)
    db.execute("COMMIT")
    db.close()

    json.dump({
        "rows": rows,
        "added": len(added),
        "changed": changed,
        "removed": removed,
        "events": len(events),
        "hash": HASH,
        "seconds": round(time.perf_counter() - t0, 3),
    }, sys.stdout)
    print()


if __name__ == "__main__":
    main()
