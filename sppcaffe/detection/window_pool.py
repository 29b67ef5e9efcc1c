"""Spatial pyramid pooling of many windows of one feature map (SPP-net
detection, Sec. 4): the map is computed once per image and scale, and every
candidate window is pooled from it.

A window is a row [x1, y1, x2, y2] of map cells, inclusive (see
sppcaffe.detection.mapping).  Each level of n x n bins splits the window
with the ADAPTIVE bins of sppcaffe.spp_geometry: on a window of a cells from
s, bin i reads [s + floor(i*a/n), s + ceil((i+1)*a/n)).  The output row of a
window is each level flattened (channel, row, column), levels concatenated
in order: the SPP layer's layout, so a window covering the whole map gives
exactly that layer's (method ADAPTIVE) output.

How it is vectorized (no loop over windows or bins):

- MAX uses a 2-D sparse table: T[kh, kw][y, x] = the maximum over the
  2^kh x 2^kw cells from (y, x).  A bin of h x w cells, with 2^kh <= h <
  2^(kh+1) and likewise kw, is the maximum of four (overlapping) entries
  of T[kh, kw] anchored at its corners.  Only the (kh, kw) tables that some
  bin needs are built, and all of them are packed into one (cells, C)
  array with the channels last, so that each lookup copies C contiguous
  values and one np.take serves every bin of a level.
- AVE uses the summed-area table (float64): four lookups per bin.
- MAX's argmax (for the backward pass) runs the same sparse table on keys
  packing each value with its cell index (see _argmax_keys); equal values
  keep the smaller flat index h*W + w, the first maximum in row-major order,
  which is the SPP layer's tie rule.

Windows are processed in chunks so that the gathered corners stay in cache.
"""
import functools

import numpy as np

from .. import spp_geometry as geometry

MAX, AVE = "max", "ave"
POOLS = (MAX, AVE)
# Windows per chunk: the four corners gathered for a level take about this
# many bytes (measured best at 2-8 MB on a 2-core machine with 256 channels).
_CHUNK_BYTES = 4 << 20


def _check_pool(pool):
    if pool not in POOLS:
        raise ValueError(f"unknown pooling {pool!r} (known: {', '.join(POOLS)})")


def output_length(levels, channels):
    return geometry.pyramid_output_length(levels, channels)


def as_windows(windows, map_hw):
    """`windows` as an int64 (R, 4) array, checked to lie inside the map and to
    hold at least one cell each."""
    w = np.asarray(windows)
    if w.size == 0:
        return np.zeros((0, 4), np.int64)
    if w.ndim != 2 or w.shape[1] != 4:
        raise ValueError(f"windows must have shape (R, 4) [x1 y1 x2 y2], got {w.shape}")
    if not np.issubdtype(w.dtype, np.integer):
        if not np.array_equal(w, np.round(w)):
            raise ValueError("windows must hold whole map cells (integers)")
    w = w.astype(np.int64)
    h, width = map_hw
    bad = ((w[:, 0] < 0) | (w[:, 1] < 0) | (w[:, 2] >= width) | (w[:, 3] >= h)
           | (w[:, 2] < w[:, 0]) | (w[:, 3] < w[:, 1]))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"window {i} {w[i].tolist()} is empty or outside the {h}x{width} map "
                         f"({int(bad.sum())} such windows)")
    return w


def unique_windows(windows):
    """(unique rows, inverse): ``unique[inverse]`` equals `windows`.  Rows may
    carry extra key columns (an image or scale index) before or after the
    four coordinates."""
    windows = np.asarray(windows)
    if len(windows) == 0:
        return windows.copy(), np.zeros(0, np.intp)
    unique, inverse = np.unique(windows, axis=0, return_inverse=True)
    return unique, inverse.reshape(-1)


def sum_duplicates(rows, inverse):
    """Rows added up per unique window: out[k] = sum of rows[i] over the i
    with inverse[i] == k (the gradient of ``features[inverse]``)."""
    inverse = np.asarray(inverse).reshape(-1)
    if len(inverse) == 0:
        return np.zeros((0,) + rows.shape[1:], rows.dtype)
    order = np.argsort(inverse, kind="stable")
    ordered = inverse[order]
    if ordered[0] != 0 or (np.diff(ordered) > 1).any():
        raise ValueError("inverse must number the unique windows 0, 1, ... without gaps")
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    return np.add.reduceat(rows[order], starts, axis=0)


# ---- bins -------------------------------------------------------------------

@functools.lru_cache(maxsize=256)
def _bin_table(max_size, n):
    """Offsets of the n adaptive bins of every window size 1 .. max_size,
    from spp_geometry: (starts, ends), each (max_size + 1, n); row 0 unused."""
    starts = np.zeros((max_size + 1, n), np.int64)
    ends = np.ones((max_size + 1, n), np.int64)
    for size in range(1, max_size + 1):
        b = geometry.adaptive_bins(size, n)
        starts[size], ends[size] = b.starts, b.ends
    starts.flags.writeable = ends.flags.writeable = False
    return starts, ends


def axis_bins(first, last, n, map_size):
    """(R, n) starts and ends (exclusive) of the n adaptive bins of each
    window [first, last] (inclusive cells, int arrays (R,)) along one axis
    of a map of `map_size` cells: the bins every pooling of windows uses,
    on the host and on the device (layers/window_pool_device.py)."""
    starts, ends = _bin_table(map_size, n)
    size = last - first + 1
    return first[:, None] + starts[size], first[:, None] + ends[size]


def _floor_log2(sizes):
    return np.frexp(sizes)[1] - 1


# ---- the sparse table -----------------------------------------------------

def _halves(a, axis, half):
    """`a` without its last `half` entries along `axis`, and without its first
    (the two overlapping halves whose maximum doubles a table's extent)."""
    lead = (slice(None),) * axis
    return a[lead + (slice(None, -half),)], a[lead + (slice(half, None),)]


class _SparseTable:
    """The (kh, kw) max tables that some bins need, packed in one (cells, C)
    array ``values``, built from a (H, W, C) map of anything np.maximum orders.

    ``rows(kh, kw, y, x)`` is the packed row of T[kh, kw][y, x].  Tables are
    built by doubling: T[kh, kw] from T[kh, kw - 1] (columns) or
    T[kh - 1, 0] (rows); intermediate tables nobody asked for are dropped
    once the packed ones are built."""

    def __init__(self, x_hwc, pairs):
        h, w, c = x_hwc.shape
        pairs = sorted(set(pairs))
        shapes = [(h - (1 << kh) + 1, w - (1 << kw) + 1) for kh, kw in pairs]
        sizes = [hk * wk for hk, wk in shapes]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.values = np.empty((starts[-1], c), x_hwc.dtype)
        self._base = np.zeros((h.bit_length(), w.bit_length()), np.int64)
        self._width = np.ones_like(self._base)
        self._packed = {}
        for pair, (hk, wk), start, size in zip(pairs, shapes, starts, sizes):
            self._base[pair], self._width[pair] = start, wk
            self._packed[pair] = self.values[start:start + size].reshape(hk, wk, c)
        self._tables = {(0, 0): x_hwc}
        if (0, 0) in self._packed:
            self._packed[0, 0][...] = x_hwc
        for pair in pairs:
            self._get(pair)
        del self._tables

    def _get(self, pair):
        if pair not in self._tables:
            kh, kw = pair
            axis = 1 if kw > 0 else 0
            source = self._get((kh, kw - 1) if axis else (kh - 1, 0))
            a, b = _halves(source, axis, 1 << ((kw if axis else kh) - 1))
            self._tables[pair] = np.maximum(a, b, out=self._packed.get(pair))
        return self._tables[pair]

    def rows(self, kh, kw, y, x):
        return self._base[kh, kw] + y * self._width[kh, kw] + x


# MAX with argmax runs the sparse table on uint64 keys: the float32 value's
# bits made order-preserving in the high word, and 2^32 - 1 - (flat cell
# h*W + w) in the low word.  The largest key is then the largest value at its
# smallest cell index, the first maximum in row-major order, which is the SPP
# layer's tie rule, and one np.maximum does the work of compare-and-select.
_SIGN = np.uint32(0x80000000)
_LOW = np.uint64(0xFFFFFFFF)


def _argmax_keys(x_hwc):
    # + 0.0 turns -0.0 into +0.0, so that equal values give equal keys.
    bits = (x_hwc + np.float32(0)).view(np.uint32)
    ordered = np.where(bits & _SIGN, ~bits, bits | _SIGN).astype(np.uint64)
    h, w, _ = x_hwc.shape
    cells = np.arange(h * w, dtype=np.uint64).reshape(h, w, 1)
    return (ordered << np.uint64(32)) | (_LOW - cells)


def _decode_keys(keys, values_out, index_out):
    ordered = (keys >> np.uint64(32)).astype(np.uint32)
    bits = np.where(ordered & _SIGN, ordered & ~_SIGN, ~ordered)
    values_out[...] = bits.view(np.float32)
    index_out[...] = (_LOW - (keys & _LOW)).astype(np.int32)


def _max_level(table, row_bins, col_bins, out_rows, out_index=None):
    """Write the maxima of every bin of one level into the (R, n*n, C) view
    out_rows; with out_index, the table holds argmax keys, decoded into both."""
    (rs, re), (cs, ce) = row_bins, col_bins
    kh, kw = _floor_log2(re - rs)[:, :, None], _floor_log2(ce - cs)[:, None, :]
    top, left = rs[:, :, None], cs[:, None, :]
    bottom, right = re[:, :, None] - (1 << kh), ce[:, None, :] - (1 << kw)
    corners = np.stack([table.rows(kh, kw, top, left), table.rows(kh, kw, top, right),
                        table.rows(kh, kw, bottom, left), table.rows(kh, kw, bottom, right)])
    r, nn = out_rows.shape[:2]
    g = np.take(table.values, corners.reshape(-1), axis=0).reshape(4, r, nn, -1)
    np.maximum(g[0], g[1], out=g[0])
    np.maximum(g[2], g[3], out=g[2])
    if out_index is None:
        np.maximum(g[0], g[2], out=out_rows)
    else:
        _decode_keys(np.maximum(g[0], g[2], out=g[0]), out_rows, out_index)


def _level_pairs(windows, levels, map_hw):
    """The (kh, kw) sparse-table pairs that the bins of `windows` need."""
    h, w = map_hw
    pairs = set()
    for n in levels:
        rs, re = axis_bins(windows[:, 1], windows[:, 3], n, h)
        cs, ce = axis_bins(windows[:, 0], windows[:, 2], n, w)
        # a window's row bins pair with each of its column bins
        code = _floor_log2(re - rs)[:, :, None] * 64 + _floor_log2(ce - cs)[:, None, :]
        pairs.update((int(k) // 64, int(k) % 64) for k in np.unique(code))
    return pairs


def _level_columns(levels, channels):
    sizes = [channels * n * n for n in levels]
    ends = np.cumsum(sizes)
    return [slice(int(e - s), int(e)) for e, s in zip(ends, sizes)]


def _check_map(feature_map):
    x = np.asarray(feature_map)
    if x.ndim != 3:
        raise ValueError(f"the feature map must have shape (C, H, W), got {x.shape}")
    return x


def _levels(levels):
    levels = [int(n) for n in levels]
    if not levels or min(levels) < 1:
        raise ValueError(f"give at least one level of at least 1 bin per side, got {levels}")
    return levels


def pool_windows(feature_map, windows, levels, pool=MAX, out=None, with_argmax=False):
    """SPP features of every window: (R, C * sum n^2) float32.

    feature_map: (C, H, W); windows: (R, 4) inclusive cells [x1 y1 x2 y2].
    with_argmax (MAX only): also return the (R, C * sum n^2) int32 flat cell
    h*W + w (within the channel's plane) each output was read from.
    """
    _check_pool(pool)
    if with_argmax and pool != MAX:
        raise ValueError("only MAX pooling has an argmax")
    x = _check_map(feature_map)
    c, h, w = x.shape
    levels = _levels(levels)
    windows = as_windows(windows, (h, w))
    r = len(windows)
    length = output_length(levels, c)
    if out is None:
        out = np.empty((r, length), np.float32)
    elif out.shape != (r, length):
        raise ValueError(f"out must have shape {(r, length)}, got {out.shape}")
    argmax = np.empty((r, length), np.int32) if with_argmax else None
    if r == 0:
        return (out, argmax) if with_argmax else out
    x_hwc = np.ascontiguousarray(x.transpose(1, 2, 0), dtype=np.float32)
    if pool == MAX:
        source = _argmax_keys(x_hwc) if with_argmax else x_hwc
        table = _SparseTable(source, _level_pairs(windows, levels, (h, w)))
    else:
        table = _summed_area(x_hwc)
    columns = _level_columns(levels, c)
    item = 4 if pool == MAX and not with_argmax else 8    # float32; uint64 keys, float64 sums
    chunk_size = max(1, _CHUNK_BYTES // (4 * max(levels) ** 2 * c * item))
    for start in range(0, r, chunk_size):
        chunk = windows[start:start + chunk_size]
        rows = slice(start, start + len(chunk))
        for n, cols in zip(levels, columns):
            row_bins = axis_bins(chunk[:, 1], chunk[:, 3], n, h)
            col_bins = axis_bins(chunk[:, 0], chunk[:, 2], n, w)
            # (R, C, n*n) output columns seen as (R, n*n, C): the gathers'
            # layout, written straight into place.
            view = out[rows, cols].reshape(len(chunk), c, n * n).transpose(0, 2, 1)
            if pool == MAX:
                index_view = None
                if argmax is not None:
                    index_view = argmax[rows, cols].reshape(len(chunk), c, n * n).transpose(0, 2, 1)
                _max_level(table, row_bins, col_bins, view, index_view)
            else:
                _ave_level(table, row_bins, col_bins, view)
    return (out, argmax) if with_argmax else out


def pool_unique_windows(feature_map, windows, levels, pool=MAX):
    """Pool each distinct window once: (features of the unique windows,
    inverse), with ``features[inverse]`` the features of `windows`."""
    x = _check_map(feature_map)
    windows = as_windows(windows, x.shape[1:])
    unique, inverse = unique_windows(windows)
    return pool_windows(x, unique, levels, pool), inverse


# ---- AVE ------------------------------------------------------------------------

def _summed_area(x_hwc):
    """S[y, x] = sum of the cells above and left of (y, x), float64,
    flattened to ((H + 1) * (W + 1), C) rows."""
    h, w, c = x_hwc.shape
    s = np.zeros((h + 1, w + 1, c), np.float64)
    np.cumsum(x_hwc, axis=0, dtype=np.float64, out=s[1:, 1:])
    np.cumsum(s[1:, 1:], axis=1, out=s[1:, 1:])
    return s.reshape(-1, c), w + 1


def _ave_level(table, row_bins, col_bins, out_rows):
    sums, width = table
    (rs, re), (cs, ce) = row_bins, col_bins
    top, bottom = rs[:, :, None] * width, re[:, :, None] * width
    left, right = cs[:, None, :], ce[:, None, :]
    corners = np.stack([bottom + right, top + right, bottom + left, top + left])
    r, nn = out_rows.shape[:2]
    g = np.take(sums, corners.reshape(-1), axis=0).reshape(4, r, nn, sums.shape[1])
    area = ((re - rs)[:, :, None] * (ce - cs)[:, None, :]).reshape(r, nn, 1)
    np.subtract(g[0], g[1], out=g[0])
    np.subtract(g[0], g[2], out=g[0])
    np.add(g[0], g[3], out=g[0])
    np.divide(g[0], area, out=out_rows, casting="same_kind")


# ---- backward ------------------------------------------------------------------

def pool_windows_backward(feature_map, windows, levels, top_diff, pool=MAX, argmax=None):
    """Gradient of the map (C, H, W) float32 from `top_diff` (R, C * sum n^2),
    the gradient of pool_windows(feature_map, windows, levels, pool).

    MAX routes each output's gradient to its argmax (recomputed from the map
    unless given); AVE spreads it evenly over its bin.  Windows that share
    cells add up."""
    _check_pool(pool)
    x = _check_map(feature_map)
    c, h, w = x.shape
    levels = _levels(levels)
    windows = as_windows(windows, (h, w))
    top_diff = np.asarray(top_diff)
    length = output_length(levels, c)
    if top_diff.shape != (len(windows), length):
        raise ValueError(f"top_diff must have shape {(len(windows), length)}, "
                         f"got {top_diff.shape}")
    if len(windows) == 0:
        return np.zeros(x.shape, np.float32)
    if pool == MAX:
        if argmax is None:
            _, argmax = pool_windows(x, windows, levels, MAX, with_argmax=True)
        channel = np.concatenate([np.repeat(np.arange(c), n * n) for n in levels])
        flat = (channel * (h * w))[None, :] + argmax
        grad = np.bincount(flat.reshape(-1), weights=top_diff.reshape(-1), minlength=c * h * w)
        return grad.reshape(c, h, w).astype(np.float32)
    return _ave_backward(windows, levels, top_diff, (c, h, w))


def _ave_backward(windows, levels, top_diff, shape):
    """Each bin adds g / area to its cells: +g at its top-left corner, -g right
    of its top-right, and so on, in a (H + 1, W + 1) difference image whose
    2-D cumulative sum is the gradient."""
    c, h, w = shape
    diff = np.zeros((c, (h + 1) * (w + 1)), np.float64)
    channel_offset = (np.arange(c) * (h + 1) * (w + 1))[None, :, None]
    for n, cols in zip(levels, _level_columns(levels, c)):
        rs, re = axis_bins(windows[:, 1], windows[:, 3], n, h)
        cs, ce = axis_bins(windows[:, 0], windows[:, 2], n, w)
        area = (re - rs)[:, :, None] * (ce - cs)[:, None, :]
        g = top_diff[:, cols].reshape(len(windows), c, n * n) / area.reshape(-1, 1, n * n)
        for rows, cols_, sign in ((rs, cs, 1), (rs, ce, -1), (re, cs, -1), (re, ce, 1)):
            cell = (rows[:, :, None] * (w + 1) + cols_[:, None, :]).reshape(-1, 1, n * n)
            diff += sign * np.bincount((cell + channel_offset).reshape(-1), weights=g.reshape(-1),
                                       minlength=diff.size).reshape(diff.shape)
    grad = diff.reshape(c, h + 1, w + 1).cumsum(axis=1).cumsum(axis=2)
    return grad[:, :h, :w].astype(np.float32)
