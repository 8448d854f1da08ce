"""What a training run is asked for: every option of `microdeblur train`, its defaults and its checks."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .atomic import check_output_path
from .devices import PRECISIONS
from .errors import UserError, require_number
from .losses import DEBLUR_LOSSES
from .model_config import VARIANTS, ModelConfig, VariantTraits
from .objectives import StepOptions
from .weights import default_weights_path


@dataclass
class TrainConfig:
    """Every option of `microdeblur train` (from-scratch defaults; the shipped recipe's options are in benchmarks/ship.sh)."""

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
    def traits(self) -> VariantTraits:
        """The variant's network traits (check_config refuses an unknown variant first)."""
        return VARIANTS[self.variant]

    @property
    def uses_input_skip(self) -> bool:
        """Whether the network's identity includes its input pixels (decoder output = input + correction)."""
        return not self.traits.variational if self.input_skip is None else self.input_skip

    @property
    def dz_tie(self) -> float:
        """Weight of the dz tie actually used."""
        if self.dz_weight is not None:
            return self.dz_weight
        return 0.1 if self.traits.scalar_blur else 0.0

    def step_options(self) -> StepOptions:
        """The settings a training step needs."""
        return StepOptions(batch_size=self.batch_size, crop=self.crop, p_focus=self.p_focus, consistency=self.consistency,
                           contrastive=self.contrastive, cross=self.cross, dz_weight=self.dz_tie,
                           dz_scale=float(self.dz_range or 30.0), margin=self.margin, group_size=self.group_size,
                           distance_weight=self.distance_weight, cycle_weight=self.cycle_weight,
                           deblur_weight=self.deblur_weight, deblur_loss=self.deblur_loss, deblur_all=self.deblur_all)

    @property
    def init_weights(self) -> Path | None:
        """The --init weights file (None: the weights shipped in the package); only meaningful with --init."""
        return None if str(self.init) == "shipped" else self.init

    def model_config(self, tile: int) -> ModelConfig:
        """The network these options describe, for data tiles of `tile` px (ValueError where the options clash)."""
        return ModelConfig(variant=self.variant, tile=tile, widths=self.widths, id_channels=self.id_channels,
                           input_skip=self.uses_input_skip, unshuffle=self.unshuffle, stem=self.stem,
                           source_code=self.source_code, head=self.head)

    def recipe(self) -> dict:
        """The settings that define the result (paths and run controls left out)."""
        skip = {"resume", "init", "val_frames", "workers", "device", "precision", "overwrite", "checkpoint_every",
                "perceptual_weights"}
        d = {k: v for k, v in asdict(self).items() if k not in skip}
        d["widths"], d["id_channels"], d["dz_weight"] = list(self.widths), list(self.id_channels), self.dz_tie
        d["input_skip"] = self.uses_input_skip
        return d



def _inputs(cfg: TrainConfig) -> list[Path]:
    """The weights and checkpoint files a run reads (`--init shipped`: the packaged weights)."""
    init = None if cfg.init is None else cfg.init_weights or default_weights_path()
    return [p for p in (init, cfg.resume) if p is not None]


def check_config(cfg: TrainConfig, output: Path) -> None:
    if cfg.variant not in VARIANTS:
        raise UserError(f"unknown --variant {cfg.variant!r}: use {', '.join(VARIANTS)}")
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
        require_number("--max-minutes", cfg.max_minutes, 0, open_low=True)
    if cfg.crop % 16:
        raise UserError(f"--crop must be a multiple of 16 (the network's size step), got {cfg.crop}")
    require_number("--lr", cfg.lr, 0, 1, open_low=True)
    require_number("--p-focus", cfg.p_focus, 0, 1)
    require_number("--margin", cfg.margin, 0, open_low=True)
    require_number("--distance-weight", cfg.distance_weight, 0)
    require_number("--cycle-weight", cfg.cycle_weight, 0)
    require_number("--deblur-weight", cfg.deblur_weight, 0)
    if cfg.deblur_loss not in DEBLUR_LOSSES:
        raise UserError(f"unknown --deblur-loss {cfg.deblur_loss!r}: use {', '.join(DEBLUR_LOSSES)}")
    if cfg.unshuffle not in (1, 2, 4):
        raise UserError(f"--unshuffle must be 1, 2 or 4, got {cfg.unshuffle}")
    try:  # the network's own rules (stem, head, source code), on a tile every allowed depth and unshuffle divides
        cfg.model_config(tile=128)
    except ValueError as e:
        raise UserError(_as_options(str(e))) from None
    if cfg.deblur_weight and (not cfg.traits.scalar_blur or cfg.dz_tie <= 0):
        raise UserError("--deblur-weight needs manifold-1d with a dz tie (--dz-weight > 0): the term decodes with "
                        "the code the tie gives an in-focus plane")
    if cfg.deblur_all and not cfg.deblur_weight:
        raise UserError("--deblur-all needs --deblur-weight > 0")
    if cfg.precision not in PRECISIONS:
        raise UserError(f"unknown --precision {cfg.precision!r}: use {', '.join(PRECISIONS)}")
    require_number("--val-fraction", cfg.val_fraction, 0, 0.9)
    require_number("--ema", cfg.ema, 0)
    if cfg.ema >= 1:
        raise UserError(f"--ema is a decay below 1 (0 turns it off; 0.999 averages about the last 1,000 steps), got {cfg.ema}")
    if cfg.dz_range is not None:
        require_number("--dz-range", cfg.dz_range, 0, open_low=True)
    if cfg.dz_weight is not None:
        require_number("--dz-weight", cfg.dz_weight, 0)
    if cfg.beta_delay < 0 or cfg.beta_ramp < 0:
        raise UserError(f"--beta-delay and --beta-ramp are step counts >= 0, got {cfg.beta_delay} and {cfg.beta_ramp}")
    if cfg.dz_weight and not cfg.traits.scalar_blur:
        raise UserError("--dz-weight only applies to a 1-D blur code (--variant manifold-1d)")


def _as_options(message: str) -> str:
    """A ModelConfig message in the train options' names."""
    for field, option in (("source_code", "--source-code"), ("stem", "--stem"), ("head", "--head")):
        message = message.replace(field, option, 1) if message.startswith(field) else message
    return message.replace("no stem", "no --stem").replace("input skip", "input skip (ml-vae and --no-input-skip have none)")


def checkpoint_path(output: Path) -> Path:
    """Where the checkpoint of a run writing `output` lives."""
    return output.with_suffix(".ckpt")
