"""SVM training with hard-negative mining (sppcaffe.detection.svm) and the
detection config (sppcaffe.detection.config)."""
import numpy as np
import pytest

import sppcaffe
from sppcaffe.detection import svm as svm_module
from sppcaffe.detection.cache import image_rows
from sppcaffe.detection.config import (DetectionConfigError, SVMConfig, load_config,
                                       dump_config)
from sppcaffe.detection.svm import (FeatureTransform, NegativeCache, SVMModel, fit_svm,
                                    mean_norm, negative_rows, norm_scale, train_svms)


def entry(gt_boxes, gt_classes, proposals, feat, num_classes=1):
    record = image_rows(gt_boxes, gt_classes, np.zeros(len(gt_boxes), bool), proposals,
                        num_classes)
    record["feat"] = np.asarray(feat, np.float32)
    record["scale_index"] = np.zeros(len(record["boxes"]), np.int16)
    return record


# ---- config ----------------------------------------------------------------------

def test_defaults_are_rcnn_values():
    c = load_config()
    assert (c.svm.C, c.svm.bias_multiplier, c.svm.pos_loss_weight) == (0.001, 10, 2)
    assert (c.svm.hard_threshold, c.svm.evict_threshold, c.svm.retrain_limit) == \
        (-1.0001, -1.2, 2000)
    assert c.features.target_norm == 20 and c.svm.negative_iou == 0.3
    assert c.svm.negative_overlap_dedup == 0.7          # SPP-net Sec. 4.1
    assert load_config(settings=["svm.negative_overlap_dedup=null"]).svm \
        .negative_overlap_dedup is None
    assert (c.bbox_regression.lambda_, c.bbox_regression.min_iou, c.test.nms) == (1000, 0.5, 0.3)
    assert (c.finetune.fg_fraction, c.finetune.fg_iou, c.finetune.bg_iou_low,
            c.finetune.bg_iou_high, c.finetune.batch_size) == (0.25, 0.5, 0.1, 0.5, 128)


@pytest.mark.parametrize("text, expected", [
    ("svm:\n  C: 0.01\n  bogus: 1\n", ["unknown key 'bogus' in section 'svm'", "C, bias_multiplier",
                                       "pos_loss_weight", "evict_threshold"]),
    ("svms:\n  C: 0.01\n", ["unknown section 'svms'", "features, svm, finetune",
                           "did you mean 'svm'"]),
    ("bbox_regression:\n  lamda: 5\n", ["'lamda'", "min_iou, lambda", "did you mean 'lambda'"]),
])
def test_unknown_keys_rejected_with_allowed_list(tmp_path, text, expected):
    path = tmp_path / "detection.yml"
    path.write_text(text)
    with pytest.raises(DetectionConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    for part in expected:
        assert part in message


@pytest.mark.parametrize("setting, expected", [
    ("svm.C=fast", "svm.C expects a number"),
    ("svm.retrain_limit=2.5", "expects an integer"),
    ("svm.use_difficult=maybe", "expects true or false"),
    ("svm.C=-1", "C must be positive"),
    ("test.nms=1.5", "nms must lie in [0, 1]"),
    ("svm.negative_overlap_dedup=70", "negative_overlap_dedup must lie in [0, 1]"),
    ("features.layer=fc8", "layer must be one of pool5, fc6, fc7"),
    ("svm.evict_threshold=0", "must not exceed hard_threshold"),
    ("finetune.bg_iou_low=0.6", "bg_iou_low < bg_iou_high <= fg_iou"),
    ("C=1", "expected SECTION.KEY=VALUE"),
])
def test_bad_values_rejected(setting, expected):
    with pytest.raises(DetectionConfigError, match=None) as info:
        load_config(settings=[setting])
    assert expected in str(info.value)


def test_file_then_settings_and_round_trip(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("svm:\n  C: 1e-2\n  hard_epochs: 2\nbbox_regression:\n  lambda: 10\n"
                    "finetune:\n  max_iter: 50\n")
    c = load_config(path, ["svm.C=0.5", "finetune.max_iter=null"])
    assert c.svm.C == 0.5 and c.svm.hard_epochs == 2 and c.bbox_regression.lambda_ == 10
    assert c.finetune.max_iter is None
    again = tmp_path / "again.yml"
    again.write_text(dump_config(c))
    assert load_config(again) == c


# ---- features ------------------------------------------------------------------------

def test_norm_scale_makes_mean_norm_target():
    rng = np.random.default_rng(0)
    entries = {f"{i}": {"feat": rng.random((7, 5)).astype(np.float32) * (i + 1)}
               for i in range(4)}
    transform = FeatureTransform("pool5")
    scale, norm = norm_scale(entries.__getitem__, sorted(entries), transform, 20.0,
                             num_images=10, num_windows=10)
    everything = np.concatenate([e["feat"] for e in entries.values()])
    assert norm == pytest.approx(np.linalg.norm(everything.astype(np.float64), axis=1).mean())
    assert mean_norm(transform.with_scale(scale)(everything)) == pytest.approx(20.0, rel=1e-5)
    # A sample: 2 images of 3 windows, still a mean norm measured on real rows.
    scale2, norm2 = norm_scale(entries.__getitem__, sorted(entries), transform, 20.0,
                               num_images=2, num_windows=3, seed=1)
    assert scale2 == pytest.approx(20.0 / norm2)
    assert norm2 != pytest.approx(norm)


FC_NET = """
name: "fc"
layer { name: "input" type: "Input" top: "spp" input_param { shape { dim: 2 dim: 6 } } }
layer { name: "fc6" type: "InnerProduct" bottom: "spp" top: "fc6"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 }
                              bias_filler { type: "gaussian" std: 1 } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 }
                              bias_filler { type: "gaussian" std: 1 } } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8"
        inner_product_param { num_output: 2 } }
"""


@pytest.fixture
def fc_net(tmp_path):
    path = tmp_path / "fc.prototxt"
    path.write_text(FC_NET)
    sppcaffe.set_random_seed(3)
    return sppcaffe.Net(str(path), sppcaffe.TEST)


@pytest.mark.parametrize("layer", ["fc6", "fc7"])
def test_fc_features_match_numpy(fc_net, layer):
    x = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    (w6, b6), (w7, b7) = [[p.data for p in fc_net.params[n]] for n in ("fc6", "fc7")]
    fc6 = np.maximum(x @ w6.T + b6, 0)
    expected = fc6 if layer == "fc6" else np.maximum(fc6 @ w7.T + b7, 0)
    transform = FeatureTransform(layer, fc_net, scale=2.0, batch_size=2)   # 3 chunks
    np.testing.assert_allclose(transform.raw(x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(transform(x), 2 * expected, rtol=1e-5, atol=1e-5)


def test_fc_features_check_dimension(fc_net):
    with pytest.raises(ValueError, match="takes 6 features per window, the cache has 5"):
        FeatureTransform("fc7", fc_net).raw(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="needs the fc net"):
        FeatureTransform("fc7")


# ---- the mining steps -------------------------------------------------------------------

def test_negative_cache_adds_new_keys_and_evicts_easy():
    cache = NegativeCache(2)
    keys = svm_module.window_keys(0, [1, 2, 3])
    cache.add(np.arange(6, dtype=np.float32).reshape(3, 2), keys)
    assert len(cache) == 3 and cache.num_added == 3
    again = svm_module.window_keys(0, [2, 3, 4])
    np.testing.assert_array_equal(cache.new(again), [False, False, True])
    assert svm_module.window_keys(1, [2])[0] not in cache.keys     # other image, same row
    evicted = cache.evict(np.array([-1.5, -1.2, 0.3]), -1.2)
    assert evicted == 1
    np.testing.assert_array_equal(cache.keys, keys[1:])
    np.testing.assert_array_equal(cache.features, [[2, 3], [4, 5]])


def test_negative_rows():
    overlaps = np.array([0.0, 0.29, 0.3, 0.8, 0.1])
    scores = np.array([-2.0, 0.5, 0.5, 3.0, -1.0])
    np.testing.assert_array_equal(negative_rows(overlaps, scores, 0.3), [0, 1, 4])
    np.testing.assert_array_equal(negative_rows(overlaps, scores, 0.3, -1.0001), [1, 4])


# Four negatives sliding right along a row (widths of 100 pixels, +1 convention):
# IoU(A, B) = 95*100 / (2e4 - 9500) = 0.905, IoU(A, C) = 9000 / 11000 = 0.818,
# IoU(A, D) = 8000 / 12000 = 0.667, IoU(B, D) = 8500 / 11500 = 0.739,
# IoU(C, D) = 0.818, IoU(B, C) = 0.905.
CHAIN = np.array([[0, 0, 99, 99], [5, 0, 104, 99], [10, 0, 109, 99], [20, 0, 119, 99]],
                 np.float64)


def test_greedy_in_order_by_hand():
    from sppcaffe.detection.boxes import greedy_in_order, pairwise_iou
    iou = pairwise_iou(CHAIN, CHAIN)
    np.testing.assert_allclose(iou[0, 1:], [9500 / 10500, 9000 / 11000, 8000 / 12000])
    # A is kept; B and C overlap A by more than 0.7: removed; D overlaps only the
    # removed B and C by more than 0.7 (A by 0.667): kept.  Removing every
    # negative that overlaps another one would have removed all four.
    np.testing.assert_array_equal(greedy_in_order(iou > 0.7), [True, False, False, True])
    # At 0.85 only the 0.905 pairs count: B goes (A kept), C stays (B removed), D stays.
    np.testing.assert_array_equal(greedy_in_order(iou > 0.85), [True, False, True, True])
    # The same as NMS with equal scores, here on a longer chain needing many rounds.
    from sppcaffe.detection.boxes import nms
    steps = np.array([[3 * i, 0, 3 * i + 99, 99] for i in range(40)], np.float64)[::-1]
    kept = greedy_in_order(pairwise_iou(steps, steps) > 0.7)
    np.testing.assert_array_equal(np.flatnonzero(kept), nms(steps, np.zeros(40), 0.7))
    rng = np.random.default_rng(0)
    corners = rng.integers(0, 60, (300, 2))
    boxes = np.concatenate([corners, corners + rng.integers(20, 40, (300, 2))], axis=1)
    kept = greedy_in_order(pairwise_iou(boxes, boxes) > 0.5)
    np.testing.assert_array_equal(np.flatnonzero(kept), nms(boxes, np.zeros(300), 0.5))
    assert greedy_in_order(np.zeros((0, 0), bool)).shape == (0,)


def test_negatives_deduplicated_per_class():
    """One image: an object of class 1 far from the chain, an object of class
    2 exactly on window A.  Rows: 0, 1 the ground truth (class 1, class 2),
    2-5 the windows A-D.
    Class 1's negatives are rows 1-5; in window order the ground-truth box
    (= A) is kept, window A (IoU 1), B (0.905) and C (0.818) overlap it by
    more than 0.7 and go, D (0.667) stays: rows 1 and 5.
    Class 2's negatives: A-D overlap its object by 1, 0.905, 0.818, 0.667
    (not below 0.3), so only row 0, the far object of class 1."""
    gt = np.array([[300, 300, 350, 350], CHAIN[0]])
    record = image_rows(gt, [1, 2], np.zeros(2, bool), CHAIN, 2)
    dedup = svm_module.NegativeDedup(record["boxes"], 0.7)
    np.testing.assert_array_equal(negative_rows(record["overlaps"][:, 1], None, 0.3,
                                                dedup=dedup), [1, 5])
    np.testing.assert_array_equal(negative_rows(record["overlaps"][:, 2], None, 0.3,
                                                dedup=dedup), [0])
    # Disabled: every negative.  With hard scores, the dedup comes first: row 5
    # scores above -1.0001 and stays; row 3 would too but was deduplicated.
    np.testing.assert_array_equal(negative_rows(record["overlaps"][:, 1], None, 0.3),
                                  [1, 2, 3, 4, 5])
    scores = np.array([0, -2, -2, 0.5, -2, 0.5])
    np.testing.assert_array_equal(
        negative_rows(record["overlaps"][:, 1], scores, 0.3, -1.0001, dedup), [5])
    np.testing.assert_array_equal(
        negative_rows(record["overlaps"][:, 1], scores, 0.3, -1.0001), [3, 5])


@pytest.mark.parametrize("dedup, first_negatives", [(0.7, [-5, -2]), (None, [-5, -4, -3, -2])])
def test_mining_uses_deduplicated_negatives(monkeypatch, dedup, first_negatives):
    fits = []
    monkeypatch.setattr(svm_module, "fit_svm",
                        lambda p, n, c: (fits.append(n.copy()) or
                                         (np.array([1.0, 0.0], np.float32), np.float32(10.0))))
    gt = np.array([[300, 300, 350, 350]], np.float64)
    feat = np.array([[4, 0], [-5, 0], [-4, 0], [-3, 0], [-2, 0]], np.float32)
    entries = {"im0": entry(gt, [1], CHAIN, feat)}
    train_svms(entries.__getitem__, ["im0"], ["thing"], FeatureTransform("pool5"),
               SVMConfig(negative_overlap_dedup=dedup))
    np.testing.assert_array_equal(fits[0][:, 0], first_negatives)


def one_d_images():
    """Two images of one class, features (x, 0): a positive (GT) at x = 4 each;
    negative windows (IoU 0 with the object) at the listed x."""
    gt = np.array([[10, 10, 50, 50]], np.float64)
    far = lambda n: np.array([[100 + 60 * i, 100, 150 + 60 * i, 150] for i in range(n)])
    xs = [[4, -5, -0.5, -3], [4, -4, -0.05, 0.5, -2.1]]
    entries = {}
    for image, x in enumerate(xs):
        feat = np.stack([np.array(x, np.float32), np.zeros(len(x), np.float32)], axis=1)
        entries[f"im{image}"] = entry(gt, [1], far(len(x) - 1), feat)
    return entries


def test_hard_negative_mining_by_hand(monkeypatch):
    """With the SVM replaced by a known rule (score = x - 1 after the first
    training, x + 0.5 after the second) the caches follow from R-CNN's steps:
    image 0 adds all its negatives, trains, evicts scores < -1.2; image 1 adds
    only unseen negatives scoring > -1.0001 under the current model; the last
    image retrains and evicts again."""
    fits = []

    def fake_fit(positives, negatives, config):
        fits.append((positives.copy(), negatives.copy()))
        b = -1.0 if len(fits) == 1 else 0.5
        return np.array([1.0, 0.0], np.float32), np.float32(b)

    monkeypatch.setattr(svm_module, "fit_svm", fake_fit)
    entries = one_d_images()
    config = SVMConfig(retrain_limit=100)
    W, b, history = train_svms(entries.__getitem__, ["im0", "im1"], ["thing"],
                               FeatureTransform("pool5"), config)
    assert len(fits) == 2
    # First training: both positives, every negative of image 0.
    np.testing.assert_array_equal(fits[0][0][:, 0], [4, 4])
    np.testing.assert_array_equal(fits[0][1][:, 0], [-5, -0.5, -3])
    # Scores x - 1: -6, -1.5, -4 are all < -1.2: all evicted.  Image 1 under x - 1:
    # -5, -1.05, -0.5, -3.1 -> only x = 0.5 (score -0.5 > -1.0001) is hard;
    # x = -0.05 scores -1.05, inside the margin but below -1.0001: not added.
    np.testing.assert_array_equal(fits[1][1][:, 0], [0.5])
    assert history[0]["evicted"] == 3 and history[1]["evicted"] == 0
    np.testing.assert_array_equal(W[:, 0], [1, 0])
    assert b[0] == pytest.approx(0.5)


def test_hard_negative_mining_retrain_limit(monkeypatch):
    """retrain_limit 0: every image with a new negative retrains."""
    calls = []
    monkeypatch.setattr(svm_module, "fit_svm",
                        lambda p, n, c: (calls.append(len(n)) or
                                         (np.array([1.0, 0.0], np.float32), np.float32(10.0))))
    entries = one_d_images()
    train_svms(entries.__getitem__, ["im0", "im1", "im0"], ["thing"],
               FeatureTransform("pool5"), SVMConfig(retrain_limit=1))
    # Scores x + 10 keep everything hard and nothing easy: image 0 (3 negatives),
    # image 1 (4 more, > limit 1), then image 0 again as position 2: new keys (3 more).
    assert calls == [3, 7, 10]


def test_real_svm_separates_and_mines():
    entries = one_d_images()
    config = SVMConfig(C=10.0, bias_multiplier=1.0)
    W, b, history = train_svms(entries.__getitem__, sorted(entries), ["thing"],
                               FeatureTransform("pool5"), config)
    scores = np.concatenate([e["feat"] for e in entries.values()]) @ W[:, 0] + b[0]
    positive = np.concatenate([e["gt"] for e in entries.values()])
    assert (scores[positive] > 0).all() and (scores[~positive] < 0).all()
    assert history[-1]["total"] == pytest.approx(
        svm_module.svm_objective(W[:, 0], b[0], np.array([[4, 0], [4, 0]], np.float32),
                                 np.array([[0.5, 0], [-0.05, 0]], np.float32), config)["total"],
        rel=0.2)


@pytest.mark.parametrize("field, values", [("bias_multiplier", (10.0, 0.3)),
                                           ("pos_loss_weight", (2.0, 0.2)),
                                           ("C", (1.0, 0.01))])
def test_fit_svm_minimizes_rcnn_objective(field, values):
    """Each setting's solution has the lowest R-CNN objective (hinge losses
    with the positives weighted, ||w||^2 / 2 + (b / B)^2 / 2) under that
    setting: B, the positive weight and C reach liblinear as R-CNN means."""
    rng = np.random.default_rng(0)
    pos = rng.standard_normal((30, 3)).astype(np.float32) + 4
    neg = rng.standard_normal((60, 3)).astype(np.float32) + 1
    configs = [SVMConfig(**{field: v}, C=1.0) if field != "C" else SVMConfig(C=v)
               for v in values]
    fits = [fit_svm(pos, neg, c) for c in configs]
    for c in configs:
        own, other = (svm_module.svm_objective(*f, pos, neg, c)["total"] for f in
                      (fits[configs.index(c)], fits[1 - configs.index(c)]))
        assert own < other
    assert abs(fits[0][1] - fits[1][1]) > 0.1


# ---- the model file -----------------------------------------------------------------------

def test_model_save_load_and_cls_score(tmp_path):
    rng = np.random.default_rng(0)
    model = SVMModel(["a", "b"], rng.standard_normal((3, 2)).astype(np.float32),
                     np.array([0.5, -1], np.float32), "fc7", 2.5, "/x/net.prototxt", None)
    model.save(tmp_path / "svms.npz")
    again = SVMModel.load(tmp_path / "svms.npz")
    assert again.classes == ["a", "b"] and again.feature_layer == "fc7"
    assert again.feature_scale == 2.5 and again.fc_net == "/x/net.prototxt"
    assert again.fc_weights is None
    np.testing.assert_array_equal(again.W, model.W)
    # The caffemodel layer scores raw fc7 like the SVMs score scaled fc7.
    model.save_cls_score(tmp_path / "cls_score.caffemodel")
    net_path = tmp_path / "head.prototxt"
    net_path.write_text('layer { name: "in" type: "Input" top: "fc7" '
                        'input_param { shape { dim: 4 dim: 3 } } }\n'
                        'layer { name: "cls_score" type: "InnerProduct" bottom: "fc7" '
                        'top: "cls_score" inner_product_param { num_output: 2 } }\n')
    net = sppcaffe.Net(str(net_path), sppcaffe.TEST, weights=str(tmp_path / "cls_score.caffemodel"))
    x = rng.random((4, 3)).astype(np.float32)
    out = net.forward(fc7=x)["cls_score"]
    np.testing.assert_allclose(out, model.scores(2.5 * x), rtol=1e-5, atol=1e-5)
    (tmp_path / "other.npz").write_bytes(b"")
    np.savez(tmp_path / "other.npz", x=np.zeros(1))
    with pytest.raises(ValueError, match="not an SVM file"):
        SVMModel.load(tmp_path / "other.npz")


def test_shipped_config_is_the_defaults():
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "configs", "detection_voc2007.yml")
    assert load_config(path) == load_config()
