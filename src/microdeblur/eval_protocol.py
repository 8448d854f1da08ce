"""What `evaluate` measures on and how: the evaluated tiles (`EvalSet`), the models, the protocol's constants
and the metadata that says how the numbers were obtained (docs/evaluation.md has the protocol).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import log
from .baselines import UNSHARP_AMOUNT, UNSHARP_RADIUS, WIENER_BALANCE
from .dataset import PreparedData
from .errors import UserError
from .frame_eval import RL, UNET, UNSHARP, WIENER
from .metrics import BIN_EDGES, DATA_RANGE, NEAR_FOCUS, PSNR_CAP_DB, bin_labels
from .microscope import Optics
from .networks import count_parameters
from .weights import load_weights

DZ_RANGE = 30.0  # evaluate planes with |Δz| <= this (µm, or planes when the z step is unknown), as `train`
SEED = 0
QUICK_IDENTITIES = 8
SPLITS = ("val", "train", "all")  # PreparedData.split() halves with train's defaults, or every identity
QUICK_PLANES = 7
QUICK_CLASSIFIER_EPOCHS = 30
QUICK_RL_ITERATIONS = 5
N_EXAMPLES = 4


@dataclass
class EvalSet:
    """Evaluated tiles (identity-major, Δz ascending) and the deblurring protocol's index arrays."""

    tiles: np.ndarray  # [N,T,T] normalised planes
    label: np.ndarray  # [N] identity number (index into names)
    dz: np.ndarray  # [N]
    focus: np.ndarray  # [K] tile index of each identity's in-focus plane
    names: list[str]
    days: list[str]  # per identity
    blurry: np.ndarray  # tile indices with Δz != 0 (the tiles to deblur)
    reference: np.ndarray  # per blurry tile: in-focus tile index of a different identity
    examples: np.ndarray  # positions in `blurry` shown in the example figure

    @property
    def target(self) -> np.ndarray:
        """Per blurry tile: index of the in-focus tile of the same identity."""
        return self.focus[self.label[self.blurry]]


@dataclass
class LoadedModel:
    """A disentangling autoencoder to evaluate, with its weights metadata."""

    name: str
    source: str
    model: nn.Module
    meta: Any


def working_pixel_sizes(index: dict[str, Any], days: Sequence[str], scale: float) -> tuple[dict[str, float], list[str]]:
    """Working pixel size (µm) per day from the prepared index; days without one get the reference optics'
    pixel_um / scale and are listed second."""
    given = {day: index["days"].get(day, {}).get("pixel_size_um") for day in sorted(set(days))}
    assumed = [day for day, px in given.items() if not px]
    return {day: px or Optics().pixel_um / scale for day, px in given.items()}, assumed


def plane_subset(dz: np.ndarray, focus: int, quick: bool) -> np.ndarray:
    """Plane indices to evaluate in Δz order: all, or (quick) about QUICK_PLANES spread over Δz plus focus."""
    order = np.argsort(dz, kind="stable")
    if not quick:
        return order
    picked = set(order[spread(len(order), QUICK_PLANES)].tolist()) | {focus}
    return np.asarray(sorted(picked, key=lambda i: dz[i]))


def spread(n: int, k: int) -> np.ndarray:
    """k indices spread evenly over range(n) (all of them when n <= k)."""
    return np.arange(n) if n <= k else np.unique(np.linspace(0, n - 1, k).round().astype(int))


def build_eval_set(data: PreparedData, split: str, quick: bool, identities: int | None = None) -> EvalSet:
    """Gather the split's tiles (at most `identities` of them, spread over the split; fewer with quick);
    pair every blurry tile with another identity's in-focus tile (seeded)."""
    train, val = data.split()
    ids = sorted({"val": val, "train": train}.get(split, range(len(data.identities))))
    limit = min(identities or len(ids), QUICK_IDENTITIES if quick else len(ids))
    ids = [ids[i] for i in spread(len(ids), limit)]
    if len(ids) < 2:
        raise UserError(f"the {split} split has {len(ids)} identities; evaluation needs at least 2 "
                        "(use --split all or prepare more data)")
    planes = [plane_subset(data.dz[i], data.focus_index[i], quick) for i in ids]
    tiles = np.concatenate([data.stacks[i][p] for i, p in zip(ids, planes)]).astype(np.float32)
    dz = np.concatenate([data.dz[i][p] for i, p in zip(ids, planes)]).astype(np.float32)
    label = np.repeat(np.arange(len(ids)), [len(p) for p in planes])
    starts = np.cumsum([0] + [len(p) for p in planes[:-1]])
    focus = starts + np.asarray([int(np.flatnonzero(p == data.focus_index[i])[0]) for i, p in zip(ids, planes)])
    blurry = np.flatnonzero(dz != 0)
    if len(blurry) == 0:
        raise UserError("the evaluated identities have no defocused planes (Δz != 0)")
    other = (label[blurry] + np.random.default_rng(SEED).integers(1, len(ids), size=len(blurry))) % len(ids)
    return EvalSet(tiles, label, dz, focus, [data.identities[i] for i in ids], [data.days[i] for i in ids], blurry,
                   focus[other], example_positions(tiles, label, dz, focus, blurry))


def example_positions(tiles: np.ndarray, label: np.ndarray, dz: np.ndarray, focus: np.ndarray,
                      blurry: np.ndarray) -> np.ndarray:
    """Positions in `blurry` of N_EXAMPLES tiles: most textured identities, |Δz| spread over the range."""
    rich = np.argsort(-tiles[focus].std(axis=(1, 2)), kind="stable")
    rich = rich[np.isin(rich, label[blurry])]
    abs_dz = np.abs(dz[blurry])
    wanted = np.linspace(abs_dz.min(), abs_dz.max(), N_EXAMPLES)
    picks = []
    for j, want in enumerate(wanted):
        pos = np.flatnonzero(label[blurry] == rich[j % len(rich)])
        picks.append(pos[np.argmin(np.abs(abs_dz[pos] - want))])
    return np.asarray(picks)


def load_models(paths: Sequence[Path], device: torch.device, data: PreparedData) -> list[LoadedModel]:
    """Load each weights file (the shipped default when none), with unique display names."""
    models, seen = [], set()
    for path in list(paths) or [None]:
        model, meta = load_weights(path, device)
        if model.config.tile != data.tile:
            raise UserError(f"weights {path or 'shipped'} use {model.config.tile}-px tiles but the data has {data.tile}-px tiles")
        if abs(meta.scale - data.scale) > 1e-6:
            log.warn(f"weights {path or 'shipped'} were trained at scale {meta.scale}, the data is at {data.scale}")
        recipe = (meta.training or {}).get("recipe", {})
        if (recipe.get("val_fraction", 0.2), recipe.get("seed", 0)) != (0.2, 0):
            log.warn(f"weights {path or 'shipped'} were trained with another identity split; "
                     "--split val may include their training identities")
        name = base = Path(path).stem if path is not None else f"shipped {meta.variant}"
        n = 2
        while name in seen:
            name, n = f"{base}-{n}", n + 1
        seen.add(name)
        models.append(LoadedModel(name, str(path) if path is not None else "shipped", model, meta))
    return models


def stored_focus_code(m: LoadedModel) -> np.ndarray | None:
    """The weights' in-focus blur code (what `deblur` uses), or None when the weights hold none."""
    code = np.asarray(m.meta.focus_blur_code, np.float32).reshape(-1)
    return code if code.size == m.model.config.blur_dim else None


# ----------------------------------------------------------------------------- metadata


def protocol(data: Path, prepared: PreparedData, es: EvalSet, split: str, quick: bool, unit: str,
             pixel_um: dict[str, float], assumed: list[str], rl_iterations: int) -> dict[str, Any]:
    """How the numbers were obtained (stored in metrics.json and shown in the report)."""
    return {"data": str(data), "split": split, "quick": quick, "identities": es.names,
            "n_identities": len(es.names), "n_tiles": len(es.tiles), "n_blurry": len(es.blurry),
            "tile": prepared.tile, "scale": prepared.scale, "z_step_um": prepared.z_step_um, "dz_unit": unit,
            "dz_range": DZ_RANGE, "bins": bin_labels(), "bin_edges": list(BIN_EDGES), "near_focus": NEAR_FOCUS,
            "data_range": DATA_RANGE, "psnr_cap_db": PSNR_CAP_DB, "seed": SEED, "pixel_um": pixel_um,
            "pixel_um_assumed": assumed}


def model_info(m: LoadedModel) -> dict[str, Any]:
    """Weights source, variant and size of an evaluated model."""
    return {"weights": m.source, "variant": m.model.config.variant, "blur_dim": m.model.config.blur_dim,
            "parameters": count_parameters(m.model), "has_focus_blur_code": stored_focus_code(m) is not None}


def baseline_info(rl_iterations: int, unit: str, unet: Path | None, unet_model: nn.Module | None,
                  unet_info: dict[str, Any] | None) -> dict[str, Any]:
    """Settings of each baseline."""
    info: dict[str, Any] = {UNSHARP: {"radius_px": UNSHARP_RADIUS, "amount": UNSHARP_AMOUNT}}
    if unit == "um":
        psf = "microscope.defocus_psf, reference objective, pixel size protocol.pixel_um"
        info[RL] = {"iterations": rl_iterations, "psf": psf}
        info[WIENER] = {"balance": WIENER_BALANCE, "psf": psf}
    if unet_model is not None:
        info[UNET] = {"weights": str(unet), "parameters": count_parameters(unet_model), "training": unet_info}
    return info
