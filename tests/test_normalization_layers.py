"""BatchNorm and MVN (host code): forward and BatchNorm's running
statistics against hand computation, gradients in both BatchNorm modes and
every MVN flag combination, in place, Caffe's lr_mult rule, and MVN against
BVLC Caffe's structure_more fixture."""
import numpy as np
import pytest
from google.protobuf import text_format

import sppcaffe
from golden_util import DATA_TOL, assert_close, case_path, load_expected
from gradient_check import check_gradient, layer_param, make_blobs
from sppcaffe import io
from sppcaffe.blob import Blob
from sppcaffe.layer import LayerError, create_layer
from sppcaffe.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def batch_norm(text="", phase=TRAIN):
    return create_layer(layer_param(f'name: "bn" type: "BatchNorm" '
                                    f'batch_norm_param {{ {text} }}'), phase)


def channel_stats(x):
    axes = (0,) + tuple(range(2, x.ndim))
    x = x.astype(np.float64)
    return x.mean(axis=axes), x.var(axis=axes)


def per_channel(v, ndim):
    return np.asarray(v).reshape((1, -1) + (1,) * (ndim - 2))


# ---- BatchNorm: forward and statistics -----------------------------------------
@pytest.mark.parametrize("shape", [(4, 3, 5, 2), (6, 2), (2, 3, 2, 2, 3)])
def test_train_forward_uses_batch_statistics(shape):
    layer = batch_norm()
    bottom, top = make_blobs(shape, low=-2, high=3), [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    x = bottom[0].data
    mean, var = channel_stats(x)
    expected = (x - per_channel(mean, x.ndim)) / np.sqrt(per_channel(var, x.ndim) + 1e-5)
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-4, atol=1e-5)


def test_train_forward_updates_the_running_statistics():
    layer = batch_norm("moving_average_fraction: 0.9")
    shape = (4, 3, 5, 2)
    m = 4 * 5 * 2
    bottom, top = make_blobs(shape, low=-1, high=2), [Blob()]
    layer.setup(bottom, top)
    assert [b.shape for b in layer.blobs] == [(3,), (3,), (1,)]
    for b in layer.blobs:
        np.testing.assert_array_equal(b.data, 0)
    mean_sum, var_sum, factor = np.zeros(3), np.zeros(3), 0.0
    rng = np.random.default_rng(1)
    for _ in range(3):
        bottom[0].data[...] = rng.uniform(-1, 2, shape)
        layer.forward(bottom, top)
        mean, var = channel_stats(bottom[0].data)
        mean_sum = 0.9 * mean_sum + mean
        var_sum = 0.9 * var_sum + var * m / (m - 1)        # unbiased
        factor = 0.9 * factor + 1
        np.testing.assert_allclose(layer.blobs[0].data, mean_sum, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.blobs[1].data, var_sum, rtol=1e-5)
        np.testing.assert_allclose(layer.blobs[2].data, [factor], rtol=1e-6)


def test_single_value_per_channel_has_no_bias_correction():
    layer = batch_norm("moving_average_fraction: 0")
    bottom, top = make_blobs((1, 3)), [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, 0)
    np.testing.assert_array_equal(layer.blobs[1].data, 0)     # m = 1: factor 1, var 0


@pytest.mark.parametrize("phase,text", [(TEST, ""), (TRAIN, "use_global_stats: true")])
def test_global_stats_divide_by_the_scale_factor(phase, text):
    layer = batch_norm(f"eps: 0.01 {text}", phase)
    shape = (3, 2, 4)
    bottom, top = make_blobs(shape), [Blob()]
    layer.setup(bottom, top)
    layer.blobs[0].data[...] = [1.0, -2.0]
    layer.blobs[1].data[...] = [4.0, 0.5]
    layer.blobs[2].data[...] = 2.0
    saved = [b.data.copy() for b in layer.blobs]
    layer.forward(bottom, top)
    mean, var = np.array([0.5, -1.0]), np.array([2.0, 0.25])
    expected = (bottom[0].data - per_channel(mean, 3)) / np.sqrt(per_channel(var, 3) + 0.01)
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-6)
    for b, s in zip(layer.blobs, saved):                      # statistics stay
        np.testing.assert_array_equal(b.data, s)


def test_zero_scale_factor_means_zero_statistics():
    layer = batch_norm(phase=TEST)
    bottom, top = make_blobs((2, 3, 2)), [Blob()]
    layer.setup(bottom, top)
    layer.blobs[0].data[...] = 5
    layer.blobs[1].data[...] = 5
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, bottom[0].data / np.sqrt(1e-5), rtol=1e-6)


def test_use_global_stats_false_in_test_phase_uses_the_batch():
    layer = batch_norm("use_global_stats: false", TEST)
    bottom, top = make_blobs((4, 2, 3)), [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    y = top[0].data
    np.testing.assert_allclose(y.mean(axis=(0, 2)), 0, atol=1e-6)
    assert layer.blobs[2].data[0] == 1


# ---- BatchNorm: gradients ----------------------------------------------------
@pytest.mark.parametrize("phase,shape", [(TRAIN, (3, 2, 2, 2)), (TRAIN, (5, 3)),
                                         (TEST, (2, 3, 2, 2))])
def test_batch_norm_gradient(phase, shape):
    layer = batch_norm(phase=phase)
    bottom, top = make_blobs(shape, seed=3), [Blob()]
    layer.setup(bottom, top)
    if phase == TEST:
        layer.blobs[0].data[...] = [0.2, -0.1, 0.4]
        layer.blobs[1].data[...] = [1.5, 0.7, 2.0]
        layer.blobs[2].data[...] = 1.3
    # The statistics are not parameters: only the bottom is checked.
    assert check_gradient(layer, bottom, top, check_params=False, setup=False,
                          threshold=2e-3) > 0


@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_batch_norm_in_place_matches_out_of_place(phase):
    """Caffe keeps a copy of the normalised data: a later in-place layer
    overwriting the top must not change the gradient."""
    rng = np.random.default_rng(4)
    shape = (3, 2, 3)
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    dy = rng.uniform(-1, 1, shape).astype(np.float32)
    results = []
    for in_place in (False, True):
        layer = batch_norm(phase=phase)
        bottom = [Blob(shape)]
        bottom[0].data[...] = x
        top = bottom if in_place else [Blob()]
        layer.setup(bottom, top)
        layer.blobs[1].data[...] = 1
        layer.blobs[2].data[...] = 1
        layer.forward(bottom, top)
        y = top[0].data.copy()
        top[0].data[...] = 123          # an in-place successor clobbers it
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        results.append((y, bottom[0].diff.copy(), [b.data.copy() for b in layer.blobs]))
    (y0, dx0, s0), (y1, dx1, s1) = results
    np.testing.assert_allclose(y1, y0, rtol=1e-6)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-5, atol=1e-6)
    for a, b in zip(s0, s1):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_backward_overwrites_the_bottom_diff():
    layer = batch_norm()
    bottom, top = make_blobs((3, 2, 2)), [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = np.random.default_rng(0).uniform(-1, 1, (3, 2, 2))
    layer.backward(top, [True], bottom)
    once = bottom[0].diff.copy()
    bottom[0].diff[...] = 99
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, once)
    bottom[0].diff[...] = 7
    layer.backward(top, [False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 7)


# ---- BatchNorm: Caffe's lr_mult rule -----------------------------------------
BN_NET = """
layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
layer {{ name: "bn" type: "BatchNorm" bottom: "x" top: "y" {params} }}
"""


def bn_net(params=""):
    param = text_format.Parse(BN_NET.format(params=params), caffe_pb2.NetParameter())
    return sppcaffe.Net(param, sppcaffe.TRAIN)


@pytest.mark.parametrize("params", ["", "param { lr_mult: 0 }",
                                    "param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 }"])
def test_statistics_get_lr_mult_zero(params):
    net = bn_net(params)
    assert len(net.learnable_params) == 3
    assert net.params_lr == [0, 0, 0]
    specs = net.layer_dict["bn"].param.param
    assert len(specs) == 3 and all(s.lr_mult == 0 for s in specs)


def test_a_learning_rate_on_the_statistics_is_an_error():
    with pytest.raises(LayerError, match="lr_mult"):
        bn_net("param { lr_mult: 0 } param { lr_mult: 1 }")


def test_channel_count_is_fixed_at_setup():
    layer = batch_norm()
    layer.setup(make_blobs((2, 3, 2)), [Blob()])
    with pytest.raises(LayerError, match="channels"):
        layer.reshape(make_blobs((2, 4, 2)), [Blob()])


# ---- MVN -----------------------------------------------------------------------
MVN_FLAGS = [(nv, ac) for nv in (True, False) for ac in (False, True)]


def mvn(normalize_variance=True, across_channels=False, extra=""):
    flags = (f"normalize_variance: {str(normalize_variance).lower()} "
             f"across_channels: {str(across_channels).lower()}")
    return create_layer(layer_param(f'name: "mvn" type: "MVN" mvn_param {{ {flags} {extra} }}'),
                        TEST)


def mvn_expected(x, normalize_variance, across_channels, eps=1e-9):
    axes = tuple(range(1, x.ndim)) if across_channels else tuple(range(2, x.ndim))
    x = x.astype(np.float64)
    y = x - x.mean(axis=axes, keepdims=True)
    if normalize_variance:
        y /= np.sqrt((y ** 2).mean(axis=axes, keepdims=True)) + eps
    return y


@pytest.mark.parametrize("normalize_variance,across_channels", MVN_FLAGS)
def test_mvn_forward(normalize_variance, across_channels):
    layer = mvn(normalize_variance, across_channels)
    bottom, top = make_blobs((2, 3, 4, 5), low=-1, high=4), [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    expected = mvn_expected(bottom[0].data, normalize_variance, across_channels)
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-4, atol=1e-5)


def test_mvn_adds_eps_to_the_standard_deviation():
    layer = mvn(extra="eps: 0.5")
    bottom, top = [Blob((1, 1, 2))], [Blob()]
    bottom[0].data[...] = [[[1.0, 3.0]]]          # mean 2, std 1
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data.ravel(), [-1 / 1.5, 1 / 1.5], rtol=1e-6)


@pytest.mark.parametrize("normalize_variance,across_channels", MVN_FLAGS)
def test_mvn_gradient(normalize_variance, across_channels):
    layer = mvn(normalize_variance, across_channels)
    bottom, top = make_blobs((2, 3, 2, 2), seed=5), [Blob()]
    assert check_gradient(layer, bottom, top, threshold=2e-3) > 0


@pytest.mark.parametrize("normalize_variance,across_channels", MVN_FLAGS)
def test_mvn_in_place_matches_out_of_place(normalize_variance, across_channels):
    rng = np.random.default_rng(6)
    shape = (2, 3, 2, 2)
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    dy = rng.uniform(-1, 1, shape).astype(np.float32)
    results = []
    for in_place in (False, True):
        layer = mvn(normalize_variance, across_channels)
        bottom = [Blob(shape)]
        bottom[0].data[...] = x
        top = bottom if in_place else [Blob()]
        layer.setup(bottom, top)
        layer.forward(bottom, top)
        y = top[0].data.copy()
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        results.append((y, bottom[0].diff.copy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,top_shape", [((3, 4), (3, 4, 1, 1)), ((2, 3, 4), (2, 3, 4, 1)),
                                             ((5,), (5, 1, 1, 1))])
def test_mvn_top_is_four_dimensional_as_caffe(shape, top_shape):
    """Caffe's MVN reshapes its top with num/channels/height/width."""
    layer, bottom, top = mvn(), make_blobs(shape), [Blob()]
    layer.setup(bottom, top)
    assert top[0].shape == top_shape
    layer.forward(bottom, top)
    expected = mvn_expected(bottom[0].data.reshape(top_shape), True, False)
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-4, atol=1e-5)


def test_mvn_rejects_more_than_four_axes():
    with pytest.raises(LayerError, match="4 axes"):
        mvn().setup(make_blobs((2, 2, 2, 2, 2)), [Blob()])


def test_mvn_layers_match_caffe():
    """structure_more's three MVN layers alone, on its `data` blob (the
    fixture runs no backward)."""
    expected = load_expected("structure_more")
    net = io.read_net(case_path("structure_more", "net.prototxt"))
    checked = 0
    for p in net.layer:
        if p.type != "MVN":
            continue
        layer = create_layer(p, TEST)
        bottom, top = [Blob(expected["data/data"].shape)], [Blob()]
        bottom[0].data[...] = expected["data/data"]
        layer.setup(bottom, top)
        layer.forward(bottom, top)
        assert_close(top[0].data, expected[f"data/{p.top[0]}"], DATA_TOL, f"{p.name} forward")
        checked += 1
    assert checked == 3
