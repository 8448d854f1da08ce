"""Soak: 8 concurrent `deblur` processes, 40 inputs, one output folder; half of them killed and rerun.

Eight jobs of five inputs each write into one folder at the same time (a job array on a shared disk).
Four of them are killed, two with SIGKILL and two with SIGTERM, some at a random moment after start
and some while their output is being written, then rerun with the very same command. At the end every
output must exist exactly once, be byte-identical to a clean single run, and no temp file may be left.
Exits 1 when a check fails. Results are in docs/reliability.md.

    nice -n 19 python benchmarks/soak_deblur.py            # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from microdeblur.networks import DisentangledAE, ModelConfig
from microdeblur.weights import WeightsMeta, save_weights

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def make_inputs(folder: Path, n: int, planes: int, size: int, seed: int) -> list[Path]:
    """n small uint16 z-stacks with ImageJ metadata."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        data = (rng.random((planes, size, size)) * 3000 + 500).astype(np.uint16)
        path = folder / f"field{i:02d}.tif"
        tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.325, 1 / 0.325),
                         metadata={"axes": "ZYX", "unit": "um", "spacing": 1.0})
        paths.append(path)
    return paths


def make_weights(path: Path) -> Path:
    """A tiny random manifold-1d model (the soak tests the writing, not the network)."""
    torch.manual_seed(0)
    model = DisentangledAE(ModelConfig(widths=(4, 8, 8), id_channels=(2, 3, 4))).eval()
    save_weights(path, model, WeightsMeta(variant="manifold-1d", config=model.config,
                                          focus_blur_code=np.array([0.1], np.float32)))
    return path


def command(inputs: list[Path], out: Path, weights: Path) -> list[str]:
    return [sys.executable, "-m", "microdeblur", "deblur", *map(str, inputs), "-o", f"{out}{os.sep}",
            "-w", str(weights), "--device", "cpu", "-q"]


def temps_of(folder: Path, pid: int | None = None) -> list[Path]:
    """Hidden temp entries in the folder (of one process when pid is given)."""
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.name.startswith(".") and (pid is None or f".{pid}." in p.name)]


def run_round(jobs: list[list[str]], victims: dict[int, tuple[int, str, float]], out: Path,
              rng: random.Random) -> list[dict]:
    """Start every job at once; kill the victims (signal, 'random' or 'writing', delay); return outcomes."""
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd in jobs]
    t0, killed, seen_writing = time.monotonic(), {}, {}
    while any(p.poll() is None for p in procs):
        now = time.monotonic() - t0
        for j, (signum, mode, delay) in victims.items():
            p = procs[j]
            if j in killed or p.poll() is not None:
                continue
            if mode == "writing" and j not in seen_writing and temps_of(out, p.pid):
                seen_writing[j] = now
            due = (mode == "random" and now >= delay) or (j in seen_writing and now >= seen_writing[j] + delay)
            if due:
                p.send_signal(signum)
                killed[j] = now
        time.sleep(0.005 + rng.random() * 0.005)
    results = []
    for j, p in enumerate(procs):
        text = p.communicate()[0]
        results.append({"job": j, "rc": p.returncode, "killed_at": killed.get(j), "output": text.strip()})
    return results


def check(out: Path, ref: Path, names: list[str]) -> list[str]:
    """Problems with the final output folder (empty list: all good)."""
    problems = []
    entries = sorted(p.name for p in out.iterdir())
    if entries != sorted(names):
        extra = sorted(set(entries) - set(names))
        missing = sorted(set(names) - set(entries))
        problems.append(f"output folder holds extra {extra} / misses {missing}")
    for name in names:
        if (out / name).is_file() and (out / name).read_bytes() != (ref / name).read_bytes():
            problems.append(f"{name} differs from the clean run")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None, help="Folder for inputs and outputs (default: a temp dir).")
    ap.add_argument("--inputs", type=int, default=40)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--planes", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="soak_deblur_"))
    rng = random.Random(args.seed)
    inputs = make_inputs(work / "in", args.inputs, args.planes, args.size, args.seed)
    weights = make_weights(work / "tiny.safetensors")
    names = [p.name for p in inputs]

    t = time.monotonic()
    clean = subprocess.run(command(inputs, work / "ref", weights), env=ENV, capture_output=True, text=True)
    t_ref = time.monotonic() - t
    if clean.returncode != 0:
        print(f"clean run failed: {clean.stdout}{clean.stderr}")
        return 1

    out = work / "out"
    groups = [inputs[j::args.jobs] for j in range(args.jobs)]
    jobs = [command(g, out, weights) for g in groups]
    picked = rng.sample(range(args.jobs), args.jobs // 2)
    kinds = [(signal.SIGKILL, "random"), (signal.SIGTERM, "random"), (signal.SIGKILL, "writing"),
             (signal.SIGTERM, "writing")]
    expected = t_ref * args.jobs / max(1, min(args.jobs, os.cpu_count() or 1))  # rough wall time of a job
    victims = {j: (s, mode, rng.uniform(0.3, expected) if mode == "random" else rng.uniform(0.0, 0.3))
               for j, (s, mode) in zip(picked, (kinds * args.jobs)[: len(picked)])}
    t = time.monotonic()
    first = run_round(jobs, victims, out, rng)
    left_by_kills = temps_of(out)
    reruns: list[dict] = []
    pending = [r["job"] for r in first if r["rc"] != 0]
    for _ in range(3):  # the same command again until it succeeds (a job that finished before its kill is done)
        if not pending:
            break
        round_ = run_round([jobs[j] for j in pending], {}, out, rng)
        for r, j in zip(round_, pending):
            r["job"] = j
        reruns.extend(round_)
        pending = [r["job"] for r in round_ if r["rc"] != 0 and "already exists" not in r["output"]]
    t_soak = time.monotonic() - t

    problems = check(out, work / "ref", names)
    problems += [f"temp left: {p.name}" for p in temps_of(out)]
    problems += [f"job {j} still failing after 3 reruns" for j in pending]
    unexpected = [r for r in first if r["job"] not in victims and r["rc"] != 0]
    problems += [f"job {r['job']} (not killed) exited {r['rc']}: {r['output'][-200:]}" for r in unexpected]

    print(f"soak: {args.jobs} concurrent deblur jobs x {len(groups[0])} inputs ({args.planes}x{args.size}x{args.size} "
          f"uint16) into one folder; clean single run {t_ref:.1f} s, soak {t_soak:.1f} s")
    for r in first:
        v = victims.get(r["job"])
        how = "not killed" if v is None else f"{signal.Signals(v[0]).name} ({v[1]})"
        when = "" if r["killed_at"] is None else f" at {r['killed_at']:.2f} s"
        late = " (it had just finished)" if r["killed_at"] is not None and r["rc"] == 0 else ""
        print(f"  job {r['job']}: {how}{when} -> exit {r['rc']}{late}")
    print(f"  temp files in the folder when all first runs had ended: {len(left_by_kills)} "
          "(a killed job's temps are removed by the next writer into the folder)")
    for r in reruns:
        print(f"  rerun of job {r['job']} -> exit {r['rc']}" + (" (outputs were already complete)"
                                                               if r["rc"] == 1 else ""))
    print(f"  outputs: {len(names)} expected, {len(list(out.iterdir()))} present, "
          f"{sum((out / n).is_file() and (out / n).read_bytes() == (work / 'ref' / n).read_bytes() for n in names)} "
          f"byte-identical to the clean run, {len(temps_of(out))} temp files left")
    print("PASS" if not problems else "FAIL:\n  " + "\n  ".join(problems))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
