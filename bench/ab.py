#!/usr/bin/env python3
"""Before and after: two batchsync binaries timed in alternation on the same files, so that
a change in the machine's load hits both alike. For a change's figures in docs/BENCHMARKS.md.

    bench/ab.py --a OLD/batchsync --b NEW/batchsync [--rows 1000000] [--rounds 5]
    bench/ab.py --a B --b B --profile      # one binary: the cost of mapping profile attributes

`--profile`: both sides key the segment by `email` (profile attributes need one row per
profile), and b maps plan, country and score as profile attributes besides its events.

Uses (or generates) the harness's data in bench/out/<size>/; prints medians and b ÷ a for the
first run, `plan` and `run --max-requests 0` of the second run, with the load seen; with
`--backfill`, also a first run under `initial = "send"` (every row becomes an event, committed to
the outbox, none sent), checked to hold one pending event per row; with `--ndjson`, also the
second run's `plan` over the same rows as NDJSON, checked against the generator's delta.
"""

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", type=Path, required=True, help="the binary before")
    p.add_argument("--b", type=Path, required=True, help="the binary after")
    p.add_argument("--gen", type=Path, required=True)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", action="store_true",
                   help="key by email on both sides; b maps profile attributes")
    p.add_argument("--backfill", action="store_true",
                   help="also a backfill: a first run under initial = \"send\", "
                        "`run --max-requests 0` (every row an event, committed, none sent)")
    p.add_argument("--ndjson", action="store_true",
                   help="also the second run's `plan` over the same rows as NDJSON")
    a = p.parse_args()
    env = dict(os.environ, BATCH_REST_API_KEY="bench-rest-key", BATCH_PROJECT_KEY="bench-project-key")
    d = h.HERE / "out" / f"ab-{h.label(a.rows)}"
    d.mkdir(parents=True, exist_ok=True)
    truth = h.generate(a.gen, d, a.rows, "csv")["evolved"]
    if a.ndjson:
        h.generate(a.gen, d, a.rows, "ndjson")
    state, s1 = d / "state.db", d / "state-first.db"
    configs = {}
    for b in "ab":
        key = "email" if a.profile else "id"
        profile = ["plan", "country", "score"] if a.profile and b == "b" else None
        first, second = d / f"first-{b}.toml", d / f"second-{b}.toml"
        h.write_config(first, d / "base.csv", state, "http://127.0.0.1:9", key=key, profile=profile)
        h.write_config(second, d / "evolved.csv", state, "http://127.0.0.1:9", key=key, profile=profile)
        backfill = d / f"backfill-{b}.toml"
        h.write_config(backfill, d / "base.csv", state, "http://127.0.0.1:9", initial="send", key=key,
                       profile=profile)
        ndjson = d / f"ndjson-{b}.toml"
        h.write_config(ndjson, d / "evolved.ndjson", state, "http://127.0.0.1:9", key=key, profile=profile)
        configs[b] = (first, second, backfill, ndjson)
    kinds = (("first", "plan", "commit") + (("backfill",) if a.backfill else ())
             + (("ndjson",) if a.ndjson else ()))
    times = {(b, k): [] for b in "ab" for k in kinds}
    loads = []
    for r in range(a.rounds):
        for b in ("ab" if r % 2 == 0 else "ba"):
            bs = [str(getattr(a, b)), "-q"]
            first, second, backfill, ndjson = configs[b]
            h.reset(state)
            m = h.measure(bs[:1] + ["--config", str(first)] + bs[1:] + ["run", "--json"], env)
            times[(b, "first")].append(m["seconds"])
            loads.append((m["load"], m["psi"]))
            h.save(state, s1)
            m = h.measure(bs[:1] + ["--config", str(second)] + bs[1:] + ["plan", "--json"], env)
            times[(b, "plan")].append(m["seconds"])
            h.save(s1, state)
            m = h.measure(bs[:1] + ["--config", str(second)] + bs[1:] + ["run", "--max-requests", "0", "--json"], env)
            times[(b, "commit")].append(m["seconds"])
            if a.ndjson:
                h.save(s1, state)
                m = h.measure(bs[:1] + ["--config", str(ndjson)] + bs[1:] + ["plan", "--json"], env)
                s = json.loads(m["stdout"])
                got = (s["added"], s["changed"], s["removed"])
                if got != (truth["added"], truth["changed"], truth["removed"]):
                    raise SystemExit(f"NDJSON plan of {b}: delta {got} is not the generator's")
                times[(b, "ndjson")].append(m["seconds"])
            if a.backfill:
                h.reset(state)
                m = h.measure(bs[:1] + ["--config", str(backfill)] + bs[1:]
                              + ["run", "--max-requests", "0", "--json"], env)
                s = json.loads(m["stdout"])
                if (s["added"], s["events"], s["events_pending"]) != (a.rows,) * 3:
                    raise SystemExit(f"backfill of {b}: {s['added']} added, {s['events']} events, "
                                     f"{s['events_pending']} pending, not {a.rows} each")
                times[(b, "backfill")].append(m["seconds"])
        h.log(f"round {r + 1} of {a.rounds} done")
    out = {}
    print(f"| run ({h.label(a.rows)} rows, medians of {a.rounds}) | a: before | b: after | b ÷ a |")
    print("|---|---:|---:|---:|")
    for k, name in (("first", "first run"), ("plan", "second run, `plan`"),
                    ("commit", "second run, `run --max-requests 0`"),
                    ("backfill", "backfill, `run --max-requests 0`"),
                    ("ndjson", "second run, `plan`, NDJSON")):
        if k not in kinds:
            continue
        ma, mb = statistics.median(times[("a", k)]), statistics.median(times[("b", k)])
        out[k] = {"a": ma, "b": mb, "a_all": times[("a", k)], "b_all": times[("b", k)]}
        print(f"| {name} | {ma:.2f} s | {mb:.2f} s | {mb / ma:.2f} |")
    print("\n" + h.load_line(loads))
    (d / "ab.json").write_text(json.dumps({"times": out, "loads": loads}, indent=1))


if __name__ == "__main__":
    main()
