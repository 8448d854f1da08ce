"""Optimiser steps/s and tiles/s of `microdeblur train` per variant (default architecture, CPU).

Run: python benchmarks/train_bench.py [--threads 1] [--steps 6] [--batch-size 8]
One step = the real training step of training.py (_step: sampling excluded) on random tiles:
manifold variants see 4*B input tiles (two pair kinds) plus 4*B swapped decodings and re-encodings;
ml-vae sees B groups of 4 planes. Prints the median over steps after one warm-up step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from microdeblur.losses import ms_ssim_l1
from microdeblur.networks import DisentangledAE, ModelConfig
from microdeblur.training import TrainConfig, _step


class RandomSampler:
    """Stands in for PairSampler: random tiles of the right shapes."""

    def pairs(self, n):
        from microdeblur.dataset import PairBatch

        x = [torch.rand(n, 1, 128, 128) for _ in range(4)]
        return PairBatch(*x, torch.zeros(n), torch.ones(n))

    def groups(self, g, k):
        return torch.rand(g, k, 1, 128, 128)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"threads {a.threads}, batch {a.batch_size}")
    print("| variant | s/step (median) | steps/s | input tiles/s |\n|---|---|---|---|")
    for variant in ("manifold-1d", "manifold", "ml-vae"):
        cfg = TrainConfig(variant=variant, batch_size=a.batch_size)
        model = DisentangledAE(ModelConfig(variant=variant, widths=cfg.widths)).to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters())
        times = []
        for i in range(a.steps + 1):
            t = time.perf_counter()
            parts = _step(model, RandomSampler(), cfg, ms_ssim_l1, 1.0, torch.device("cpu"))
            opt.zero_grad()
            parts["total"].backward()
            opt.step()
            if i:
                times.append(time.perf_counter() - t)
        s = statistics.median(times)
        tiles = 4 * a.batch_size if variant != "ml-vae" else a.batch_size * cfg.group_size
        print(f"| {variant} | {s:.2f} | {1 / s:.2f} | {tiles / s:.1f} |")


if __name__ == "__main__":
    main()
