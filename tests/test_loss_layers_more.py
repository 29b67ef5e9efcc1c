"""SigmoidCrossEntropyLoss, HingeLoss, MultinomialLogisticLoss, InfogainLoss,
ContrastiveLoss and SmoothL1Loss: values computed by hand, numerical
gradients, loss weights and propagate_down, and BVLC Caffe's output
(losses_more fixture, each layer run alone)."""
import numpy as np
import pytest

import sppcaffe
from golden_util import DATA_TOL, DIFF_TOL, assert_close, golden_layers, load_expected
from gradient_check import check_gradient, layer_param
from sppcaffe import io
from sppcaffe.blob import Blob
from sppcaffe.layer import LAYER_TYPES, LayerError, create_layer
from sppcaffe.proto import caffe_pb2

MY_TYPES = ["SigmoidCrossEntropyLoss", "HingeLoss", "MultinomialLogisticLoss", "InfogainLoss",
            "ContrastiveLoss", "SmoothL1Loss"]


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


def loss_of(layer, bottom):
    return float(run(layer, bottom)[0].data)


def gradient(layer, bottom, propagate_down, loss_weight=1.0):
    top = run(layer, bottom, loss_weight=loss_weight)
    layer.backward(top, propagate_down, bottom)
    return [b.diff.copy() for b in bottom]


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_all_are_loss_layers():
    for name in MY_TYPES:
        assert LAYER_TYPES[name].is_loss, name


# ---- the losses_more fixture, each of these layers alone -----------------------------
GOLDEN_LAYERS = ["sce", "hinge1", "hinge2", "mlr", "infogain", "contrast", "contrast_old"]


def run_golden_layer(name, on_device=False):
    """Forward one layer of the fixture on its inputs (its device code when
    on_device); compare its top and what forward leaves in its bottoms'
    diffs (HingeLoss's scratch) with Caffe's (the fixture runs no backward:
    no layer there needs one)."""
    net, _ = golden_layers("losses_more")
    expected = load_expected("losses_more")
    readers = {}
    for p in net.layer:
        for b in p.bottom:
            readers.setdefault(b, []).append(p.name)
    param = next(p for p in net.layer if p.name == name)
    layer = create_layer(param, caffe_pb2.TEST)
    bottom = [blob(expected[f"input/{b}"]) for b in param.bottom]
    top = [Blob() for _ in param.top]
    layer.setup(bottom, top)
    (layer.forward_gpu if on_device else layer.forward)(bottom, top)
    assert_close(top[0].data, expected[f"data/{param.top[0]}"], DATA_TOL, f"{name} forward")
    for b, blob_name in zip(bottom, param.bottom):
        users = readers[blob_name]
        key = f"diff/{blob_name}_{blob_name}_0_split_{users.index(name)}" if len(users) > 1 \
            else f"diff/{blob_name}"
        assert_close(b.diff, expected[key], DIFF_TOL, f"{name} diff of {blob_name}")
    return layer, bottom, top


@pytest.mark.parametrize("name", GOLDEN_LAYERS)
def test_layer_matches_caffe(name):
    run_golden_layer(name)


# ---- SigmoidCrossEntropyLoss ---------------------------------------------------------
SCE_X = np.array([[0.5, -1.0, 2.0], [-0.2, 3.0, 0.0]], np.float32)
SCE_T = np.array([[1.0, 0.0, -1.0], [0.3, 1.0, -1.0]], np.float32)     # -1: ignored below


def sce_reference(x, t, ignore=None):
    x, t = x.astype(np.float64), t.astype(np.float64)
    p = 1 / (1 + np.exp(-x))
    loss = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    valid = t.astype(int) != ignore if ignore is not None else np.ones(t.shape, bool)
    return np.where(valid, loss, 0), valid, p


@pytest.mark.parametrize("fields, normalizer", [
    ("", 2),                                   # default BATCH_SIZE
    ("normalization: BATCH_SIZE", 2),
    ("normalization: VALID", 4),               # 4 targets not ignored
    ("normalization: FULL", 6),
    ("normalization: NONE", 1),
    ("normalize: true", 4),                    # legacy: VALID
    ("normalize: false", 2),                   # legacy: BATCH_SIZE
])
def test_sigmoid_cross_entropy_values_and_gradient(fields, normalizer):
    layer = make_layer('type: "SigmoidCrossEntropyLoss" '
                       f'loss_param {{ ignore_label: -1 {fields} }}')
    bottom = [blob(SCE_X), blob(SCE_T)]
    loss, valid, p = sce_reference(SCE_X, SCE_T, ignore=-1)
    top = run(layer, bottom, loss_weight=2.5)
    assert top[0].shape == ()
    np.testing.assert_allclose(top[0].data, loss.sum() / normalizer, rtol=1e-6)
    layer.backward(top, [True, False], bottom)
    np.testing.assert_allclose(bottom[0].diff, np.where(valid, p - SCE_T, 0) * 2.5 / normalizer,
                               rtol=1e-5, atol=1e-7)


def test_sigmoid_cross_entropy_without_ignore_label_counts_every_target():
    t = np.where(SCE_T < 0, 0.5, SCE_T)
    layer = make_layer('type: "SigmoidCrossEntropyLoss" loss_param { normalization: VALID }')
    loss, _, _ = sce_reference(SCE_X, t)
    assert loss_of(layer, [blob(SCE_X), blob(t)]) == pytest.approx(loss.sum() / 6, rel=1e-6)


@pytest.mark.parametrize("extra", ["", "loss_param { ignore_label: 1 normalization: VALID }",
                                   "loss_param { normalization: FULL }"])
def test_sigmoid_cross_entropy_gradient(extra):
    rng = np.random.default_rng(3)
    x = blob(rng.uniform(-3, 3, (3, 2, 2)))
    targets = rng.uniform(0, 1, (3, 2, 2))
    targets[0, 0, 0] = 1          # ignored by the second case: int(1) == 1
    layer = make_layer(f'type: "SigmoidCrossEntropyLoss" {extra}')
    assert check_gradient(layer, [x, blob(targets)], [Blob()], check_bottom=[0]) == x.count


def test_sigmoid_cross_entropy_is_stable_for_large_inputs():
    x, t = blob([[100.0, -100.0, 100.0]]), blob([[1.0, 0.0, 0.0]])
    layer = make_layer('type: "SigmoidCrossEntropyLoss"')
    assert loss_of(layer, [x, t]) == pytest.approx(100.0, rel=1e-6)


def test_sigmoid_cross_entropy_all_ignored_gives_zero():
    layer = make_layer('type: "SigmoidCrossEntropyLoss" '
                       'loss_param { ignore_label: -1 normalization: VALID }')
    bottom = [blob(SCE_X), blob(np.full(SCE_X.shape, -1))]
    assert gradient(layer, bottom, [True, False])[0].tolist() == np.zeros(SCE_X.shape).tolist()
    assert loss_of(layer, bottom) == 0


def test_sigmoid_cross_entropy_checks():
    with pytest.raises(LayerError, match="'L'.*same count"):
        run(make_layer('type: "SigmoidCrossEntropyLoss"'), [blob(SCE_X), blob(np.zeros((2, 2)))])
    layer = make_layer('type: "SigmoidCrossEntropyLoss"')
    bottom = [blob(SCE_X), blob(np.abs(SCE_T))]
    top = run(layer, bottom)
    with pytest.raises(LayerError, match="'L'.*cannot backpropagate to label inputs"):
        layer.backward(top, [True, True], bottom)


# ---- HingeLoss -----------------------------------------------------------------------
HINGE_X = np.array([[0.5, -2.0, 1.5], [3.0, 0.2, -0.4]], np.float32)
HINGE_LABEL = np.array([0, 2], np.float32)
# max(0, 1 - x) at the label, max(0, 1 + x) elsewhere, by hand.
HINGE_MARGINS = np.array([[0.5, 0.0, 2.5], [4.0, 1.2, 1.4]], np.float32)


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss_values_and_gradient_by_hand(norm):
    layer = make_layer(f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}')
    bottom = [blob(HINGE_X), blob(HINGE_LABEL)]
    top = run(layer, bottom, loss_weight=3.0)
    # Caffe's forward leaves the margins in the bottom diff.
    np.testing.assert_allclose(bottom[0].diff, HINGE_MARGINS, rtol=1e-6)
    if norm == "L1":
        assert top[0].data == pytest.approx(9.6 / 2, rel=1e-6)
        expected = [[-1, 0, 1], [1, 1, -1]]
    else:
        assert top[0].data == pytest.approx((0.25 + 6.25 + 16 + 1.44 + 1.96) / 2, rel=1e-6)
        expected = 2 * HINGE_MARGINS * [[-1, 1, 1], [1, 1, -1]]
    layer.backward(top, [True, False], bottom)
    np.testing.assert_allclose(bottom[0].diff, np.float32(expected) * 3.0 / 2, rtol=1e-6)


def hinge_inputs(shape, seed):
    """Scores away from the kinks at +-1, and labels."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, shape)
    x[np.abs(np.abs(x) - 1) < 0.05] += 0.1
    labels = rng.integers(0, int(np.prod(shape[1:])), shape[0])
    return [blob(x), blob(labels)]


@pytest.mark.parametrize("norm", ["L1", "L2"])
@pytest.mark.parametrize("shape", [(4, 5), (3, 2, 2, 1)])      # dim = count / num either way
def test_hinge_loss_gradient(norm, shape):
    bottom = hinge_inputs(shape, seed=8)
    layer = make_layer(f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}')
    assert check_gradient(layer, bottom, [Blob()], check_bottom=[0]) == bottom[0].count


@pytest.mark.parametrize("labels, match", [([0, 3], "label value 3 out of range"),
                                           ([[0, 1], [1, 0]], "number of labels")])
def test_hinge_loss_bad_labels(labels, match):
    with pytest.raises(LayerError, match=f"'L'.*{match}"):
        run(make_layer('type: "HingeLoss"'), [blob(HINGE_X), blob(labels)])


def test_hinge_loss_label_gradient_and_batch_checks():
    layer = make_layer('type: "HingeLoss"')
    bottom = [blob(HINGE_X), blob(HINGE_LABEL)]
    top = run(layer, bottom)
    with pytest.raises(LayerError, match="'L'.*cannot backpropagate to label inputs"):
        layer.backward(top, [True, True], bottom)
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    with pytest.raises(LayerError, match="'L'.*same first dimension"):
        run(make_layer('type: "HingeLoss"'), [blob(HINGE_X), blob([[0, 1, 2]])])


# ---- MultinomialLogisticLoss ---------------------------------------------------------
MLR_P = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3], [0.0, 0.4, 0.6]], np.float32)
MLR_LABEL = np.array([1, 0, 0], np.float32)      # the last probability is 0: clamped


def test_multinomial_logistic_values_and_gradient_by_hand():
    layer = make_layer('type: "MultinomialLogisticLoss"')
    bottom = [blob(MLR_P), blob(MLR_LABEL)]
    top = run(layer, bottom, loss_weight=2.0)
    expected = -(np.log(0.5) + np.log(0.6) + np.log(1e-20)) / 3
    assert top[0].data == pytest.approx(expected, rel=1e-6)
    layer.backward(top, [True, False], bottom)
    grad = np.zeros((3, 3))
    grad[0, 1], grad[1, 0], grad[2, 0] = -2 / 3 / 0.5, -2 / 3 / 0.6, -2 / 3 / np.float32(1e-20)
    np.testing.assert_allclose(bottom[0].diff, grad, rtol=1e-6)
    assert np.all(np.isfinite(bottom[0].diff))


def test_multinomial_logistic_gradient():
    # Caffe's test keeps the probabilities away from 0.
    rng = np.random.default_rng(4)
    p = blob(rng.uniform(0.3, 1.0, (4, 5, 1, 1)))
    labels = blob(rng.integers(0, 5, (4, 1, 1, 1)))
    layer = make_layer('type: "MultinomialLogisticLoss"')
    assert check_gradient(layer, [p, labels], [Blob()], check_bottom=[0], stepsize=1e-3,
                          threshold=1e-2) == p.count


def test_multinomial_logistic_checks():
    with pytest.raises(LayerError, match="'L'.*number of labels"):
        run(make_layer('type: "MultinomialLogisticLoss"'), [blob(MLR_P), blob(np.zeros((3, 2)))])
    with pytest.raises(LayerError, match="'L'.*label value -1 out of range"):
        run(make_layer('type: "MultinomialLogisticLoss"'), [blob(MLR_P), blob([0, -1, 0])])
    layer = make_layer('type: "MultinomialLogisticLoss"')
    bottom = [blob(MLR_P), blob(MLR_LABEL)]
    top = run(layer, bottom)
    with pytest.raises(LayerError, match="'L'.*cannot backpropagate to label inputs"):
        layer.backward(top, [True, True], bottom)


# ---- InfogainLoss --------------------------------------------------------------------
INFO_X = np.array([[1.0, -1.0, 0.5], [0.2, 0.3, -2.0], [2.0, 0.0, 1.0], [0.1, 0.1, 0.1]],
                  np.float32)
INFO_LABEL = np.array([0, 2, 1, 9], np.float32)                 # 9: ignored below
INFO_H = np.array([[1.0, 0.2, 0.0], [0.5, 2.0, 0.1], [0.0, 0.3, 1.5]], np.float32)


def infogain_reference(x, labels, h, valid, axis=1):
    """Per-position loss and the gradient's numerator, by the formulas."""
    p = np.moveaxis(softmax(x.astype(np.float64), axis), axis, -1)      # (..., C)
    lab = np.where(valid, labels.astype(int), 0)
    rows = h[lab]                                                       # (..., C)
    loss = np.where(valid, -(rows * np.log(p)).sum(-1), 0)
    grad = (p * h.sum(1)[lab][..., None] - rows) * valid[..., None]
    return loss, np.moveaxis(grad, -1, axis), np.moveaxis(p, -1, axis)


@pytest.mark.parametrize("fields, normalizer", [("", 3), ("normalization: VALID", 3),
                                                ("normalization: FULL", 4),
                                                ("normalization: BATCH_SIZE", 4),
                                                ("normalization: NONE", 1)])
def test_infogain_loss_values_and_gradient(fields, normalizer):
    layer = make_layer(f'type: "InfogainLoss" loss_param {{ ignore_label: 9 {fields} }}')
    bottom = [blob(INFO_X), blob(INFO_LABEL), blob(INFO_H[None, None])]
    loss, grad, p = infogain_reference(INFO_X, INFO_LABEL, INFO_H, INFO_LABEL != 9)
    top = run(layer, bottom, num_top=2, loss_weight=0.5)
    np.testing.assert_allclose(top[0].data, loss.sum() / normalizer, rtol=1e-6)
    np.testing.assert_allclose(top[1].data, p, rtol=1e-6)
    layer.backward(top, [True, False, False], bottom)
    np.testing.assert_allclose(bottom[0].diff, grad * 0.5 / normalizer, rtol=1e-5, atol=1e-7)


def test_infogain_with_identity_is_softmax_loss():
    labels = np.array([0, 2, 1, 1], np.float32)
    info = make_layer('type: "InfogainLoss"')
    softmax_loss = make_layer('type: "SoftmaxWithLoss"')
    h = blob(np.eye(3))
    got = gradient(info, [blob(INFO_X), blob(labels), h], [True, False, False])[0]
    want = gradient(softmax_loss, [blob(INFO_X), blob(labels)], [True, False])[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_infogain_matrix_from_source(tmp_path):
    path = str(tmp_path / "H.binaryproto")
    io.write_blobproto(INFO_H.reshape(1, 1, 3, 3), path)
    from_file = make_layer(f'type: "InfogainLoss" infogain_loss_param {{ source: "{path}" }}')
    as_bottom = make_layer('type: "InfogainLoss"')
    labels = np.array([0, 2, 1, 1], np.float32)
    a = gradient(from_file, [blob(INFO_X), blob(labels)], [True, False])
    b = gradient(as_bottom, [blob(INFO_X), blob(labels), blob(INFO_H)], [True, False, False])
    np.testing.assert_array_equal(a[0], b[0])
    assert loss_of(from_file, [blob(INFO_X), blob(labels)]) == \
        loss_of(as_bottom, [blob(INFO_X), blob(labels), blob(INFO_H)])


@pytest.mark.parametrize("axis", [1, 2, -1])
def test_infogain_loss_gradient_on_axis(axis):
    rng = np.random.default_rng(9)
    shape = (2, 3, 4)
    classes = shape[axis]
    x = blob(rng.uniform(-2, 2, shape))
    label_shape = tuple(np.delete(shape, axis))
    labels = blob(rng.integers(0, classes, label_shape))
    h = blob(rng.uniform(0, 2, (classes, classes)))
    layer = make_layer(f'type: "InfogainLoss" infogain_loss_param {{ axis: {axis} }}')
    assert check_gradient(layer, [x, labels, h], [Blob()], check_bottom=[0],
                          threshold=1e-2) == x.count
    loss, _, _ = infogain_reference(x.data, labels.data, h.data.astype(np.float64),
                                    np.ones(label_shape, bool), axis=axis)
    assert loss_of(layer, [x, labels, h]) == pytest.approx(loss.sum() / loss.size, rel=1e-5)


def test_infogain_checks(tmp_path):
    x, labels, h = blob(INFO_X), blob([0, 1, 2, 0]), blob(INFO_H)
    with pytest.raises(LayerError, match="'L'.*source must be specified"):
        run(make_layer('type: "InfogainLoss"'), [x, labels])
    with pytest.raises(LayerError, match="'L'.*infogain matrix.*cannot read"):
        run(make_layer(f'type: "InfogainLoss" infogain_loss_param {{ source: "{tmp_path}/no" }}'),
            [x, labels])
    with pytest.raises(LayerError, match="'L'.*must be 3 x 3"):
        run(make_layer('type: "InfogainLoss"'), [x, labels, blob(np.eye(4))])
    with pytest.raises(LayerError, match="'L'.*normalize is deprecated"):
        run(make_layer('type: "InfogainLoss" loss_param { normalize: true }'), [x, labels, h])
    with pytest.raises(LayerError, match="'L'.*number of labels"):
        run(make_layer('type: "InfogainLoss"'), [x, blob(np.zeros((4, 2))), h])
    layer = make_layer('type: "InfogainLoss"')
    bottom = [x, labels, h]
    top = run(layer, bottom)
    with pytest.raises(LayerError, match="'L'.*cannot backpropagate to label inputs"):
        layer.backward(top, [True, True, False], bottom)
    with pytest.raises(LayerError, match="'L'.*cannot backpropagate to infogain inputs"):
        layer.backward(top, [True, False, True], bottom)
    assert [layer.allow_force_backward(i) for i in range(3)] == [True, False, False]


# ---- ContrastiveLoss -----------------------------------------------------------------
CON_A = np.array([[1.0, 0.0], [0.0, 0.0], [0.3, 0.4], [2.0, 2.0]], np.float32)
CON_B = np.array([[0.0, 0.0], [0.6, 0.8], [0.0, 0.0], [0.0, 0.0]], np.float32)
CON_SIM = np.array([1, 0, 0, 0], np.float32)       # d = 1, 1, 0.5, 2.83 (margin 1.5)


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss_values_and_gradient_by_hand(legacy):
    layer = make_layer('type: "ContrastiveLoss" contrastive_loss_param '
                       f'{{ margin: 1.5 legacy_version: {str(legacy).lower()} }}')
    bottom = [blob(CON_A), blob(CON_B), blob(CON_SIM)]
    top = run(layer, bottom, loss_weight=2.0)
    diff = CON_A - CON_B
    if legacy:      # max(1.5 - d^2, 0): 0.5 and 1.25 for pairs 2 and 3
        expected_loss = (1 + 0.5 + 1.25) / 8
        scales = [1, -1, -1, 0]
    else:           # max(1.5 - d, 0)^2: 0.25 and 1
        expected_loss = (1 + 0.25 + 1) / 8
        scales = [1, -0.5 / (1 + 1e-4), -1.0 / (0.5 + 1e-4), 0]
    assert top[0].data == pytest.approx(expected_loss, rel=1e-6)
    layer.backward(top, [True, True, False], bottom)
    expected = diff * np.float32(scales)[:, None] * 2.0 / 4
    np.testing.assert_allclose(bottom[0].diff, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(bottom[1].diff, -expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss_gradient(legacy):
    rng = np.random.default_rng(11)
    a, b = blob(rng.normal(0, 0.5, (6, 3))), blob(rng.normal(0, 0.5, (6, 3, 1, 1)))
    sim = blob([1, 0, 0, 1, 0, 0])
    layer = make_layer('type: "ContrastiveLoss" contrastive_loss_param '
                       f'{{ margin: 2 legacy_version: {str(legacy).lower()} }}')
    checked = check_gradient(layer, [a, b, sim], [Blob()], check_bottom=[0, 1], threshold=2e-3)
    assert checked == a.count + b.count


def test_contrastive_loss_similarity_gets_no_gradient():
    layer = make_layer('type: "ContrastiveLoss"')
    bottom = [blob(CON_A), blob(CON_B), blob(CON_SIM)]
    bottom[2].diff[...] = 7
    gradient(layer, bottom, [True, False, True])
    np.testing.assert_array_equal(bottom[2].diff, 0)
    assert [layer.allow_force_backward(i) for i in range(3)] == [True, True, False]


@pytest.mark.parametrize("b, sim, match", [
    (np.zeros((4, 3)), CON_SIM, "same shape"),
    (CON_B, np.zeros(3), "one value per pair"),
])
def test_contrastive_loss_checks(b, sim, match):
    with pytest.raises(LayerError, match=f"'L'.*{match}"):
        run(make_layer('type: "ContrastiveLoss"'), [blob(CON_A), blob(b), blob(sim)])
    with pytest.raises(LayerError, match="'L'.*exactly 3 bottom"):
        run(make_layer('type: "ContrastiveLoss"'), [blob(CON_A), blob(CON_B)])


def test_contrastive_loss_rejects_spatial_features():
    with pytest.raises(LayerError, match="'L'.*N x C"):
        run(make_layer('type: "ContrastiveLoss"'),
            [blob(np.zeros((4, 2, 2))), blob(np.zeros((4, 2, 2))), blob(CON_SIM)])


# ---- SmoothL1Loss --------------------------------------------------------------------
def smooth_l1_layer(sigma=None):
    extra = "" if sigma is None else f"smooth_l1_loss_param {{ sigma: {sigma} }}"
    return make_layer(f'type: "SmoothL1Loss" {extra}')


PRED = np.array([[0.5, -2.0], [0.05, 1.0]], np.float32)
TARGET = np.array([[0.0, 0.0], [0.0, 0.5]], np.float32)         # diff: 0.5, -2, 0.05, 0.5


@pytest.mark.parametrize("sigma, errors, slopes", [
    # sigma 1: quadratic 0.5 x^2 below 1, |x| - 0.5 beyond.
    (None, [0.125, 1.5, 0.00125, 0.125], [0.5, -1, 0.05, 0.5]),
    # sigma 3: quadratic 4.5 x^2 below 1/9, |x| - 1/18 beyond.
    (3, [0.5 - 1 / 18, 2 - 1 / 18, 4.5 * 0.0025, 0.5 - 1 / 18], [1, -1, 0.45, 1]),
    # sigma 0.5: quadratic 0.125 x^2 below 4.
    (0.5, [0.03125, 0.5, 0.0003125, 0.03125], [0.125, -0.5, 0.0125, 0.125]),
])
def test_smooth_l1_values_and_gradient_by_hand(sigma, errors, slopes):
    layer = smooth_l1_layer(sigma)
    bottom = [blob(PRED), blob(TARGET)]
    top = run(layer, bottom, loss_weight=3.0)
    assert top[0].data == pytest.approx(sum(errors) / 2, rel=1e-6)
    layer.backward(top, [True, True], bottom)
    expected = np.float32(slopes).reshape(2, 2) * 3.0 / 2
    np.testing.assert_allclose(bottom[0].diff, expected, rtol=1e-6)
    np.testing.assert_allclose(bottom[1].diff, -expected, rtol=1e-6)


def test_smooth_l1_with_weights_by_hand():
    inside = np.array([[2.0, 1.0], [0.0, 1.0]], np.float32)      # diff: 1.0, -2, 0, 0.5
    outside = np.array([[0.5, 1.0], [1.0, 0.25]], np.float32)
    layer = smooth_l1_layer()
    bottom = [blob(PRED), blob(TARGET), blob(inside), blob(outside)]
    top = run(layer, bottom)
    # f: 0.5 (|x| = 1 is linear: 1 - 0.5), 1.5, 0, 0.125; times outside.
    assert top[0].data == pytest.approx((0.25 + 1.5 + 0 + 0.03125) / 2, rel=1e-6)
    layer.backward(top, [True, True, False, False], bottom)
    # f' (1, -1, 0, 0.5) * inside * outside / num.
    expected = np.float32([[1 * 2 * 0.5, -1], [0, 0.5 * 0.25]]) / 2
    np.testing.assert_allclose(bottom[0].diff, expected, rtol=1e-6)
    np.testing.assert_allclose(bottom[1].diff, -expected, rtol=1e-6)


@pytest.mark.parametrize("sigma", [None, 3, 0.7])
@pytest.mark.parametrize("weighted", [False, True])
def test_smooth_l1_gradient(sigma, weighted):
    rng = np.random.default_rng(12)
    shape = (3, 4, 2, 1)
    sigma2 = (sigma or 1) ** 2
    inside = rng.uniform(0.5, 2, shape) if weighted else np.ones(shape)
    d = rng.uniform(-3, 3, shape)
    d[np.abs(np.abs(d * inside) - 1 / sigma2) < 0.05] += 0.2        # away from the kink
    target = rng.uniform(-1, 1, shape)
    bottom = [blob(target + d), blob(target)]
    if weighted:
        bottom += [blob(inside), blob(rng.uniform(0, 2, shape))]
    checked = check_gradient(smooth_l1_layer(sigma), bottom, [Blob()], check_bottom=[0, 1],
                             stepsize=1e-3, threshold=1e-2)
    assert checked == 2 * bottom[0].count


def test_smooth_l1_weights_get_no_gradient():
    layer = smooth_l1_layer()
    bottom = [blob(PRED), blob(TARGET), blob(np.ones((2, 2))), blob(np.ones((2, 2)))]
    for b in bottom:
        b.diff[...] = 5
    gradient(layer, bottom, [False, False, True, True])
    np.testing.assert_array_equal(bottom[0].diff, 5)      # not asked: untouched
    np.testing.assert_array_equal(bottom[2].diff, 0)
    np.testing.assert_array_equal(bottom[3].diff, 0)
    assert all(layer.allow_force_backward(i) for i in range(4))


def test_smooth_l1_with_inside_weights_only_is_fast_rcnns_layer():
    """Three bottoms: the original Fast R-CNN's SmoothL1Loss (sigma 1),
    whose weights multiply the difference; the outside weights are 1."""
    inside = np.array([[1.0, 0.0], [0.5, 2.0]])
    three = loss_of(smooth_l1_layer(), [blob(PRED), blob(TARGET), blob(inside)])
    four = loss_of(smooth_l1_layer(), [blob(PRED), blob(TARGET), blob(inside), blob(np.ones((2, 2)))])
    np.testing.assert_allclose(three, four, rtol=1e-6)
    d = inside * (np.asarray(PRED) - np.asarray(TARGET))
    expected = np.where(np.abs(d) < 1, 0.5 * d * d, np.abs(d) - 0.5).sum() / 2
    np.testing.assert_allclose(three, expected, rtol=1e-5)


def test_smooth_l1_checks():
    with pytest.raises(LayerError, match="'L'.*target.*must have the shape"):
        run(smooth_l1_layer(), [blob(PRED), blob(np.zeros((2, 3)))])
    with pytest.raises(LayerError, match="'L'.*outside weights.*must have the shape"):
        run(smooth_l1_layer(), [blob(PRED), blob(TARGET), blob(PRED), blob(np.zeros((2, 1)))])


def test_smooth_l1_accepts_trailing_unit_axes():
    # Fast R-CNN feeds (R, 4K) predictions with (R, 4K, 1, 1) targets and weights.
    layer = smooth_l1_layer()
    assert loss_of(layer, [blob(PRED), blob(TARGET.reshape(2, 2, 1, 1))]) == \
        pytest.approx((0.125 + 1.5 + 0.00125 + 0.125) / 2, rel=1e-6)


# ---- loss weight and propagate_down, for every layer ---------------------------------
def cases():
    """(layer text, bottoms, propagate_down) for a small input of each layer."""
    rng = np.random.default_rng(20)
    probs = softmax(rng.uniform(-1, 1, (3, 4)), 1)
    labels = [1, 3, 0]
    return [
        ('type: "SigmoidCrossEntropyLoss"', [rng.uniform(-2, 2, (3, 4)), rng.uniform(0, 1, (3, 4))],
         [True, False]),
        ('type: "HingeLoss" hinge_loss_param { norm: L2 }', [rng.uniform(-2, 2, (3, 4)), labels],
         [True, False]),
        ('type: "MultinomialLogisticLoss"', [probs, labels], [True, False]),
        ('type: "InfogainLoss"', [rng.uniform(-2, 2, (3, 4)), labels, rng.uniform(0, 1, (4, 4))],
         [True, False, False]),
        ('type: "ContrastiveLoss"', [rng.uniform(-1, 1, (3, 4)), rng.uniform(-1, 1, (3, 4)),
                                     [0, 1, 0]], [True, True, False]),
        ('type: "SmoothL1Loss"', [rng.uniform(-2, 2, (3, 4)), rng.uniform(-2, 2, (3, 4))],
         [True, True]),
    ]


@pytest.mark.parametrize("text, inputs, propagate_down", cases(), ids=MY_TYPES)
def test_loss_weight_scales_gradients(text, inputs, propagate_down):
    once = gradient(make_layer(text), [blob(x) for x in inputs], propagate_down)
    thrice = gradient(make_layer(text), [blob(x) for x in inputs], propagate_down, loss_weight=-3)
    for want, g1, g3 in zip(propagate_down, once, thrice):
        if want:
            assert np.abs(g1).max() > 0
            np.testing.assert_allclose(g3, -3 * g1, rtol=1e-6)


@pytest.mark.parametrize("text, inputs, propagate_down", cases(), ids=MY_TYPES)
def test_backward_overwrites_only_what_is_asked(text, inputs, propagate_down):
    layer, bottom = make_layer(text), [blob(x) for x in inputs]
    top = run(layer, bottom)
    for b in bottom:
        b.diff[...] = 42
    layer.backward(top, [False] * len(bottom), bottom)
    assert all(np.all(b.diff == 42) for b in bottom)
    layer.backward(top, propagate_down, bottom)
    first = [b.diff.copy() for b in bottom]
    layer.backward(top, propagate_down, bottom)          # again: the same, not accumulated
    for want, b, f in zip(propagate_down, bottom, first):
        np.testing.assert_array_equal(b.diff, f)
        assert want or np.all(b.diff == 42)


# ---- in a net --------------------------------------------------------------------------
NET = """
layer { name: "pred" type: "Input" top: "pred" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "target" type: "Input" top: "target" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "sl1" type: "SmoothL1Loss" bottom: "pred" bottom: "target" top: "sl1"
        loss_weight: 2 smooth_l1_loss_param { sigma: 2 } }
layer { name: "sce" type: "SigmoidCrossEntropyLoss" bottom: "pred" bottom: "target" top: "sce"
        propagate_down: true propagate_down: false }
force_backward: true
"""


def test_in_a_net(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    net = sppcaffe.Net(str(path), sppcaffe.TEST)
    rng = np.random.default_rng(0)
    pred, target = rng.uniform(-1, 1, (2, 3)), rng.uniform(0, 1, (2, 3))
    out = net.forward(pred=pred, target=target)
    sl1 = make_layer('type: "SmoothL1Loss" smooth_l1_loss_param { sigma: 2 }')
    sce = make_layer('type: "SigmoidCrossEntropyLoss"')
    g_sl1 = gradient(sl1, [blob(pred), blob(target)], [True, True], loss_weight=2)
    g_sce = gradient(sce, [blob(pred), blob(target)], [True, False])
    assert net.loss == pytest.approx(2 * float(out["sl1"]) + float(out["sce"]), rel=1e-6)
    diffs = net.backward()
    np.testing.assert_allclose(diffs["pred"], g_sl1[0] + g_sce[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(diffs["target"], g_sl1[1], rtol=1e-5, atol=1e-7)
