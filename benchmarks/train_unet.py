"""Train the CARE-style U-Net baseline for `microdeblur evaluate --unet` for a step or time budget.

Pairs: a defocused tile -> the in-focus tile of the same identity, from the training identities of
the same split `train` uses (PreparedData.split). The U-Net is sized to about the parameter count of
the default manifold-1d model.

    python benchmarks/train_unet.py DATA --output runs/unet.safetensors --steps 5000

Every `--save-every` steps the whole training state (weights, Adam moments, both random generators, step) replaces
OUTPUT with the suffix .ckpt; the same command with `--resume` continues from it, step for step as if never stopped.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from microdeblur import log
from microdeblur.atomic import atomic_path
from microdeblur.baselines import UNet, UNetConfig, save_unet, unet_config_for
from microdeblur.dataset import PreparedData
from microdeblur.devices import resolve_device
from microdeblur.networks import DisentangledAE, ModelConfig, count_parameters


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="folder written by `microdeblur prepare`")
    p.add_argument("--output", "-o", type=Path, default=Path("runs/unet.safetensors"))
    p.add_argument("--minutes", type=float, default=None, help="wall-time budget for training")
    p.add_argument("--steps", type=int, default=None, help="optimiser-step budget (default: 15 minutes)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--crop", type=int, default=None, help="train on random crops of this side cut from the tiles "
                   "(one window per pair, as `microdeblur train --crop`; default: whole tiles)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.2, help="as `microdeblur train`")
    p.add_argument("--dz-range", type=float, default=30.0, help="as `microdeblur train`")
    p.add_argument("--base", type=int, default=None, help="U-Net base width (default: match the manifold-1d size)")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--save-every", type=int, default=500, help="steps between replacements of OUTPUT.ckpt")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT.ckpt (same options, larger budget)")
    return p.parse_args()


def defocused_planes(data: PreparedData, ids: list[int]) -> list[tuple[int, int]]:
    """All (identity, plane) pairs of the given identities with Δz != 0."""
    return [(i, int(p)) for i in ids for p in np.flatnonzero(data.dz[i] != 0)]


def sample_batch(data: PreparedData, pairs: list[tuple[int, int]], rng: np.random.Generator,
                 batch: int, crop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (blurry, in-focus) tiles [B,1,T,T] (or crop x crop windows, the same window for both members of a
    pair), one shared random rotation/flip per batch."""
    picks = [pairs[j] for j in rng.integers(len(pairs), size=batch)]
    x = np.stack([data.stacks[i][p] for i, p in picks])
    y = np.stack([data.stacks[i][data.focus_index[i]] for i, _ in picks])
    if crop is not None and crop < x.shape[-1]:
        oy, ox = rng.integers(0, x.shape[-1] - crop + 1, (2, batch))
        x = np.stack([a[r:r + crop, c:c + crop] for a, r, c in zip(x, oy, ox)])
        y = np.stack([a[r:r + crop, c:c + crop] for a, r, c in zip(y, oy, ox)])
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    x, y = (np.rot90(a, k, axes=(1, 2)) for a in (x, y))
    if flip:
        x, y = x[:, :, ::-1], y[:, :, ::-1]
    xt, yt = (torch.from_numpy(np.ascontiguousarray(a[:, None], dtype=np.float32)) for a in (x, y))
    return xt, yt


def main() -> None:
    """Train until the step or time budget is spent, then write the safetensors file."""
    args = parse_args()
    if args.steps is None and args.minutes is None:
        args.minutes = 15.0
    max_steps = args.steps if args.steps is not None else float("inf")
    max_s = 60.0 * args.minutes if args.minutes is not None else float("inf")
    device = resolve_device(args.device)
    data = PreparedData.load(args.data, dz_range=args.dz_range)
    train_ids, _ = data.split(val_fraction=args.val_fraction, seed=args.seed)
    pairs = defocused_planes(data, train_ids)
    target = count_parameters(DisentangledAE(ModelConfig()))
    cfg = UNetConfig(args.base) if args.base else unet_config_for(target)
    torch.manual_seed(args.seed)
    model = UNet(cfg).to(device)
    log.info(f"U-Net base {cfg.base}, depth {cfg.depth}: {count_parameters(model)} parameters "
             f"(manifold-1d: {target}); {len(train_ids)} training identities, {len(pairs)} pairs")
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    ckpt, step, running, earlier = args.output.with_suffix(".ckpt"), 0, None, 0.0
    if not args.resume and ckpt.exists() and not args.overwrite:
        raise SystemExit(f"error: {ckpt} holds an earlier run: continue it with --resume, or start again with --overwrite")
    if args.resume:
        if not ckpt.is_file():
            raise SystemExit(f"error: --resume needs {ckpt} from an earlier run")
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        step, running, earlier = state["step"], state["running"], state["minutes"]
        log.info(f"resumed {ckpt} at step {step}")
    start, last_log = time.monotonic(), time.monotonic()
    while step < max_steps and time.monotonic() - start < max_s:
        x, y = (t.to(device) for t in sample_batch(data, pairs, rng, args.batch_size, args.crop))
        loss = F.l1_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % args.save_every == 0:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "numpy_rng": rng.bit_generator.state,
                     "torch_rng": torch.get_rng_state(), "step": step, "running": running,
                     "minutes": earlier + (time.monotonic() - start) / 60}
            with atomic_path(ckpt, overwrite=True) as tmp:
                torch.save(state, tmp)
        if time.monotonic() - last_log > 30.0:
            last_log = time.monotonic()
            log.info(f"step {step}  L1 {running:.4f}  {(last_log - start) / 60:.1f} min")
    summary = {"steps": step, "tiles_seen": step * args.batch_size, "minutes": earlier + (time.monotonic() - start) / 60,
               "final_l1": running, "batch_size": args.batch_size, "crop": args.crop, "lr": args.lr, "seed": args.seed,
               "val_fraction": args.val_fraction, "dz_range": args.dz_range, "data": str(args.data),
               "train_identities": len(train_ids)}
    save_unet(args.output, model.cpu().eval(), summary, overwrite=args.overwrite)
    log.info(f"wrote {args.output} after {step} steps")


if __name__ == "__main__":
    main()
