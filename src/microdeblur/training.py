"""Training loop for the three variants: sampling, β warm-up, probes, checkpoints on schedule, best-step export
(options and their checks: train_config.py; checkpoint contents: checkpoints.py)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from . import interrupts, log
from .atomic import atomic_path
from .calibration import fit_calibration, spearman
from .checkpoints import TrainState, load_checkpoint, save_checkpoint
from .dataset import LEVEL_UM, PairSampler, PreparedData
from .devices import autocast, compute_dtype, torch_threads
from .distributed import World, any_rank, world
from .engine import Deblurrer
from .errors import UserError
from .frame_probe import GATED_SCORE, FrameProbe
from .frame_probe import SCORE as FRAME_SCORE
from .interrupts import deferred
from .losses import beta_schedule, reconstruction_loss
from .metrics import psnr_batch, psnr_minmse
from .networks import DisentangledAE, blur_batched, run_batched, with_head, with_source_code
from .normalize import IntensityModel, NormalizationSpec
from .objectives import OBJECTIVES, TrainStep
from .prepare import load_index
from .provenance import software_versions
from .train_config import TrainConfig, check_config, checkpoint_path
from .weights import WeightsMeta, load_weights, optics_of_prepared, save_weights

PROBE_OVERLAP = 32  # the whole-frame probe's tile overlap (px), fixed so logged runs stay comparable
PLANES_NOTE = "dz is in planes (z step unknown)"  # calibration note of weights trained without a z step


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


def _build_model(cfg: TrainConfig, tile: int, device, dz_in_planes: bool = False) -> tuple[DisentangledAE, TrainConfig]:
    """The model to train and the config it implies (`--init` weights bring their own architecture); weights whose
    dz is in um are refused for data whose dz is in planes (`dz_in_planes`: no z step)."""
    try:
        mc = cfg.model_config(tile)
    except ValueError as e:
        raise UserError(f"{e} (data tiles are {tile} px; check --widths)") from None
    model = DisentangledAE(mc)
    if cfg.init is not None:
        src, init_meta = load_weights(cfg.init_weights, device="cpu", expect_variant=cfg.variant)
        cal = getattr(init_meta, "calibration", None) or {}
        if dz_in_planes and cal and PLANES_NOTE not in cal.get("note", ""):
            raise UserError("the prepared days have no z step, so their dz is counted in planes, but the --init "
                            "weights count dz in um: prepare the days with --z-step UM (or keep the z step in "
                            "their metadata), else the fine-tune would relabel the network's um as planes")
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
            cal["note"] = (cal.get("note", "") + "; " + PLANES_NOTE).lstrip("; ")
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
    check_config(cfg, output)
    with world(cfg.device) as w:
        if cfg.batch_size % w.size:
            raise UserError(f"--batch-size {cfg.batch_size} must be a multiple of the {w.size} training processes")
        threads = cfg.workers or max(1, (os.cpu_count() or 1) // (w.size if w.device.type == "cpu" else 1))
        with torch_threads(threads), log.at_level(log.verbosity() if w.main else 0):
            return _train(data_dir, output, cfg, w)


@dataclass(frozen=True)
class _Run:
    """The prepared data one run trains on, its split, and what the weights record of it."""

    folder: Path
    data: PreparedData
    train_ids: list[int]
    val_ids: list[int]
    index: dict
    normalization: dict  # NormalizationSpec.to_dict() of the training identities
    optics: object  # the microscope trained for (reference where unknown)

    @classmethod
    def load(cls, folder: Path, cfg: TrainConfig) -> _Run:
        data = PreparedData.load(folder, cfg.dz_range)
        if cfg.crop > data.tile or cfg.crop % 16:
            raise UserError(f"--crop must be a multiple of 16 no larger than the {data.tile}-px tiles, got {cfg.crop}")
        train_ids, val_ids = data.split(cfg.val_fraction, cfg.seed)
        log.info(f"data: {len(data.identities)} identities ({len(train_ids)} train, {len(val_ids)} val), "
                 f"{len(data.tiles)} tiles, dz in {'um' if data.z_step_um else 'planes'}")
        if not val_ids:
            log.warn("no identities are held out (--val-fraction 0, or one identity): the validation probe that picks "
                     "the exported step scores training identities")
        index = load_index(Path(folder))
        norm = NormalizationSpec(intensity=intensity_model(data, train_ids)).to_dict()
        return cls(Path(folder), data, train_ids, val_ids, index, norm, optics_of_prepared(index, data.scale))

    def meta(self, cfg: TrainConfig, model: DisentangledAE, **fields) -> WeightsMeta:
        """Weights metadata for `model` trained on this run's data."""
        return WeightsMeta(variant=cfg.variant, config=model.config, normalization=self.normalization,
                           scale=self.data.scale, optics=self.optics, **fields)


@dataclass
class _Optimiser:
    """One step's machinery: the variant's objective and options, Adam, the (DDP-wrapped) step module, the EMA."""

    objective: object
    opts: object
    opt: torch.optim.Optimizer
    step_module: torch.nn.Module
    ema: AveragedModel | None
    device: torch.device
    amp: torch.dtype | None

    @classmethod
    def build(cls, cfg: TrainConfig, model: DisentangledAE, w: World) -> _Optimiser:
        objective = OBJECTIVES[cfg.variant]
        opts = replace(cfg.step_options(), batch_size=cfg.batch_size // w.size)  # --batch-size is the global batch
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
        rec_fn = reconstruction_loss(cfg.perceptual_weights)
        if isinstance(rec_fn, torch.nn.Module):
            rec_fn = rec_fn.to(w.device)
        step_module = TrainStep(model, objective, opts, rec_fn)
        amp = compute_dtype(w.device, cfg.precision)
        if w.size > 1:
            step_module = DistributedDataParallel(step_module, device_ids=[w.device] if w.device.type == "cuda" else None,
                                                  process_group=w.group)
        return cls(objective, opts, opt, step_module, weight_average(model, cfg.ema), w.device, amp)

    def step(self, model: DisentangledAE, batch: dict, beta: float, lr: float) -> dict[str, torch.Tensor]:
        """One optimisation step on `batch` at learning rate `lr`; returns the loss terms."""
        for g in self.opt.param_groups:
            g["lr"] = lr
        with autocast(self.device, self.amp):
            parts = self.step_module(batch, beta)
        self.opt.zero_grad(set_to_none=True)
        parts["total"].backward()
        self.opt.step()
        if self.ema is not None:
            self.ema.update_parameters(model)
        return parts


@dataclass
class _Window:
    """Loss terms summed over the steps since the last probe (for the log row and the progress bar)."""

    sums: dict[str, float] = field(default_factory=dict)
    n: int = 0
    t: float = field(default_factory=time.perf_counter)

    def add(self, parts: dict[str, torch.Tensor]) -> None:
        self.n += 1
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.detach())

    def tiles_per_s(self, tiles_per_step: int) -> float:
        return self.n * tiles_per_step / max(time.perf_counter() - self.t, 1e-9)

    def summary(self, beta: float, tiles_per_step: int) -> str:
        terms = " ".join(f"{k} {v / self.n:.3f}" for k, v in self.sums.items() if k != "total")
        return f"loss {self.sums['total'] / self.n:.4f} ({terms}) β {beta:.2f} {self.tiles_per_s(tiles_per_step):.0f} tiles/s"

    def means(self) -> dict[str, float]:
        return {k: round(v / max(self.n, 1), 5) for k, v in self.sums.items()}


def _probe_row(run: _Run, cfg: TrainConfig, scored: DisentangledAE, probe: Probe, frames: FrameProbe | None,
               tie_um: float | None, device) -> dict[str, float]:
    """Validation metrics of the weights being scored: the tile probe, and with --val-frames whole frames through
    the deblur path (the in-focus code taken from the training tiles, as the export will)."""
    row = {k: round(v, 4) for k, v in probe.metrics(scored, device).items()}
    if frames is not None:
        live = run.meta(cfg, scored, focus_blur_code=probe.focus_code(scored, device))
        db = Deblurrer(scored, live, device=device, overlap=min(PROBE_OVERLAP, run.data.tile // 4))
        row |= {k: round(v, 4) for k, v in frames.metrics(db, tie_um).items()}
        scored.train()
    return row


def _train(data_dir: Path, output: Path, cfg: TrainConfig, w: World) -> Path:
    device = w.device
    run = _Run.load(data_dir, cfg)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    rng = np.random.default_rng(cfg.seed if w.size == 1 else [cfg.seed, w.rank])  # each rank samples its own pairs
    sampler = PairSampler(run.data, run.train_ids, rng)
    probe = Probe.build(run.data, run.val_ids, run.train_ids, np.random.default_rng(cfg.seed + 1))
    frames = FrameProbe.build(cfg.val_frames) if cfg.val_frames and w.main else None
    tie_um = cfg.step_options().dz_scale if cfg.traits.scalar_blur and cfg.dz_tie > 0 else None
    best_by = (GATED_SCORE if tie_um else FRAME_SCORE) if cfg.val_frames else "val_deblur_minmse"
    model, cfg = _build_model(cfg, run.data.tile, device, dz_in_planes=run.data.z_step_um is None)
    tr = _Optimiser.build(cfg, model, w)
    ckpt = checkpoint_path(output)
    scored = model if tr.ema is None else tr.ema.module  # what the probes score and the export writes
    state = (load_checkpoint(cfg.resume, model, tr.opt, rng, cfg, w, best_by, tr.ema) if cfg.resume
             else TrainState(best_by=best_by))
    steps_per_epoch = max(1, math.ceil(len(run.train_ids) / cfg.batch_size))
    total = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.epochs * steps_per_epoch, cfg.max_steps)
    budget_s = None if cfg.max_minutes is None else 60.0 * cfg.max_minutes
    log_csv = output.with_suffix(".log.csv")
    tiles_per_step = tr.objective.tiles_per_step(tr.opts)
    window = _Window()
    t_start = time.perf_counter() - state.elapsed_s
    if state.step:
        log.info(f"resuming at step {state.step} of {total}")
    state.data_hashes = note_data(state.data_hashes, data_hash(run.index))

    def evaluate_now(beta: float) -> None:
        nonlocal window
        row = {"epoch": round(state.step / steps_per_epoch, 2), "step": state.step, "minutes": round(state.elapsed_s / 60, 2),
               "lr": learning_rate(cfg, state.step), "beta": round(beta, 4)}
        row |= window.means() | {"tiles_per_s": round(window.tiles_per_s(tiles_per_step) * w.size, 1)}
        if not w.main:  # rank 0 alone probes, logs and keeps the best state
            window = _Window()
            return
        row |= _probe_row(run, cfg, scored, probe, frames, tie_um, device)
        window = _Window()  # the probe's time does not count against the training rate
        if row[state.best_by] > state.best_score:
            state.best_score, state.best_step = row[state.best_by], state.step
            state.best_model = {k: v.detach().clone() for k, v in scored.state_dict().items()}
        state.history.append(row)
        _write_log(log_csv, state.history)
        log.debug(json.dumps(row))

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
            beta = beta_schedule(state.step, cfg.beta_delay, cfg.beta_ramp)
            batch = {k: v.to(device) for k, v in tr.objective.sample(sampler, tr.opts).items()}
            window.add(tr.step(model, batch, beta, learning_rate(cfg, state.step)))
            state.step += 1
            bar.advance()
            if state.step % 10 == 0:
                bar.set(window.summary(beta, tiles_per_step))
            if state.step % cfg.eval_every == 0 or state.step == total:
                state.elapsed_s = time.perf_counter() - t_start
                evaluate_now(beta)
            if state.step % cfg.checkpoint_every == 0:
                state.elapsed_s = time.perf_counter() - t_start
                save_checkpoint(ckpt, model, tr.opt, rng, state, cfg, w, tr.ema)
    state.elapsed_s = time.perf_counter() - t_start
    if state.step < total and not (budget_s is not None and state.elapsed_s >= budget_s):  # stopped by a signal
        save_checkpoint(ckpt, model, tr.opt, rng, state, cfg, w, tr.ema)
        log.info(f"interrupted at step {state.step}; checkpoint saved, continue with --resume {ckpt}")
        raise SystemExit(stop.exit_code if stop else 130)
    if not state.history or state.history[-1]["step"] != state.step:
        evaluate_now(beta)
    save_checkpoint(ckpt, model, tr.opt, rng, state, cfg, w, tr.ema)
    if not w.main:  # the other ranks are done: rank 0 alone exports (no collective calls after this point)
        return output
    _export(output, model, state, cfg, run, w, tr.amp)
    return output


def _export(output: Path, model: DisentangledAE, state: TrainState, cfg: TrainConfig, run: _Run, w: World,
            amp: torch.dtype | None) -> None:
    """Write the best validation step's weights (the last step's without a probe score) with the in-focus code,
    the calibration and the training summary."""
    if state.best_model is not None:
        model.load_state_dict(state.best_model)
        log.info(f"exporting the best validation step {state.best_step} ({state.best_by} {state.best_score:.2f} dB)")
    focus_code, cal = finalize(model, run.data, run.train_ids, cfg.seed, w.device)
    summary = {"recipe": cfg.recipe(), "recipe_hash": _hash(cfg.recipe()), "data_hash": state.data_hashes[-1],
               "data_hashes": state.data_hashes,
               "data": str(run.folder), "identities": {"train": len(run.train_ids), "val": len(run.val_ids)},
               "steps": state.step, "exported_step": state.best_step if state.best_model is not None else state.step,
               "selected_by": state.best_by,
               "minutes": round(state.elapsed_s / 60, 2), "threads": torch.get_num_threads(), "world_size": w.size,
               "device": str(w.device), "precision": str(amp or torch.float32).replace("torch.", ""),
               "software": software_versions(), "last": state.history[-1] if state.history else {}}
    meta = run.meta(cfg, model, z_step_um=run.data.z_step_um, focus_blur_code=focus_code, calibration=cal,
                    training=summary)
    save_weights(output, model.to("cpu").to(memory_format=torch.contiguous_format).eval(), meta,
                 overwrite=cfg.overwrite)
    interrupts.mark_complete()
    log.info(f"trained {cfg.variant} for {state.step} steps in {state.elapsed_s / 60:.1f} min -> {output}")
    if cal is not None:
        log.info(f"blur code vs dz: {cal['kind']} relation, spearman {cal['spearman_rho']:.3f}, median error {cal['mae_um']:.2f}")
        if cfg.init is not None:
            _warn_narrower_calibration(cal, cfg.init_weights)


def _warn_narrower_calibration(cal: dict, init: Path | None) -> None:
    """Warn when a fine-tune's dz calibration (fitted on its own days) spans less than the --init weights' did:
    `focus` and `deblur --dz` clip beyond it."""
    from .calibration import dz_range
    from .weights import read_meta

    before = getattr(read_meta(init)[1], "calibration", None)
    if not before:
        return
    (lo, hi), (lo0, hi0) = dz_range(cal), dz_range(before)
    if lo > lo0 + 1 or hi < hi0 - 1:
        log.warn(f"the dz calibration now spans [{lo:g}, {hi:g}] um, the training days' range (the --init weights "
                 f"spanned [{lo0:g}, {hi0:g}]): focus readings and deblur --dz beyond it are clipped to its ends; "
                 "train on days that reach as far as the defocus you will image")
