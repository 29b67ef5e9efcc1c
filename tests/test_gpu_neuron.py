"""Device code of AbsVal, BNLL, Clip, ELU, Exp, Log, Power, PReLU, Swish and
Threshold (kernels/neuron.cu) against their host code, in place and not."""
import numpy as np
import pytest

from gpu_check import compare_cpu_gpu
from sppcaffe.blob import Blob
from test_neuron_layers import CASES, IN_PLACE, WITH_BACKWARD, blob_of


def compare(name, shape, in_place, seed=0):
    case = CASES[name]
    bottom = [blob_of(case.inputs(shape, seed))]
    top = bottom if in_place else [Blob()]
    propagate = True if name in WITH_BACKWARD else None
    return compare_cpu_gpu(case.layer(), bottom, top, propagate_down=propagate, randomize=False,
                           rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 7)])
def test_device_code_matches_host(gpu_device, name, shape):
    compare(name, shape, in_place=False)


@pytest.mark.parametrize("name", IN_PLACE)
def test_device_code_matches_host_in_place(gpu_device, name):
    compare(name, (2, 3, 4, 5), in_place=True)


@pytest.mark.parametrize("in_place", [False, True])
def test_device_matches_host_on_a_larger_blob(gpu_device, in_place):
    """Several launch blocks on a real GPU; PReLU's slope sums over many images."""
    compare("prelu", (16, 3, 17, 19), in_place)


@pytest.mark.parametrize("name", ["prelu", "prelu_shared"])
def test_prelu_slope_gradient_accumulates_on_the_device(gpu_device, name):
    layer, bottom, top = CASES[name].layer(), blob_of(CASES[name].inputs((2, 3, 5), 1)), Blob()
    layer.setup([bottom], [top])
    layer.forward_gpu([bottom], [top])
    top.diff[...] = np.random.default_rng(2).uniform(-1, 1, top.shape)
    layer.blobs[0].diff[...] = 0
    layer.backward_gpu([top], [True], [bottom])
    once = layer.blobs[0].diff.copy()
    assert np.any(once != 0)
    layer.backward_gpu([top], [True], [bottom])
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * once, rtol=1e-6)


@pytest.mark.parametrize("name", WITH_BACKWARD)
def test_backward_respects_propagate_down(gpu_device, name):
    layer, bottom, top = CASES[name].layer(), blob_of(CASES[name].inputs((3, 4), 3)), Blob()
    layer.setup([bottom], [top])
    bottom.diff[...] = 7
    layer.forward_gpu([bottom], [top])
    layer.backward_gpu([top], [False], [bottom])
    np.testing.assert_array_equal(bottom.diff, 7)


def test_saturated_inputs_stay_finite(gpu_device):
    x = np.float32([-1e4, -90, -60, 60, 90, 1e4])
    for name in ("bnll", "swish", "elu"):
        layer, bottom, top = CASES[name].layer(), blob_of(x), Blob()
        layer.setup([bottom], [top])
        layer.forward_gpu([bottom], [top])
        top.diff[...] = 1
        layer.backward_gpu([top], [True], [bottom])
        assert np.all(np.isfinite(top.data)) and np.all(np.isfinite(bottom.diff)), name
