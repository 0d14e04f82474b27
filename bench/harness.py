#!/usr/bin/env python3
"""The benchmark's driver, run by bench/run.sh once the binaries are built (see its --help).

For each size: generate a segment and its evolution (bench/gen), then, `--repeat` times over,
time and take the peak RSS of
  1. the first run (`run`, initial = "baseline": every row recorded, nothing sent);
  2. the second run on the evolved file: `plan`; `run --max-requests 0` (snapshot, diff and
     commit, shipping nothing); and `run` against `batchsync emulate --no-limits` (all of it,
     shipping the added rows' events);
  3. a no-change run (`run` again on the same file);
and the Python baseline (bench/baseline.py) on the same files. Shipping is measured on its own:
a store whose outbox holds `--ship-events` events is shipped to `batchsync emulate --no-limits`
(to each endpoint), then to `batchsync emulate` with Batch's limits for `--limits-seconds`.

Figures are medians. Each one carries the 1-minute load average seen before its runs: on a
shared machine, a figure taken under load is slower than the code. The table goes to stdout,
bench/results/latest.json and, between markers, docs/BENCHMARKS.md.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEGIN = "<!-- bench:begin (written by bench/run.sh; edit outside these markers) -->"
END = "<!-- bench:end -->"
GNU_TIME = shutil.which("time") if Path("/usr/bin/time").exists() else None

TARGETS = {
    "second_rate": 1_500_000,
    "python_ratio": 8.0,
    "big_within": 0.20,
    "big_rss_mb": 300,
    "first_rate": 1_000_000,
    "ship_off": 50_000,
    "limits_share": 0.95,
    "limits_429": 0.01,
    "allowed": 300,
}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def label(n):
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def load():
    return round(os.getloadavg()[0], 2)


def pressure():
    """The share of the last 10 s in which some runnable task waited for a CPU (PSI), in %."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(line.split("avg10=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return None


def measure(cmd, env=None, timeout=3600, check=True):
    """Runs cmd; returns wall seconds, peak RSS (KB) and stdout. GNU time reports the RSS when
    it is installed; else wait4's rusage, the same counter."""
    before, psi = load(), pressure()
    out_path = HERE / "out" / ".time"
    argv = [GNU_TIME, "-f", "%M", "-o", str(out_path)] + cmd if GNU_TIME else cmd
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        stdout, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        raise
    seconds = time.perf_counter() - t0
    if GNU_TIME:
        rss = int(out_path.read_text().strip().splitlines()[-1])
    else:
        rss = 0  # filled below from rusage
    if check and p.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{stderr[-2000:]}")
    if not GNU_TIME:
        import resource
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": seconds, "rss_kb": rss, "stdout": stdout, "load": before, "psi": psi,
            "code": p.returncode}


def median(runs, key):
    return statistics.median(r[key] for r in runs)


def summary(runs, rows, extra=None):
    """The median of a measurement's runs."""
    s = {
        "seconds": round(median(runs, "seconds"), 3),
        "rows": rows,
        "rows_per_s": round(rows / median(runs, "seconds")),
        "rss_mb": round(max(r["rss_kb"] for r in runs) / 1024, 1),
        "load": [min(r["load"] for r in runs), max(r["load"] for r in runs)],
        "psi": max((r["psi"] for r in runs if r["psi"] is not None), default=None),
        "runs": len(runs),
        "all_seconds": [round(r["seconds"], 3) for r in runs],
    }
    s.update(extra or {})
    return s


class Emulator:
    def __init__(self, binary, env, limits):
        cmd = [str(binary), "emulate", "--port", "0"] + ([] if limits else ["--no-limits"])
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        self.endpoint = json.loads(self.p.stdout.readline())["endpoint"]

    def stats(self):
        with urllib.request.urlopen(self.endpoint + "/_emulator/stats", timeout=10) as r:
            return json.load(r)

    def stop(self):
        self.p.terminate()
        self.p.wait(timeout=30)


MAPPING = """[mapping]
custom_id = "email"
event = "segment_entered"
time = "signed_up_at"
attributes = ["first_name", "last_name", "country", "plan", "score", "active", "bio"]
types = { id = "integer", signed_up_at = "date", score = "number", active = "bool" }
timezone = "UTC"
"""


def write_config(path, source, state, endpoint, initial="baseline", rate=1e6, mass_from=10_000,
                 key="id", profile=None):
    """`profile`: the columns mapped as profile attributes (they need `key` = "email")."""
    kind = "ndjson" if str(source).endswith(".ndjson") else "csv"
    mapping = MAPPING
    if key != "id":
        # `id` is then a column the mapping does not use: no type for it.
        mapping = mapping.replace('id = "integer", ', "")
    if profile:
        mapping += "profile_attributes = [" + ", ".join(f'"{c}"' for c in profile) + "]\n"
    path.write_text(f"""# Written by bench/harness.py.
[source]
type = "{kind}"
path = "{source}"
primary_key = ["{key}"]

{mapping}
[sync]
initial = "{initial}"
late_events = "send"
max_added = "off"
max_removed = "off"

[destination]
endpoint = "{endpoint}"
rate = {rate}
mass_rate = {max(rate, 10_000)}
mass_update_from = {mass_from}

[state]
path = "{state}"
""")


def generate(gen, d, rows, fmt):
    """base and evolved files, reused when already generated with the same arguments."""
    files = {}
    for version in ("base", "evolved"):
        out = d / f"{version}.{fmt}"
        stamp = d / f"{version}.{fmt}.json"
        args = [str(gen), "--rows", str(rows), "--format", fmt, "--out", str(out)]
        if version == "evolved":
            args.append("--evolved")
        if out.exists() and stamp.exists() and json.loads(stamp.read_text()).get("args") == args[1:]:
            files[version] = json.loads(stamp.read_text())
            continue
        log(f"generating {out}")
        t0 = time.perf_counter()
        info = json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)
        info["args"] = args[1:]
        info["seconds"] = round(time.perf_counter() - t0, 1)
        stamp.write_text(json.dumps(info))
        files[version] = info
    return files


def store_files(state):
    return [state] + [state.with_name(state.name + s) for s in ("-wal", "-shm")]


def save(state, to):
    for src, dst in zip(store_files(state), store_files(to)):
        if src.exists():
            shutil.copyfile(src, dst)
        elif dst.exists():
            dst.unlink()


def reset(state):
    for f in store_files(state):
        if f.exists():
            f.unlink()


def bench_size(a, n, env, emu_off):
    d = HERE / "out" / label(n)
    d.mkdir(parents=True, exist_ok=True)
    data = generate(a.gen, d, n, "csv")
    state, s1 = d / "state.db", d / "state-first.db"
    first_cfg, second_cfg = d / "first.toml", d / "second.toml"
    write_config(first_cfg, d / "base.csv", state, emu_off.endpoint)
    write_config(second_cfg, d / "evolved.csv", state, emu_off.endpoint)
    bs = [str(a.bin)]
    evo = data["evolved"]
    res = {"rows": n, "evolved_rows": evo["rows"], "delta": {k: evo[k] for k in ("added", "changed", "removed")}}
    runs = {k: [] for k in ("first", "plan", "commit", "full", "nochange")}
    repeat = a.repeat if n <= a.rows else a.big_repeat
    for i in range(repeat):
        log(f"{label(n)}: batchsync, round {i + 1} of {repeat}")
        reset(state)
        m = measure(bs + ["--config", str(first_cfg), "-q", "run", "--initial", "baseline", "--json"], env)
        s = json.loads(m["stdout"])
        assert s["added"] == n and s["events"] == 0, s
        runs["first"].append(m)
        save(state, s1)
        m = measure(bs + ["--config", str(second_cfg), "-q", "plan", "--json"], env)
        s = json.loads(m["stdout"])
        got = {k: s[k] for k in ("added", "changed", "removed")}
        if got != res["delta"]:
            log(f"WARNING: plan found {got}, the generator made {res['delta']}")
        res["plan_delta"] = got
        runs["plan"].append(m)
        save(s1, state)
        m = measure(bs + ["--config", str(second_cfg), "-q", "run", "--max-requests", "0", "--json"], env)
        s = json.loads(m["stdout"])
        assert s["events_sent"] == 0 and s["events_pending"] == s["events"], s
        runs["commit"].append(m)
        save(s1, state)
        before = emu_off.stats()
        m = measure(bs + ["--config", str(second_cfg), "-q", "run", "--json"], env)
        s = json.loads(m["stdout"])
        after = emu_off.stats()
        assert s["events_pending"] == 0, s
        m["events"] = s["events_sent"]
        m["requests"] = after["requests"] - before["requests"]
        m["throttled"] = after["by_status"].get("429", 0) - before["by_status"].get("429", 0)
        runs["full"].append(m)
        m = measure(bs + ["--config", str(second_cfg), "-q", "run", "--json"], env)
        s = json.loads(m["stdout"])
        assert s["added"] == 0 and s["events"] == 0, s
        runs["nochange"].append(m)
    rows2 = evo["rows"]
    res["first"] = summary(runs["first"], n)
    res["plan"] = summary(runs["plan"], rows2)
    res["commit"] = summary(runs["commit"], rows2)
    events = runs["full"][0]["events"]
    res["full"] = summary(runs["full"], rows2, {"events": events, "requests": runs["full"][0]["requests"],
                                                "throttled": sum(r["throttled"] for r in runs["full"])})
    res["nochange"] = summary(runs["nochange"], rows2)
    if n == a.rows and not a.no_ndjson:
        nd = generate(a.gen, d, n, "ndjson")
        cfg = d / "second-ndjson.toml"
        write_config(cfg, d / "evolved.ndjson", state, emu_off.endpoint)
        save(s1, state)
        plans = []
        for _ in range(repeat):
            m = measure(bs + ["--config", str(cfg), "-q", "plan", "--json"], env)
            s = json.loads(m["stdout"])
            plans.append(m)
        res["plan_ndjson"] = summary(plans, nd["evolved"]["rows"],
                                     {"delta": {k: s[k] for k in ("added", "changed", "removed")}})

    if n == a.rows and a.steady:
        res["steady"] = steady_runs(a, d, s1, state, emu_off, env)

    if a.stages and n == a.rows:
        save(s1, state)
        log(f"{label(n)}: stage breakdown")
        m = measure([str(a.stages), "--config", str(second_cfg), "--repeat", str(a.repeat)], env)
        res["stages"] = json.loads(m["stdout"])
        res["stages"]["load"] = m["load"]
        res["threads"] = thread_split(a, second_cfg, env)

    if not a.no_python:
        py = [sys.executable, str(HERE / "baseline.py")]
        db, p1 = d / "py.db", d / "py-first.db"
        pruns = {k: [] for k in ("first", "second", "nochange")}
        prepeat = repeat if n <= a.rows else 1
        for i in range(prepeat):
            log(f"{label(n)}: Python baseline, round {i + 1} of {prepeat}")
            reset(db)
            m = measure(py + ["--db", str(db), "--csv", str(d / "base.csv")])
            pruns["first"].append(m)
            save(db, p1)
            m = measure(py + ["--db", str(db), "--csv", str(d / "evolved.csv")])
            res["python_hash"] = json.loads(m["stdout"])["hash"]
            res["python_delta"] = {k: json.loads(m["stdout"])[k] for k in ("added", "changed", "removed")}
            pruns["second"].append(m)
            m = measure(py + ["--db", str(db), "--csv", str(d / "evolved.csv")])
            pruns["nochange"].append(m)
        res["python"] = {
            "first": summary(pruns["first"], n),
            "second": summary(pruns["second"], rows2),
            "nochange": summary(pruns["nochange"], rows2),
        }
    if a.qsv and n == a.rows:
        qruns = []
        for _ in range(repeat):
            qruns.append(measure([str(a.qsv), "diff", "--key", "0", str(d / "base.csv"), str(d / "evolved.csv"),
                                  "--output", str(d / "qsv-diff.csv")]))
        res["qsv_diff"] = summary(qruns, rows2)
    return res


def base_layer(state):
    """The id of the store's base layer: it changes when a commit compacts the layers."""
    c = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        return c.execute("SELECT id FROM base_layer WHERE kind = 'base'").fetchone()[0]
    finally:
        c.close()


def steady_runs(a, d, s1, state, emu_off, env):
    """Runs in a row, from the first run's store, the segment going back and forth between
    its two versions (4% of it changes each time), each a whole `run` that ships: what a
    scheduled sync costs over time, compactions of the baseline's layers included."""
    cfgs = [d / "second.toml", d / "back.toml"]
    write_config(cfgs[1], d / "base.csv", state, emu_off.endpoint)
    save(s1, state)
    bs = [str(a.bin)]
    base = base_layer(state)
    out = []
    for i in range(a.steady):
        m = measure(bs + ["--config", str(cfgs[i % 2]), "-q", "run", "--json"], env)
        s = json.loads(m["stdout"])
        assert s["events_pending"] == 0 and s["status"] == "completed", s
        now = base_layer(state)
        out.append({"seconds": m["seconds"], "compacted": now != base, "events": s["events_sent"],
                    "load": m["load"]})
        base = now
    log(f"steady: {[(o['seconds'], o['compacted']) for o in out]}")
    return out


def poll_events(emu, samples, stop, every):
    while not stop.is_set():
        try:
            samples.append((time.perf_counter(), emu.stats()["events_accepted"]))
        except OSError:
            pass
        stop.wait(every)


def steady_rate(samples):
    """Events/s between the first and the last change the poller saw (the first and last
    requests' own times fall outside the window, so this is the steady rate)."""
    changes = [samples[0]] if samples else []
    for t, e in samples[1:]:
        if e != changes[-1][1]:
            changes.append((t, e))
    changes = changes[1:]  # from the first observed change
    if len(changes) < 2:
        return None
    (t0, e0), (t1, e1) = changes[0], changes[-1]
    return (e1 - e0) / (t1 - t0)


def ship(a, env, d, emu, endpoint_name, rows, rate, mass_from, seconds=None):
    """Commits `rows` events (a first run with initial = "send", shipping nothing), then
    times a run that ships them, polling the emulator's counters."""
    state = d / "state.db"
    reset(state)
    cfg = d / f"send-{endpoint_name}.toml"
    write_config(cfg, d / "base.csv", state, emu.endpoint, initial="send", rate=rate, mass_from=mass_from)
    bs = [str(a.bin), "--config", str(cfg), "-q"]
    measure(bs + ["run", "--max-requests", "0", "--json"], env)
    plan = measure(bs + ["plan", "--json"], env)
    samples, stop = [], threading.Event()
    t = threading.Thread(target=poll_events, args=(emu, samples, stop, 0.01 if seconds is None else 0.25),
                         daemon=True)
    before = emu.stats()
    t.start()
    extra = ["--max-duration", f"{seconds}s"] if seconds else []
    m = measure(bs + ["run", "--json"] + extra, env)
    stop.set()
    t.join()
    after = emu.stats()
    s = json.loads(m["stdout"])
    requests = after["requests"] - before["requests"]
    throttled = after["by_status"].get("429", 0) - before["by_status"].get("429", 0)
    # The run ships, then reads the (unchanged) segment: that part is the plan's time.
    shipping = m["seconds"] - plan["seconds"]
    steady = steady_rate(samples)
    return {
        "endpoint": f"/profiles/{endpoint_name}",
        "events_sent": s["events_sent"],
        "requests": requests,
        "throttled": throttled,
        "throttled_share": round(throttled / requests, 4) if requests else None,
        "seconds": round(m["seconds"], 2),
        "events_per_s_run": round(s["events_sent"] / (seconds or shipping), 1),
        "events_per_s_steady": round(steady, 1) if steady else None,
        "load": [m["load"], m["load"]],
        "psi": m["psi"],
    }


def bench_ship(a, env):
    """Shipping with limits off, to both endpoints, and at Batch's limits (/profiles/update,
    300 operations/s) for --limits-seconds."""
    out = {}
    if a.ship_events:
        d = HERE / "out" / "ship"
        d.mkdir(parents=True, exist_ok=True)
        generate(a.gen, d, a.ship_events, "csv")
        emu = Emulator(a.bin, env, limits=False)
        try:
            log(f"shipping {a.ship_events} events, limits off")
            out["off_mass"] = ship(a, env, d, emu, "mass-update", a.ship_events, 1e6, 10_000)
            out["off_update"] = ship(a, env, d, emu, "update", a.ship_events, 1e6, 10**9)
        finally:
            emu.stop()
    if not a.skip_limits:
        d = HERE / "out" / "limits"
        d.mkdir(parents=True, exist_ok=True)
        rows = int(TARGETS["allowed"] * a.limits_seconds * 1.5) + 2000
        generate(a.gen, d, rows, "csv")
        emu = Emulator(a.bin, env, limits=True)
        try:
            log(f"shipping at Batch's limits for {a.limits_seconds} s")
            out["limits"] = ship(a, env, d, emu, "update", rows, TARGETS["allowed"], 10**9, a.limits_seconds)
        finally:
            emu.stop()
    return out


def machine():
    def out(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30).stdout.strip()
        except Exception as e:  # noqa: BLE001 — a missing tool only loses a line of the report
            return f"({e})"
    return {
        "nproc": out("nproc"),
        "lscpu": out("lscpu | head -n 16 | grep -v ^Flags"),
        "free": out("free -h"),
        "kernel": platform.release(),
        "rustc": out("rustc --version"),
        "python": platform.python_version(),
        "sqlite_python": __import__("sqlite3").sqlite_version,
    }


STAGES = [
    ("read", "the file read, no parsing (page cache)", None),
    ("parse", "CSV rows into cells, one thread", None),
    ("snapshot", "parse, type, encode, hash, sort, spill (2 threads)", None),
    ("sorted", "+ the sorted rows read back (merge thread)", "snapshot"),
    ("baseline", "the baseline read from SQLite in key order, alone", None),
    ("diff", "+ the baseline read and merged, each row decided (`plan`)", "sorted"),
    ("write", "+ the baseline read and merged, the delta written in the run's transaction", "sorted"),
    ("commit", "outbox packed, run record, `COMMIT`, alone", None),
]
THREAD_COLS = ["rows", "parse_ms", "encode_ms", "hash_ms", "batches_hashed", "arrange_ms", "sort_ms", "spill_ms",
               "runs_spilled", "merge_ms", "wait_ms"]


def thread_split(a, cfg, env):
    """The snapshot's debug lines of one `plan`: per thread, where the time went."""
    env = dict(env, BATCHSYNC_LOG="batchsync::snapshot=debug")
    p = subprocess.run([str(a.bin), "--config", str(cfg), "-q", "plan", "--json"], env=env, capture_output=True,
                       text=True, check=True)
    threads = {}
    for line in p.stderr.splitlines():
        if "snapshot: " not in line:
            continue
        name = line.rsplit("snapshot: ", 1)[1].split()[0] + " thread"
        fields = {}
        for tok in line.split():
            if "=" in tok:
                k, v = tok.split("=", 1)
                fields[k.strip()] = v.strip()
        threads[name] = fields
    return threads


def verdict(ok):
    return "met" if ok else "**not met**"


def targets(results, shipping):
    small = results[0]
    t = []
    r = small["commit"]["rows_per_s"]
    t.append((f"second run {label(small['rows'])}: ≥ {TARGETS['second_rate']:,} rows/s (snapshot, diff, commit)",
              f"{r:,} rows/s", r >= TARGETS["second_rate"]))
    if "python" in small:
        ratio = small["python"]["second"]["seconds"] / small["commit"]["seconds"]
        t.append((f"second run {label(small['rows'])}: ≥ {TARGETS['python_ratio']:.0f}× the Python baseline",
                  f"{ratio:.1f}×", ratio >= TARGETS["python_ratio"]))
    nc = small["nochange"]["rows_per_s"]
    t.append(("no-change run at least as fast as the second run", f"{nc:,} vs {r:,} rows/s", nc >= r))
    for big in results[1:]:
        rb = big["commit"]["rows_per_s"]
        t.append((f"second run {label(big['rows'])}: the {label(small['rows'])} rate within 20%",
                  f"{rb:,} rows/s ({rb / r - 1:+.0%})", rb >= (1 - TARGETS["big_within"]) * r))
        rss = max(big[k]["rss_mb"] for k in ("first", "plan", "commit", "full", "nochange"))
        t.append((f"{label(big['rows'])}: peak RSS < {TARGETS['big_rss_mb']} MB (every run)", f"{rss} MB",
                  rss < TARGETS["big_rss_mb"]))
    f = small["first"]["rows_per_s"]
    t.append((f"first run {label(small['rows'])} (initial = baseline): ≥ {TARGETS['first_rate']:,} rows/s",
              f"{f:,} rows/s", f >= TARGETS["first_rate"]))
    for k in ("off_mass", "off_update"):
        if k in shipping:
            x = shipping[k]
            rate = x["events_per_s_steady"] or x["events_per_s_run"]
            t.append((f"shipping, limits off, {x['endpoint']}: ≥ {TARGETS['ship_off']:,} events/s",
                      f"{rate:,.0f} events/s", rate >= TARGETS["ship_off"]))
    if "limits" in shipping:
        x = shipping["limits"]
        rate = x["events_per_s_steady"] or x["events_per_s_run"]
        share = rate / TARGETS["allowed"]
        t.append((f"shipping at Batch's limits: ≥ 95% of {TARGETS['allowed']}/s over the run",
                  f"{rate:.0f}/s ({share:.0%})", share >= TARGETS["limits_share"]))
        t.append(("shipping at Batch's limits: < 1% of requests answered 429",
                  f"{x['throttled']} of {x['requests']}", (x["throttled_share"] or 0) < TARGETS["limits_429"]))
    return t


def num(x):
    return "" if x is None else f"{x:,.0f}"


def load_line(loads):
    """The load and CPU pressure seen over a comparison's runs, `(load, psi)` each, as one line."""
    ls = [x for x, _ in loads]
    ps = [y for _, y in loads if y is not None]
    return f"load {min(ls)}–{max(ls)}" + (f", CPU pressure {min(ps):.0f}–{max(ps):.0f}%" if ps else "")


def fmt_load(l, psi=None):
    s = f"{l[0]}" if l[0] == l[1] else f"{l[0]}–{l[1]}"
    return s if psi is None else f"{s} / {psi:.0f}%"


def report(results, shipping, meta, a):
    lines = []
    lines.append(f"Measured {meta['date']} with `{meta['command'].strip()}` (commit `{meta['commit']}`"
                 f"{', with uncommitted changes' if meta['dirty'] else ''}).")
    lines.append("")
    runs = [x[k] for x in results for k in ("first", "plan", "commit", "full", "nochange")]
    loads = [l for m in runs for l in m["load"]]
    psis = [m["psi"] for m in runs if m.get("psi") is not None]
    if psis and max(psis) >= 10:
        lines.append(f"**Taken under load**: the 1-minute load average before the runs was {min(loads)}–{max(loads)} "
                     f"on {meta['machine']['nproc']} cores and the CPU pressure reached {max(psis):.0f}% (other "
                     "engineers' builds and tests were running). Read the figures as lower bounds; each carries "
                     "the load and the highest CPU pressure (`/proc/pressure/cpu` some avg10: the share of time "
                     "a runnable task waited for a core) seen before its runs.")
        lines.append("")
    elif max(loads) >= 1.0:
        lines.append(f"Taken on a shared machine at light load: the 1-minute load average before the runs was "
                     f"{min(loads)}–{max(loads)} on {meta['machine']['nproc']} cores, the CPU pressure at most "
                     f"{max(psis, default=0):.0f}% (`/proc/pressure/cpu` some avg10: the share of time a runnable "
                     "task waited for a core). Each figure carries both in its last column.")
        lines.append("")
    lines.append("| size | run | seconds (median) | rows/s | peak RSS | Python baseline | batchsync ÷ Python | "
                 "load / CPU pressure |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---|")
    for x in results:
        py = x.get("python", {})
        sz = label(x["rows"])

        def row(name, m, pym=None):
            pyc = f"{pym['seconds']:.2f} s, {pym['rows_per_s']:,}/s, {pym['rss_mb']} MB" if pym else ""
            ratio = f"{pym['seconds'] / m['seconds']:.1f}×" if pym else ""
            lines.append(f"| {sz} | {name} | {m['seconds']:.2f} | {m['rows_per_s']:,} | {m['rss_mb']} MB | {pyc} | "
                         f"{ratio} | {fmt_load(m['load'], m.get('psi'))} |")
        row("first run (`initial = \"baseline\"`, records every row)", x["first"], py.get("first"))
        row("second run, `plan`", x["plan"])
        row("second run, `run --max-requests 0` (snapshot, diff, commit)", x["commit"], py.get("second"))
        row(f"second run, `run` (and ships {x['full']['events']:,} events, limits off)", x["full"])
        row("no-change run, `run`", x["nochange"], py.get("nochange"))
        if "plan_ndjson" in x:
            row("second run, `plan`, NDJSON source", x["plan_ndjson"])
        if "qsv_diff" in x:
            row("`qsv diff` of the two files (stateless, sends nothing)", x["qsv_diff"])
    lines.append("")
    st = results[0].get("steady")
    if st:
        plain = [o["seconds"] for o in st if not o["compacted"]]
        comp = [o["seconds"] for o in st if o["compacted"]]
        n = results[0]["evolved_rows"]
        mean = statistics.mean(o["seconds"] for o in st)
        lines.append(f"Runs in a row ({label(results[0]['rows'])}, {len(st)} whole `run`s from the first run's store, "
                     f"the segment going back and forth between its two versions, {st[0]['events']:,} events "
                     "shipped each): the baseline's delta layers are folded into a new base when they pass a quarter "
                     "of it, so a few runs pay for a compaction.")
        lines.append("")
        lines.append("| runs | seconds | rows/s |")
        lines.append("|---|---:|---:|")
        if plain:
            lines.append(f"| {len(plain)} writing a delta layer (median) | {statistics.median(plain):.2f} | "
                         f"{round(n / statistics.median(plain)):,} |")
        for c in comp:
            lines.append(f"| 1 compacting (writes a new base) | {c:.2f} | {round(n / c):,} |")
        lines.append(f"| all {len(st)}, mean (amortised) | {mean:.2f} | {round(n / mean):,} |")
        lines.append("")
    lines.append("Shipping (`run` of a store whose outbox holds every row of a segment as an event; the steady "
                 "rate is what the emulator's counters saw between the first and the last request answered):")
    lines.append("")
    lines.append("| what | events | requests | 429s | steady events/s | events/s over the run | load / CPU pressure |")
    lines.append("|---|---:|---:|---:|---:|---:|---|")
    names = {"off_mass": "limits off", "off_update": "limits off",
             "limits": f"Batch's limits on ({TARGETS['allowed']}/s), a {a.limits_seconds} s run"}
    for k, x in shipping.items():
        lines.append(f"| {x['endpoint']}, {names[k]} | {x['events_sent']:,} | {x['requests']:,} | {x['throttled']} | "
                     f"{num(x['events_per_s_steady'])} | {num(x['events_per_s_run'])} | "
                     f"{fmt_load(x['load'], x['psi'])} |")
    lines.append("")
    if any("python_hash" in x for x in results):
        h = next(x["python_hash"] for x in results if "python_hash" in x)
        lines.append(f"The Python baseline hashed with {h}" + (" (the `blake3` package)." if h == "blake3" else
                     " (hashlib; the `blake3` package was not installed)."))
        lines.append("")
    lines.append("Targets (measurements, not tests):")
    lines.append("")
    lines.append("| target | measured | |")
    lines.append("|---|---|---|")
    for name, got, ok in targets(results, shipping):
        lines.append(f"| {name} | {got} | {verdict(ok)} |")
    lines.append("")
    st = results[0].get("stages")
    if st:
        lines.append(f"Stages of the {label(results[0]['rows'])} second run (`examples/bench_stages.rs`, medians of "
                     f"{a.repeat}, load {st['load']}; a stage's own cost is its time less the stage it builds on):")
        lines.append("")
        lines.append("| stage | what | ms | own ms |")
        lines.append("|---|---|---:|---:|")
        for k, what, base in STAGES:
            if k in st:
                own = st[k] - st[base] if base else st[k]
                lines.append(f"| {k} | {what} | {st[k]:.0f} | {own:.0f} |")
        lines.append("")
        threads = results[0].get("threads")
        if threads:
            lines.append("Inside the snapshot, per thread (`BATCHSYNC_LOG=batchsync::snapshot=debug batchsync plan`, "
                         "one run, ms):")
            lines.append("")
            lines.append("| thread | " + " | ".join(THREAD_COLS) + " |")
            lines.append("|---|" + "---:|" * len(THREAD_COLS))
            for name, fields in threads.items():
                lines.append(f"| {name} | " + " | ".join(str(fields.get(c, "")) for c in THREAD_COLS) + " |")
            lines.append("")
    m = meta["machine"]
    lines.append(f"Machine: {m['nproc']} cores; {m['rustc']}; Python {m['python']} (SQLite {m['sqlite_python']}); "
                 f"Linux {m['kernel']}.")
    lines.append("")
    lines.append("```")
    lines.append(m["lscpu"])
    lines.append("")
    lines.append(m["free"])
    lines.append("```")
    return "\n".join(lines)


def write_docs(path, text):
    block = f"{BEGIN}\n{text}\n{END}"
    if path.exists():
        doc = path.read_text()
        if BEGIN in doc and END in doc:
            doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
        else:
            doc = doc.rstrip() + "\n\n" + block + "\n"
    else:
        doc = f"# Benchmarks\n\n{block}\n"
    path.write_text(doc)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--big", type=int, default=10_000_000)
    p.add_argument("--skip-big", action="store_true")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--big-repeat", type=int, default=3)
    p.add_argument("--limits-seconds", type=int, default=60)
    p.add_argument("--steady", type=int, default=10,
                   help="runs in a row at the small size, compactions included (0: skip)")
    p.add_argument("--ship-events", type=int, default=100_000, help="events for the limits-off shipping runs (0: skip)")
    p.add_argument("--skip-limits", action="store_true")
    p.add_argument("--no-python", action="store_true")
    p.add_argument("--no-ndjson", action="store_true")
    p.add_argument("--no-docs", action="store_true")
    p.add_argument("--bin", type=Path, help="the batchsync binary (required unless --render)")
    p.add_argument("--gen", type=Path, help="the bench-gen binary (required unless --render)")
    p.add_argument("--stages", type=Path)
    p.add_argument("--qsv", type=Path)
    p.add_argument("--command", default="bench/run.sh")
    p.add_argument("--render", action="store_true",
                   help="rewrite the report from bench/results/latest.json, measuring nothing")
    a = p.parse_args()
    if a.render:
        saved = json.loads((HERE / "results" / "latest.json").read_text())
        text = report(saved["results"], saved["shipping"], saved["meta"], a)
        print(text)
        write_docs(ROOT / "docs" / "BENCHMARKS.md", text)
        return
    if not (a.bin and a.gen):
        p.error("--bin and --gen are required")

    env = dict(os.environ, BATCH_REST_API_KEY="bench-rest-key", BATCH_PROJECT_KEY="bench-project-key")
    env.pop("BATCHSYNC_LOG", None)
    (HERE / "out").mkdir(exist_ok=True)
    meta = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": a.command,
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip(),
        "dirty": bool(subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True,
                                     text=True).stdout.strip()),
        "machine": machine(),
        "load_start": load(),
    }
    sizes = [a.rows] + ([] if a.skip_big else [a.big])
    emu_off = Emulator(a.bin, env, limits=False)
    try:
        results = [bench_size(a, n, env, emu_off) for n in sizes]
    finally:
        emu_off.stop()
    shipping = bench_ship(a, env)
    meta["load_end"] = load()
    text = report(results, shipping, meta, a)
    print(text)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps({"meta": meta, "results": results, "shipping": shipping}, indent=1))
    if not a.no_docs:
        write_docs(ROOT / "docs" / "BENCHMARKS.md", text)
        log("wrote docs/BENCHMARKS.md and bench/results/latest.json")


if __name__ == "__main__":
    main()
