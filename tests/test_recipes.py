"""The one-command recipe (benchmarks/ship.sh) drives both training stages, the gate fit and the ONNX export with the
shipped options, run against stand-ins for the trainer and the tools (what they were asked to do is recorded)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAND_IN = """#!/usr/bin/env bash
# record the call; make the file named by -o, refusing an existing one without --overwrite as the real tools do
echo "$(basename "$0") $*" >> "$CALLS"
prev=""
for a in "$@"; do
  if [ "$prev" = "-o" ]; then
    if [ -e "$a" ] && [[ " $* " != *" --overwrite "* ]]; then echo "error: $a exists" >&2; exit 1; fi
    mkdir -p "$(dirname "$a")"; touch "$a"
  fi
  prev="$a"
done
"""
RECIPE = "--deblur-weight 1 --dz-weight 1 --source-code --ema 0.999"


@pytest.fixture()
def project(tmp_path):
    """A copy of the recipe scripts with its simulated days already there and stand-ins on PATH."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    (tmp_path / "benchmarks").mkdir()
    for script in ("ship.sh", "train_shipped.sh", "train_randomised.sh"):
        shutil.copy(ROOT / "benchmarks" / script, tmp_path / "benchmarks" / script)
    for day in ("raw_train/day16", "raw_random/day16", "val/ref/day01", "val/random/day02", "val/ref_more/day02",
                "val/ref_sparse/day01", "val/random_more/day02", "data_train", "data_mixed"):
        (tmp_path / "runs" / day).mkdir(parents=True)
    for data in ("data_train", "data_mixed"):
        (tmp_path / "runs" / data / "index.json").write_text("{}")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("fake-launch", "microdeblur", "python"):
        (bin_dir / tool).write_text(STAND_IN)
        (bin_dir / tool).chmod(0o755)
    env = os.environ | {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CALLS": str(tmp_path / "calls.txt"),
                        "LAUNCH": "fake-launch"}
    return tmp_path, env


def _run(project, *args) -> list[str]:
    root, env = project
    res = subprocess.run(["bash", str(root / "benchmarks" / "ship.sh"), *args], env=env, cwd=root,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    calls = (root / "calls.txt").read_text().splitlines()
    (root / "calls.txt").unlink()
    return calls


@pytest.mark.skipif(sys.platform == "win32", reason="bash recipe")
def test_ship_runs_both_stages_the_gate_fit_and_the_export_with_the_recipe(project):
    calls = _run(project, "15000", "10000", "m1dfsc", "--unshuffle", "1")
    trains = [c for c in calls if c.startswith("fake-launch")]
    assert len(trains) == 2, calls
    stage1, stage2 = trains
    assert "-o runs/m1dfsc.safetensors" in stage1 and "--max-steps 15000" in stage1 and "--unshuffle 1" in stage1
    assert RECIPE in stage1 and "--val-frames runs/val/ref" in stage1
    assert "-o runs/m1dfscr.safetensors" in stage2 and "--init runs/m1dfsc.safetensors" in stage2
    assert "--max-steps 10000" in stage2 and RECIPE in stage2 and "--unshuffle" not in stage2  # --init brings it
    fit = [c for c in calls if c.startswith("python benchmarks/fit_focus_gate.py")]
    assert len(fit) == 1 and "runs/m1dfscr.safetensors" in fit[0] and "-o runs/m1dfscr_gated.safetensors" in fit[0]
    assert calls[-1] == "microdeblur export onnx -w runs/m1dfscr_gated.safetensors --overwrite"
    # run again: both stages and the gate are done, only the export is redone
    assert _run(project, "15000", "10000", "m1dfsc", "--unshuffle", "1") == [calls[-1]]


def test_ship_defaults_to_the_shipped_weights_names(project):
    calls = _run(project)
    assert any("-o runs/m1dfsc.safetensors" in c and "--max-steps 15000" in c and "--unshuffle 1" in c for c in calls)
    assert any("--init runs/m1dfsc.safetensors" in c and "-o runs/m1dfscr.safetensors" in c
               and "--max-steps 5500" in c for c in calls)


def test_ship_rerun_completes_a_gate_fit_that_did_not_finish(project):
    """Stage 2 exported but its gate fit failed (or was killed): a re-run fits the gate and exports, nothing retrains."""
    root, _ = project
    for done in ("m1dfsc.safetensors", "m1dfscr.safetensors"):
        (root / "runs" / done).touch()
    calls = _run(project, "15000", "10000", "m1dfsc", "--unshuffle", "1")
    assert not [c for c in calls if c.startswith("fake-launch")], calls
    assert [c.split()[1] for c in calls] == ["benchmarks/fit_focus_gate.py", "export"]
