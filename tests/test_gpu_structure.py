"""Device code of the structure layers (Concat, Flatten, Reshape, Split,
Eltwise, Silence) against their host code, and the views' promise: no
copy between host and device."""
import numpy as np
import pytest

from gpu_check import compare_cpu_gpu
from gradient_check import layer_param
from sppcaffe import backends
from sppcaffe.blob import Blob
from sppcaffe.layer import create_layer
from sppcaffe.proto import caffe_pb2


def make_layer(text):
    return create_layer(layer_param(f'name: "S" {text}'), caffe_pb2.TRAIN)


def blobs(*shapes):
    return [Blob(shape) for shape in shapes]


# ---- Concat ------------------------------------------------------------

@pytest.mark.parametrize("param, shapes", [
    ("", [(2, 3, 4), (2, 1, 4), (2, 2, 4)]),                      # channels
    ("concat_param { axis: 0 }", [(1, 3, 2), (3, 3, 2)]),         # num: plain appends
    ("concat_param { axis: -1 }", [(2, 3, 1), (2, 3, 2)]),        # innermost
    ("concat_param { axis: 2 }", [(2, 2, 3, 2), (2, 2, 1, 2)]),   # middle of 4-D
    ("concat_param { concat_dim: 0 }", [(2, 2), (1, 2)]),         # legacy spelling
    ("concat_param { axis: 1 }", [(2, 0, 3), (2, 2, 3)]),         # an empty bottom
])
def test_concat(gpu_device, param, shapes):
    compare_cpu_gpu(make_layer(f'type: "Concat" {param}'), blobs(*shapes), [Blob()])


def test_concat_backward_skips_bottoms_not_asked_for(gpu_device):
    bottom = blobs((2, 1, 3), (2, 2, 3), (2, 3, 3))
    compare_cpu_gpu(make_layer('type: "Concat"'), bottom, [Blob()],
                    propagate_down=[True, False, True])
    # compare_cpu_gpu filled bottom 1's diff with NaN; the device left it so.
    assert np.isnan(bottom[1].diff).all()


def test_concat_of_one_bottom_is_a_view(gpu_device):
    compare_cpu_gpu(make_layer('type: "Concat"'), blobs((2, 3)), [Blob()])


# ---- Split -------------------------------------------------------------

@pytest.mark.parametrize("num_top", [1, 2, 3])
def test_split_sums_top_diffs(gpu_device, num_top):
    bottom, top = blobs((2, 3, 4)), blobs(*[()] * num_top)
    compare_cpu_gpu(make_layer('type: "Split"'), bottom, top)
    assert all(t.gpu_data == bottom[0].gpu_data for t in top)     # data shared on the device


# ---- Eltwise -----------------------------------------------------------

@pytest.mark.parametrize("param, count", [
    ("", 2),                                                      # PROD
    ("eltwise_param { operation: PROD }", 3),
    ("eltwise_param { operation: PROD stable_prod_grad: false }", 3),
    ("eltwise_param { operation: SUM }", 3),
    ("eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 }", 3),
    ("eltwise_param { operation: SUM coeff: 0.25 coeff: 1 }", 2),
    ("eltwise_param { operation: MAX }", 2),
    ("eltwise_param { operation: MAX }", 4),
])
def test_eltwise(gpu_device, param, count):
    layer = make_layer(f'type: "Eltwise" {param}')
    compare_cpu_gpu(layer, blobs(*[(2, 3, 5)] * count), [Blob()])


@pytest.mark.parametrize("op", ["PROD", "SUM", "MAX"])
def test_eltwise_partial_backward(gpu_device, op):
    bottom = blobs(*[(3, 4)] * 3)
    compare_cpu_gpu(make_layer(f'type: "Eltwise" eltwise_param {{ operation: {op} }}'),
                    bottom, [Blob()], propagate_down=[False, True, True])
    assert np.isnan(bottom[0].diff).all()


def test_eltwise_max_ties_follow_the_host_rule(gpu_device):
    # Bottom 1 wins a tie with bottom 0; later bottoms must be strictly greater.
    bottom = blobs((4,), (4,), (4,))
    values = [[1, 2, 3, 0], [1, 1, 3, 0], [1, 2, 3, 0]]
    for b, v in zip(bottom, values):
        b.data[...] = v
    layer = make_layer('type: "Eltwise" eltwise_param { operation: MAX }')
    compare_cpu_gpu(layer, bottom, [Blob()], randomize=False)
    top = [Blob()]
    layer.reshape(bottom, top)
    layer.forward_gpu(bottom, top)
    top[0].diff[...] = [10, 20, 30, 40]
    layer.backward_gpu(top, [True] * 3, bottom)
    np.testing.assert_array_equal(bottom[0].diff, [0, 20, 0, 0])
    np.testing.assert_array_equal(bottom[1].diff, [10, 0, 30, 40])
    np.testing.assert_array_equal(bottom[2].diff, [0, 0, 0, 0])


# ---- Silence -----------------------------------------------------------

def test_silence_zeroes_requested_diffs_on_the_device(gpu_device):
    bottom = blobs((2, 3), (4,))
    layer = make_layer('type: "Silence"')
    layer.setup(bottom, [])
    for b in bottom:
        b.diff[...] = 7
    layer.forward_gpu(bottom, [])
    layer.backward_gpu([], [True, False], bottom)
    assert not bottom[0].diff.any()
    assert (bottom[1].diff == 7).all()


# ---- Flatten and Reshape: views, no copies -----------------------------

VIEWS = ['type: "Flatten"', 'type: "Flatten" flatten_param { axis: 2 }',
         'type: "Reshape" reshape_param { shape { dim: 0 dim: -1 dim: 2 } }']


@pytest.mark.parametrize("kind", VIEWS)
def test_views_match_host(gpu_device, kind):
    compare_cpu_gpu(make_layer(kind), blobs((2, 3, 2, 2)), [Blob()])


@pytest.mark.parametrize("kind", VIEWS)
def test_views_copy_nothing_between_host_and_device(counting_device, kind):
    device = counting_device
    bottom, top = blobs((2, 3, 2, 2)), [Blob()]
    layer = make_layer(kind)
    layer.setup(bottom, top)
    values = np.arange(24, dtype=np.float32)
    device.upload(bottom[0].mutable_gpu_data, values)      # written by "device code"
    device.upload(top[0].mutable_gpu_diff, -values)
    device.uploads = device.downloads = 0
    layer.reshape(bottom, top)
    layer.forward_gpu(bottom, top)
    layer.backward_gpu(top, [True], bottom)
    assert (device.uploads, device.downloads) == (0, 0)
    assert top[0].gpu_data == bottom[0].gpu_data
    # Flatten's top has a diff of its own (BVLC), copied on the device.
    assert (top[0].gpu_diff == bottom[0].gpu_diff) == ("Reshape" in kind)
    np.testing.assert_array_equal(bottom[0].diff.ravel(), -values)


def test_a_structure_net_runs_on_the_device_as_on_the_host(gpu_device):
    # Split (inserted for the twice-read blob), Concat, Eltwise, Flatten,
    # Reshape and Silence, in one net run both ways.
    from sppcaffe.net import Net
    text = """
    layer { name: "in" type: "Input" top: "a" top: "b"
            input_param { shape { dim: 2 dim: 3 dim: 2 } shape { dim: 2 dim: 3 dim: 2 } } }
    layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "ab" }
    layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s"
            eltwise_param { operation: SUM coeff: 2 coeff: -1 } }
    layer { name: "flat" type: "Flatten" bottom: "ab" top: "flat" }
    layer { name: "shape" type: "Reshape" bottom: "s" top: "r"
            reshape_param { shape { dim: 0 dim: -1 } } }
    layer { name: "cat2" type: "Concat" bottom: "flat" bottom: "r" top: "out"
            loss_weight: 1 }
    layer { name: "quiet" type: "Silence" bottom: "b" }
    """
    from google.protobuf import text_format
    param = text_format.Parse(text, caffe_pb2.NetParameter())
    param.force_backward = True
    rng = np.random.default_rng(3)
    a, b = rng.uniform(-1, 1, (2, 2, 3, 2)).astype(np.float32)

    def run():
        net = Net(param, caffe_pb2.TRAIN)
        net.blobs["a"].data[...] = a
        net.blobs["b"].data[...] = b
        net.forward_backward()
        return net.blobs["out"].data.copy(), net.blobs["a"].diff.copy(), net.blobs["b"].diff.copy()

    on_device = run()
    backends.set_mode_cpu()
    try:
        on_host = run()
    finally:
        backends.set_mode_gpu()
    for d, h in zip(on_device, on_host):
        np.testing.assert_allclose(d, h, rtol=1e-6)
