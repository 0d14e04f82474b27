#!/usr/bin/env python3
"""Where the snapshot's time goes, stage by stage, and the least time this pipeline could take
(issue 12's "which stage is the floor"):

    bench/stages.py --bin target/release/batchsync --gen target/bench-gen/release/bench-gen \
                    --floor target/bench-floor/release/bench-floor [--rows 1000000] [--rounds 5]

The same files and commands as bench/ratios.py (its out/ratios-<rows> directory is reused),
each run with `BATCHSYNC_LOG=batchsync=debug`; the log's timestamps cut the wall clock into
  - read: from the start to the last row sorted (`snapshot: sorting`, the last side to finish;
    the split, the parsing, typing, hashing and in-memory sorts, on both cores);
  - after the read: merging the sorted runs with the baseline, the diff, staging and the commit
    (`diff and commit` gives `merge_ms` and `commit_ms` where the run commits), until the
    process ends. None of it can start before the last row is read: the merge needs every
    row sorted.
The bound: the floor's time halved (its parsing and hashing shared perfectly by two cores, with
no typing, no encoding and no sort at all) plus the stages after the read as measured. A target
below that bound cannot be met by making the read faster: only by making the stages after it
cheaper, or by overlapping them with the read. Medians of each column; every run is checked
against the generator's truth.
"""

import datetime
import json
import statistics
import subprocess
import time

import harness as h
import ratios

TARGETS = {"first": 1.6, "plan": 1.1, "commit": 1.4}
NAMES = {"first": "first run (`initial = \"baseline\"`)", "plan": "second run, `plan`",
         "commit": "second run, `run --max-requests 0`"}


def stamp(line):
    """The Unix time of a tracing line (`2026-12-01T14:29:49.685030Z ...`)."""
    ts = line.split(" ", 1)[0].rstrip("Z")
    return datetime.datetime.fromisoformat(ts).replace(tzinfo=datetime.timezone.utc).timestamp()


def staged_run(cmd, env):
    """Runs cmd with the debug log; returns its stages in seconds and its stdout."""
    env = dict(env, BATCHSYNC_LOG="batchsync=debug")
    t0 = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    t1 = time.time()
    if p.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-2000:]}")
    lines = [l for l in p.stderr.splitlines() if l[:2] == "20"]
    sorted_at = max(stamp(l) for l in lines if "snapshot: sorting" in l)
    s = {"total": t1 - t0, "read": sorted_at - t0, "after": t1 - sorted_at,
         "merge": None, "commit": None}
    for l in lines:
        if "diff and commit" in l:
            f = dict(kv.split("=", 1) for kv in l.split() if "=" in kv)
            s["merge"] = int(f["merge_ms"]) / 1000
            s["commit"] = int(f["commit_ms"]) / 1000
    return s, p.stdout


def main():
    a, env, truth, state, s1, configs = ratios.setup(__doc__)
    floors, stages, loads = [], {k: [] for k in TARGETS}, []

    for r in range(a.rounds):
        m = h.measure([str(a.floor), str(state.parent / "evolved.csv")])
        floors.append(m["seconds"])
        loads.append((m["load"], m["psi"]))
        h.reset(state)
        s, _ = staged_run([str(a.bin), "--config", str(configs["first"]), "-q", "run", "--json"], env)
        stages["first"].append(s)
        h.save(state, s1)
        for k, cmd in (("plan", ["plan", "--json"]), ("commit", ["run", "--max-requests", "0", "--json"])):
            h.save(s1, state)
            s, out = staged_run([str(a.bin), "--config", str(configs["second"]), "-q"] + cmd, env)
            ratios.check(out, truth, k)
            stages[k].append(s)
        h.log(f"round {r + 1} of {a.rounds} done")

    floor = statistics.median(floors)
    med = lambda k, f: statistics.median(x[f] for x in stages[k]) if stages[k][0][f] is not None else None
    sec = lambda v: "" if v is None else f"{v:.2f}"
    print(f"| {h.label(a.rows)} rows, medians of {a.rounds}; floor {floor:.2f} s | whole run | read | "
          "after the read (merge, diff, commit) | of which `merge_ms` / `commit_ms` | "
          "bound: floor ÷ 2 + after | bound ÷ floor | target |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    out = {"floor": floor, "floors": floors}
    for k in TARGETS:
        after = med(k, "after")
        bound = floor / 2 + after
        split = "" if med(k, "merge") is None else f"{med(k, 'merge'):.2f} / {med(k, 'commit'):.2f}"
        print(f"| {NAMES[k]} | {sec(med(k, 'total'))} ({med(k, 'total') / floor:.2f}x) | "
              f"{sec(med(k, 'read'))} | {sec(after)} | {split} | {bound:.2f} | {bound / floor:.2f} | "
              f"{TARGETS[k]}x |")
        out[k] = stages[k]
    print("\n" + h.load_line(loads))
    (state.parent / "stages.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
