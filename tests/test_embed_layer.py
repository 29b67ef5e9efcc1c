"""Embed: Caffe's lookup-table layer (indices held as floats), its checks,
gradients accumulated by index, and the BVLC fixture's embedding."""
import numpy as np
import pytest

from gradient_check import check_gradient, layer_param
from golden_util import DATA_TOL, assert_close, golden_layers, load_expected
from sppcaffe.blob import Blob
from sppcaffe.layer import LayerError, create_layer
from sppcaffe.proto import caffe_pb2

FILLERS = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'


def embed_layer(settings="num_output: 4 input_dim: 5"):
    text = f'name: "embed" type: "Embed" embed_param {{ {settings} {FILLERS} }}'
    return create_layer(layer_param(text), caffe_pb2.TRAIN)


def indices_blob(values):
    values = np.asarray(values, np.float32)
    blob = Blob(values.shape)
    blob.data[...] = values
    return blob


def setup(values, settings="num_output: 4 input_dim: 5"):
    layer, bottom, top = embed_layer(settings), [indices_blob(values)], [Blob()]
    layer.setup(bottom, top)
    return layer, bottom, top


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(6,), (3, 2), (2, 1, 3)])
def test_forward_picks_rows_and_adds_the_bias(bias, shape):
    idx = np.random.default_rng(0).integers(0, 5, size=shape)
    layer, bottom, top = setup(idx, f"num_output: 4 input_dim: 5 bias_term: {str(bias).lower()}")
    assert layer.blobs[0].shape == (5, 4)
    assert [b.shape for b in layer.blobs[1:]] == ([(4,)] if bias else [])
    assert top[0].shape == shape + (4,)
    layer.forward(bottom, top)
    expected = layer.blobs[0].data[idx]
    if bias:
        expected = expected + layer.blobs[1].data
    np.testing.assert_array_equal(top[0].data, expected)


def test_weight_gradient_adds_up_repeated_indices():
    idx = np.array([[1, 3], [1, 1], [0, 3]])
    layer, bottom, top = setup(idx)
    layer.forward(bottom, top)
    dy = np.random.default_rng(1).uniform(-1, 1, size=top[0].shape).astype(np.float32)
    top[0].diff[...] = dy
    for p in layer.blobs:
        p.diff[...] = 0
    layer.backward(top, [False], bottom)
    expected = np.zeros((5, 4), np.float64)
    for i, row in zip(idx.ravel(), dy.reshape(-1, 4)):
        expected[i] += row
    np.testing.assert_allclose(layer.blobs[0].diff, expected, rtol=1e-6)
    np.testing.assert_allclose(layer.blobs[1].diff, dy.reshape(-1, 4).sum(0), rtol=1e-6)
    assert not layer.blobs[0].diff[[2, 4]].any()      # unused rows get nothing
    # Parameter gradients accumulate over backward passes, as Caffe's do.
    layer.backward(top, [False], bottom)
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * expected, rtol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_parameter_gradients(bias):
    layer = embed_layer(f"num_output: 3 input_dim: 4 bias_term: {str(bias).lower()}")
    bottom, top = [indices_blob([[0, 2, 2], [3, 0, 1]])], [Blob()]
    assert check_gradient(layer, bottom, top, check_bottom=[]) == (15 if bias else 12)


@pytest.mark.parametrize("value", [1.5, -1, 5, 7, np.nan])
def test_non_integer_or_out_of_range_index_is_an_error(value):
    layer, bottom, top = setup([0, 1, 2])
    bottom[0].data[1] = value
    with pytest.raises(LayerError, match="embed"):
        layer.forward(bottom, top)


def test_no_gradient_for_the_indices():
    layer, bottom, top = setup([0, 1])
    layer.forward(bottom, top)
    with pytest.raises(LayerError, match="backpropagate"):
        layer.backward(top, [True], bottom)


@pytest.mark.parametrize("settings", ["num_output: 0 input_dim: 3", "num_output: 3"])
def test_sizes_must_be_positive(settings):
    with pytest.raises(LayerError, match="positive"):
        setup([0], settings)


def test_loaded_parameters_must_have_caffe_shapes():
    layer = embed_layer()
    layer.blobs = [Blob((4, 5)), Blob((4,))]       # InnerProduct's layout, not Embed's
    with pytest.raises(LayerError, match="shapes"):
        layer.setup([indices_blob([0])], [Blob()])


def test_matches_caffe_fixture():
    net, weights = golden_layers("embed_recurrent")
    expected = load_expected("embed_recurrent")
    param = next(p for p in net.layer if p.type == "Embed")
    layer = create_layer(param, caffe_pb2.TEST)
    for array in weights[param.name]:
        layer.blobs.append(Blob(array.shape))
        layer.blobs[-1].data[...] = array
    bottom, top = [indices_blob(expected[f"input/{param.bottom[0]}"])], [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    assert_close(top[0].data, expected[f"data/{param.top[0]}"], DATA_TOL, "embed forward")
