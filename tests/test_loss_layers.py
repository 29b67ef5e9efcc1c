"""Softmax, SoftmaxWithLoss, EuclideanLoss and Accuracy: values computed by
hand, numerical gradients and BVLC Caffe's output (loss and fc_act
fixtures)."""
import numpy as np
import pytest
from google.protobuf import text_format

from golden_util import DATA_TOL, DIFF_TOL, assert_close, case_path, load_expected
from gradient_check import check_gradient, layer_param, make_blobs
from sppcaffe.blob import Blob
from sppcaffe.layer import LAYER_TYPES, LayerError, create_layer
from sppcaffe.proto import caffe_pb2


def make_layer(text):
    return create_layer(layer_param(f'name: "L" {text}'), caffe_pb2.TEST)


def blob(values):
    values = np.asarray(values, np.float32)
    b = Blob(values.shape)
    b.data[...] = values
    return b


def run(layer, bottom, num_top=1, loss_weight=1.0):
    top = [Blob() for _ in range(num_top)]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = loss_weight
    return top


def golden_layer(case, name):
    net = text_format.Parse(open(case_path(case, "net.prototxt")).read(), caffe_pb2.NetParameter())
    return create_layer(next(lp for lp in net.layer if lp.name == name), caffe_pb2.TEST)


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ---- Softmax -----------------------------------------------------------

@pytest.mark.parametrize("axis", [1, -1, 0, 2])
def test_softmax_values_and_gradient(axis):
    bottom = make_blobs((2, 3, 4), seed=1, low=-3, high=3)
    layer, top = make_layer(f'type: "Softmax" softmax_param {{ axis: {axis} }}'), [Blob()]
    assert check_gradient(layer, bottom, top) == bottom[0].count
    np.testing.assert_allclose(top[0].data, softmax(bottom[0].data.astype(np.float64), axis), rtol=1e-6)


def test_softmax_is_stable_for_large_inputs():
    top = run(make_layer('type: "Softmax"'), [blob([[1000.0, 1000.0, -1000.0]])])
    np.testing.assert_allclose(top[0].data, [[0.5, 0.5, 0.0]])


def test_softmax_in_place():
    x = make_blobs((3, 5), seed=2, low=-2, high=2)[0]
    separate = make_layer('type: "Softmax"')
    out = run(separate, [x])[0]
    out.diff[...] = np.arange(15).reshape(3, 5)
    separate.backward([out], [True], [x])
    in_place, same = make_layer('type: "Softmax"'), blob(x.data)
    in_place.setup([same], [same])
    in_place.forward([same], [same])
    np.testing.assert_array_equal(same.data, out.data)
    same.diff[...] = out.diff
    in_place.backward([same], [True], [same])
    np.testing.assert_array_equal(same.diff, x.diff)


def test_softmax_axis_out_of_range():
    with pytest.raises(LayerError, match="'L'.*axis 3 out of range"):
        make_layer('type: "Softmax" softmax_param { axis: 3 }').setup([Blob((2, 3))], [Blob()])


# ---- SoftmaxWithLoss ---------------------------------------------------

SCORES = np.array([[[1.0, -1.0], [0.5, 2.0], [-0.5, 0.0]],
                   [[0.3, 0.1], [-2.0, 1.0], [1.5, -1.0]]], np.float32)     # N=2, C=3, inner=2
LABELS = np.array([[0, 2], [1, 255]], np.float32)                          # 255: ignored below


def reference_loss(scores, labels, ignore=None):
    """Per-position -log p(label) and the mask of positions that count."""
    p = softmax(scores.astype(np.float64), 1)
    lab = labels.astype(int)
    valid = lab != ignore if ignore is not None else np.ones(lab.shape, bool)
    safe = np.where(valid, lab, 0)
    nll = -np.log(np.take_along_axis(p, safe[:, None, :], 1)[:, 0, :])
    return np.where(valid, nll, 0), valid, p


def loss_layer(extra=""):
    return make_layer(f'type: "SoftmaxWithLoss" {extra}')


@pytest.mark.parametrize("fields, normalizer", [
    ("", 3),                                   # default VALID: 3 labelled positions
    ("normalization: VALID", 3),
    ("normalization: FULL", 4),                # N * inner
    ("normalization: BATCH_SIZE", 2),
    ("normalization: NONE", 1),
    ("normalize: true", 3),                    # legacy: VALID
    ("normalize: false", 2),                   # legacy: BATCH_SIZE
    ("normalize: false normalization: FULL", 4),   # the explicit mode wins
])
def test_softmax_loss_normalization(fields, normalizer):
    layer = loss_layer(f"loss_param {{ ignore_label: 255 {fields} }}")
    bottom = [blob(SCORES), blob(LABELS)]
    top = run(layer, bottom, loss_weight=2.5)
    nll, valid, p = reference_loss(SCORES, LABELS, ignore=255)
    assert top[0].shape == ()
    np.testing.assert_allclose(top[0].data, nll.sum() / normalizer, rtol=1e-6)

    layer.backward(top, [True, False], bottom)
    expected = p.copy()
    for i, j in zip(*np.nonzero(valid)):
        expected[i, int(LABELS[i, j]), j] -= 1
    expected *= valid[:, None, :] * 2.5 / normalizer
    np.testing.assert_allclose(bottom[0].diff, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("extra", ["", "loss_param { ignore_label: 1 normalization: FULL }",
                                   "loss_param { normalization: BATCH_SIZE } softmax_param { axis: 1 }"])
def test_softmax_loss_gradient(extra):
    rng = np.random.default_rng(5)
    scores = make_blobs((2, 4, 3, 2), seed=4, low=-2, high=2)[0]
    labels = blob(rng.integers(0, 4, (2, 1, 3, 2)))
    layer = loss_layer(extra)
    assert check_gradient(layer, [scores, labels], [Blob()], check_bottom=[0]) == scores.count


def test_softmax_loss_other_axis():
    scores = make_blobs((3, 2, 4), seed=6, low=-2, high=2)[0]      # classes on the last axis
    labels = blob([[0, 3], [1, 1], [2, 0]])
    top = run(loss_layer("softmax_param { axis: -1 }"), [scores, labels])
    p = softmax(scores.data.astype(np.float64), -1)
    lab = labels.data.astype(int)
    expected = -np.log(np.take_along_axis(p, lab[:, :, None], -1)).sum() / 6
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-6)


def test_softmax_loss_second_top_is_probabilities():
    top = run(loss_layer(), [blob(SCORES), blob(np.zeros((2, 2)))], num_top=2)
    np.testing.assert_allclose(top[1].data, softmax(SCORES.astype(np.float64), 1), rtol=1e-6)


def test_softmax_loss_all_ignored_gives_zero():
    layer = loss_layer("loss_param { ignore_label: 255 }")
    bottom = [blob(SCORES), blob(np.full((2, 2), 255))]
    top = run(layer, bottom)
    assert top[0].data == 0
    layer.backward(top, [True, False], bottom)
    assert np.all(bottom[0].diff == 0)


def test_softmax_loss_rejects_label_gradient():
    layer = loss_layer()
    bottom = [blob(SCORES), blob(np.zeros((2, 2)))]
    top = run(layer, bottom)
    with pytest.raises(LayerError, match="'L'.*cannot backpropagate to label inputs"):
        layer.backward(top, [True, True], bottom)
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    assert LAYER_TYPES["SoftmaxWithLoss"].is_loss


@pytest.mark.parametrize("labels, match", [(np.full((2, 2), 3), "label value 3 out of range"),
                                           (np.zeros((2, 3)), "number of labels")])
def test_softmax_loss_bad_labels(labels, match):
    with pytest.raises(LayerError, match=f"'L'.*{match}"):
        run(loss_layer(), [blob(SCORES), blob(labels)])


def test_softmax_loss_matches_caffe():
    expected = load_expected("loss")
    layer = golden_layer("loss", "loss")
    bottom = [blob(expected["data/ip"]), blob(expected["data/label"])]
    top = run(layer, bottom, loss_weight=expected["diff/loss"])
    assert_close(top[0].data, expected["data/loss"], DATA_TOL, "loss")
    layer.backward(top, [True, False], bottom)
    assert_close(bottom[0].diff, expected["diff/ip_ip_0_split_0"], DIFF_TOL, "loss diff")


def test_softmax_matches_caffe():
    expected = load_expected("fc_act")
    layer = golden_layer("fc_act", "prob")
    bottom = [blob(expected["data/cat"])]
    top = run(layer, bottom)
    assert_close(top[0].data, expected["data/prob"], DATA_TOL, "prob")
    top[0].diff[...] = expected["topdiff/prob"]
    layer.backward(top, [True], bottom)
    assert_close(bottom[0].diff, expected["diff/cat"], DIFF_TOL, "prob diff")


# ---- EuclideanLoss -----------------------------------------------------

def test_euclidean_loss_value_and_gradient():
    a, b = make_blobs((4, 3), (4, 3), seed=7)
    layer = make_layer('type: "EuclideanLoss"')
    assert check_gradient(layer, [a, b], [Blob()]) == a.count + b.count
    expected = ((a.data.astype(np.float64) - b.data) ** 2).sum() / 4 / 2
    top = run(make_layer('type: "EuclideanLoss"'), [a, b])
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-6)
    assert LAYER_TYPES["EuclideanLoss"].is_loss


def test_euclidean_loss_weight_scales_both_gradients():
    a, b = blob([[1.0, 2.0], [3.0, 5.0]]), blob([[0.0, 0.0], [1.0, 1.0]])
    layer = make_layer('type: "EuclideanLoss"')
    top = run(layer, [a, b], loss_weight=3.0)
    layer.backward(top, [True, True], [a, b])
    np.testing.assert_allclose(a.diff, 3.0 * (a.data - b.data) / 2)
    np.testing.assert_allclose(b.diff, -3.0 * (a.data - b.data) / 2)


# ---- Accuracy ----------------------------------------------------------

ACC_SCORES = np.array([[0.1, 0.5, 0.4, 0.0],     # label 1: top-1 hit
                       [0.3, 0.2, 0.4, 0.1],     # label 0: second best
                       [0.2, 0.2, 0.2, 0.4],     # label 1: tied for second with 0 and 2
                       [0.9, 0.0, 0.05, 0.05]],  # label 3: tied for third
                      np.float32)
ACC_LABELS = np.array([1, 0, 1, 3], np.float32)


def accuracy(extra="", scores=ACC_SCORES, labels=ACC_LABELS, num_top=1):
    return run(make_layer(f'type: "Accuracy" {extra}'), [blob(scores), blob(labels)], num_top)


@pytest.mark.parametrize("top_k, expected", [(1, 1 / 4), (2, 2 / 4), (3, 3 / 4), (4, 4 / 4)])
def test_accuracy_top_k(top_k, expected):
    # A tie counts against the true class: row 3 needs top_k 4, row 4 needs 3.
    top = accuracy(f"accuracy_param {{ top_k: {top_k} }}")
    assert top[0].shape == ()
    assert top[0].data == np.float32(expected)


def test_accuracy_ignore_label_and_per_class():
    top = accuracy("accuracy_param { ignore_label: 0 top_k: 2 }", num_top=2)
    assert top[0].data == np.float32(1 / 3)      # rows 1, 3, 4 count; only row 1 hits
    np.testing.assert_array_equal(top[1].data, np.float32([0, 1 / 2, 0, 0]))


def test_accuracy_spatial_labels_on_axis():
    scores = make_blobs((2, 3, 4), seed=8)[0].data           # classes on axis 1, 4 positions
    labels = scores.argmax(axis=1).astype(np.float32)
    labels[0, 0] = (labels[0, 0] + 1) % 3                     # one miss out of 8
    top = accuracy(scores=scores, labels=labels, num_top=2)
    assert top[0].data == np.float32(7 / 8)
    lab = labels.astype(int)
    per_class = [np.mean(scores.argmax(1)[lab == c] == c) if np.any(lab == c) else 0 for c in range(3)]
    np.testing.assert_allclose(top[1].data, per_class, rtol=1e-6)


def test_accuracy_checks():
    with pytest.raises(LayerError, match="'L'.*top_k"):
        accuracy("accuracy_param { top_k: 5 }")
    layer = make_layer('type: "Accuracy"')
    bottom = [blob(ACC_SCORES), blob(ACC_LABELS)]
    top = run(layer, bottom)
    layer.backward(top, [False, False], bottom)             # nothing asked: fine
    with pytest.raises(LayerError, match="'L'.*no backward"):
        layer.backward(top, [True, False], bottom)


@pytest.mark.parametrize("name", ["acc", "acc2"])
def test_accuracy_matches_caffe(name):
    expected = load_expected("loss")
    top = run(golden_layer("loss", name), [blob(expected["data/ip"]), blob(expected["data/label"])])
    assert top[0].data == expected[f"data/{name}"]
