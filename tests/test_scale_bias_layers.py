"""Scale and Bias (host code): forward against NumPy broadcasting, gradients
for one and two bottoms, every axis/num_axes form and bias_term, in place,
Caffe's blob layout and shape checks."""
import numpy as np
import pytest
from google.protobuf import text_format

import sppcaffe
from golden_util import DATA_TOL, assert_close, load_expected
from gradient_check import (check_gradient, check_overwrite_and_accumulate, layer_param,
                            make_blobs)
from sppcaffe.blob import Blob
from sppcaffe.layer import LayerError, create_layer
from sppcaffe.proto import caffe_pb2

TEST = caffe_pb2.TEST


def make_layer(kind, text=""):
    field = "scale_param" if kind == "Scale" else "bias_param"
    return create_layer(layer_param(f'name: "op" type: "{kind}" {field} {{ {text} }}'), TEST)


def randomize_params(layer, seed=3):
    rng = np.random.default_rng(seed)
    for b in layer.blobs:
        b.data[...] = rng.uniform(0.5, 1.5, size=b.shape)


def expand(operand, shape, axis):
    """`operand` placed at `axis` of `shape`, ready to broadcast."""
    operand = np.asarray(operand)
    if operand.ndim == 0:
        return operand
    return operand.reshape((1,) * axis + operand.shape + (1,) * (len(shape) - axis - operand.ndim))


SHAPE = (2, 3, 4, 2)
# (params, learned operand shape, the axis it sits at)
LEARNED_FORMS = [
    ("", (3,), 1),
    ("axis: 0 num_axes: 2", (2, 3), 0),
    ("axis: 1 num_axes: -1", (3, 4, 2), 1),
    ("axis: -2 num_axes: 1", (4,), 2),
    ("num_axes: 0", (), 0),
    ("axis: 0 num_axes: -1", SHAPE, 0),           # elementwise
    ("axis: 3 num_axes: 1", (2,), 3),
]


@pytest.mark.parametrize("kind", ["Scale", "Bias"])
@pytest.mark.parametrize("text,shape,axis", LEARNED_FORMS)
def test_learned_operand_forward(kind, text, shape, axis):
    layer = make_layer(kind, text)
    bottom, top = make_blobs(SHAPE), [Blob()]
    layer.setup(bottom, top)
    assert [b.shape for b in layer.blobs] == [shape]
    randomize_params(layer)
    layer.forward(bottom, top)
    operand = expand(layer.blobs[0].data, SHAPE, axis)
    x = bottom[0].data
    expected = x * operand if kind == "Scale" else x + operand
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-6)


@pytest.mark.parametrize("kind", ["Scale", "Bias"])
@pytest.mark.parametrize("text,shape,axis", LEARNED_FORMS)
def test_learned_operand_gradient(kind, text, shape, axis):
    layer = make_layer(kind, text)
    bottom, top = make_blobs(SHAPE), [Blob()]
    layer.setup(bottom, top)
    randomize_params(layer)
    assert check_gradient(layer, bottom, top, setup=False) > 0


@pytest.mark.parametrize("kind", ["Scale", "Bias"])
@pytest.mark.parametrize("axis,operand_shape", [(1, (3,)), (0, (2, 3)), (1, (3, 4)), (2, (4, 2)),
                                                (0, ())])
def test_operand_from_a_second_bottom(kind, axis, operand_shape):
    field = "scale_param" if kind == "Scale" else "bias_param"
    layer = create_layer(layer_param(f'name: "op" type: "{kind}" {field} {{ axis: {axis} }}'),
                         TEST)
    bottom = make_blobs(SHAPE, operand_shape, seed=4)
    top = [Blob()]
    layer.setup(bottom, top)
    assert layer.blobs == []
    layer.forward(bottom, top)
    operand = expand(bottom[1].data, SHAPE, axis)
    x = bottom[0].data
    expected = x * operand if kind == "Scale" else x + operand
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-6)
    assert check_gradient(layer, bottom, top, setup=False) > 0


@pytest.mark.parametrize("kind", ["Scale", "Bias"])
def test_second_bottom_gradient_is_overwritten_and_params_accumulate(kind):
    two = make_layer(kind)
    bottom, top = make_blobs(SHAPE, (3,), seed=2), [Blob()]
    two.setup(bottom, top)
    two.forward(bottom, top)
    top[0].diff[...] = 1
    bottom[1].diff[...] = 50
    two.backward(top, [True, True], bottom)
    once = bottom[1].diff.copy()
    two.backward(top, [True, True], bottom)
    np.testing.assert_array_equal(bottom[1].diff, once)

    one = make_layer(kind, "bias_term: true" if kind == "Scale" else "")
    bottom, top = make_blobs(SHAPE), [Blob()]
    one.setup(bottom, top)
    randomize_params(one)
    check_overwrite_and_accumulate(one, bottom, top)


def test_scale_bias_term_layout_and_gradient():
    layer = make_layer("Scale", "bias_term: true bias_filler { type: 'constant' value: 0.5 }")
    bottom, top = make_blobs(SHAPE), [Blob()]
    layer.setup(bottom, top)
    assert [b.shape for b in layer.blobs] == [(3,), (3,)]
    np.testing.assert_array_equal(layer.blobs[0].data, 1)      # default filler: constant 1
    np.testing.assert_array_equal(layer.blobs[1].data, 0.5)
    randomize_params(layer)
    layer.forward(bottom, top)
    s, b = (expand(p.data, SHAPE, 1) for p in layer.blobs)
    np.testing.assert_allclose(top[0].data, bottom[0].data * s + b, rtol=1e-6)
    assert check_gradient(layer, bottom, top, setup=False) > 0


@pytest.mark.parametrize("axis,num_axes", [(1, 2), (0, -1), (2, 0)])
def test_scale_bias_term_follows_axis_and_num_axes(axis, num_axes):
    layer = make_layer("Scale", f"axis: {axis} num_axes: {num_axes} bias_term: true")
    bottom, top = make_blobs(SHAPE), [Blob()]
    layer.setup(bottom, top)
    assert layer.blobs[0].shape == layer.blobs[1].shape
    randomize_params(layer)
    assert check_gradient(layer, bottom, top, setup=False) > 0


def test_scale_with_two_bottoms_and_bias_term():
    layer = make_layer("Scale", "axis: 1 bias_term: true")
    bottom, top = make_blobs(SHAPE, (3, 4), seed=6), [Blob()]
    layer.setup(bottom, top)
    assert [b.shape for b in layer.blobs] == [(3, 4)]          # only the bias is learned
    randomize_params(layer)
    layer.forward(bottom, top)
    expected = bottom[0].data * expand(bottom[1].data, SHAPE, 1) + \
        expand(layer.blobs[0].data, SHAPE, 1)
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-6)
    assert check_gradient(layer, bottom, top, setup=False) > 0


def test_filler_is_used_when_given():
    layer = make_layer("Scale", "filler { type: 'constant' value: 3 }")
    layer.setup(make_blobs(SHAPE), [Blob()])
    np.testing.assert_array_equal(layer.blobs[0].data, 3)
    bias = make_layer("Bias")
    bias.setup(make_blobs(SHAPE), [Blob()])
    np.testing.assert_array_equal(bias.blobs[0].data, 0)        # Bias' default: constant 0


@pytest.mark.parametrize("kind,text", [("Scale", ""), ("Scale", "bias_term: true"),
                                       ("Scale", "num_axes: 0"), ("Bias", "")])
def test_in_place_matches_out_of_place(kind, text):
    rng = np.random.default_rng(8)
    x = rng.uniform(-1, 1, SHAPE).astype(np.float32)
    dy = rng.uniform(-1, 1, SHAPE).astype(np.float32)
    results = []
    for in_place in (False, True):
        layer = make_layer(kind, text)
        bottom = [Blob(SHAPE)]
        bottom[0].data[...] = x
        top = bottom if in_place else [Blob()]
        layer.setup(bottom, top)
        randomize_params(layer)
        layer.forward(bottom, top)
        y = top[0].data.copy()
        top[0].diff[...] = dy
        for p in layer.blobs:
            p.diff[...] = 0
        layer.backward(top, [True], bottom)
        results.append([y, bottom[0].diff.copy()] + [p.diff.copy() for p in layer.blobs])
    for out, in_place in zip(*results):
        np.testing.assert_allclose(in_place, out, rtol=1e-6)


@pytest.mark.parametrize("kind", ["Scale", "Bias"])
def test_propagate_down_false_leaves_bottom_diffs(kind):
    layer = make_layer(kind)
    bottom, top = make_blobs(SHAPE, (3,)), [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    for b in bottom:
        b.diff[...] = 7
    layer.backward(top, [False, False], bottom)
    for b in bottom:
        np.testing.assert_array_equal(b.diff, 7)


@pytest.mark.parametrize("kind", ["Scale", "Bias"])
@pytest.mark.parametrize("text,operand", [("axis: 1", (4,)), ("axis: 2", (4, 2, 1)),
                                          ("axis: 5", (3,))])
def test_operand_shape_mismatch_is_an_error(kind, text, operand):
    field = "scale_param" if kind == "Scale" else "bias_param"
    layer = create_layer(layer_param(f'name: "op" type: "{kind}" {field} {{ {text} }}'), TEST)
    with pytest.raises(LayerError, match="'op'"):
        layer.setup(make_blobs(SHAPE, operand), [Blob()])


@pytest.mark.parametrize("kind", ["Scale", "Bias"])
@pytest.mark.parametrize("text", ["num_axes: -2", "axis: 3 num_axes: 2", "axis: 4"])
def test_bad_learned_geometry_is_an_error(kind, text):
    with pytest.raises(LayerError, match="'op'"):
        make_layer(kind, text).setup(make_blobs(SHAPE), [Blob()])


def test_reshape_checks_a_changed_bottom():
    layer = make_layer("Scale")
    layer.setup(make_blobs(SHAPE), [Blob()])
    with pytest.raises(LayerError, match="mismatch"):
        layer.reshape(make_blobs((2, 5, 4, 2)), [Blob()])


NET = """
force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 2 } } }
layer { name: "a" type: "Scale" bottom: "x" top: "a" param { name: "s" } param { name: "b" }
        scale_param { bias_term: true } }
layer { name: "b" type: "Scale" bottom: "a" top: "b" param { name: "s" } param { name: "b" }
        scale_param { bias_term: true } }
"""


def test_shared_bias_through_the_inner_layer():
    """The net may swap Scale's bias blob for a shared one: the inner Bias
    layer must use (and send its gradient to) that blob."""
    net = sppcaffe.Net(text_format.Parse(NET, caffe_pb2.NetParameter()), sppcaffe.TEST)
    a, b = net.params["a"], net.params["b"]
    assert a[1] is b[1]
    a[0].data[...] = [1.0, 2.0, 3.0]
    a[1].data[...] = [0.5, -1.0, 2.0]
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 2)).astype(np.float32)
    out = net.forward(x=x)["b"]
    s, bias = a[0].data.reshape(1, 3, 1), a[1].data.reshape(1, 3, 1)
    np.testing.assert_allclose(out, (x * s + bias) * s + bias, rtol=1e-6)
    net.blobs["b"].diff[...] = 1
    net.backward()
    da = s * np.ones_like(x)             # d b / d a
    expected = np.ones_like(x).sum(axis=(0, 2)) + da.sum(axis=(0, 2))
    np.testing.assert_allclose(a[1].diff, expected, rtol=1e-6)


def test_scalar_scale_matches_caffe():
    """structure_more's `pre`: a learned scalar (axis 0, num_axes 0)."""
    expected = load_expected("structure_more")
    layer = create_layer(layer_param('name: "pre" type: "Scale" '
                                     'scale_param { axis: 0 num_axes: 0 }'), TEST)
    bottom, top = [Blob(expected["data/x"].shape)], [Blob()]
    bottom[0].data[...] = expected["data/x"]
    layer.setup(bottom, top)
    assert layer.blobs[0].shape == expected["param/pre/0"].shape == ()
    layer.blobs[0].data[...] = expected["param/pre/0"]
    layer.forward(bottom, top)
    assert_close(top[0].data, expected["data/data"], DATA_TOL, "pre forward")
