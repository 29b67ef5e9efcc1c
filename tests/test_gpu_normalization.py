"""Device code of BatchNorm, MVN, Scale and Bias (kernels/normalization.cu,
kernels/scale_bias.cu) against the host code: outputs, gradients, and
BatchNorm's running statistics written during a TRAIN forward."""
import numpy as np
import pytest

from gpu_check import compare_cpu_gpu
from gradient_check import layer_param
from sppcaffe import backends
from sppcaffe.blob import Blob
from sppcaffe.layer import create_layer
from sppcaffe.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def make_layer(text, phase=TEST):
    return create_layer(layer_param(f'name: "norm" {text}'), phase)


def with_statistics(layer, bottom, top, seed=2):
    layer.setup(bottom, top)
    rng = np.random.default_rng(seed)
    c = layer.blobs[0].count
    layer.blobs[0].data[...] = rng.uniform(-1, 1, c)
    layer.blobs[1].data[...] = rng.uniform(0.5, 2, c)
    layer.blobs[2].data[...] = 1.7
    return layer


# ---- BatchNorm -----------------------------------------------------------------
@pytest.mark.parametrize("phase,text", [(TRAIN, ""), (TEST, ""), (TRAIN, "use_global_stats: true"),
                                        (TRAIN, "eps: 0.01 moving_average_fraction: 0.5")])
@pytest.mark.parametrize("shape", [(4, 3, 5, 2), (6, 2), (2, 3, 2, 2, 3)])
@pytest.mark.parametrize("in_place", [False, True])
def test_batch_norm_matches_host(gpu_device, phase, text, shape, in_place):
    layer = make_layer(f'type: "BatchNorm" batch_norm_param {{ {text} }}', phase)
    bottom = [Blob(shape)]
    top = bottom if in_place else [Blob()]
    with_statistics(layer, bottom, top)
    compare_cpu_gpu(layer, bottom, top, setup=False)


@pytest.mark.parametrize("in_place", [False, True])
def test_batch_norm_train_updates_statistics_as_host(gpu_device, in_place):
    rng = np.random.default_rng(3)
    shape = (4, 3, 3, 2)
    x = rng.uniform(-1, 2, shape).astype(np.float32)
    results = []
    for on_gpu in (False, True):
        layer = make_layer('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.8 }',
                           TRAIN)
        bottom = [Blob(shape)]
        top = bottom if in_place else [Blob()]
        if not on_gpu:
            backends.set_mode_cpu()
        try:
            with_statistics(layer, bottom, top)
            for _ in range(2):
                bottom[0].data[...] = x
                (layer.forward_gpu if on_gpu else layer.forward)(bottom, top)
            results.append([b.data.copy() for b in layer.blobs] + [top[0].data.copy()])
        finally:
            backends.set_mode_gpu()
    for host, device in zip(*results):
        np.testing.assert_allclose(device, host, rtol=1e-5, atol=1e-6)


def test_batch_norm_global_stats_stay_on_the_device(counting_device):
    """The scale factor is read by a kernel: no copy to the host."""
    layer = make_layer('type: "BatchNorm"', TEST)
    bottom, top = [Blob((2, 3, 4))], [Blob()]
    with_statistics(layer, bottom, top)
    bottom[0].data[...] = np.arange(24).reshape(2, 3, 4)
    top[0].diff[...] = 1

    def passes():
        for phase in (TEST, TRAIN):
            layer.use_global_stats = phase == TEST
            layer.forward_gpu(bottom, top)
            layer.backward_gpu(top, [True], bottom)

    passes()                                 # first pass: inputs and blobs go up
    counting_device.uploads = counting_device.downloads = 0
    passes()
    assert counting_device.uploads == counting_device.downloads == 0


# ---- MVN -----------------------------------------------------------------------
@pytest.mark.parametrize("normalize_variance", [True, False])
@pytest.mark.parametrize("across_channels", [False, True])
# In place, a 2-D bottom would be reshaped to MVN's 4-D top itself.
@pytest.mark.parametrize("shape,in_place", [((2, 3, 4, 5), False), ((2, 3, 4, 5), True),
                                            ((3, 4), False)])
def test_mvn_matches_host(gpu_device, normalize_variance, across_channels, shape, in_place):
    layer = make_layer(f'type: "MVN" mvn_param {{ normalize_variance: '
                       f'{str(normalize_variance).lower()} across_channels: '
                       f'{str(across_channels).lower()} }}')
    bottom = [Blob(shape)]
    top = bottom if in_place else [Blob()]
    compare_cpu_gpu(layer, bottom, top)


# ---- Scale and Bias ------------------------------------------------------------
SHAPE = (2, 3, 4, 2)
LEARNED = ["", "axis: 0 num_axes: 2", "axis: 1 num_axes: -1", "axis: -2", "num_axes: 0",
           "axis: 0 num_axes: -1", "axis: 3"]


def randomized_params(layer, bottom, top):
    layer.setup(bottom, top)
    rng = np.random.default_rng(5)
    for b in layer.blobs:
        b.data[...] = rng.uniform(0.5, 1.5, b.shape)
    return layer


@pytest.mark.parametrize("kind", ["Scale", "Bias"])
@pytest.mark.parametrize("text", LEARNED)
@pytest.mark.parametrize("in_place", [False, True])
def test_learned_operand_matches_host(gpu_device, kind, text, in_place):
    field = "scale_param" if kind == "Scale" else "bias_param"
    layer = make_layer(f'type: "{kind}" {field} {{ {text} }}')
    bottom = [Blob(SHAPE)]
    top = bottom if in_place else [Blob()]
    compare_cpu_gpu(randomized_params(layer, bottom, top), bottom, top, setup=False)


@pytest.mark.parametrize("text", ["bias_term: true", "axis: 2 num_axes: 2 bias_term: true",
                                  "num_axes: 0 bias_term: true"])
@pytest.mark.parametrize("in_place", [False, True])
def test_scale_with_bias_term_matches_host(gpu_device, text, in_place):
    layer = make_layer(f'type: "Scale" scale_param {{ {text} }}')
    bottom = [Blob(SHAPE)]
    top = bottom if in_place else [Blob()]
    compare_cpu_gpu(randomized_params(layer, bottom, top), bottom, top, setup=False)


@pytest.mark.parametrize("kind,bias_term", [("Scale", False), ("Scale", True), ("Bias", False)])
@pytest.mark.parametrize("axis,operand", [(1, (3,)), (0, (2, 3)), (1, (3, 4, 2)), (0, ()),
                                          (0, SHAPE)])
def test_second_bottom_matches_host(gpu_device, kind, bias_term, axis, operand):
    field = "scale_param" if kind == "Scale" else "bias_param"
    extra = " bias_term: true" if bias_term else ""
    layer = make_layer(f'type: "{kind}" {field} {{ axis: {axis}{extra} }}')
    bottom, top = [Blob(SHAPE), Blob(operand)], [Blob()]
    compare_cpu_gpu(randomized_params(layer, bottom, top), bottom, top, setup=False)


@pytest.mark.parametrize("kind", ["Scale", "Bias"])
def test_param_gradients_accumulate_on_the_device(gpu_device, kind):
    field = "scale_param" if kind == "Scale" else "bias_param"
    layer = make_layer(f'type: "{kind}" {field} {{ }}')
    bottom, top = [Blob(SHAPE)], [Blob()]
    randomized_params(layer, bottom, top)
    bottom[0].data[...] = np.random.default_rng(1).uniform(-1, 1, SHAPE)
    layer.forward_gpu(bottom, top)
    top[0].diff[...] = 1
    layer.blobs[0].diff[...] = 0
    layer.backward_gpu(top, [True], bottom)
    once = layer.blobs[0].diff.copy()
    layer.backward_gpu(top, [True], bottom)
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * once, rtol=1e-6)
