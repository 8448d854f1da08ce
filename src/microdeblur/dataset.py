"""Prepared tiles in memory, identity split, and the two kinds of training pairs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch

from .errors import UserError
from .prepare import load_index

LEVEL_UM = 0.5  # same-dz pairs match dz (reference µm) to this grid: days with other optics or z steps pair too


@dataclass
class PairBatch:
    """Same-identity pairs (x1, x2 at dz1, dz2) and same-dz pairs (y1, y2 of two identities)."""

    x1: torch.Tensor
    x2: torch.Tensor
    y1: torch.Tensor
    y2: torch.Tensor
    dz1: torch.Tensor
    dz2: torch.Tensor
    dzy: torch.Tensor  # dz shared by y1 and y2
    f1: torch.Tensor | None = None  # in-focus plane of x1's identity, same window and augmentation (with_focus)
    fy: torch.Tensor | None = None  # in-focus planes of y1's and y2's identities, [2n], their windows (focus_all)


class PreparedData:
    """All tiles of a prepared folder, normalised per frame, as one float16 array plus per-identity views."""

    def __init__(self, tiles: np.ndarray, owner: np.ndarray, dz: np.ndarray, identities: list[str],
                 days: list[str], z_step_um: float | None, tile: int, scale: float,
                 lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> None:
        self.tiles, self.owner, self.dz_all = tiles, owner, dz
        self.lo_all, self.hi_all = lo, hi  # per tile: its frame's raw percentile range
        self.identities, self.days = identities, days
        self.z_step_um, self.tile, self.scale = z_step_um, tile, scale
        starts = np.searchsorted(owner, np.arange(len(identities) + 1))
        self.start = starts
        self.stacks = [tiles[a:b] for a, b in zip(starts[:-1], starts[1:])]
        self.dz = [dz[a:b] for a, b in zip(starts[:-1], starts[1:])]
        self.focus_index = [int(np.argmin(np.abs(d))) for d in self.dz]
        self.dz_factor: dict[str, float] = {}  # per day: reference um per um of its microscope (1 when unrecorded)

    def reference_identities(self, identities: list[int], at_least: int = 50) -> list[int]:
        """The identities of days whose dz is exactly reference-microscope µm (dz factor 1), when there are at
        least `at_least` of them; else all of `identities`."""
        ref = [i for i in identities if abs(self.dz_factor.get(self.days[i], 1.0) - 1.0) < 0.01]
        return ref if len(ref) >= at_least else list(identities)

    @classmethod
    def load(cls, folder: Path, dz_range: float | None = None) -> PreparedData:
        """Read a prepared folder (UserError when it is not one); keep planes with |dz| <= dz_range."""
        folder = Path(folder)
        index = load_index(folder)
        z_step = common_z_step(folder, index)
        tiles, owner, dzs, ids, days, los, his = [], [], [], [], [], [], []
        factors = {day: day_dz_factor(info) for day, info in index["days"].items()}
        for day, info in sorted(index["days"].items()):
            step = info.get("z_step_um") or 1.0
            factor = day_dz_factor(info)  # dz in µm of the reference microscope: same optical defocus u
            dz_day = np.round(np.asarray(info["dz_planes"], np.float64) * step * factor, 4).astype(np.float32)
            keep = np.ones(len(dz_day), bool) if dz_range is None else np.abs(dz_day) <= dz_range + 1e-6
            if not np.any(dz_day[keep] == 0):
                raise UserError(f"{folder}: day {day} has no in-focus plane inside --dz-range {dz_range}")
            lo = np.asarray(info["lo"], np.float32)[keep, None, None]
            span = (np.asarray(info["hi"], np.float32) - np.asarray(info["lo"], np.float32))[keep, None, None]
            for crop in info["crops"]:
                path = folder / crop["file"]
                try:
                    stack = tifffile.imread(path)
                except Exception as e:  # noqa: BLE001 - any reader failure is a bad prepared folder
                    raise UserError(f"cannot read prepared tile {path}: {e}") from None
                if stack.shape[0] != len(dz_day):
                    raise UserError(f"{path}: {stack.shape[0]} planes, index says {len(dz_day)}")
                tiles.append(((stack[keep].astype(np.float32) - lo) / span).astype(np.float16))
                dzs.append(dz_day[keep])
                los.append(lo[:, 0, 0])
                his.append(lo[:, 0, 0] + span[:, 0, 0])
                owner.append(np.full(int(keep.sum()), len(ids), np.int32))
                ids.append(f"{day}/{Path(crop['file']).stem}")
                days.append(day)
        if not ids:
            raise UserError(f"{folder}: the prepared folder holds no tiles")
        data = cls(np.concatenate(tiles), np.concatenate(owner), np.concatenate(dzs), ids, days,
                   z_step, int(index.get("tile", 128)), float(index.get("scale", 0.5)),
                   np.concatenate(los), np.concatenate(his))
        data.dz_factor = factors
        return data

    def split(self, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
        """Identity indices (train, val); an identity's tiles never cross splits."""
        if not 0.0 <= val_fraction < 1.0:
            raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
        order = np.random.default_rng(seed).permutation(len(self.identities))
        n_val = int(round(val_fraction * len(order)))
        if val_fraction > 0 and len(order) > 1:
            n_val = max(n_val, 1)
        return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())

    def tile_indices(self, identities: list[int]) -> np.ndarray:
        """Global tile indices of the given identities."""
        return np.concatenate([np.arange(self.start[i], self.start[i + 1]) for i in identities])


def day_dz_factor(info: dict) -> float:
    """A prepared day's dz factor (reference µm per µm on its microscope, from NA²/λ; 1 when unrecorded)."""
    optics = info.get("optics") or {}
    factor = optics.get("dz_factor", 1.0)
    return float(factor) if isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0 else 1.0


def common_z_step(folder: Path, index: dict) -> float | None:
    """The folder's z step (µm; the median when days differ): None when no day knows it, an error when only some do."""
    steps = [d.get("z_step_um") for d in index["days"].values()]
    known = [float(s) for s in steps if s]
    if known and len(known) < len(steps):
        raise UserError(f"{folder}: some days have a z step in um and some do not; give --z-step to prepare "
                        "or prepare them into separate folders")
    return float(np.median(known)) if known else None


class PairSampler:
    """Vectorised sampler of both pair kinds from a subset of identities, with blur-preserving augmentation."""

    def __init__(self, data: PreparedData, identities: list[int], rng: np.random.Generator, augment: bool = True) -> None:
        if len(identities) < 2:
            raise UserError(f"training needs at least two training identities (crops), got {len(identities)} after "
                            "the validation split; prepare more data (or use --val-fraction 0)")
        self.data, self.rng, self.augment = data, rng, augment
        self.ids = np.asarray(identities)
        idx = data.tile_indices(identities)
        levels = np.round(data.dz_all[idx] / LEVEL_UM) * LEVEL_UM  # same blur: dz within half a level
        self.levels: list[np.ndarray] = []
        for lv in np.unique(levels):
            members = idx[levels == lv]
            if len(np.unique(data.owner[members])) >= 2:
                self.levels.append(members)
        if not self.levels:
            raise UserError("no dz level is shared by two identities: cannot form same-dz pairs")
        self.counts = np.array([data.start[i + 1] - data.start[i] for i in self.ids])
        self.focus = np.array([data.focus_index[i] for i in self.ids])
        self.focus_tile = np.asarray(data.start[:-1]) + np.asarray(data.focus_index)  # per identity of `data`
        if np.any(self.counts < 2):
            raise UserError("every identity needs at least two planes")

    def _same_identity(self, n: int, p_focus: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n pairs of two planes of one identity (the second in focus with probability p_focus), and the
        in-focus plane of each pair's identity."""
        k = self.rng.integers(0, len(self.ids), n)
        cnt = self.counts[k]
        a = (self.rng.random(n) * cnt).astype(np.int64)
        b = (a + 1 + (self.rng.random(n) * (cnt - 1)).astype(np.int64)) % cnt
        focus = self.focus[k]
        to_focus = (self.rng.random(n) < p_focus) & (a != focus)
        b = np.where(to_focus, focus, b)
        base = self.data.start[self.ids[k]]
        return base + a, base + b, base + focus

    def _same_dz(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        lv = self.rng.integers(0, len(self.levels), n)
        i1, i2 = np.empty(n, np.int64), np.empty(n, np.int64)
        for j, level in enumerate(lv):
            members = self.levels[level]
            while True:
                a, b = self.rng.choice(len(members), 2, replace=False)
                if self.data.owner[members[a]] != self.data.owner[members[b]]:
                    break
            i1[j], i2[j] = members[a], members[b]
        return i1, i2

    def _offsets(self, n: int, crop: int) -> np.ndarray:
        """Random top-left corners [n,2] of crop x crop windows inside a tile."""
        return self.rng.integers(0, self.data.tile - crop + 1, (n, 2))

    def _tensor(self, idx: np.ndarray, crop: int | None = None, offsets: np.ndarray | None = None) -> torch.Tensor:
        """Tiles [n,1,c,c] float32, cropped at `offsets` (one window per row) when `crop` is smaller than the tile."""
        t = self.data.tile
        if crop is None or crop >= t:
            return torch.from_numpy(self.data.tiles[idx].astype(np.float32))[:, None]
        r = np.arange(crop)
        oy, ox = offsets[:, 0], offsets[:, 1]
        x = self.data.tiles[idx[:, None, None], oy[:, None, None] + r[None, :, None], ox[:, None, None] + r[None, None, :]]
        return torch.from_numpy(x.astype(np.float32))[:, None]

    def _augment(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        """Same random flip/rot90 for both members of each pair (blur and identity pairing preserved)."""
        n = xs[0].shape[0]
        rot = self.rng.integers(0, 4, n)
        flip = self.rng.random(n) < 0.5
        out = [x.clone() for x in xs]
        for r in range(4):
            for f in (False, True):
                m = torch.from_numpy((rot == r) & (flip == f))
                if not m.any() or (r == 0 and not f):
                    continue
                for o, x in zip(out, xs):
                    t = torch.rot90(x[m], r, dims=(2, 3))
                    o[m] = torch.flip(t, dims=(3,)) if f else t
        return out

    def pairs(self, n: int, crop: int | None = None, p_focus: float = 0.0, with_focus: bool = False,
              focus_all: bool = False) -> PairBatch:
        """n same-identity pairs (one crop window per pair; the second member in focus with probability
        p_focus) and n same-dz pairs (independent windows); with_focus adds x1's in-focus plane (f1), focus_all
        also y1's and y2's (fy). Neither draws random numbers, so the pairs are the same either way."""
        a, b, f = self._same_identity(n, p_focus)
        c, d = self._same_dz(n)
        w = None if crop is None else self._offsets(n, crop)
        xs = [self._tensor(a, crop, w), self._tensor(b, crop, w)] + ([self._tensor(f, crop, w)] if with_focus else [])
        wc = None if crop is None else self._offsets(n, crop)
        wd = None if crop is None else self._offsets(n, crop)
        ys = [self._tensor(c, crop, wc), self._tensor(d, crop, wd)]
        if focus_all:
            ys += [self._tensor(self._focus_of(c), crop, wc), self._tensor(self._focus_of(d), crop, wd)]
        if self.augment:
            xs = self._augment(*xs)
            ys = self._augment(*ys)
        dz = self.data.dz_all
        return PairBatch(xs[0], xs[1], ys[0], ys[1], torch.from_numpy(dz[a].copy()), torch.from_numpy(dz[b].copy()),
                         torch.from_numpy(dz[c].copy()), xs[2] if with_focus else None,
                         torch.cat(ys[2:]) if focus_all else None)

    def _focus_of(self, tiles: np.ndarray) -> np.ndarray:
        """Global index of the in-focus plane of each tile's identity."""
        return self.focus_tile[self.data.owner[tiles]]

    def groups(self, g: int, k: int, crop: int | None = None, p_focus: float = 0.0) -> torch.Tensor:
        """g groups of k planes of one identity each, [g, k, 1, c, c] (ML-VAE), one crop window per group;
        with probability p_focus a group's last member is its in-focus plane."""
        ids = self.rng.integers(0, len(self.ids), g)
        rows = []
        for i in ids:
            cnt = self.counts[i]
            pick = self.rng.choice(cnt, min(k, cnt), replace=False)
            if len(pick) < k:
                pick = np.resize(pick, k)
            if self.rng.random() < p_focus and self.focus[i] not in pick:
                pick[-1] = self.focus[i]
            rows.append(self.data.start[self.ids[i]] + pick)
        t = self.data.tile if crop is None or crop >= self.data.tile else crop
        w = None if t == self.data.tile else np.repeat(self._offsets(g, t), k, axis=0)
        x = self._tensor(np.concatenate(rows), None if w is None else t, w).reshape(g, k, t, t)
        if self.augment:
            x = self._augment(x)[0]  # one transform per group: members stay aligned
        return x.reshape(g, k, 1, t, t)
