"""Model cost on CPU: parameters, FLOPs per tile, inference and training tiles/s for each variant.

Run: python benchmarks/model_bench.py [--threads 2] [--reps 5] [--widths 16,32,64 --head-width 64 --id-channels 16]
     [--malloc-tuning]   (keep freed memory in glibc's heap: no page faults on every training step)
Timings are medians over --reps runs after one warm-up; 'cpu' columns are process CPU seconds (less
sensitive to other processes on a shared machine than wall time).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from microdeblur.losses import manifold_losses, mlvae_losses, ms_ssim_l1
from microdeblur.networks import DisentangledAE, ModelConfig, count_parameters


def timed(fn: Callable[[], object], reps: int) -> tuple[float, float]:
    """Median wall and process-CPU seconds of fn() over reps runs, after one warm-up run."""
    fn()
    walls, cpus = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def flops_per_tile(model: DisentangledAE) -> int:
    """Forward (encode + decode) FLOPs of one tile, as counted by FlopCounterMode (convs and matmuls)."""
    x = torch.rand(1, 1, model.config.tile, model.config.tile)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops()


def as_format(model: DisentangledAE, x: torch.Tensor, channels_last: bool) -> tuple[DisentangledAE, torch.Tensor]:
    """Model and input in channels_last or contiguous memory format."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(memory_format=fmt), x.contiguous(memory_format=fmt)


def inference_rate(cfg: ModelConfig, channels_last: bool, reps: int, batch: int = 32) -> tuple[float, float]:
    """Inference tiles/s (wall, and per CPU-second) at the given batch size."""
    model, x = as_format(DisentangledAE(cfg).eval(), torch.rand(batch, 1, cfg.tile, cfg.tile), channels_last)

    def run() -> None:
        with torch.inference_mode():
            model(x)

    wall, cpu = timed(run, reps)
    return batch / wall, batch / cpu


def train_rate(cfg: ModelConfig, channels_last: bool, reps: int, full: bool, batch: int = 16) -> tuple[float, float, float]:
    """Training tiles/s for a plain AE step on `batch` tiles or a full step on 4x`batch` tiles; also s/step."""
    tiles = 4 * batch if full else batch
    model, x = as_format(DisentangledAE(cfg).train(), torch.rand(tiles, 1, cfg.tile, cfg.tile), channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if not full:
            loss = ms_ssim_l1(model(x), x)
        elif cfg.variant == "ml-vae":
            loss = sum(mlvae_losses(model, x.view(batch, 4, 1, cfg.tile, cfg.tile), rec_fn=ms_ssim_l1).values())
        else:
            dz = torch.linspace(-30, 30, batch)
            loss = sum(manifold_losses(model, *x.split(batch), rec_fn=ms_ssim_l1, dz1=dz, dz2=-dz, dz_weight=1.0).values())
        loss.backward()
        opt.step()

    wall, cpu = timed(step, reps)
    return tiles / wall, tiles / cpu, wall


def main() -> None:
    """Print one block of figures per variant."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--variants", default="manifold-1d,manifold,ml-vae")
    ap.add_argument("--widths", default=None, help="comma-separated trunk widths (default: ModelConfig's)")
    ap.add_argument("--head-width", type=int, default=None)
    ap.add_argument("--id-channels", type=int, default=None)
    ap.add_argument("--malloc-tuning", action="store_true")
    args = ap.parse_args()
    if args.malloc_tuning:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: big tensors from the heap, not fresh mmap pages
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: do not give freed memory back to the kernel
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides: dict = {}
    if args.widths:
        overrides["widths"] = tuple(int(w) for w in args.widths.split(","))
    if args.head_width:
        overrides["head_width"] = args.head_width
    if args.id_channels:
        overrides["id_channels"] = args.id_channels
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, reps {args.reps}, malloc tuning {args.malloc_tuning}")
    for variant in args.variants.split(","):
        cfg = ModelConfig(variant=variant, **overrides)
        model = DisentangledAE(cfg)
        print(f"\n{variant}: widths {cfg.widths}, head {cfg.head_width}, id {cfg.id_dim}, blur {cfg.blur_dim}")
        print(f"  parameters {count_parameters(model):,}  forward GFLOPs/tile {flops_per_tile(model) / 1e9:.3f}")
        for cl in (False, True):
            tag = "channels_last" if cl else "contiguous   "
            inf = inference_rate(cfg, cl, args.reps)
            ae = train_rate(cfg, cl, args.reps, full=False)
            st = train_rate(cfg, cl, args.reps, full=True)
            kind = "ml-vae group step (16x4)" if variant == "ml-vae" else "manifold step (4x16)"
            print(
                f"  {tag} inference {inf[0]:6.1f} tiles/s ({inf[1]:6.1f}/cpu-s) | AE train {ae[0]:5.1f} tiles/s "
                f"({ae[1]:5.1f}/cpu-s) | {kind} {st[0]:5.1f} tiles/s ({st[1]:5.1f}/cpu-s), {st[2]:.2f} s/step"
            )


if __name__ == "__main__":
    main()
