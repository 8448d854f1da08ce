"""Training with several processes through torchrun (gloo on CPU): it runs on every rank, the result loads and
deblurs, two processes with half the batch each make the same update as one, and resume works across sizes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from microdeblur.cli import app
from microdeblur.simulate import simulate_days
from microdeblur.weights import load_weights

runner = CliRunner()
TINY = ["--widths", "4,8,8", "--id-channels", "2,3,4", "--crop", "32", "--workers", "1", "--eval-every", "2",
        "--checkpoint-every", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    simulate_days(root / "raw", days=2, planes=5, size=(256, 128), seed=7, z_step_um=2.0)
    res = runner.invoke(app, ["-q", "prepare", str(root / "raw"), str(root / "data"), "--tile", "64"])
    assert res.exit_code == 0, res.output
    return root / "data"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], n: int = 2, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=os.environ | {"OMP_NUM_THREADS": "1"} | (env or {}))


def test_two_processes_train_and_the_result_deblurs(tmp_path, data):
    out = tmp_path / "w.safetensors"
    res = _torchrun(["-m", "microdeblur", "train", str(data), "-o", str(out), "--max-steps", "4", "--batch-size", "4", *TINY])
    assert res.returncode == 0, res.stderr[-2000:]
    model, meta = load_weights(out)
    assert meta.training["world_size"] == 2 and meta.training["steps"] == 4
    ck = torch.load(tmp_path / "w.ckpt", weights_only=True)
    assert ck["rank_steps"] == [4, 4] and len(ck["rank_rngs"]) == 2  # rank 1 reached every step too
    assert ck["rank_rngs"][0] != ck["rank_rngs"][1]  # each rank drew its own pairs
    img = (np.random.default_rng(0).random((80, 96)) * 4000).astype(np.uint16)
    from microdeblur.engine import Deblurrer

    outimg = Deblurrer(model, meta, device="cpu", overlap=16).deblur_plane(img)
    assert outimg.shape == img.shape and outimg.dtype == np.uint16
    # a checkpoint written by two processes resumes in one (fresh sampling streams, same weights to start from)
    out.unlink()
    res = runner.invoke(app, ["train", str(data), "-o", str(out), "--max-steps", "6", "--batch-size", "4",
                              "--resume", str(tmp_path / "w.ckpt"), *TINY])
    assert res.exit_code == 0, res.output
    assert load_weights(out)[1].training["steps"] == 6


STEP_SCRIPT = textwrap.dedent('''
    import sys, torch
    from microdeblur.distributed import world
    from microdeblur.losses import ms_ssim_l1
    from microdeblur.networks import DisentangledAE, ModelConfig
    from microdeblur.objectives import OBJECTIVES, StepOptions, TrainStep
    from torch.nn.parallel import DistributedDataParallel

    batch_file, out = sys.argv[1], sys.argv[2]
    with world("cpu") as w:
        torch.manual_seed(0)
        model = DisentangledAE(ModelConfig(tile=32, widths=(4, 8, 8), id_channels=(2, 3, 4), blur_width=8))
        batch = torch.load(batch_file)
        n = batch["x1"].shape[0] // w.size
        mine = {k: (v[w.rank * n:(w.rank + 1) * n] if k != "dz" else torch.cat([v[:n * w.size][w.rank * n:(w.rank + 1) * n],
                v[n * w.size:][w.rank * n:(w.rank + 1) * n]])) for k, v in batch.items()}
        step = TrainStep(model, OBJECTIVES["manifold-1d"], StepOptions(batch_size=n, dz_weight=0.1), ms_ssim_l1)
        if w.size > 1:
            step = DistributedDataParallel(step)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        step(mine, 1.0)["total"].backward()
        opt.step()
        if w.main:
            torch.save(model.state_dict(), out)
''')


def test_two_processes_with_half_the_batch_make_the_same_update_as_one(tmp_path):
    g = torch.Generator().manual_seed(1)
    batch = {k: torch.rand(4, 1, 32, 32, generator=g) for k in ("x1", "x2", "y1", "y2")}
    batch["dz"] = torch.tensor([-6.0, -2.0, 2.0, 6.0, 0.0, 0.0, 4.0, -4.0])  # dz of x1 (4), then of x2 (4)
    torch.save(batch, tmp_path / "batch.pt")
    script = tmp_path / "step.py"
    script.write_text(STEP_SCRIPT)
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "batch.pt"), str(tmp_path / "one.pt")],
                         capture_output=True, text=True, timeout=120, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr[-2000:]
    two = _torchrun([str(script), str(tmp_path / "batch.pt"), str(tmp_path / "two.pt")])
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    start = torch.load(tmp_path / "one.pt")  # shapes only
    assert a.keys() == b.keys() == start.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-6, rtol=1e-4, msg=k)


def test_a_rank_that_cannot_reach_the_others_fails_clearly(tmp_path, data):
    """WORLD_SIZE 2 but only one process: a clear error after the timeout, not a hang."""
    env = os.environ | {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(_free_port()), "MICRODEBLUR_DIST_TIMEOUT": "3", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "microdeblur", "train", str(data), "-o", str(tmp_path / "w.safetensors"),
                          "--max-steps", "2", "--batch-size", "4", *TINY], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 1, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: rank 0 of 2 could not join") and "Traceback" not in res.stderr


WAIT_SCRIPT = """
import sys, time
from microdeblur.distributed import any_rank, world
with world("cpu") as w:
    if w.rank == 0:
        time.sleep(5)  # rank 0 alone probes or writes a checkpoint while the others wait
    print("stop" if any_rank(w, w.rank == 0) else "go")
"""


def test_ranks_wait_for_rank_0_longer_than_the_join_timeout(tmp_path):
    """The join timeout (MICRODEBLUR_DIST_TIMEOUT, 2 s here) does not bound how long a rank waits at a step's
    collective: that is MICRODEBLUR_DIST_WAIT (default 1800 s), so a slow probe on rank 0 does not end the run."""
    script = tmp_path / "wait.py"
    script.write_text(WAIT_SCRIPT)
    res = _torchrun([str(script)], env={"MICRODEBLUR_DIST_TIMEOUT": "2"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("stop") == 2 and "go" not in res.stdout  # the two ranks' lines may interleave
    res = _torchrun([str(script)], env={"MICRODEBLUR_DIST_TIMEOUT": "2", "MICRODEBLUR_DIST_WAIT": "2"})
    assert res.returncode != 0  # the wait is what bounds it


def test_batch_must_split_over_the_processes(tmp_path, data):
    res = _torchrun(["-m", "microdeblur", "train", str(data), "-o", str(tmp_path / "w.safetensors"), "--max-steps", "2",
                     "--batch-size", "3", *TINY])
    assert res.returncode != 0 and "multiple of the 2 training processes" in res.stderr
