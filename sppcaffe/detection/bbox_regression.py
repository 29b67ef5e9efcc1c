"""Bounding-box regression (R-CNN appendix C, rcnn_train_bbox_regressor.m;
SPP-net Sec. 4.1 regresses from the pooled conv5 features).

Examples: every window (ground-truth boxes included) whose IoU with some
object is at least `min_iou` (SPP-net: 0.5), assigned to the object it
overlaps most (the first on equal IoU); its class is that object's class and
its targets the deltas of sppcaffe.detection.boxes.regression_targets from
the window to the object.

Per class, as R-CNN: the targets are centred (mean mu) and decorrelated by
the Cholesky factor T of their covariance (T' T = cov), then a ridge
regression with a bias column, the bias regularized like the weights,

    beta = argmin ||[X 1] beta - Y||^2 + lambda ||beta||^2.

It is solved in closed form in whichever space is smaller: the primal
(X'X + lambda I) beta = X'Y when there are more examples than features,
else the dual beta = X' (X X' + lambda I)^-1 Y (the same solution).
Prediction: deltas = ([x 1] beta) T + mu.

Features are the pooled conv5 features times one factor making their mean
norm `target_norm` over the training examples (R-CNN's scaling).
"""
import dataclasses
import logging
from typing import List

import numpy as np

from ..io.atomic import atomic_write
from ..io.files import read_npz
from .boxes import apply_deltas, as_boxes, clip_boxes, pairwise_iou, regression_targets
from .config import BBoxRegressionConfig

log = logging.getLogger("sppcaffe")


def ridge(x, y, lam):
    """beta ((D + 1), T) minimizing ||[x 1] beta - y||^2 + lam ||beta||^2,
    solved in float64 in the primal or the dual, whichever is smaller."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    a = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    n, d = a.shape
    if n >= d:
        gram = a.T @ a
        gram[np.diag_indices(d)] += lam
        return np.linalg.solve(gram, a.T @ y)
    gram = a @ a.T
    gram[np.diag_indices(n)] += lam
    return a.T @ np.linalg.solve(gram, y)


def whitening(targets):
    """(mu, T) with T upper triangular, T' T = cov(targets) (MATLAB's chol of
    cov, unbiased); identity where the targets do not vary enough."""
    targets = np.asarray(targets, np.float64)
    mu = targets.mean(axis=0)
    if len(targets) < 2:
        return mu, np.eye(targets.shape[1])
    cov = np.cov(targets, rowvar=False)
    try:
        return mu, np.linalg.cholesky(cov).T
    except np.linalg.LinAlgError:           # singular: too few or identical targets
        return mu, np.eye(targets.shape[1])


def regression_examples(entry, min_iou):
    """(rows, targets (N, 4), classes (N,)) of an image's windows whose IoU
    with an object is at least `min_iou`, targets towards that object."""
    boxes = as_boxes(entry["boxes"])
    gt = np.asarray(entry["gt"], bool)
    gt_boxes = boxes[gt]
    if not len(gt_boxes):
        return np.zeros(0, np.intp), np.zeros((0, 4)), np.zeros(0, np.int64)
    iou = pairwise_iou(boxes, gt_boxes)
    nearest = np.argmax(iou, axis=1)
    best = iou[np.arange(len(boxes)), nearest]
    rows = np.flatnonzero(best >= min_iou)
    targets = regression_targets(boxes[rows], gt_boxes[nearest[rows]])
    classes = np.asarray(entry["gt_classes"])[gt][nearest[rows]].astype(np.int64)
    return rows, targets, classes


@dataclasses.dataclass
class BBoxRegressor:
    """Per class k (1..K at index k - 1): beta (D + 1, 4), mu (4,), T (4, 4)."""
    classes: List[str]
    beta: np.ndarray              # (K, D + 1, 4) float32
    mu: np.ndarray                # (K, 4)
    T: np.ndarray                 # (K, 4, 4)
    feature_scale: float
    trained: np.ndarray           # (K,) bool: a class without examples keeps boxes as they are

    def deltas(self, pooled, class_index):
        """(R, 4) predicted deltas of windows with pooled features (R, D)
        for class `class_index` (1..K)."""
        k = int(class_index) - 1
        x = np.asarray(pooled, np.float32) * np.float32(self.feature_scale)
        if not self.trained[k]:
            return np.zeros((len(x), 4))
        beta = self.beta[k]
        y = x.astype(np.float64) @ beta[:-1] + beta[-1]
        return y @ self.T[k] + self.mu[k]

    def predict(self, boxes, pooled, class_index, image_hw=None, first=1):
        """The regressed boxes, clipped to an image of `image_hw` = (height,
        width) whose first pixel is `first` (VOC: 1) when given."""
        out = apply_deltas(boxes, self.deltas(pooled, class_index))
        if image_hw is not None:
            out = clip_boxes(out, image_hw[0], image_hw[1], first)
        return out

    def save(self, path):
        with atomic_write(path) as f:
            np.savez(f, classes=np.array(self.classes), beta=self.beta, mu=self.mu, T=self.T,
                     feature_scale=self.feature_scale, trained=self.trained)

    @classmethod
    def load(cls, path):
        z = read_npz(path, "box-regression file", ValueError)
        try:
            return cls([str(c) for c in z["classes"]], z["beta"], z["mu"], z["T"],
                       float(z["feature_scale"]), z["trained"].astype(bool))
        except KeyError as err:
            raise ValueError(f"{path}: not a box-regression file (no {err})") from None


def collect_examples(load, image_ids, min_iou):
    """(pooled features (N, D), targets (N, 4), classes (N,)) over images."""
    feats, targets, classes = [], [], []
    for image_id in image_ids:
        entry = load(image_id)
        rows, t, c = regression_examples(entry, min_iou)
        if len(rows):
            feats.append(np.asarray(entry["feat"])[rows])
            targets.append(t)
            classes.append(c)
    if not feats:
        raise ValueError(f"no window overlaps an object by IoU >= {min_iou}: nothing to "
                         "regress from")
    return np.concatenate(feats), np.concatenate(targets), np.concatenate(classes)


def train_regressor(load, image_ids, classes, config: BBoxRegressionConfig):
    """A BBoxRegressor trained on the cached pooled features of `image_ids`."""
    x, targets, labels = collect_examples(load, image_ids, config.min_iou)
    norm = float(np.linalg.norm(x.astype(np.float64), axis=1).mean())
    scale = config.target_norm / norm if norm > 0 else 1.0
    x = x * np.float32(scale)
    k_count, dim = len(classes), x.shape[1]
    beta = np.zeros((k_count, dim + 1, 4), np.float32)
    mu = np.zeros((k_count, 4))
    T = np.tile(np.eye(4), (k_count, 1, 1))
    trained = np.zeros(k_count, bool)
    for k in range(k_count):
        chosen = labels == k + 1
        if not chosen.any():
            log.warning("box regression: class %s has no window with IoU >= %g; its boxes "
                        "stay as they are", classes[k], config.min_iou)
            continue
        mu[k], T[k] = whitening(targets[chosen])
        white = np.linalg.solve(T[k].T, (targets[chosen] - mu[k]).T).T    # (Y - mu) T^-1
        beta[k] = ridge(x[chosen], white, config.lambda_)
        trained[k] = True
        fit = (x[chosen].astype(np.float64) @ beta[k][:-1] + beta[k][-1]) @ T[k] + mu[k]
        log.info("box regression: class %s, %d windows, mean |error| %.4f (targets %.4f)",
                 classes[k], int(chosen.sum()), float(np.abs(fit - targets[chosen]).mean()),
                 float(np.abs(targets[chosen]).mean()))
    return BBoxRegressor(list(classes), beta, mu, T, scale, trained)
