"""Slice, Tile, Filter, BatchReindex and Parameter on the host: values by
hand, BVLC's shape rules and errors, numerical gradients, and BVLC Caffe's
output (structure_more fixture, with its Flatten and Reshape)."""
import numpy as np
import pytest

from golden_util import check_golden_layer
from gradient_check import check_gradient, layer_param, make_blobs
from sppcaffe.blob import Blob
from sppcaffe.layer import LayerError, create_layer
from sppcaffe.net import Net
from sppcaffe.proto import caffe_pb2


def make_layer(text):
    return create_layer(layer_param(f'name: "L" {text}'), caffe_pb2.TEST)


def run(text, bottom, num_top=1):
    layer, top = make_layer(text), [Blob() for _ in range(num_top)]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return layer, top


def blob(values):
    values = np.asarray(values, np.float32)
    b = Blob(values.shape)
    b.data[...] = values
    return b


# ---- Slice -------------------------------------------------------------

@pytest.mark.parametrize("param, shape, num_top, axis, cuts", [
    ("slice_param { slice_point: 1 slice_point: 3 }", (2, 5, 3), 3, 1, [1, 3]),
    ("", (2, 6, 2), 3, 1, [2, 4]),                                  # equal parts
    ("slice_param { axis: 0 }", (4, 3), 2, 0, [2]),
    ("slice_param { axis: -1 slice_point: 2 }", (2, 2, 5), 2, 2, [2]),
    ("slice_param { slice_dim: 0 slice_point: 1 }", (3, 2), 2, 0, [1]),   # legacy spelling
])
def test_slice_cuts_along_the_axis(param, shape, num_top, axis, cuts):
    bottom = make_blobs(shape, seed=3)
    layer, top = run(f'type: "Slice" {param}', bottom, num_top)
    for t, part in zip(top, np.split(bottom[0].data, cuts, axis=axis)):
        np.testing.assert_array_equal(t.data, part)
    assert check_gradient(layer, bottom, top, setup=False) == bottom[0].count


def test_slice_backward_concatenates_top_diffs():
    bottom = make_blobs((2, 3, 2))
    layer, top = run('type: "Slice" slice_param { slice_point: 2 }', bottom, 2)
    top[0].diff[...], top[1].diff[...] = 1, 2
    bottom[0].diff[...] = np.nan
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff[:, :2], 1)
    np.testing.assert_array_equal(bottom[0].diff[:, 2], 2)


def test_slice_to_one_top_is_a_view():
    bottom = make_blobs((2, 3))
    _, top = run('type: "Slice"', bottom)
    assert np.shares_memory(top[0].data, bottom[0].data)
    assert np.shares_memory(top[0].diff, bottom[0].diff)


@pytest.mark.parametrize("param, shape, num_top, match", [
    ("", (2, 5), 2, r"Number of top blobs \(2\) should evenly divide input slice axis \(5\)"),
    ("slice_param { slice_point: 1 }", (2, 5), 3, "1 slice_point.*3 tops"),
    ("slice_param { slice_point: 2 slice_point: 2 }", (2, 5), 3, "must increase"),
    ("slice_param { slice_point: 0 }", (2, 5), 2, "must increase"),
    ("slice_param { slice_point: 7 }", (2, 5), 2, "beyond the slice axis"),
    ("slice_param { slice_point: 1 slice_point: 2 }", (2, 2), 3, "3 tops cannot slice"),
    ("slice_param { axis: 0 slice_dim: 0 }", (2, 4), 2, "not both"),
    ("slice_param { slice_dim: 2 }", (2, 4), 2, "slice_dim 2 out of range"),
    ("slice_param { axis: 2 }", (2, 4), 2, "axis 2 out of range"),
])
def test_slice_errors(param, shape, num_top, match):
    with pytest.raises(LayerError, match=f"'L' \\(Slice\\).*{match}"):
        run(f'type: "Slice" {param}', make_blobs(shape), num_top)


def test_slice_then_concat_gives_the_bottom_back():
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 5 dim: 3 } } }
    layer { name: "cut" type: "Slice" bottom: "x" top: "a" top: "b" top: "c"
            slice_param { axis: -1 slice_point: 1 slice_point: 2 } }
    layer { name: "join" type: "Concat" bottom: "a" bottom: "b" bottom: "c" top: "y"
            concat_param { axis: 2 } }
    """
    from google.protobuf import text_format
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe_pb2.TEST)
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(net.forward(x=x)["y"], x)


# ---- Tile --------------------------------------------------------------

def test_tile_repeats_the_axes_from_axis_on():
    x = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    _, top = run('type: "Tile" tile_param { tiles: 2 }', [blob(x)])
    np.testing.assert_array_equal(top[0].data, [[1, 2, 3, 1, 2, 3], [4, 5, 6, 4, 5, 6]])
    _, top = run('type: "Tile" tile_param { axis: 0 tiles: 2 }', [blob(x)])
    np.testing.assert_array_equal(top[0].data, np.concatenate([x, x]))


@pytest.mark.parametrize("param, shape, top_shape", [
    ("tile_param { tiles: 3 }", (2, 2, 3), (2, 6, 3)),
    ("tile_param { axis: -1 tiles: 2 }", (2, 3, 2), (2, 3, 4)),
    ("tile_param { axis: 0 tiles: 1 }", (3, 2), (3, 2)),
])
def test_tile_gradient_sums_the_tiles(param, shape, top_shape):
    bottom = make_blobs(shape, seed=4)
    layer, top = run(f'type: "Tile" {param}', bottom)
    assert top[0].shape == top_shape
    assert check_gradient(layer, bottom, top, setup=False) == bottom[0].count


@pytest.mark.parametrize("param, match", [
    ("", "Number of tiles must be specified"),
    ("tile_param { tiles: 0 }", "must be positive"),
    ("tile_param { tiles: 2 axis: 3 }", "axis 3 out of range"),
])
def test_tile_errors(param, match):
    with pytest.raises(LayerError, match=f"'L' \\(Tile\\).*{match}"):
        run(f'type: "Tile" {param}', make_blobs((2, 3)))


# ---- Filter ------------------------------------------------------------

def test_filter_keeps_items_with_a_nonzero_selector():
    x = np.arange(24, dtype=np.float32).reshape(4, 3, 2)
    labels = np.arange(4, dtype=np.float32).reshape(4, 1)
    selector = blob(np.array([[1], [0], [-0.5], [2]], np.float32))
    bottom = [blob(x), blob(labels), selector]
    layer, top = run('type: "Filter"', bottom, num_top=2)
    np.testing.assert_array_equal(top[0].data, x[[0, 2, 3]])
    np.testing.assert_array_equal(top[1].data, labels[[0, 2, 3]])
    top[0].diff[...] = 1
    bottom[0].diff[...] = np.nan
    layer.backward(top, [True, False, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff[[0, 2, 3]], 1)
    np.testing.assert_array_equal(bottom[0].diff[1], 0)        # filtered out: no gradient


def test_filter_setup_sizes_tops_before_reading_the_selector():
    # BVLC: the first reshape (at setup) gives every item; later ones count.
    bottom = [blob(np.ones((4, 2))), blob([0, 1, 0, 1])]
    layer, top = make_layer('type: "Filter"'), [Blob()]
    layer.setup(bottom, top)
    assert top[0].shape == (4, 2)
    layer.reshape(bottom, top)
    assert top[0].shape == (2, 2)


def test_filter_gradient():
    x = make_blobs((5, 2, 3), seed=2)[0]
    bottom = [x, blob([1, 1, 0, 1, 0])]
    layer, top = run('type: "Filter"', bottom)
    assert check_gradient(layer, bottom, top, check_bottom=[0], setup=False) == x.count


def test_filter_of_nothing_is_empty_and_its_gradient_zero():
    # Caffe divides by the top's item count in backward and crashes here.
    bottom = [make_blobs((3, 2))[0], blob([0, 0, 0])]
    layer, top = run('type: "Filter"', bottom)
    assert top[0].shape == (0, 2)
    bottom[0].diff[...] = np.nan
    layer.backward(top, [True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 0)


@pytest.mark.parametrize("shapes, num_top, match", [
    ([(4, 2), (4, 2)], 1, "Selector blob dimensions must be singletons"),
    ([(4, 2), (3,)], 1, "same 0th dimension as the selector"),
    ([(4, 2), (4, 3), (4,)], 1, "one top per filtered bottom"),
])
def test_filter_errors(shapes, num_top, match):
    with pytest.raises(LayerError, match=f"'L' \\(Filter\\).*{match}"):
        run('type: "Filter"', make_blobs(*shapes), num_top)


def test_filter_has_no_gradient_for_the_selector():
    bottom = [make_blobs((2, 2))[0], blob([1, 0])]
    layer, top = run('type: "Filter"', bottom)
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    with pytest.raises(LayerError, match="'L' \\(Filter\\).*selector"):
        layer.backward(top, [True, True], bottom)


# ---- BatchReindex --------------------------------------------------------

def test_batch_reindex_gathers_and_its_gradient_accumulates():
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    index = blob([3, 0, 3.9, 1])            # 3.9: Caffe casts to int (3)
    bottom = [blob(x), index]
    layer, top = run('type: "BatchReindex"', bottom)
    np.testing.assert_array_equal(top[0].data, x[[3, 0, 3, 1]])
    top[0].diff[...] = [[1, 2], [3, 4], [5, 6], [7, 8]]
    bottom[0].diff[...] = np.nan
    layer.backward(top, [True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, [[3, 4], [7, 8], [0, 0], [6, 8]])


def test_batch_reindex_gradient():
    x = make_blobs((3, 2, 2), seed=5)[0]
    bottom = [x, blob([2, 0, 2, 2, 1])]
    layer, top = run('type: "BatchReindex"', bottom)
    assert top[0].shape == (5, 2, 2)
    assert check_gradient(layer, bottom, top, check_bottom=[0], setup=False) == x.count


@pytest.mark.parametrize("index, match", [
    ([0, 3], "index 3 at position 1 is outside the batch"),
    ([-0.5, 1], "index -0.5 at position 0 is outside the batch"),
    ([[0, 1]], "must be 1-D"),
])
def test_batch_reindex_errors(index, match):
    with pytest.raises(LayerError, match=f"'L' \\(BatchReindex\\).*{match}"):
        run('type: "BatchReindex"', [make_blobs((3, 2))[0], blob(index)])


def test_batch_reindex_has_no_gradient_for_the_indices():
    bottom = [make_blobs((2, 2))[0], blob([1, 0])]
    layer, top = run('type: "BatchReindex"', bottom)
    assert not layer.allow_force_backward(1)
    with pytest.raises(LayerError, match="'L' \\(BatchReindex\\).*index"):
        layer.backward(top, [True, True], bottom)


# ---- Parameter ---------------------------------------------------------

def test_parameter_top_is_its_blob():
    layer, top = run('type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }', [])
    (param,) = layer.blobs
    assert param.shape == top[0].shape == (2, 3)
    assert not param.data.any()                     # Caffe fills nothing
    assert np.shares_memory(top[0].data, param.data)
    assert np.shares_memory(top[0].diff, param.diff)


def test_parameter_learns_from_the_gradient_reaching_its_top():
    text = """
    layer { name: "w" type: "Parameter" top: "w" parameter_param { shape { dim: 1 dim: 3 } } }
    layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "w" bottom: "x" top: "loss" }
    """
    from google.protobuf import text_format
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe_pb2.TRAIN)
    net.params["w"][0].data[...] = [[1, 2, 3]]
    net.blobs["x"].data[...] = [[0, 2, 5]]
    net.forward_backward()
    assert net.blobs["loss"].data == pytest.approx((1 + 0 + 4) / 2)
    np.testing.assert_allclose(net.params["w"][0].diff, [[1, 0, -2]])
    assert net.learnable_params[0] is net.params["w"][0]


# ---- every backward overwrites ---------------------------------------------

@pytest.mark.parametrize("text, bottom, num_top, propagate", [
    ('type: "Slice"', [(2, 4)], 2, [True]),
    ('type: "Tile" tile_param { tiles: 2 }', [(2, 3)], 1, [True]),
    ('type: "Filter"', [(3, 2), [1, 0, 1]], 1, [True, False]),
    ('type: "BatchReindex"', [(3, 2), [2, 2, 0]], 1, [True, False]),
])
def test_backward_overwrites_bottom_diffs(text, bottom, num_top, propagate):
    bottom = [make_blobs(b)[0] if isinstance(b, tuple) else blob(b) for b in bottom]
    layer, top = run(text, bottom, num_top)
    for t in top:
        t.diff[...] = 1
    bottom[0].diff[...] = np.nan
    layer.backward(top, propagate, bottom)
    assert np.isfinite(bottom[0].diff).all()


# ---- BVLC Caffe's output ---------------------------------------------------

@pytest.mark.parametrize("name", ["slice", "slice0", "tile", "filter", "reindex", "flat2", "resh",
                                  "param"])
def test_matches_caffe_structure_more(name):
    # The fixture's net has no loss and no force_backward, so Caffe ran no
    # backward: its bottom diffs are zero and say nothing about gradients
    # (checked numerically above).  Forward only; Parameter's gradient is
    # the top diff it shares.
    layer = check_golden_layer("structure_more", name, propagate_down=False)
    assert layer.name == name
