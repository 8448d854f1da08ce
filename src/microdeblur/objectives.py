"""What each variant does in one training step: the batch it draws and how the pure losses combine
(docs/model.md, "Losses on a pyramid identity")."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dataset import PairSampler
from .losses import (
    DEBLUR_LOSSES,
    RecFn,
    consistency_loss,
    contrastive_loss,
    group_posterior,
    kl_standard_normal,
    reparameterize,
)
from .model_config import VARIANTS
from .networks import DisentangledAE

DEBLUR_CODE = 0.0  # the 1-D blur code the dz tie gives an in-focus plane: the deblurring term decodes with it


@dataclass(frozen=True)
class StepOptions:
    """The loss and batch settings of a training run that a step needs."""

    batch_size: int = 12
    crop: int | None = 64
    p_focus: float = 0.5
    consistency: bool = True
    contrastive: bool = True
    cross: bool = True
    dz_weight: float = 0.0
    dz_scale: float = 30.0
    margin: float = 0.6
    distance_weight: float = 0.1
    cycle_weight: float = 0.0
    deblur_weight: float = 0.0
    deblur_loss: str = "l1"  # losses.DEBLUR_LOSSES
    deblur_all: bool = False  # the deblurring term on x2, y1 and y2 too, not on x1 only
    group_size: int = 4


class Objective(Protocol):
    """One variant's training step: `sample` draws the batch (host tensors), `losses` computes the terms
    and their total on the model (a pure function of the batch, so DDP ranks can share one step)."""

    def tiles_per_step(self, opts: StepOptions) -> int: ...

    def sample(self, sampler: PairSampler, opts: StepOptions) -> dict[str, Tensor]: ...

    def losses(self, model: DisentangledAE, batch: dict[str, Tensor], opts: StepOptions, rec_fn: RecFn,
               beta: float) -> dict[str, Tensor]: ...


class TrainStep(nn.Module):
    """The model plus its objective as one module whose forward is a training step's losses (what DDP wraps)."""

    def __init__(self, model: DisentangledAE, objective: Objective, opts: StepOptions, rec_fn: RecFn) -> None:
        super().__init__()
        self.model, self.objective, self.opts, self.rec_fn = model, objective, opts, rec_fn

    def forward(self, batch: dict[str, Tensor], beta: float) -> dict[str, Tensor]:
        """Loss terms and `total` of one step on a batch already on the model's device."""
        return self.objective.losses(self.model, batch, self.opts, self.rec_fn, beta)


@dataclass(frozen=True)
class Manifold:
    """Product-manifold objective (eq. 4.5, reweighted, plus a cycle term and a supervised deblurring term):
    rec + β·(cross + λ·(consistency + contrastive) + μ·cycle) [+ dz tie] + ω·deblur.

    λ = distance_weight (0.1): at λ = 1, as in the thesis, the distance terms on the pixel-rich pyramid
    identity dominated once β rose (held-out reconstruction fell from 29.7 to 21.5 dB, docs/model.md).

    (x1, x2) share identity, x2 in focus with probability p_focus, so D(id(x_dz), b_focus) -> x_focus (the
    operation `deblur` ships) is a frequent cross-reconstruction target; (y1, y2) share dz.
    μ = cycle_weight: the frozen encoder must read the swapped-in blur code back from D(id(x1), b(x2))
    (what `focus` would read on a deblurred or refocused output).
    ω = deblur_weight (manifold-1d): D(id(x1), 0) -> f1, f1 the in-focus plane of x1's identity, by L1 (or RMS) on every
    pair from the first step (not inside β): the operation `deblur` ships, trained as CARE trains its net, with
    the code the dz tie gives an in-focus plane (0), so the term trains identity and decoder, not the blur code.
    With deblur_all it also acts on x2 (target f1) and on y1, y2 (their own in-focus planes fy): 4n targets a step."""

    scalar_blur: bool

    def tiles_per_step(self, opts: StepOptions) -> int:
        if opts.deblur_weight <= 0:
            return 4 * opts.batch_size
        return (7 if opts.deblur_all else 5) * opts.batch_size  # f1 (and fy) are drawn too

    def sample(self, sampler, opts):
        deblur = opts.deblur_weight > 0
        b = sampler.pairs(opts.batch_size, opts.crop, opts.p_focus, with_focus=deblur, focus_all=deblur and opts.deblur_all)
        out = {"x1": b.x1, "x2": b.x2, "y1": b.y1, "y2": b.y2, "dz": torch.cat([b.dz1, b.dz2])}
        for key, value in (("f1", b.f1), ("fy", b.fy)):
            if value is not None:
                out[key] = value
        return out

    def losses(self, model, batch, opts, rec_fn, beta):
        x1, x2, y1, y2 = (batch[k].contiguous(memory_format=torch.channels_last) for k in ("x1", "x2", "y1", "y2"))
        f1, fy = (batch[k].contiguous(memory_format=torch.channels_last) if k in batch else None for k in ("f1", "fy"))
        parts = manifold_terms(model, x1, x2, y1, y2, rec_fn=rec_fn, opts=opts, dz=batch["dz"] if self.scalar_blur else None,
                               f1=f1, fy=fy)
        distances = opts.distance_weight * (parts["cons"] + parts["cont"])
        swapped = parts["cross"] + opts.cycle_weight * parts["cycle"]
        parts["total"] = (parts["rec"] + beta * (swapped + distances) + opts.dz_weight * parts["dz"]
                          + opts.deblur_weight * parts["deblur"])
        return parts


def manifold_terms(model: DisentangledAE, x1: Tensor, x2: Tensor, y1: Tensor, y2: Tensor, *, rec_fn: RecFn,
                   opts: StepOptions, dz: Tensor | None = None, f1: Tensor | None = None,
                   fy: Tensor | None = None) -> dict[str, Tensor]:
    """Loss terms of one manifold step; one encoder call for the inputs, one decoder call for own
    reconstructions, swaps and (with x1's in-focus planes f1, and fy for x2, y1, y2) deblurrings, one encoder
    call for re-encoding the swaps (consistency)."""
    n, side = x1.shape[0], x1.shape[-1]
    xs = torch.cat([x1, x2, y1, y2])
    codes = model.encode(xs)
    ids, blurs = codes.identity[: 4 * n], codes.blur[: 4 * n]
    learnt, sizes = model.learnt_identity(ids, side)  # what the distances act on (no input pixels)
    lx1, lx2, ly1, ly2 = learnt.split(n)
    ix1, ix2, iy1, iy2 = ids.split(n)
    bx1, bx2, by1, by2 = blurs.split(n)
    zero = xs.new_zeros(())
    swaps = opts.cross or opts.consistency or opts.cycle_weight > 0
    dec_ids, dec_blurs = [ids], [blurs]
    if swaps:  # D(ix1,bx2)->x2, D(ix2,bx1)->x1, D(iy1,by2)->y1, D(iy2,by1)->y2
        dec_ids += [ix1, ix2, iy1, iy2]
        dec_blurs += [bx2, bx1, by2, by1]
    deblur_ids = ids if fy is not None else ix1
    if f1 is not None:  # D(ix1, DEBLUR_CODE) -> f1: the deblurring `deblur` ships, at the tie's in-focus code
        dec_ids.append(deblur_ids)  # (decoding with b(f1) bent the code's Δz order, Spearman 0.986 -> 0.77; with
        dec_blurs.append(blurs.new_full((deblur_ids.shape[0], *bx1.shape[1:]), DEBLUR_CODE))  # sg(b(f1)): no learning)
    dec = model.decode(torch.cat(dec_ids), torch.cat(dec_blurs))
    own, swapped, deblurred = dec[: 4 * n], dec[4 * n: 8 * n], dec[8 * n if swaps else 4 * n:]
    out = {"rec": rec_fn(own, xs), "cons": zero, "cont": zero, "cross": zero, "cycle": zero, "dz": zero,
           "deblur": zero}
    if f1 is not None:
        targets = f1 if fy is None else torch.cat([f1, f1, fy])  # x2 shares x1's identity, window and augmentation
        out["deblur"] = DEBLUR_LOSSES[opts.deblur_loss](deblurred, targets)
    if opts.cross:
        out["cross"] = rec_fn(swapped, torch.cat([x2, x1, y1, y2]))
    if swaps and opts.cycle_weight > 0:  # gradient reaches the decoder only: the encoder is the fixed reader
        with frozen(model.enc, model.blur_head):
            read = model.encode_blur(swapped[: 2 * n])
        out["cycle"] = consistency_loss(torch.cat([bx2, bx1]).detach(), read)
    if opts.consistency:
        re = model.encode(swapped)
        # each swap keeps one code fixed: identity of D(ix1,bx2), D(ix2,bx1); blur of D(iy1,by2), D(iy2,by1)
        re_learnt = model.learnt_identity(re.identity[: 2 * n], side)[0]
        out["cons"] = (consistency_loss(torch.cat([lx1, lx2]), re_learnt, sizes)
                       + consistency_loss(torch.cat([by2, by1]), re.blur[2 * n:]))
    if opts.contrastive:
        out["cont"] = (contrastive_loss(lx1, lx2, True, opts.margin, sizes) + contrastive_loss(bx1, bx2, False, opts.margin)
                       + contrastive_loss(by1, by2, True, opts.margin) + contrastive_loss(ly1, ly2, False, opts.margin, sizes))
    if dz is not None and opts.dz_weight > 0:
        out["dz"] = F.mse_loss(torch.cat([bx1, bx2]).reshape(-1), dz.to(blurs.dtype).reshape(-1) / opts.dz_scale)
    return out


@contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Within the block the modules' parameters record no gradient (the graph still reaches their inputs)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@dataclass(frozen=True)
class MLVAE:
    """ML-VAE (eq. 4.1-4.4) on the pyramid: the deepest identity level is the group posterior (sampled);
    the finer levels are averaged over the group, so every member is decoded from one shared identity."""

    def tiles_per_step(self, opts: StepOptions) -> int:
        return opts.batch_size * opts.group_size

    def sample(self, sampler, opts):
        return {"groups": sampler.groups(opts.batch_size, opts.group_size, opts.crop, opts.p_focus)}

    def losses(self, model, batch, opts, rec_fn, beta):
        parts = mlvae_terms(model, batch["groups"], rec_fn=rec_fn)
        parts["total"] = parts["rec"] + parts["kl_id"] + parts["kl_blur"]
        return parts


def mlvae_terms(model: DisentangledAE, groups: Tensor, *, rec_fn: RecFn,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """ML-VAE terms for groups [G,K,1,S,S] of one identity each; the KLs are per pixel (ELBO per pixel).

    Following Bouchacourt's implementation the identity KL is counted once per group and the blur KL once
    per member, both divided by G; rec is a mean per pixel, so both KLs are further divided by K·S·S."""
    g, k, s = groups.shape[0], groups.shape[1], groups.shape[-1]
    xs = groups.reshape(g * k, *groups.shape[2:]).contiguous(memory_format=torch.channels_last)
    codes = model.encode(xs)
    if codes.id_logvar is None or codes.blur_logvar is None:
        raise ValueError("mlvae_terms needs an ml-vae model (codes with log-variances)")
    deep = codes.id_logvar.shape[1]
    fine, mu = codes.identity[:, :-deep], codes.identity[:, -deep:]
    mu_g, lv_g = group_posterior(mu.view(g, k, deep), codes.id_logvar.view(g, k, deep))
    deep_s = reparameterize(mu_g[:, None].expand(g, k, deep), lv_g[:, None].expand(g, k, deep), generator)
    fine_g = fine.view(g, k, -1).mean(1, keepdim=True).expand(g, k, fine.shape[1])
    ident = torch.cat([fine_g.reshape(g * k, -1), deep_s.reshape(g * k, deep)], dim=1)
    blur = reparameterize(codes.blur, codes.blur_logvar, generator)
    per_pixel = float(k * s * s)
    return {"rec": rec_fn(model.decode(ident, blur), xs),
            "kl_id": kl_standard_normal(mu_g, lv_g).sum() / (g * per_pixel),
            "kl_blur": kl_standard_normal(codes.blur, codes.blur_logvar).sum() / (g * per_pixel)}


OBJECTIVES: dict[str, Objective] = {name: MLVAE() if t.variational else Manifold(scalar_blur=t.scalar_blur)
                                    for name, t in VARIANTS.items()}
