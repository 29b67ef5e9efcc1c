"""Fine-tuning the fully-connected layers on cached pooled features
(SPP-net Sec. 4.1: only fc6-fc8 are fine-tuned, since the conv layers run
once per image and their pooled features are cached).

Windows: a window is foreground when its IoU with some object is at least
`fg_iou` (0.5), labelled with that object's class (the class of highest
IoU; the first class on equal IoU); background, label 0, when its highest
IoU lies in [`bg_iou_low`, `bg_iou_high`) = [0.1, 0.5); other windows are
not used.  Ground-truth boxes are foreground windows.

The training set is drawn once: every foreground and background window, up
to `max_fg_windows` / `max_bg_windows` (uniform random subsets beyond), their
features read from the cache image by image and held in memory.  Each
mini-batch holds int(fg_fraction * batch_size) foreground windows (25 %)
and background windows for the rest, each list walked in a fresh random
order once exhausted, so every window is used once per pass.

The net (models/detection/*_fc_finetune.prototxt) takes the features in an
Input blob "spp" (N, D) and the labels in "label" (N,), and ends in a
(K+1)-way SoftmaxWithLoss; its solver (solvers/detection_finetune.prototxt)
schedules the learning rate (1e-4, then 1e-5: lr_policy step).  fc6 and
fc7 start from given weights (copied by layer name, as Caffe's
--weights), the classifier from its Gaussian filler.
"""
import logging
import os

import numpy as np

from .. import io
from ..solvers import get_solver
from .config import FinetuneConfig

log = logging.getLogger("sppcaffe")

FEATURE_BLOB, LABEL_BLOB = "spp", "label"


def window_labels(overlaps, fg_iou=0.5, bg_iou_low=0.1, bg_iou_high=0.5):
    """Per window: its class (1..K) if foreground, 0 if background, -1 if
    neither, from the cache's overlaps (R, K+1) (column 0 unused)."""
    overlaps = np.asarray(overlaps, np.float64)
    if overlaps.ndim != 2 or overlaps.shape[1] < 2:
        raise ValueError(f"overlaps must be (R, K+1) with K >= 1, got shape {overlaps.shape}")
    per_class = overlaps[:, 1:]
    best = per_class.max(axis=1)
    labels = np.full(len(overlaps), -1, np.int64)
    labels[(best >= bg_iou_low) & (best < bg_iou_high)] = 0
    fg = best >= fg_iou
    labels[fg] = np.argmax(per_class[fg], axis=1) + 1
    return labels


def select_windows(load, image_ids, config: FinetuneConfig, rng):
    """(features (N, D) float32, labels (N,) int64) of the training windows
    (see the module docstring), foreground first."""
    index = []                                # (image position, row, label)
    for position, image_id in enumerate(image_ids):
        labels = window_labels(load(image_id)["overlaps"], config.fg_iou, config.bg_iou_low,
                               config.bg_iou_high)
        rows = np.flatnonzero(labels >= 0)
        index.append(np.stack([np.full(len(rows), position), rows, labels[rows]], axis=1))
    index = np.concatenate(index) if index else np.zeros((0, 3), np.int64)
    fg, bg = index[index[:, 2] > 0], index[index[:, 2] == 0]
    if len(fg) > config.max_fg_windows:
        fg = fg[np.sort(rng.choice(len(fg), config.max_fg_windows, replace=False))]
    if len(bg) > config.max_bg_windows:
        bg = bg[np.sort(rng.choice(len(bg), config.max_bg_windows, replace=False))]
    if not len(fg) or not len(bg):
        raise ValueError(f"fine-tuning needs foreground and background windows; the cache has "
                         f"{len(fg)} with IoU >= {config.fg_iou} and {len(bg)} with IoU in "
                         f"[{config.bg_iou_low}, {config.bg_iou_high})")
    chosen = np.concatenate([fg, bg])
    order = np.argsort(chosen[:, 0], kind="stable")      # image by image
    starts = np.flatnonzero(np.diff(chosen[order, 0])) + 1
    features = None
    for at in np.split(order, starts):
        feat = np.asarray(load(image_ids[chosen[at[0], 0]])["feat"])
        if features is None:
            features = np.empty((len(chosen), feat.shape[1]), np.float32)
        features[at] = feat[chosen[at, 1]]
    log.info("fine-tuning windows: %d foreground, %d background", len(fg), len(bg))
    return features, chosen[:, 2].copy()


class BatchSampler:
    """Mini-batches of (row indices, labels) with a fixed foreground share."""

    def __init__(self, labels, batch_size=128, fg_fraction=0.25, rng=None):
        self.labels = np.asarray(labels)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.batch_size = int(batch_size)
        # Caffe's WindowDataLayer: static_cast<int>(fg_fraction * batch_size).
        self.num_fg = int(fg_fraction * batch_size)
        self._pools = {True: np.flatnonzero(self.labels > 0),
                       False: np.flatnonzero(self.labels == 0)}
        for is_fg, pool in self._pools.items():
            count = self.num_fg if is_fg else self.batch_size - self.num_fg
            if count and not len(pool):
                raise ValueError(f"no {'foreground' if is_fg else 'background'} window to sample")
        self._queues = {True: np.zeros(0, np.intp), False: np.zeros(0, np.intp)}

    def _take(self, is_fg, count):
        taken = []
        while count > 0:
            if not len(self._queues[is_fg]):
                self._queues[is_fg] = self.rng.permutation(self._pools[is_fg])
            part, self._queues[is_fg] = self._queues[is_fg][:count], self._queues[is_fg][count:]
            taken.append(part)
            count -= len(part)
        return np.concatenate(taken) if taken else np.zeros(0, np.intp)

    def next(self):
        rows = np.concatenate([self._take(True, self.num_fg),
                               self._take(False, self.batch_size - self.num_fg)])
        return rows, self.labels[rows]


def _classifier_outputs(net):
    """The class count of the net's SoftmaxWithLoss input (after a reshape)."""
    for layer, bottoms in zip(net.layers, net.bottom_vecs):
        if layer.param.type == "SoftmaxWithLoss":
            return bottoms[0].shape[1]
    raise ValueError(f"the fine-tuning net {net.source} has no SoftmaxWithLoss layer")


def prepare_net(net, batch_size, feature_dim, num_classes):
    """Shape the Input blobs for mini-batches of `batch_size`, after checking
    that `net` takes `feature_dim` features in "spp" and labels in "label"
    and classifies into num_classes + 1 (background first)."""
    for name in (FEATURE_BLOB, LABEL_BLOB):
        if name not in net.inputs:
            raise ValueError(f"the fine-tuning net {net.source} needs an Input blob '{name}' "
                             f"(its inputs: {', '.join(net.inputs) or 'none'})")
    shape = net.blobs[FEATURE_BLOB].shape
    if int(np.prod(shape[1:])) != feature_dim:
        raise ValueError(f"the fine-tuning net {net.source} takes {int(np.prod(shape[1:]))} "
                         f"features per window in '{FEATURE_BLOB}' {shape}, the cache has "
                         f"{feature_dim}")
    net.blobs[FEATURE_BLOB].reshape((batch_size, feature_dim))
    net.blobs[LABEL_BLOB].reshape((batch_size,))
    net.reshape()
    outputs = _classifier_outputs(net)
    if outputs != num_classes + 1:
        raise ValueError(f"the fine-tuning net {net.source} classifies into {outputs} classes; "
                         f"the cache has {num_classes} object classes + background = "
                         f"{num_classes + 1}")


def solver_net_path(solver_path):
    """The train net file a solver prototxt names, resolved as the solver
    does (working directory, else the solver's folder)."""
    param = io.read_solver(solver_path)
    path = param.net or param.train_net
    if not path:
        raise ValueError(f"{solver_path}: the fine-tuning solver must name its net in 'net'")
    if os.path.isabs(path) or os.path.exists(path):
        return path
    beside = os.path.join(os.path.dirname(os.path.abspath(solver_path)), path)
    return beside if os.path.exists(beside) else path


def finetune(load, image_ids, num_classes, config: FinetuneConfig, weights=None,
             solver_path=None, listener=None):
    """Fine-tune the fc layers; returns the solver (its .net holds the
    weights).  `weights`: a .caffemodel to start fc6/fc7 from."""
    image_ids = list(image_ids)
    if not image_ids:
        raise ValueError("no training images to fine-tune on")
    solver = get_solver(solver_path or config.solver)
    p = solver.param
    for name in ("max_iter", "stepsize", "base_lr"):
        value = getattr(config, name)
        if value is not None:
            setattr(p, name, value)
    if p.iter_size != 1:
        raise ValueError(f"{solver.source}: iter_size must be 1 for fine-tuning on cached "
                         f"features (one mini-batch is fed per iteration), got {p.iter_size}")
    net = solver.net
    # Check the net against the cache before reading the windows.
    feature_dim = np.asarray(load(image_ids[0])["feat"]).shape[1]
    prepare_net(net, config.batch_size, feature_dim, num_classes)
    rng = np.random.default_rng(config.seed)
    features, labels = select_windows(load, image_ids, config, rng)
    if weights is not None:
        log.info("fine-tuning from %s", weights)
        net.copy_from(weights)
    if listener is not None:
        solver.add_listener(listener)
    sampler = BatchSampler(labels, config.batch_size, config.fg_fraction, rng)
    log.info("fine-tuning %s: %d iterations of %d windows (%d foreground), lr %g (%s)",
             net.name, p.max_iter - solver.iter, config.batch_size, sampler.num_fg, p.base_lr,
             p.lr_policy)

    def feed():
        rows, batch_labels = sampler.next()
        net.blobs[FEATURE_BLOB].data[...] = features[rows].reshape(net.blobs[FEATURE_BLOB].shape)
        net.blobs[LABEL_BLOB].data[...] = batch_labels

    # Fed before each iteration's forward pass (pycaffe's on_start callback),
    # so one step() runs them all and the loss is smoothed as Caffe displays it.
    solver.add_callback(feed, lambda: None)
    solver.step(p.max_iter - solver.iter)
    return solver
