"""SPP and WindowSPP.

SPP, each level: at a fixed input size the level's bins (spp_geometry, the
layer's own arithmetic) are checked against uniform windows; when they are
uniform (CAFFE always; PAPER always; ADAPTIVE when it coincides, e.g. a 13x13
map into 6, 3, 2, 1 bins) the level is one MaxPool/AveragePool, otherwise a
separable reduction per bin band.  With a dynamic input size the bins are
computed in the graph from the input's height and width with the method's
integer formulas, so the one graph is exact at every size (at the sizes
where sppcaffe refuses CAFFE's or PAPER's geometry -- pad >= kernel, a map
smaller than the bins -- the graph pools what the formulas give instead of
failing).  Levels are flattened (channel, row, column) and concatenated, as
the layer's output.

WindowSPP: each window is mapped to map cells as sppcaffe.detection.mapping
does (in double precision, as it does), cropped from its image's map and
pooled with the dynamic ADAPTIVE levels, one window per Loop iteration.
"""
import numpy as np
from onnx import TensorProto, helper

from ... import spp_geometry as geometry
from ...detection import mapping
from ..registry import converter
from .pooling import pool_bins, pool_dynamic_level, pool_windows, static_bounds


def uniform_window(method, size, n, bins):
    """(kernel, stride, pad) of uniform windows giving exactly `bins` (cells
    read and divisors) on an axis of `size` cells, or None."""
    if method == geometry.CAFFE:
        kernel, pad = geometry.caffe_kernel_pad(size, n)
        stride = kernel
    else:
        kernel, pad = int(bins.ends[0] - bins.starts[0]), 0
        stride = int(bins.starts[1] - bins.starts[0]) if n > 1 else 1
    if stride < 1 or (n - 1) * stride - pad >= size:     # a window outside the map
        return None
    window = geometry.uniform_bins(size, kernel, stride, pad, n)
    same = all(np.array_equal(a, b) for a, b in zip(window, bins))
    return (kernel, stride, pad) if same else None


def pool_static_level(g, value, is_max, method, hw, n):
    """One n x n level of a value whose (H, W) = `hw` is fixed."""
    bins = [geometry.bins(method, size, n) for size in hw]
    windows = [uniform_window(method, size, n, b) for size, b in zip(hw, bins)]
    if all(windows):
        kernel, stride, pad = zip(*windows)
        return pool_windows(g, value, is_max, hw, kernel, stride, pad, (n, n))
    divisors = None if is_max else g.floats(
        np.outer(bins[0].divisors, bins[1].divisors).astype(np.float32), "divisors")
    return pool_bins(g, value, is_max, static_bounds(bins[0], hw[0]),
                     static_bounds(bins[1], hw[1]), divisors)


def pyramid(g, value, is_max, method, levels, hw=None):
    """The levels of `value` flattened and concatenated: (N, C * sum n^2).
    `hw` fixed sizes, or None to read them from the value's shape."""
    flat = []
    for n in levels:
        level = pool_dynamic_level(g, value, is_max, method, n) if hw is None \
            else pool_static_level(g, value, is_max, method, hw, n)
        flat.append(g.node("Flatten", [level], axis=1))
    return flat[0] if len(flat) == 1 else g.node("Concat", flat, axis=1)


@converter("SPP")
def spp(x):
    layer = x.layer
    value = x.inputs[0]
    hw = None if x.is_dynamic(0, (2, 3)) else x.bottom_shapes[0][2:]
    if layer.bvlc_single_level:
        # BVLC's one-level pyramid is the Pooling top itself, (N, C, 1, 1).
        return pool_dynamic_level(x.g, value, layer.is_max, layer.method, 1) if hw is None \
            else pool_static_level(x.g, value, layer.is_max, layer.method, hw, 1)
    return pyramid(x.g, value, layer.is_max, layer.method, layer.levels, hw)


# ---- WindowSPP -----------------------------------------------------------------

def _double(g, value):
    return g.cast(value, TensorProto.DOUBLE)


def _d(g, number):
    return g.initializer(np.asarray([number], np.float64), "const")


def window_cells(g, rois, feature, layer):
    """(R, 5) int64 rows [image, x1', y1', x2', y2'] of map cells, as
    mapping.boxes_to_cells computes them from (R, 5) rois [image, x1, y1,
    x2, y2] (float64 arithmetic on the float32 inputs, as it does)."""
    rows = _double(g, g.reshape(rois, [-1, 5]))
    image = g.slice(rows, [0], [1], [1])
    first = g.slice(rows, [1], [3], [1])              # x1, y1
    last = g.slice(rows, [3], [5], [1])               # x2, y2
    stride = _d(g, float(layer.stride))
    one, half = _d(g, 1.0), _d(g, 0.5)
    if layer.mapping == mapping.PAPER:
        first = g.node("Add", [g.node("Floor", [g.node("Div", [first, stride])]), one])
        last = g.node("Sub", [g.node("Ceil", [g.node("Div", [last, stride])]), one])
    else:
        offset0 = _d(g, float(layer.released.offset0))
        offset = _d(g, float(layer.released.offset))
        first = g.node("Add", [first, one])               # 1-based pixels
        last = g.node("Add", [last, one])
        first = g.node("Floor", [g.node("Add", [g.node("Div", [
            g.node("Add", [g.node("Sub", [first, offset0]), offset]), stride]), half])])
        last = g.node("Ceil", [g.node("Sub", [g.node("Div", [
            g.node("Sub", [g.node("Sub", [last, offset0]), offset]), stride]), half])])
    # A window smaller than a cell collapses to its middle cell.
    empty = g.node("Greater", [first, last])
    middle = g.node("Floor", [g.node("Div", [g.node("Add", [first, last]), _d(g, 2.0)])])
    first = g.node("Where", [empty, middle, first])
    last = g.node("Where", [empty, middle, last])
    # Clamped to the map: x to [0, W - 1], y to [0, H - 1].
    limit = _double(g, g.node("Sub", [g.vector([g.shape(feature, 3, 4), g.shape(feature, 2, 3)]),
                                      g.ints([1])]))
    zero = _d(g, 0.0)
    first = g.node("Min", [g.node("Max", [first, zero]), limit])
    last = g.node("Min", [g.node("Max", [last, zero]), limit])
    return g.cast(g.node("Concat", [image, first, last], axis=1), TensorProto.INT64)


@converter("WindowSPP")
def window_spp(x):
    layer, g = x.layer, x.g
    feature = x.inputs[0]
    cells = window_cells(g, x.inputs[1], feature, layer)
    length = x.top_shapes[0][1]
    body = g.subgraph()
    step = body.fresh("window")
    cond_in, cond_out = body.fresh("cond_in"), body.fresh("cond_out")
    row = body.node("Gather", [cells, step], axis=0)                  # (5,)
    image, x1, y1, x2, y2 = (body.slice(row, [k], [k + 1], [0]) for k in range(5))
    one = body.ints([1])
    plane = body.slice(feature, image, body.node("Add", [image, one]), [0])
    crop = body.slice(plane, body.node("Concat", [y1, x1], axis=0),
                      body.node("Concat", [body.node("Add", [y2, one]),
                                           body.node("Add", [x2, one])], axis=0), [2, 3])
    is_max = layer.pool == "max"
    pooled = body.squeeze(pyramid(body, crop, is_max, geometry.ADAPTIVE, layer.levels), [0])
    body.node("Identity", [cond_in], [cond_out])
    graph = body.to_proto(f"{x.name}_window", [
        helper.make_tensor_value_info(step, TensorProto.INT64, []),
        helper.make_tensor_value_info(cond_in, TensorProto.BOOL, [])], [
        helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
        helper.make_tensor_value_info(pooled, TensorProto.FLOAT, [length])])
    count = g.squeeze(g.shape(cells, 0, 1), [0])
    keep_going = g.initializer(np.asarray(True), "true")
    return g.node("Loop", [count, keep_going], body=graph)
