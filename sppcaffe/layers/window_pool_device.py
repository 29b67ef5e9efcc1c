"""Pooling of bins given by tables on the GPU: SPP levels of every method,
and many windows of a feature map (SPP-net detection).

The bins themselves are always computed on the host, by the same code the
CPU backend runs (``spp_geometry`` for SPP, ``detection.window_pool`` for
windows); this module packs them into int32 tables, uploads them and
launches the kernels of ``kernels/pooling.cu``.  A "box" is what one output
row pools: a whole image for SPP (one table shared by every image), a
window for window pooling (a table per window, and the image it reads).

Output rows have the host's layout: each level flattened (channel, row,
column), levels concatenated, C * sum(nh * nw) values.

Detection calls ``pool_windows`` (feature map and output as Blobs, the
windows as host cells); layers use ``bin_tables``/``window_tables``,
``DeviceBins`` and the launch functions.

Backward is a gather, one thread per bottom cell, never a scatter: with one
table for all images (SPP) a cell finds its bins arithmetically; with
per-window tables it walks the windows that contain it, listed per cell on
the host (``cell_windows``), so the additions come in a fixed order and
every run gives the same bits.
"""
from typing import NamedTuple, Optional

import numpy as np

from ..backends import current_device
from ..backends.gpu import Workspace, blas, kernel
from ..blob import Blob
from ..detection import window_pool as host_pool
from ..spp_geometry import Bins

MAX, AVE = host_pool.MAX, host_pool.AVE
_INT32_MAX = 2 ** 31 - 1


class BinTables(NamedTuple):
    """The int32 tables the bin kernels read (layout in kernels/pooling.cu)."""
    levels: np.ndarray                  # (levels, 4): first column, nh, nw, offset in bins
    bins: np.ndarray                    # (per_box,) shared by every box, or (boxes, per_box)
    box_image: Optional[np.ndarray]     # (boxes,) image each box reads; None: box n reads image n
    row_length: int                     # C * sum(nh * nw)

    @property
    def bins_per_box(self):
        """Stride between boxes' tables in `bins`; 0 for one shared table."""
        return self.bins.shape[1] if self.bins.ndim == 2 else 0


def bin_tables(level_bins, channels, box_image=None):
    """Tables for the levels' bins, given per level as (row Bins, column
    Bins) whose arrays are (n,) (shared by all boxes) or (boxes, n)."""
    levels, parts, column, offset = [], [], 0, 0
    for rows, cols in level_bins:
        nh, nw = rows.starts.shape[-1], cols.starts.shape[-1]
        levels.append((column, nh, nw, offset))
        parts += [rows.starts, rows.ends, rows.divisors, cols.starts, cols.ends, cols.divisors]
        column += channels * nh * nw
        offset += 3 * (nh + nw)
    bins = np.ascontiguousarray(np.concatenate(parts, axis=-1), dtype=np.int32)
    if box_image is not None:
        box_image = np.ascontiguousarray(box_image, dtype=np.int32).reshape(-1)
    return BinTables(np.array(levels, np.int32).reshape(-1, 4), bins, box_image, column)


def window_tables(windows, levels, map_hw, channels, images=None):
    """Tables for windows (R, 4) of inclusive map cells [x1 y1 x2 y2] on a
    map of `map_hw` cells, with the adaptive bins of window pooling;
    `images`: the image of the batch each window reads (default 0)."""
    windows = host_pool.as_windows(windows, map_hw)
    level_bins = []
    for n in levels:
        # The host's own per-window bins: the same cells on both sides.
        rs, re = host_pool.axis_bins(windows[:, 1], windows[:, 3], n, map_hw[0])
        cs, ce = host_pool.axis_bins(windows[:, 0], windows[:, 2], n, map_hw[1])
        level_bins.append((Bins(rs, re, re - rs), Bins(cs, ce, ce - cs)))
    if images is None:
        images = np.zeros(len(windows), np.int32)
    return bin_tables(level_bins, channels, images)


def box_extents(tables):
    """(R, 4) inclusive cells [x1 y1 x2 y2] holding every bin of each box of
    per-box tables: the first start and last end over all their levels."""
    if not tables.bins_per_box:
        raise ValueError("box_extents needs per-box tables (window pooling)")
    bins = tables.bins
    first = [[], []]
    last = [[], []]
    for _, nh, nw, offset in tables.levels:
        for axis, (start, n) in enumerate(((offset, nh), (offset + 3 * nh, nw))):
            first[axis].append(bins[:, start:start + n].min(axis=1))
            last[axis].append(bins[:, start + n:start + 2 * n].max(axis=1) - 1)
    (y1, x1), (y2, x2) = [[np.min(f, axis=0) for f in first], [np.max(e, axis=0) for e in last]]
    return np.stack([x1, y1, x2, y2], axis=1)


def cell_windows(windows, images, num_images, map_hw):
    """Per map cell, the windows containing it, in ascending order: int32
    (begins, windows) in compressed rows, cell i = (image * H + h) * W + w
    holding windows[begins[i]:begins[i + 1]].  windows: (R, 4) inclusive
    cells [x1 y1 x2 y2]; images: (R,) the image each one reads."""
    h, w = map_hw
    x1, y1, x2, y2 = np.asarray(windows, np.int64).reshape(-1, 4).T
    widths = x2 - x1 + 1
    areas = (y2 - y1 + 1) * widths
    pairs = int(areas.sum())
    if pairs > _INT32_MAX:
        raise ValueError(f"{pairs} (cell, window) pairs exceed the kernels' int32 indexing; "
                         f"pool fewer windows at a time")
    # Every (window, cell) pair, window by window, then ordered by cell: a
    # stable order keeps each cell's windows ascending.
    which = np.repeat(np.arange(len(areas)), areas)
    k = np.arange(pairs) - np.repeat(np.cumsum(areas) - areas, areas)     # cell within window
    width = widths[which]
    cell = ((np.asarray(images, np.int64).reshape(-1)[which] * h + y1[which] + k // width) * w
            + x1[which] + k % width)
    cells = num_images * h * w
    begins = np.zeros(cells + 1, np.int64)
    np.cumsum(np.bincount(cell, minlength=cells), out=begins[1:])
    return begins.astype(np.int32), which[_stable_order(cell, cells)].astype(np.int32)


def _stable_order(keys, bound):
    """np.argsort(keys, kind="stable") for keys in [0, bound), sorted in the
    narrowest unsigned type: up to 16 bits NumPy's stable sort is a linear
    radix sort (3x faster here than the merge sort of int64 keys)."""
    for dtype in (np.uint8, np.uint16):
        if bound <= np.iinfo(dtype).max + 1:
            return np.argsort(keys.astype(dtype), kind="stable")
    return np.argsort(keys, kind="stable")


class DeviceBins:
    """BinTables on the current device, uploaded only when they are not the
    ones uploaded last (SPP's tables change only with the input size)."""

    def __init__(self):
        self._buffers = Workspace()
        self._loaded = (None, None)      # (tables, device) now on the device
        self._lists_for = None           # (tables, device, map shape) of the cell lists
        self.tables = None
        self.levels = self.bins = self.box_image = 0
        self.cell_begins = self.cell_windows = 0

    def load(self, tables):
        device = current_device()
        if self._loaded[0] is not tables or self._loaded[1] is not device:
            self.levels = self._upload("levels", tables.levels)
            self.bins = self._upload("bins", tables.bins)
            self.box_image = (0 if tables.box_image is None
                              else self._upload("box_image", tables.box_image))
            self._loaded = (tables, device)
        self.tables = tables
        return self

    def load_cell_windows(self, num_images, map_hw):
        """Upload ``cell_windows`` of the loaded per-box tables (once per
        tables); sets the pointers cell_begins and cell_windows."""
        device, shape = current_device(), (num_images, tuple(map_hw))
        held = self._lists_for
        if held is None or held[0] is not self.tables or held[1] is not device or held[2] != shape:
            t = self.tables
            images = t.box_image if t.box_image is not None else np.arange(len(t.bins))
            begins, windows = cell_windows(box_extents(t), images, num_images, map_hw)
            self.cell_begins = self._upload("cell_begins", begins)
            self.cell_windows = self._upload("cell_windows", windows)
            self._lists_for = (t, device, shape)
        return self

    def _upload(self, name, array):
        ptr = self._buffers.get(name, array.nbytes)
        if array.nbytes:
            blas().upload(ptr, array)
        return ptr

    def common_args(self):
        """num_levels, levels, bins, bins_per_box, box_image (the kernels' order)."""
        t = self.tables
        return len(t.levels), self.levels, self.bins, t.bins_per_box, self.box_image


def _output_count(boxes, row_length):
    count = int(boxes) * int(row_length)
    if count > _INT32_MAX:
        raise ValueError(f"{boxes} rows of {row_length} pooled values exceed the kernels' "
                         f"int32 indexing; pool fewer windows at a time")
    return count


def pool_forward(device_bins, pool, x, map_chw, boxes, out, argmax=0):
    """Pool `boxes` rows into `out` (device pointer, rows of row_length
    floats) from the (N, C, H, W) map at device pointer `x` (`map_chw` its
    C, H, W).  MAX writes the argmax (plane index h * W + w) to `argmax`
    when it is not 0."""
    c, h, w = map_chw
    count = _output_count(boxes, device_bins.tables.row_length)
    num_levels, levels, bins, per_box, box_image = device_bins.common_args()
    args = (c, h, w, num_levels, levels, bins, per_box, box_image,
            device_bins.tables.row_length, out)
    if pool == MAX:
        kernel("pool_bins_max_forward")(count, count, x, *args, argmax)
    else:
        kernel("pool_bins_ave_forward")(count, count, x, *args)


def pool_backward_shared(device_bins, pool, dy, argmax, x_shape, dx):
    """Gradient of pool_forward with one table shared by the N images (SPP):
    a deterministic gather that overwrites dx (N, C, H, W)."""
    tables = device_bins.tables
    if tables.bins_per_box or tables.box_image is not None:
        raise ValueError("pool_backward_shared needs one bin table for all images (SPP); "
                         "use pool_backward_windows for per-window tables")
    n, c, h, w = x_shape
    count = n * c * h * w
    num_levels, levels, bins, _, _ = device_bins.common_args()
    tail = (c, h, w, num_levels, levels, bins, tables.row_length, dx)
    if pool == MAX:
        kernel("pool_bins_max_backward")(count, count, dy, argmax, *tail)
    else:
        kernel("pool_bins_ave_backward")(count, count, dy, *tail)


def pool_backward_windows(device_bins, pool, dy, argmax, x_shape, dx):
    """Gradient of pool_forward with per-window tables: a deterministic
    gather that overwrites dx (N, C, H, W), each cell summing, in window
    order, what the windows containing it send (see cell_windows)."""
    tables = device_bins.tables
    if not tables.bins_per_box:
        raise ValueError("pool_backward_windows needs per-window tables; use "
                         "pool_backward_shared for one table shared by all images")
    n, c, h, w = x_shape
    count = n * c * h * w
    lists = device_bins.load_cell_windows(n, (h, w))
    num_levels, levels, bins, per_box, _ = device_bins.common_args()
    tail = (c, h, w, num_levels, levels, bins, per_box, lists.cell_begins, lists.cell_windows,
            tables.row_length, dx)
    if pool == MAX:
        kernel("pool_bins_max_backward_windows")(count, count, dy, argmax, *tail)
    else:
        kernel("pool_bins_ave_backward_windows")(count, count, dy, *tail)


_scratch = DeviceBins()


def pool_windows(feature_map, windows, levels, pool=MAX, out=None, first_row=0, image=0):
    """The device twin of ``detection.window_pool.pool_windows``: SPP
    features of every window, written on the device.

    feature_map: a Blob (N, C, H, W) or (C, H, W), read through gpu_data;
    windows: host (R, 4) inclusive cells [x1 y1 x2 y2] (as the host
    function); image: which image of the batch.  out: a Blob that receives
    the features in rows first_row .. first_row + R - 1 (it must have at
    least that many rows of C * sum n^2), or None for a new (R, C * sum n^2)
    Blob.  Returns `out`; read ``out.data`` only where the host needs it."""
    if pool not in host_pool.POOLS:
        raise ValueError(f"unknown pooling {pool!r} (known: {', '.join(host_pool.POOLS)})")
    shape = feature_map.shape
    if len(shape) not in (3, 4):
        raise ValueError(f"the feature map must be (C, H, W) or (N, C, H, W), got {shape}")
    c, h, w = shape[-3:]
    batch = shape[0] if len(shape) == 4 else 1
    if not 0 <= image < batch:
        raise ValueError(f"image {image} is not in the batch of {batch}")
    levels = [int(n) for n in levels]
    if not levels or min(levels) < 1:
        raise ValueError(f"give at least one level of at least 1 bin per side, got {levels}")
    windows = host_pool.as_windows(windows, (h, w))
    length = host_pool.output_length(levels, c)
    if out is None:
        out = Blob((len(windows), length))
    if out.ndim != 2 or out.shape[1] != length or out.shape[0] < first_row + len(windows):
        raise ValueError(f"out must have {length} columns and at least "
                         f"{first_row + len(windows)} rows, got shape {out.shape}")
    if len(windows) == 0:
        return out
    tables = window_tables(windows, levels, (h, w), c, np.full(len(windows), image, np.int32))
    pool_forward(_scratch.load(tables), pool, feature_map.gpu_data, (c, h, w), len(windows),
                 out.mutable_gpu_data + 4 * first_row * length)
    return out
