"""InnerProduct layer: axis flattening, transposed weights, gradients, the
accumulating GEMM helper, and the BVLC fixture tests/golden/fc_act."""
import numpy as np
import pytest

import sppcaffe.im2col as im2col_module
from gradient_check import check_gradient, check_overwrite_and_accumulate, layer_param
from sppcaffe.blob import Blob
from sppcaffe.im2col import add_matmul
from sppcaffe.layer import LayerError, create_layer
from sppcaffe.proto import caffe_pb2
from golden_util import check_golden_layers

FILLERS = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'


def ip_layer(settings, name="ip"):
    text = f'name: "{name}" type: "InnerProduct" inner_product_param {{ {settings} {FILLERS} }}'
    return create_layer(layer_param(text), caffe_pb2.TRAIN)


def setup(settings, shape, seed=0):
    layer = ip_layer(settings)
    bottom, top = [Blob(shape)], [Blob()]
    bottom[0].data[...] = np.random.default_rng(seed).uniform(-1, 1, size=shape)
    layer.setup(bottom, top)
    return layer, bottom, top


# (settings, input shape, weight shape, top shape)
CASES = {
    "axis1": ("num_output: 5", (3, 2, 3, 2), (5, 12), (3, 5)),
    "axis2": ("num_output: 4 axis: 2", (2, 3, 2, 2), (4, 4), (2, 3, 4)),
    "axis_neg": ("num_output: 4 axis: -1", (2, 3, 5), (4, 5), (2, 3, 4)),
    "axis0": ("num_output: 3 axis: 0", (2, 3), (3, 6), (3,)),
    "transpose": ("num_output: 5 transpose: true", (3, 4, 2), (8, 5), (3, 5)),
    "no_bias": ("num_output: 2 bias_term: false", (4, 3), (2, 3), (4, 2)),
}


def reference(layer, x, axis):
    p = layer.param.inner_product_param
    w = layer.blobs[0].data.astype(np.float64)
    w = w.T if p.transpose else w
    rows = x.reshape(int(np.prod(x.shape[:axis])), -1).astype(np.float64)
    y = rows @ w.T
    if p.bias_term:
        y += layer.blobs[1].data
    return y.reshape(x.shape[:axis] + (p.num_output,))


@pytest.mark.parametrize("case", sorted(CASES))
def test_shapes_and_forward(case):
    settings, shape, weight_shape, top_shape = CASES[case]
    layer, bottom, top = setup(settings, shape)
    assert layer.blobs[0].shape == weight_shape
    assert len(layer.blobs) == (1 if "bias_term: false" in settings else 2)
    assert top[0].shape == top_shape
    layer.forward(bottom, top)
    axis = len(top_shape) - 1
    np.testing.assert_allclose(top[0].data, reference(layer, bottom[0].data, axis),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient(case):
    settings, shape = CASES[case][:2]
    layer = ip_layer(settings)
    bottom = [Blob(shape)]
    bottom[0].data[...] = np.random.default_rng(1).uniform(-1, 1, size=shape)
    assert check_gradient(layer, bottom, [Blob()]) > 0


def test_transpose_stores_the_transposed_weights():
    plain, bottom, top = setup("num_output: 3", (2, 4))
    flipped = ip_layer("num_output: 3 transpose: true")
    flipped.blobs = [Blob((4, 3)), Blob((3,))]
    flipped.blobs[0].data[...] = plain.blobs[0].data.T
    flipped.blobs[1].data[...] = plain.blobs[1].data
    other = [Blob()]
    flipped.setup(bottom, other)
    plain.forward(bottom, top)
    flipped.forward(bottom, other)
    np.testing.assert_allclose(other[0].data, top[0].data, rtol=1e-6)


def test_backward_overwrites_bottom_and_accumulates_parameters():
    layer, bottom, top = setup("num_output: 3", (4, 5))
    check_overwrite_and_accumulate(layer, bottom, top)


def test_backward_skips_what_is_not_wanted():
    layer, bottom, top = setup("num_output: 3", (4, 5))
    layer.forward(bottom, top)
    top[0].diff[...] = 1.0
    bottom[0].diff[...] = 7.0
    layer.param_propagate_down = [False, True]
    layer.backward(top, [False], bottom)
    assert np.all(bottom[0].diff == 7.0)
    assert np.all(layer.blobs[0].diff == 0)
    np.testing.assert_allclose(layer.blobs[1].diff, np.full(3, 4.0))


def test_reshape_keeps_rows_free_and_checks_the_flattened_size():
    layer, bottom, top = setup("num_output: 2", (3, 2, 2), seed=3)
    data = top[0].data
    layer.reshape(bottom, top)
    assert top[0].data is data
    bottom[0].reshape(5, 4)             # same K = 4, other layout and batch
    layer.reshape(bottom, top)
    assert top[0].shape == (5, 2)
    bottom[0].reshape(5, 3, 2)
    with pytest.raises(LayerError, match="flattens to 6") as info:
        layer.reshape(bottom, top)
    assert "'ip'" in str(info.value)


@pytest.mark.parametrize("settings, message", [
    ("num_output: 0", "num_output"),
    ("num_output: 2 axis: 3", "axis"),
])
def test_bad_definition_names_the_layer(settings, message):
    layer = ip_layer(settings, name="bad_ip")
    with pytest.raises(LayerError, match=message) as info:
        layer.setup([Blob((2, 3, 4))], [Blob()])
    assert "bad_ip" in str(info.value)


def test_preset_parameters_must_fit():
    layer = ip_layer("num_output: 2", name="preset")
    layer.blobs = [Blob((3, 2)), Blob((2,))]
    with pytest.raises(LayerError, match="preset"):
        layer.setup([Blob((4, 3))], [Blob()])


@pytest.mark.parametrize("block", [1, 7, 1 << 20])
def test_add_matmul_accumulates_in_blocks(monkeypatch, block):
    monkeypatch.setattr(im2col_module, "_BLOCK_ELEMENTS", block)
    rng = np.random.default_rng(4)
    a = rng.uniform(-1, 1, size=(6, 9)).astype(np.float32)
    b = rng.uniform(-1, 1, size=(5, 9)).astype(np.float32)
    out = rng.uniform(-1, 1, size=(6, 5)).astype(np.float32)
    expected = out + a @ b.T
    assert add_matmul(a, b.T, out) is out
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_golden_fc_act():
    assert check_golden_layers("fc_act", "InnerProduct") == 2


@pytest.mark.parametrize("transpose", [False, True])
def test_paired_backward_products(monkeypatch, transpose):
    """Backward's weight and bottom gradients of mid-sized products run as
    two whole products, one per thread: the same gradients as one after the
    other (each split over the threads), and the same bits on one thread or
    two, with gradients accumulated onto what the parameters held."""
    from threadpoolctl import threadpool_limits
    settings = "num_output: 300" + (" transpose: true" if transpose else "")
    shape = (40, 700)                              # 8.4 M multiply-adds per product
    runs = []
    for paired, limit in ((False, 2), (True, 1), (True, 2), (True, 2)):
        layer, bottom, top = setup(settings, shape, seed=1)
        if runs:
            for p, value in zip(layer.blobs, runs[0]["weights"]):
                p.data[...] = value
        monkeypatch.setattr(layer, "paired_backward_macs", (32 << 20) if paired else 0)
        layer.forward(bottom, top)
        top[0].diff[...] = np.random.default_rng(2).uniform(-1, 1, top[0].shape)
        for p in layer.blobs:
            p.diff[...] = 0.5
        with threadpool_limits(limit):
            for _ in range(6):                     # past the chooser's trials: both ways run
                layer.backward(top, [True], bottom)
        runs.append({"weights": [p.data.copy() for p in layer.blobs],
                     "grads": [bottom[0].diff.copy()] + [p.diff.copy() for p in layer.blobs]})
    split, *paired = runs
    for run in paired:
        for a, b in zip(run["grads"], paired[0]["grads"]):
            assert np.array_equal(a, b)
    for a, b in zip(paired[0]["grads"], split["grads"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    assert not np.allclose(paired[0]["grads"][1], 0.5)
