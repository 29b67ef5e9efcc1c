"""Fillers: distributions and Caffe's fan rules, from a seedable generator."""
import numpy as np
import pytest

from sppcaffe.blob import Blob
from sppcaffe.fillers import fill
from sppcaffe.proto import caffe_pb2
from sppcaffe.random import set_random_seed


def filled(shape, **kw):
    blob = Blob(shape)
    fill(blob, caffe_pb2.FillerParameter(**kw))
    return blob.data


def test_constant_and_default():
    assert (filled((3, 4), type="constant", value=2.5) == 2.5).all()
    assert (filled((3, 4)) == 0).all()          # Caffe's default: constant 0


def test_uniform_range():
    x = filled((200, 100), type="uniform", min=-2, max=3)
    assert x.min() >= -2 and x.max() < 3 and abs(x.mean() - 0.5) < 0.05


def test_gaussian_moments_and_sparse():
    x = filled((400, 500), type="gaussian", mean=1, std=2)
    assert abs(x.mean() - 1) < 0.02 and abs(x.std() - 2) < 0.02
    sparse = filled((100, 4000), type="gaussian", std=1, sparse=25)
    assert abs((sparse != 0).mean() - 0.25) < 0.01     # keep sparse / num_outputs


@pytest.mark.parametrize("norm,n", [("FAN_IN", 3 * 5 * 5), ("FAN_OUT", 64 * 5 * 5),
                                    ("AVERAGE", (3 + 64) * 25 / 2)])
def test_xavier_and_msra_scales(norm, n):
    enum = caffe_pb2.FillerParameter.VarianceNorm.Value(norm)
    x = filled((64, 3, 5, 5), type="xavier", variance_norm=enum)
    assert np.abs(x).max() <= np.sqrt(3.0 / n) + 1e-6
    assert abs(x.std() - np.sqrt(1.0 / n)) < 0.1 * np.sqrt(1.0 / n)
    m = filled((64, 3, 5, 5), type="msra", variance_norm=enum)
    assert abs(m.std() - np.sqrt(2.0 / n)) < 0.05 * np.sqrt(2.0 / n)


def test_positive_unitball_rows_sum_to_one():
    x = filled((6, 2, 3, 3), type="positive_unitball")
    np.testing.assert_allclose(x.reshape(6, -1).sum(axis=1), 1, rtol=1e-5)
    assert (x >= 0).all()


def test_bilinear_kernel():
    x = filled((1, 1, 4, 4), type="bilinear")
    ramp = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(x[0, 0], np.outer(ramp, ramp))


def test_seed_makes_fills_repeatable():
    set_random_seed(7)
    a = filled((10, 10), type="gaussian", std=1)
    set_random_seed(7)
    b = filled((10, 10), type="gaussian", std=1)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32


def test_unknown_filler_is_named():
    with pytest.raises(ValueError, match="unknown filler type 'gausian'"):
        filled((2,), type="gausian")
