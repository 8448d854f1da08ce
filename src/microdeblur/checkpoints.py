"""Resumable training checkpoints: what a run carries to continue bit for bit, written and read back."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from . import log
from .atomic import atomic_path
from .distributed import World, gather_objects
from .errors import UserError
from .train_config import TrainConfig

CKPT_VERSION = 2


@dataclass
class TrainState:
    """Everything a checkpoint must carry to continue bit for bit."""

    step: int = 0
    elapsed_s: float = 0.0
    history: list[dict] = field(default_factory=list)
    best_score: float = -math.inf
    best_step: int = 0
    best_model: dict | None = None
    best_by: str = "val_deblur_minmse"  # the probe figure the best step maximises
    data_hashes: list[str] = field(default_factory=list)  # prepared data trained on, one entry per change on --resume


ADDED_OPTIONS = ("cycle_weight", "deblur_weight", "unshuffle", "stem", "source_code", "deblur_loss", "ema", "head", "deblur_all")  # recipe keys newer than checkpoint version 2; defaults = the old behaviour
RUN_CONTROLS = {"epochs", "max_steps", "max_minutes", "eval_every"}  # may change on --resume; the rest must match


def with_defaults(recipe: dict) -> dict:
    """A stored recipe with options added since it was written set to their defaults (which reproduce the
    behaviour before they existed), so such checkpoints still resume."""
    fields = TrainConfig.__dataclass_fields__
    added = {k: fields[k].default for k in ADDED_OPTIONS if k not in recipe}
    return recipe | added


def save_checkpoint(path: Path, model, opt, rng: np.random.Generator, state: TrainState, cfg: TrainConfig,
                     w: World | None = None, ema: AveragedModel | None = None) -> None:
    """Everything needed to continue bit for bit, written atomically by rank 0 (replaces the previous checkpoint).

    Every rank's sampler state is kept; `rng` is rank 0's (the one a single-process run uses)."""
    ranks = gather_objects(w, (rng.bit_generator.state, state.step)) if w is not None else [(rng.bit_generator.state, state.step)]
    if w is not None and not w.main:
        return
    rngs = [r for r, _ in ranks]
    blob = {"version": CKPT_VERSION, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "rng": rngs[0], "rank_rngs": rngs, "rank_steps": [n for _, n in ranks], "torch_rng": torch.get_rng_state(), "step": state.step,
            "elapsed_s": state.elapsed_s, "history": state.history, "recipe": cfg.recipe(), "data_hashes": state.data_hashes,
            "best": {"score": state.best_score, "step": state.best_step, "model": state.best_model, "by": state.best_by}}
    if ema is not None:
        blob["ema"] = ema.state_dict()
    with atomic_path(path, overwrite=True) as tmp:
        torch.save(blob, tmp)


def load_checkpoint(path: Path, model, opt, rng: np.random.Generator, cfg: TrainConfig,
                     w: World | None = None, best_by: str = "val_deblur_minmse",
                     ema: AveragedModel | None = None) -> TrainState:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is the user's file problem
        # (never torch's own text: for a foreign pickle it suggests weights_only=False, which runs its code)
        raise UserError(f"{path}: not a readable microdeblur training checkpoint ({type(e).__name__})") from None
    if not isinstance(ck, dict) or ck.get("version") != CKPT_VERSION:
        raise UserError(f"{path} is not a microdeblur training checkpoint")
    if ck["recipe"]["variant"] != cfg.variant:
        raise UserError(f"checkpoint {path} is for variant {ck['recipe']['variant']}, not {cfg.variant}")
    now = cfg.recipe()
    was_run = with_defaults(ck["recipe"])
    diff = sorted(k for k in now if k not in RUN_CONTROLS and was_run.get(k) != now[k])
    if diff:
        was = ", ".join(f"--{k.replace('_', '-')} {was_run.get(k)}" for k in diff)
        raise UserError(f"checkpoint {path} was trained with {was}: resume with the run's whole command (its "
                        "--init included: an --init file brings its own architecture) plus --resume")
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    if ema is not None:
        ema.load_state_dict(ck["ema"])
    rngs = ck.get("rank_rngs") or [ck["rng"]]
    size, rank = (1, 0) if w is None else (w.size, w.rank)
    if len(rngs) == size:
        rng.bit_generator.state = rngs[rank]  # same world size: every rank continues its own stream exactly
    else:  # another world size: fresh per-rank streams, seeded from the run's seed and the step reached
        rng.bit_generator.state = np.random.default_rng([cfg.seed, rank, ck["step"], size]).bit_generator.state
        if rank == 0:
            log.info(f"resuming a {len(rngs)}-process checkpoint with {size} process(es): sampling continues on new streams")
    torch.set_rng_state(ck["torch_rng"])
    best = ck.get("best") or {}
    if best.get("by", "val_deblur_psnr") != best_by:  # another selection figure: its best is not comparable
        log.info(f"the checkpoint's best step was picked by {best.get('by', 'val_deblur_psnr')}; this run picks by "
                 f"{best_by} from step {ck['step']} on")
        best = {}
    return TrainState(step=ck["step"], elapsed_s=ck["elapsed_s"], history=ck["history"],
                      best_score=float(best.get("score", -math.inf)), best_step=int(best.get("step", 0)),
                      best_model=best.get("model"), best_by=best_by, data_hashes=list(ck.get("data_hashes", [])))

