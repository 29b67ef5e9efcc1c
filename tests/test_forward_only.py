"""Layers the net marks `forward_only` (it never runs their backward) skip
what only backward reads: Convolution's kept columns (im2col then runs a
few images at a time), in-place Scale's copy of its input.  Same forward
results, and a backward called anyway is still right or says why not."""
import numpy as np
import pytest
from google.protobuf import text_format

import sppcaffe
from gradient_check import layer_param
from sppcaffe.blob import Blob
from sppcaffe.layer import LayerError, create_layer
from sppcaffe.proto import caffe_pb2
from test_conv_layer import random_blob

CONV_CASES = [
    "num_output: 5 kernel_size: 3 pad: 1",
    "num_output: 4 kernel_size: 3 stride: 2 group: 2",
    "num_output: 6 kernel_size: 1 stride: 2",
    "num_output: 3 kernel_h: 3 kernel_w: 2 dilation: 2 pad: 2 bias_term: false",
]


def conv_pair(settings, shape):
    text = (f'name: "conv" type: "Convolution" convolution_param {{ {settings} '
            'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } }')
    layers = [create_layer(layer_param(text), caffe_pb2.TEST) for _ in range(2)]
    for layer in layers:
        layer.setup([random_blob(shape)], [Blob()])
    for mine, theirs in zip(layers[1].blobs, layers[0].blobs):
        mine.data[...] = theirs.data
    layers[1].forward_only = True
    return layers


@pytest.mark.parametrize("column_bytes", [1, 600, 1 << 30])   # 1 image, a few, all
@pytest.mark.parametrize("cache_bytes", [1, 1 << 20])          # images in turn, or on threads
@pytest.mark.parametrize("settings", CONV_CASES)
def test_convolution_in_chunks_matches_whole_batch(settings, column_bytes, cache_bytes):
    shape = (5, 4, 7, 6)
    kept, chunked = conv_pair(settings, shape)
    chunked.forward_column_bytes = column_bytes
    chunked.cache_column_bytes = cache_bytes
    tops = []
    for layer in (kept, chunked):
        bottom, top = [random_blob(shape, seed=2)], [Blob()]
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        top[0].diff[...] = np.random.default_rng(3).uniform(-1, 1, top[0].shape)
        for p in layer.blobs:
            p.diff[...] = 0
        layer.backward(top, [True], bottom)          # recomputes the columns
        tops.append((top[0].data.copy(), bottom[0].diff.copy(),
                     [p.diff.copy() for p in layer.blobs]))
    (y, dx, dp), (y2, dx2, dp2) = tops
    np.testing.assert_allclose(y2, y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx2, dx, rtol=1e-5, atol=1e-5)
    for a, b in zip(dp2, dp):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


NET = """
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" } } }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" }
"""


@pytest.mark.parametrize("force_backward", [False, True])
def test_the_net_marks_layers_it_never_runs_backward(force_backward):
    param = text_format.Parse(NET, caffe_pb2.NetParameter())
    param.force_backward = force_backward
    net = sppcaffe.Net(param, sppcaffe.TEST)
    assert [layer.forward_only for layer in net.layers] == [not force_backward] * 3
    net.blobs["data"].data[...] = np.random.default_rng(0).standard_normal((2, 3, 5, 5))
    net.forward()
    scale = net.layer_dict["scale"]
    top = net.blobs["conv"]
    top.diff[...] = 1
    if force_backward:
        scale.backward([top], [True], [top])
        assert np.all(np.isfinite(scale.blobs[0].diff))
    else:
        with pytest.raises(LayerError, match="did not keep"):
            scale.backward([top], [True], [top])


CONV_LOSS_NET = """
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 6 dim: 2 dim: 9 dim: 9 } shape { dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3
                            weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "gaussian" std: 0.3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_a_solvers_test_nets_run_forward_only_with_the_same_results(monkeypatch):
    """As in Caffe's Solver, test nets never run backward: their layers are
    forward_only (no kept columns; convolutions run in chunks, here of one
    image), and they compute what the same net built for training does."""
    from test_solvers import make_param
    # Chunks of one image (2 x 3 x 3 column rows of 7 x 7 outputs), on threads.
    monkeypatch.setattr(sppcaffe.layers.conv.ConvolutionLayer, "cache_column_bytes", 4000)
    solver = sppcaffe.get_solver(make_param(CONV_LOSS_NET, test_iter=[1], test_interval=5))
    test_net = solver.test_nets[0]
    solver.share_weights(test_net)
    assert all(layer.forward_only for layer in test_net.layers)
    assert not solver.net.layer_dict["conv"].forward_only
    rng = np.random.default_rng(6)
    x = rng.standard_normal((6, 2, 9, 9)).astype(np.float32)
    label = rng.integers(0, 3, 6).astype(np.float32)
    outputs = []
    for net in (test_net, solver.net):
        net.blobs["data"].data[...] = x
        net.blobs["label"].data[...] = label
        net.forward()
        outputs.append((net.blobs["conv"].data.copy(), net.blobs["loss"].data.copy()))
    assert test_net.layer_dict["conv"]._col_valid == {0: False}       # no columns kept
    np.testing.assert_allclose(outputs[0][0], outputs[1][0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(outputs[0][1], outputs[1][1], rtol=1e-6)
