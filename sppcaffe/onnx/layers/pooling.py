"""Pooling and ROIPooling, and the pooling builders SPP and WindowSPP reuse.

Caffe's pooling windows and ONNX's differ in three ways, and the export
keeps Caffe's numbers in each:

- Output size: Caffe rounds up (ceil mode) and then drops a last window
  that would start in the bottom/right padding.  At a fixed input size the
  export writes Caffe's window count as explicit pads, the end pad extended
  to reach the last window, in ONNX's floor mode (no rounding rule left to
  interpret); ONNX's shape inference then agrees too.
- AVE divisor: Caffe divides by the window clipped to the padded input.
  With explicit pads ONNX divides either by the whole kernel
  (count_include_pad=1) or by the cells inside the input (=0); the export
  picks the one that equals Caffe's divisors, or, where neither does (a
  window reaching past the padding), the second and a constant correction.
- With a dynamic input size the window count is not known when the graph
  is written, and runtimes disagree on ceil_mode (ONNX Runtime 1.20's
  AveragePool keeps the window that starts in the padding, 1.32's drops
  it; ONNX states the rule from opset 22 on): the graph computes
  Caffe's count and the end pad from the input's shape, pads the input
  explicitly (Pad with -inf or 0: pads may be tensors there, not in the
  pooling operators) and pools without pads in floor mode; AVE's sums are
  then rescaled to Caffe's divisors, also computed in the graph.

Bins that are not uniform windows (SPP's ADAPTIVE and PAPER layouts on most
sizes, WindowSPP) are pooled separably: a reduction over each row band,
then over each column band of the result (a rectangle's max/sum is the
max/sum over its rows of the row-wise max/sum).  Their bounds are constants
for a fixed size, or computed in the graph from the input's shape.
"""
import numpy as np
from onnx import TensorProto

from ... import spp_geometry as geometry
from ..registry import converter


def _arith(g, name, a, b):
    """An int64 binary op on tensors, an int being made a constant."""
    return g.node(name, [a, b if isinstance(b, str) else g.ints([b])])


# ---- uniform windows ------------------------------------------------------------

def _end_pads(size, kernel, stride, pad, count):
    """Per axis: the end pad that makes ONNX's floor mode give `count`
    windows of `kernel` every `stride` from -pad, and that floor count
    (which may exceed `count` when the windows stop short of the end)."""
    ends, natural = [], []
    for a, k, s, p, n in zip(size, kernel, stride, pad, count):
        end = max(0, (n - 1) * s + k - a - p)
        if p >= k or end >= k:
            # ONNX Runtime rejects pads >= kernel; Caffe rejects such windows too.
            raise ValueError(f"windows of {k} every {s} from -{p} cannot cover {n} positions "
                             f"on {a} cells (a window would start outside the input)")
        ends.append(end)
        natural.append((a + p + end - k) // s + 1)
    return ends, natural


def pool_windows(g, value, is_max, size, kernel, stride, pad, count):
    """Caffe's uniform windows on an (N, C, H, W) value of static spatial
    `size`: `count` windows per axis of `kernel` cells every `stride` from
    -`pad`, MAX or AVE (Caffe's divisor)."""
    ends, natural = _end_pads(size, kernel, stride, pad, count)
    attrs = dict(kernel_shape=list(kernel), strides=list(stride), pads=list(pad) + ends)
    correction = None
    if is_max:
        y = g.node("MaxPool", [value], **attrs)
    else:
        caffe, inside = _divisors(size, kernel, stride, pad, count)
        if np.all(caffe == kernel[0] * kernel[1]):
            include_pad = 1
        else:
            include_pad = 0
            if not np.array_equal(caffe, inside):
                correction = inside / caffe
        y = g.node("AveragePool", [value], count_include_pad=include_pad, **attrs)
    if tuple(natural) != tuple(count):
        y = g.slice(y, [0, 0], list(count), [2, 3])
    if correction is not None:
        y = g.node("Mul", [y, g.floats(correction.astype(np.float32), "divisor_ratio")])
    return y


def _divisors(size, kernel, stride, pad, count):
    """(Caffe's divisors, the number of each window's cells inside the
    input), as (count_h, count_w) float64 arrays."""
    bins = [geometry.uniform_bins(a, k, s, p, n)
            for a, k, s, p, n in zip(size, kernel, stride, pad, count)]
    caffe = np.outer(bins[0].divisors, bins[1].divisors).astype(np.float64)
    inside = np.outer(bins[0].ends - bins[0].starts, bins[1].ends - bins[1].starts)
    return caffe, inside.astype(np.float64)


def pool_windows_dynamic(g, value, is_max, kernel, stride, pad, ceil_mode):
    """Caffe's Pooling on an (N, C, H, W) value whose H and W are read from
    its shape: pooled_size's count, explicit padding, floor-mode pooling."""
    def op(name, a, b):
        return _arith(g, name, a, b)

    any_pad = any(pad)          # Caffe applies the drop rule to both axes or neither
    begins, ends, divisors = [], [], []
    for axis, k, s, p in zip((2, 3), kernel, stride, pad):
        size = g.shape(value, axis, axis + 1)
        span = op("Sub", op("Add", size, 2 * p), k)
        count = op("Add", op("Div", op("Add", span, s - 1) if ceil_mode else span, s), 1)
        if any_pad:
            # a last window starting in the bottom/right padding is dropped
            last_start = op("Mul", op("Sub", count, 1), s)
            starts_in_pad = g.cast(g.node("GreaterOrEqual", [last_start, op("Add", size, p)]),
                                   TensorProto.INT64)
            count = op("Sub", count, starts_in_pad)
        end = op("Max", op("Sub", op("Sub", op("Add", op("Mul", op("Sub", count, 1), s), k),
                                         size), p), 0)
        begins.append(p)
        ends.append(end)
        if not is_max:
            # Caffe's divisor: each window clipped to the padded input
            starts = op("Sub", op("Mul", g.node("Range", [g.scalar_int(0), g.squeeze(count, [0]),
                                                          g.scalar_int(1)]), s), p)
            divisors.append(op("Sub", g.node("Min", [op("Add", starts, k), op("Add", size, p)]),
                               starts))
    pads = g.vector([0, 0] + begins + [0, 0] + ends, "pads")
    fill = g.initializer(np.asarray(-np.inf if is_max else 0, np.float32), "pad_value")
    padded = g.node("Pad", [value, pads, fill])
    attrs = dict(kernel_shape=list(kernel), strides=list(stride))
    if is_max:
        return g.node("MaxPool", [padded], **attrs)
    # AveragePool divides by the whole kernel here; rescale to Caffe's divisors.
    area = g.floats(np.float32(kernel[0] * kernel[1]), "kernel_area")
    ratio = g.node("Div", [area, divisor_grid(g, *divisors)])
    return g.node("Mul", [g.node("AveragePool", [padded], **attrs), ratio])


# ---- bins given per axis -----------------------------------------------------

def pool_bins(g, value, is_max, row_bounds, col_bounds, divisors=None):
    """Separable pooling of an (N, C, H, W) value over bins given per axis
    as lists of (start, end) pairs, ints or 1-element int64 tensors; AVE
    divides by `divisors` (an (n_h, n_w) float tensor)."""
    op = "ReduceMax" if is_max else "ReduceSum"
    for axis, bounds in ((2, row_bounds), (3, col_bounds)):
        parts = []
        for start, end in bounds:
            band = value if (start, end) == (0, None) else \
                g.slice(value, _bound(start), _bound(end), [axis])
            parts.append(g.reduce(op, band, [axis]))
        value = parts[0] if len(parts) == 1 else g.node("Concat", parts, axis=axis)
    if not is_max:
        value = g.node("Div", [value, divisors])
    return value


def _bound(v):
    return v if isinstance(v, str) else [int(v)]


def static_bounds(bins, size):
    """(start, end) pairs of Bins on an axis of `size` cells; a bin spanning
    the whole axis is (0, None): no slice."""
    return [(0, None) if (s, e) == (0, size) else (int(s), int(e))
            for s, e in zip(bins.starts, bins.ends)]


def dynamic_bins(g, method, size, n):
    """The n bins of an SPP `method` on an axis whose length is the 1-D
    int64 tensor `size`, as (starts, ends, divisors) 1-D int64 tensors of
    length n: spp_geometry's formulas written as graph arithmetic."""
    i = g.ints(np.arange(n), "bin_index")

    def op(name, a, b):
        return _arith(g, name, a, b)

    if method == geometry.ADAPTIVE:
        # [floor(i*a/n), ceil((i+1)*a/n))
        starts = op("Div", op("Mul", i, size), n)
        ends = op("Div", op("Add", op("Mul", op("Add", i, 1), size), n - 1), n)
        return starts, ends, op("Sub", ends, starts)
    if method == geometry.PAPER:
        # window ceil(a/n), stride floor(a/n), from 0 (never past the end)
        window = op("Div", op("Add", size, n - 1), n)
        starts = op("Mul", i, op("Div", size, n))
        ends = op("Min", op("Add", starts, window), size)
        return starts, ends, op("Sub", ends, starts)
    # CAFFE: kernel = stride = ceil(a/n), pad (kernel*n - a + 1) // 2, clipped
    # windows, divisor clipped to the padded map.
    kernel = op("Div", op("Add", size, n - 1), n)
    pad = op("Div", op("Add", op("Sub", op("Mul", kernel, n), size), 1), 2)
    raw = op("Sub", op("Mul", i, kernel), pad)
    raw_end = op("Add", raw, kernel)
    starts = op("Max", raw, 0)
    ends = op("Min", raw_end, size)
    divisors = op("Sub", op("Min", raw_end, op("Add", size, pad)), raw)
    return starts, ends, divisors


def split_bounds(g, starts, ends, n):
    """The (start, end) 1-element tensors of each of n bins."""
    return [(g.slice(starts, [j], [j + 1], [0]), g.slice(ends, [j], [j + 1], [0]))
            for j in range(n)]


def divisor_grid(g, row_divisors, col_divisors):
    """(n_h, n_w) float divisors from per-axis int64 ones (tensors)."""
    rows = g.unsqueeze(g.to_float(row_divisors), [1])
    cols = g.unsqueeze(g.to_float(col_divisors), [0])
    return g.node("Mul", [rows, cols])


def pool_dynamic_level(g, value, is_max, method, n):
    """One n x n SPP level of `value` (N, C, H, W) whose H and W are read
    from its shape: correct at every input size."""
    bounds, divisors = [], []
    for axis in (2, 3):
        starts, ends, div = dynamic_bins(g, method, g.shape(value, axis, axis + 1), n)
        bounds.append(split_bounds(g, starts, ends, n))
        divisors.append(div)
    grid = None if is_max else divisor_grid(g, *divisors)
    return pool_bins(g, value, is_max, bounds[0], bounds[1], grid)


# ---- the layers ----------------------------------------------------------------

@converter("Pooling")
def pooling(x):
    layer = x.layer
    if len(x.top_shapes) > 1:
        raise x.error("the argmax top (Caffe's per-plane h*W + w mask) has no ONNX form")
    value = x.inputs[0]
    if layer.global_pooling:
        return x.g.node("GlobalMaxPool" if layer.is_max else "GlobalAveragePool", [value])
    if x.is_dynamic(0, (2, 3)):
        return pool_windows_dynamic(x.g, value, layer.is_max, layer.window, layer.stride,
                                    layer.pad, layer.ceil_mode)
    return pool_windows(x.g, value, layer.is_max, x.bottom_shapes[0][2:], layer.window,
                        layer.stride, layer.pad, layer.out_shape)


@converter("ROIPooling")
def roi_pooling(x):
    """ONNX's MaxRoiPool is the Fast R-CNN fork's layer: corners rounded
    half away from zero after scaling, float bin edges floor/ceil'ed,
    empty bins 0 (the tests compare them on random rois)."""
    layer = x.layer
    rois = x.g.reshape(x.inputs[1], [-1, 5])
    return x.g.node("MaxRoiPool", [x.inputs[0], rois],
                    pooled_shape=[layer.pooled_h, layer.pooled_w],
                    spatial_scale=float(layer.spatial_scale))
