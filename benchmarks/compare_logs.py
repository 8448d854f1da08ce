"""Step-for-step comparison of training runs from their logs (RUN.log.csv): each probe of every run at the
steps all runs logged, as a markdown table, with the difference of each run from the first (the control).
Runs are comparable only on the same prepared data, seed and schedule (same val_input_minmse).

Run: python benchmarks/compare_logs.py models/checkpoints/m1dfsc.log.csv models/checkpoints/m1dsc4k.log.csv \
         [--probes val_deblur_minmse val_frame_gated_gain val_frame_gain] [--every 1000]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

PROBES = ("val_deblur_minmse", "val_frame_gated_gain", "val_frame_gain")


def read_log(path: Path) -> dict[int, dict[str, str]]:
    """The log's rows by step (a resumed run may log a step twice: the last row wins)."""
    return {int(r["step"]): r for r in csv.DictReader(path.open())}


def value(row: dict[str, str], probe: str) -> float | None:
    """The probe's value in a row, None where it is absent or not a number."""
    try:
        v = float(row.get(probe) or "nan")
    except ValueError:
        return None
    return None if v != v else v


def table(logs: dict[str, dict[int, dict[str, str]]], probes: list[str], every: int) -> str:
    """Markdown rows: step, then for each probe each run's value, and the later runs' differences from the first."""
    names = list(logs)
    steps = sorted(set.intersection(*(set(rows) for rows in logs.values())))
    steps = [s for s in steps if s % every == 0 or s == steps[-1]]
    head = ["step"] + [f"{p} {n}" for p in probes for n in names] + [f"{p} {n} − {names[0]}" for p in probes for n in names[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in steps:
        vals = {(p, n): value(logs[n][s], p) for p in probes for n in names}
        cells = [str(s)] + ["—" if vals[p, n] is None else f"{vals[p, n]:.2f}" for p in probes for n in names]
        cells += ["—" if None in (vals[p, n], vals[p, names[0]]) else f"{vals[p, n] - vals[p, names[0]]:+.2f}"
                  for p in probes for n in names[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="+", type=Path, help="RUN.log.csv files; the first is the control")
    ap.add_argument("--probes", nargs="+", default=list(PROBES), help="log columns to compare")
    ap.add_argument("--every", type=int, default=1000, help="show every Nth step (and the last common one)")
    args = ap.parse_args()
    logs = {p.name.removesuffix(".log.csv"): read_log(p) for p in args.logs}
    print(table(logs, args.probes, args.every))


if __name__ == "__main__":
    main()
