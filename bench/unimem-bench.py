#!/usr/bin/env python3
"""unimem-bench: run unimem's benchmarks and print one table of ratios.

Runs the benchmark binaries that sit next to this script (the allocation
benchmarks once per malloc found: glibc, mimalloc, jemalloc; and the Block
benchmarks), pairs every unimem row with each peer of the same group,
parameter and thread count, and prints how many times better unimem is
(>1: unimem is faster or has more throughput).

  unimem-bench [--json FILE] [--filter REGEX] [--min-time SECONDS] [--quick]

--json FILE writes {"ratios": {name: ratio}, "raw": {row: {...}}, "context": {...}}.
--quick runs a small subset briefly (a smoke test, not a measurement).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
UNIMEM = ("tape", "grid", "block")  # implementations that are unimem's own
EXTRA_PAIRS = [("tape-lane", "tape-shared")]  # unimem rows also compared with each other


def run(binary, bench_filter, min_time, repetitions):
    path = os.path.join(HERE, binary)
    if not os.path.exists(path):
        return None
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        out_path = out.name
    cmd = [path, "--benchmark_out=" + out_path, "--benchmark_out_format=json"]
    if bench_filter:
        cmd.append("--benchmark_filter=" + bench_filter)
    if min_time:
        cmd.append("--benchmark_min_time=%g" % min_time)
    if repetitions > 1:  # each row: median of the repetitions, and their spread
        cmd += ["--benchmark_repetitions=%d" % repetitions, "--benchmark_report_aggregates_only=true"]
    print("# running " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(out_path) as f:
        text = f.read()
    data = json.loads(text) if text.strip() else {}  # empty: the filter matched none of its rows
    os.unlink(out_path)
    return data


def parse(name):
    """'take/tape-lane/64/iterations:4/real_time/threads:2' -> (group, impl, param, threads)."""
    parts = name.split("/")
    threads = 1
    plain = []
    for p in parts:
        if p.startswith("threads:"):
            threads = int(p.split(":")[1])
        elif ":" in p or p == "real_time":
            continue
        else:
            plain.append(p)
    if len(plain) < 3:
        return None
    return plain[0], plain[1], plain[2], threads


def measure(row):
    """(value, higher_is_better, text); the text carries the spread of the
    repetitions (their coefficient of variation) where there were several."""
    spread = " ±%.0f%%" % (100 * row["cv"]) if row.get("cv") is not None else ""
    for key, unit in (("items_per_second", "op/s"), ("bytes_per_second", "B/s")):
        if key in row:
            v = row[key]
            return v, True, human(v) + unit + spread
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[row.get("time_unit", "ns")]
    t = row["real_time"] * scale
    return t, False, ("%.3g ms" % (t * 1e3) if t >= 1e-4 else "%.3g ns" % (t * 1e9)) + spread


def human(v):
    for unit, f in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= f:
            return "%.2f %s" % (v / f, unit)
    return "%.2f " % v


def is_unimem(impl):
    return impl.split("[")[0].split("-")[0] in UNIMEM


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--filter", default="")
    ap.add_argument("--min-time", type=float, default=0)
    ap.add_argument("--repetitions", type=int, default=5,
                    help="runs of each row; the table shows their median and spread (default 5)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.filter = args.filter or r"(take/.*/64/|cell/|open-lazy/.*/16777216|read/.*/67108864)"
        args.min_time = args.min_time or 0.01
        args.repetitions = 1

    # The allocator variants differ from the main binary only in their malloc.
    plans = [
        ("unimem_alloc_benchmark", args.filter),
        ("unimem_alloc_benchmark_mimalloc", r"malloc\["),
        ("unimem_alloc_benchmark_jemalloc", r"malloc\["),
        ("unimem_block_benchmark", args.filter),
    ]
    wanted = re.compile(args.filter) if args.filter else None
    rows, context, errors = {}, None, []
    for binary, flt in plans:
        data = run(binary, flt, args.min_time, args.repetitions)
        if data is None:
            print("# %s not built; its rows are missing" % binary, file=sys.stderr)
            continue
        context = context or data.get("context", {})
        spreads = {}
        for b in data.get("benchmarks", []):
            if b.get("error_occurred"):
                errors.append("%s: %s" % (b["name"], b.get("error_message", "")))
                continue
            name = b.get("run_name", b["name"])
            if b.get("run_type") == "aggregate":
                if b.get("aggregate_name") == "cv":
                    spreads[name] = b.get("real_time")
                if b.get("aggregate_name") != "median":
                    continue
            key = parse(name)
            if key and (wanted is None or wanted.search(name)):
                rows[key] = dict(b, run_name=name)
        for key, row in rows.items():
            if row.get("run_name") in spreads:
                row["cv"] = spreads[row["run_name"]]

    ratios = {}
    table = []
    for (group, impl, param, threads), row in sorted(rows.items()):
        if not is_unimem(impl):
            continue
        mine, higher, mine_text = measure(row)
        peers = [k for k in rows if k[0] == group and k[2] == param and k[3] == threads and
                 (not is_unimem(k[1]) or (impl, k[1]) in EXTRA_PAIRS)]
        for peer in sorted(peers):
            theirs, _, theirs_text = measure(rows[peer])
            ratio = mine / theirs if higher else theirs / mine
            name = "%s/%s vs %s/%s/threads:%d" % (group, impl, peer[1], param, threads)
            ratios[name] = ratio
            table.append((group, param, threads, impl, peer[1], mine_text, theirs_text, ratio))

    if context:
        print("unimem-bench on %s: %s CPUs at %s MHz, %s" % (context.get("host_name", "?"), context.get("num_cpus"),
                                                           context.get("mhz_per_cpu"), context.get("date")))
    header = ("group", "param", "thr", "unimem", "peer", "unimem", "peer", "ratio")
    fmt = "%-10s %-11s %4s  %-12s %-24s %18s %18s %8s"
    print(fmt % header)
    for g, p, t, i, peer, a, b, r in table:
        print(fmt % (g, p, t, i, peer, a, b, "%.2fx" % r))
    print("(ratio: how many times better unimem is than the peer named on its row; >1 is better; values are the"
          " median of %d runs, ± their coefficient of variation)" % args.repetitions)
    for e in errors:
        print("error: " + e)
    if args.json:
        raw = {"/".join([k[0], k[1], k[2], "threads:%d" % k[3]]): v for k, v in rows.items()}
        with open(args.json, "w") as f:
            json.dump({"ratios": ratios, "raw": raw, "context": context}, f, indent=1, sort_keys=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
