"""Time `microdeblur simulate`: a small day (512x512, 11 planes) and a full default day (2048x1536, 100 planes).

Run: python benchmarks/simulate_bench.py [--repeats 3] [--skip-full]
Prints a markdown table (median wall time of the CLI process, peak RSS of the child).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak child RSS (MB) of one CLI run."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "microdeblur", *args], check=True, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-full", action="store_true")
    a = p.parse_args()
    cases = [("small day 512x512, 11 planes", ["--size", "512x512", "--planes", "11"], a.repeats)]
    if not a.skip_full:
        cases.append(("full day 2048x1536, 100 planes", ["--size", "2048x1536", "--planes", "100"], max(1, a.repeats // 3)))
    print(f"cores: {os.cpu_count()}")
    print("| case | runs | median wall (s) | peak RSS (MB) |\n|---|---|---|---|")
    for name, extra, reps in cases:
        walls, rss = [], 0.0
        for r in range(reps):
            with tempfile.TemporaryDirectory() as tmp:
                w, rss = run(["-q", "simulate", str(Path(tmp) / "out"), "--seed", str(r), *extra])
                walls.append(w)
        print(f"| {name} | {reps} | {statistics.median(walls):.1f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
