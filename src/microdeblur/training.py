"""Training loop for the three variants: pair/group sampling, β warm-up, checkpoints, resume, export."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from . import log
from .atomic import atomic_path, check_output_path
from .calibration import fit_calibration, spearman
from .dataset import LEVEL_UM, PairSampler, PreparedData
from .devices import PRECISIONS, autocast, compute_dtype, torch_threads
from .distributed import World, any_rank, gather_objects, world
from .engine import OVERLAP, Deblurrer
from .errors import UserError
from .frame_probe import GATED_SCORE, FrameProbe
from .frame_probe import SCORE as FRAME_SCORE
from .interrupts import deferred
from .losses import DEBLUR_LOSSES, beta_schedule, reconstruction_loss
from .metrics import psnr_batch, psnr_minmse
from .networks import DisentangledAE, ModelConfig, blur_batched, run_batched, with_head, with_source_code
from .normalize import IntensityModel, NormalizationSpec
from .objectives import OBJECTIVES, StepOptions, TrainStep
from .prepare import load_index
from .provenance import software_versions
from .weights import WeightsMeta, default_weights_path, load_weights, optics_of_prepared, save_weights

CKPT_VERSION = 2


@dataclass
class TrainConfig:
    """Every option of `microdeblur train` (defaults = the shipped recipe)."""

    variant: str = "manifold-1d"
    epochs: int = 1000
    max_steps: int | None = None
    max_minutes: float | None = None
    batch_size: int = 12
    crop: int = 64
    p_focus: float = 0.5
    lr: float = 1e-3
    lr_halflife: int = 6000  # steps; lr(step) = lr * 0.5 ** (step / lr_halflife)
    seed: int = 0
    val_fraction: float = 0.2
    dz_range: float | None = 30.0
    widths: tuple[int, ...] = (32, 48, 64, 96)
    id_channels: tuple[int, ...] = (16, 24, 32, 48)
    unshuffle: int = 2  # space-to-depth factor at the input (1: the first level convolves at full resolution)
    stem: int = 0  # channels of the full-resolution stem and head around the space-to-depth (0: none)
    head: int = 0  # channels of a full-resolution decoder level after the output (0: none; with --init, added at zero)
    source_code: bool = False  # the decoder also reads each tile's own blur code (relative refocusing)
    input_skip: bool | None = None  # None: on for the manifold variants, off for the ml-vae baseline
    consistency: bool = True
    contrastive: bool = True
    cross: bool = True
    dz_weight: float | None = None  # None: 0.1 for manifold-1d, 0 otherwise
    perceptual_weights: Path | None = None
    checkpoint_every: int = 200
    eval_every: int = 250
    resume: Path | None = None
    init: Path | None = None
    val_frames: tuple[Path, ...] = ()  # simulated held-out days: export the best whole-frame probe (frame_probe.py)
    workers: int = 0
    device: str = "auto"
    precision: str = "auto"  # autocast: bfloat16 on CUDA GPUs that support it, float32 elsewhere
    overwrite: bool = False
    group_size: int = 4
    beta_delay: int | None = None  # steps of reconstruction only (thesis: 30 of 400 epochs); None: 300, 0 with --init
    beta_ramp: int | None = None  # steps of the exponential ramp to β = 1; None: 600, 0 with --init
    margin: float = 0.6
    distance_weight: float = 0.1  # λ on consistency + contrastive (objectives.Manifold)
    cycle_weight: float = 0.0  # μ on the swapped blur code read back by the frozen encoder (off: 1 diverged)
    deblur_weight: float = 0.0  # ω on the supervised D(id(x), 0) -> x_focus term (objectives.Manifold)
    deblur_loss: str = "l1"  # its distance: l1 (CARE's) or l2 (RMS: the minimiser of the MSE that PSNR scores)
    deblur_all: bool = False  # that term on every tile of a step (x1, x2, y1, y2), not on x1 only
    ema: float = 0.0  # decay of an exponential moving average of the weights that probes score and export uses (0: off)

    def __post_init__(self) -> None:
        # fine-tuning starts from disentangled weights: a reconstruction-only warm-up would unlearn the swap
        # (measured: 250 steps at beta 0 took the fine-tune's deblur gain on the probe from +0.9 dB to 0)
        if self.beta_delay is None:
            self.beta_delay = 0 if self.init is not None else 300
        if self.beta_ramp is None:
            self.beta_ramp = 0 if self.init is not None else 600

    @property
    def uses_input_skip(self) -> bool:
        """Whether the network's identity includes its input pixels (decoder output = input + correction)."""
        return self.variant != "ml-vae" if self.input_skip is None else self.input_skip

    @property
    def dz_tie(self) -> float:
        """Weight of the dz tie actually used."""
        if self.dz_weight is not None:
            return self.dz_weight
        return 0.1 if self.variant == "manifold-1d" else 0.0

    def step_options(self) -> StepOptions:
        """The settings a training step needs."""
        return StepOptions(batch_size=self.batch_size, crop=self.crop, p_focus=self.p_focus, consistency=self.consistency,
                           contrastive=self.contrastive, cross=self.cross, dz_weight=self.dz_tie,
                           dz_scale=float(self.dz_range or 30.0), margin=self.margin, group_size=self.group_size,
                           distance_weight=self.distance_weight, cycle_weight=self.cycle_weight,
                           deblur_weight=self.deblur_weight, deblur_loss=self.deblur_loss, deblur_all=self.deblur_all)

    def recipe(self) -> dict:
        """The settings that define the result (paths and run controls left out)."""
        skip = {"resume", "init", "val_frames", "workers", "device", "precision", "overwrite", "checkpoint_every",
                "perceptual_weights"}
        d = {k: v for k, v in asdict(self).items() if k not in skip}
        d["widths"], d["id_channels"], d["dz_weight"] = list(self.widths), list(self.id_channels), self.dz_tie
        d["input_skip"] = self.uses_input_skip
        return d


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


def _finite(name: str, value: float, low: float | None = None, high: float | None = None, *, open_low: bool = False) -> None:
    """UserError unless value is a finite number inside [low, high] (or (low, high] with open_low)."""
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if open_low else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        lo = "" if low is None else (f"> {low:g}" if open_low else f">= {low:g}")
        hi = "" if high is None else f"<= {high:g}"
        need = " and ".join(p for p in (lo, hi) if p) or "finite"
        raise UserError(f"{name} must be a finite number {need}, got {value}")


def _inputs(cfg: TrainConfig) -> list[Path]:
    """The weights and checkpoint files a run reads (`--init shipped`: the packaged weights)."""
    init = cfg.init if cfg.init is None or str(cfg.init) != "shipped" else default_weights_path()
    return [p for p in (init, cfg.resume) if p is not None]


def _check_config(cfg: TrainConfig, output: Path) -> None:
    if cfg.variant not in OBJECTIVES:
        raise UserError(f"unknown --variant {cfg.variant!r}: use manifold-1d, manifold or ml-vae")
    if output.suffix != ".safetensors":
        raise UserError(f"output {output} must end in .safetensors")
    if output.exists() and output.is_dir():
        raise UserError(f"output {output} is a folder")
    if output.exists() and not cfg.overwrite:
        raise UserError(f"output {output} exists (use --overwrite to replace it)")
    ckpt, log_csv = checkpoint_path(output), output.with_suffix(".log.csv")
    for path in (output, log_csv):  # what the run writes may not be the weights or checkpoint it reads
        check_output_path(path, overwrite=True, inputs=_inputs(cfg))
    if cfg.resume is None and not cfg.overwrite:
        if ckpt.exists():
            raise UserError(f"{ckpt} holds an earlier run: continue it with --resume {ckpt}, or start again with "
                            "--overwrite")
        if log_csv.exists():
            raise UserError(f"{log_csv} holds an earlier run's log: start again with --overwrite, or choose another "
                            "output")
    if output.parent.exists() and not output.parent.is_dir():
        raise UserError(f"cannot write {output}: {output.parent} is not a folder")
    for name, value in (("--epochs", cfg.epochs), ("--batch-size", cfg.batch_size), ("--checkpoint-every", cfg.checkpoint_every),
                        ("--eval-every", cfg.eval_every), ("--group-size", cfg.group_size), ("--crop", cfg.crop),
                        ("--lr-halflife", cfg.lr_halflife)):
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    if not cfg.widths or min(cfg.widths) < 1 or len(cfg.widths) > 6:
        raise UserError(f"--widths needs 1 to 6 positive numbers, got {','.join(map(str, cfg.widths)) or 'none'}")
    if len(cfg.id_channels) != len(cfg.widths) or min(cfg.id_channels) < 1:
        raise UserError(f"--id-channels needs one positive number per width ({len(cfg.widths)}), got {','.join(map(str, cfg.id_channels))}")
    if cfg.workers < 0:
        raise UserError(f"--workers must be 0 (all cores) or more, got {cfg.workers}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise UserError(f"--max-steps must be at least 1, got {cfg.max_steps}")
    if cfg.max_minutes is not None:
        _finite("--max-minutes", cfg.max_minutes, 0, open_low=True)
    if cfg.crop % 16:
        raise UserError(f"--crop must be a multiple of 16 (the network's size step), got {cfg.crop}")
    _finite("--lr", cfg.lr, 0, 1, open_low=True)
    _finite("--p-focus", cfg.p_focus, 0, 1)
    _finite("--margin", cfg.margin, 0, open_low=True)
    _finite("--distance-weight", cfg.distance_weight, 0)
    _finite("--cycle-weight", cfg.cycle_weight, 0)
    _finite("--deblur-weight", cfg.deblur_weight, 0)
    if cfg.deblur_loss not in DEBLUR_LOSSES:
        raise UserError(f"unknown --deblur-loss {cfg.deblur_loss!r}: use {', '.join(DEBLUR_LOSSES)}")
    if cfg.unshuffle not in (1, 2, 4):
        raise UserError(f"--unshuffle must be 1, 2 or 4, got {cfg.unshuffle}")
    if cfg.stem < 0 or (cfg.stem and not cfg.uses_input_skip):
        raise UserError(f"--stem must be 0 or positive and needs the input skip (not ml-vae, not --no-input-skip), got {cfg.stem}")
    if cfg.head < 0 or (cfg.head and (not cfg.uses_input_skip or cfg.stem)):
        raise UserError(f"--head must be 0 or positive and needs the input skip and no --stem, got {cfg.head}")
    if cfg.source_code and cfg.variant == "ml-vae":
        raise UserError("--source-code needs a manifold variant (ml-vae averages and samples its identity)")
    if cfg.deblur_weight and (cfg.variant != "manifold-1d" or cfg.dz_tie <= 0):
        raise UserError("--deblur-weight needs manifold-1d with a dz tie (--dz-weight > 0): the term decodes with "
                        "the code the tie gives an in-focus plane")
    if cfg.deblur_all and not cfg.deblur_weight:
        raise UserError("--deblur-all needs --deblur-weight > 0")
    if cfg.precision not in PRECISIONS:
        raise UserError(f"unknown --precision {cfg.precision!r}: use {', '.join(PRECISIONS)}")
    _finite("--val-fraction", cfg.val_fraction, 0, 0.9)
    _finite("--ema", cfg.ema, 0)
    if cfg.ema >= 1:
        raise UserError(f"--ema is a decay below 1 (0 turns it off; 0.999 averages about the last 1,000 steps), got {cfg.ema}")
    if cfg.dz_range is not None:
        _finite("--dz-range", cfg.dz_range, 0, open_low=True)
    if cfg.dz_weight is not None:
        _finite("--dz-weight", cfg.dz_weight, 0)
    if cfg.beta_delay < 0 or cfg.beta_ramp < 0:
        raise UserError(f"--beta-delay and --beta-ramp are step counts >= 0, got {cfg.beta_delay} and {cfg.beta_ramp}")
    if cfg.dz_weight and cfg.variant != "manifold-1d":
        raise UserError("--dz-weight only applies to --variant manifold-1d")


def checkpoint_path(output: Path) -> Path:
    """Where the checkpoint of a run writing `output` lives."""
    return output.with_suffix(".ckpt")


ADDED_OPTIONS = ("cycle_weight", "deblur_weight", "unshuffle", "stem", "source_code", "deblur_loss", "ema", "head", "deblur_all")  # recipe keys newer than checkpoint version 2; defaults = the old behaviour
RUN_CONTROLS = {"epochs", "max_steps", "max_minutes", "eval_every"}  # may change on --resume; the rest must match


def _with_defaults(recipe: dict) -> dict:
    """A stored recipe with options added since it was written set to their defaults (which reproduce the
    behaviour before they existed), so such checkpoints still resume."""
    fields = TrainConfig.__dataclass_fields__
    added = {k: fields[k].default for k in ADDED_OPTIONS if k not in recipe}
    return recipe | added


def _save_checkpoint(path: Path, model, opt, rng: np.random.Generator, state: TrainState, cfg: TrainConfig,
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


def _load_checkpoint(path: Path, model, opt, rng: np.random.Generator, cfg: TrainConfig,
                     w: World | None = None, best_by: str = "val_deblur_minmse",
                     ema: AveragedModel | None = None) -> TrainState:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is the user's file problem
        reason = (str(e).strip().splitlines() or [""])[0]
        raise UserError(f"{path}: not a readable training checkpoint ({type(e).__name__}: {reason})") from None
    if not isinstance(ck, dict) or ck.get("version") != CKPT_VERSION:
        raise UserError(f"{path} is not a microdeblur training checkpoint")
    if ck["recipe"]["variant"] != cfg.variant:
        raise UserError(f"checkpoint {path} is for variant {ck['recipe']['variant']}, not {cfg.variant}")
    now = cfg.recipe()
    was_run = _with_defaults(ck["recipe"])
    diff = sorted(k for k in now if k not in RUN_CONTROLS and was_run.get(k) != now[k])
    if diff:
        was = ", ".join(f"{k}={was_run.get(k)}" for k in diff)
        raise UserError(f"checkpoint {path} was trained with {was}: resume with the same options")
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


@dataclass
class Probe:
    """Fixed validation tiles: defocused tiles (Δz != 0), their in-focus targets and their dz (per epoch metrics)."""

    blurry: np.ndarray
    target: np.ndarray
    dz: np.ndarray
    focus_ref: np.ndarray  # in-focus tiles of training identities (source of the focus blur code)

    @classmethod
    def build(cls, data: PreparedData, val_ids: list[int], train_ids: list[int], rng: np.random.Generator,
              n_ids: int = 24, dz_max: float = 15.0) -> Probe:
        val = list(rng.permutation(val_ids or train_ids)[:n_ids])
        b, t, d = [], [], []
        for i in val:
            off = data.dz[i] != 0  # the in-focus plane itself would score the PSNR cap
            sel = np.flatnonzero(off & (np.abs(data.dz[i]) <= dz_max))
            sel = sel if len(sel) else np.flatnonzero(off)
            sel = sel[np.linspace(0, len(sel) - 1, min(6, len(sel))).astype(int)]
            b.append(data.stacks[i][sel])
            t.append(np.repeat(data.stacks[i][data.focus_index[i]][None], len(sel), 0))
            d.append(data.dz[i][sel])
        ref = [data.stacks[i][data.focus_index[i]] for i in rng.permutation(train_ids)[:64]]
        return cls(np.concatenate(b), np.concatenate(t), np.concatenate(d), np.stack(ref))

    def focus_code(self, model, device) -> np.ndarray:
        """The in-focus blur code now: mean code of the probe's in-focus training tiles."""
        model.eval()
        return blur_batched(model, self.focus_ref, device).mean(0)

    def metrics(self, model, device) -> dict:
        """Reconstruction and deblurring PSNR (plain and min-MSE fitted) on the probe; blur-code order for 1-D codes."""
        focus = torch.from_numpy(self.focus_code(model, device)[None])

        def one_pass(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            c = model.encode(x[:, None])  # encode once: own reconstruction and in-focus decode share it
            pair = model.decode(torch.cat([c.identity, c.identity]), torch.cat([c.blur, focus.to(x.device).expand(len(x), -1)]))
            return pair[: len(x), 0], pair[len(x):, 0], c.blur

        rec, deb, blur = run_batched(one_pass, self.blurry, device=device)
        model.train()
        blurry = self.blurry.astype(np.float32)
        target = self.target.astype(np.float32)
        out = {"val_rec_psnr": float(psnr_batch(rec, blurry).mean()), "val_deblur_psnr": float(psnr_batch(deb, target).mean()),
               "val_input_psnr": float(psnr_batch(blurry, target).mean()),
               "val_deblur_minmse": float(np.mean([psnr_minmse(d, t) for d, t in zip(deb, target)])),
               "val_input_minmse": float(np.mean([psnr_minmse(x, t) for x, t in zip(blurry, target)]))}
        if blur.shape[1] == 1:
            out["code_dz_rho"] = spearman(blur[:, 0], self.dz)
            out["code_absdz_rho"] = spearman(blur[:, 0], np.abs(self.dz))
        return out


def _build_model(cfg: TrainConfig, tile: int, device) -> tuple[DisentangledAE, TrainConfig]:
    """The model to train and the config it implies (`--init` weights bring their own architecture)."""
    try:
        mc = ModelConfig(variant=cfg.variant, tile=tile, widths=cfg.widths, id_channels=cfg.id_channels,
                         input_skip=cfg.uses_input_skip, unshuffle=cfg.unshuffle, stem=cfg.stem,
                         source_code=cfg.source_code, head=cfg.head)
    except ValueError as e:
        raise UserError(f"{e} (data tiles are {tile} px; check --widths)") from None
    model = DisentangledAE(mc)
    if cfg.init is not None:
        init = None if str(cfg.init) == "shipped" else cfg.init  # None: the weights shipped in the package
        src, init_meta = load_weights(init, device="cpu", expect_variant=cfg.variant)
        if getattr(init_meta, "focus_gate", None):
            log.info("the --init weights carry a fitted focus gate; the trained weights will not (it belongs to the "
                     "old network): fit one on held-out days with benchmarks/fit_focus_gate.py, or deblur with "
                     "--focus-gate for the default 1-3 um ramp")
        if src.config.tile != tile:
            raise UserError(f"--init weights use {src.config.tile}-px tiles but the data has {tile}-px tiles (prepare --tile)")
        if cfg.source_code and not src.config.source_code:  # the decoder starts as the same function
            src = with_source_code(src)
        if cfg.head and not src.config.head:  # likewise: the head's output starts at zero
            src = with_head(src, cfg.head)
        if src.config.to_dict() != mc.to_dict():
            log.info(f"--init: using the architecture of {cfg.init} ({src.config.to_dict()})")
            cfg = replace(cfg, widths=src.config.widths, id_channels=src.config.id_channels,
                          input_skip=src.config.input_skip, unshuffle=src.config.unshuffle, stem=src.config.stem,
                          source_code=src.config.source_code, head=src.config.head)
        model = src
    return model.to(device).to(memory_format=torch.channels_last).train(), cfg


def _write_log(path: Path, history: list[dict]) -> None:
    if not history:
        return
    keys = list(dict.fromkeys(k for row in history for k in row))
    with atomic_path(path, overwrite=True) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)


def weight_average(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """PyTorch's exponential moving average of the weights and buffers (None when decay is 0)."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True) if decay else None


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Exponential decay counted in steps (extending a run keeps the planned steps' rates)."""
    return cfg.lr * 0.5 ** (step / cfg.lr_halflife)


def finalize(model, data: PreparedData, train_ids: list[int], seed: int, device) -> tuple[np.ndarray, dict | None]:
    """In-focus blur code (mean over in-focus training tiles, also with the deblurring term, which trains at
    code 0: the mean scored 0.15 dB better on whole frames, model card) and, for 1-D codes, the dz calibration
    (with its measured sign reliability, `calibration.sign_reliability`) on the reference microscope's days
    where there are enough (PreparedData.reference_identities)."""
    from . import calibration

    model.eval()
    focus_tiles = np.stack([data.stacks[i][data.focus_index[i]] for i in train_ids])
    fb = blur_batched(model, focus_tiles, device)
    cal = None
    if model.config.blur_dim == 1:
        # fitted where the unit is exact: the days of the reference microscope when the folder has enough of them
        # (fitted over all days of a randomised mix it read the reference example's +10 / -10 um as +14.9 / -6.0)
        pick = np.random.default_rng(seed).permutation(data.reference_identities(train_ids))[:300]
        idx = data.tile_indices(sorted(pick.tolist()))
        codes = blur_batched(model, data.tiles[idx], device)
        cal = fit_calibration(codes[:, 0], data.dz_all[idx])
        # how often the sign of the calibrated dz is right, per |dz| (measured on these training tiles: optimistic)
        cal["sign_reliability"] = calibration.sign_reliability(calibration.code_to_dz(cal, codes[:, 0]),
                                                               data.dz_all[idx])
        if data.z_step_um is None:
            cal["note"] = (cal.get("note", "") + "; dz is in planes (z step unknown)").lstrip("; ")
    return fb.mean(0).astype(np.float32), cal


def intensity_model(data: PreparedData, identities: list[int]) -> IntensityModel:
    """Per dz: median over days of each frame's raw lo/median and hi/median (to revert outputs at that dz).

    A frame's median is estimated from its tiles (subsampled); bright-field contrast, and with it the
    percentile range relative to the background, is lowest at focus."""
    idx = data.tile_indices(sorted(identities))
    day_of = np.array([data.days[i] for i in data.owner[idx]])
    dz = np.round(data.dz_all[idx] / LEVEL_UM) * LEVEL_UM
    rows: dict[float, list[tuple[float, float]]] = {}
    for day in np.unique(day_of):
        for level in np.unique(dz[day_of == day]):
            sel = idx[(day_of == day) & (dz == level)]
            lo, hi = float(data.lo_all[sel[0]]), float(data.hi_all[sel[0]])
            med = lo + float(np.median(data.tiles[sel][:, ::4, ::4].astype(np.float32))) * (hi - lo)
            if med > 0:
                rows.setdefault(float(level), []).append((lo / med, hi / med))
    return IntensityModel.fit(rows)


def note_data(seen: list[str], now: str) -> list[str]:
    """The data hashes a run has trained on, `now` appended where it differs from the last (logged: regenerated
    data differ in their low bits when numpy or scipy change)."""
    if seen and seen[-1] == now:
        return seen
    if seen:
        log.info(f"the prepared data differ from those the checkpoint was trained on (hash {seen[-1]}, now {now}): "
                 "the run continues on these; the export records both")
    return [*seen, now]


def data_hash(index: dict) -> str:
    """Hash of a prepared index without its absolute source paths: the same data hashes alike wherever it lies."""
    days = {name: {k: v for k, v in day.items() if k != "source"} for name, day in index.get("days", {}).items()}
    return _hash(index | {"days": days})


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train(data_dir: Path, output: Path, cfg: TrainConfig) -> Path:
    """Train on a prepared folder and write safetensors weights (plus .ckpt and .log.csv beside them).

    The exported weights are those of the best validation probe (min-MSE deblurring PSNR), not the last step."""
    output = Path(output)
    _check_config(cfg, output)
    with world(cfg.device) as w:
        if cfg.batch_size % w.size:
            raise UserError(f"--batch-size {cfg.batch_size} must be a multiple of the {w.size} training processes")
        threads = cfg.workers or max(1, (os.cpu_count() or 1) // (w.size if w.device.type == "cpu" else 1))
        with torch_threads(threads), log.at_level(log.verbosity() if w.main else 0):
            return _train(data_dir, output, cfg, w)


def _train(data_dir: Path, output: Path, cfg: TrainConfig, w: World) -> Path:
    device = w.device
    data = PreparedData.load(data_dir, cfg.dz_range)
    if cfg.crop > data.tile or cfg.crop % 16:
        raise UserError(f"--crop must be a multiple of 16 no larger than the {data.tile}-px tiles, got {cfg.crop}")
    train_ids, val_ids = data.split(cfg.val_fraction, cfg.seed)
    log.info(f"data: {len(data.identities)} identities ({len(train_ids)} train, {len(val_ids)} val), "
             f"{len(data.tiles)} tiles, dz in {'um' if data.z_step_um else 'planes'}")
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    rng = np.random.default_rng(cfg.seed if w.size == 1 else [cfg.seed, w.rank])  # each rank samples its own pairs
    sampler = PairSampler(data, train_ids, rng)
    if not val_ids:
        log.warn("no identities are held out (--val-fraction 0, or one identity): the validation probe that picks "
                 "the exported step scores training identities")
    probe = Probe.build(data, val_ids, train_ids, np.random.default_rng(cfg.seed + 1))
    frames = FrameProbe.build(cfg.val_frames) if cfg.val_frames and w.main else None
    tie_um = cfg.step_options().dz_scale if cfg.variant == "manifold-1d" and cfg.dz_tie > 0 else None
    best_by = (GATED_SCORE if tie_um else FRAME_SCORE) if cfg.val_frames else "val_deblur_minmse"
    index = load_index(Path(data_dir))
    norm = NormalizationSpec(intensity=intensity_model(data, train_ids)).to_dict()
    optics = optics_of_prepared(index, data.scale)  # the microscope trained for, reference where unknown
    model, cfg = _build_model(cfg, data.tile, device)
    objective = OBJECTIVES[cfg.variant]
    opts = replace(cfg.step_options(), batch_size=cfg.batch_size // w.size)  # --batch-size is the global batch
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    rec_fn = reconstruction_loss(cfg.perceptual_weights)
    if isinstance(rec_fn, torch.nn.Module):
        rec_fn = rec_fn.to(device)
    step_module = TrainStep(model, objective, opts, rec_fn)
    amp = compute_dtype(device, cfg.precision)
    if w.size > 1:
        step_module = DistributedDataParallel(step_module, device_ids=[device] if device.type == "cuda" else None,
                                              process_group=w.group)
    ckpt = checkpoint_path(output)
    ema = weight_average(model, cfg.ema)
    scored = model if ema is None else ema.module  # what the probes score and the export writes
    state = (_load_checkpoint(cfg.resume, model, opt, rng, cfg, w, best_by, ema) if cfg.resume
             else TrainState(best_by=best_by))
    steps_per_epoch = max(1, math.ceil(len(train_ids) / cfg.batch_size))
    total = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.epochs * steps_per_epoch, cfg.max_steps)
    budget_s = None if cfg.max_minutes is None else 60.0 * cfg.max_minutes
    log_csv = output.with_suffix(".log.csv")
    run = {"sums": {}, "n": 0, "t": time.perf_counter()}
    t_start = time.perf_counter() - state.elapsed_s
    if state.step:
        log.info(f"resuming at step {state.step} of {total}")
    state.data_hashes = note_data(state.data_hashes, data_hash(index))

    def evaluate_now(beta: float) -> None:
        n = max(run["n"], 1)
        row = {"epoch": round(state.step / steps_per_epoch, 2), "step": state.step, "minutes": round(state.elapsed_s / 60, 2),
               "lr": learning_rate(cfg, state.step), "beta": round(beta, 4)}
        row |= {k: round(v / n, 5) for k, v in run["sums"].items()}
        row["tiles_per_s"] = round(run["n"] * objective.tiles_per_step(opts) * w.size / max(time.perf_counter() - run["t"], 1e-9), 1)
        if not w.main:  # rank 0 alone probes, logs and keeps the best state
            run.update(sums={}, n=0, t=time.perf_counter())
            return
        row |= {k: round(v, 4) for k, v in probe.metrics(scored, device).items()}
        if frames is not None:
            live = WeightsMeta(variant=cfg.variant, config=scored.config, normalization=norm, scale=data.scale,
                               focus_blur_code=probe.focus_code(scored, device), optics=optics)
            row |= {k: round(v, 4) for k, v in frames.metrics(Deblurrer(scored, live, device=device, overlap=min(OVERLAP, data.tile // 4)), tie_um).items()}
            scored.train()
        if row[state.best_by] > state.best_score:
            state.best_score, state.best_step = row[state.best_by], state.step
            state.best_model = {k: v.detach().clone() for k, v in scored.state_dict().items()}
        state.history.append(row)
        _write_log(log_csv, state.history)
        log.debug(json.dumps(row))
        run.update(sums={}, n=0, t=time.perf_counter())

    beta = beta_schedule(state.step, cfg.beta_delay, cfg.beta_ramp)
    with deferred() as stop, log.progress(f"train {cfg.variant}", total) as bar:
        bar.advance(state.step)
        while state.step < total:
            state.elapsed_s = time.perf_counter() - t_start
            over_budget = budget_s is not None and state.elapsed_s >= budget_s
            if any_rank(w, bool(stop) or over_budget):  # every rank stops after the same step
                if over_budget:
                    log.info(f"time budget of {cfg.max_minutes} min reached at step {state.step}")
                break
            for g in opt.param_groups:
                g["lr"] = learning_rate(cfg, state.step)
            beta = beta_schedule(state.step, cfg.beta_delay, cfg.beta_ramp)
            batch = {k: v.to(device) for k, v in objective.sample(sampler, opts).items()}
            with autocast(device, amp):
                parts = step_module(batch, beta)
            opt.zero_grad(set_to_none=True)
            parts["total"].backward()
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
            state.step += 1
            run["n"] += 1
            for k, v in parts.items():
                run["sums"][k] = run["sums"].get(k, 0.0) + float(v.detach())
            bar.advance()
            if state.step % 10 == 0:
                rate = run["n"] * objective.tiles_per_step(opts) / max(time.perf_counter() - run["t"], 1e-9)
                terms = " ".join(f"{k} {v / run['n']:.3f}" for k, v in run["sums"].items() if k != "total")
                bar.set(f"loss {run['sums']['total'] / run['n']:.4f} ({terms}) β {beta:.2f} {rate:.0f} tiles/s")
            if state.step % cfg.eval_every == 0 or state.step == total:
                state.elapsed_s = time.perf_counter() - t_start
                evaluate_now(beta)
            if state.step % cfg.checkpoint_every == 0:
                state.elapsed_s = time.perf_counter() - t_start
                _save_checkpoint(ckpt, model, opt, rng, state, cfg, w, ema)
    state.elapsed_s = time.perf_counter() - t_start
    if state.step < total and not (budget_s is not None and state.elapsed_s >= budget_s):  # stopped by a signal
        _save_checkpoint(ckpt, model, opt, rng, state, cfg, w, ema)
        log.info(f"interrupted at step {state.step}; checkpoint saved, continue with --resume {ckpt}")
        raise SystemExit(stop.exit_code if stop else 130)
    if not state.history or state.history[-1]["step"] != state.step:
        evaluate_now(beta)
    _save_checkpoint(ckpt, model, opt, rng, state, cfg, w, ema)
    if not w.main:  # the other ranks are done: rank 0 alone exports (no collective calls after this point)
        return output
    if state.best_model is not None:
        model.load_state_dict(state.best_model)
        log.info(f"exporting the best validation step {state.best_step} ({state.best_by} {state.best_score:.2f} dB)")
    focus_code, cal = finalize(model, data, train_ids, cfg.seed, device)
    summary = {"recipe": cfg.recipe(), "recipe_hash": _hash(cfg.recipe()), "data_hash": state.data_hashes[-1],
               "data_hashes": state.data_hashes,
               "data": str(data_dir), "identities": {"train": len(train_ids), "val": len(val_ids)},
               "steps": state.step, "exported_step": state.best_step if state.best_model is not None else state.step,
               "selected_by": state.best_by,
               "minutes": round(state.elapsed_s / 60, 2), "threads": torch.get_num_threads(), "world_size": w.size,
               "device": str(device), "precision": str(amp or torch.float32).replace("torch.", ""),
               "software": software_versions(), "last": state.history[-1] if state.history else {}}
    meta = WeightsMeta(variant=cfg.variant, config=model.config, normalization=norm, scale=data.scale,
                       z_step_um=data.z_step_um, focus_blur_code=focus_code, calibration=cal, training=summary,
                       optics=optics)
    save_weights(output, model.to("cpu").to(memory_format=torch.contiguous_format).eval(), meta,
                 overwrite=cfg.overwrite)
    log.info(f"trained {cfg.variant} for {state.step} steps in {state.elapsed_s / 60:.1f} min -> {output}")
    if cal is not None:
        log.info(f"blur code vs dz: {cal['kind']} relation, spearman {cal['spearman_rho']:.3f}, median error {cal['mae_um']:.2f}")
    return output
