"""Quality against training time on 2 cores, from the logs `microdeblur train` writes (RUN.log.csv): the best
tile-probe min-MSE deblurring PSNR reached by each wall-clock budget (the trainer's 240 probe tiles of held-out
identities; the blurry input scores `val_input_minmse` on them), with the run's median tiles/s. The quality
axis of the curve in docs/benchmarks.md; benchmarks/model_bench.py measures the cost axis.

Run: python benchmarks/cost_curve.py models/checkpoints/m1d.log.csv runs/m1dfr.log.csv ... [--minutes 5 10 20 40]
Only runs on the same prepared data and probe are comparable (the logs say so: same val_input_minmse).
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

SCORE = "val_deblur_minmse"


def best_by_minute(rows: list[dict], minutes: list[float], slack: float = 0.03) -> list[float | None]:
    """Best score among the rows logged within each budget (None: the run is shorter than the budget or had
    no probe by then). A probe logged up to `slack` past a budget counts (a --max-minutes run ends just after)."""
    out = []
    for m in minutes:
        within = [float(r[SCORE]) for r in rows if float(r["minutes"]) <= m * (1 + slack)]
        out.append(max(within) if within and float(rows[-1]["minutes"]) >= m * (1 - slack) else None)
    return out


def curve_row(path: Path, minutes: list[float]) -> str:
    """One markdown row: run, input, best score per budget, best overall (step), steps, minutes, tiles/s."""
    name = path.name.removesuffix(".log.csv")
    rows = [r for r in csv.DictReader(path.open()) if r.get(SCORE) and r[SCORE] != "nan"]
    if not rows:
        return f"| {name} | no {SCORE} in this log |"
    best = max(rows, key=lambda r: float(r[SCORE]))
    cells = ["—" if v is None else f"{v:.2f}" for v in best_by_minute(rows, minutes)]
    rate = statistics.median(float(r["tiles_per_s"]) for r in rows)
    return (f"| {name} | {float(rows[0]['val_input_minmse']):.2f} | " + " | ".join(cells)
            + f" | {float(best[SCORE]):.2f} ({best['step']}) | {rows[-1]['step']} | {float(rows[-1]['minutes']):.0f} | {rate:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("logs", nargs="+", type=Path)
    ap.add_argument("--minutes", nargs="+", type=float, default=[5, 10, 20, 40, 80])
    a = ap.parse_args()
    head = " | ".join(f"≤ {m:g} min" for m in a.minutes)
    print(f"| run | input | {head} | best (step) | steps | minutes | tiles/s |")
    print("|---|---|" + "---|" * len(a.minutes) + "---|---|---|---|")
    for p in a.logs:
        print(curve_row(p, a.minutes))


if __name__ == "__main__":
    main()
