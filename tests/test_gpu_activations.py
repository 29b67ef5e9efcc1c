"""Device code of Sigmoid, TanH and Dropout (kernels/activations.cu,
kernels/dropout.cu) against the host code and Caffe's dropout rules."""
import numpy as np
import pytest

from gpu_check import compare_cpu_gpu
from gradient_check import layer_param
from sppcaffe.blob import Blob
from sppcaffe.layer import create_layer
from sppcaffe.proto import caffe_pb2
from sppcaffe.random import set_random_seed

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def make_layer(text, phase=TEST):
    return create_layer(layer_param(f'name: "act" {text}'), phase)


@pytest.mark.parametrize("kind", ["Sigmoid", "TanH"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (7,), (3, 1000)])
@pytest.mark.parametrize("in_place", [False, True])
def test_device_code_matches_host(gpu_device, kind, shape, in_place):
    bottom = [Blob(shape)]
    top = bottom if in_place else [Blob()]
    compare_cpu_gpu(make_layer(f'type: "{kind}"'), bottom, top, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["Sigmoid", "TanH"])
def test_saturated_inputs_stay_finite(gpu_device, kind):
    layer, bottom, top = make_layer(f'type: "{kind}"'), Blob((4,)), Blob()
    bottom.data[...] = [-1e4, -90.0, 90.0, 1e4]
    layer.setup([bottom], [top])
    layer.forward_gpu([bottom], [top])
    low = 0.0 if kind == "Sigmoid" else -1.0
    np.testing.assert_array_equal(top.data, [low, low, 1.0, 1.0])
    top.diff[...] = 1
    layer.backward_gpu([top], [True], [bottom])
    np.testing.assert_array_equal(bottom.diff, 0)


@pytest.mark.parametrize("kind", ["Sigmoid", "TanH"])
def test_backward_respects_propagate_down(gpu_device, kind):
    layer, bottom, top = make_layer(f'type: "{kind}"'), Blob((3, 4)), Blob()
    layer.setup([bottom], [top])
    bottom.diff[...] = 7
    layer.forward_gpu([bottom], [top])
    layer.backward_gpu([top], [False], [bottom])
    np.testing.assert_array_equal(bottom.diff, 7)


# ---- Dropout -------------------------------------------------------------------
def dropout(ratio, phase=TRAIN):
    return make_layer(f'type: "Dropout" dropout_param {{ dropout_ratio: {ratio} }}', phase)


def run_dropout(layer, x, in_place=False):
    bottom = Blob(x.shape)
    bottom.data[...] = x
    top = bottom if in_place else Blob()
    layer.setup([bottom], [top])
    layer.forward_gpu([bottom], [top])
    return bottom, top


def splitmix_bits(seed, count):
    """kernels/dropout.cu's dropout_bits, written independently with NumPy."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + np.arange(1, count + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(32)).astype(np.uint32)


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.9])
@pytest.mark.parametrize("in_place", [False, True])
def test_dropout_scales_kept_units_and_drops_a_fraction_near_the_ratio(gpu_device, ratio, in_place):
    layer = dropout(ratio)
    bottom, top = run_dropout(layer, np.full((400, 500), 2, np.float32), in_place)
    kept = top.data != 0
    scale = np.float32(1 / (1 - float(np.float32(ratio))))
    # 2 x 10^5 draws: the kept fraction is within 0.005 of 1 - ratio with overwhelming odds.
    assert abs(kept.mean() - (1 - ratio)) < 5e-3
    np.testing.assert_array_equal(top.data[kept], np.float32(2) * scale)
    # Backward applies the same mask (recomputed from the forward's seed).
    top.diff[...] = 1
    layer.backward_gpu([top], [True], [bottom])
    np.testing.assert_array_equal(bottom.diff != 0, kept)
    np.testing.assert_array_equal(bottom.diff[kept], scale)


def test_dropout_masks_follow_the_framework_seed(gpu_device):
    def masks(seed):
        set_random_seed(seed)
        layer = dropout(0.5)
        bottom, top = run_dropout(layer, np.ones((50, 50), np.float32))
        first = top.data != 0
        layer.forward_gpu([bottom], [top])
        return first, top.data != 0

    a1, a2 = masks(7)
    b1, b2 = masks(7)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2)          # a fresh mask on every forward
    assert not np.array_equal(a1, masks(8)[0])


def test_dropout_mask_is_the_documented_hash_of_seed_and_index(gpu_device):
    """Pins the mask to (seed, index) alone: the host build and a real GPU,
    whatever its launch size, must both give exactly this."""
    layer = dropout(0.4)
    set_random_seed(3)
    bottom, top = run_dropout(layer, np.ones(5000, np.float32))
    expected = splitmix_bits(layer._gpu_seed, 5000) > np.uint32(layer._gpu_threshold)
    np.testing.assert_array_equal(top.data != 0, expected)


def test_dropout_draws_are_uniform_and_uncorrelated_between_neighbours():
    bits = splitmix_bits(12345, 1 << 16).astype(np.float64) / 2 ** 32
    counts, _ = np.histogram(bits, bins=16, range=(0, 1))
    assert np.abs(counts - 4096).max() < 4 * 64         # 4 sigma of a binomial count
    assert abs(np.corrcoef(bits[:-1], bits[1:])[0, 1]) < 0.02


@pytest.mark.parametrize("in_place", [False, True])
def test_dropout_test_phase_is_identity(gpu_device, in_place):
    bottom = [Blob((6, 7))]
    top = bottom if in_place else [Blob()]
    compare_cpu_gpu(dropout(0.7, TEST), bottom, top, rtol=0, atol=0)


def test_dropout_ratio_zero_keeps_everything(gpu_device):
    x = np.random.default_rng(0).uniform(-1, 1, (30, 40)).astype(np.float32)
    _, top = run_dropout(dropout(0.0), x)
    np.testing.assert_array_equal(top.data, x)
