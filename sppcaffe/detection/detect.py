"""Detection with trained SVMs: score every window of an image, regress the
boxes, suppress non-maxima, evaluate with the VOC devkit's AP, and draw the
detections.

Per image and class (as R-CNN's rcnn_test.m and SPP-net):
1. every proposal (ground-truth rows of the cache are skipped) is scored
   by the class's SVM;
2. windows scoring at most `score_threshold` are dropped;
3. with a box regressor, each window moves to its regressed box (clipped
   to the image);
4. greedy NMS at IoU `nms` (0.3) in descending score order: a box is
   dropped when its IoU with a kept one exceeds the threshold.  Tie rule:
   equal scores are visited in increasing window order, so of two equal
   boxes with equal scores the lower index is kept
   (sppcaffe.detection.boxes.nms);
5. the best `max_per_image` remain.

AP is computed both ways (sppcaffe.detection.evaluation): VOC2007's
11-point interpolation and VOC2010+'s area under the curve, difficult
objects ignored as the devkit does.  A random-scoring baseline runs the
same steps with uniform random scores.

An entry is a cache record (sppcaffe.detection.cache) or the same with an
extractor's WindowFeatures as its "feat": then each distinct window is
scored once, and in GPU mode the fc layers read the features on the
device (only the fc outputs, and pool5 rows for box regression, come to
the host).
"""
import colorsys
import functools
import logging
import os
import time
from typing import Dict, List, NamedTuple

import numpy as np

from ..io.atomic import atomic_write
from .boxes import nms, score_order
from .config import DetectConfig
from .evaluation import AREA, VOC07, Detections, Evaluation, evaluate
from .features import WindowFeatures

log = logging.getLogger("sppcaffe")

METRIC_NAMES = {VOC07: "VOC07 11-point", AREA: "VOC2010+ area"}


# ---- scoring ---------------------------------------------------------------------

def proposal_rows(entry):
    """Rows of the cache entry that are proposals (ground truth skipped)."""
    return np.flatnonzero(~np.asarray(entry["gt"], bool))


def entry_features(entry, rows):
    """The pooled features of the given rows of an entry, on the host."""
    feat = entry["feat"]
    if isinstance(feat, WindowFeatures):
        return feat.rows(rows)
    return np.asarray(feat)[rows]


class SVMScorer:
    """scores (R, K) of the given rows of a cache entry under SVMs."""

    def __init__(self, model, transform):
        self.model, self.transform = model, transform

    def __call__(self, entry, rows):
        feat = entry["feat"]
        if isinstance(feat, WindowFeatures):
            # Every distinct window once, from where its features are (the
            # device in GPU mode); the few ground-truth rows come along.
            return self.model.scores(self.transform(feat.stored))[feat.inverse[rows]]
        return self.model.scores(self.transform(np.asarray(feat)[rows]))


class RandomScorer:
    """Uniform random scores: the baseline any detector must beat."""

    def __init__(self, num_classes, seed=0):
        self.num_classes = num_classes
        self.rng = np.random.default_rng(seed)

    def __call__(self, entry, rows):
        return self.rng.random((len(rows), self.num_classes))


class ImageDetections(NamedTuple):
    """Per class (index 0 is class 1): boxes (n, 4) and scores (n,), best first."""
    boxes: List[np.ndarray]
    scores: List[np.ndarray]


def class_detections(boxes, scores, config: DetectConfig, regress=None):
    """(boxes, scores) of one class in one image after the threshold,
    regression (`regress(indices) -> boxes`, indices into `boxes`), NMS and
    the per-image cap; best first."""
    keep = np.flatnonzero(scores > config.score_threshold)
    candidates = np.asarray(boxes, np.float64)[keep]
    if regress is not None and len(keep):
        candidates = regress(keep)
    kept = nms(candidates, scores[keep], config.nms)[:config.max_per_image]
    return candidates[kept], np.asarray(scores, np.float64)[keep[kept]]


def _regressed(regressor, boxes, pooled, class_index, image_hw, keep):
    return regressor.predict(boxes[keep], pooled[keep], class_index, image_hw)


def detect_image(entry, scorer, config: DetectConfig, regressor=None, image_hw=None):
    """ImageDetections of one cached image; `image_hw` (height, width)
    clips regressed boxes (VOC's 1-based pixels)."""
    rows = proposal_rows(entry)
    boxes = np.asarray(entry["boxes"], np.float64)[rows]
    scores = np.asarray(scorer(entry, rows), np.float64)
    num_classes = scores.shape[1]
    pooled = entry_features(entry, rows) if regressor is not None else None
    out_boxes, out_scores = [], []
    for k in range(num_classes):
        regress = None if regressor is None else functools.partial(
            _regressed, regressor, boxes, pooled, k + 1, image_hw)
        b, s = class_detections(boxes, scores[:, k], config, regress)
        out_boxes.append(b)
        out_scores.append(s)
    return ImageDetections(out_boxes, out_scores)


def detect_all(load, image_ids, classes, scorer, config: DetectConfig, regressor=None,
               image_sizes=None, progress=None):
    """({class name: Detections}, {image_id: ImageDetections}, seconds per
    image) over the images; `image_sizes` maps image ids to (height, width)
    for clipping regressed boxes."""
    per_image = {}
    started = time.perf_counter()
    for image_id in image_ids:
        entry = load(image_id)
        hw = image_sizes.get(image_id) if image_sizes else None
        per_image[image_id] = detect_image(entry, scorer, config, regressor, hw)
        if progress is not None:
            progress()
    seconds = (time.perf_counter() - started) / max(len(image_ids), 1)
    return detections_by_class(per_image, classes), per_image, seconds


def detections_by_class(per_image, classes):
    """{class name: Detections} of {image_id: ImageDetections}, images in
    the dict's order."""
    by_class = {}
    for k, name in enumerate(classes):
        parts = [Detections([image_id] * len(d.scores[k]), d.scores[k], d.boxes[k])
                 for image_id, d in per_image.items()]
        by_class[name] = Detections.concatenate(parts)
    return by_class


def image_sizes(annotations):
    """{image_id: (height, width)} from VOC annotations."""
    return {image_id: (a.height, a.width) for image_id, a in annotations.items()}


# ---- evaluation -------------------------------------------------------------------

def evaluate_both(detections_by_class, annotations, classes):
    """{metric: Evaluation} for VOC07 11-point and area AP."""
    return {metric: evaluate(detections_by_class, annotations, classes, metric)
            for metric in (VOC07, AREA)}


def percent(value, width=0):
    """A fraction as a percentage with one decimal; "-" for NaN (a class
    without objects to find)."""
    text = "-" if np.isnan(value) else f"{100 * value:.1f}"
    return f"{text:>{width}}"


def ap_table(evaluations: Dict[str, Dict[str, Evaluation]]):
    """Per-class AP (%) of several runs side by side.

    evaluations: {run name: {metric: Evaluation}}; columns are run x metric,
    then the object count; the last row is the mAP ("-": no objects)."""
    runs = list(evaluations)
    first = evaluations[runs[0]][VOC07]
    names = [c.name for c in first.classes]
    width = max([len(n) for n in names] + [5])
    header_runs = [f"{run} {'11pt' if metric == VOC07 else 'area'}" for run in runs
                   for metric in (VOC07, AREA)]
    col = max([len(h) for h in header_runs] + [6])
    lines = [f"{'class':<{width}}  " + "  ".join(f"{h:>{col}}" for h in header_runs)
             + f"  {'objects':>7}"]
    for i, name in enumerate(names):
        cells = [percent(evaluations[run][metric].classes[i].ap, col) for run in runs
                 for metric in (VOC07, AREA)]
        lines.append(f"{name:<{width}}  " + "  ".join(cells)
                     + f"  {first.classes[i].num_positives:7d}")
    cells = [percent(evaluations[run][metric].mean_ap, col) for run in runs
             for metric in (VOC07, AREA)]
    lines.append(f"{'mAP':<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


# ---- pictures (the paper's Figure 6) ---------------------------------------------------

def class_colours(count):
    """Distinct BGR colours, one per class."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(k / max(count, 1), 0.9, 1.0)[::-1])
            for k in range(count)]


def precision_thresholds(detections_by_class, evaluation, min_precision):
    """Per class of `evaluation`, the score of the deepest rank whose
    precision is still at least `min_precision` (inf where none is; -inf
    for every class when min_precision is 0): where a picture stops drawing."""
    thresholds = np.full(len(evaluation.classes), -np.inf if min_precision <= 0 else np.inf)
    if min_precision <= 0:
        return thresholds
    for k, result in enumerate(evaluation.classes):
        scores = np.asarray(detections_by_class[result.name].scores, np.float64)
        # ClassResult.precision follows the same stable descending order.
        reached = np.flatnonzero(np.nan_to_num(result.precision, nan=0.0) >= min_precision)
        if reached.size:
            thresholds[k] = scores[score_order(scores)][reached[-1]]
    return thresholds


def top_detections(detections: ImageDetections, thresholds, limit):
    """[(class index 0.., box, score)] scoring at least the class's threshold
    (`thresholds`: one per class, or one for all), best first, at most `limit`."""
    thresholds = np.broadcast_to(np.asarray(thresholds, np.float64), (len(detections.scores),))
    found = [(k, box, score) for k, (boxes, scores) in
             enumerate(zip(detections.boxes, detections.scores))
             for box, score in zip(boxes, scores) if score >= thresholds[k]]
    order = score_order([score for _, _, score in found])
    return [found[i] for i in order[:limit]]


def draw_detections(image_bgr, found, classes, first=1):
    """A copy of the image with each (class, box, score) of `found` drawn:
    a coloured box and "class score" above it.  Boxes are in pixels whose
    first is `first` (VOC: 1)."""
    import cv2

    canvas = np.ascontiguousarray(image_bgr).copy()
    colours = class_colours(len(classes))
    thickness = max(1, round(min(canvas.shape[:2]) / 200))
    font_scale = max(0.4, min(canvas.shape[:2]) / 600)
    for k, box, score in found:
        x1, y1, x2, y2 = (int(round(v - first)) for v in box)
        colour = colours[k]
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
        text = f"{classes[k]} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        top = y1 - th - base - 2 if y1 - th - base - 2 >= 0 else y1
        cv2.rectangle(canvas, (x1, top), (x1 + tw + 2, top + th + base + 2), colour, -1)
        cv2.putText(canvas, text, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def write_png(path, image_bgr):
    import cv2

    ok, data = cv2.imencode(".png", image_bgr)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path}")
    with atomic_write(path) as f:
        f.write(data.tobytes())
    return path


def write_pictures(out_dir, per_image, read_image, classes, thresholds, limit=10,
                   image_ids=None):
    """One PNG per image (`read_image(image_id)` -> BGR array) with its
    detections at or above the per-class `thresholds` (see top_detections);
    the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for image_id in (image_ids if image_ids is not None else per_image):
        found = top_detections(per_image[image_id], thresholds, limit)
        picture = draw_detections(read_image(image_id), found, classes)
        paths.append(write_png(os.path.join(out_dir, f"{image_id}.png"), picture))
    return paths


__all__ = ["ImageDetections", "RandomScorer", "SVMScorer", "ap_table", "class_detections",
           "detect_all", "detect_image", "draw_detections", "entry_features", "evaluate_both",
           "image_sizes", "percent", "precision_thresholds", "proposal_rows", "top_detections",
           "write_pictures"]
