"""Window pooling on the device: the WindowSPP layer's device code against
its host code (batches, duplicate windows, MAX/AVE, ties, backward after a
host forward), and layers.window_pool_device.pool_windows, the function the
detection pipeline calls in GPU mode, against detection.window_pool."""
import numpy as np
import pytest

from gpu_check import compare_cpu_gpu
from gradient_check import layer_param
from sppcaffe.layers import window_pool_device as device_pool
from sppcaffe.blob import Blob
from sppcaffe.detection import window_pool as host_pool
from sppcaffe.layer import create_layer
from sppcaffe.proto import caffe_pb2

ROIS = np.array([
    # batch, x1, y1, x2, y2 (pixels of the input; S = 16)
    [0, 0, 0, 111, 79],       # the whole 5x7 map
    [1, 20, 5, 70, 60],
    [0, 33, 17, 95, 70],
    [1, 0, 0, 15, 15],
    [0, 34, 18, 92, 68],      # the same cells as row 2
    [1, 40, 40, 41, 41],      # smaller than a cell
    [1, 60, 10, 111, 30],     # a wide, flat one
], np.float32)


def window_spp(pool, levels=(3, 2, 1)):
    pyramid = " ".join(f"levels: {n}" for n in levels)
    return create_layer(layer_param(
        f'name: "wspp" type: "WindowSPP" spp_param {{ pool: {pool} method: ADAPTIVE {pyramid} }}'),
        caffe_pb2.TRAIN)


def blobs(x, rois):
    bottom = [Blob(x.shape), Blob(rois.shape)]
    bottom[0].data[...] = x
    bottom[1].data[...] = rois
    return bottom, [Blob()]


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("levels", [(3, 2, 1), (6, 3, 2, 1)])
def test_layer_device_code_matches_host(gpu_device, pool, levels):
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 5, 7)).astype(np.float32)
    bottom, top = blobs(x, ROIS)
    compare_cpu_gpu(window_spp(pool, levels), bottom, top, propagate_down=[True, False],
                    randomize=False)


def test_ties_pick_the_hosts_argmax(gpu_device):
    x = np.random.default_rng(1).integers(0, 2, (2, 2, 5, 7)).astype(np.float32)
    bottom, top = blobs(x, ROIS)
    # A gradient routed to another tied cell would be off by a whole top diff;
    # the tolerance only allows for the host's float64 sums.
    compare_cpu_gpu(window_spp("MAX"), bottom, top, propagate_down=[True, False],
                    randomize=False, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_backward_after_a_host_forward_pools_again(gpu_device, pool):
    x = np.random.default_rng(2).uniform(-1, 1, (2, 2, 5, 7)).astype(np.float32)
    bottom, top = blobs(x, ROIS)
    layer = window_spp(pool)
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = np.random.default_rng(3).uniform(-1, 1, top[0].shape)
    layer.backward(top, [True, False], bottom)
    expected = bottom[0].diff.copy()
    bottom[0].diff[...] = np.nan
    layer.backward_gpu(top, [True, False], bottom)
    np.testing.assert_allclose(bottom[0].diff, expected, rtol=1e-5, atol=1e-6)


def test_layer_errors_are_the_hosts_in_gpu_mode(gpu_device):
    bottom, top = blobs(np.zeros((1, 1, 5, 7), np.float32), ROIS[:2])
    layer = window_spp("MAX")
    layer.setup(bottom, top)
    from sppcaffe.layer import LayerError
    with pytest.raises(LayerError, match="batch index 1"):
        layer.forward_gpu(bottom, top)


# ---- pool_windows: what detection calls on the GPU -------------------------------

def _windows(rng, count, h, w):
    x1, y1 = rng.integers(0, w, count), rng.integers(0, h, count)
    x2 = np.minimum(w - 1, x1 + rng.integers(0, w, count))
    y2 = np.minimum(h - 1, y1 + rng.integers(0, h, count))
    return np.concatenate([np.stack([x1, y1, x2, y2], 1), [[0, 0, w - 1, h - 1], [3, 2, 3, 2]]])


@pytest.mark.parametrize("pool", host_pool.POOLS)
def test_pool_windows_matches_the_host_function(gpu_device, pool):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 9, 13)).astype(np.float32)
    windows = _windows(rng, 40, 9, 13)
    feature_map = Blob(x.shape)
    feature_map.data[...] = x
    got = device_pool.pool_windows(feature_map, windows, [6, 3, 2, 1], pool)
    expected = host_pool.pool_windows(x, windows, [6, 3, 2, 1], pool)
    np.testing.assert_allclose(got.data, expected, rtol=1e-5, atol=1e-6)


def test_pool_windows_writes_rows_of_a_given_blob_from_one_image_of_a_batch(gpu_device):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, 6, 8)).astype(np.float32)
    windows = _windows(rng, 5, 6, 8)
    feature_map = Blob(x.shape)
    feature_map.data[...] = x
    length = host_pool.output_length([2, 1], 2)
    out = Blob((3 + len(windows) + 1, length))
    out.data[...] = -7
    assert device_pool.pool_windows(feature_map, windows, [2, 1], "max", out=out, first_row=3,
                                    image=1) is out
    np.testing.assert_array_equal(out.data[3:-1], host_pool.pool_windows(x[1], windows, [2, 1]))
    assert (out.data[:3] == -7).all() and (out.data[-1] == -7).all()


def test_pool_windows_errors(gpu_device):
    feature_map = Blob((2, 4, 5))
    with pytest.raises(ValueError, match="at least 3 rows"):
        device_pool.pool_windows(feature_map, [[0, 0, 1, 1]], [1], out=Blob((2, 2)), first_row=2)
    with pytest.raises(ValueError, match="image 1 is not in the batch of 1"):
        device_pool.pool_windows(feature_map, [[0, 0, 1, 1]], [1], image=1)
    with pytest.raises(ValueError, match="outside the 4x5 map"):
        device_pool.pool_windows(feature_map, [[0, 0, 5, 1]], [1])
    with pytest.raises(ValueError, match="unknown pooling"):
        device_pool.pool_windows(feature_map, [[0, 0, 1, 1]], [1], pool="sum")
    assert device_pool.pool_windows(feature_map, np.zeros((0, 4)), [2]).shape == (0, 8)
