"""Reduction and ArgMax on the host: values by hand, Caffe's tie rule and
shapes, errors, numerical gradients, and BVLC Caffe's output
(structure_more and losses_more fixtures)."""
import numpy as np
import pytest

from golden_util import check_golden_layer
from gradient_check import check_gradient, layer_param, make_blobs
from sppcaffe.blob import Blob
from sppcaffe.layer import LayerError, create_layer
from sppcaffe.proto import caffe_pb2


def make_layer(text):
    return create_layer(layer_param(f'name: "L" {text}'), caffe_pb2.TEST)


def run(text, bottom):
    layer, top = make_layer(text), [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    return layer, top


def blob(values):
    values = np.asarray(values, np.float32)
    b = Blob(values.shape)
    b.data[...] = values
    return b


# ---- Reduction -----------------------------------------------------------

X = np.array([[[1, -2], [0, 3]], [[-1, 4], [2, -0.5]]], np.float32)     # (2, 2, 2)
SUM_OF = {"SUM": lambda r: r.sum(-1), "ASUM": lambda r: np.abs(r).sum(-1),
          "SUMSQ": lambda r: (r * r).sum(-1), "MEAN": lambda r: r.mean(-1)}


@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis, top_shape", [(0, ()), (1, (2,)), (2, (2, 2)), (-1, (2, 2))])
@pytest.mark.parametrize("coeff", [1.0, -0.5])
def test_reduction_values(op, axis, top_shape, coeff):
    _, top = run(f'type: "Reduction" reduction_param {{ operation: {op} axis: {axis} '
                 f'coeff: {coeff} }}', [blob(X)])
    assert top[0].shape == top_shape
    rows = X.reshape(int(np.prod(top_shape)), -1)
    np.testing.assert_allclose(top[0].data.ravel(), coeff * SUM_OF[op](rows), rtol=1e-6)


def test_reduction_defaults_to_the_sum_of_everything():
    layer, top = run('type: "Reduction"', [blob(X)])
    assert top[0].shape == () and top[0].data == pytest.approx(X.sum())


@pytest.mark.parametrize("op, expected", [
    ("SUM", [[3, 3, 3], [-1, -1, -1]]),
    ("MEAN", [[1, 1, 1], [-1 / 3, -1 / 3, -1 / 3]]),
    ("ASUM", [[3, 0, -3], [1, 0, -1]]),              # sign(0) = 0
    ("SUMSQ", [[12, 0, -6], [4, 0, -2]]),
])
def test_reduction_backward_by_hand(op, expected):
    x = blob([[2, 0, -1], [-2, 0, 1]])
    layer, top = run(f'type: "Reduction" reduction_param {{ operation: {op} axis: 1 '
                     f'coeff: 3 }}', [x])
    top[0].diff[...] = [1, -1 / 3]
    x.diff[...] = np.nan
    layer.backward(top, [True], [x])
    np.testing.assert_allclose(x.diff, expected, rtol=1e-6)


@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_reduction_gradient(op, axis):
    bottom = make_blobs((2, 3, 2), seed=7)
    layer, top = run(f'type: "Reduction" reduction_param {{ operation: {op} axis: {axis} '
                     f'coeff: 0.7 }}', bottom)
    # ASUM has a kink at 0: skip inputs within a step of it.
    kink = dict(kink=0.0, kink_range=0.02) if op == "ASUM" else {}
    assert check_gradient(layer, bottom, top, setup=False, **kink) > 0


def test_reduction_errors():
    with pytest.raises(LayerError, match="'L' \\(Reduction\\).*axis 3 out of range"):
        run('type: "Reduction" reduction_param { axis: 3 }', [blob(X)])
    b = blob(X)
    with pytest.raises(LayerError, match="'L' \\(Reduction\\).*in-place"):
        make_layer('type: "Reduction"').setup([b], [b])


# ---- ArgMax --------------------------------------------------------------

def test_argmax_ties_go_to_the_larger_index():
    # std::partial_sort with std::greater on (value, index) pairs.
    x = blob([[1, 5, 5, 2, 5]])
    _, top = run('type: "ArgMax" argmax_param { top_k: 4 out_max_val: true }', [x])
    assert top[0].shape == (1, 2, 4)
    np.testing.assert_array_equal(top[0].data[0], [[4, 2, 1, 3], [5, 5, 5, 2]])


@pytest.mark.parametrize("param, shape, expected", [
    ("", (2, 1, 1), [[[3]], [[0]]]),
    ("argmax_param { top_k: 2 }", (2, 1, 2), [[[3, 1]], [[0, 3]]]),
    ("argmax_param { out_max_val: true }", (2, 2, 1), [[[3], [4]], [[0], [6]]]),
    ("argmax_param { axis: 1 }", (2, 1), [[3], [0]]),
    ("argmax_param { axis: -1 top_k: 2 out_max_val: true }", (2, 2), [[4, 2], [6, 0]]),
    ("argmax_param { axis: 0 }", (1, 4), [[1, 0, 0, 0]]),
])
def test_argmax_outputs(param, shape, expected):
    x = blob([[1, 2, -1, 4], [6, -3, -2, 0]])
    _, top = run(f'type: "ArgMax" {param}', [x])
    assert top[0].shape == shape
    np.testing.assert_array_equal(top[0].data, expected)


def test_argmax_without_axis_searches_each_item_whole():
    x = np.random.default_rng(1).standard_normal((3, 2, 3, 4)).astype(np.float32)
    _, top = run('type: "ArgMax" argmax_param { top_k: 3 out_max_val: true }', [blob(x)])
    assert top[0].shape == (3, 2, 3, 1)
    flat = x.reshape(3, -1)
    order = np.argsort(-flat, axis=1)[:, :3]
    np.testing.assert_array_equal(top[0].data[:, 0, :, 0], order)
    np.testing.assert_array_equal(top[0].data[:, 1, :, 0], np.take_along_axis(flat, order, 1))


def test_argmax_along_a_middle_axis():
    x = np.random.default_rng(2).standard_normal((2, 5, 3, 2)).astype(np.float32)
    _, top = run('type: "ArgMax" argmax_param { axis: 1 top_k: 2 }', [blob(x)])
    assert top[0].shape == (2, 2, 3, 2)
    np.testing.assert_array_equal(top[0].data, np.argsort(-x, axis=1)[:, :2])


@pytest.mark.parametrize("param, match", [
    ("argmax_param { top_k: 0 }", "top k must not be less than 1"),
    ("argmax_param { top_k: 5 }", r"top_k \(5\) must be less than or equal to the dimension "
                                  r"of the flattened bottom blob per instance \(4\)"),
    ("argmax_param { top_k: 3 axis: 0 }", r"top_k \(3\) .* dimension of the axis \(2\)"),
    ("argmax_param { axis: 2 }", "axis 2 out of range"),
])
def test_argmax_errors(param, match):
    with pytest.raises(LayerError, match=f"'L' \\(ArgMax\\).*{match}"):
        run(f'type: "ArgMax" {param}', [blob(np.zeros((2, 4)))])


def test_argmax_has_no_gradient():
    x = blob([[1, 2]])
    layer, top = run('type: "ArgMax"', [x])
    assert not layer.allow_force_backward(0)
    layer.backward(top, [False], [x])               # nothing asked: nothing done
    with pytest.raises(LayerError, match="'L' \\(ArgMax\\).*no backward"):
        layer.backward(top, [True], [x])


# ---- BVLC Caffe's output ---------------------------------------------------

@pytest.mark.parametrize("name", ["red_sum", "red_asum", "red_sumsq", "red_mean"])
def test_reduction_matches_caffe(name):
    # No loss and no force_backward in this net: Caffe ran no backward, so
    # only the forward pass is compared (gradients are checked above).
    check_golden_layer("structure_more", name, propagate_down=False)


@pytest.mark.parametrize("name", ["argmax", "argmax_top2"])
def test_argmax_matches_caffe(name):
    check_golden_layer("losses_more", name, propagate_down=False)
