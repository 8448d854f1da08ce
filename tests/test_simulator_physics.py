"""Physics checks of the simulator's optics on tiny canvases (docs/simulator.md, "Physics checks").

Each check compares the Imager against what wave optics predicts and fails if the optics are wrong:
(a) the sign of dz (a flipped propagation or phase sign swaps bright and dark cores), (b) a pure
phase object has its lowest contrast in focus and inverts across it (a stray defocus moves the
minimum), (c) defocus blur scales with NA^2/lambda (a wrong pupil, wavelength or medium index in the
defocus term breaks the scaling).
"""

from __future__ import annotations

import numpy as np
import pytest

from microdeblur.microscope import Imager, Optics, source_points
from microdeblur.specimens import Specimen

N = 128


def _image(optics: Optics, phase: np.ndarray, z_um: float, depth_um: float = 0.0) -> np.ndarray:
    specimen = Specimen(layers=[np.exp(1j * phase).astype(np.complex64)], layer_depth_um=[depth_um])
    crop = (slice(0, N), slice(0, N))
    return Imager(specimen, optics).intensity(z_um, crop)


def _sphere_phase(optics: Optics, radius_um: float, dn: float) -> np.ndarray:
    """Phase of a sphere of index contrast dn (> 0: denser than the medium) at the canvas centre."""
    yy, xx = (np.mgrid[0:N, 0:N] - N // 2) * optics.pixel_um
    thick = 2 * np.sqrt(np.clip(radius_um**2 - yy**2 - xx**2, 0, None))
    return (2 * np.pi / optics.wavelength_um * dn * thick).astype(np.float32)


def _core(img: np.ndarray, optics: Optics, radius_um: float) -> float:
    """Mean intensity inside half the sphere's radius minus the empty-field level (1)."""
    yy, xx = (np.mgrid[0:N, 0:N] - N // 2) * optics.pixel_um
    return float(img[np.hypot(yy, xx) < 0.5 * radius_um].mean() - 1.0)


@pytest.mark.parametrize("dn", [0.004, -0.004])
def test_sign_of_dz_bright_core_beyond_focus(dn):
    """dz > 0 (focal plane beyond the specimen along the light path): a denser sphere focuses light
    like a weak lens, so its core is bright; dz < 0 it is dark. A less dense sphere does the opposite."""
    o = Optics()
    phase = _sphere_phase(o, 3.0, dn)
    beyond, before = _core(_image(o, phase, +4.0), o, 3.0), _core(_image(o, phase, -4.0), o, 3.0)
    sign = np.sign(dn)
    assert sign * beyond > 0.01 and sign * before < -0.01, (beyond, before)


def test_transport_of_intensity_matches_curvature():
    """Small dz: I(+dz) - I(-dz) = -(dz lambda / (pi n)) laplacian(phase) (transport of intensity)."""
    o = Optics(condenser_na=0.02, source_rings=0)  # near-coherent, so the TIE holds without source averaging
    phase = _sphere_phase(o, 4.0, 0.002)
    dz = 0.5
    diff = _image(o, phase, dz) - _image(o, phase, -dz)
    from scipy.ndimage import gaussian_filter, laplace

    sm = lambda a: gaussian_filter(a, 2.0)  # noqa: E731 - compare on the band both resolve
    lap = laplace(phase.astype(np.float64)) / o.pixel_um**2
    predicted = -dz * o.wavelength_um / (np.pi * o.medium_index) * lap
    c = np.corrcoef(sm(diff).ravel(), sm(predicted).ravel())[0, 1]
    gain = float(np.dot(sm(diff).ravel(), sm(predicted).ravel()) / np.dot(sm(predicted).ravel(), sm(predicted).ravel()))
    assert c > 0.95 and 0.8 < gain < 1.2, (c, gain)


def test_phase_object_contrast_minimal_in_focus_and_inverts():
    """A pure phase field placed at depth 1.5 um: contrast is lowest with the focal plane on it and the
    pattern inverts across it."""
    o = Optics()
    rng = np.random.default_rng(1)
    from scipy.ndimage import gaussian_filter

    phase = gaussian_filter(rng.normal(size=(N, N)), 2.0)
    phase = (0.3 * phase / phase.std()).astype(np.float32)
    depth = 1.5
    zs = depth + np.arange(-6.0, 6.01, 0.5)
    imgs = {float(z): _image(o, phase, float(z), depth) for z in zs}
    contrast = np.array([imgs[float(z)].std() for z in zs])
    assert abs(zs[int(np.argmin(contrast))] - depth) <= 0.5
    assert contrast[0] > 3 * contrast.min() and contrast[-1] > 3 * contrast.min()
    above, below = imgs[depth + 4.0] - 1, imgs[depth - 4.0] - 1
    assert np.corrcoef(above.ravel(), below.ravel())[0, 1] < -0.8


def _peak_defocus(optics: Optics) -> float:
    """dz (um) at which the central intensity change of a weak phase point is largest."""
    phase = np.zeros((N, N), np.float32)
    phase[N // 2, N // 2] = 0.05
    zmax = 3.0 * optics.medium_index * optics.wavelength_um / optics.na**2
    zs = np.linspace(0.02 * zmax, zmax, 60)
    specimen = Specimen(layers=[np.exp(1j * phase).astype(np.complex64)], layer_depth_um=[0.0])
    imager = Imager(specimen, optics)
    c = np.array([imager.intensity(float(z), (slice(N // 2, N // 2 + 1), slice(N // 2, N // 2 + 1)))[0, 0] - 1 for z in zs])
    k = int(np.argmax(np.abs(c)))
    k = min(max(k, 1), len(zs) - 2)
    y0, y1, y2 = np.abs(c[k - 1 : k + 2])  # parabolic refinement of the peak
    return float(zs[k] + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2) * (zs[1] - zs[0]))


def test_defocus_scales_with_na_squared_over_wavelength():
    """Two objectives, same condenser fill (0.5) and the same sampling in units of lambda/NA: the defocus
    of the strongest point contrast scales as lambda/NA^2 (paraxial optics; within 6 %)."""
    a = Optics(wavelength_um=0.60, na=0.25, condenser_na=0.125, magnification=1.0, camera_pixel_um=0.60 / 0.25 / 4)
    b = Optics(wavelength_um=0.45, na=0.50, condenser_na=0.25, magnification=1.0, camera_pixel_um=0.45 / 0.50 / 4)
    za, zb = _peak_defocus(a), _peak_defocus(b)
    predicted = (a.wavelength_um / a.na**2) / (b.wavelength_um / b.na**2)
    assert abs((za / zb) / predicted - 1) < 0.06, (za, zb, za / zb, predicted)


def test_condenser_offset_shifts_every_source_point():
    """Koehler misalignment moves the whole source pattern by offset x condenser radius."""
    o = Optics()
    p0, w0 = source_points(o)
    p1, w1 = source_points(Optics(condenser_offset=(0.25, -0.5)))
    r = o.condenser_na / o.wavelength_um
    assert np.allclose(p1 - p0, [0.25 * r, -0.5 * r], atol=1e-6) and np.array_equal(w0, w1)


@pytest.mark.parametrize("offset", [(0.0, 0.8), (-0.8, 0.0)])
def test_decentred_condenser_makes_the_image_walk_through_focus(offset):
    """Oblique (misaligned) illumination: the defocused image moves along the offset by dz tan(theta_o),
    the same direction DustShadow moves dust shadows (light travels towards +z)."""
    o = Optics(condenser_offset=offset)
    phase = _sphere_phase(o, 2.0, 0.01)
    yy, xx = np.mgrid[0:N, 0:N] - N // 2
    s = np.hypot(*offset) * o.condenser_na / o.medium_index
    expected = 10.0 * s / np.sqrt(1 - s * s)
    for z in (-10.0, 10.0):
        d = np.abs(_image(o, phase, z) - 1)
        shift = np.array([(d * yy).sum(), (d * xx).sum()]) / d.sum() * o.pixel_um
        along = float(shift @ np.asarray(offset)) / np.hypot(*offset)
        assert abs(along - np.sign(z) * expected) < 0.3 * expected, (z, shift, expected)
