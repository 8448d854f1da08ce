"""Model cost on CPU: parameters, FLOPs per tile, inference tiles/s and manifold training step time, for a
list of pyramid sizes, input space-to-depth factors and training crop sides (the cost half of the quality-cost
curve in docs/benchmarks.md; benchmarks/cost_curve.py reads the quality half from training logs).

    python benchmarks/model_bench.py [--threads 2] [--reps 3] [--sizes 24,32,48,64/12,16,24,32 ...] [--crops 64,96,128]
        [--unshuffles 2,1] [--stems 0,16] [--deblur-weight 1]

A size is WIDTHS/ID_CHANNELS; default: the shipped one and a smaller and a larger one. Timings are medians
over --reps runs after one warm-up; 'cpu' is process CPU seconds (steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from microdeblur.losses import ms_ssim_l1
from microdeblur.networks import DisentangledAE, ModelConfig, count_parameters
from microdeblur.objectives import StepOptions, manifold_terms

SIZES = ("24,32,48,64/12,16,24,32", "32,48,64,96/16,24,32,48", "32,64,96,128/16,32,48,64")


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
    """Forward (encode + decode) FLOPs of one tile, as counted by FlopCounterMode."""
    x = torch.rand(1, 1, model.config.tile, model.config.tile)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops()


def inference_rate(model: DisentangledAE, reps: int, batch: int = 32) -> float:
    """Inference (encode + decode) tiles/s at the given batch size, channels_last."""
    x = torch.rand(batch, 1, model.config.tile, model.config.tile).contiguous(memory_format=torch.channels_last)
    model.eval()

    def run() -> None:
        with torch.inference_mode():
            model(x)

    return batch / timed(run, reps)[0]


def step_time(model: DisentangledAE, crop: int, batch: int, reps: int, deblur_weight: float = 0.0) -> tuple[float, float]:
    """Wall and CPU seconds of one full manifold-1d training step (4 x batch crops, every loss term; with the
    deblurring term also the batch's in-focus crops)."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    xs = [torch.rand(batch, 1, crop, crop).contiguous(memory_format=torch.channels_last) for _ in range(4)]
    dz = torch.linspace(-30, 30, 2 * batch)
    f1 = torch.rand(batch, 1, crop, crop).contiguous(memory_format=torch.channels_last) if deblur_weight else None
    opts = StepOptions(batch_size=batch, crop=crop, dz_weight=0.1, deblur_weight=deblur_weight)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        parts = manifold_terms(model, *xs, rec_fn=ms_ssim_l1, opts=opts, dz=dz, f1=f1)
        sum(parts.values()).backward()
        opt.step()

    return timed(step, reps)


def main() -> None:
    """Print one row per (size, crop)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=12, help="pairs per pair kind per step (train --batch-size)")
    ap.add_argument("--sizes", nargs="+", default=list(SIZES))
    ap.add_argument("--crops", default="64,96,128")
    ap.add_argument("--unshuffles", default="2", help="input space-to-depth factors (train --unshuffle)")
    ap.add_argument("--stems", default="0", help="full-resolution stem channels (train --stem)")
    ap.add_argument("--deblur-weight", type=float, default=0.0, help="time the step with the deblurring term")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, reps {args.reps}, batch {args.batch}, "
          f"deblur weight {args.deblur_weight}\n")
    print("| widths / id channels | unshuffle | stem | parameters | GFLOPs/tile | inference tiles/s | crop | step s (wall) | step s (cpu) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        w, c = (tuple(int(v) for v in part.split(",")) for part in size.split("/"))
        for u, stem in ((int(a), int(b)) for a in args.unshuffles.split(",") for b in args.stems.split(",")):
            model = DisentangledAE(ModelConfig(widths=w, id_channels=c, unshuffle=u, input_skip=True, stem=stem))
            head = (f"| {size} | {u} | {stem} | {count_parameters(model):,} | {flops_per_tile(model) / 1e9:.2f} | "
                    f"{inference_rate(model, args.reps):.1f} |")
            for crop in (int(v) for v in args.crops.split(",")):
                wall, cpu = step_time(model, crop, args.batch, args.reps, args.deblur_weight)
                print(f"{head} {crop} | {wall:.2f} | {cpu:.2f} |", flush=True)
                head = "| | | | | | |"


if __name__ == "__main__":
    main()
