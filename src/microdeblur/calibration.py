"""Relation between a 1-D blur code and defocus dz (um): monotone fit, code -> dz, dz -> code.

The fit is isotonic (pool-adjacent-violators) on per-dz medians of the codes, with dz as the
exact variable. If the code orders signed dz (|Spearman rho| > 0.8) the relation is 'signed';
otherwise, if it orders |dz| (|rho| > 0.8), it is 'abs' (the sign of the defocus cannot be read
from the code); if it orders neither, 'signed' with `ok` false.
The result is a JSON-serialisable dict stored in the weights' metadata.

Units: the calibration is in µm of defocus of the microscope the weights were trained for. Depth of field
scales as λ/NA², so the optical defocus u = Δz·NA²/λ (Δz and λ in µm) is the same blur on any objective, as far
as the image shows it: the network sees planes resized to its working pixel p, which hold no frequency above
1/(2p), so an objective's NA counts only up to the NA whose cut-off NA/λ is that frequency, λ/(2p) (`band_na`;
measured on five simulated objectives, docs/inference.md). `Microscope` holds an objective's NA and wavelength
(and the pixel sizes the resizing needs) and `dz_factor` converts µm of the training microscope into µm of
another: dz_user = dz_train · dz_factor(train, user).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from . import log
from .errors import UserError

RHO_MIN = 0.8
FORMAT_VERSION = 1
NA_RANGE = (0.0, 1.6)  # objective NA: exclusive, inclusive
WAVELENGTH_RANGE_UM = (0.2, 2.0)  # exclusive, inclusive
PIXEL_RANGE_UM = (0.0, 100.0)  # pixel size at the sample: exclusive, inclusive
AGREE = 0.05  # an option and the file's metadata more than 5 % apart contradict each other


@dataclass(frozen=True)
class Microscope:
    """An objective's NA, the wavelength (µm), the camera pixel size at the sample (µm) and the pixel size the
    network sees after resizing (µm, = pixel_um / scale); the pixel sizes may be None where unknown."""

    na: float
    wavelength_um: float
    pixel_um: float | None = None
    working_pixel_um: float | None = None

    def band_na(self, working_pixel_um: float | None) -> float:
        """The NA that counts for images resized to `working_pixel_um` pixels: this objective's NA, capped at
        λ/(2·pixel), whose cut-off frequency NA/λ is those pixels' Nyquist frequency (None: no cap)."""
        if working_pixel_um is None:
            return self.na
        return min(self.na, self.wavelength_um / (2.0 * working_pixel_um))

    def per_um(self, working_pixel_um: float | None = None) -> float:
        """Optical defocus units per µm of defocus at that working pixel: band_na² / λ (1/µm)."""
        return self.band_na(working_pixel_um) ** 2 / self.wavelength_um

    def optical_units(self, dz_um, working_pixel_um: float | None = None):
        """Defocus u = Δz·NA²/λ of a Δz in µm, NA as band_na (dimensionless; the same blur on any objective)."""
        return np.asarray(dz_um, dtype=np.float64) * self.per_um(working_pixel_um)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Microscope:
        """From a weights' `optics` entry; ValueError when a value is missing or out of range."""
        if not isinstance(d, dict):
            raise ValueError(f"optics must be a JSON object, got {d!r}")
        m = cls(float(d["na"]), float(d["wavelength_um"]),
                *(None if d.get(k) is None else float(d[k]) for k in ("pixel_um", "working_pixel_um")))
        for what, v, (lo, hi) in (("na", m.na, NA_RANGE), ("wavelength_um", m.wavelength_um, WAVELENGTH_RANGE_UM),
                                  ("pixel_um", m.pixel_um, PIXEL_RANGE_UM),
                                  ("working_pixel_um", m.working_pixel_um, PIXEL_RANGE_UM)):
            if v is not None and not (math.isfinite(v) and lo < v <= hi):
                raise ValueError(f"optics {what} {v} is outside ({lo:g}, {hi:g}]")
        return m


# The microscope the shipped weights were trained for (microscope.Optics(): 20x/0.40, 6.5 µm camera pixels, so
# 0.325 µm at the sample; prepare's scale 0.5 gives 0.65 µm working pixels). Weights without an `optics` entry
# are read as this microscope.
REFERENCE = Microscope(na=0.40, wavelength_um=0.55, pixel_um=0.325, working_pixel_um=0.65)


@dataclass(frozen=True)
class OpticsOptions:
    """--na, --wavelength (um) and --pixel-size (um at the sample) as given (None: not given); `checked` validates."""

    na: float | None = None
    wavelength_um: float | None = None
    pixel_size_um: float | None = None

    def checked(self) -> OpticsOptions:
        """self, or a UserError naming the option whose value is impossible."""
        if self.na is not None and not (math.isfinite(self.na) and NA_RANGE[0] < self.na <= NA_RANGE[1]):
            raise UserError(f"--na must be an objective NA in ({NA_RANGE[0]:g}, {NA_RANGE[1]:g}], got {self.na:g}")
        wl = self.wavelength_um
        if wl is not None and not (math.isfinite(wl) and WAVELENGTH_RANGE_UM[0] < wl <= WAVELENGTH_RANGE_UM[1]):
            if math.isfinite(wl) and 100 <= wl <= 2000:
                raise UserError(f"--wavelength {wl:g} looks like nanometres; give micrometres, e.g. --wavelength "
                                f"{wl / 1000:g}")
            raise UserError(f"--wavelength must be in ({WAVELENGTH_RANGE_UM[0]:g}, {WAVELENGTH_RANGE_UM[1]:g}] um, "
                            f"got {wl:g}")
        px = self.pixel_size_um
        if px is not None and not (math.isfinite(px) and PIXEL_RANGE_UM[0] < px <= PIXEL_RANGE_UM[1]):
            raise UserError(f"--pixel-size must be a finite pixel size at the sample in ({PIXEL_RANGE_UM[0]:g}, "
                            f"{PIXEL_RANGE_UM[1]:g}] um, got {px:g}")
        return self


def dz_factor(train: Microscope, user: Microscope) -> float:
    """µm of defocus on `user` per µm on `train` (same optical defocus u = Δz·NA²/λ in the band of the training
    microscope's working pixel, both NAs as band_na): dz_user = dz_train · (NA_train²/λ_train) / (NA_user²/λ_user)."""
    band = train.working_pixel_um
    return train.per_um(band) / user.per_um(band)


def agreed_value(path, option: str, what: str, unit: str, given: float | None, stored: float | None,
            valid: tuple[float, float], source: str = "the file's metadata") -> float | None:
    """The file's value (read from `source`), else the option's; a UserError when both exist and differ by more
    than AGREE."""
    if stored is not None and not valid[0] < stored <= valid[1]:
        log.warn(f"{path}: the {what} {stored:g}{unit} in {source} is outside ({valid[0]:g}, {valid[1]:g}]: ignored")
        stored = None
    if given is not None and stored is not None and abs(given - stored) > AGREE * stored:
        raise UserError(f"{path}: {option} {given:g}{unit} contradicts the {what} in {source}, "
                        f"{stored:g}{unit} (more than {AGREE:.0%} apart); correct the option or the file")
    return stored if stored is not None else given


def pava(y: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-decreasing least-squares fit of y (pool adjacent violators).

    Returns (block values, block weights, block sizes) of the pooled blocks, left to right.
    """
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=np.float64)
    vals, wts, sizes = [], [], []
    for yi, wi in zip(y, w):
        vals.append(yi)
        wts.append(wi)
        sizes.append(1)
        while len(vals) > 1 and vals[-2] >= vals[-1]:
            wt = wts[-2] + wts[-1]
            v = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / wt
            vals[-2:], wts[-2:], sizes[-2:] = [v], [wt], [sizes[-2] + sizes[-1]]
    return np.array(vals), np.array(wts), np.array(sizes)


def isotonic(y: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Non-decreasing least-squares fit of y, one value per input point."""
    vals, _, sizes = pava(y, w)
    return np.repeat(vals, sizes)


def rankdata(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2.0)[inv.ravel()]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (0 when either input is constant)."""
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / den) if den > 0 else 0.0


def _monotone_knots(x: np.ndarray, code: np.ndarray, weight: np.ndarray, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """Knots (code ascending, x) of the isotonic fit code(x); pooled blocks become one knot."""
    sign = 1.0 if rho >= 0 else -1.0
    vals, _, sizes = pava(sign * code, weight)
    edges = np.concatenate([[0], np.cumsum(sizes)])
    xk = np.array([np.average(x[a:b], weights=weight[a:b]) for a, b in zip(edges[:-1], edges[1:])])
    ck = sign * vals
    order = np.argsort(ck)
    return ck[order], xk[order]


def fit_calibration(codes: np.ndarray, dz_um: np.ndarray) -> dict:
    """Fit the monotone code <-> dz relation; returns a JSON-serialisable dict (see module doc)."""
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim == 2 and codes.shape[1] == 1:
        codes = codes[:, 0]
    dz = np.asarray(dz_um, dtype=np.float64).ravel()
    if codes.ndim != 1 or codes.shape != dz.shape:
        raise ValueError(f"need one 1-D code per dz, got codes {codes.shape} and dz {dz.shape}")
    if len(np.unique(dz)) < 2:
        raise ValueError("calibration needs at least two distinct dz values")
    rho, rho_abs = spearman(codes, dz), spearman(codes, np.abs(dz))
    signed = abs(rho) > RHO_MIN or abs(rho_abs) <= RHO_MIN  # neither ordered: signed, flagged not ok
    kind = "signed" if signed else "abs"
    target = dz if signed else np.abs(dz)
    levels, inv, counts = np.unique(target, return_inverse=True, return_counts=True)
    medians = np.array([np.median(codes[inv.ravel() == k]) for k in range(len(levels))])
    used_rho = rho if signed else rho_abs
    code_k, dz_k = _monotone_knots(levels, medians, counts.astype(np.float64), used_rho)
    cal = {
        "version": FORMAT_VERSION,
        "kind": kind,
        "knots": {"code": code_k.tolist(), "dz_um": dz_k.tolist()},
        "spearman_rho": rho,
        "spearman_rho_abs": rho_abs,
        "ok": bool(abs(used_rho) > RHO_MIN),
        "dz_range_um": [float(levels.min()), float(levels.max())],
        "n_samples": int(len(codes)),
    }
    err = np.abs(code_to_dz(cal, codes) - target)
    cal["mae_um"] = float(np.median(err))
    cal["p90_um"] = float(np.percentile(err, 90))
    cal["focus_code"] = float(dz_to_code(cal, 0.0))
    if not signed:
        cal["note"] = "code follows |dz| only: the sign of the defocus cannot be recovered"
    return cal


def _knots(cal: dict) -> tuple[np.ndarray, np.ndarray]:
    """(code, dz) knot arrays of a calibration dict."""
    k = cal["knots"]
    return np.asarray(k["code"], dtype=np.float64), np.asarray(k["dz_um"], dtype=np.float64)


def check_calibration(cal: dict) -> dict:
    """A stored calibration after checking it (ValueError when malformed): at least two finite knots, codes rising."""
    try:
        code_k, dz_k = _knots(cal)
    except (KeyError, TypeError) as e:
        raise ValueError(f"calibration without code/dz_um knots ({e})") from None
    if code_k.ndim != 1 or code_k.shape != dz_k.shape or len(code_k) < 2:
        raise ValueError("calibration needs two or more code/dz_um knots of one length")
    if not (np.isfinite(code_k).all() and np.isfinite(dz_k).all()) or np.any(np.diff(code_k) <= 0):
        raise ValueError("calibration knots must be finite with rising codes")
    return cal


def code_to_dz(cal: dict, codes: np.ndarray) -> np.ndarray:
    """dz (um) of 1-D blur codes; monotone, clipped to the fitted range ('abs': |dz|)."""
    code_k, dz_k = _knots(cal)
    return np.interp(np.asarray(codes, dtype=np.float64), code_k, dz_k)


def dz_to_code(cal: dict, dz: np.ndarray | float) -> np.ndarray:
    """1-D blur code at defocus dz (um), clipped to the fitted range; 'abs' kind uses |dz|."""
    code_k, dz_k = _knots(cal)
    dz = np.asarray(dz, dtype=np.float64)
    if cal["kind"] == "abs":
        if np.any(dz < 0):
            log.warn("calibration follows |dz| only: negative dz requests use |dz|")
        dz = np.abs(dz)
    order = np.argsort(dz_k)
    return np.interp(dz, dz_k[order], code_k[order])


def dz_range(cal: dict) -> tuple[float, float]:
    """Range of dz (um) covered by the calibration knots."""
    _, dz_k = _knots(cal)
    return float(dz_k.min()), float(dz_k.max())


# ---------------------------------------------------------------- sign reliability (issue "Real microscopes")

# Bins of predicted |dz| (um of the training microscope) in which the sign is scored; the last is open-ended.
SIGN_BIN_EDGES_UM = (0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0)
SIGN_MIN_TILES = 10  # a bin with fewer scored tiles is left out of the table (its fraction would be noise)


def sign_reliability(pred_dz, true_dz, edges=SIGN_BIN_EDGES_UM, min_tiles: int = SIGN_MIN_TILES) -> dict:
    """How often the predicted sign of dz is right, per bin of predicted |dz| (JSON-serialisable dict).

    Only tiles with true dz != 0 (and finite values) are scored; a prediction of exactly 0 names no sign and
    counts as wrong. Bins are [edges[k], edges[k+1]), the last one open-ended; each kept bin (>= `min_tiles`
    tiles) is placed at the median predicted |dz| of its tiles (`abs_dz_um`, ascending), with its fraction of
    correct signs and its tile count. `sign_confidence` interpolates the table."""
    pred = np.asarray(pred_dz, dtype=np.float64).ravel()
    true = np.asarray(true_dz, dtype=np.float64).ravel()
    if pred.shape != true.shape:
        raise ValueError(f"need one predicted dz per true dz, got {pred.shape} and {true.shape}")
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 1 or edges[0] != 0 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bin edges must start at 0 and increase, got {edges.tolist()}")
    keep = np.isfinite(pred) & np.isfinite(true) & (true != 0)
    a, right = np.abs(pred[keep]), np.sign(pred[keep]) == np.sign(true[keep])
    which = np.searchsorted(edges, a, side="right") - 1  # bin index, last bin open-ended
    centres, fractions, counts = [], [], []
    for k in range(edges.size):
        sel = which == k
        n = int(sel.sum())
        if n >= max(1, min_tiles):
            centres.append(float(np.median(a[sel])))
            fractions.append(float(right[sel].mean()))
            counts.append(n)
    return {"abs_dz_um": centres, "fraction_correct": fractions, "n_tiles": counts,
            "bin_edges_um": edges.tolist(), "n_scored": int(keep.sum())}


def sign_table(cal: dict | None) -> dict | None:
    """The calibration's `sign_reliability` table, None when it has none (weights written before it was measured);
    ValueError when it is malformed."""
    table = (cal or {}).get("sign_reliability")
    if table is None:
        return None
    try:
        x = np.asarray(table["abs_dz_um"], dtype=np.float64)
        f = np.asarray(table["fraction_correct"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"sign_reliability needs numeric abs_dz_um and fraction_correct lists ({e})") from None
    if x.ndim != 1 or x.shape != f.shape:
        raise ValueError(f"sign_reliability: abs_dz_um and fraction_correct differ in shape ({x.shape}, {f.shape})")
    if not (np.isfinite(x).all() and np.isfinite(f).all() and np.all(np.diff(x) > 0) and np.all(x >= 0)
            and np.all((f >= 0) & (f <= 1))):
        raise ValueError("sign_reliability: abs_dz_um must be finite, >= 0 and increasing; fraction_correct in [0, 1]")
    return table


def sign_confidence(table: dict | None, abs_dz) -> np.ndarray:
    """Confidence in the predicted sign at predicted |dz| (um of the training microscope): 2·fraction_correct - 1
    clipped to [0, 1] (0: a coin flip, 1: always right), linearly interpolated between the table's bins and held
    flat beyond its ends. NaN where |dz| is NaN, and everywhere when there is no table or it has no bin."""
    a = np.abs(np.asarray(abs_dz, dtype=np.float64))
    table = sign_table({"sign_reliability": table}) if table is not None else None
    if table is None or len(table["abs_dz_um"]) == 0:
        return np.full(a.shape, np.nan)
    conf = np.clip(2.0 * np.asarray(table["fraction_correct"], dtype=np.float64) - 1.0, 0.0, 1.0)
    out = np.interp(a, np.asarray(table["abs_dz_um"], dtype=np.float64), conf)
    return np.where(np.isfinite(a), out, np.nan)


def tile_sign_confidence(cal: dict, dz_train_um: np.ndarray) -> np.ndarray:
    """Confidence (0..1) in the sign of each tile's dz (um of the training microscope) from the calibration's
    measured `sign_reliability` table (sign_confidence); 0 for an 'abs' calibration (the code holds no
    sign); NaN for weights without the table (written before it was measured) or with a malformed one."""
    dz_train_um = np.asarray(dz_train_um, dtype=np.float64)
    if cal.get("kind") == "abs":
        return np.zeros(dz_train_um.shape)
    try:
        table = sign_table(cal)
    except ValueError:
        table = None
    return sign_confidence(table, dz_train_um)
