"""Window pooling (sppcaffe.detection.window_pool) against a bin-at-a-time
loop and against the SPP layer on whole-map windows; deduplication; the
backward pass; and the WindowSPP layer (mapping, batches, gradients)."""
import time

import numpy as np
import pytest

from gradient_check import check_gradient, layer_param
from sppcaffe import Net, TEST
from sppcaffe import spp_geometry as geometry
from sppcaffe.blob import Blob
from sppcaffe.detection import mapping
from sppcaffe.detection import window_pool as wp
from sppcaffe.layer import LayerError, create_layer
# Importing it registers WindowSPP (until sppcaffe/layers/__init__.py does).
from sppcaffe.layers import window_spp as window_spp_module
from sppcaffe.proto import caffe_pb2

LEVELS = [6, 3, 2, 1]


def naive_pool(x, windows, levels, pool):
    """One window, one level, one bin at a time."""
    rows = []
    for x1, y1, x2, y2 in windows:
        parts = []
        for n in levels:
            rb = geometry.adaptive_bins(y2 - y1 + 1, n)
            cb = geometry.adaptive_bins(x2 - x1 + 1, n)
            y = np.empty((x.shape[0], n, n))
            for i in range(n):
                for j in range(n):
                    cell = x[:, y1 + rb.starts[i]:y1 + rb.ends[i],
                             x1 + cb.starts[j]:x1 + cb.ends[j]]
                    y[:, i, j] = cell.max(axis=(1, 2)) if pool == "max" else cell.mean(axis=(1, 2))
            parts.append(y.reshape(-1))
        rows.append(np.concatenate(parts))
    return np.array(rows).reshape(len(windows), -1)


def random_windows(count, map_hw, rng):
    h, w = map_hw
    x1, y1 = rng.integers(0, w, count), rng.integers(0, h, count)
    x2 = np.minimum(w - 1, x1 + rng.integers(0, w, count))
    y2 = np.minimum(h - 1, y1 + rng.integers(0, h, count))
    return np.stack([x1, y1, x2, y2], axis=1)


def distinct(shape, seed=0):
    """Values 0.05 apart: no ties, and a finite-difference step keeps every argmax."""
    values = np.random.default_rng(seed).permutation(int(np.prod(shape))) * 0.05
    return (values - values.mean()).reshape(shape).astype(np.float32)


@pytest.mark.parametrize("pool", wp.POOLS)
def test_matches_a_bin_at_a_time_loop(pool):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 13, 17)).astype(np.float32)
    windows = np.concatenate([
        random_windows(60, (13, 17), rng),
        [[0, 0, 16, 12], [4, 7, 4, 7], [3, 2, 4, 2], [0, 12, 16, 12]],   # whole, 1 cell, thin
    ])
    ours = wp.pool_windows(x, windows, LEVELS, pool)
    assert ours.shape == (len(windows), 5 * 50) and ours.dtype == np.float32
    tolerance = 0 if pool == "max" else 1e-6
    np.testing.assert_allclose(ours, naive_pool(x, windows, LEVELS, pool), rtol=tolerance,
                               atol=tolerance)


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_whole_map_window_is_the_spp_layer(pool):
    x = np.random.default_rng(1).standard_normal((1, 4, 11, 14)).astype(np.float32)
    layer = create_layer(layer_param(
        f'name: "spp" type: "SPP" spp_param {{ pool: {pool} method: ADAPTIVE '
        f'levels: 6 levels: 3 levels: 2 levels: 1 }}'), caffe_pb2.TEST)
    bottom, top = [Blob(x.shape)], [Blob()]
    bottom[0].data[...] = x
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    ours = wp.pool_windows(x[0], [[0, 0, 13, 10]], LEVELS, pool.lower())
    if pool == "MAX":
        np.testing.assert_array_equal(ours, top[0].data)
    else:
        np.testing.assert_allclose(ours, top[0].data, rtol=1e-6, atol=1e-6)
    # Same gradient too, on a map full of ties (MAX: the first maximum in
    # row-major order takes it, in both).
    x_ties = np.random.default_rng(2).integers(0, 3, x.shape).astype(np.float32)
    bottom[0].data[...] = x_ties
    layer.forward(bottom, top)
    top[0].diff[...] = np.random.default_rng(3).uniform(-1, 1, top[0].shape)
    layer.backward(top, [True], bottom)
    grad = wp.pool_windows_backward(x_ties[0], [[0, 0, 13, 10]], LEVELS, top[0].diff,
                                    pool.lower())
    np.testing.assert_allclose(grad, bottom[0].diff[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("values", [[0, 1, 2, 3], [-2.5, -0.0, 0.0, 1e-3, -1e30]])
def test_argmax_names_the_first_maximum_of_each_bin(values):
    # many ties, negative values, and -0.0 == 0.0
    x = np.random.default_rng(4).choice(np.float32(values), (3, 9, 10))
    windows = random_windows(40, (9, 10), np.random.default_rng(5))
    values, argmax = wp.pool_windows(x, windows, LEVELS, "max", with_argmax=True)
    channel = np.concatenate([np.repeat(np.arange(3), n * n) for n in LEVELS])
    np.testing.assert_array_equal(x.reshape(3, -1)[channel[None, :], argmax], values)
    for r, (x1, y1, x2, y2) in enumerate(windows):        # the 1x1 level: whole window
        window = x[:, y1:y2 + 1, x1:x2 + 1].reshape(3, -1)
        first = np.argmax(window, axis=1)                   # first in row-major order
        w = x2 - x1 + 1
        expected = (y1 + first // w) * 10 + x1 + first % w
        np.testing.assert_array_equal(argmax[r, -3:], expected)


@pytest.mark.parametrize("pool", wp.POOLS)
def test_backward_is_the_adjoint_of_forward(pool):
    # AVE is linear and MAX a gather at fixed argmax: <pool(x), g> = <x, pool^T(g)>.
    rng = np.random.default_rng(6)
    x = distinct((4, 10, 12), seed=7)
    windows = random_windows(30, (10, 12), rng)
    windows[5] = windows[9]                                   # shared cells add up
    g = rng.uniform(-1, 1, (30, 4 * 50))
    y = wp.pool_windows(x, windows, LEVELS, pool)
    grad = wp.pool_windows_backward(x, windows, LEVELS, g, pool)
    assert grad.shape == x.shape and grad.dtype == np.float32
    assert np.sum(y * g) == pytest.approx(np.sum(x.astype(np.float64) * grad), rel=1e-5)


def test_deduplicated_pooling():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 8, 9)).astype(np.float32)
    base = random_windows(10, (8, 9), rng)
    windows = base[rng.integers(0, 10, 50)]
    features, inverse = wp.pool_unique_windows(x, windows, LEVELS)
    unique = np.unique(windows, axis=0)
    assert len(features) == len(unique) <= 10
    np.testing.assert_array_equal(features[inverse], wp.pool_windows(x, windows, LEVELS))
    # extra key columns (an image or scale index) take part in the key
    keyed = np.concatenate([rng.integers(0, 2, (50, 1)), windows], axis=1)
    keys, inverse = wp.unique_windows(keyed)
    np.testing.assert_array_equal(keys[inverse], keyed)
    # the gradient of features[inverse]: rows added up per unique window
    g = rng.standard_normal((50, 7))
    summed = wp.sum_duplicates(g, inverse)
    expected = np.zeros((len(keys), 7))
    np.add.at(expected, inverse, g)
    np.testing.assert_allclose(summed, expected)


@pytest.mark.parametrize("windows, message", [
    ([[0, 0, 9, 3]], "outside the 4x9 map"),
    ([[-1, 0, 2, 2]], "outside"),
    ([[3, 0, 2, 2]], "empty"),
    ([[0, 0, 2.5, 2]], "whole map cells"),
    ([[0, 0, 2]], r"\(R, 4\)"),
])
def test_bad_windows(windows, message):
    with pytest.raises(ValueError, match=message):
        wp.pool_windows(np.zeros((2, 4, 9), np.float32), windows, LEVELS)


def test_no_windows_and_bad_settings():
    x = np.zeros((2, 4, 9), np.float32)
    assert wp.pool_windows(x, np.zeros((0, 4)), LEVELS).shape == (0, 100)
    with pytest.raises(ValueError, match="unknown pooling"):
        wp.pool_windows(x, [[0, 0, 1, 1]], LEVELS, "sum")
    with pytest.raises(ValueError, match="at least 1 bin"):
        wp.pool_windows(x, [[0, 0, 1, 1]], [2, 0])
    with pytest.raises(ValueError, match="only MAX"):
        wp.pool_windows(x, [[0, 0, 1, 1]], LEVELS, "ave", with_argmax=True)


@pytest.mark.slow
@pytest.mark.parametrize("pool", wp.POOLS)
def test_speed_of_2000_windows_on_a_688_scale_map(pool):
    # ZF-5 conv5 of a 688 x 917 image: 256 x 43 x 57.  Target < 0.2 s (2 cores);
    # the bound leaves room for a busy machine.
    rng = np.random.default_rng(9)
    x = rng.random((256, 43, 57)).astype(np.float32)
    windows = random_windows(2000, (43, 57), rng)
    out = np.empty((2000, 256 * 50), np.float32)
    wp.pool_windows(x, windows, LEVELS, pool, out=out)
    best = min(_timed(lambda: wp.pool_windows(x, windows, LEVELS, pool, out=out)) for _ in range(3))
    assert best < 1.0


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---- the WindowSPP layer ------------------------------------------------------

def window_spp(settings="pool: MAX method: ADAPTIVE levels: 3 levels: 2 levels: 1", name="wspp"):
    return create_layer(layer_param(
        f'name: "{name}" type: "WindowSPP" spp_param {{ {settings} }}'), caffe_pb2.TRAIN)


def layer_blobs(x, rois):
    bottom = [Blob(x.shape), Blob(np.shape(rois))]
    bottom[0].data[...] = x
    bottom[1].data[...] = rois
    return bottom, [Blob()]


ROIS = np.array([
    # batch, x1, y1, x2, y2 (pixels; S = 16)
    [0, 0, 0, 111, 79],
    [1, 20, 5, 70, 60],
    [0, 33, 17, 95, 70],
    [1, 0, 0, 15, 15],
    [0, 34, 18, 92, 68],     # same cells as row 2: pooled once
    [1, 40, 40, 41, 41],     # smaller than a cell
], np.float32)


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_layer_pools_the_mapped_windows_of_each_image(pool):
    x = distinct((2, 3, 5, 7))
    layer = window_spp(f"pool: {pool} method: ADAPTIVE levels: 3 levels: 2 levels: 1")
    bottom, top = layer_blobs(x, ROIS)
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    assert top[0].shape == (6, 3 * 14)
    cells = mapping.boxes_to_cells(ROIS[:, 1:], (5, 7))
    assert cells[2].tolist() == cells[4].tolist()
    for r, (image, cell) in enumerate(zip(ROIS[:, 0].astype(int), cells)):
        expected = wp.pool_windows(x[image], [cell], [3, 2, 1], pool.lower())
        np.testing.assert_array_equal(top[0].data[r:r + 1], expected)


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_layer_gradient(pool):
    layer = window_spp(f"pool: {pool} method: ADAPTIVE levels: 3 levels: 2 levels: 1")
    bottom, top = layer_blobs(distinct((2, 2, 5, 7), seed=1), ROIS)
    checked = check_gradient(layer, bottom, top, check_bottom=[0])
    assert checked == bottom[0].count
    assert not bottom[1].diff.any()


def test_layer_settings():
    bottom, top = layer_blobs(distinct((1, 2, 5, 7)), ROIS[:1])
    with pytest.raises(LayerError, match="'wspp_bad'.*ADAPTIVE.*PAPER"):
        window_spp("method: PAPER levels: 2", name="wspp_bad").setup(bottom, top)
    with pytest.raises(LayerError, match="ADAPTIVE.*CAFFE"):
        window_spp("pyramid_height: 2").setup(bottom, top)
    with pytest.raises(LayerError, match="STOCHASTIC"):
        window_spp("pool: STOCHASTIC method: ADAPTIVE levels: 2").setup(bottom, top)
    layer = window_spp("method: ADAPTIVE pyramid_height: 3")     # levels 1, 2, 4
    layer.setup(bottom, top)
    assert layer.levels == [1, 2, 4] and top[0].shape == (1, 2 * 21)
    assert (layer.stride, layer.mapping) == (16, mapping.PAPER)


def test_layer_reads_the_mapping_field_once_the_schema_has_it():
    # What spp_param looks like once protos/caffe.proto has window_mapping.
    from types import SimpleNamespace as Fake
    enum = Fake(values_by_number={0: Fake(name="APPENDIX_MAPPING"),
                                  1: Fake(name="RELEASED_MAPPING")})
    descriptor = Fake(fields_by_name={"window_mapping": Fake(enum_type=enum)})
    for value, name in ((0, mapping.PAPER), (1, mapping.RELEASED)):
        param = Fake(DESCRIPTOR=descriptor, window_mapping=value)
        assert window_spp_module._window_mapping(param) == name
    assert window_spp_module._window_mapping(caffe_pb2.SPPParameter()) == mapping.PAPER


@pytest.mark.parametrize("rois, message", [
    ([[2, 0, 0, 10, 10]], "batch index 2"),
    ([[0.5, 0, 0, 10, 10]], "batch index 0.5"),
    ([[0, 10, 0, 5, 10]], "x2 >= x1"),
])
def test_layer_bad_windows(rois, message):
    layer = window_spp()
    bottom, top = layer_blobs(distinct((2, 2, 5, 7)), np.array(rois, np.float32))
    layer.setup(bottom, top)
    with pytest.raises(LayerError, match=message):
        layer.forward(bottom, top)


def test_layer_rejects_rows_of_other_than_five_values():
    bottom, top = layer_blobs(distinct((1, 2, 5, 7)), np.zeros((3, 4), np.float32))
    with pytest.raises(LayerError, match="batch_index, x1, y1, x2, y2"):
        window_spp().setup(bottom, top)


def test_layer_in_a_net(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text("""
        layer { name: "data" type: "Input" top: "conv5" top: "rois"
                input_param { shape { dim: 1 dim: 3 dim: 5 dim: 7 } shape { dim: 4 dim: 5 } } }
        layer { name: "spp" type: "WindowSPP" bottom: "conv5" bottom: "rois" top: "spp"
                spp_param { pool: MAX method: ADAPTIVE levels: 2 levels: 1 } }
    """)
    net = Net(str(path), TEST)
    x = distinct((1, 3, 5, 7))
    rois = np.array([[0, 0, 0, 111, 79], [0, 16, 16, 47, 47], [0, 0, 0, 0, 0],
                     [0, 50, 10, 90, 70]], np.float32)
    net.forward(conv5=x, rois=rois)
    cells = mapping.boxes_to_cells(rois[:, 1:], (5, 7))
    np.testing.assert_array_equal(net.blobs["spp"].data, wp.pool_windows(x[0], cells, [2, 1]))
    # another number of windows: the net reshapes
    net.blobs["rois"].reshape(2, 5)
    net.forward(conv5=x, rois=rois[:2])
    assert net.blobs["spp"].data.shape == (2, 15)
