#!/usr/bin/env python3
"""The snapshot's times as ratios to the floor (issue 12), measured in the same run, in
alternation, so that the machine's load hits every figure alike:

    bench/ratios.py --bin target/release/batchsync --gen target/bench-gen/release/bench-gen \
                    --floor target/bench-floor/release/bench-floor [--rows 1000000] [--rounds 5]

The floor (`bench/floor`): one thread reads the evolved CSV file, parses each record with the
csv crate and hashes its bytes with one BLAKE3 call. Measured: the first run (`initial =
"baseline"`), the second run as `plan` and as `run --max-requests 0`, and the second run's
`plan` over the same rows as NDJSON; each checked against the generator's truth. Prints medians
and ratios (the issue's targets: first 1.6x, plan 1.1x, commit 1.4x, NDJSON plan 2.2x).
"""

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402

TARGETS = {"first": 1.6, "plan": 1.1, "commit": 1.4, "ndjson": 2.2}


def setup(doc):
    """The command line (`--bin --gen --floor [--rows] [--rounds]`) and the files measured (by
    this script and bench/stages.py): the segment and its evolution, as CSV and NDJSON, the
    three configs and the two stores' paths. Returns (args, env, truth, state, first store,
    configs by name)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", type=Path, required=True)
    p.add_argument("--gen", type=Path, required=True)
    p.add_argument("--floor", type=Path, required=True)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    env = dict(os.environ, BATCH_REST_API_KEY="bench-rest-key", BATCH_PROJECT_KEY="bench-project-key")
    d = h.HERE / "out" / f"ratios-{h.label(a.rows)}"
    d.mkdir(parents=True, exist_ok=True)
    truth = h.generate(a.gen, d, a.rows, "csv")["evolved"]
    h.generate(a.gen, d, a.rows, "ndjson")
    state = d / "state.db"
    configs = {"first": d / "first.toml", "second": d / "second.toml", "ndjson": d / "ndjson.toml"}
    for name, source in (("first", "base.csv"), ("second", "evolved.csv"), ("ndjson", "evolved.ndjson")):
        h.write_config(configs[name], d / source, state, "http://127.0.0.1:9")
    return a, env, truth, state, d / "state-first.db", configs


def check(stdout, truth, what):
    """Exits unless the run's JSON summary found the generator's delta."""
    s = json.loads(stdout)
    got = (s["added"], s["changed"], s["removed"])
    want = (truth["added"], truth["changed"], truth["removed"])
    if got != want:
        raise SystemExit(f"{what}: delta {got} is not the generator's {want}")


def main():
    a, env, truth, state, s1, configs = setup(__doc__)
    d = state.parent
    first, second, ndjson = configs["first"], configs["second"], configs["ndjson"]
    bs = [str(a.bin), "-q"]
    times = {k: [] for k in ("floor", "first", "plan", "commit", "ndjson")}
    rss = {k: [] for k in times}
    loads = []

    for r in range(a.rounds):
        m = h.measure([str(a.floor), str(d / "evolved.csv")])
        times["floor"].append(m["seconds"])
        rss["floor"].append(m["rss_kb"])
        loads.append((m["load"], m["psi"]))
        h.reset(state)
        m = h.measure(bs[:1] + ["--config", str(first)] + bs[1:] + ["run", "--json"], env)
        times["first"].append(m["seconds"])
        rss["first"].append(m["rss_kb"])
        h.save(state, s1)
        for k, cfg, cmd in (("plan", second, ["plan", "--json"]),
                            ("ndjson", ndjson, ["plan", "--json"]),
                            ("commit", second, ["run", "--max-requests", "0", "--json"])):
            h.save(s1, state)
            m = h.measure(bs[:1] + ["--config", str(cfg)] + bs[1:] + cmd, env)
            check(m["stdout"], truth, k)
            times[k].append(m["seconds"])
            rss[k].append(m["rss_kb"])
        h.log(f"round {r + 1} of {a.rounds} done")
    floor = statistics.median(times["floor"])
    print(f"| {h.label(a.rows)} rows, medians of {a.rounds} | seconds | rows/s | peak RSS | ÷ floor | target |")
    print("|---|---:|---:|---:|---:|---:|")
    names = {"floor": "floor (`bench/floor`, one thread)", "first": "first run (`initial = \"baseline\"`)",
             "plan": "second run, `plan`", "commit": "second run, `run --max-requests 0`",
             "ndjson": "second run, `plan`, NDJSON (÷ the CSV floor)"}
    out = {}
    for k in ("floor", "first", "plan", "commit", "ndjson"):
        t = statistics.median(times[k])
        mb = statistics.median(rss[k]) / 1024
        ratio = t / floor
        target = f"{TARGETS[k]}x" if k in TARGETS else ""
        print(f"| {names[k]} | {t:.2f} | {truth['rows'] / t:,.0f} | {mb:.0f} MB | {ratio:.2f} | {target} |")
        out[k] = {"seconds": t, "all": times[k], "rss_mb": mb, "ratio": ratio}
    print("\n" + h.load_line(loads))
    (d / "ratios.json").write_text(json.dumps({"times": out, "loads": loads}, indent=1))


if __name__ == "__main__":
    main()
