"""Device code of Softmax, SoftmaxWithLoss, EuclideanLoss and Accuracy
(kernels/softmax.cu, kernels/loss.cu) against the host code."""
import numpy as np
import pytest

from gpu_check import compare_cpu_gpu
from gradient_check import layer_param
from sppcaffe.blob import Blob
from sppcaffe.layer import create_layer
from sppcaffe.proto import caffe_pb2

NORMALIZATIONS = ["VALID", "FULL", "BATCH_SIZE", "NONE"]


def make_layer(text):
    return create_layer(layer_param(f'name: "L" {text}'), caffe_pb2.TEST)


def predictions_and_labels(shape, axis, seed=0, ignore=None, ignore_fraction=0.3, integer_scores=False):
    """Scores of `shape` and valid integer labels, one per position around
    `axis`; about ignore_fraction of them set to `ignore`."""
    rng = np.random.default_rng(seed)
    scores = Blob(shape)
    scores.data[...] = rng.integers(-2, 3, shape) if integer_scores else rng.uniform(-3, 3, shape)
    label_shape = shape[:axis] + shape[axis + 1:]
    labels = rng.integers(0, shape[axis], label_shape)
    if ignore is not None:
        labels[rng.uniform(size=label_shape) < ignore_fraction] = ignore
    label = Blob(label_shape)
    label.data[...] = labels
    return [scores, label]


# ---- Softmax -------------------------------------------------------------------
@pytest.mark.parametrize("shape, axis", [((2, 3, 4), 1), ((2, 3, 4), -1), ((2, 3, 4), 0),
                                         ((2, 5, 3, 2), 1), ((6, 10), 1), ((1, 1, 5), 1)])
@pytest.mark.parametrize("in_place", [False, True])
def test_softmax_matches_host(gpu_device, shape, axis, in_place):
    bottom = [Blob(shape)]
    top = bottom if in_place else [Blob()]
    compare_cpu_gpu(make_layer(f'type: "Softmax" softmax_param {{ axis: {axis} }}'), bottom, top,
                    rtol=1e-5, atol=1e-6)


def test_softmax_is_stable_for_large_inputs(gpu_device):
    layer, bottom, top = make_layer('type: "Softmax"'), Blob((1, 3)), Blob()
    bottom.data[...] = [[1000.0, 1000.0, -1000.0]]
    layer.setup([bottom], [top])
    layer.forward_gpu([bottom], [top])
    np.testing.assert_array_equal(top.data, [[0.5, 0.5, 0.0]])


# ---- SoftmaxWithLoss -----------------------------------------------------------
def softmax_loss(normalization=None, normalize=None, ignore=None, axis=1):
    loss_param = []
    if normalization is not None:
        loss_param.append(f"normalization: {normalization}")
    if normalize is not None:
        loss_param.append(f"normalize: {str(normalize).lower()}")
    if ignore is not None:
        loss_param.append(f"ignore_label: {ignore}")
    return make_layer(f'type: "SoftmaxWithLoss" loss_param {{ {" ".join(loss_param)} }} '
                      f'softmax_param {{ axis: {axis} }}')


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("ignore", [None, 2, -1])
@pytest.mark.parametrize("shape, axis", [((4, 5), 1), ((2, 4, 3, 2), 1), ((2, 3, 4), 2)])
def test_softmax_loss_matches_host(gpu_device, normalization, ignore, shape, axis):
    bottom = predictions_and_labels(shape, axis, ignore=ignore)
    # The random top diff compare_cpu_gpu sets is the loss weight.
    compare_cpu_gpu(softmax_loss(normalization, ignore=ignore, axis=axis), bottom, [Blob()],
                    propagate_down=[True, False], randomize=False, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_softmax_loss_legacy_normalize_flag(gpu_device, normalize):
    bottom = predictions_and_labels((3, 4, 2), 1, ignore=1)
    compare_cpu_gpu(softmax_loss(normalize=normalize, ignore=1), bottom, [Blob()],
                    propagate_down=[True, False], randomize=False, rtol=1e-5, atol=1e-6)


def test_softmax_loss_second_top_holds_probabilities(gpu_device):
    bottom = predictions_and_labels((3, 4, 2, 2), 1)
    top_data, _, _ = compare_cpu_gpu(softmax_loss(), bottom, [Blob(), Blob()],
                                     propagate_down=[True, False], randomize=False,
                                     rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(top_data[1].sum(axis=1), 1, rtol=1e-6)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_softmax_loss_all_labels_ignored_is_zero(gpu_device, normalization):
    layer = softmax_loss(normalization, ignore=0)
    bottom = predictions_and_labels((2, 3, 2), 1)
    bottom[1].data[...] = 0
    top = [Blob()]
    layer.setup(bottom, top)
    layer.forward_gpu(bottom, top)
    assert top[0].data[()] == 0
    top[0].diff[...] = 1
    layer.backward_gpu(top, [True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 0)


def test_softmax_loss_out_of_range_label_gives_nan_not_a_crash(gpu_device):
    layer, bottom, top = softmax_loss(), predictions_and_labels((3, 4), 1), [Blob()]
    bottom[1].data[1] = 4
    layer.setup(bottom, top)
    layer.forward_gpu(bottom, top)
    assert np.isnan(top[0].data[()])


def test_softmax_loss_cannot_backpropagate_to_labels(gpu_device):
    layer, bottom, top = softmax_loss(), predictions_and_labels((3, 4), 1), [Blob()]
    layer.setup(bottom, top)
    layer.forward_gpu(bottom, top)
    with pytest.raises(ValueError, match="cannot backpropagate to label"):
        layer.backward_gpu(top, [True, True], bottom)


@pytest.mark.parametrize("layer_text, bottoms, propagate_down", [
    ('type: "SoftmaxWithLoss" loss_param { ignore_label: 1 }', "labels", [True, False]),
    ('type: "EuclideanLoss"', "pairs", [True, True]),
    ('type: "Accuracy" accuracy_param { top_k: 2 }', "labels", None),
])
def test_losses_never_wait_for_the_host(counting_device, layer_text, bottoms, propagate_down):
    """Forward and backward leave every value on the device: the loss is
    summed there and the loss weight read from the top's device diff."""
    layer = make_layer(layer_text)
    bottom = predictions_and_labels((4, 3), 1) if bottoms == "labels" else [Blob((4, 3)), Blob((4, 3))]
    top = [Blob()]
    layer.setup(bottom, top)
    layer.forward_gpu(bottom, top)
    if propagate_down is not None:
        top[0].diff[...] = 1
        layer.backward_gpu(top, propagate_down, bottom)
    assert counting_device.downloads == 0


# ---- EuclideanLoss ---------------------------------------------------------------
@pytest.mark.parametrize("shape, target_shape", [((4, 3), (4, 3)), ((2, 3, 2, 2), (2, 12)),
                                                 ((5, 1), (5, 1))])
@pytest.mark.parametrize("propagate_down", [[True, True], [True, False], [False, True]])
def test_euclidean_loss_matches_host(gpu_device, shape, target_shape, propagate_down):
    compare_cpu_gpu(make_layer('type: "EuclideanLoss"'), [Blob(shape), Blob(target_shape)], [Blob()],
                    propagate_down=propagate_down, rtol=1e-5, atol=1e-6)


# ---- Accuracy ----------------------------------------------------------------------
@pytest.mark.parametrize("top_k", [1, 3])
@pytest.mark.parametrize("ignore", [None, 0])
@pytest.mark.parametrize("shape, axis", [((8, 5), 1), ((2, 4, 3, 2), 1), ((3, 2, 5), 2)])
@pytest.mark.parametrize("integer_scores", [False, True])      # True: many ties
def test_accuracy_matches_host(gpu_device, top_k, ignore, shape, axis, integer_scores):
    ignore_text = "" if ignore is None else f"ignore_label: {ignore}"
    layer = make_layer(f'type: "Accuracy" accuracy_param {{ top_k: {top_k} axis: {axis} {ignore_text} }}')
    bottom = predictions_and_labels(shape, axis, seed=top_k, ignore=ignore,
                                    integer_scores=integer_scores)
    compare_cpu_gpu(layer, bottom, [Blob(), Blob()], propagate_down=None, randomize=False,
                    rtol=1e-6, atol=0)


def test_accuracy_with_every_label_ignored_is_zero(gpu_device):
    layer = make_layer('type: "Accuracy" accuracy_param { ignore_label: 2 }')
    bottom = predictions_and_labels((4, 3), 1)
    bottom[1].data[...] = 2
    top = [Blob(), Blob()]
    layer.setup(bottom, top)
    layer.forward_gpu(bottom, top)
    assert top[0].data[()] == 0
    np.testing.assert_array_equal(top[1].data, 0)


def test_accuracy_values_by_hand(gpu_device):
    layer = make_layer('type: "Accuracy"')
    scores, label = Blob((4, 3)), Blob((4,))
    scores.data[...] = [[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.4, 0.4, 0.2], [0.0, 0.0, 1.0]]
    label.data[...] = [1, 1, 0, 2]       # hit, miss, tie (counts against), hit
    top = [Blob(), Blob()]
    layer.setup([scores, label], top)
    layer.forward_gpu([scores, label], top)
    assert top[0].data[()] == np.float32(0.5)
    np.testing.assert_array_equal(top[1].data, [0, 0.5, 1])
