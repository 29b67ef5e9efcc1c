"""From image windows to windows of the last convolutional map (SPP-net
Sec. 4 and its appendix), and the choice of image scale per window.

Coordinates: image boxes are pixel-inclusive [x1 y1 x2 y2] (see
sppcaffe.detection.boxes).  ``scale_boxes`` takes VOC's 1-based boxes on the
original image to 0-based pixel coordinates of the resized image (the
network input); ``boxes_to_cells`` takes such 0-based input boxes to
0-based, inclusive map cells [x1' y1' x2' y2'].  S, the ``stride``, is the
product of all strides before the map (16 for ZF-5's conv5).

Two mappings, selected by name:

``"paper"`` (the default; the paper's appendix).  With the padding of every
layer floor(k/2), map cell x' has its receptive-field centre at image pixel
S * x'.  The left/top edge x goes to x' = floor(x / S) + 1 and the
right/bottom edge to x' = ceil(x / S) - 1: the window keeps the cells whose
centres lie strictly inside (x1, x2).  The resized image is the original
scaled by s / min(h, w) about pixel 0.

``"released"`` (ShaoqingRen/SPP_net, utils/spm_pool/spm_pool_caffe_mex.cpp
and spp_features_convX_to_poolX.m).  In 1-based coordinates b of the resized
image, left = floor((b - offset0 + offset) / S + 0.5) + 1 and right =
ceil((b - offset0 - offset) / S - 0.5) + 1 (1-based cells).  The offsets
come from the model's spp_config, which is downloaded with the model and not
in the repository; ZF-5's offset0 = 21, offset = 6.5 are the values that a
port of the code (fmassa/object-detection.torch) gives for it.  The resize
maps the first and last pixels onto each other:
b = (B - 1) * (s - 1) / (min(h, w) - 1) + 1.

Both: when rounding leaves right < left (a window smaller than a cell), both
become floor((left + right) / 2), the released code's collapse to the middle
cell; the window is then clamped to the map, so it always holds a cell.

Scale choice (SPP-net Sec. 4.2: the image is resized so that its SHORTER
side is s, for s in a set of scales):

``"paper"``: the s at which the window's area is closest to 224 x 224.
``"released"`` (spm_expected_scale.m): the s closest to the expected scale
round(13 * 16 * min(h, w) / sqrt(area)), 13 x 16 = 208 being ZF-5's conv5
size times its stride at 224 x 224.  Ties go to the first listed scale in
both (MATLAB's min).
"""
from typing import NamedTuple

import numpy as np

from .boxes import as_boxes, box_areas

PAPER, RELEASED = "paper", "released"
MAPPINGS = (PAPER, RELEASED)

ZF5_STRIDE = 16
PAPER_SCALES = (480, 576, 688, 864, 1200)       # Sec. 4.2
RELEASED_SCALES = (480, 576, 688, 874, 1200)    # experiments/Script_spp_voc.m
STANDARD_SIDE = 224                            # the pre-training image size


class ReleasedGeometry(NamedTuple):
    """The released code's per-model constants (ZF-5 values)."""
    offset0: float = 21.0
    offset: float = 6.5
    conv_size: int = 13     # sz_conv_standard: conv5 cells at 224 x 224


ZF5_RELEASED = ReleasedGeometry()


def _check(name, known, what):
    if name not in known:
        raise ValueError(f"unknown {what} {name!r} (known: {', '.join(known)})")


def resize_factor(image_hw, scale):
    """The factor resizing an image of `image_hw` so its shorter side is `scale`."""
    return np.asarray(scale, dtype=np.float64) / min(image_hw)


def resized_size(image_hw, scale):
    """(height, width) of the image resized so its shorter side is `scale`
    (the longer side rounded to the nearest pixel)."""
    h, w = image_hw
    if h <= w:
        return int(scale), int(np.floor(w * scale / h + 0.5))
    return int(np.floor(h * scale / w + 0.5)), int(scale)


def scale_boxes(boxes, image_hw, scales, mapping=PAPER):
    """VOC (1-based) boxes of an `image_hw` image -> 0-based pixel boxes of the
    image resized so its shorter side is `scales` (one value, or one per box)."""
    _check(mapping, MAPPINGS, "mapping")
    boxes = as_boxes(boxes)
    s = np.asarray(scales, dtype=np.float64).reshape(-1, 1)
    shorter = min(image_hw)
    if mapping == PAPER:
        return (boxes - 1) * (s / shorter)
    return (boxes - 1) * ((s - 1) / (shorter - 1))


def _map_sizes(map_hw, count):
    sizes = np.asarray(map_hw, dtype=np.int64)
    if sizes.shape == (2,):
        sizes = np.broadcast_to(sizes, (count, 2))
    if sizes.shape != (count, 2):
        raise ValueError(f"map_hw must be (height, width) or one pair per box, got shape "
                         f"{sizes.shape} for {count} boxes")
    if (sizes < 1).any():
        raise ValueError(f"feature maps need at least one cell, got sizes {sizes.min(axis=0)}")
    return sizes


def boxes_to_cells(boxes, map_hw, mapping=PAPER, stride=ZF5_STRIDE, released=ZF5_RELEASED):
    """0-based pixel boxes of the network input -> int64 (N, 4) inclusive map
    cells [x1' y1' x2' y2'] on a map of `map_hw` = (H, W) cells (one pair, or
    one per box).  See the module docstring for the two mappings."""
    _check(mapping, MAPPINGS, "mapping")
    boxes = as_boxes(boxes)
    if mapping == PAPER:
        first = np.floor(boxes[:, :2] / stride) + 1
        last = np.ceil(boxes[:, 2:] / stride) - 1
    else:
        b = boxes + 1                                  # its 1-based pixels
        first = np.floor((b[:, :2] - released.offset0 + released.offset) / stride + 0.5)
        last = np.ceil((b[:, 2:] - released.offset0 - released.offset) / stride - 0.5)
        # +1 for its 1-based cells, -1 back to 0-based: nothing to add.
    first, last = first.astype(np.int64), last.astype(np.int64)
    empty = first > last
    middle = (first + last) // 2
    first = np.where(empty, middle, first)
    last = np.where(empty, middle, last)
    limit = _map_sizes(map_hw, len(boxes))[:, ::-1] - 1          # (W - 1, H - 1)
    first = np.clip(first, 0, limit)
    last = np.clip(last, 0, limit)
    return np.concatenate([first, last], axis=1)


def choose_scales(boxes, image_hw, scales, rule=PAPER, stride=ZF5_STRIDE,
                  released=ZF5_RELEASED):
    """Index into `scales` of the scale each (1-based, original-image) box is
    pooled at; see the module docstring for the two rules."""
    _check(rule, MAPPINGS, "scale rule")
    scales = np.asarray(scales, dtype=np.float64).reshape(-1)
    if scales.size == 0:
        raise ValueError("give at least one scale")
    area = box_areas(boxes)
    shorter = min(image_hw)
    if rule == PAPER:
        scaled_area = area[:, None] * (scales[None, :] / shorter) ** 2
        distance = np.abs(scaled_area - STANDARD_SIDE ** 2)
    else:
        # MATLAB's round: half away from zero (the value is positive).
        expected = np.floor(released.conv_size * stride * shorter / np.sqrt(area) + 0.5)
        distance = np.abs(scales[None, :] - expected[:, None])
    return np.argmin(distance, axis=1)      # the first of equal distances


def map_windows(boxes, image_hw, scales, map_sizes, mapping=PAPER, scale_rule=None,
                stride=ZF5_STRIDE, released=ZF5_RELEASED):
    """Every (1-based) box of an `image_hw` image -> (scale index, cells).

    `map_sizes[k]` is the (H, W) of the map computed at `scales[k]`.  The scale
    rule defaults to the mapping's own (paper with paper, released with
    released).  Returns (scale_index (N,), cells (N, 4) int64)."""
    map_sizes = np.asarray(map_sizes, dtype=np.int64).reshape(-1, 2)
    if len(map_sizes) != len(scales):
        raise ValueError(f"{len(scales)} scales but {len(map_sizes)} map sizes")
    index = choose_scales(boxes, image_hw, scales, scale_rule or mapping, stride, released)
    chosen = np.asarray(scales, dtype=np.float64)[index]
    pixels = scale_boxes(boxes, image_hw, chosen, mapping)
    return index, boxes_to_cells(pixels, map_sizes[index], mapping, stride, released)
