"""Device code of Slice, Tile, Filter, BatchReindex, Parameter (kernels/
slicing.cu, copy.cu) and Reduction, ArgMax (kernels/reduction.cu) against
their host code."""
import numpy as np
import pytest

from gpu_check import compare_cpu_gpu
from gradient_check import layer_param
from sppcaffe.blob import Blob
from sppcaffe.layer import create_layer
from sppcaffe.proto import caffe_pb2


def make_layer(text):
    return create_layer(layer_param(f'name: "L" {text}'), caffe_pb2.TEST)


def blobs(*shapes):
    return [Blob(shape) for shape in shapes]


def fixed(bottom, *values):
    """Set the trailing bottoms (selectors, indices) to given values; the
    others random."""
    rng = np.random.default_rng(11)
    for b in bottom[:len(bottom) - len(values)]:
        b.data[...] = rng.uniform(-1, 1, b.shape)
    for b, v in zip(bottom[len(bottom) - len(values):], values):
        b.data[...] = v
    return bottom


@pytest.mark.parametrize("param, shape, num_top", [
    ("slice_param { slice_point: 1 slice_point: 3 }", (2, 5, 3), 3),
    ("", (2, 6, 2), 2),
    ("slice_param { axis: 0 slice_point: 1 }", (3, 2, 2), 2),
    ("slice_param { axis: -1 }", (2, 3, 4), 4),
    ("slice_param { slice_point: 2 }", (2, 2, 3), 2),     # an empty last top
    ("", (2, 3), 1),                                      # one top: a view
])
def test_slice(gpu_device, param, shape, num_top):
    compare_cpu_gpu(make_layer(f'type: "Slice" {param}'), blobs(shape),
                    [Blob() for _ in range(num_top)])


def test_slice_skips_the_bottom_when_not_asked(gpu_device):
    bottom = blobs((2, 4))
    compare_cpu_gpu(make_layer('type: "Slice"'), bottom, [Blob(), Blob()], propagate_down=[False])
    assert np.isnan(bottom[0].diff).all()


@pytest.mark.parametrize("param, shape", [
    ("tile_param { tiles: 3 }", (2, 3, 2)),
    ("tile_param { axis: 0 tiles: 2 }", (3, 2)),
    ("tile_param { axis: -1 tiles: 4 }", (2, 3)),
])
def test_tile(gpu_device, param, shape):
    compare_cpu_gpu(make_layer(f'type: "Tile" {param}'), blobs(shape), [Blob()])


@pytest.mark.parametrize("selector", [[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
def test_filter(gpu_device, selector):
    bottom = fixed(blobs((5, 2, 3), (5, 4), (5, 1)), np.reshape(selector, (5, 1)))
    layer, top = make_layer('type: "Filter"'), [Blob(), Blob()]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)      # past the first reshape, which keeps every item
    compare_cpu_gpu(layer, bottom, top, propagate_down=[True, True, False], setup=False,
                    randomize=False)


@pytest.mark.parametrize("index", [[3, 0, 3, 1, 3, 2.5], [1], [0, 0, 0]])
def test_batch_reindex(gpu_device, index):
    bottom = fixed(blobs((4, 3, 2), (len(index),)), index)
    compare_cpu_gpu(make_layer('type: "BatchReindex"'), bottom, [Blob()],
                    propagate_down=[True, False], randomize=False)


def test_parameter_top_shares_the_blob_on_the_device(gpu_device):
    layer, top = make_layer('type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }'), Blob()
    layer.setup([], [top])
    layer.blobs[0].data[...] = np.arange(6).reshape(2, 3)
    layer.forward_gpu([], [top])
    assert top.gpu_data == layer.blobs[0].gpu_data and top.gpu_diff == layer.blobs[0].gpu_diff
    np.testing.assert_array_equal(top.data, np.arange(6).reshape(2, 3))


@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis, coeff", [(0, 1.0), (1, -0.5), (-1, 2.0)])
def test_reduction(gpu_device, op, axis, coeff):
    layer = make_layer(f'type: "Reduction" reduction_param {{ operation: {op} axis: {axis} '
                       f'coeff: {coeff} }}')
    compare_cpu_gpu(layer, blobs((3, 4, 5)), [Blob()], rtol=1e-5, atol=1e-6)


def test_reduction_keeps_zero_sign_at_zero(gpu_device):
    bottom = fixed(blobs((2, 3)), [[0, 1, -2], [0, 0, 3]])
    got = compare_cpu_gpu(make_layer('type: "Reduction" reduction_param { operation: ASUM '
                                     'axis: 1 }'), bottom, [Blob()], randomize=False)
    assert got[1][0][0, 0] == 0 and got[1][0][1, 1] == 0


@pytest.mark.parametrize("param, shape", [
    ("", (3, 2, 2, 2)),
    ("argmax_param { top_k: 3 out_max_val: true }", (3, 2, 2, 2)),
    ("argmax_param { top_k: 2 }", (4, 5)),
    ("argmax_param { axis: 1 top_k: 2 }", (2, 4, 3)),
    ("argmax_param { axis: -1 out_max_val: true top_k: 3 }", (2, 3, 5)),
    ("argmax_param { axis: 0 }", (3, 4)),
])
def test_argmax(gpu_device, param, shape):
    compare_cpu_gpu(make_layer(f'type: "ArgMax" {param}'), blobs(shape), [Blob()],
                    propagate_down=None)


def test_argmax_ties_on_the_device(gpu_device):
    bottom = fixed(blobs((2, 6)), [[1, 5, 5, 2, 5, 0], [3, 3, 3, 3, 3, 3]])
    got = compare_cpu_gpu(make_layer('type: "ArgMax" argmax_param { top_k: 4 out_max_val: true }'),
                          bottom, [Blob()], propagate_down=None, randomize=False)
    np.testing.assert_array_equal(got[0][0][:, 0], [[4, 2, 1, 3], [5, 4, 3, 2]])
