"""Run `evaluate` on a prepared folder and print the main quality table (for the model card).

    python benchmarks/quality_bench.py DATA --weights runs/model.safetensors --unet runs/unet.safetensors \
        --output runs/quality
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from microdeblur.eval_report import bin_table, main_table
from microdeblur.evaluation import evaluate


def parse_args() -> argparse.Namespace:
    """Command-line options (the same as `microdeblur evaluate`)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="folder written by `microdeblur prepare`")
    p.add_argument("--weights", "-w", type=Path, action="append", default=[], help="repeatable; default: shipped")
    p.add_argument("--unet", type=Path, default=None, help="U-Net baseline from benchmarks/train_unet.py")
    p.add_argument("--output", "-o", type=Path, default=None, help="report folder (default: a new temp folder)")
    p.add_argument("--split", default="val", choices=("val", "train", "all"))
    p.add_argument("--identities", type=int, default=None, help="at most this many identities, spread over the split")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--classifier-epochs", type=int, default=300)
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args()


def main() -> None:
    """Evaluate, then print the summary and the per-|Δz| PSNR table."""
    args = parse_args()
    out = args.output or Path(tempfile.mkdtemp(prefix="microdeblur-quality-"))
    start = time.monotonic()
    metrics = evaluate(args.data, out, weights=args.weights, unet=args.unet, split=args.split, quick=args.quick,
                       classifier_epochs=args.classifier_epochs, device=args.device, overwrite=args.overwrite,
                       identities=args.identities)
    p = metrics["protocol"]
    print(f"data {p['data']}  split {p['split']}  identities {p['n_identities']}  blurry tiles {p['n_blurry']}  "
          f"quick {p['quick']}  ({time.monotonic() - start:.0f} s; report in {out})\n")
    print(main_table(metrics))
    print(bin_table(metrics, "psnr", 2))


if __name__ == "__main__":
    main()
