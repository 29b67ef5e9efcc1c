"""Device code of LRN (kernels/lrn.cu), both regions, against the host code."""
import numpy as np
import pytest

from gpu_check import compare_cpu_gpu
from gradient_check import layer_param
from sppcaffe.blob import Blob
from sppcaffe.layer import create_layer
from sppcaffe.proto import caffe_pb2

REGIONS = ["ACROSS_CHANNELS", "WITHIN_CHANNEL"]


def lrn_layer(local_size=5, alpha=1.0, beta=0.75, k=1.0, region="ACROSS_CHANNELS"):
    return create_layer(layer_param(
        f'name: "norm" type: "LRN" lrn_param {{ local_size: {local_size} alpha: {alpha} '
        f'beta: {beta} k: {k} norm_region: {region} }}'), caffe_pb2.TEST)


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("size, alpha, beta, k", [(5, 1.0, 0.75, 1.0), (3, 0.5, 0.6, 2.0),
                                                  (1, 2.0, 1.0, 1.5), (7, 3.0, 0.5, 1.0)])
@pytest.mark.parametrize("shape", [(2, 6, 4, 5), (1, 3, 1, 7)])
def test_device_code_matches_host(gpu_device, region, size, alpha, beta, k, shape):
    # shape (1, 3, 1, 7): fewer channels (and rows) than the window is wide.
    compare_cpu_gpu(lrn_layer(size, alpha, beta, k, region), [Blob(shape)], [Blob()],
                    rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("region", REGIONS)
def test_caffe_model_zoo_settings_on_wide_ranging_inputs(gpu_device, region):
    """AlexNet/ZF's alpha 1e-4 on activations in the hundreds, where the
    running window sum across channels adds and subtracts large squares."""
    bottom = [Blob((2, 16, 5, 6))]
    layer = lrn_layer(5, 1e-4, 0.75, 1.0, region)
    rng = np.random.default_rng(4)
    layer.setup(bottom, [Blob()])
    bottom[0].data[...] = rng.uniform(0, 300, bottom[0].shape) * (rng.uniform(size=bottom[0].shape) < 0.5)
    compare_cpu_gpu(layer, bottom, [Blob()], setup=False, randomize=False, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("region", REGIONS)
def test_scale_buffer_follows_reshapes(gpu_device, region):
    layer = lrn_layer(region=region)
    compare_cpu_gpu(layer, [Blob((1, 4, 3, 3))], [Blob()])
    bigger = [Blob((2, 7, 5, 4))]
    layer.reshape(bigger, [Blob()])
    compare_cpu_gpu(layer, bigger, [Blob()], setup=False, seed=1)


def test_backward_respects_propagate_down(gpu_device):
    layer, bottom, top = lrn_layer(), Blob((1, 4, 2, 2)), Blob()
    layer.setup([bottom], [top])
    bottom.diff[...] = 7
    layer.forward_gpu([bottom], [top])
    layer.backward_gpu([top], [False], [bottom])
    np.testing.assert_array_equal(bottom.diff, 7)
