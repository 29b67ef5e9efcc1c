"""Pooling device code (kernels/pooling.cu, Caffe's kernels) against the
host code: MAX/AVE, pad/stride/rectangles, floor rounding, global pooling,
the argmax mask (int scratch or float second top) and its tie rule."""
import numpy as np
import pytest

from gpu_check import compare_cpu_gpu
from gradient_check import layer_param
from sppcaffe.blob import Blob
from sppcaffe.layer import create_layer
from sppcaffe.proto import caffe_pb2


def pooling(settings):
    text = f'name: "pool" type: "Pooling" pooling_param {{ {settings} }}'
    return create_layer(layer_param(text), caffe_pb2.TRAIN)


GEOMETRIES = [
    "kernel_size: 3 stride: 2",
    "kernel_size: 3 stride: 2 pad: 1",
    "kernel_size: 2 stride: 2",
    "kernel_size: 3 stride: 1 pad: 1",
    "kernel_size: 3 stride: 3 pad: 2",                     # pad-aware AVE divisors at both ends
    "kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0",
    "kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR",
    "global_pooling: true",
]
SHAPES = [(2, 3, 7, 9), (1, 2, 6, 5)]


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("shape", SHAPES)
def test_pooling_device_code_matches_host(gpu_device, pool, geometry, shape):
    compare_cpu_gpu(pooling(f"pool: {pool} {geometry}"), [Blob(shape)], [Blob()])


@pytest.mark.parametrize("geometry", GEOMETRIES[:3] + GEOMETRIES[-1:])
def test_max_mask_top_matches_host_and_routes_the_gradient(gpu_device, geometry):
    top = [Blob(), Blob()]
    got = compare_cpu_gpu(pooling(f"pool: MAX {geometry}"), [Blob((2, 2, 7, 8))], top)
    mask = got[0][1]
    assert mask.min() >= 0 and mask.max() < 7 * 8 and np.array_equal(mask, np.round(mask))


def _ties(shape, seed=0):
    """Few distinct values: most windows hold their maximum more than once."""
    return np.random.default_rng(seed).integers(0, 3, size=shape).astype(np.float32)


@pytest.mark.parametrize("geometry", ["kernel_size: 3 stride: 2 pad: 1", "kernel_size: 2 stride: 1",
                                      "global_pooling: true"])
def test_ties_pick_the_hosts_argmax(gpu_device, geometry):
    layer = pooling(f"pool: MAX {geometry}")
    bottom, top = [Blob((2, 3, 6, 7))], [Blob()]
    bottom[0].data[...] = _ties(bottom[0].shape)
    compare_cpu_gpu(layer, bottom, top, randomize=False, rtol=0, atol=0)
    # The device's int mask itself is the host's argmax.
    mask = np.empty(top[0].shape, np.int32)
    gpu_device.download(layer._dev.get("mask", mask.nbytes), mask)
    np.testing.assert_array_equal(mask, layer._argmax)


def test_negative_infinity_is_pooled_not_replaced(gpu_device):
    # Caffe starts from -FLT_MAX; starting from the window's first cell, as
    # the host code does, keeps -inf inputs -inf and the argmax inside the map.
    layer = pooling("pool: MAX kernel_size: 2 stride: 2")
    bottom, top = [Blob((1, 1, 4, 4))], [Blob()]
    bottom[0].data[...] = -np.inf
    bottom[0].data[0, 0, 3, 3] = 1
    layer.setup(bottom, top)
    layer.forward_gpu(bottom, top)
    np.testing.assert_array_equal(top[0].data[0, 0], [[-np.inf, -np.inf], [-np.inf, 1]])


def test_backward_follows_the_mask_top_as_caffe(gpu_device):
    # With a second top, Caffe's backward reads the mask from it: an edited
    # mask reroutes the gradient.
    layer = pooling("pool: MAX kernel_size: 2 stride: 2")
    bottom, top = [Blob((1, 1, 4, 4))], [Blob(), Blob()]
    bottom[0].data[...] = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    layer.setup(bottom, top)
    layer.forward_gpu(bottom, top)
    np.testing.assert_array_equal(top[1].data[0, 0], [[5, 7], [13, 15]])
    top[1].data[0, 0, 0, 0] = 0
    top[0].diff[...] = 1
    layer.backward_gpu(top, [True], bottom)
    expected = np.zeros((4, 4), np.float32)
    expected.flat[[0, 7, 13, 15]] = 1
    np.testing.assert_array_equal(bottom[0].diff[0, 0], expected)


def test_kernel_signatures_are_known():
    from sppcaffe.backends.gpu.sources import kernel_index
    names = {n for n in kernel_index() if n.startswith("pool_")}
    assert {"pool_max_forward", "pool_max_backward", "pool_ave_forward", "pool_ave_backward",
            "pool_bins_max_forward", "pool_bins_ave_forward", "pool_bins_max_backward",
            "pool_bins_ave_backward", "pool_bins_max_backward_windows",
            "pool_bins_ave_backward_windows"} <= names
