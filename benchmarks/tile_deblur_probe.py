"""Deblurring of held-out 128-px tiles, min-MSE PSNR against the in-focus tile: models decoded with the stored
in-focus code and with each tile's own in-focus code, and the U-Net baseline, on the same tiles.

    python benchmarks/tile_deblur_probe.py runs/data_train -w runs/m1dsup.safetensors -w shipped \
        --unet runs/unet_4k.safetensors [--identities 40]

The tiles are the trainer's own probe (training.Probe: up to 6 defocused planes with 0 < |dz| <= --dz-max
of each of --identities validation identities that `train --seed 0 --val-fraction 0.2` holds out). Whole frames (frame_quality_bench.py) are the figure
to judge by; this one isolates the network from tiling, blending and intensity handling.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from microdeblur.baselines import load_unet
from microdeblur.dataset import PreparedData
from microdeblur.metrics import psnr_minmse
from microdeblur.training import Probe
from microdeblur.weights import load_weights


def held_out_tiles(data: PreparedData, n_ids: int, dz_max: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """(defocused planes, in-focus plane) per identity of the trainer's own probe (training.Probe) on the seed-0 split."""
    train_ids, val_ids = data.split(0.2, seed=0)
    probe = Probe.build(data, val_ids, train_ids, np.random.default_rng(0), n_ids=n_ids, dz_max=dz_max)
    blurry, target = probe.blurry.astype(np.float32), probe.target.astype(np.float32)
    starts = np.flatnonzero(np.r_[True, np.any(target[1:] != target[:-1], axis=(1, 2))])
    return [(b, t[0]) for b, t in zip(np.split(blurry, starts[1:]), np.split(target, starts[1:]))]


def score(outputs: list[np.ndarray], tiles: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean min-MSE PSNR of outputs [n,S,S] against each identity's in-focus tile."""
    return float(np.mean([psnr_minmse(o, f) for out, (_, f) in zip(outputs, tiles) for o in out]))


@torch.inference_mode()
def model_rows(weights: str, tiles) -> dict[str, float]:
    """A weights file decoded with its stored in-focus code and with each identity's own in-focus code."""
    model, meta = load_weights(None if weights == "shipped" else Path(weights))
    stored = torch.from_numpy(meta.focus_blur_code[None])
    with_stored, with_own = [], []
    for blurry, focus in tiles:
        c = model.encode(torch.from_numpy(blurry)[:, None])
        own = model.encode(torch.from_numpy(focus)[None, None]).blur
        with_stored.append(model.decode(c.identity, stored.expand(len(blurry), -1))[:, 0].numpy())
        with_own.append(model.decode(c.identity, own.expand(len(blurry), -1))[:, 0].numpy())
    return {f"{weights} (stored focus code)": score(with_stored, tiles),
            f"{weights} (own in-focus code)": score(with_own, tiles)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="folder written by prepare")
    p.add_argument("--weights", "-w", action="append", default=[], help="repeatable; 'shipped' = the packaged file")
    p.add_argument("--unet", type=Path, help="U-Net baseline weights (benchmarks/train_unet.py)")
    p.add_argument("--identities", type=int, default=40)
    p.add_argument("--dz-max", type=float, default=15.0)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    tiles = held_out_tiles(PreparedData.load(a.data, dz_range=30.0), a.identities, a.dz_max)
    rows = {"blurry input": score([b for b, _ in tiles], tiles)}
    for w in a.weights or ["shipped"]:
        rows.update(model_rows(w, tiles))
    if a.unet is not None:
        unet, _ = load_unet(a.unet)
        with torch.inference_mode():
            rows["U-Net"] = score([unet(torch.from_numpy(b)[:, None])[:, 0].numpy() for b, _ in tiles], tiles)
    n = sum(len(b) for b, _ in tiles)
    print(f"{len(tiles)} held-out identities, {n} tiles with 0 < |dz| <= {a.dz_max:g} um\n")
    print("| method | min-MSE PSNR (dB) |\n|---|---|")
    for name, v in rows.items():
        print(f"| {name} | {v:.2f} |")


if __name__ == "__main__":
    main()
