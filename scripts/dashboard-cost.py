#!/usr/bin/env python3
"""What a watching browser costs a real sweep (BENCHMARKS.md, "The dashboard in a real sweep").

    python3 scripts/dashboard-cost.py [--sweep sweeps/sigma.toml] [--pairs 5] [--workers 2]
                                      [--coordinator target/release/coordinator] [--out out/dash-cost]

Runs the sweep `--pairs` times twice, alternating: once with `--no-dashboard`, once with the
dashboard and a client that does what the page does (opens the printed link, keeps
`/api/events` open and fetches `/api/run` after each `change` event, one fetch at a time), each
into a fresh output directory. Prints every run's wall time, the per-pair ratio (with browser /
without: above 1 means the browser slowed the sweep), their mean with a 95% interval
(t distribution over the pairs), and how many `/api/run` answers the browser read. The
coordinator's own scheduling, the workers' training and the dashboard's rebuilds all share the
machine's cores, so this is the cost a user watching a sweep pays. Standard library only.
"""

import argparse
import http.client
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

# Two-sided 97.5% quantiles of Student's t for 1–19 degrees of freedom.
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093]


class Browser(threading.Thread):
    """The page's traffic: the link (token → cookie), the event stream, `/api/run` per change."""

    def __init__(self, url):
        super().__init__(daemon=True)
        u = urllib.parse.urlparse(url)
        self.host, self.port, self.query = u.hostname, u.port, u.query
        self.fetches = 0
        self.error = None

    def get(self, path, cookie=None):
        c = http.client.HTTPConnection(self.host, self.port, timeout=60)
        c.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        return c, c.getresponse()

    def run(self):
        try:
            c, r = self.get("/?" + self.query)
            cookie = r.getheader("Set-Cookie").split(";")[0]
            r.read()
            c.close()
            c, events = self.get("/api/events", cookie)
            while True:
                line = events.fp.readline()
                if not line:
                    return
                line = line.decode().strip()
                if line == "event: end":
                    return
                if line == "event: change":
                    fc, fr = self.get("/api/run", cookie)
                    fr.read()
                    fc.close()
                    self.fetches += 1
        except Exception as e:  # the run ended under it, or the page broke: say which
            self.error = repr(e)


def one(coordinator, sweep, out, workers, browser):
    shutil.rmtree(out, ignore_errors=True)
    args = [coordinator, "run", str(sweep), "--out", str(out), "--workers", str(workers)]
    if not browser:
        args.append("--no-dashboard")
    t = time.time()
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    b = None
    for line in p.stderr:
        if browser and b is None and line.startswith("dashboard: "):
            b = Browser(line.split(" ", 1)[1].strip())
            b.start()
    rc = p.wait()
    secs = time.time() - t
    if rc != 0:
        sys.exit(f"{' '.join(args)} exited with {rc}")
    if browser:
        if b is None:
            sys.exit("the run printed no dashboard link")
        b.join(timeout=10)
        if b.error:
            sys.exit(f"the browser failed: {b.error}")
    return secs, (b.fetches if b else 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", default="sweeps/sigma.toml")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--coordinator", default="target/release/coordinator")
    ap.add_argument("--out", default="out/dash-cost")
    a = ap.parse_args()
    out = Path(a.out)
    ratios = []
    for i in range(a.pairs):
        # Alternate which side runs first, so a drift in the machine's load hits both alike.
        sides = [False, True] if i % 2 == 0 else [True, False]
        res = {}
        for browser in sides:
            res[browser] = one(a.coordinator, a.sweep, out / f"{i}-{'browser' if browser else 'plain'}", a.workers, browser)
        (plain, _), (watched, fetches) = res[False], res[True]
        ratios.append(watched / plain)
        print(f"pair {i}: without {plain:.2f} s, with a browser {watched:.2f} s ({fetches} /api/run answers read), ratio {watched / plain:.4f}", flush=True)
    m = statistics.mean(ratios)
    if len(ratios) > 1:
        se = statistics.stdev(ratios) / len(ratios) ** 0.5
        t = T975[min(len(ratios) - 2, len(T975) - 1)]
        print(f"ratio with/without a browser: mean {m:.4f}, 95% interval [{m - t * se:.4f}, {m + t * se:.4f}] over {len(ratios)} pairs (target: the sweep loses < 2%, i.e. the upper end < 1.02)")
    else:
        print(f"ratio with/without a browser: {m:.4f} (one pair: no interval)")


if __name__ == "__main__":
    main()
