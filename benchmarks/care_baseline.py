"""CAREamics' CARE (the peer's own implementation) trained on the pairs and step budget of the project's U-Net
baseline, exported as a tile-to-tile ONNX graph that `frame_quality_bench.py --onnx CARE=FILE` scores through
`deblur`'s tiling and blending, beside every other method (issue 12).

CAREamics cannot share the project's environment (the project's shared reference/notes.md: its torchvision needs a CUDA torch build), so
this script runs in its own (careamics 0.3.5 with these pins, 2026-12-02; newer torch pins resolve to an old
careamics 0.0.x, and careamics imports pkg_resources, which the fresh venv lacked):

    python -m venv care && care/bin/pip install torch==2.11.0 torchvision==0.26.0 careamics onnx "setuptools<80"
    care/bin/pip install --no-deps -e . && care/bin/pip install safetensors typer rich imageio scipy scikit-image
    care/bin/python benchmarks/care_baseline.py runs/data_train -o runs/care_4k.onnx --steps 4000 --batch-size 12

Pairs: every defocused plane of the training identities (PreparedData.split, as `train` and train_unet.py) with
the in-focus plane of its identity, percentile-normalised tiles as `prepare` wrote them; CAREamics draws random
`--patch` crops from them, normalises by its own mean/std (kept in the exported graph) and trains its default
CARE U-Net with its default loss, optimiser and per-epoch schedule for exactly `--steps` optimiser steps
(Lightning's max_steps; one epoch is every 64-px patch of the pairs once).

A budget longer than one working session: `--work-dir DIR` keeps a Lightning checkpoint of the whole training
state (weights, optimiser, scheduler, step) in `DIR/resume.ckpt`, replaced atomically every `--save-every` steps;
the same command with `--resume` continues from it to `--steps`. The resumed run draws new random patches, so it
matches an uninterrupted one in budget and schedule, not bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="folder written by `microdeblur prepare`")
    p.add_argument("--output", "-o", type=Path, required=True, help="ONNX graph to write (tiles [N,1,T,T] -> same)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.2, help="as `microdeblur train`")
    p.add_argument("--dz-range", type=float, default=30.0, help="as `microdeblur train`")
    p.add_argument("--max-pairs", type=int, default=None, help="use at most this many pairs (smoke tests)")
    p.add_argument("--work-dir", type=Path, default=None, help="keep CAREamics' files and resume.ckpt here "
                   "(default: a new temporary folder)")
    p.add_argument("--save-every", type=int, default=500, help="steps between replacements of resume.ckpt")
    p.add_argument("--resume", action="store_true", help="continue from WORK_DIR/resume.ckpt")
    return p.parse_args()


def pairs(data, ids: list[int], limit: int | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(blurry, in-focus) tiles [N,T,T] float32 of every defocused plane of the identities."""
    picks = [(i, int(p)) for i in ids for p in np.flatnonzero(data.dz[i] != 0)]
    if limit is not None and limit < len(picks):
        picks = [picks[j] for j in rng.choice(len(picks), limit, replace=False)]
    x = np.stack([data.stacks[i][p] for i, p in picks]).astype(np.float32)
    y = np.stack([data.stacks[i][data.focus_index[i]] for i, _ in picks]).astype(np.float32)
    return x, y


def saver(path: Path, every: int):
    """A Lightning callback that replaces `path` with a full training checkpoint every `every` optimiser steps."""
    from lightning.pytorch.callbacks import Callback

    class SaveEvery(Callback):
        def on_train_batch_end(self, trainer, *_) -> None:
            if trainer.global_step % every == 0:
                tmp = path.with_suffix(".tmp")
                trainer.save_checkpoint(tmp)
                os.replace(tmp, path)

    return SaveEvery()


def main() -> None:
    args = parse_args()
    if args.resume and (args.work_dir is None or not (args.work_dir / "resume.ckpt").is_file()):
        raise SystemExit(f"error: --resume needs {args.work_dir or '--work-dir'}/resume.ckpt from an earlier run")
    if not args.resume and args.work_dir is not None and (args.work_dir / "resume.ckpt").exists():
        raise SystemExit(f"error: {args.work_dir}/resume.ckpt holds an earlier run: continue it with --resume, or "
                         "give another --work-dir")
    import torch
    from careamics import CAREamist
    from careamics.config import create_care_config

    from microdeblur.dataset import PreparedData

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    data = PreparedData.load(args.data, dz_range=args.dz_range)
    train_ids, val_ids = data.split(val_fraction=args.val_fraction, seed=args.seed)
    x, y = pairs(data, train_ids, args.max_pairs, rng)
    xv, yv = pairs(data, val_ids, 64, rng)
    cfg = create_care_config(experiment_name="care_baseline", data_type="array", axes="SYX",
                             patch_size=[args.patch, args.patch], batch_size=args.batch_size)
    # the budget in optimiser steps across epochs: CAREamics' own num_steps only caps each epoch's batches
    # (Lightning's limit_train_batches; one epoch of these pairs is 6,140 batches of 64-px patches)
    cfg.training_config.trainer_params.update(max_steps=args.steps, max_epochs=-1)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="care_"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "resume.ckpt"
    callbacks = [saver(ckpt, args.save_every)]
    if args.resume:
        careamist = CAREamist(checkpoint_path=ckpt, work_dir=work, callbacks=callbacks, enable_progress_bar=False)
        careamist.trainer.fit_loop.epoch_loop.max_steps = args.steps  # the budget asked now, not the one saved
    else:
        careamist = CAREamist(cfg, work_dir=work, callbacks=callbacks, enable_progress_bar=False)
    t = time.perf_counter()
    careamist.train(train_data=x, train_data_target=y, val_data=xv, val_data_target=yv)
    minutes = (time.perf_counter() - t) / 60
    done = int(careamist.trainer.global_step)
    if done != args.steps:
        raise SystemExit(f"error: CAREamics ran {done} optimiser steps, not {args.steps}")
    norm = careamist.config.data_config.normalization  # mean/std CAREamics computed from the training pairs
    stats = {k: float(np.asarray(getattr(norm, k)).reshape(-1)[0]) for k in
             ("input_means", "input_stds", "target_means", "target_stds")}
    net = careamist.model.model.eval().cpu()

    class Tiles(torch.nn.Module):
        """Normalised tile -> CARE's standardisation -> its U-Net -> back to the target's units."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            z = (t - stats["input_means"]) / stats["input_stds"]
            return self.net(z) * stats["target_stds"] + stats["target_means"]

    tile = int(data.stacks[0].shape[-1])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(Tiles(), (torch.zeros(2, 1, tile, tile),), str(args.output), input_names=["tiles"],
                          output_names=["out"], dynamic_axes={"tiles": {0: "n"}, "out": {0: "n"}}, opset_version=17,
                          dynamo=False)
    n_params = sum(p.numel() for p in net.parameters())
    info = {"careamics": __import__("careamics").__version__, "torch": torch.__version__, "steps": done,
            "batches_per_epoch": int(careamist.trainer.num_training_batches), "batch_size": args.batch_size, "patch": args.patch, "pairs": int(len(x)), "parameters": int(n_params),
            "minutes": round(minutes, 1), "resumed": args.resume, "model": careamist.config.algorithm_config.model.model_dump(),
            "loss": str(careamist.config.algorithm_config.loss), "optimizer": careamist.config.algorithm_config.optimizer.model_dump(),
            "normalisation": stats}
    args.output.with_suffix(".json").write_text(json.dumps(info, indent=1, default=str))
    print(json.dumps(info, default=str))


if __name__ == "__main__":
    main()
