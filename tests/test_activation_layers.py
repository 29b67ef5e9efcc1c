"""ReLU, Sigmoid, TanH and Dropout: values, gradients, in-place use and
BVLC Caffe's output on the fc_act fixture."""
import numpy as np
import pytest
from google.protobuf import text_format

from golden_util import DATA_TOL, DIFF_TOL, assert_close, case_path, load_expected
from gradient_check import check_gradient, layer_param, make_blobs
from sppcaffe.blob import Blob
from sppcaffe.layer import LayerError, create_layer
from sppcaffe.layers.activations import DropoutLayer
from sppcaffe.proto import caffe_pb2
from sppcaffe.random import set_random_seed

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def make_layer(text, phase=TEST):
    return create_layer(layer_param(f'name: "act" {text}'), phase)


class ReseededDropout(DropoutLayer):
    """Draws the same mask on every forward, as Caffe's gradient checker
    arranges by reseeding before each one."""

    def forward(self, bottom, top):
        set_random_seed(1234)
        super().forward(bottom, top)


def reseeded_dropout(ratio=0.3):
    return ReseededDropout(layer_param(f'name: "act" type: "Dropout" '
                                       f'dropout_param {{ dropout_ratio: {ratio} }}'), TRAIN)


# (layer factory, reference forward).
CASES = {
    "relu": (lambda: make_layer('type: "ReLU"'), lambda x: np.maximum(x, 0)),
    "leaky": (lambda: make_layer('type: "ReLU" relu_param { negative_slope: 0.1 }'),
              lambda x: np.where(x > 0, x, 0.1 * x)),
    "sigmoid": (lambda: make_layer('type: "Sigmoid"'), lambda x: 1 / (1 + np.exp(-x))),
    "tanh": (lambda: make_layer('type: "TanH"'), np.tanh),
    "dropout_test": (lambda: make_layer('type: "Dropout"'), lambda x: x),
}


@pytest.mark.parametrize("name", CASES)
def test_forward_values(name):
    factory, reference = CASES[name]
    bottom, top = make_blobs((3, 4, 5), seed=1, low=-4, high=4), [Blob()]
    layer = factory()
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    expected = reference(bottom[0].data.astype(np.float64))
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", [*CASES, "dropout_train"])
def test_gradient(name):
    layer = reseeded_dropout() if name == "dropout_train" else CASES[name][0]()
    bottom = make_blobs((2, 3, 4), seed=2, low=-3, high=3)
    # ReLU's kink at 0: skip inputs closer to it than the finite-difference step.
    checked = check_gradient(layer, bottom, [Blob()], kink=0.0, kink_range=0.02)
    assert checked > 0.9 * bottom[0].count


@pytest.mark.parametrize("name", [*CASES, "dropout_train"])
def test_in_place_equals_out_of_place(name):
    def factory():
        return reseeded_dropout() if name == "dropout_train" else CASES[name][0]()
    x = make_blobs((4, 5), seed=3, low=-2, high=2)[0].data
    dy = make_blobs((4, 5), seed=4)[0].data

    separate, bottom, top = factory(), Blob(x.shape), Blob()
    bottom.data[...] = x
    separate.setup([bottom], [top])
    separate.forward([bottom], [top])
    top.diff[...] = dy
    separate.backward([top], [True], [bottom])

    in_place, blob = factory(), Blob(x.shape)
    blob.data[...] = x
    in_place.setup([blob], [blob])
    in_place.forward([blob], [blob])
    np.testing.assert_array_equal(blob.data, top.data)
    blob.diff[...] = dy
    in_place.backward([blob], [True], [blob])
    np.testing.assert_array_equal(blob.diff, bottom.diff)


@pytest.mark.parametrize("name", CASES)
def test_backward_respects_propagate_down(name):
    layer, bottom, top = CASES[name][0](), make_blobs((3, 2)), [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    bottom[0].diff[...] = 5
    top[0].diff[...] = 1
    layer.backward(top, [False], bottom)
    assert np.all(bottom[0].diff == 5)


def dropout(ratio, phase):
    return make_layer(f'type: "Dropout" dropout_param {{ dropout_ratio: {ratio} }}', phase)


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.9])
def test_dropout_train_scales_kept_units(ratio):
    layer, bottom, top = dropout(ratio, TRAIN), Blob((1000, 1000)), Blob()
    bottom.data[...] = 2
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    kept = top.data != 0
    # Caffe computes the scale in double from the float32 ratio.
    scale = np.float32(1 / (1 - float(np.float32(ratio))))
    # 10^6 draws: the kept fraction is within 0.003 of 1 - ratio with overwhelming odds.
    assert abs(kept.mean() - (1 - ratio)) < 3e-3
    np.testing.assert_array_equal(top.data[kept], np.float32(2) * scale)
    top.diff[...] = 1
    layer.backward([top], [True], [bottom])
    np.testing.assert_array_equal(bottom.diff != 0, kept)
    np.testing.assert_array_equal(bottom.diff[kept], scale)


def test_dropout_masks_follow_the_seed():
    def mask(seed):
        set_random_seed(seed)
        layer, bottom, top = dropout(0.5, TRAIN), Blob((50, 50)), Blob()
        bottom.data[...] = 1
        layer.setup([bottom], [top])
        layer.forward([bottom], [top])
        first = top.data != 0
        layer.forward([bottom], [top])
        return first, top.data != 0

    a1, a2 = mask(7)
    b1, _ = mask(7)
    np.testing.assert_array_equal(a1, b1)
    assert not np.array_equal(a1, a2)      # a fresh mask on every forward


def test_dropout_test_phase_is_identity():
    layer, bottom, top = dropout(0.7, TEST), make_blobs((6, 7))[0], Blob()
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    np.testing.assert_array_equal(top.data, bottom.data)
    top.diff[...] = np.arange(42).reshape(6, 7)
    layer.backward([top], [True], [bottom])
    np.testing.assert_array_equal(bottom.diff, top.diff)


@pytest.mark.parametrize("ratio", [1.0, -0.1])
def test_dropout_ratio_out_of_range(ratio):
    with pytest.raises(LayerError, match="'act'.*dropout_ratio"):
        dropout(ratio, TRAIN).setup([Blob((2, 2))], [Blob()])


# fc_act fixture: layer name -> (bottom blob, blob whose diff is the layer's bottom diff).
GOLDEN = {"leaky": ("ip", "ip_ip_0_split_0"), "sig": ("ip", "ip_ip_0_split_1"),
          "tanh": ("ip_nb", "ip_nb"), "drop": ("flat", "flat")}


@pytest.mark.parametrize("name", GOLDEN)
def test_matches_caffe(name):
    expected = load_expected("fc_act")
    net = text_format.Parse(open(case_path("fc_act", "net.prototxt")).read(), caffe_pb2.NetParameter())
    layer = create_layer(next(lp for lp in net.layer if lp.name == name), TEST)
    source, diff_blob = GOLDEN[name]
    bottom, top = Blob(expected[f"data/{source}"].shape), Blob()
    bottom.data[...] = expected[f"data/{source}"]
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    assert_close(top.data, expected[f"data/{name}"], DATA_TOL, f"{name} data")
    top.diff[...] = expected[f"diff/{name}"]
    layer.backward([top], [True], [bottom])
    assert_close(bottom.diff, expected[f"diff/{diff_blob}"], DIFF_TOL, f"{name} diff")
