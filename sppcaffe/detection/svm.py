"""One linear SVM per class on window features, trained with hard-negative
mining as R-CNN's rcnn_train.m does (SPP-net Sec. 4.1 trains its SVMs the
same way).

Features.  The SVMs read either the cached pooled conv5 features ("pool5")
or fc6/fc7 computed from them by the fully-connected layers of a net (the
fine-tuning net, models/detection/: Input blob "spp").  Every feature is
multiplied by one factor, chosen so that the mean L2 norm over a sample of
training windows is `target_norm` (R-CNN: 20): ``FeatureTransform``.  In
GPU mode the fc layers run on the device; pooled features given as a
device Blob (an extractor's WindowFeatures.stored) are fed to them there,
and only their outputs come to the host, where the SVMs score.

Training (``train_svms``):
- positives of class k: the ground-truth boxes of class k;
- negatives: windows whose IoU with every object of class k is below
  `negative_iou` (0.3), ground-truth boxes of other classes included;
  of negatives overlapping each other by more than
  `negative_overlap_dedup` (0.7, SPP-net Sec. 4.1) only the first (in
  window order) stays: ``NegativeDedup``;
- one pass (`hard_epochs`) over the training images.  Each class keeps a
  cache of negatives.  From the first image every negative enters it; from
  then on only those scoring above `hard_threshold` (-1.0001: inside the
  margin) under the current model, and never twice.  A class's SVM is
  retrained after the first image, whenever more than `retrain_limit`
  negatives were added since its last training, and after the last image;
  after each retraining the negatives scoring below `evict_threshold`
  (-1.2, easy) leave the cache.
- each SVM is liblinear's L2-regularized L1-loss (hinge) SVM, through
  scikit-learn's LinearSVC: C, a constant feature `bias_multiplier` (B = 10)
  whose weight is regularized like the others, positives' loss weighted by
  `pos_loss_weight` (2).  The score of a window is ``x . w + b``.

Cache entries are read through `load(image_id)`, returning a mapping with
the feature cache's fields (``boxes``, ``gt``, ``gt_classes``,
``overlaps`` (R, K+1) with column 0 unused, ``feat``, ``difficult_gt``).
"""
import dataclasses
import logging
import os
import warnings
from typing import List, Optional

import numpy as np

from .. import backends, io
from ..backends import gpu
from ..blob import Blob
from ..io.atomic import atomic_write
from ..io.files import read_npz
from ..net import TEST, Net
from ..proto import caffe_pb2
from . import svd
from .boxes import greedy_in_order, pairwise_iou
from .config import FEATURE_LAYERS, FeatureConfig, SVMConfig
from .features import producing_layer

log = logging.getLogger("sppcaffe")

FC_INPUT = "spp"                  # the Input blob of the fc net: pooled conv5 features
_KEY_SHIFT = 32                   # a negative's key: image index << 32 | row


# ---- features ----------------------------------------------------------------

class FeatureTransform:
    """Cached pooled features (R, D) -> the SVMs' input: as they are
    ("pool5") or through the fc layers of `net` (its Input blob "spp"), then
    times `scale`.  ``raw()`` leaves the scale out."""

    def __init__(self, layer="fc7", net=None, scale=1.0, batch_size=1024):
        if layer not in FEATURE_LAYERS:
            raise ValueError(f"unknown feature layer {layer!r} "
                             f"(known: {', '.join(FEATURE_LAYERS)})")
        if layer != "pool5":
            if net is None:
                raise ValueError(f"feature layer '{layer}' needs the fc net (a prototxt with "
                                 f"an Input blob '{FC_INPUT}' and its weights)")
            if FC_INPUT not in net.inputs:
                raise ValueError(f"the fc net {net.source} has no Input blob '{FC_INPUT}'")
            try:
                # The last writer: in-place ReLU and Dropout rewrite fc7 after fc7.
                self._end = producing_layer(net, layer)
            except KeyError as err:
                raise ValueError(f"the fc net {net.source}: {err.args[0]}") from None
        self.layer, self.net, self.scale = layer, net, float(scale)
        self.batch_size = int(batch_size)

    @classmethod
    def from_files(cls, layer, net_path=None, weights=None, scale=1.0, batch_size=1024,
                   svd_ranks=None):
        """The transform of a net prototxt and its weights; `svd_ranks`
        ({"fc6": k, ...}) replaces those layers by truncated SVDs
        (sppcaffe.detection.svd).  pool5 needs no net (and has nothing to
        factorize)."""
        net = None
        if layer != "pool5":
            if net_path is None:
                raise ValueError(f"feature layer '{layer}' needs the fc net prototxt")
            net = svd.compressed_net(net_path, Net(net_path, TEST, weights=weights),
                                     svd_ranks or {})
        return cls(layer, net, scale, batch_size)

    @property
    def input_dim(self):
        """Pooled features per window the net expects (None: any, for pool5)."""
        if self.net is None:
            return None
        shape = self.net.blobs[FC_INPUT].shape
        return int(np.prod(shape[1:])) if len(shape) > 1 else None

    def with_scale(self, scale):
        return FeatureTransform(self.layer, self.net, scale, self.batch_size)

    def _checked(self, pooled):
        """`pooled` as (R, D) rows: a float32 host array, or a Blob left on
        the device where the fc layers run there (GPU mode)."""
        if isinstance(pooled, Blob) and (self.net is None or not backends.gpu_mode()):
            pooled = pooled.cpu_data
        if not isinstance(pooled, Blob):
            pooled = np.asarray(pooled, np.float32)
        if len(pooled.shape) != 2:
            raise ValueError(f"pooled features must be (R, D), got shape {pooled.shape}")
        expected = self.input_dim
        if expected is not None and pooled.shape[1] != expected:
            raise ValueError(f"the fc net {self.net.source} takes {expected} features per window, "
                             f"the cache has {pooled.shape[1]}")
        return pooled

    def outputs(self, pooled):
        """Run the fc layers over the (R, D) `pooled` rows (host array or,
        in GPU mode, a device Blob) `batch_size` rows a pass; yields (first
        row, rows in the pass, the net's output Blob), valid until the next
        pass.  Device rows are copied into the net's input on the device."""
        if self.net is None:
            raise ValueError("pool5 features go to the SVMs as they are: no fc layers to run")
        pooled = self._checked(pooled)
        blob_in = self.net.blobs[FC_INPUT]
        count, dim = pooled.shape
        for start in range(0, count, self.batch_size):
            rows = min(self.batch_size, count - start)
            if blob_in.shape != (rows, dim):
                blob_in.reshape((rows, dim))
            if isinstance(pooled, Blob):
                gpu.blas().copy(blob_in.mutable_gpu_data, pooled.gpu_data + 4 * start * dim,
                                4 * rows * dim)
            else:
                blob_in.data[...] = pooled[start:start + rows]
            self.net.forward_from_to(0, self._end)
            yield start, rows, self.net.blobs[self.layer]

    def raw(self, pooled):
        """The unscaled features (R, D') on the host.  pool5 hands back the
        host rows themselves (not a copy)."""
        pooled = self._checked(pooled)
        if self.net is None:
            return pooled
        out = None
        for start, rows, blob_out in self.outputs(pooled):
            # cpu_data: the device copy stays current, so the next pass
            # uploads nothing back.
            values = blob_out.cpu_data.reshape(rows, -1)
            if out is None:
                out = np.empty((pooled.shape[0], values.shape[1]), np.float32)
            out[start:start + rows] = values
        if out is None:
            return np.zeros((0, int(np.prod(self.net.blobs[self.layer].shape[1:]))), np.float32)
        return out

    def __call__(self, pooled):
        out = self.raw(pooled)
        if self.scale != 1.0:
            if self.net is None:
                # raw() returned the caller's own rows: never scale them in place.
                return out * np.float32(self.scale)
            out *= np.float32(self.scale)
        return out


def mean_norm(features):
    """Mean L2 norm of the rows of `features`."""
    features = np.asarray(features, np.float64)
    if len(features) == 0:
        raise ValueError("no features to measure")
    return float(np.linalg.norm(features, axis=1).mean())


def norm_scale(load, image_ids, transform, target_norm, num_images=200, num_windows=200,
               seed=0):
    """The factor making the mean norm of `transform.raw` features
    `target_norm`, measured on random windows (`num_windows`) of random
    images (`num_images`), as rcnn_feature_stats."""
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(image_ids))[:num_images]
    sample = []
    for k in np.sort(chosen):
        feat = load(image_ids[k])["feat"]
        rows = rng.permutation(len(feat))[:num_windows]
        if len(rows):
            sample.append(transform.raw(np.asarray(feat)[np.sort(rows)]))
    if not sample:
        raise ValueError("the sampled images hold no windows to measure feature norms on")
    norm = mean_norm(np.concatenate(sample))
    if norm == 0:
        raise ValueError("every sampled feature is zero: cannot scale features to a mean norm")
    return target_norm / norm, norm


# ---- one SVM -------------------------------------------------------------------

def fit_svm(positives, negatives, config: SVMConfig):
    """(w (D,), b) of liblinear's L2-regularized L1-loss SVM on +1
    `positives` and -1 `negatives` (R-CNN's update_model)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    positives = np.asarray(positives, np.float32)
    negatives = np.asarray(negatives, np.float32)
    x = np.concatenate([positives, negatives])
    y = np.concatenate([np.ones(len(positives), np.int8), -np.ones(len(negatives), np.int8)])
    svm = LinearSVC(C=config.C, loss="hinge", dual=True, intercept_scaling=config.bias_multiplier,
                    class_weight={1: config.pos_loss_weight, -1: 1.0}, tol=config.tol,
                    max_iter=config.max_iter, random_state=0)   # liblinear's visiting order
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        svm.fit(x, y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.warning("liblinear did not converge in %d iterations (%d positives, %d negatives); "
                    "raise svm.max_iter or svm.tol", config.max_iter, len(positives),
                    len(negatives))
    # LinearSVC orders classes ascending: coef_ is the score of class +1.
    return svm.coef_[0].astype(np.float32), np.float32(svm.intercept_[0])


def svm_objective(w, b, positives, negatives, config: SVMConfig):
    """R-CNN's logged losses: {pos, neg, reg, total} of the primal objective."""
    z_pos = positives @ w + b
    z_neg = negatives @ w + b
    pos = config.C * config.pos_loss_weight * float(np.maximum(0, 1 - z_pos).sum())
    neg = config.C * float(np.maximum(0, 1 + z_neg).sum())
    reg = 0.5 * float(w @ w) + 0.5 * float(b / config.bias_multiplier) ** 2
    return {"pos": pos, "neg": neg, "reg": reg, "total": pos + neg + reg}


class NegativeCache:
    """The negatives of one class: features and keys (image index << 32 |
    window row, so no window enters twice), and how many were added since
    the last retraining."""

    def __init__(self, dim):
        self.features = np.zeros((0, dim), np.float32)
        self.keys = np.zeros(0, np.int64)
        self.num_added = 0

    def __len__(self):
        return len(self.keys)

    def new(self, keys):
        """Mask of the `keys` not in the cache yet."""
        return ~np.isin(keys, self.keys)

    def add(self, features, keys):
        keys = np.asarray(keys, np.int64)
        if len(keys) == 0:
            return
        self.features = np.concatenate([self.features, np.asarray(features, np.float32)])
        self.keys = np.concatenate([self.keys, keys])
        self.num_added += len(keys)

    def evict(self, scores, threshold):
        """Drop the negatives scoring below `threshold` (easy ones); how many."""
        keep = np.asarray(scores) >= threshold
        self.features, self.keys = self.features[keep], self.keys[keep]
        return int((~keep).sum())


def window_keys(image_index, rows):
    return (np.int64(image_index) << _KEY_SHIFT) | np.asarray(rows, np.int64)


class NegativeDedup:
    """SPP-net's rule for one image's negatives: of windows overlapping each
    other by more than `threshold` (IoU), only the first in window order is
    a negative sample (``boxes.greedy_in_order``).  The IoU of every pair is
    computed once per image; a class's negatives are deduplicated on their
    rows of it, and classes with the same negatives (every class absent
    from the image: all its windows) share the result."""

    def __init__(self, boxes, threshold):
        self.overlapping = pairwise_iou(boxes, boxes) > threshold
        self._done = {}

    def __call__(self, candidates):
        """The subset of the bool mask `candidates` (R,) that stays."""
        key = np.packbits(candidates).tobytes()
        if key not in self._done:
            rows = np.flatnonzero(candidates)
            kept = np.zeros_like(candidates)
            kept[rows[greedy_in_order(self.overlapping[np.ix_(rows, rows)])]] = True
            self._done[key] = kept
        return self._done[key]


def negative_rows(overlaps, scores, negative_iou, hard_threshold=None, dedup=None):
    """Rows that are negatives of a class (IoU with its objects below
    `negative_iou`), thinned by `dedup` (a NegativeDedup of the image, or
    None) and, unless `hard_threshold` is None, scoring above it."""
    chosen = np.asarray(overlaps) < negative_iou
    if dedup is not None:
        chosen = dedup(chosen)
    if hard_threshold is not None:
        chosen = chosen & (np.asarray(scores) > hard_threshold)
    return np.flatnonzero(chosen)


# ---- the model -------------------------------------------------------------------

@dataclasses.dataclass
class SVMModel:
    """Trained SVMs: score = (scale * features) @ W + b, one column per class."""
    classes: List[str]
    W: np.ndarray                  # (D, K) float32
    b: np.ndarray                  # (K,) float32
    feature_layer: str
    feature_scale: float
    fc_net: Optional[str] = None   # prototxt and weights computing fc6/fc7
    fc_weights: Optional[str] = None

    def scores(self, features):
        """(R, K) scores of already transformed (scaled) features."""
        return np.asarray(features, np.float32) @ self.W + self.b

    def transform(self, batch_size=1024, fc_net=None, fc_weights=None, svd_ranks=None):
        """The FeatureTransform these SVMs were trained on (fc net paths
        overridable, e.g. when the files moved; fc layers optionally
        factorized by truncated SVD, `svd_ranks` {"fc6": k, ...})."""
        return FeatureTransform.from_files(self.feature_layer, fc_net or self.fc_net,
                                           fc_weights or self.fc_weights, self.feature_scale,
                                           batch_size, svd_ranks)

    def save(self, path):
        """A .npz (temporary name + rename)."""
        with atomic_write(path) as f:
            np.savez(f, classes=np.array(self.classes), W=self.W, b=self.b,
                     feature_layer=self.feature_layer, feature_scale=self.feature_scale,
                     fc_net=self.fc_net or "", fc_weights=self.fc_weights or "")

    @classmethod
    def load(cls, path):
        z = read_npz(path, "SVM file", ValueError)
        try:
            return cls([str(c) for c in z["classes"]], z["W"], z["b"], str(z["feature_layer"]),
                       float(z["feature_scale"]), str(z["fc_net"]) or None,
                       str(z["fc_weights"]) or None)
        except KeyError as err:
            raise ValueError(f"{path}: not an SVM file of train_svms (no {err})") from None

    def save_cls_score(self, path, bottom=None):
        """The SVMs as a caffemodel holding one InnerProduct layer
        "cls_score" (weights (K, D) with the feature scale folded in, bias
        (K,)), to append after the fc net's `bottom` blob (default: the
        feature layer)."""
        param = caffe_pb2.NetParameter(name="svm_cls_score")
        layer = param.layer.add(name="cls_score", type="InnerProduct",
                                bottom=[bottom or self.feature_layer], top=["cls_score"])
        layer.inner_product_param.num_output = len(self.classes)
        io.array_to_blob((self.feature_scale * self.W.T).astype(np.float32), layer.blobs.add())
        io.array_to_blob(self.b.astype(np.float32), layer.blobs.add())
        io.write_binary(param, path)


# ---- training ---------------------------------------------------------------------

def _positives(load, image_ids, transform, num_classes, use_difficult):
    """Per class, the transformed features of its ground-truth boxes."""
    parts = [[] for _ in range(num_classes)]
    for image_id in image_ids:
        entry = load(image_id)
        gt = np.flatnonzero(np.asarray(entry["gt"], bool))
        if not use_difficult:
            gt = gt[~np.asarray(entry["difficult_gt"], bool)[gt]]
        if not len(gt):
            continue
        features = transform(np.asarray(entry["feat"])[gt])
        labels = np.asarray(entry["gt_classes"])[gt]
        for k in range(num_classes):
            parts[k].append(features[labels == k + 1])
    return parts


def train_svms(load, image_ids, classes, transform, config: SVMConfig, train_classes=None):
    """(W (D, K), b (K,), history): the SVMs trained with hard-negative mining.

    `transform` turns an image's cached pooled features into the SVMs'
    input (scaled).  `history` lists, per retraining, the class, image
    position, cache size and R-CNN's objective terms.  `train_classes`
    (indices into `classes`, default all) trains only those; the others'
    columns stay 0.  Classes are independent, so each column is what a
    run over all classes gives (parallel runs split them over ranks)."""
    num_classes = len(classes)
    chosen = range(num_classes) if train_classes is None else sorted(train_classes)
    image_ids = list(image_ids)
    if not image_ids:
        raise ValueError("no training images")
    positive_parts = _positives(load, image_ids, transform, num_classes, config.use_difficult)
    dim = next((p.shape[1] for parts in positive_parts for p in parts), None)
    if dim is None:
        raise ValueError("the training images hold no ground-truth boxes")
    positives = [np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
                 for parts in positive_parts]
    for k, name in enumerate(classes):
        log.info("class %s: %d positives", name, len(positives[k]))
    W = np.zeros((dim, num_classes), np.float32)
    b = np.zeros(num_classes, np.float32)
    caches = [NegativeCache(dim) for _ in range(num_classes)]
    history = []
    first_time = True
    for epoch in range(config.hard_epochs):
        for position, image_id in enumerate(image_ids):
            entry = load(image_id)
            features = transform(entry["feat"])
            overlaps = np.asarray(entry["overlaps"])
            scores = features @ W + b
            dedup = None
            if config.negative_overlap_dedup is not None:
                dedup = NegativeDedup(entry["boxes"], config.negative_overlap_dedup)
            for k in chosen:
                rows = negative_rows(overlaps[:, k + 1], scores[:, k], config.negative_iou,
                                     None if first_time else config.hard_threshold, dedup)
                keys = window_keys(position, rows)
                fresh = caches[k].new(keys)
                caches[k].add(features[rows[fresh]], keys[fresh])
            last = epoch == config.hard_epochs - 1 and position == len(image_ids) - 1
            for k in chosen:
                cache = caches[k]
                due = first_time or cache.num_added > config.retrain_limit or last
                if not (due and len(cache)):
                    continue
                if not len(positives[k]):
                    # Nothing to separate: a constant score below every margin.
                    W[:, k], b[k] = 0, -1
                    cache.num_added = 0
                    continue
                W[:, k], b[k] = fit_svm(positives[k], cache.features, config)
                cache.num_added = 0
                objective = svm_objective(W[:, k], b[k], positives[k], cache.features, config)
                evicted = cache.evict(cache.features @ W[:, k] + b[k], config.evict_threshold)
                history.append({"class": classes[k], "epoch": epoch, "image": position,
                                "negatives": len(cache) + evicted, "evicted": evicted,
                                **objective})
                log.info("class %s, image %d/%d: retrained on %d positives, %d negatives "
                         "(%d easy evicted); loss %.4g (pos %.4g, neg %.4g, reg %.4g)",
                         classes[k], position + 1, len(image_ids), len(positives[k]),
                         len(cache) + evicted, evicted, objective["total"], objective["pos"],
                         objective["neg"], objective["reg"])
            first_time = False
    for k in chosen:
        name = classes[k]
        if not len(positives[k]):
            log.warning("class %s has no positive training window: its SVM scores -1 everywhere",
                        name)
    return W, b, history


def train_model(load, image_ids, classes, transform, features: FeatureConfig, svm: SVMConfig,
                fc_net=None, fc_weights=None, seed=0, train_classes=None):
    """The whole step: measure the feature scale, train the SVMs, return an
    SVMModel (and the training history); `train_classes` as train_svms."""
    scale, norm = norm_scale(load, image_ids, transform, features.target_norm,
                             features.norm_images, features.norm_windows, seed)
    log.info("%s features: mean norm %.4g, scaled by %.4g to %g", transform.layer, norm, scale,
             features.target_norm)
    scaled = transform.with_scale(scale)
    W, b, history = train_svms(load, image_ids, classes, scaled, svm, train_classes)
    model = SVMModel(list(classes), W, b, transform.layer, scale,
                     os.path.abspath(fc_net) if fc_net else None,
                     os.path.abspath(fc_weights) if fc_weights else None)
    return model, history
