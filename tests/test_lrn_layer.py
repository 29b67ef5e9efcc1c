"""LRN layer: both regions against a naive loop, BVLC Caffe's output and
numerical gradients."""
import numpy as np
import pytest
from google.protobuf import text_format

from golden_util import DATA_TOL, DIFF_TOL, assert_close, case_path, load_expected
from gradient_check import check_gradient, layer_param, make_blobs
from sppcaffe.blob import Blob
from sppcaffe.layer import LayerError, create_layer
from sppcaffe.layers import lrn
from sppcaffe.proto import caffe_pb2


@pytest.fixture(params=["one block", "many blocks"])
def blocking(request, monkeypatch):
    """The layer works block by block; small blocks (with a shorter last
    one) must give the same numbers as a single one."""
    if request.param == "many blocks":
        monkeypatch.setattr(lrn, "_BLOCK_ELEMENTS", 40)


def lrn_layer(local_size=5, alpha=1.0, beta=0.75, k=1.0, region="ACROSS_CHANNELS"):
    return create_layer(layer_param(
        f'name: "norm" type: "LRN" lrn_param {{ local_size: {local_size} alpha: {alpha} '
        f'beta: {beta} k: {k} norm_region: {region} }}'), caffe_pb2.TEST)


def naive_lrn(x, n, alpha, beta, k, region):
    """Caffe's definitions, one output cell at a time."""
    x = x.astype(np.float64)
    num, channels, height, width = x.shape
    p = (n - 1) // 2
    y = np.empty_like(x)
    for i, c, h, w in np.ndindex(*x.shape):
        if region == "ACROSS_CHANNELS":
            window = x[i, max(c - p, 0):min(c + p + 1, channels), h, w]
            scale = k + alpha / n * np.sum(window ** 2)
        else:
            # AVE pooling divides by the padded window area, n * n, and the
            # Power layer's shift is 1 whatever k says.
            window = x[i, c, max(h - p, 0):min(h + p + 1, height), max(w - p, 0):min(w + p + 1, width)]
            scale = 1 + alpha * np.sum(window ** 2) / (n * n)
        y[i, c, h, w] = x[i, c, h, w] * scale ** -beta
    return y


def run(layer, x):
    bottom, top = Blob(x.shape), Blob()
    bottom.data[...] = x
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    return bottom, top


REGIONS = ["ACROSS_CHANNELS", "WITHIN_CHANNEL"]


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("n, alpha, beta, k", [(5, 1.0, 0.75, 1.0), (3, 0.5, 0.6, 2.0),
                                              (1, 2.0, 1.3, 1.5), (7, 3.0, 0.75, 0.5)])
def test_forward_matches_naive_loop(region, n, alpha, beta, k, blocking):
    x = np.random.default_rng(n).uniform(-2, 2, (2, 6, 5, 4)).astype(np.float32)
    _, top = run(lrn_layer(n, alpha, beta, k, region), x)
    np.testing.assert_allclose(top.data, naive_lrn(x, n, alpha, beta, k, region), rtol=2e-6, atol=1e-7)


def test_within_channel_ignores_k():
    x = np.random.default_rng(0).uniform(-1, 1, (1, 2, 4, 4)).astype(np.float32)
    _, a = run(lrn_layer(3, 0.5, 0.75, 1.0, "WITHIN_CHANNEL"), x)
    _, b = run(lrn_layer(3, 0.5, 0.75, 7.0, "WITHIN_CHANNEL"), x)
    np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("n, beta, k", [(5, 0.75, 1.0), (3, 0.6, 2.0), (1, 0.75, 1.0)])
def test_gradient(region, n, beta, k, blocking):
    bottom = make_blobs((2, 5, 4, 3), seed=n)
    layer = lrn_layer(n, 1.0, beta, k, region)
    assert check_gradient(layer, bottom, [Blob()], threshold=2e-3) == bottom[0].count


@pytest.mark.parametrize("name, split", [("across", 0), ("within", 1)])
def test_matches_caffe(name, split, blocking):
    expected = load_expected("lrn")
    net = text_format.Parse(open(case_path("lrn", "net.prototxt")).read(), caffe_pb2.NetParameter())
    param = next(lp for lp in net.layer if lp.name == name)
    layer = create_layer(param, caffe_pb2.TEST)
    bottom, top = run(layer, expected["input/data"])
    assert_close(top.data, expected[f"data/{name}"], DATA_TOL, f"{name} data")
    top.diff[...] = expected[f"topdiff/{name}"]
    layer.backward([top], [True], [bottom])
    assert_close(bottom.diff, expected[f"diff/data_data_0_split_{split}"], DIFF_TOL, f"{name} diff")


@pytest.mark.parametrize("region", REGIONS)
def test_reshape_to_new_size_and_back(region):
    layer = lrn_layer(3, 1.0, 0.75, 1.0, region)
    rng = np.random.default_rng(3)
    bottom, top = Blob((2, 4, 5, 5)), Blob()
    layer.setup([bottom], [top])
    for shape in [(2, 4, 5, 5), (1, 6, 3, 7), (2, 4, 5, 5)]:
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        bottom.reshape(shape)
        bottom.data[...] = x
        layer.reshape([bottom], [top])
        layer.forward([bottom], [top])
        np.testing.assert_allclose(top.data, naive_lrn(x, 3, 1.0, 0.75, 1.0, region), rtol=2e-6)


def test_backward_respects_propagate_down():
    layer = lrn_layer()
    bottom, top = run(layer, np.ones((1, 3, 2, 2), np.float32))
    bottom.diff[...] = 7
    top.diff[...] = 1
    layer.backward([top], [False], [bottom])
    assert np.all(bottom.diff == 7)


def test_even_local_size_is_an_error():
    with pytest.raises(LayerError, match="'norm'.*odd"):
        lrn_layer(4).setup([Blob((1, 3, 2, 2))], [Blob()])


def test_needs_four_axes():
    with pytest.raises(LayerError, match="'norm'.*4 axes"):
        lrn_layer().setup([Blob((2, 3))], [Blob()])
