#!/usr/bin/env python3
"""ASHA against the same configurations trained to the end (BENCHMARKS.md, "Adaptive sweeps").

    python3 scripts/asha-bench.py [--sweep sweeps/asha.toml] [--runs 3] [--out out/asha-bench]
                                  [--coordinator target/release/coordinator] [--workers 2]

Runs the sweep as written (its `[early_stop]` rule) `--runs` times, and once with
`[early_stop] kind = "none"` (every configuration to its last step). Prints, per ASHA run, the
best final metric of its finished trials over the best final metric of the full run (target:
≤ 1.05) and the training steps it spent over the full run's (target: ≤ 0.35). ASHA's outcome
depends on the order in which trials reach the rungs (two workers race), so it also replays the
rule on the full run's recorded curves for 500 random asynchronous orders (two workers, each
checkpoint taking 0.9–1.1 time units) and prints the mean and the 5–95% range of both ratios.
Standard library only.
"""

import argparse
import json
import math
import random
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path


def run(coordinator, sweep, out, workers):
    t = time.time()
    subprocess.run([coordinator, "run", str(sweep), "--out", str(out), "--workers", str(workers), "--quiet"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.time() - t


def load(out, metric):
    c = sqlite3.connect(out / "state.db")
    rows = c.execute("SELECT t.hash, t.status, r.metrics_json FROM trials t JOIN results r ON r.trial_id = t.id WHERE t.in_sweep = 1").fetchall()
    curves = {}
    for h, v in c.execute("SELECT trial_hash, values_json FROM curves ORDER BY trial_hash, row"):
        curves.setdefault(h, []).append(json.loads(v))
    trials = {h: (s, json.loads(m)) for h, s, m in rows}
    best = min(m[metric] for s, m in trials.values() if s == "done")
    steps = sum(m["steps_done"] for _, m in trials.values())
    return best, steps, trials, curves


def quantile(xs, q):
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (pos - lo) * (xs[hi] - xs[lo])


def replay(curves, order, metric, grace, eta, seed, workers=2):
    """ASHA (stopping variant, mode min) on recorded curves, trials started in `order`."""
    rng = random.Random(seed)
    last = len(next(iter(curves.values()))) - 1
    milestones = []
    k = 0
    while grace * eta**k < last:
        milestones.append(grace * eta**k)
        k += 1
    rungs = {m: {} for m in milestones}
    queue = list(order)
    events = []
    for w in range(min(workers, len(queue))):
        events.append((rng.uniform(0.9, 1.1), queue.pop(0), 1))
    steps, finished = 0, []
    while events:
        events.sort()
        t, h, c = events.pop(0)
        v = curves[h][c][metric]
        stop = False
        for m in sorted(milestones, reverse=True):
            if c < m or h in rungs[m]:
                continue
            rec = list(rungs[m].values())
            stop = bool(rec) and v > quantile(rec, 1 / eta)
            rungs[m][h] = v
            break
        if stop or c == last:
            steps += curves[h][c]["step"]
            if not stop:
                finished.append(curves[h][c][metric])
            if queue:
                events.append((t + rng.uniform(0.9, 1.1), queue.pop(0), 1))
        else:
            events.append((t + rng.uniform(0.9, 1.1), h, c + 1))
    return min(finished), steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", default="sweeps/asha.toml")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default="out/asha-bench")
    ap.add_argument("--coordinator", default="target/release/coordinator")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    src = Path(a.sweep).read_text()
    es = re.search(r"^\[early_stop\](.*?)(?=^\[|\Z)", src, re.S | re.M).group(1)
    metric = re.search(r'^metric\s*=\s*"([^"]+)"', es, re.M).group(1)
    grace = int((re.search(r"^grace\s*=\s*(\d+)", es, re.M) or [0, 1])[1])
    eta = int((re.search(r"^eta\s*=\s*(\d+)", es, re.M) or [0, 3])[1])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    full_sweep = out / "full.toml"
    full_sweep.write_text(src.replace(es, '\nkind = "none"\n\n'))
    subprocess.run(["rm", "-rf", str(out / "full")], check=True)
    secs = run(a.coordinator, full_sweep, out / "full", a.workers)
    best_full, steps_full, full_trials, curves = load(out / "full", metric)
    print(f"full: {len(full_trials)} trials, best final {metric} {best_full:.5f}, {steps_full:.0f} steps, {secs:.1f} s")
    for r in range(a.runs):
        d = out / f"asha{r}"
        subprocess.run(["rm", "-rf", str(d)], check=True)
        secs = run(a.coordinator, a.sweep, d, a.workers)
        best, steps, trials, _ = load(d, metric)
        pruned = sum(1 for s, _ in trials.values() if s == "pruned")
        print(f"asha run {r}: best final {metric} {best:.5f} → ratio {best / best_full:.3f} (target ≤ 1.05); steps {steps:.0f} → {steps / steps_full:.3f} of full (target ≤ 0.35); {pruned} pruned; {secs:.1f} s")
    # Sweep order, as the coordinator leases: by trial idx.
    c = sqlite3.connect(out / "full" / "state.db")
    order = [h for (h,) in c.execute("SELECT hash FROM trials WHERE in_sweep = 1 ORDER BY idx")]
    ratios, fracs = [], []
    for seed in range(500):
        best, steps = replay(curves, order, metric, grace, eta, seed, a.workers)
        ratios.append(best / best_full)
        fracs.append(steps / steps_full)
    within = sum(1 for x in ratios if x <= 1.05) / len(ratios)
    print(f"replay, 500 arrival orders: best ratio mean {sum(ratios) / len(ratios):.3f} (5–95%: {quantile(ratios, 0.05):.3f}–{quantile(ratios, 0.95):.3f}), within 5% in {100 * within:.0f}% of orders; steps mean {sum(fracs) / len(fracs):.3f} (5–95%: {quantile(fracs, 0.05):.3f}–{quantile(fracs, 0.95):.3f})")


if __name__ == "__main__":
    sys.exit(main())
