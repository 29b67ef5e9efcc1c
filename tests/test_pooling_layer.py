"""Pooling layer: Caffe's semantics (output size, padding rules, AVE divisor,
argmax ties), gradients, and the BVLC fixture tests/golden/pool."""
import numpy as np
import pytest
from google.protobuf import text_format

from golden_util import DATA_TOL, DIFF_TOL, assert_close, case_path, load_expected
from gradient_check import check_gradient, layer_param
from sppcaffe.blob import Blob
from sppcaffe.layer import LayerError, create_layer
from sppcaffe.layers.pooling import ave_pool_backward, ave_pool_forward, max_pool_forward
from sppcaffe.proto import caffe_pb2
from sppcaffe.spp_geometry import pooled_size


def pooling(settings, name="pool"):
    text = f'name: "{name}" type: "Pooling" pooling_param {{ {settings} }}'
    return create_layer(layer_param(text), caffe_pb2.TRAIN)


def run(settings, x, tops=1):
    layer = pooling(settings)
    bottom = [Blob(x.shape)]
    bottom[0].data[...] = x
    top = [Blob() for _ in range(tops)]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    return layer, bottom, top


def backward(layer, bottom, top, dy):
    top[0].diff[...] = dy
    bottom[0].diff[...] = 7.0           # backward must overwrite, not accumulate
    layer.backward(top, [True], bottom)
    return bottom[0].diff


def grid(h, w):
    return np.arange(h * w, dtype=np.float32).reshape(1, 1, h, w)


def distinct(shape, seed=0):
    """Values 0.05 apart, so a finite-difference step cannot change an argmax."""
    values = np.random.default_rng(seed).permutation(int(np.prod(shape))) * 0.05
    return (values - values.mean()).reshape(shape).astype(np.float32)


# ---- output size ------------------------------------------------------

@pytest.mark.parametrize("round_mode, expected", [
    ("CEIL", [[6, 8, 9], [16, 18, 19], [21, 23, 24]]),
    ("FLOOR", [[6, 8], [16, 18]]),
])
def test_round_mode_decides_partial_windows(round_mode, expected):
    _, _, top = run(f"pool: MAX kernel_size: 2 stride: 2 round_mode: {round_mode}", grid(5, 5))
    np.testing.assert_array_equal(top[0].data[0, 0], expected)


def test_window_starting_in_the_padding_is_dropped():
    # 3x3, kernel 2, stride 2, pad 1: ceil((3 + 2 - 2) / 2) + 1 = 3 windows, but
    # the third starts at padded row 4 >= 3 + 1, inside the bottom padding.
    assert pooled_size(3, 2, 2, 1) == 2
    assert pooled_size(3, 2, 2, 1, drop_padding_window=False) == 3
    _, _, top = run("pool: MAX kernel_size: 2 stride: 2 pad: 1", grid(3, 3))
    np.testing.assert_array_equal(top[0].data[0, 0], [[0, 2], [6, 8]])
    # AVE: every window spans 2 rows of the padded map -> divisor 4.
    _, _, top = run("pool: AVE kernel_size: 2 stride: 2 pad: 1", grid(3, 3))
    np.testing.assert_allclose(top[0].data[0, 0], [[0 / 4, 3 / 4], [9 / 4, 24 / 4]])


def test_ave_divisor_counts_padding_but_not_the_overhang():
    # 4 cells, kernel 3, stride 2, pad 1: windows start at -1, 1, 3 and end at
    # 2, 4, min(6, 4 + 1) = 5 -> divisors 3, 3, 2; cells read: 2, 3, 1.
    _, _, top = run("pool: AVE kernel_size: 3 stride: 2 pad: 1", np.ones((1, 1, 4, 4), np.float32))
    per_axis = np.array([2 / 3, 3 / 3, 1 / 2])
    np.testing.assert_allclose(top[0].data[0, 0], np.outer(per_axis, per_axis), rtol=1e-6)


def test_rectangular_kernel_stride_and_pad():
    _, _, top = run("pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 "
                    "pad_h: 1 pad_w: 0", grid(5, 7))
    # rows: ceil((5 + 2 - 3) / 2) + 1 = 3; cols: ceil((7 - 2) / 3) + 1 = 3
    assert top[0].shape == (1, 1, 3, 3)
    # window (1, 2): rows 1..3, cols 6..7 clipped to 6 -> max at (3, 6) = 27
    assert top[0].data[0, 0, 1, 2] == 27


def test_global_pooling():
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 5)).astype(np.float32)
    _, _, top = run("pool: MAX global_pooling: true", x, tops=2)
    np.testing.assert_array_equal(top[0].data[..., 0, 0], x.max(axis=(2, 3)))
    np.testing.assert_array_equal(top[1].data[..., 0, 0], x.reshape(2, 3, -1).argmax(axis=2))
    _, _, top = run("pool: AVE global_pooling: true", x)
    np.testing.assert_allclose(top[0].data[..., 0, 0], x.mean(axis=(2, 3)), rtol=1e-6)


def test_reshape_follows_the_input_size():
    layer, bottom, top = run("pool: MAX kernel_size: 3 stride: 2", grid(7, 7))
    assert top[0].shape == (1, 1, 3, 3)
    bottom[0].reshape(2, 1, 10, 6)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    assert top[0].shape == (2, 1, 5, 3)


# ---- argmax -------------------------------------------------------------

def test_first_maximum_in_row_major_order_wins_ties():
    x = np.array([[1, 5, 0, 0],
                  [5, 5, 0, 0],
                  [0, 0, 3, 3],
                  [0, 0, 3, 3]], np.float32).reshape(1, 1, 4, 4)
    layer, bottom, top = run("pool: MAX kernel_size: 2 stride: 2", x, tops=2)
    # Caffe's mask top: plane index h * W + w of the chosen cell, as float.
    np.testing.assert_array_equal(top[1].data[0, 0], [[1, 2], [8, 10]])
    dx = backward(layer, bottom, top, np.ones((1, 1, 2, 2), np.float32))
    expected = np.zeros((4, 4), np.float32)
    expected[0, 1] = expected[0, 2] = expected[2, 0] = expected[2, 2] = 1
    np.testing.assert_array_equal(dx[0, 0], expected)


def test_overlapping_windows_add_their_gradients():
    # Constant input: every 3x3 window (stride 1) picks its top-left cell.
    layer, bottom, top = run("pool: MAX kernel_size: 3 stride: 1",
                             np.zeros((1, 1, 4, 4), np.float32))
    dx = backward(layer, bottom, top, np.array([[1, 2], [3, 4]], np.float32).reshape(1, 1, 2, 2))
    expected = np.zeros((4, 4), np.float32)
    expected[:2, :2] = [[1, 2], [3, 4]]
    np.testing.assert_array_equal(dx[0, 0], expected)


@pytest.mark.parametrize("settings", ["pool: MAX kernel_size: 3 stride: 2",
                                      "pool: MAX kernel_size: 2 stride: 1 pad: 1",
                                      "pool: MAX global_pooling: true"])
def test_test_phase_finds_winners_only_when_backward_runs(settings):
    """A TEST net skips the argmax in forward (detection's conv5 at 688:
    pool1 three times faster) and recovers it if backward does run."""
    x = np.round(distinct((2, 3, 7, 8)) * 4) / 4        # ties included
    train_layer, train_bottom, train_top = run(settings, x)
    test_layer = create_layer(layer_param(f'name: "pool" type: "Pooling" pooling_param {{ {settings} }}'),
                              caffe_pb2.TEST)
    bottom, top = [Blob(x.shape)], [Blob()]
    bottom[0].data[...] = x
    test_layer.setup(bottom, top)
    test_layer.forward(bottom, top)
    assert not test_layer._argmax_of_forward
    np.testing.assert_array_equal(top[0].data, train_top[0].data)
    dy = np.random.default_rng(0).standard_normal(top[0].shape).astype(np.float32)
    np.testing.assert_array_equal(backward(test_layer, bottom, top, dy),
                                  backward(train_layer, train_bottom, train_top, dy))


def test_backward_reads_the_mask_top():
    layer, bottom, top = run("pool: MAX kernel_size: 2 stride: 2", grid(2, 2), tops=2)
    top[1].data[...] = 0                 # as in Caffe, the mask decides the route
    dx = backward(layer, bottom, top, np.full((1, 1, 1, 1), 2, np.float32))
    np.testing.assert_array_equal(dx[0, 0], [[2, 0], [0, 0]])


# ---- against a direct transcription of Caffe's loops ------------------------

def caffe_reference(x, kernel, stride, pad, out, is_max, dy):
    """Caffe's Forward_cpu/Backward_cpu, loop for loop (the oracle)."""
    n, c, h, w = x.shape
    y = np.zeros((n, c) + out, np.float32)
    dx = np.zeros_like(x)
    for ph in range(out[0]):
        for pw in range(out[1]):
            hs, ws = ph * stride[0] - pad[0], pw * stride[1] - pad[1]
            if is_max:
                he, we = min(hs + kernel[0], h), min(ws + kernel[1], w)
                hs, ws = max(hs, 0), max(ws, 0)
                win = x[:, :, hs:he, ws:we].reshape(n, c, -1)
                best = win.argmax(axis=2)
                y[:, :, ph, pw] = win.max(axis=2)
                for i in range(n):
                    for j in range(c):
                        r, q = divmod(int(best[i, j]), we - ws)
                        dx[i, j, hs + r, ws + q] += dy[i, j, ph, pw]
            else:
                he = min(hs + kernel[0], h + pad[0])
                we = min(ws + kernel[1], w + pad[1])
                size = (he - hs) * (we - ws)
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                y[:, :, ph, pw] = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) / size
                dx[:, :, hs:he, ws:we] += (dy[:, :, ph, pw] / size)[:, :, None, None]
    return y, dx


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("shape, kernel, stride, pad, ceil_mode", [
    ((2, 3, 7, 10), (3, 3), (2, 2), (1, 1), True),
    ((1, 2, 8, 8), (2, 2), (2, 2), (0, 0), True),
    ((1, 2, 9, 6), (3, 2), (2, 3), (0, 1), True),
    ((2, 1, 6, 9), (4, 3), (1, 2), (2, 0), False),
    ((1, 2, 5, 5), (3, 3), (3, 3), (1, 1), True),
    ((1, 1, 13, 13), (2, 2), (1, 1), (0, 0), True),
])
def test_matches_caffe_loops(pool, shape, kernel, stride, pad, ceil_mode):
    rng = np.random.default_rng(5)
    x = np.round(rng.standard_normal(shape), 1).astype(np.float32)      # with ties
    out = tuple(pooled_size(s, k, st, p, ceil_mode, pad != (0, 0))
                for s, k, st, p in zip(shape[2:], kernel, stride, pad))
    dy = rng.standard_normal(shape[:2] + out).astype(np.float32)
    settings = (f"pool: {pool} kernel_h: {kernel[0]} kernel_w: {kernel[1]} stride_h: {stride[0]} "
                f"stride_w: {stride[1]} pad_h: {pad[0]} pad_w: {pad[1]} "
                f"round_mode: {'CEIL' if ceil_mode else 'FLOOR'}")
    layer, bottom, top = run(settings, x)
    y_ref, dx_ref = caffe_reference(x, kernel, stride, pad, out, pool == "MAX", dy)
    np.testing.assert_allclose(top[0].data, y_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(backward(layer, bottom, top, dy), dx_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape, kernel, stride, pad, ceil_mode", [
    ((2, 3, 7, 10), (3, 3), (2, 2), (1, 1), True),
    ((1, 2, 9, 6), (3, 2), (2, 3), (0, 1), True),
    ((2, 1, 6, 9), (4, 3), (1, 2), (2, 0), False),
    ((1, 2, 5, 5), (3, 3), (3, 3), (1, 1), True),
])
@pytest.mark.parametrize("threads", [1, 3])
def test_max_without_argmax_matches_caffe_loops(monkeypatch, shape, kernel, stride, pad,
                                                ceil_mode, threads):
    """The flat-window path (TEST nets' MAX), in blocks of one plane on
    several threads, and whole."""
    import sppcaffe.im2col as im2col_module
    import sppcaffe.layers.pooling as pooling_module
    rng = np.random.default_rng(6)
    x = np.round(rng.standard_normal(shape), 1).astype(np.float32)
    out = tuple(pooled_size(s, k, st, p, ceil_mode, pad != (0, 0))
                for s, k, st, p in zip(shape[2:], kernel, stride, pad))
    y_ref, _ = caffe_reference(x, kernel, stride, pad, out, True, np.zeros(shape[:2] + out))
    whole, _ = max_pool_forward(x, kernel, stride, pad, out, with_argmax=False)
    monkeypatch.setattr(pooling_module, "_BLOCK_BYTES", 1)
    monkeypatch.setattr(im2col_module, "_MIN_PARALLEL_ELEMENTS", 1)
    monkeypatch.setattr(im2col_module, "_WORKERS", threads)
    blocked, _ = max_pool_forward(x, kernel, stride, pad, out, with_argmax=False)
    np.testing.assert_array_equal(whole, y_ref.astype(np.float32))
    np.testing.assert_array_equal(blocked, whole)


def test_module_functions_work_without_a_layer():
    x = distinct((2, 3, 6, 7))
    y, argmax = max_pool_forward(x, (3, 3), (2, 2), (1, 1), (3, 4))
    assert argmax.dtype == np.int32
    planes = x.reshape(2, 3, -1)
    np.testing.assert_array_equal(np.take_along_axis(planes, argmax.reshape(2, 3, -1), 2),
                                  y.reshape(2, 3, -1))
    avg = ave_pool_forward(x, (3, 3), (2, 2), (1, 1), (3, 4))
    dx = np.ones_like(x)
    ave_pool_backward(np.zeros_like(avg), (3, 3), (2, 2), (1, 1), dx)
    np.testing.assert_array_equal(dx, 1)          # backward adds into dx


# ---- gradients ------------------------------------------------------------

@pytest.mark.parametrize("settings", [
    "pool: MAX kernel_size: 3 stride: 2",
    "pool: MAX kernel_size: 3 stride: 2 pad: 1",
    "pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 round_mode: FLOOR",
    "pool: MAX global_pooling: true",
    "pool: AVE kernel_size: 3 stride: 2 pad: 1",
    "pool: AVE kernel_h: 3 kernel_w: 2 stride: 1 pad_h: 1 pad_w: 1",
    "pool: AVE global_pooling: true",
])
def test_gradient(settings):
    bottom = Blob((2, 2, 7, 6))
    bottom.data[...] = distinct(bottom.shape, seed=1)
    checked = check_gradient(pooling(settings), [bottom], [Blob()])
    assert checked == bottom.count


# ---- BVLC fixture -------------------------------------------------------------

def test_matches_bvlc_fixture():
    expected = load_expected("pool")
    with open(case_path("pool", "net.prototxt")) as f:
        net = text_format.Parse(f.read(), caffe_pb2.NetParameter())
    layers = [lp for lp in net.layer if lp.type == "Pooling"]
    assert len(layers) == 6
    for consumer, lp in enumerate(layers):
        bottom, top = Blob(expected["input/data"].shape), Blob()
        bottom.data[...] = expected["input/data"]
        layer = create_layer(lp, caffe_pb2.TEST)
        layer.setup([bottom], [top])
        layer.forward([bottom], [top])
        assert_close(top.data, expected[f"data/{lp.top[0]}"], DATA_TOL, f"data of {lp.name}")
        top.diff[...] = expected[f"topdiff/{lp.top[0]}"]
        layer.backward([top], [True], [bottom])
        # The input is split once per consumer; split j is this layer's own diff.
        assert_close(bottom.diff, expected[f"diff/data_data_0_split_{consumer}"], DIFF_TOL,
                     f"bottom diff of {lp.name}")


# ---- errors ------------------------------------------------------------------

@pytest.mark.parametrize("settings, message", [
    ("pool: STOCHASTIC kernel_size: 2", "STOCHASTIC"),
    ("pool: MAX kernel_size: 2 pad: 2", "pad"),
    ("pool: MAX stride: 2", "kernel_size"),
    ("pool: MAX kernel_size: 2 kernel_h: 3 kernel_w: 3", "kernel_size or both"),
    ("pool: MAX kernel_size: 2 stride_h: 2", "stride_h and stride_w"),
    ("pool: MAX global_pooling: true kernel_size: 2", "global_pooling"),
    ("pool: MAX global_pooling: true stride: 2", "global_pooling"),
    ("pool: MAX kernel_size: 2 stride: 0", "stride"),
])
def test_bad_settings_name_the_layer(settings, message):
    with pytest.raises(LayerError, match=message) as info:
        run(settings, grid(6, 6))
    assert "'pool'" in str(info.value)


def test_second_top_only_for_max():
    with pytest.raises(LayerError, match="second top"):
        run("pool: AVE kernel_size: 2", grid(4, 4), tops=2)


@pytest.mark.parametrize("settings, shape", [
    ("pool: MAX kernel_size: 5 round_mode: FLOOR", (3, 3)),   # no window fits
    ("pool: MAX kernel_size: 1 stride: 3", (5, 5)),           # a window past the input
])
def test_impossible_geometry(settings, shape):
    with pytest.raises(LayerError, match="'pool'"):
        run(settings, grid(*shape))
