"""Uniform weight average ("model soup", Wortsman et al. 2022) of runs fine-tuned from one starting export.

    python benchmarks/weight_soup.py runs/a.safetensors runs/b.safetensors --data runs/data_mixed -o runs/soup.safetensors

Every ingredient must have the same architecture and should share its `--init` (runs from different starting
points need not lie in one basin, and their average can be worse than either). The tensors are averaged; what
depends on them is measured again on the prepared folder the runs trained on, exactly as `train` does at export
(`training.finalize`: the in-focus blur code and, for 1-D codes, the blur-code <-> dz calibration). The other
metadata comes from the first ingredient, except the focus gate, which is dropped: fit the soup's own with
benchmarks/fit_focus_gate.py.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
from safetensors.torch import load_file

from microdeblur.atomic import check_output_path
from microdeblur.dataset import PreparedData
from microdeblur.devices import torch_threads
from microdeblur.errors import UserError
from microdeblur.training import finalize
from microdeblur.weights import load_weights, read_meta, save_weights


def average(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the ingredients' tensors (same names and shapes required)."""
    states = [load_file(str(p)) for p in paths]
    if any(s.keys() != states[0].keys() for s in states):
        raise SystemExit("error: the ingredients' tensors differ (not one architecture)")
    return {k: torch.stack([s[k].float() for s in states]).mean(0).to(states[0][k].dtype) for k in states[0]}


def main() -> None:
    """Parse the arguments and make the soup."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ingredients", type=Path, nargs="+")
    ap.add_argument("--data", type=Path, required=True, help="the prepared folder the runs trained on")
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    a = ap.parse_args()
    try:
        soup(a)
    except UserError as e:  # a bad path or an existing output: one line, nothing written
        raise SystemExit(f"error: {e}") from None


def soup(a: argparse.Namespace) -> None:
    """Average the ingredients, recalibrate, write `a.output`."""
    check_output_path(a.output, a.overwrite)
    model, meta = load_weights(a.ingredients[0])
    for p in a.ingredients[1:]:
        if read_meta(p)[1].config != meta.config:
            raise SystemExit(f"error: {p} has another architecture than {a.ingredients[0]}")
    model.load_state_dict(average(a.ingredients), strict=True)
    recipe = meta.training.get("recipe", {})
    data = PreparedData.load(a.data, recipe.get("dz_range"))
    train_ids, _ = data.split(recipe.get("val_fraction", 0.2), recipe.get("seed", 0))
    with torch_threads(a.threads):
        focus_code, cal = finalize(model, data, train_ids, recipe.get("seed", 0), "cpu")
    kept = {k: v for k, v in meta.training.items() if k not in ("exported_step", "last", "minutes")}  # one run's
    training = {**kept, "soup": [str(p) for p in a.ingredients],
                "selected_by": f"uniform weight average of {len(a.ingredients)} runs"}
    meta = dataclasses.replace(meta, focus_blur_code=focus_code, calibration=cal, focus_gate=None, training=training)
    save_weights(a.output, model, meta, overwrite=a.overwrite)
    print(f"{a.output}: mean of {len(a.ingredients)}; blur code vs dz median error "
          f"{cal['mae_um']:.2f} um" if cal else f"{a.output}: mean of {len(a.ingredients)}")


if __name__ == "__main__":
    main()
