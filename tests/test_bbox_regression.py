"""Bounding-box regression (sppcaffe.detection.bbox_regression)."""
import numpy as np
import pytest

from sppcaffe.detection.bbox_regression import (BBoxRegressor, regression_examples, ridge,
                                                train_regressor, whitening)
from sppcaffe.detection.boxes import apply_deltas, pairwise_iou, regression_targets
from sppcaffe.detection.cache import image_rows
from sppcaffe.detection.config import BBoxRegressionConfig


@pytest.mark.parametrize("n, d", [(40, 5), (5, 40)])       # primal, then dual
def test_ridge_matches_normal_equations(n, d):
    rng = np.random.default_rng(0)
    x, y, lam = rng.standard_normal((n, d)), rng.standard_normal((n, 4)), 3.0
    a = np.concatenate([x, np.ones((n, 1))], axis=1)
    expected = np.linalg.solve(a.T @ a + lam * np.eye(d + 1), a.T @ y)
    np.testing.assert_allclose(ridge(x, y, lam), expected, rtol=1e-8, atol=1e-10)


def test_ridge_recovers_linear_map_with_small_lambda():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 6))
    true_w, true_b = rng.standard_normal((6, 4)), rng.standard_normal(4)
    beta = ridge(x, x @ true_w + true_b, 1e-8)
    np.testing.assert_allclose(beta[:-1], true_w, atol=1e-6)
    np.testing.assert_allclose(beta[-1], true_b, atol=1e-6)


def test_whitening_is_cholesky_of_covariance():
    rng = np.random.default_rng(2)
    y = rng.standard_normal((100, 4)) @ rng.standard_normal((4, 4)) + [1, 2, 3, 4]
    mu, t = whitening(y)
    np.testing.assert_allclose(mu, y.mean(axis=0))
    np.testing.assert_allclose(t.T @ t, np.cov(y, rowvar=False), rtol=1e-10)
    assert np.allclose(t, np.triu(t))
    white = np.linalg.solve(t.T, (y - mu).T).T
    np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(4), atol=1e-10)
    # One example, or identical ones: no covariance to factor.
    np.testing.assert_array_equal(whitening(y[:1])[1], np.eye(4))
    np.testing.assert_array_equal(whitening(np.ones((5, 4)))[1], np.eye(4))


@pytest.mark.parametrize("seed", range(3))
def test_targets_round_trip(seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(1, 300, (50, 2))
    proposals = np.concatenate([xy, xy + rng.uniform(5, 200, (50, 2))], axis=1)
    xy = rng.uniform(1, 300, (50, 2))
    targets = np.concatenate([xy, xy + rng.uniform(5, 200, (50, 2))], axis=1)
    deltas = regression_targets(proposals, targets)
    np.testing.assert_allclose(apply_deltas(proposals, deltas), targets, atol=1e-9)


def record(gt_boxes, gt_classes, proposals, num_classes=2):
    r = image_rows(gt_boxes, gt_classes, np.zeros(len(gt_boxes), bool), proposals, num_classes)
    return r


def test_examples_take_windows_over_threshold_towards_nearest_object():
    gt = np.array([[10, 10, 59, 59], [100, 100, 149, 139]], np.float64)
    proposals = np.array([[12, 12, 61, 61],      # IoU 0.855 with object 0
                          [100, 105, 150, 140],  # 0.839 with object 1
                          [30, 30, 90, 90],      # 0.169 with object 0
                          [200, 200, 250, 250]])  # 0
    r = record(gt, [2, 1], proposals)
    rows, targets, classes = regression_examples(r, 0.5)
    np.testing.assert_array_equal(rows, [0, 1, 2, 3])       # the two objects, then two windows
    np.testing.assert_array_equal(classes, [2, 1, 2, 1])
    np.testing.assert_allclose(targets[:2], 0, atol=1e-12)      # an object onto itself
    np.testing.assert_allclose(apply_deltas(proposals[:2], targets[2:]), gt, atol=1e-9)
    rows, _, _ = regression_examples(r, 0.845)
    np.testing.assert_array_equal(rows, [0, 1, 2])
    empty = record(np.zeros((0, 4)), [], proposals)
    assert len(regression_examples(empty, 0.5)[0]) == 0


MIXING = np.random.default_rng(42).standard_normal((4, 12))


def synthetic_images(rng, count=40):
    """Images with one object each and jittered windows whose features
    encode their deltas linearly: feat = deltas @ MIXING + noise."""
    entries = {}
    for i in range(count):
        x, y = rng.uniform(1, 200, 2)
        gt = np.array([[x, y, x + rng.uniform(40, 120), y + rng.uniform(40, 120)]])
        w, h = gt[0, 2] - gt[0, 0] + 1, gt[0, 3] - gt[0, 1] + 1
        shift = rng.uniform(-0.12, 0.12, (20, 4)) * [w, h, w, h]
        windows = gt + shift
        r = record(gt, [1 + i % 2], windows)
        deltas = regression_targets(r["boxes"], np.repeat(gt, len(r["boxes"]), axis=0))
        r["feat"] = (deltas @ MIXING + 0.001 * rng.standard_normal((len(deltas), 12))
                     ).astype(np.float32)
        entries[f"{i:03d}"] = r
    return entries


def test_regressor_learns_known_linear_transform(tmp_path):
    rng = np.random.default_rng(0)
    train, test = synthetic_images(rng), synthetic_images(np.random.default_rng(1))
    config = BBoxRegressionConfig(min_iou=0.5, lambda_=1e-6)
    regressor = train_regressor(train.__getitem__, sorted(train), ["a", "b"], config)
    assert regressor.trained.all()
    before, after = [], []
    for r in test.values():
        gt_row = np.flatnonzero(r["gt"])
        k = int(r["gt_classes"][gt_row[0]])
        boxes = r["boxes"].astype(np.float64)
        predicted = regressor.predict(boxes, r["feat"], k)
        gt = boxes[gt_row]
        before.append(pairwise_iou(boxes, gt)[:, 0])
        after.append(pairwise_iou(predicted, gt)[:, 0])
    before, after = np.concatenate(before), np.concatenate(after)
    assert before.mean() < 0.85 and after.mean() > 0.98
    # Saved and loaded, it predicts the same.
    regressor.save(tmp_path / "bbox.npz")
    again = BBoxRegressor.load(tmp_path / "bbox.npz")
    r = test["000"]
    np.testing.assert_allclose(again.predict(r["boxes"], r["feat"], 1),
                               regressor.predict(r["boxes"], r["feat"], 1))


def test_large_lambda_shrinks_towards_mean_and_clipping():
    rng = np.random.default_rng(0)
    train = synthetic_images(rng, count=10)
    regressor = train_regressor(train.__getitem__, sorted(train), ["a", "b"],
                                BBoxRegressionConfig(lambda_=1e12))
    r = train["000"]
    deltas = regressor.deltas(r["feat"], 1)
    np.testing.assert_allclose(deltas, np.broadcast_to(regressor.mu[0], deltas.shape), atol=1e-6)
    clipped = regressor.predict(np.array([[1, 1, 500, 500]]), r["feat"][:1], 1, (100, 80))
    assert clipped[0, 0] >= 1 and clipped[0, 2] <= 80 and clipped[0, 3] <= 100


def test_class_without_examples_keeps_boxes():
    rng = np.random.default_rng(0)
    train = {k: v for k, v in synthetic_images(rng, count=6).items() if
             v["gt_classes"][0] == 1}
    regressor = train_regressor(train.__getitem__, sorted(train), ["a", "b", "c"],
                                BBoxRegressionConfig())
    np.testing.assert_array_equal(regressor.trained, [True, False, False])
    boxes = np.array([[5.0, 5, 50, 60]])
    np.testing.assert_allclose(regressor.predict(boxes, np.zeros((1, 12)), 2), boxes)
    no_objects = record(np.zeros((0, 4)), [], boxes) | {"feat": np.zeros((1, 12))}
    with pytest.raises(ValueError, match="no window overlaps"):
        train_regressor({"x": no_objects}.__getitem__, ["x"], ["a"], BBoxRegressionConfig())
