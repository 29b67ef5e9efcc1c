"""ROIPooling (the Fast R-CNN fork's layer) on the host: cases computed by
hand, a direct transcription of the fork's loops on random rois (ties,
edges, rois outside the map, scales), backward and a gradient check."""
import math

import numpy as np
import pytest

from gradient_check import check_gradient, layer_param
from sppcaffe.blob import Blob
from sppcaffe.layer import LayerError, create_layer
from sppcaffe.proto import caffe_pb2


def roi_pooling(pooled_h, pooled_w, scale=1.0):
    text = (f'name: "roi_pool" type: "ROIPooling" roi_pooling_param {{ pooled_h: {pooled_h} '
            f'pooled_w: {pooled_w} spatial_scale: {scale} }}')
    return create_layer(layer_param(text), caffe_pb2.TEST)


def run(layer, x, rois, top_diff=None):
    """Forward (and backward from `top_diff`); returns (top, argmax, dx)."""
    bottom = [Blob(np.shape(x)), Blob(np.shape(rois))]
    bottom[0].data[...] = x
    bottom[1].data[...] = rois
    top = [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    dx = None
    if top_diff is not None:
        top[0].diff[...] = top_diff
        bottom[0].diff[...] = np.nan
        layer.backward(top, [True, False], bottom)
        dx = bottom[0].diff.copy()
    return top[0].data.copy(), layer._argmax.copy(), dx


# x[h, w] = 4h + w: the maximum of any box is its bottom-right cell.
RAMP = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)


def test_quadrants_of_a_full_map():
    # roi 4x4, 2x2 bins of 2x2 cells.
    y, argmax, _ = run(roi_pooling(2, 2), RAMP, [[0, 0, 0, 3, 3]])
    np.testing.assert_array_equal(y[0, 0], [[5, 7], [13, 15]])
    np.testing.assert_array_equal(argmax[0, 0], [[5, 7], [13, 15]])


def test_overlapping_bins_sum_their_gradients():
    # roi 3x3, bin size 1.5: rows [floor(0), ceil(1.5)) = [0, 2) and
    # [floor(1.5), ceil(3)) = [1, 3): every bin holds cell (1, 1).
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 1, 1] = 9
    dy = np.array([1, 2, 3, 4], np.float32).reshape(1, 1, 2, 2)
    y, argmax, dx = run(roi_pooling(2, 2), x, [[0, 0, 0, 2, 2]], dy)
    np.testing.assert_array_equal(y[0, 0], [[9, 9], [9, 9]])
    np.testing.assert_array_equal(argmax[0, 0], [[5, 5], [5, 5]])
    expected = np.zeros_like(x)
    expected[0, 0, 1, 1] = 10
    np.testing.assert_array_equal(dx, expected)
    # With the ramp each overlapping bin finds its own corner.
    y, argmax, _ = run(roi_pooling(2, 2), RAMP, [[0, 0, 0, 2, 2]])
    np.testing.assert_array_equal(y[0, 0], [[5, 6], [9, 10]])


def test_ties_go_to_the_first_cell_in_row_major_order():
    x = np.ones((1, 1, 4, 4), np.float32)
    _, argmax, dx = run(roi_pooling(2, 2), x, [[0, 0, 0, 3, 3]], np.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(argmax[0, 0], [[0, 2], [8, 10]])
    assert dx.sum() == 4 and dx[0, 0, 0, 0] == dx[0, 0, 2, 2] == 1


def test_roi_over_the_edge_has_empty_bins():
    # roi (2, 2)-(5, 5): bins rows [2, 4) and [4, 6) -> clipped to [4, 4): empty.
    dy = np.array([1, 2, 3, 4], np.float32).reshape(1, 1, 2, 2)
    y, argmax, dx = run(roi_pooling(2, 2), RAMP, [[0, 2, 2, 5, 5]], dy)
    np.testing.assert_array_equal(y[0, 0], [[15, 0], [0, 0]])
    np.testing.assert_array_equal(argmax[0, 0], [[15, -1], [-1, -1]])
    expected = np.zeros_like(RAMP)
    expected[0, 0, 3, 3] = 1
    np.testing.assert_array_equal(dx, expected)


def test_roi_outside_the_map_gives_zeros_and_no_gradient():
    y, argmax, dx = run(roi_pooling(2, 3), RAMP - 100, [[0, 10, 10, 12, 12], [0, -9, -9, -5, -5]],
                        np.ones((2, 1, 2, 3)))
    assert not y.any() and (argmax == -1).all() and not dx.any()


def test_spatial_scale_one_sixteenth():
    # x2 = round(63 / 16) = round(3.9375) = 4: roi 5x5 cells from (0, 0),
    # bin 2.5: rows [0, 3) and [2, 5) -> [2, 4).
    y, _, _ = run(roi_pooling(2, 2, 0.0625), RAMP, [[0, 0, 0, 63, 63]])
    np.testing.assert_array_equal(y[0, 0], [[10, 11], [14, 15]])


def test_corners_round_half_away_from_zero():
    # 8 / 16 = 0.5 -> 1 and 24 / 16 = 1.5 -> 2 (banker's rounding would give
    # 0 and 2): one bin over rows and columns [1, 3) of a decreasing map.
    y, argmax, _ = run(roi_pooling(1, 1, 0.0625), 15 - RAMP, [[0, 8, 8, 24, 24]])
    assert y[0, 0, 0, 0] == 10 and argmax[0, 0, 0, 0] == 5
    # -8 / 16 = -0.5 -> -1: the roi starts above and left of the map.
    # roi (-1..2) is 4 cells, bins [-1, 1) -> [0, 1) and [1, 3) (from 0 it
    # would be 3 cells, bins [0, 2) and [1, 3)).
    _, argmax, _ = run(roi_pooling(2, 2, 0.0625), RAMP, [[0, -8, -8, 24, 24]])
    np.testing.assert_array_equal(argmax[0, 0], [[0, 2], [8, 10]])


def test_batch_index_picks_the_image_and_its_gradient():
    x = np.stack([RAMP[0], 100 + RAMP[0]])                    # (2, 1, 4, 4)
    rois = [[1, 0, 0, 1, 1], [0, 2, 2, 3, 3]]
    dy = np.array([2, 3], np.float32).reshape(2, 1, 1, 1)
    y, _, dx = run(roi_pooling(1, 1), x, rois, dy)
    assert y[:, 0, 0, 0].tolist() == [105, 15]
    expected = np.zeros_like(x)
    expected[1, 0, 1, 1] = 2
    expected[0, 0, 3, 3] = 3
    np.testing.assert_array_equal(dx, expected)


def test_several_channels_pool_independently():
    x = np.stack([RAMP[0, 0], 15 - RAMP[0, 0]])[None]          # (1, 2, 4, 4)
    y, argmax, _ = run(roi_pooling(1, 1), x, [[0, 1, 1, 2, 2]])
    assert y[0, :, 0, 0].tolist() == [10, 10] and argmax[0, :, 0, 0].tolist() == [10, 5]


def test_malformed_roi_pools_one_cell_and_gets_its_gradient():
    # x2 < x1: the fork forces the size to 1 and pools cell (3, 3) in every
    # bin; the exact gradient sends it all the diffs (the fork sends none).
    y, argmax, dx = run(roi_pooling(2, 2), RAMP, [[0, 3, 3, 1, 1]], np.ones((1, 1, 2, 2)))
    assert (y == 15).all() and (argmax == 15).all()
    assert dx[0, 0, 3, 3] == 4 and dx.sum() == 4


# ---- the fork's loops, transcribed --------------------------------------------
def c_round(value):
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def fork_forward(x, rois, pooled_h, pooled_w, scale):
    f = np.float32
    _, channels, height, width = x.shape
    y = np.zeros((len(rois), channels, pooled_h, pooled_w), np.float32)
    argmax = np.full(y.shape, -1)
    for r, roi in enumerate(np.asarray(rois, np.float32)):
        n = int(roi[0])
        x1, y1, x2, y2 = (c_round(float(f(v) * f(scale))) for v in roi[1:])
        bin_h = f(max(y2 - y1 + 1, 1)) / f(pooled_h)
        bin_w = f(max(x2 - x1 + 1, 1)) / f(pooled_w)
        for ph in range(pooled_h):
            hs = min(max(math.floor(f(ph) * bin_h) + y1, 0), height)
            he = min(max(math.ceil(f(ph + 1) * bin_h) + y1, 0), height)
            for pw in range(pooled_w):
                ws = min(max(math.floor(f(pw) * bin_w) + x1, 0), width)
                we = min(max(math.ceil(f(pw + 1) * bin_w) + x1, 0), width)
                for c in range(channels):
                    best, where = -np.inf, -1
                    for h in range(hs, he):
                        for w in range(ws, we):
                            if x[n, c, h, w] > best:
                                best, where = x[n, c, h, w], h * width + w
                    if where >= 0:
                        y[r, c, ph, pw], argmax[r, c, ph, pw] = best, where
    return y, argmax


@pytest.mark.parametrize("seed", range(12))
def test_random_rois_match_the_forks_loops(seed):
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(1, 10, 2))
    pooled_h, pooled_w = (int(v) for v in rng.integers(1, 5, 2))
    scale = float(rng.choice([1.0, 0.5, 0.3, 0.0625]))
    x = rng.integers(-3, 4, (2, 3, height, width)).astype(np.float32)    # many ties
    rois = np.zeros((7, 5), np.float32)
    rois[:, 0] = rng.integers(0, 2, 7)
    rois[:, 1:] = np.round(rng.uniform(-3, max(height, width) + 3, (7, 4)) / scale * 2) / 2
    y, argmax, dx = run(roi_pooling(pooled_h, pooled_w, scale), x, rois,
                        rng.uniform(-1, 1, (7, 3, pooled_h, pooled_w)))
    ref_y, ref_argmax = fork_forward(x, rois, pooled_h, pooled_w, scale)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(argmax, ref_argmax)


def test_backward_is_the_argmax_scatter():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
    rois = np.array([[0, 0, 0, 6, 5], [1, 1, 2, 4, 5], [1, 1, 2, 4, 5], [0, 5, 4, 9, 9]],
                    np.float32)
    dy = rng.uniform(-1, 1, (4, 3, 3, 2)).astype(np.float32)
    _, argmax, dx = run(roi_pooling(3, 2), x, rois, dy)
    expected = np.zeros_like(x)
    for (r, c, ph, pw), where in np.ndenumerate(argmax):
        if where >= 0:
            expected[int(rois[r, 0]), c, where // 7, where % 7] += dy[r, c, ph, pw]
    np.testing.assert_allclose(dx, expected, rtol=1e-6, atol=1e-7)


def test_gradient_check():
    rng = np.random.default_rng(0)
    bottom = [Blob((2, 2, 5, 6)), Blob((3, 5))]
    # Distinct values 0.1 apart: a 1e-2 step never moves an argmax.
    bottom[0].data[...] = rng.permutation(bottom[0].count).reshape(bottom[0].shape) * 0.1
    bottom[1].data[...] = [[0, 0, 0, 9, 7], [1, 2, 2, 10, 10], [1, -2, 4, 6, 12]]
    checked = check_gradient(roi_pooling(2, 3, 0.5), bottom, [Blob()], check_bottom=[0])
    assert checked == bottom[0].count


def test_rois_get_zero_gradient_and_are_not_forced():
    layer = roi_pooling(2, 2)
    bottom, top = [Blob((1, 1, 4, 4)), Blob((1, 5))], [Blob()]
    bottom[1].data[...] = [[0, 0, 0, 3, 3]]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    bottom[1].diff[...] = 7
    layer.backward(top, [False, True], bottom)
    assert not bottom[1].diff.any()
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)


def test_shapes_and_errors():
    layer = roi_pooling(6, 7)
    bottom, top = [Blob((2, 8, 10, 12)), Blob((5, 5, 1, 1))], [Blob()]
    layer.setup(bottom, top)
    assert top[0].shape == (5, 8, 6, 7)
    with pytest.raises(LayerError, match="rois must be"):
        roi_pooling(2, 2).setup([Blob((1, 1, 4, 4)), Blob((3, 4))], [Blob()])
    with pytest.raises(LayerError, match="pooled_h must be > 0"):
        roi_pooling(0, 2).setup([Blob((1, 1, 4, 4)), Blob((3, 5))], [Blob()])
    with pytest.raises(LayerError, match=r"'roi_pool'.*batch index 2"):
        run(roi_pooling(2, 2), RAMP, [[2, 0, 0, 1, 1]])
    # No rois: an empty top.
    y, _, _ = run(roi_pooling(2, 2), RAMP, np.zeros((0, 5), np.float32))
    assert y.shape == (0, 1, 2, 2)
