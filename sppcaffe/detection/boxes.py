"""Boxes as the VOC devkit and R-CNN see them.

A set of boxes is a float array of shape (N, 4), rows ``x1 y1 x2 y2`` in
PIXEL-INCLUSIVE coordinates: the box covers pixels x1 .. x2, so its width
is ``x2 - x1 + 1`` (a one-pixel box has x1 == x2).  Every area, overlap and
regression target here uses that +1, as VOCevaldet.m, R-CNN and SPP-net's
released code do.  Whether coordinates are 1-based (VOC XML) or 0-based
does not matter to anything in this module.
"""
import numpy as np


def as_boxes(boxes, what="boxes"):
    """`boxes` as a float64 (N, 4) array; an error naming `what` otherwise."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{what} must have shape (N, 4) [x1 y1 x2 y2], got {array.shape}")
    return array


def widths_heights(boxes):
    boxes = as_boxes(boxes)
    return boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1


def box_areas(boxes):
    """Area in pixels, (x2 - x1 + 1) * (y2 - y1 + 1)."""
    w, h = widths_heights(boxes)
    return w * h


def pairwise_iou(a, b):
    """(N, M) intersection over union of every box of `a` with every box of
    `b`; 0 where they do not overlap."""
    a, b = as_boxes(a, "a"), as_boxes(b, "b")
    iw = (np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1)
    ih = (np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1)
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    # The devkit's union: area(a) + area(b) - intersection, in that order.
    union = box_areas(a)[:, None] + box_areas(b)[None, :] - inter
    return inter / union


def score_order(scores):
    """Indices by descending score; equal scores keep their original order
    (a stable sort), so the lower index comes first."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return np.argsort(-scores, kind="stable")


def nms(boxes, scores, threshold=0.3):
    """Greedy non-maximum suppression; returns the kept indices, best first.

    Repeatedly keep the best remaining box and drop every remaining box whose
    IoU with it is greater than `threshold` (R-CNN/SPP-net's nms.m keeps
    IoU <= threshold; 0.3 is their detection default).

    Tie rule: boxes with equal scores are visited in increasing index order
    (a stable sort by descending score), so of two identical boxes with equal
    scores the lower index is kept.  (nms.m's MATLAB sort visits ties from the
    highest index instead; the kept set differs only between exact ties.)
    """
    boxes = as_boxes(boxes)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    order = score_order(scores)
    keep = []
    while order.size:
        best = order[0]
        keep.append(best)
        rest = order[1:]
        overlap = pairwise_iou(boxes[best:best + 1], boxes[rest])[0]
        order = rest[overlap <= threshold]
    return np.array(keep, dtype=np.intp)


def greedy_in_order(overlapping):
    """Mask of the boxes that greedy suppression in index order keeps, from
    `overlapping` (N, N) bool (i and j overlap too much; the diagonal is
    ignored): box i is kept unless it overlaps an earlier KEPT box.  This is
    `nms` with equal scores, vectorized over boxes: each round removes the
    undecided boxes that a box kept in the previous round overlaps, then
    keeps those left with no undecided earlier box overlapping them.  The
    rounds number the longest chain of overlaps (5 for 2,000 selective
    search boxes at IoU 0.7), not the boxes."""
    overlapping = np.asarray(overlapping, bool)
    n = len(overlapping)
    if overlapping.shape != (n, n):
        raise ValueError(f"overlapping must be a square matrix, got shape {overlapping.shape}")
    earlier = np.triu(overlapping, 1)        # earlier[j, i]: j < i and they overlap
    kept = np.zeros(n, bool)
    waiting = earlier.any(axis=0)
    new = np.flatnonzero(~waiting)           # no earlier box at all: kept
    undecided = np.flatnonzero(waiting)
    kept[new] = True
    while len(undecided):
        columns = earlier[:, undecided]
        suppressed = columns[new].any(axis=0)
        undecided, columns = undecided[~suppressed], columns[:, ~suppressed]
        waiting = columns[undecided].any(axis=0)
        new, undecided = undecided[~waiting], undecided[waiting]
        kept[new] = True
    return kept


# ---- regression targets (R-CNN, appendix C; SPP-net Sec. 4) ------------------
#
# A box is seen as a centre and a size, with the +1 widths:
#   w = x2 - x1 + 1,  cx = x1 + 0.5 * w   (likewise h, cy)
# and a target box (gx, gy, gw, gh) relative to a proposal (cx, cy, w, h) as
#   dx = (gx - cx) / w,  dy = (gy - cy) / h,  dw = log(gw / w),  dh = log(gh / h).
# apply_deltas inverts it exactly: x2 = cx + 0.5 * w - 1 (py-faster-rcnn omits
# the -1, so its round trip grows boxes by one pixel).

def _centres_sizes(boxes):
    w, h = widths_heights(boxes)
    return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h


def regression_targets(proposals, targets):
    """(N, 4) [dx, dy, dw, dh] taking each proposal to its target box."""
    proposals, targets = as_boxes(proposals, "proposals"), as_boxes(targets, "targets")
    if proposals.shape != targets.shape:
        raise ValueError(f"{len(proposals)} proposals but {len(targets)} target boxes")
    px, py, pw, ph = _centres_sizes(proposals)
    gx, gy, gw, gh = _centres_sizes(targets)
    return np.stack([(gx - px) / pw, (gy - py) / ph, np.log(gw / pw), np.log(gh / ph)], axis=1)


def apply_deltas(proposals, deltas):
    """The boxes that `deltas` (N, 4) predict for `proposals` (the inverse
    of regression_targets)."""
    proposals = as_boxes(proposals, "proposals")
    deltas = as_boxes(deltas, "deltas")
    if proposals.shape != deltas.shape:
        raise ValueError(f"{len(proposals)} proposals but {len(deltas)} deltas")
    px, py, pw, ph = _centres_sizes(proposals)
    cx = px + deltas[:, 0] * pw
    cy = py + deltas[:, 1] * ph
    w = pw * np.exp(deltas[:, 2])
    h = ph * np.exp(deltas[:, 3])
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w - 1, cy + 0.5 * h - 1], axis=1)


def clip_boxes(boxes, height, width, first=0):
    """Clip boxes to an image of `height` x `width` pixels whose first pixel
    is `first` (0, or 1 for VOC's 1-based coordinates)."""
    boxes = as_boxes(boxes).copy()
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], first, first + width - 1)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], first, first + height - 1)
    return boxes
