"""Tile grid, blend weights and seamless stitching."""

import numpy as np
import pytest
from scipy import ndimage

from microdeblur.engine import predict_tiled
from microdeblur.tiling import axis_weights, extract_tiles, stitch, tile_grid, tile_starts

SHAPES = [(1, 1), (5, 200), (50, 70), (127, 129), (128, 128), (129, 300), (256, 384), (300, 200), (210, 333)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("overlap", [0, 1, 48, 100])
def test_identity_round_trip(shape, overlap):
    img = np.random.default_rng(0).random(shape, dtype=np.float32)
    out = predict_tiled(img, lambda t: t, tile=128, overlap=overlap, batch_size=7)
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(out, img, atol=1e-6)


@pytest.mark.parametrize("length", [1, 128, 129, 200, 210, 1024, 1031])
@pytest.mark.parametrize("overlap", [0, 16, 48, 100])
def test_weights_partition_of_unity(length, overlap):
    starts = tile_starts(max(length, 128), 128, overlap)
    assert starts[0] == 0 and starts[-1] + 128 == max(length, 128)
    if len(starts) > 1:
        assert np.all(starts[:-1] + 128 - starts[1:] >= overlap)
    total = np.zeros(max(length, 128))
    for s, w in zip(starts, axis_weights(starts, 128)):
        assert np.all(w >= 0)
        total[s:s + 128] += w
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_weights_2d_sum_to_one_and_flat_on_borders():
    grid = tile_grid((300, 420), 128, 48)
    total = np.zeros(grid.padded_shape)
    for t in grid:
        total[t.slices] += t.weight
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    first = grid[0].weight
    assert first[0, 0] == 1.0 and first[0, 50] == 1.0  # no ramp along the image border
    assert first[-1, 10] == 0.0 and first[10, -1] == 0.0  # zero on inner edges


@pytest.mark.parametrize("shape", [(50, 70), (128, 200), (300, 200), (257, 391)])
def test_translation_equivariant_fn_is_seamless(shape):
    """A 3x3 convolution (mirror borders) tiled equals the whole-image result everywhere.

    Tile outputs are wrong only on a tile's inner edge pixels, where the blend weight is 0.
    """
    kernel = np.array([[1, 2, 1], [2, -12, 2], [1, 2, 1]], dtype=np.float32)
    img = np.random.default_rng(1).random(shape, dtype=np.float32)

    def conv(t):
        return np.stack([ndimage.convolve(x[0], kernel, mode="mirror")[None] for x in t])

    whole = ndimage.convolve(img, kernel, mode="mirror")
    tiled = predict_tiled(img, conv, tile=128, overlap=48, batch_size=5)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_extract_and_stitch_shapes():
    grid = tile_grid((300, 200), 128, 48)
    tiles = extract_tiles(np.zeros((300, 200)), grid)
    assert tiles.shape == (len(grid), 128, 128) and tiles.dtype == np.float32
    assert grid.rows_cols == (4, 2)  # ceil((300-48)/80), ceil((200-48)/80)
    with pytest.raises(ValueError):
        stitch(tiles, grid, (10, 10))
    with pytest.raises(ValueError):
        extract_tiles(np.zeros((10, 10)), grid)
    with pytest.raises(ValueError):
        tile_grid((100, 100), 128, 128)


@pytest.mark.parametrize("length", [128, 144, 200, 512, 768, 1024])
@pytest.mark.parametrize("overlap", [0, 16, 32, 48])
def test_aligned_starts_are_on_the_stride_and_keep_the_overlap(length, overlap):
    padded = -(-length // 16) * 16
    starts = tile_starts(padded, 128, overlap, align=16)
    assert starts[0] == 0 and starts[-1] + 128 == padded and np.all(starts % 16 == 0)
    if len(starts) > 1:
        assert np.all(starts[:-1] + 128 - starts[1:] >= overlap)


def test_aligned_grid_counts_for_a_working_frame():
    assert tile_grid((768, 1024), 128, 32, align=16).rows_cols == (8, 11)  # 88 tiles (unaligned 48 px: 117)
    assert tile_grid((768, 1024), 128, 48, align=16).rows_cols == (9, 13)


@pytest.mark.parametrize("shape", SHAPES + [(130, 131), (767, 1023)])
@pytest.mark.parametrize("overlap", [0, 32, 48])
def test_aligned_identity_round_trip_and_pad_only_at_the_end(shape, overlap):
    img = np.random.default_rng(2).random(shape, dtype=np.float32)
    grid = tile_grid(shape, 128, overlap, align=16)
    for n, (before, after) in zip(shape, grid.pad):
        assert before == 0 or n < 128  # the image origin stays on the stride
        assert (n + before + after) % 16 == 0
    out = predict_tiled(img, lambda t: t, tile=128, overlap=overlap, batch_size=7, align=16)
    np.testing.assert_allclose(out, img, atol=1e-6)


@pytest.mark.parametrize("shape", [(128, 200), (257, 391)])
def test_aligned_translation_equivariant_fn_is_seamless(shape):
    kernel = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float32)
    img = np.random.default_rng(3).random(shape, dtype=np.float32)

    def conv(t):
        return np.stack([ndimage.convolve(x[0], kernel, mode="mirror")[None] for x in t])

    tiled = predict_tiled(img, conv, tile=128, overlap=32, batch_size=5, align=16)
    np.testing.assert_allclose(tiled, ndimage.convolve(img, kernel, mode="mirror"), atol=1e-5)


def test_bad_align_is_refused():
    with pytest.raises(ValueError):
        tile_grid((300, 300), 128, 32, align=48)
