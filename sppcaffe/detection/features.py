"""Window features for detection, two ways (SPP-net Sec. 4 and Table 10).

SPP (``SPPExtractor``): for each scale s the image is resized so that its
shorter side is s (cv2.resize, bilinear; optionally capped so that the
longer side is at most ``max_side``), the mean is subtracted (BGR, as
Caffe), and the convolutional net runs ONCE on the whole image.  Each
window then picks its scale (sppcaffe.detection.mapping.choose_scales,
rule "paper" or "released"), is mapped onto that scale's last conv map
(mapping.boxes_to_cells) and pooled there by a spatial pyramid
(window_pool, adaptive bins; windows landing on the same cells are pooled
once).

R-CNN (``RCNNExtractor``): every window is cropped with 16 pixels of
context and warped to the net's input size (224 x 224), as R-CNN's
rcnn_im_crop.m in "warp" mode, and the full net runs on each crop, in
batches.  With the same net and ``blob="spp"`` it gives features of the
same kind and length as SPP mode, scored by the same SVMs.

``cache_features`` runs either over a dataset split and writes the
per-image cache of sppcaffe.detection.cache.

GPU mode (``sppcaffe.set_mode_gpu()``): the nets run on the device, and so
does what follows them.  SPP mode keeps a device copy of each scale's conv
map and pools every window there (layers/window_pool_device.py) into one
device Blob for all scales; R-CNN mode copies each batch's features into
such a Blob.  ``WindowFeatures`` then holds that Blob, and the fc layers
that score the windows (sppcaffe.detection.svm.FeatureTransform) read it
on the device: features reach the host only when read (``feat``,
``unique_feat``: to cache them on disk, or for host-side SVMs and box
regression).  The images themselves are prepared on the host (resizing,
R-CNN's warping) and uploaded once.

Images are (H, W, 3) uint8 BGR arrays (cv2.imread's order); boxes are
1-based, pixel-inclusive [x1 y1 x2 y2] (the VOC convention).
"""
import logging
import os
from typing import NamedTuple

import numpy as np

from .. import backends, io
from ..backends import gpu
from ..layers import window_pool_device as device_pool
from ..blob import Blob
from . import cache, mapping, window_pool

_log = logging.getLogger(__name__)

# The VOC convention: every box coordinate counts pixels from 1.
_FIRST_PIXEL = 1


# ---------------------------------------------------------------------------
# Image preparation
# ---------------------------------------------------------------------------
def load_mean(mean_value=None, mean_file=None, channels=3):
    """Per-channel mean (float32 (C,)) from `mean_value` (one value or one
    per channel) or a mean binaryproto `mean_file` (its average over the
    pixels, since windows of any size and place are read).  Zeros when
    neither is given."""
    if mean_value is not None and mean_file is not None:
        raise ValueError("give a mean value or a mean file, not both")
    if mean_file is not None:
        mean = io.read_blobproto(mean_file)
        if mean.ndim < 3 or mean.shape[-3] != channels:
            raise ValueError(f"{mean_file}: a mean of {channels} channels was expected, "
                             f"got shape {mean.shape}")
        return mean.reshape(channels, -1).mean(axis=1).astype(np.float32)
    if mean_value is None:
        return np.zeros(channels, np.float32)
    values = np.asarray(mean_value, np.float32).reshape(-1)
    if values.size == 1:
        values = np.repeat(values, channels)
    if values.size != channels:
        raise ValueError(f"give 1 or {channels} mean values, got {values.size}")
    return values


def effective_scale(image_hw, scale, max_side=None):
    """The shorter side the image is resized to for `scale`: `scale` itself,
    or less when the longer side would pass `max_side`."""
    if max_side and max(mapping.resized_size(image_hw, scale)) > max_side:
        return int(min(image_hw) * max_side // max(image_hw))
    return int(scale)


def resize_image(image, scale):
    """The image resized so its shorter side is `scale` (bilinear)."""
    import cv2
    height, width = mapping.resized_size(image.shape[:2], scale)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def image_to_blob(image, mean):
    """(H, W, C) image -> (1, C, H, W) float32 minus the per-channel mean."""
    x = np.asarray(image, np.float32) - np.asarray(mean, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))[None]


# ---------------------------------------------------------------------------
# Nets
# ---------------------------------------------------------------------------
def producing_layer(net, blob):
    """Index of the last layer that writes `blob` (the forward pass stops
    there)."""
    if blob not in net.blobs:
        raise KeyError(f"net '{net.name}' has no blob '{blob}' (it has {', '.join(net.blobs)})")
    for index in range(len(net.top_vecs) - 1, -1, -1):
        if any(top.name == blob for top in net.top_vecs[index]):
            return index
    raise KeyError(f"net '{net.name}': no layer computes blob '{blob}'")


def input_name(net):
    if len(net.inputs) != 1:
        raise ValueError(f"net '{net.name}' must have exactly one Input blob for the image, "
                         f"it has {net.inputs or 'none'}")
    return net.inputs[0]


def feature_stride(net, blob):
    """The product of the strides of the convolution and pooling layers up
    to `blob` (16 for ZF-5's conv5): S in the window mapping.  Assumes a
    chain of layers, as every net of models/ is."""
    total = 1
    for index in range(producing_layer(net, blob) + 1):
        layer = net.layers[index]
        kind = layer.param.type
        if kind == "Convolution":
            p = layer.param.convolution_param
            strides = list(p.stride) or [1]
            h, w = p.stride_h or strides[0], p.stride_w or strides[-1]
        elif kind == "Pooling":
            p = layer.param.pooling_param
            if p.global_pooling:
                continue
            h, w = p.stride_h or p.stride, p.stride_w or p.stride
        else:
            continue
        if h != w:
            raise ValueError(f"layer '{layer.name}' has strides {h} x {w}: the window mapping "
                             "needs square strides")
        total *= h
    return total


def forward_to(net, blob, batch):
    """Feed the host array `batch` to the net's input and run it up to
    `blob`; that Blob of the net (overwritten by the next call): read its
    ``cpu_data`` on the host, its ``gpu_data`` on the device."""
    name = input_name(net)
    net.blobs[name].reshape(batch.shape)
    net.blobs[name].data[...] = batch
    net.forward_from_to(0, producing_layer(net, blob))
    return net.blobs[blob]


# ---------------------------------------------------------------------------
# Where features live: host arrays in CPU mode, device Blobs in GPU mode
# ---------------------------------------------------------------------------
def feature_rows(count, dim):
    """Room for `count` rows of `dim` features on the side the nets run
    on: a float32 host array (CPU mode) or a Blob whose rows stay on the
    device (GPU mode)."""
    if backends.gpu_mode():
        return Blob((count, dim))
    return np.empty((count, dim), np.float32)


def copy_rows(rows, first, source, count):
    """rows[first:first + count] = the first `count` items of the Blob
    `source`, each flattened; device to device where `rows` is a Blob."""
    if isinstance(rows, Blob):
        dim = rows.shape[1]
        gpu.blas().copy(rows.mutable_gpu_data + 4 * first * dim, source.gpu_data,
                        4 * count * dim)
    else:
        rows[first:first + count] = source.cpu_data.reshape(count, -1)


def first_item(blob):
    """Item 0 of a (N, ...) Blob of a net, kept past the net's next pass:
    a host array in CPU mode, a device copy (a Blob) in GPU mode."""
    if not backends.gpu_mode():
        return blob.cpu_data[0].copy()
    kept = Blob(blob.shape[1:])
    gpu.blas().copy(kept.mutable_gpu_data, blob.gpu_data, 4 * kept.count)
    return kept


def synchronize():
    """Wait for the device's queued work in GPU mode (for timings; reading
    features waits on its own)."""
    if backends.gpu_mode():
        backends.current_device().synchronize()


def _map_for_mode(data):
    """A conv map where this mode pools it: (C, H, W) host array in CPU
    mode, Blob in GPU mode (maps computed in the other mode are moved)."""
    if backends.gpu_mode() and not isinstance(data, Blob):
        moved = Blob(data.shape)
        moved.data[...] = data
        return moved
    if not backends.gpu_mode() and isinstance(data, Blob):
        return data.cpu_data
    return data


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------
class WindowFeatures:
    """Features of R windows, stored once per distinct window:
    ``feat = unique_feat[inverse]``.  (Fully connected layers need to run
    on the U unique rows only.)

    unique rows: (U, D) float32, a host array, or in GPU mode a device Blob
    (``device``) that is downloaded the first time ``unique_feat``,
    ``feat`` or ``rows`` is read (as a read-only array); ``stored`` hands
    out the rows where they are, for fc layers to read on the device.
    inverse: (R,) indices into the unique rows; scale_index: (R,) int16."""

    __slots__ = ("device", "inverse", "scale_index", "_host")

    def __init__(self, unique_feat, inverse, scale_index):
        self.device = unique_feat if isinstance(unique_feat, Blob) else None
        self._host = None if self.device is not None else np.asarray(unique_feat)
        self.inverse = np.asarray(inverse)
        self.scale_index = np.asarray(scale_index)

    @property
    def stored(self):
        """The unique rows as computed: the device Blob, else the host array."""
        return self.device if self.device is not None else self._host

    @property
    def unique_feat(self):
        if self._host is None:
            # cpu_data keeps the device copy current (no upload if it is read
            # there again); read-only, since writes would not reach it.
            self._host = self.device.cpu_data.view()
            self._host.flags.writeable = False
        return self._host

    def rows(self, index):
        """Features of the windows `index` (into the R windows), on the host."""
        return self.unique_feat[self.inverse[index]]

    @property
    def feat(self):
        return self.unique_feat[self.inverse]

    @property
    def num_unique(self):
        return self.stored.shape[0]

    def __repr__(self):
        where = "device" if self.device is not None else "host"
        return (f"WindowFeatures({len(self.inverse)} windows, {self.num_unique} unique x "
                f"{self.stored.shape[1]} on the {where})")


class ConvMap(NamedTuple):
    scale: int                  # the shorter side the image was resized to
    data: object                # (C, H, W) float32: a host array, or a Blob in GPU mode


# ---------------------------------------------------------------------------
# SPP mode
# ---------------------------------------------------------------------------
class SPPExtractor:
    """Pooled conv features of many windows of an image, the net run once
    per scale.

    net: a TEST net with one Input blob (e.g. models/zf5_spp/detect_conv5.
    prototxt) computing `blob`; scales: shorter sides, e.g. (688,) or
    mapping.PAPER_SCALES; levels: pyramid bins per side; pool: "max" or
    "ave"; mapping / scale_rule: "paper" or "released" (the scale rule
    defaults to the mapping's); mean: per-channel BGR mean; max_side: cap
    on the longer side of a resized image; stride: of `blob` (default:
    computed from the net)."""

    def __init__(self, net, scales=(688,), levels=(6, 3, 2, 1), pool=window_pool.MAX,
                 mapping_name=mapping.PAPER, scale_rule=None, mean=None, blob="conv5",
                 max_side=None, stride=None, released=mapping.ZF5_RELEASED):
        self.net = net
        self.scales = tuple(int(s) for s in scales)
        if not self.scales or min(self.scales) < 1:
            raise ValueError(f"give at least one positive scale, got {scales}")
        self.levels = tuple(int(n) for n in levels)
        self.pool_kind = pool
        self.mapping = mapping_name
        self.scale_rule = scale_rule or mapping_name
        for name, what in ((self.mapping, "mapping"), (self.scale_rule, "scale rule")):
            if name not in mapping.MAPPINGS:
                raise ValueError(f"unknown {what} {name!r} (known: {', '.join(mapping.MAPPINGS)})")
        self.blob = blob
        channels = net.blobs[input_name(net)].shape[1]
        self.mean = load_mean(channels=channels) if mean is None else np.asarray(mean, np.float32)
        self.max_side = max_side
        self.stride = stride or feature_stride(net, blob)
        self.released = released
        producing_layer(net, blob)       # fail now, not at the first image

    def describe(self):
        return {"mode": "spp", "scales": list(self.scales), "levels": list(self.levels),
                "pool": self.pool_kind, "mapping": self.mapping, "scale_rule": self.scale_rule,
                "blob": self.blob, "stride": self.stride, "max_side": self.max_side,
                "mean": [float(v) for v in self.mean]}

    def used_scales(self, image_hw):
        """The shorter side the image is resized to, per scale."""
        return [effective_scale(image_hw, s, self.max_side) for s in self.scales]

    def conv_maps(self, image):
        """One ConvMap per scale (a size shared by two scales, possible when
        max_side caps both, is computed once).  In GPU mode each map is a
        device copy: the net's next pass overwrites its own."""
        done = {}
        maps = []
        for scale in self.used_scales(image.shape[:2]):
            if scale not in done:
                batch = image_to_blob(resize_image(image, scale), self.mean)
                done[scale] = ConvMap(scale, first_item(forward_to(self.net, self.blob, batch)))
            maps.append(done[scale])
        return maps

    def pool(self, conv_maps, image_hw, boxes):
        """WindowFeatures of the (1-based) boxes of an `image_hw` image from
        its conv maps: each distinct (scale, cells) window pooled once, all
        scales into one store (on the device in GPU mode)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scales = [m.scale for m in conv_maps]
        sizes = [m.data.shape[1:] for m in conv_maps]
        index, cells = mapping.map_windows(boxes, image_hw, scales, sizes, self.mapping,
                                           self.scale_rule, self.stride, self.released)
        # The distinct windows of every scale first (host), to size the store.
        groups, inverse = [], np.empty(len(boxes), np.int64)
        offset = 0
        for k in np.unique(index):
            rows = np.flatnonzero(index == k)
            unique, inv = window_pool.unique_windows(window_pool.as_windows(cells[rows], sizes[k]))
            groups.append((k, unique, offset))
            inverse[rows] = inv + offset
            offset += len(unique)
        channels = conv_maps[0].data.shape[0]
        out = feature_rows(offset, window_pool.output_length(self.levels, channels))
        for k, unique, first in groups:
            conv = _map_for_mode(conv_maps[k].data)
            if isinstance(out, Blob):
                device_pool.pool_windows(conv, unique, self.levels, self.pool_kind, out=out,
                                         first_row=first)
            else:
                window_pool.pool_windows(conv, unique, self.levels, self.pool_kind,
                                         out=out[first:first + len(unique)])
        return WindowFeatures(out, inverse, index.astype(np.int16))

    def __call__(self, image, boxes):
        return self.pool(self.conv_maps(image), image.shape[:2], boxes)


# ---------------------------------------------------------------------------
# R-CNN mode
# ---------------------------------------------------------------------------
def matlab_round(x):
    """MATLAB's round: halves away from zero."""
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


class WarpGeometry(NamedTuple):
    """Per window, what rcnn_im_crop.m reads and where it writes it."""
    source: np.ndarray      # (R, 4) int: x1 y1 x2 y2, 1-based, inclusive, inside the image
    offset: np.ndarray      # (R, 2) int: (x, y) of the warped pixels in the crop
    size: np.ndarray        # (R, 2) int: (width, height) of the warped pixels


def warp_geometry(boxes, image_hw, crop_size=224, padding=16):
    """R-CNN's "warp" crop with context padding, vectorized: the box is
    grown about its centre by crop_size / (crop_size - 2 * padding), so that
    after warping to crop_size x crop_size the original box spans the
    middle (crop_size - 2 * padding) pixels and `padding` pixels of context
    surround it.  The part of the grown box outside the image is not read;
    its share of the crop stays zero (the mean, once subtracted).

    As rcnn_im_crop.m, the grown box spans x1 + w/2 -+ (w/2) * scale, which
    is one pixel wider than the box at scale 1; with padding 0 the box
    itself is read instead (its other branch)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    height, width = image_hw
    if padding:
        scale = crop_size / (crop_size - 2.0 * padding)
        half_w = (boxes[:, 2] - boxes[:, 0] + 1) / 2
        half_h = (boxes[:, 3] - boxes[:, 1] + 1) / 2
        cx, cy = boxes[:, 0] + half_w, boxes[:, 1] + half_h
        grown = matlab_round(np.stack([cx - half_w * scale, cy - half_h * scale,
                                       cx + half_w * scale, cy + half_h * scale], axis=1))
    else:
        grown = matlab_round(boxes)
    unclipped_w = grown[:, 2] - grown[:, 0] + 1
    unclipped_h = grown[:, 3] - grown[:, 1] + 1
    pad_x = np.maximum(0, _FIRST_PIXEL - grown[:, 0])
    pad_y = np.maximum(0, _FIRST_PIXEL - grown[:, 1])
    source = np.stack([np.maximum(_FIRST_PIXEL, grown[:, 0]), np.maximum(_FIRST_PIXEL, grown[:, 1]),
                       np.minimum(width, grown[:, 2]), np.minimum(height, grown[:, 3])], axis=1)
    scale_x, scale_y = crop_size / unclipped_w, crop_size / unclipped_h
    crop_w = matlab_round((source[:, 2] - source[:, 0] + 1) * scale_x)
    crop_h = matlab_round((source[:, 3] - source[:, 1] + 1) * scale_y)
    pad_x, pad_y = matlab_round(pad_x * scale_x), matlab_round(pad_y * scale_y)
    crop_w = np.maximum(1, np.minimum(crop_w, crop_size - pad_x))
    crop_h = np.maximum(1, np.minimum(crop_h, crop_size - pad_y))
    if ((source[:, 2] < source[:, 0]) | (source[:, 3] < source[:, 1])).any():
        bad = int(np.flatnonzero((source[:, 2] < source[:, 0]) | (source[:, 3] < source[:, 1]))[0])
        raise ValueError(f"box {bad} {boxes[bad].tolist()} lies outside the "
                         f"{height}x{width} image")
    return WarpGeometry(source.astype(np.int64), np.stack([pad_x, pad_y], 1).astype(np.int64),
                        np.stack([crop_w, crop_h], 1).astype(np.int64))


def warp_windows(image, boxes, mean, crop_size=224, padding=16, out=None):
    """(R, C, crop_size, crop_size) float32 net inputs of the windows, each
    the R-CNN crop minus the mean, zero outside the image.

    One cv2.resize per window (bilinear, as R-CNN's imresize without
    antialiasing), in a Python loop: a batched bilinear gather in NumPy
    moves more memory than OpenCV's per-window resize, and the loop costs
    about 1 ms a window on 2 cores, 1-2% of the net's time per window."""
    import cv2
    geometry = warp_geometry(boxes, image.shape[:2], crop_size, padding)
    shape = (len(geometry.source), image.shape[2], crop_size, crop_size)
    if out is None:
        out = np.zeros(shape, np.float32)
    else:
        if out.shape != shape:
            raise ValueError(f"out must have shape {shape}, got {out.shape}")
        out[...] = 0
    pixels = np.asarray(image, np.float32)
    mean = np.asarray(mean, np.float32)
    for k, ((x1, y1, x2, y2), (px, py), (w, h)) in enumerate(zip(*geometry)):
        warped = cv2.resize(pixels[y1 - 1:y2, x1 - 1:x2], (int(w), int(h)),
                            interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
        warped -= mean
        out[k, :, py:py + h, px:px + w] = warped.transpose(2, 0, 1)
    return out


class RCNNExtractor:
    """Features of windows the R-CNN way: each window warped to the net's
    input size and the whole net run on it, `batch_size` windows a pass.

    net: a TEST net with one Input blob (e.g. models/zf5_spp/deploy.
    prototxt); blob: the feature to return ("spp" gives SPP mode's feature
    kind, "fc7" R-CNN's)."""

    def __init__(self, net, blob="spp", mean=None, padding=16, batch_size=128, crop_size=None):
        self.net = net
        self.blob = blob
        shape = net.blobs[input_name(net)].shape
        self.channels = shape[1]
        self.crop_size = int(crop_size or shape[2])
        self.mean = load_mean(channels=self.channels) if mean is None else \
            np.asarray(mean, np.float32)
        self.padding = int(padding)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        producing_layer(net, blob)

    def describe(self):
        return {"mode": "rcnn", "scales": [self.crop_size], "blob": self.blob,
                "padding": self.padding, "crop_size": self.crop_size,
                "mean": [float(v) for v in self.mean]}

    def __call__(self, image, boxes):
        """WindowFeatures of the boxes (every window its own row), on the
        device in GPU mode: the crops are warped on the host and uploaded,
        the features stay where the net computed them."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        feat = None
        batch = None
        for start in range(0, len(boxes), self.batch_size):
            chunk = boxes[start:start + self.batch_size]
            if batch is None or len(batch) != len(chunk):
                batch = np.zeros((len(chunk), self.channels, self.crop_size, self.crop_size),
                                 np.float32)
            warp_windows(image, chunk, self.mean, self.crop_size, self.padding, out=batch)
            top = forward_to(self.net, self.blob, batch)
            if feat is None:
                feat = feature_rows(len(boxes), top.count // len(chunk))
            copy_rows(feat, start, top, len(chunk))
        if feat is None:
            feat = np.zeros((0, int(np.prod(self.net.blobs[self.blob].shape[1:]))), np.float32)
        return WindowFeatures(feat, np.arange(len(boxes)), np.zeros(len(boxes), np.int16))


# ---------------------------------------------------------------------------
# A dataset split -> the feature cache
# ---------------------------------------------------------------------------
def pending_images(cache_dir, image_ids):
    """The ids whose cache file is missing or unreadable (to compute)."""
    return [i for i in image_ids if not cache.is_complete(cache_dir, i)]


def cache_image(dataset, image_id, proposals, extractor, cache_dir, compress=False):
    """Compute and write one image's cache file; its number of rows.
    Errors get a note naming the image and its file."""
    try:
        image = dataset.read_image(image_id)
        gt_boxes, labels, difficult = dataset.ground_truth(image_id)
        boxes = proposals.boxes(image_id, image)
        record = cache.image_rows(gt_boxes, labels + 1, difficult, boxes, len(dataset.classes))
        result = extractor(image, record["boxes"])
        record["feat"] = result.feat
        record["scale_index"] = result.scale_index
        cache.save(cache_dir, image_id, record, compress=compress)
    except (ValueError, OSError, KeyError) as err:
        err.add_note(f"while extracting image '{image_id}' ({dataset.image_path(image_id)})")
        raise
    return len(record["boxes"])


def cache_features(dataset, proposals, extractor, cache_dir, meta, image_ids=None,
                   progress=True, compress=False):
    """Write the cache files of a split (`image_ids`, default all of
    `dataset`'s), skipping those already complete; returns (computed,
    skipped).  `meta` is checked against (or written as) meta.json.
    Temporary files of an interrupted run are removed first, so two runs
    must not write to the same folder at once."""
    cache.start(cache_dir, meta)
    # A killed run leaves its last temporary file behind (never a partial .npz).
    stale = cache.remove_temporaries(cache_dir)
    if getattr(proposals, "directory", None):
        stale += cache.remove_temporaries(proposals.directory, ".npy")
    if stale:
        _log.info("removed %d temporary files of an interrupted run", stale)
    ids = list(dataset.image_ids if image_ids is None else image_ids)
    todo = pending_images(cache_dir, ids)
    skipped = len(ids) - len(todo)
    if skipped:
        _log.info("%d of %d images already cached in %s: skipped", skipped, len(ids), cache_dir)
    from tqdm import tqdm
    bar = tqdm(todo, unit="img", desc=os.path.basename(os.path.normpath(cache_dir)) or "features",
               disable=not progress, dynamic_ncols=True)
    rows = 0
    for done, image_id in enumerate(bar, 1):
        rows += cache_image(dataset, image_id, proposals, extractor, cache_dir, compress)
        bar.set_postfix(windows_per_image=f"{rows / done:.0f}", refresh=False)
    bar.close()
    return len(todo), skipped
