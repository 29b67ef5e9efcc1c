"""Detection average precision as the Pascal VOC devkit computes it
(VOCevaldet.m, VOCap.m).

For one class: detections are sorted by descending score (a stable sort:
equal scores keep their given order, as MATLAB's sort does).  Each is
compared with the ground truth of its image and assigned to the object of
highest IoU (the first such object on equal IoU); then
- IoU >= 0.5 with a difficult object: ignored (neither true nor false);
- IoU >= 0.5 with an object not yet detected: true positive, the object is
  now detected;
- IoU >= 0.5 with an object already detected: false positive;
- otherwise (or no object of the class in the image): false positive.
Recall is TP / (number of non-difficult objects), precision TP / (TP + FP)
after each detection.

AP:
- ``"voc07"``: 11-point interpolation, the mean over t = 0, 0.1, ..., 1 of
  the best precision at recall >= t.  The thresholds are those of MATLAB's
  ``0:0.1:1`` (t = 3 * 0.1 = 0.30000000000000004, the rest the nearest
  doubles), so a recall of exactly 0.3 does not reach t = 0.3, as in the
  devkit (Python ports using np.arange also miss 0.6 and 0.7).
- ``"area"`` (VOC2010 onward): the area under the precision/recall curve
  after making precision monotone (each precision replaced by the best at
  that recall or beyond).
Precision is undefined (NaN) after ignored detections that come before any
counted one; the precision maxima skip NaN, as MATLAB's max does.  Two
degenerate cases differ from the devkit: a class whose detections are all
ignored gets AP 0 (the devkit: NaN), and a class without non-difficult
objects gets AP NaN and is left out of the mAP (the devkit divides by zero).
"""
from typing import Dict, List, NamedTuple

import numpy as np

from .boxes import as_boxes, pairwise_iou, score_order

VOC07, AREA = "voc07", "area"
METRICS = (VOC07, AREA)

# MATLAB's 0:0.1:1 (the colon operator adds k*0.1 to 0 for the first half and
# subtracts k*0.1 from 1 for the second).
_ELEVEN_POINTS = np.array([k * 0.1 for k in range(6)] + [1 - k * 0.1 for k in range(4, -1, -1)])


class Detections(NamedTuple):
    """The detections of one class: image ids (R,), scores (R,), boxes (R, 4)
    in the annotations' (1-based, inclusive) coordinates."""
    image_ids: List[str]
    scores: np.ndarray
    boxes: np.ndarray

    @classmethod
    def empty(cls):
        return cls([], np.zeros(0), np.zeros((0, 4)))

    @classmethod
    def concatenate(cls, parts):
        parts = list(parts)
        if not parts:
            return cls.empty()
        return cls([i for p in parts for i in p.image_ids],
                   np.concatenate([np.asarray(p.scores, np.float64).reshape(-1) for p in parts]),
                   np.concatenate([as_boxes(p.boxes) for p in parts]))


class ClassResult(NamedTuple):
    name: str
    ap: float
    recall: np.ndarray         # after each detection, in score order
    precision: np.ndarray
    num_positives: int         # non-difficult objects of the class
    num_detections: int


def _ground_truth(annotations, name):
    """{image_id: (boxes (G, 4), difficult (G,))} of class `name`."""
    table = {}
    for image_id, ann in annotations.items():
        objects = [o for o in ann.objects if o.name == name]
        table[image_id] = (np.array([o.bbox for o in objects], np.float64).reshape(-1, 4),
                           np.array([bool(o.difficult) for o in objects], bool))
    return table


def match_detections(detections, ground_truth, iou_threshold=0.5):
    """Label detections true/false positive as VOCevaldet does.

    ground_truth: {image_id: (boxes (G, 4), difficult (G,))}.  Returns
    (order, tp, fp, num_positives): `order` sorts the detections by
    descending score, tp/fp are 0/1 float arrays in that order (both 0 for
    an ignored detection)."""
    scores = np.asarray(detections.scores, np.float64).reshape(-1)
    boxes = as_boxes(detections.boxes, "detection boxes")
    ids = list(detections.image_ids)
    if not len(ids) == len(scores) == len(boxes):
        raise ValueError(f"{len(ids)} image ids, {len(scores)} scores and {len(boxes)} boxes "
                         "must be as many")
    num_positives = int(sum((~np.asarray(difficult, bool)).sum()
                            for _, difficult in ground_truth.values()))
    order = score_order(scores)
    count = len(order)
    boxes = boxes[order]
    positions = {}                       # image id -> its detections' positions
    for position, k in enumerate(order):
        positions.setdefault(ids[k], []).append(position)
    # Each detection's object of highest IoU, image by image.
    best = np.zeros(count, np.int64)
    best_iou = np.zeros(count)
    on_difficult = np.zeros(count, bool)
    image_number = np.zeros(count, np.int64)
    for number, (image_id, rows) in enumerate(positions.items()):
        if image_id not in ground_truth:
            raise ValueError(f"detection on image '{image_id}', which is not among the "
                             f"{len(ground_truth)} ground-truth images")
        rows = np.asarray(rows)
        image_number[rows] = number
        gt_boxes, gt_difficult = ground_truth[image_id]
        if len(gt_boxes):
            iou = pairwise_iou(boxes[rows], gt_boxes)
            nearest = np.argmax(iou, axis=1)             # the first of equal IoUs
            best[rows] = nearest
            best_iou[rows] = iou[np.arange(len(rows)), nearest]
            on_difficult[rows] = np.asarray(gt_difficult, bool)[nearest]
    matched = best_iou >= iou_threshold
    counted = matched & ~on_difficult
    # An object's first (best scored) counted detection is its true positive.
    tp = np.zeros(count)
    rows = np.flatnonzero(counted)
    if rows.size:
        _, first = np.unique(np.stack([image_number[rows], best[rows]]), axis=1,
                             return_index=True)
        tp[rows[first]] = 1
    fp = (~matched | counted).astype(np.float64) - tp
    return order, tp, fp, num_positives


def precision_recall(tp, fp, num_positives):
    """Cumulative recall and precision after each detection (NaN precision
    before the first counted one)."""
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp / num_positives if num_positives else np.full(len(tp), np.nan)
        precision = tp / (tp + fp)
    return recall, precision


def ap_voc07(recall, precision):
    """11-point interpolated AP (VOC2007 devkit)."""
    recall, precision = np.asarray(recall, float), np.asarray(precision, float)
    total = 0.0
    for t in _ELEVEN_POINTS:
        reached = precision[recall >= t]
        reached = reached[~np.isnan(reached)]
        total += (reached.max() if reached.size else 0.0) / 11
    return total


def ap_area(recall, precision):
    """Area under the monotone precision envelope (VOC2010+ devkit, VOCap.m)."""
    mrec = np.concatenate([[0.0], np.asarray(recall, float), [1.0]])
    mpre = np.concatenate([[0.0], np.asarray(precision, float), [0.0]])
    # NaN-skipping running maximum from the end (MATLAB's max ignores NaN).
    mpre = np.fmax.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[step] - mrec[step - 1]) * mpre[step]))


_AP = {VOC07: ap_voc07, AREA: ap_area}


def evaluate_class(name, detections, annotations, metric=VOC07, iou_threshold=0.5):
    """ClassResult of class `name`'s detections against {image_id: Annotation}."""
    if metric not in _AP:
        raise ValueError(f"unknown AP metric {metric!r} (known: {', '.join(METRICS)})")
    truth = _ground_truth(annotations, name)
    order, tp, fp, num_positives = match_detections(detections, truth, iou_threshold)
    recall, precision = precision_recall(tp, fp, num_positives)
    ap = _AP[metric](recall, precision) if num_positives else float("nan")
    return ClassResult(name, ap, recall, precision, num_positives, len(order))


class Evaluation(NamedTuple):
    classes: List[ClassResult]
    metric: str

    @property
    def mean_ap(self):
        """Mean AP over the classes that have positives."""
        aps = [c.ap for c in self.classes if c.num_positives]
        return float(np.mean(aps)) if aps else float("nan")

    def ap_by_class(self) -> Dict[str, float]:
        return {c.name: c.ap for c in self.classes}

    def table(self):
        """Per-class AP, positives and detections, and the mAP, as text."""
        width = max([len(c.name) for c in self.classes] + [5])
        lines = [f"{'class':<{width}}  {'AP':>6}  {'objects':>7}  {'detections':>10}"]
        for c in self.classes:
            lines.append(f"{c.name:<{width}}  {100 * c.ap:6.2f}  {c.num_positives:7d}  "
                         f"{c.num_detections:10d}")
        lines.append(f"{'mAP':<{width}}  {100 * self.mean_ap:6.2f}  ({self.metric})")
        return "\n".join(lines)


def evaluate(detections_by_class, annotations, classes, metric=VOC07, iou_threshold=0.5):
    """AP of every class and the mAP.

    detections_by_class: {class name: Detections} (a missing class has
    none); annotations: {image_id: Annotation} of the test images
    (sppcaffe.detection.voc.VOCDataset.annotations())."""
    results = [evaluate_class(name, detections_by_class.get(name, Detections.empty()),
                              annotations, metric, iou_threshold) for name in classes]
    return Evaluation(results, metric)
