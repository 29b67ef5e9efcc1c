"""Device fills (kernels/fill.cu through sppcaffe.fillers.gpu_*): constant
values, and the counter-based uniform, gaussian and bit generators."""
import numpy as np
import pytest

from sppcaffe import fillers
from sppcaffe.backends.gpu import Workspace
from sppcaffe.blob import Blob
from sppcaffe.random import set_random_seed

N = 20000


def filled(fill, *args, n=N, **kwargs):
    blob = Blob((n,))
    fill(n, *args, blob.mutable_gpu_data, **kwargs)
    return blob.data.copy()


@pytest.mark.parametrize("value", [0.0, -2.5, np.float32(1e-30)])
def test_gpu_set(gpu_device, value):
    values = filled(fillers.gpu_set, value, n=37)
    assert (values == np.float32(value)).all()


def test_gpu_set_writes_only_its_range(gpu_device):
    blob = Blob((10,))
    blob.data[...] = 1
    fillers.gpu_set(4, 3.0, blob.mutable_gpu_data + 4 * 2)
    np.testing.assert_array_equal(blob.data, [1, 1, 3, 3, 3, 3, 1, 1, 1, 1])


def test_uniform_range_and_moments(gpu_device):
    values = filled(fillers.gpu_rng_uniform, -1.0, 3.0, seed=11)
    assert values.min() >= -1 and values.max() < 3
    assert values.mean() == pytest.approx(1.0, abs=0.05)
    assert values.var() == pytest.approx(16 / 12, rel=0.05)
    counts = np.histogram(values, bins=8, range=(-1, 3))[0]
    assert counts.min() > 0.9 * N / 8           # no gaps: every bin near N / 8


def test_gaussian_moments(gpu_device):
    values = filled(fillers.gpu_rng_gaussian, 0.5, 2.0, seed=3)
    assert np.isfinite(values).all()
    assert values.mean() == pytest.approx(0.5, abs=0.06)
    assert values.std() == pytest.approx(2.0, rel=0.03)
    within = np.mean(np.abs(values - 0.5) < 2.0)
    assert within == pytest.approx(0.6827, abs=0.02)


def test_random_bits_are_spread(gpu_device):
    ws = Workspace()
    ptr = ws.get("bits", 4 * N)
    fillers.gpu_rng_bits(N, ptr, seed=5)
    bits = np.empty(N, np.uint32)
    gpu_device.download(ptr, bits)
    assert len(np.unique(bits)) > 0.99 * N
    assert np.mean(bits > np.uint32(2 ** 31)) == pytest.approx(0.5, abs=0.02)
    ones = np.unpackbits(bits.view(np.uint8)).mean()
    assert ones == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("fill, args", [(fillers.gpu_rng_uniform, (0.0, 1.0)),
                                        (fillers.gpu_rng_gaussian, (0.0, 1.0))])
def test_counter_based_streams(gpu_device, fill, args):
    whole = filled(fill, *args, seed=9, n=100)
    # A fill split in two launches by `offset` is the same stream.
    blob = Blob((100,))
    fill(60, *args, blob.mutable_gpu_data, seed=9)
    fill(40, *args, blob.mutable_gpu_data + 4 * 60, seed=9, offset=60)
    np.testing.assert_array_equal(blob.data, whole)
    assert not np.array_equal(filled(fill, *args, seed=10, n=100), whole)


def test_unseeded_fills_follow_the_framework_seed(gpu_device):
    set_random_seed(4)
    first = filled(fillers.gpu_rng_uniform, 0.0, 1.0, n=50)
    second = filled(fillers.gpu_rng_uniform, 0.0, 1.0, n=50)
    set_random_seed(4)
    again = filled(fillers.gpu_rng_uniform, 0.0, 1.0, n=50)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, second)
