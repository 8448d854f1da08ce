"""Specimens for the bright-field simulator: thin complex log-transmittance layers of cell fields.

Every family turns a random field of cells into one or more thin layers, each a complex
log-transmittance i*phase - absorption on the padded simulation canvas, with phase = k0 * OPD
(optical path difference, um, of the cell against the medium) and k0 = 2*pi/lambda. Geometry is in
um, so the same family works at any pixel size. Families: protoplasts (the reference specimen),
yeast (fission rods or budding ovals), mammalian (adherent cells), bacteria (rod clumps) and
confluent (a tiled monolayer); see docs/simulator.md for their ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Specimen:
    """Per-layer complex transmittances (on the padded canvas) and the ground truth per cell."""

    layers: list[np.ndarray]
    layer_depth_um: list[float]
    cells: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------- protoplasts (reference)


def _disk_profile(rho: np.ndarray, r: float) -> np.ndarray:
    """Normalised sphere thickness (1 at the centre, 0 outside) with an anti-aliased edge."""
    inside = np.sqrt(np.clip(1.0 - (rho / max(r, 1e-3)) ** 2, 0.0, None))
    edge = np.clip(r - rho + 0.5, 0.0, 1.0)
    return inside * edge


def _stamp(layer: np.ndarray, y: int, x: int, patch: np.ndarray) -> None:
    """Add a complex patch centred at (y, x) into layer (clipped at the borders)."""
    h, w = patch.shape
    y0, x0 = y - h // 2, x - w // 2
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + h, layer.shape[0]), min(x0 + w, layer.shape[1])
    if ye > ys and xe > xs:
        layer[ys:ye, xs:xe] += patch[ys - y0 : ye - y0, xs - x0 : xe - x0]


def _cell_patch(rng: np.random.Generator, radius_px: float, kind: str, k0: float, px_um: float) -> np.ndarray:
    """Complex log-transmittance (i*phase - absorption) of one protoplast, debris or dividing pair."""
    half = int(np.ceil(radius_px * (2.2 if kind == "dividing" else 1.25))) + 3
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    if kind == "dividing":
        a = rng.uniform(0, np.pi)
        d = radius_px * rng.uniform(0.55, 0.85)
        r1, r2 = radius_px * rng.uniform(0.75, 0.95), radius_px * rng.uniform(0.75, 0.95)
        c1 = (d * np.sin(a), d * np.cos(a))
        rho1 = np.hypot(yy - c1[0], xx - c1[1])
        rho2 = np.hypot(yy + c1[0], xx + c1[1])
        return _cell_patch_from(rng, [(c1, rho1, r1), ((-c1[0], -c1[1]), rho2, r2)], yy, xx, k0, px_um)
    theta = np.arctan2(yy, xx)
    wobble = 1.0
    if kind == "irregular":
        for m in (2, 3, 4):
            wobble = wobble + rng.uniform(0.03, 0.12) * np.cos(m * theta + rng.uniform(0, 2 * np.pi))
    else:
        wobble = wobble + rng.uniform(0.0, 0.03) * np.cos(2 * theta + rng.uniform(0, 2 * np.pi))
    rho = np.hypot(yy, xx) / wobble
    return _cell_patch_from(rng, [((0.0, 0.0), rho, radius_px)], yy, xx, k0, px_um)


def _cell_patch_from(rng, bodies, yy, xx, k0: float, px_um: float) -> np.ndarray:
    """Vacuole body, membrane rim, cortical granules (chloroplasts) for one or two bodies."""
    phase = np.zeros(yy.shape, np.float32)
    absorb = np.zeros(yy.shape, np.float32)
    for (cy, cx), rho, r in bodies:
        r_um = r * px_um
        body = _disk_profile(rho, r)
        phase += k0 * rng.uniform(0.0008, 0.0016) * 2 * r_um * body
        rim = np.exp(-((rho - (r - 1.5)) ** 2) / (2 * 1.2**2)).astype(np.float32) * (rho < r + 3)
        phase += rng.uniform(0.15, 0.35) * rim
        absorb += 0.002 * body
        n_gran = int(rng.integers(25, 60) * (r_um / 16.0) ** 2)
        # Granules sit in the cortex: projected positions biased towards the rim.
        ang = rng.uniform(0, 2 * np.pi, n_gran)
        rad = r * np.sqrt(rng.uniform(0.15, 0.92, n_gran)) ** 0.6
        gy = cy + rad * np.sin(ang)
        gx = cx + rad * np.cos(ang)
        gr = rng.uniform(1.2, 2.6, n_gran) / px_um  # 2.4-5.2 um chloroplasts
        dn = rng.uniform(0.012, 0.025, n_gran)
        ab = rng.uniform(0.01, 0.04, n_gran)
        for y0, x0, rg, d, a in zip(gy, gx, gr, dn, ab):
            sl = (slice(max(int(y0 + yy.shape[0] // 2 - rg - 2), 0), int(y0 + yy.shape[0] // 2 + rg + 3)),
                  slice(max(int(x0 + xx.shape[1] // 2 - rg - 2), 0), int(x0 + xx.shape[1] // 2 + rg + 3)))
            prof = _disk_profile(np.hypot(yy[sl] - y0, xx[sl] - x0), rg)
            phase[sl] += k0 * d * 2 * rg * px_um * prof
            absorb[sl] += a * prof
    return (1j * phase - absorb).astype(np.complex64)


def _debris_patch(rng: np.random.Generator, k0: float, px_um: float) -> np.ndarray:
    """Small irregular dense particle."""
    r = rng.uniform(1.0, 4.0) / px_um
    half = int(r * 1.6) + 3
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    theta = np.arctan2(yy, xx)
    rho = np.hypot(yy, xx) / (1 + 0.25 * np.cos(2 * theta + rng.uniform(0, 6.3)) + 0.15 * np.cos(3 * theta))
    prof = _disk_profile(rho, r)
    return (1j * k0 * rng.uniform(0.02, 0.08) * 2 * r * px_um * prof - rng.uniform(0.1, 0.5) * prof).astype(np.complex64)


def _free_position(rng: np.random.Generator, shape: tuple[int, int], r: float,
                   placed: list[tuple[int, int, float]], tries: int = 30) -> tuple[int, int]:
    """A random centre that overlaps earlier cells only slightly (protoplasts touch but rarely stack)."""
    arr = np.asarray(placed, np.float32).reshape(-1, 3)
    for _ in range(tries):
        y, x = int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1]))
        if not len(arr) or np.all(np.hypot(arr[:, 0] - y, arr[:, 1] - x) >= 0.85 * (arr[:, 2] + r)):
            return y, x
    return y, x


def protoplasts(rng: np.random.Generator, shape: tuple[int, int], px: float, k0: float,
                n_cells: int | None = None, n_layers: int = 3) -> tuple[list[np.ndarray], list[float], list[dict]]:
    """Crowded field of protoplasts (15-50 um), some irregular or dividing, plus debris, in depth layers.

    Returns the complex log-transmittance of each layer, the layer depths (um) and the cells.
    """
    area_um2 = shape[0] * shape[1] * px * px
    if n_cells is None:
        n_cells = max(1, int(0.75 * area_um2 / (np.pi * 14.0**2)))
    depths = np.sort(rng.uniform(-2.5, 2.5, n_layers)).astype(float)
    logt = [np.zeros(shape, np.complex64) for _ in range(n_layers)]
    cells: list[dict] = []
    placed: list[tuple[int, int, float]] = []
    for _ in range(n_cells):
        d_um = float(np.clip(rng.lognormal(np.log(26.0), 0.3), 15.0, 50.0))
        kind = rng.choice(["round", "irregular", "dividing"], p=[0.72, 0.18, 0.10])
        y, x = _free_position(rng, shape, d_um / 2 / px, placed)
        placed.append((y, x, d_um / 2 / px))
        layer = int(rng.integers(0, n_layers))
        _stamp(logt[layer], y, x, _cell_patch(rng, d_um / 2 / px, str(kind), k0, px))
        cells.append({"y_px": y, "x_px": x, "diameter_um": round(d_um, 2), "kind": str(kind),
                      "depth_um": round(depths[layer], 3), "layer": layer})
    for _ in range(int(n_cells * 0.6)):
        layer = int(rng.integers(0, n_layers))
        _stamp(logt[layer], int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1])), _debris_patch(rng, k0, px))
    return logt, list(depths), cells


def make_specimen(rng: np.random.Generator, shape: tuple[int, int], optics,
                  n_cells: int | None = None, n_layers: int = 3) -> Specimen:
    """The reference specimen: protoplasts (see protoplasts) as complex transmittance layers."""
    logt, depths, cells = protoplasts(rng, shape, optics.pixel_um, 2 * np.pi / optics.wavelength_um, n_cells, n_layers)
    layers = [np.exp(lt).astype(np.complex64) for lt in logt]
    return Specimen(layers=layers, layer_depth_um=depths, cells=cells)


# ----------------------------------------------------------------------------- shared geometry (um units)


def _grid(half: int, px: float) -> tuple[np.ndarray, np.ndarray]:
    """Local patch coordinates in um, (2*half+1)^2, centred on the middle pixel."""
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    return yy * np.float32(px), xx * np.float32(px)


def _ball(dist: np.ndarray, r: float, px: float) -> np.ndarray:
    """Thickness (um) of a sphere/capsule of radius r at distance dist from its axis, anti-aliased edge."""
    inside = 2.0 * np.sqrt(np.clip(r * r - dist * dist, 0.0, None))
    return (inside * np.clip((r - dist) / px + 0.5, 0.0, 1.0)).astype(np.float32)


def _thin(dist: np.ndarray, sigma_um: float, px: float) -> np.ndarray:
    """A thin feature (wall, septum) of width sigma_um as a Gaussian, widened to at least half a pixel
    with its integral kept, so sub-pixel walls keep their optical path."""
    s = max(sigma_um, 0.5 * px)
    return ((sigma_um / s) * np.exp(-(dist * dist) / (2 * s * s))).astype(np.float32)


def _rotate(yy: np.ndarray, xx: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates along (u) and across (v) a direction at angle (rad) from the x axis."""
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return xx * c + yy * s, -xx * s + yy * c


def _capsule_dist(u: np.ndarray, v: np.ndarray, length: float, r: float) -> np.ndarray:
    """Distance from the axis segment of a capsule (rod) of total length `length` and radius r."""
    hl = max(length / 2 - r, 0.0)
    return np.hypot(np.maximum(np.abs(u) - hl, 0.0), v)


def _patch(k0: float, opd: np.ndarray, absorb: np.ndarray) -> np.ndarray:
    """Complex log-transmittance i*k0*OPD - absorption."""
    return (1j * (k0 * opd) - absorb).astype(np.complex64)


def _count(n_cells: int | None, area_fraction: float, area_um2: float, cell_area_um2: float, cap: int) -> int:
    if n_cells is not None:
        return int(n_cells)
    return int(min(cap, max(1, round(area_fraction * area_um2 / cell_area_um2))))


def _layers(rng: np.random.Generator, shape: tuple[int, int], n: int, spread_um: float) -> tuple[list[np.ndarray], np.ndarray]:
    depths = np.sort(rng.uniform(-spread_um, spread_um, n)).astype(float)
    return [np.zeros(shape, np.complex64) for _ in range(n)], depths


def _add_debris(rng, logt, shape, k0, px, n, r_um: tuple[float, float]) -> None:
    """n small dense irregular particles (radius range r_um) scattered over the layers."""
    for _ in range(n):
        r = rng.uniform(*r_um)
        yy, xx = _grid(int(np.ceil(1.6 * r / px)) + 2, px)
        theta = np.arctan2(yy, xx)
        rho = np.hypot(yy, xx) / (1 + 0.25 * np.cos(2 * theta + rng.uniform(0, 6.3)) + 0.15 * np.cos(3 * theta))
        thick = _ball(rho, r, px)
        patch = _patch(k0, rng.uniform(0.02, 0.08) * thick, rng.uniform(0.03, 0.15) * thick / max(r, 0.1))
        layer = int(rng.integers(0, len(logt)))
        _stamp(logt[layer], int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1])), patch)


# ----------------------------------------------------------------------------- yeast


def _fission_cell(rng, px, k0, p) -> tuple[np.ndarray, dict]:
    """S. pombe: a rod (capsule) 3-4 um wide and 7-14 um long, wall, vacuoles, sometimes a septum."""
    r = rng.uniform(1.5, 2.0)
    septum = rng.random() < p["septum_fraction"]
    length = rng.uniform(12.0, 15.0) if septum else rng.uniform(7.0, 14.0)
    angle = rng.uniform(0, np.pi)
    yy, xx = _grid(int(np.ceil((length / 2 + 1.0) / px)) + 2, px)
    u, v = _rotate(yy, xx, angle)
    d = _capsule_dist(u, v, length, r)
    thick = _ball(d, r, px)
    dn = rng.uniform(*p["dn"])
    opd = dn * thick + p["wall_opd"] * _thin(d - (r - 0.1), 0.1, px) * (d < r + 0.5)
    hl = length / 2 - r
    for _ in range(int(rng.integers(0, 6))):
        rv = rng.uniform(0.4, 0.9)
        cu, cv = rng.uniform(-hl - 0.5 * r, hl + 0.5 * r), rng.normal(0.0, 0.25 * r)
        opd -= rng.uniform(0.4, 0.8) * dn * _ball(np.hypot(u - cu, v - cv), rv, px)
    absorb = p["absorption_per_um"] * thick
    sign = 0.0
    if septum:
        sign = float(rng.choice([-1.0, 1.0]))  # a new septum (dense wall, dark/bright) or a cleaving one (gap)
        plate = _thin(u, 0.08, px) * (thick / (2 * r))
        opd += sign * rng.uniform(0.02, 0.05) * plate
        absorb = absorb + (sign > 0) * rng.uniform(0.0, 0.08) * plate
    return _patch(k0, np.maximum(opd, 0.0), absorb), {
        "kind": "fission", "length_um": round(length, 2), "width_um": round(2 * r, 2),
        "septum": "none" if not septum else ("dense" if sign > 0 else "cleaving")}


def _budding_cell(rng, px, k0, p) -> tuple[np.ndarray, dict]:
    """S. cerevisiae: an oval 4-6 um (ellipsoid), a large vacuole, sometimes a bud."""
    a = rng.uniform(2.0, 3.0)
    b = a * rng.uniform(0.8, 0.97)
    angle = rng.uniform(0, np.pi)
    bud = rng.uniform(0.3, 0.75) if rng.random() < p["bud_fraction"] else 0.0
    yy, xx = _grid(int(np.ceil((a * (1 + 2 * bud) + 1.0) / px)) + 2, px)
    u, v = _rotate(yy, xx, angle)
    bodies = [(0.0, a, b)] + ([(a + 0.8 * bud * a, bud * a, bud * b)] if bud else [])
    thick = np.zeros(u.shape, np.float32)
    wall = np.zeros(u.shape, np.float32)
    for cu, aa, bb in bodies:
        q = np.sqrt(((u - cu) / aa) ** 2 + (v / bb) ** 2)
        t = 2 * bb * np.sqrt(np.clip(1 - q * q, 0, None)) * np.clip((1 - q) * bb / px + 0.5, 0, 1)
        thick = np.maximum(thick, t.astype(np.float32))
        wall = np.maximum(wall, _thin((q - 1) * bb + 0.1, 0.1, px) * (q < 1 + 0.5 / bb))
    dn = rng.uniform(*p["dn"])
    opd = dn * thick + p["wall_opd"] * wall
    for _ in range(1 if rng.random() < 0.7 else 2):
        rv = b * rng.uniform(0.3, 0.55)
        cu, cv = rng.uniform(-0.3, 0.3) * a, rng.uniform(-0.2, 0.2) * b
        opd -= rng.uniform(0.5, 0.8) * dn * _ball(np.hypot(u - cu, v - cv), rv, px)
    return _patch(k0, np.maximum(opd, 0.0), p["absorption_per_um"] * thick), {
        "kind": "budding", "length_um": round(2 * a, 2), "width_um": round(2 * b, 2), "bud": round(bud, 2)}


def yeast(rng, shape, px, k0, n_cells, fixed) -> tuple[list, list, list, dict]:
    """Fission (rods) or budding (ovals) yeast in a near-monolayer, dense cytoplasm, a bright/dark wall."""
    p = {
        "species": fixed.get("species") or str(rng.choice(["fission", "budding"])),
        "area_fraction": round(float(rng.uniform(0.15, 0.5)), 3),
        "dn": (0.025, 0.05),
        "wall_opd": round(float(rng.uniform(0.008, 0.025)), 4),
        "absorption_per_um": round(float(rng.uniform(0.002, 0.012)), 4),
        "septum_fraction": round(float(rng.uniform(0.05, 0.3)), 3),
        "bud_fraction": round(float(rng.uniform(0.2, 0.6)), 3),
    }
    p.update({k: v for k, v in fixed.items() if k in p})
    make = _fission_cell if p["species"] == "fission" else _budding_cell
    mean_area = 3.5 * 10.5 if p["species"] == "fission" else np.pi * 2.5 * 2.2
    area_um2 = shape[0] * shape[1] * px * px
    n = _count(n_cells, p["area_fraction"], area_um2, mean_area, 40000)
    logt, depths = _layers(rng, shape, 2, 1.0)
    cells, placed = [], []
    for _ in range(n):
        patch, info = make(rng, px, k0, p)
        r_px = 0.35 * info["length_um"] / px
        y, x = _free_position(rng, shape, r_px, placed, tries=10)
        placed.append((y, x, r_px))
        layer = int(rng.integers(0, 2))
        _stamp(logt[layer], y, x, patch)
        cells.append({"y_px": y, "x_px": x, **info, "depth_um": round(depths[layer], 3), "layer": layer})
    _add_debris(rng, logt, shape, k0, px, int(n * 0.03), (0.3, 1.5))
    p["dn"] = list(p["dn"])
    return logt, list(depths), cells, p


# ----------------------------------------------------------------------------- mammalian


def _mammalian_cell(rng, px, k0, p) -> tuple[np.ndarray, dict]:
    """Adherent cell: irregular spreading outline 20-60 um, thin lamella, thicker body, nucleus, nucleoli."""
    r0 = rng.uniform(10.0, 30.0)
    harm = [(m, rng.uniform(0.0, 0.2) / m**0.6, rng.uniform(0, 2 * np.pi)) for m in range(2, 8)]
    lobes = [(rng.uniform(0.15, 0.5), rng.uniform(0.15, 0.5), rng.uniform(0, 2 * np.pi))
             for _ in range(int(rng.integers(0, 4)))]
    reach = 1.0 + sum(h[1] for h in harm) + sum(lb[0] for lb in lobes)
    yy, xx = _grid(int(np.ceil(r0 * reach / px)) + 3, px)
    theta = np.arctan2(yy, xx)
    rho = np.hypot(yy, xx)
    outline = np.ones(theta.shape, np.float32)
    for m, amp, ph in harm:
        outline += np.float32(amp) * np.cos(m * theta + ph)
    for amp, width, centre in lobes:
        dth = np.angle(np.exp(1j * (theta - centre)))
        outline += np.float32(amp) * np.exp(-(dth * dth) / (2 * width * width))
    rad = r0 * np.maximum(outline, 0.35)
    s = rho / rad
    lam = rng.uniform(0.35, 0.65)
    core = np.clip((1 - s) / lam, 0, 1)
    h_edge, h_body = rng.uniform(0.1, 0.4), rng.uniform(1.0, 2.5)
    h = (h_edge + (h_body - h_edge) * core * core * (3 - 2 * core)) * np.clip((rad - rho) / px + 0.5, 0, 1)
    an = min(rng.uniform(4.5, 8.0), 0.5 * r0)
    bn = an * rng.uniform(0.65, 0.95)
    off, oa, na_ = rng.uniform(0, 0.2) * r0, rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
    nu, nv = _rotate(yy - off * np.sin(oa), xx - off * np.cos(oa), na_)
    q = np.sqrt((nu / an) ** 2 + (nv / bn) ** 2)
    h_nuc = rng.uniform(2.0, 4.5) * np.sqrt(np.clip(1 - q * q, 0, None)) * np.clip((1 - q) * bn / px + 0.5, 0, 1)
    dn_c = rng.uniform(*p["dn"])
    opd = dn_c * h + dn_c * rng.uniform(0.8, 1.1) * h_nuc
    for _ in range(int(rng.integers(1, 5))):
        rr, ang = rng.uniform(0, 0.5), rng.uniform(0, 2 * np.pi)
        cu, cv = rr * an * np.cos(ang), rr * bn * np.sin(ang)
        opd += rng.uniform(0.02, 0.04) * _ball(np.hypot(nu - cu, nv - cv), rng.uniform(0.5, 1.2), px)
    n_gran = int(rng.integers(10, 60) * (r0 / 20.0) ** 2)
    for _ in range(n_gran):  # vesicles and lipid droplets around the nucleus
        ang, dist = rng.uniform(0, 2 * np.pi), an * rng.uniform(1.05, 1.9)
        gy, gx = off * np.sin(oa) + dist * np.sin(ang), off * np.cos(oa) + dist * np.cos(ang)
        opd += rng.uniform(0.02, 0.06) * _ball(np.hypot(yy - gy, xx - gx), rng.uniform(0.2, 0.6), px) * (s < 0.9)
    absorb = p["absorption_per_um"] * (h + h_nuc)
    return _patch(k0, opd, absorb), {"kind": "adherent", "diameter_um": round(2 * r0, 2),
                                     "nucleus_um": [round(2 * an, 2), round(2 * bn, 2)]}


def _rounded_cell(rng, px, k0, p) -> tuple[np.ndarray, dict]:
    """A rounded (mitotic or detaching) cell: a sphere 12-20 um, dense, with a nucleus-free rim."""
    r = rng.uniform(6.0, 10.0)
    yy, xx = _grid(int(np.ceil((r + 1) / px)) + 2, px)
    rho = np.hypot(yy, xx)
    dn = rng.uniform(0.012, 0.025)  # rounded cells swell: lower index than spread ones
    thick = _ball(rho, r, px)
    opd = dn * thick + 0.01 * _thin(rho - (r - 0.2), 0.15, px) * (rho < r + 0.5)
    return _patch(k0, opd, p["absorption_per_um"] * thick), {"kind": "rounded", "diameter_um": round(2 * r, 2)}


def mammalian(rng, shape, px, k0, n_cells, fixed) -> tuple[list, list, list, dict]:
    """Adherent mammalian cells on the glass (one layer) and a few rounded cells a few um above."""
    p = {"area_fraction": round(float(rng.uniform(0.15, 0.55)), 3), "dn": (0.018, 0.035),
         "absorption_per_um": round(float(rng.uniform(0.0005, 0.004)), 5),
         "rounded_fraction": round(float(rng.uniform(0.0, 0.12)), 3)}
    p.update({k: v for k, v in fixed.items() if k in p})
    area_um2 = shape[0] * shape[1] * px * px
    n = _count(n_cells, p["area_fraction"], area_um2, np.pi * 20.0**2 * 0.8, 20000)
    base = float(rng.uniform(-0.5, 0.5))
    depths = [base, base + float(rng.uniform(5.0, 8.0))]
    logt = [np.zeros(shape, np.complex64) for _ in range(2)]
    cells, placed = [], []
    for _ in range(n):
        rounded = rng.random() < p["rounded_fraction"]
        patch, info = (_rounded_cell if rounded else _mammalian_cell)(rng, px, k0, p)
        r_px = 0.45 * info["diameter_um"] / px
        y, x = _free_position(rng, shape, r_px, placed, tries=15)
        placed.append((y, x, r_px))
        layer = 1 if rounded else 0
        _stamp(logt[layer], y, x, patch)
        cells.append({"y_px": y, "x_px": x, **info, "depth_um": round(depths[layer], 3), "layer": layer})
    _add_debris(rng, logt, shape, k0, px, int(n * 0.2), (0.5, 2.5))
    p["dn"] = list(p["dn"])
    return logt, depths, cells, p


# ----------------------------------------------------------------------------- bacteria


def _rod(rng, px, k0, p, angle) -> tuple[np.ndarray, dict]:
    r = rng.uniform(0.4, 0.55)
    length = rng.uniform(2.0, 4.0)
    yy, xx = _grid(int(np.ceil((length / 2 + 0.6) / px)) + 2, px)
    u, v = _rotate(yy, xx, angle)
    d = _capsule_dist(u, v, length, r)
    thick = _ball(d, r, px)
    opd = rng.uniform(*p["dn"]) * thick + 0.006 * _thin(d - (r - 0.05), 0.05, px) * (d < r + 0.3)
    return _patch(k0, opd, p["absorption_per_um"] * thick), {"kind": "rod", "length_um": round(length, 2),
                                                             "width_um": round(2 * r, 2)}


def bacteria(rng, shape, px, k0, n_cells, fixed) -> tuple[list, list, list, dict]:
    """Rod bacteria (1 x 2-4 um) in clumps (locally aligned, overlapping) and a few loners or chains."""
    p = {"area_fraction": round(float(rng.uniform(0.02, 0.15)), 4), "dn": (0.03, 0.06),
         "absorption_per_um": round(float(rng.uniform(0.002, 0.02)), 4),
         "cluster_size": int(rng.integers(8, 60)), "loner_fraction": round(float(rng.uniform(0.05, 0.3)), 3)}
    p.update({k: v for k, v in fixed.items() if k in p})
    area_um2 = shape[0] * shape[1] * px * px
    n = _count(n_cells, p["area_fraction"], area_um2, 2.7, 20000)
    logt, depths = _layers(rng, shape, 2, 0.5)
    cells = []
    h_um, w_um = shape[0] * px, shape[1] * px
    done = 0
    while done < n:
        loner = rng.random() < p["loner_fraction"]
        chain = (not loner) and rng.random() < 0.2
        k = 1 if loner else int(min(n - done, max(2, rng.integers(4, 17) if chain else rng.poisson(p["cluster_size"]))))
        cy, cx = rng.uniform(0, h_um), rng.uniform(0, w_um)
        base_angle, spread = rng.uniform(0, np.pi), np.sqrt(k) * 0.9
        for j in range(k):
            if chain:
                y, x, ang = cy + 3.2 * j * np.sin(base_angle), cx + 3.2 * j * np.cos(base_angle), base_angle + rng.normal(0, 0.1)
            else:
                y, x, ang = cy + rng.normal(0, spread), cx + rng.normal(0, spread), base_angle + rng.normal(0, 0.6)
            patch, info = _rod(rng, px, k0, p, ang)
            layer = int(rng.integers(0, 2))
            yp, xp = int(round(y / px)), int(round(x / px))
            _stamp(logt[layer], yp, xp, patch)
            cells.append({"y_px": yp, "x_px": xp, **info, "cluster": "loner" if loner else ("chain" if chain else "clump"),
                          "depth_um": round(depths[layer], 3), "layer": layer})
        done += k
    _add_debris(rng, logt, shape, k0, px, int(n * 0.02), (0.2, 0.8))
    p["dn"] = list(p["dn"])
    return logt, list(depths), cells, p


# ----------------------------------------------------------------------------- confluent


def confluent(rng, shape, px, k0, n_cells, fixed) -> tuple[list, list, list, dict]:
    """A confluent epithelial-like monolayer: cells tile the field (Voronoi), thin at the junctions,
    domed over a nucleus with nucleoli; a few rounded cells on top."""
    from scipy import ndimage
    from scipy.spatial import cKDTree

    p = {"cell_diameter_um": round(float(rng.uniform(12.0, 30.0)), 2), "height_um": round(float(rng.uniform(3.0, 7.0)), 2),
         "junction_width_um": round(float(rng.uniform(1.0, 3.5)), 2), "dn": (0.018, 0.035),
         "absorption_per_um": round(float(rng.uniform(0.0005, 0.004)), 5), "rounded_fraction": round(float(rng.uniform(0, 0.04)), 3)}
    p.update({k: v for k, v in fixed.items() if k in p})
    h_um, w_um = shape[0] * px, shape[1] * px
    if n_cells == 0:
        p["dn"] = list(p["dn"])
        return [np.zeros(shape, np.complex64)], [0.0], [], p
    if n_cells:
        p["cell_diameter_um"] = round(float(np.sqrt(h_um * w_um / n_cells * 2 / np.sqrt(3))), 2)
    dcell = p["cell_diameter_um"]
    # Seeds on a jittered hexagonal lattice (um).
    rows = np.arange(0, h_um + dcell, dcell * np.sqrt(3) / 2)
    seeds = np.array([(y, x + (i % 2) * dcell / 2) for i, y in enumerate(rows) for x in np.arange(-dcell / 2, w_um + dcell, dcell)])
    seeds = seeds + rng.normal(0, 0.18 * dcell, seeds.shape)
    heights = p["height_um"] * rng.uniform(0.75, 1.25, len(seeds))
    f = max(1, int(round(0.4 / px)))
    ch, cw = -(-shape[0] // f), -(-shape[1] // f)
    gy, gx = np.mgrid[0:ch, 0:cw].astype(np.float32)
    pts = np.stack([(gy.ravel() * f + (f - 1) / 2) * px, (gx.ravel() * f + (f - 1) / 2) * px], 1)
    dist, idx = cKDTree(seeds).query(pts, k=2, workers=-1)
    s1, s2 = seeds[idx[:, 0]], seeds[idx[:, 1]]
    border = (dist[:, 1] ** 2 - dist[:, 0] ** 2) / (2 * np.maximum(np.hypot(*(s2 - s1).T), 1e-3))
    t = np.clip(border / p["junction_width_um"], 0, 1)
    hmax = heights[idx[:, 0]]
    h = (0.3 + (hmax - 0.3) * t * t * (3 - 2 * t)).reshape(ch, cw).astype(np.float32)
    if f > 1:
        h = ndimage.zoom(h, (shape[0] / ch, shape[1] / cw), order=1)[: shape[0], : shape[1]]
    h = ndimage.gaussian_filter(h, 0.3 / px + 0.5 * f)  # junctions are rounded, not creases
    dn_c = rng.uniform(*p["dn"])
    base = float(rng.uniform(-0.5, 0.5))
    depths = [base, base + float(rng.uniform(5.0, 8.0))]
    logt = [(-(p["absorption_per_um"] * h) + 1j * (k0 * dn_c * h)).astype(np.complex64), np.zeros(shape, np.complex64)]
    del h
    cells = []
    for sy, sx in seeds:
        y, x = int(round(sy / px)), int(round(sx / px))
        if not (-dcell / px < y < shape[0] + dcell / px and -dcell / px < x < shape[1] + dcell / px):
            continue
        an = dcell * rng.uniform(0.18, 0.26)
        bn = an * rng.uniform(0.7, 0.95)
        yy, xx = _grid(int(np.ceil((an + 1) / px)) + 2, px)
        nu, nv = _rotate(yy, xx, rng.uniform(0, np.pi))
        q = np.sqrt((nu / an) ** 2 + (nv / bn) ** 2)
        hn = rng.uniform(0.8, 2.5) * np.sqrt(np.clip(1 - q * q, 0, None)) * np.clip((1 - q) * bn / px + 0.5, 0, 1)
        opd = dn_c * rng.uniform(0.8, 1.1) * hn
        for _ in range(int(rng.integers(1, 4))):
            rr, ang = rng.uniform(0, 0.5), rng.uniform(0, 2 * np.pi)
            opd += rng.uniform(0.02, 0.04) * _ball(np.hypot(nu - rr * an * np.cos(ang), nv - rr * bn * np.sin(ang)),
                                                   rng.uniform(0.4, 1.0), px)
        _stamp(logt[0], y, x, _patch(k0, opd, p["absorption_per_um"] * hn))
        layer = 0
        if rng.random() < p["rounded_fraction"]:
            patch, _ = _rounded_cell(rng, px, k0, p)
            _stamp(logt[1], y, x, patch)
            layer = 1
        cells.append({"y_px": y, "x_px": x, "kind": "confluent" if layer == 0 else "rounded",
                      "diameter_um": dcell, "depth_um": round(depths[layer], 3), "layer": layer})
    _add_debris(rng, logt, shape, k0, px, int(len(cells) * 0.03), (0.5, 2.0))
    p["dn"] = list(p["dn"])
    return logt, depths, cells, p


# ----------------------------------------------------------------------------- dispatch


FAMILIES = ("protoplasts", "yeast", "mammalian", "bacteria", "confluent")


def build(family: str, rng: np.random.Generator, shape: tuple[int, int], px: float, k0: float,
          n_cells: int | None = None, fixed: dict | None = None) -> tuple[list[np.ndarray], list[float], list[dict], dict]:
    """Log-transmittance layers, layer depths (um), cells and the family's drawn parameters.

    k0 = 2*pi/lambda (1/um) converts optical path differences to phase; fixed holds parameters a
    preset pins (the others are drawn from rng for every day)."""
    fixed = dict(fixed or {})
    if family == "protoplasts":
        logt, depths, cells = protoplasts(rng, shape, px, k0, n_cells)
        return logt, depths, cells, {}
    fns = {"yeast": yeast, "mammalian": mammalian, "bacteria": bacteria, "confluent": confluent}
    if family not in fns:
        raise ValueError(f"unknown specimen family {family!r}")
    return fns[family](rng, shape, px, k0, n_cells, fixed)
