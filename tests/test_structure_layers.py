"""Concat, Flatten, Reshape, Split, Eltwise and Silence: shape rules,
views, numerical gradients and BVLC Caffe's output (fc_act fixture)."""
import numpy as np
import pytest
from google.protobuf import text_format

from golden_util import DATA_TOL, DIFF_TOL, assert_close, case_path, load_expected
from gradient_check import check_gradient, layer_param, make_blobs
from sppcaffe.blob import Blob
from sppcaffe.layer import LayerError, create_layer
from sppcaffe.proto import caffe_pb2


def make_layer(text):
    return create_layer(layer_param(f'name: "S" {text}'), caffe_pb2.TEST)


def setup(text, bottom, num_top=1):
    layer, top = make_layer(text), [Blob() for _ in range(num_top)]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    return layer, top


# ---- Concat ------------------------------------------------------------

@pytest.mark.parametrize("param, shapes, axis", [
    ("", [(2, 3, 4), (2, 1, 4), (2, 2, 4)], 1),
    ("concat_param { axis: 0 }", [(1, 3, 2), (3, 3, 2)], 0),
    ("concat_param { axis: -1 }", [(2, 3, 1), (2, 3, 2)], 2),
    ("concat_param { concat_dim: 0 }", [(2, 2), (1, 2)], 0),       # legacy spelling
])
def test_concat(param, shapes, axis):
    bottom = make_blobs(*shapes, seed=1)
    layer, top = setup(f'type: "Concat" {param}', bottom)
    np.testing.assert_array_equal(top[0].data, np.concatenate([b.data for b in bottom], axis))
    assert check_gradient(layer, bottom, top, setup=False) == sum(b.count for b in bottom)


def test_concat_single_bottom_shares_arrays():
    bottom = make_blobs((2, 3))
    _, top = setup('type: "Concat"', bottom)
    assert np.shares_memory(top[0].data, bottom[0].data)
    assert np.shares_memory(top[0].diff, bottom[0].diff)


@pytest.mark.parametrize("param, shapes, match", [
    ("", [(2, 3, 4), (2, 3, 5)], "same shape, except at concat_axis"),
    ("", [(2, 3, 4), (2, 3)], "same #axes"),
    ("concat_param { axis: 3 }", [(2, 3), (2, 3)], "axis 3 out of range"),
    ("concat_param { concat_dim: 2 }", [(2, 3), (2, 3)], "concat_dim 2 out of range"),
    ("concat_param { axis: 0 concat_dim: 0 }", [(2, 3), (2, 3)], "not both"),
])
def test_concat_errors(param, shapes, match):
    with pytest.raises(LayerError, match=f"'S'.*{match}"):
        setup(f'type: "Concat" {param}', make_blobs(*shapes))


# ---- Flatten and Reshape (views) ---------------------------------------

def assert_view(bottom, top, shape, shares_diff=True):
    """The top must be the bottom's data under another shape, and its diff
    too when `shares_diff`."""
    assert top.shape == shape
    assert np.shares_memory(top.data, bottom.data)
    assert np.shares_memory(top.diff, bottom.diff) == shares_diff
    np.testing.assert_array_equal(top.data.reshape(-1), bottom.data.reshape(-1))
    top.diff[...] = np.arange(top.count).reshape(shape)
    if shares_diff:
        np.testing.assert_array_equal(bottom.diff.reshape(-1), np.arange(bottom.count))


@pytest.mark.parametrize("param, shape", [
    ("", (2, 90)),
    ("flatten_param { axis: 2 }", (2, 3, 30)),
    ("flatten_param { end_axis: -2 }", (2, 18, 5)),
    ("flatten_param { axis: 0 end_axis: 1 }", (6, 6, 5)),
    ("flatten_param { axis: -1 }", (2, 3, 6, 5)),
])
def test_flatten(param, shape):
    bottom = make_blobs((2, 3, 6, 5))
    layer, top = setup(f'type: "Flatten" {param}', bottom)
    assert_view(bottom[0], top[0], shape, shares_diff=False)     # BVLC: its own until backward
    layer.backward(top, [True], bottom)           # hands the top's diff to the bottom
    np.testing.assert_array_equal(bottom[0].diff.reshape(-1), np.arange(bottom[0].count))


@pytest.mark.parametrize("param, shape", [
    ("shape { dim: 0 dim: -1 dim: 1 dim: 1 }", (2, 90, 1, 1)),
    ("shape { dim: 0 dim: 0 dim: 0 dim: 0 }", (2, 3, 6, 5)),
    ("shape { dim: 0 dim: 3 dim: 10 dim: -1 }", (2, 3, 10, 3)),
    ("axis: 1 shape { dim: 3 dim: 10 dim: -1 }", (2, 3, 10, 3)),
    ("axis: 0 num_axes: 0 shape { dim: 1 dim: 1 }", (1, 1, 2, 3, 6, 5)),
    ("axis: 2 num_axes: 0 shape { dim: 1 }", (2, 3, 1, 6, 5)),
    ("axis: -1 num_axes: 0 shape { dim: 1 dim: 1 }", (2, 3, 6, 5, 1, 1)),
    ("axis: 1 num_axes: 2 shape { dim: -1 }", (2, 18, 5)),
    ("axis: -2 shape { dim: 0 dim: 1 }", (2, 3, 6, 5, 1)),          # -1 is past the last axis
    ("shape { dim: -1 }", (180,)),
])
def test_reshape(param, shape):
    bottom = make_blobs((2, 3, 6, 5))
    _, top = setup(f'type: "Reshape" reshape_param {{ {param} }}', bottom)
    assert_view(bottom[0], top[0], shape)


@pytest.mark.parametrize("param, match", [
    ("shape { dim: -1 dim: -1 }", "multiple -1"),
    ("shape { dim: 7 dim: -1 }", "divisible"),
    ("shape { dim: 0 dim: 0 dim: 0 dim: 0 dim: 0 }", "no corresponding bottom axis"),
    ("shape { dim: 5 dim: 5 }", "must match input count"),
    ("axis: 5 shape { dim: 1 }", "axis 5 out of range"),
    ("axis: 3 num_axes: 2 shape { dim: -1 }", "out of range"),
])
def test_reshape_errors(param, match):
    with pytest.raises(LayerError, match=f"'S'.*{match}"):
        setup(f'type: "Reshape" reshape_param {{ {param} }}', make_blobs((2, 3, 6, 5)))


@pytest.mark.parametrize("kind", ['type: "Flatten"', 'type: "Reshape" reshape_param { shape { dim: -1 } }'])
def test_view_layers_follow_a_reallocated_bottom(kind):
    bottom = make_blobs((2, 3, 4))
    layer, top = setup(kind, bottom)
    bottom[0].reshape(5, 3, 4)                    # reallocates the arrays
    bottom[0].data[...] = 1.5
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    assert top[0].count == 60 and np.all(top[0].data == 1.5)
    assert np.shares_memory(top[0].diff, bottom[0].diff) == ("Reshape" in kind)   # Flatten: own diff


@pytest.mark.parametrize("kind", ['type: "Flatten"', 'type: "Reshape" reshape_param { shape { dim: -1 } }'])
def test_view_layers_refuse_in_place(kind):
    blob = Blob((2, 3))
    with pytest.raises(LayerError, match="'S'.*in-place"):
        make_layer(kind).setup([blob], [blob])


# ---- Split -------------------------------------------------------------

@pytest.mark.parametrize("num_top", [1, 2, 3])
def test_split(num_top):
    bottom = make_blobs((2, 3, 4))
    layer, top = setup('type: "Split"', bottom, num_top)
    assert all(t.data is bottom[0].data for t in top)
    assert len({id(t.diff) for t in top} | {id(bottom[0].diff)}) == num_top + 1
    assert check_gradient(layer, bottom, top, setup=False) == bottom[0].count


# ---- Eltwise -----------------------------------------------------------

def separated_blobs(count, shape, seed=0):
    """Bottoms whose values all differ by more than twice the gradient
    checker's step, so MAX has no kink inside a finite difference, and
    none is 0, which the unstable PROD gradient divides by."""
    values = np.random.default_rng(seed).permutation(count * int(np.prod(shape))) * 0.05 - 0.975
    blobs = [Blob(shape) for _ in range(count)]
    for b, v in zip(blobs, values.reshape(count, *shape)):
        b.data[...] = v
    return blobs


@pytest.mark.parametrize("param, reference", [
    ("", lambda a, b, c: a + b + c),
    ("eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 1 }", lambda a, b, c: 0.5 * a - 2 * b + c),
    ("eltwise_param { operation: PROD }", lambda a, b, c: a * b * c),
    ("eltwise_param { operation: PROD stable_prod_grad: false }", lambda a, b, c: a * b * c),
    ("eltwise_param { operation: MAX }", lambda a, b, c: np.maximum(np.maximum(a, b), c)),
])
def test_eltwise(param, reference):
    bottom = separated_blobs(3, (2, 3, 4))
    layer, top = setup(f'type: "Eltwise" {param}', bottom)
    np.testing.assert_allclose(top[0].data, reference(*(b.data.astype(np.float64) for b in bottom)),
                               rtol=1e-6, atol=1e-7)
    assert check_gradient(layer, bottom, top, setup=False) == 3 * bottom[0].count


def test_eltwise_max_ties_follow_caffe():
    # Bottom 1 wins a tie with bottom 0; a later bottom must be strictly greater.
    bottom = [Blob((3,)) for _ in range(3)]
    bottom[0].data[...] = [1, 2, 3]
    bottom[1].data[...] = [1, 2, 0]
    bottom[2].data[...] = [1, 0, 3]
    layer, top = setup('type: "Eltwise" eltwise_param { operation: MAX }', bottom)
    top[0].diff[...] = 1
    layer.backward(top, [True] * 3, bottom)
    np.testing.assert_array_equal([b.diff for b in bottom], [[0, 0, 1], [1, 1, 0], [0, 0, 0]])


@pytest.mark.parametrize("param, shapes, match", [
    ("eltwise_param { coeff: 1 }", [(2,), (2,)], "one coefficient per bottom"),
    ("eltwise_param { operation: PROD coeff: 1 coeff: 2 }", [(2,), (2,)],
     "only takes coefficients for summation"),
    ("", [(2, 3), (3, 2)], "same shape"),
    ("", [(2, 3)], "at least 2 bottom"),
])
def test_eltwise_errors(param, shapes, match):
    with pytest.raises(LayerError, match=f"'S'.*{match}"):
        setup(f'type: "Eltwise" {param}', make_blobs(*shapes))


# ---- Silence -----------------------------------------------------------

def test_silence_zeroes_only_requested_diffs():
    bottom = make_blobs((2, 3), (4,))
    layer, _ = setup('type: "Silence"', bottom, num_top=0)
    for b in bottom:
        b.diff[...] = 3
    layer.backward([], [True, False], bottom)
    assert np.all(bottom[0].diff == 0) and np.all(bottom[1].diff == 3)


# ---- BVLC Caffe's output -----------------------------------------------

# fc_act fixture: layer -> blobs holding its bottoms' data, blobs holding their diffs.
GOLDEN = {
    "sum": (["leaky", "sig"], ["leaky_leaky_0_split_0", "sig_sig_0_split_0"]),
    "prod": (["sig", "tanh"], ["sig_sig_0_split_1", "tanh_tanh_0_split_0"]),
    "emax": (["leaky", "tanh"], ["leaky_leaky_0_split_1", "tanh_tanh_0_split_1"]),
    "cat": (["sum", "prod", "emax"], ["sum", "prod", "emax"]),
    "flat": (["data"], ["data_data_0_split_2"]),
}


@pytest.mark.parametrize("name", GOLDEN)
def test_matches_caffe(name):
    expected = load_expected("fc_act")
    net = text_format.Parse(open(case_path("fc_act", "net.prototxt")).read(), caffe_pb2.NetParameter())
    layer = create_layer(next(lp for lp in net.layer if lp.name == name), caffe_pb2.TEST)
    sources, diffs = GOLDEN[name]
    bottom = [Blob(expected[f"data/{s}"].shape) for s in sources]
    for b, s in zip(bottom, sources):
        b.data[...] = expected[f"data/{s}"]
    top = [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    assert_close(top[0].data, expected[f"data/{name}"], DATA_TOL, f"{name} data")
    top[0].diff[...] = expected[f"diff/{name}"]
    layer.backward(top, [True] * len(bottom), bottom)
    for b, d in zip(bottom, diffs):
        assert_close(b.diff, expected[f"diff/{d}"], DIFF_TOL, f"{name} diff to {d}")
