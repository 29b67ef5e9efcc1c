"""Layers that move, cut, combine or reduce blobs: Concat, Slice, Split,
Eltwise, Flatten, Reshape, Crop, Tile, Reduction, ArgMax, Filter,
BatchReindex, Silence."""
import numpy as np
from onnx import TensorProto

from ...layer import canonical_axis
from ...proto import caffe_pb2
from ..graph import INT64_MAX
from ..registry import converter

_Eltwise = caffe_pb2.EltwiseParameter
_Reduction = caffe_pb2.ReductionParameter


@converter("Split")
def split(x):
    # Every top is the bottom's data: no node.
    return [x.inputs[0]] * len(x.top_shapes)


@converter("Silence")
def silence(x):
    return []


@converter("Concat")
def concat(x):
    if len(x.inputs) == 1:
        return x.inputs[0]
    return x.g.node("Concat", x.inputs, axis=x.layer.axis)


@converter("Slice")
def slice_(x):
    layer = x.layer
    if len(x.top_shapes) == 1:
        return x.inputs[0]
    axis = layer.axis
    sizes = [shape[axis] for shape in x.top_shapes]
    dynamic = x.is_dynamic(0, [axis])
    if dynamic and not layer.points:
        # equal parts of an axis whose length follows the inputs
        attrs = {"num_outputs": len(sizes)} if x.g.opset >= 18 else {}
        return x.g.node("Split", [x.inputs[0]], len(sizes), axis=axis, **attrs)
    bounds = [int(b) for b in np.cumsum([0] + sizes)]
    if dynamic:
        bounds[-1] = INT64_MAX           # the last part runs to the end, whatever it is
    return [x.g.slice(x.inputs[0], [lo], [hi], [axis]) for lo, hi in zip(bounds[:-1], bounds[1:])]


@converter("Eltwise")
def eltwise(x):
    layer, g = x.layer, x.g
    if layer.op == _Eltwise.PROD:
        y = x.inputs[0]
        for value in x.inputs[1:]:
            y = g.node("Mul", [y, value])
        return y
    if layer.op == _Eltwise.MAX:
        return g.node("Max", x.inputs)
    terms = [value if c == 1 else g.node("Mul", [value, g.floats(c, "coeff")])
             for value, c in zip(x.inputs, layer.coeffs)]
    return g.node("Sum", terms)


def _replace_axes(x, start, end, dims):
    """Bottom 0 with axes [start, end) replaced by `dims` (ONNX Reshape's:
    0 copies the input's dim at that position, one -1 is inferred at run
    time); the axes before keep theirs through 0s, those after are read
    from the input where they are dynamic."""
    tail = x.dims(0, range(end, len(x.bottom_shapes[0])))
    return x.g.reshape(x.inputs[0], [0] * start + list(dims) + tail)


@converter("Flatten")
def flatten(x):
    shape = x.bottom_shapes[0]
    p = x.layer.param.flatten_param
    start = canonical_axis(x.layer, p.axis, shape)
    end = canonical_axis(x.layer, p.end_axis, shape)
    return _replace_axes(x, start, end + 1, [-1])


@converter("Reshape")
def reshape(x):
    """Caffe's new dims for axes [axis, axis + num_axes): its 0 copies the
    bottom's dim at the same position and its -1 is inferred, exactly
    ONNX's 0 and -1 there."""
    shape = x.bottom_shapes[0]
    p = x.layer.param.reshape_param
    ndim = len(shape)
    start = p.axis if p.axis >= 0 else ndim + p.axis + 1
    end = ndim if p.num_axes == -1 else start + p.num_axes
    return _replace_axes(x, start, end, x.layer.dims)


@converter("Crop")
def crop(x):
    """Slice bottom 0 at the layer's offsets to bottom 1's size (read from
    bottom 1 where it is dynamic)."""
    layer = x.layer
    shape = x.bottom_shapes[0]
    start = canonical_axis(layer, layer.param.crop_param.axis, shape)
    # the cropped axes that change: moved, cut, or following the inputs
    axes = [a for a in range(start, len(shape))
            if layer.offsets[a] or x.top_shapes[0][a] != shape[a] or x.is_dynamic(0, [a])
            or x.is_dynamic(1, [a])]
    if not axes:
        return x.inputs[0]
    starts = [layer.offsets[a] for a in axes]
    sizes = x.dims(1, axes)
    ends = [s + o if isinstance(s, int) else x.g.node("Add", [s, x.g.ints([o])])
            for s, o in zip(sizes, starts)]
    return x.g.slice(x.inputs[0], starts, x.g.vector(ends, "ends"), axes)


@converter("Tile")
def tile(x):
    # top[outer, t, inner] = bottom[outer, inner], inner the axes from
    # `axis` on: ONNX's Tile along that axis.
    shape = x.bottom_shapes[0]
    axis = canonical_axis(x.layer, x.layer.param.tile_param.axis, shape)
    repeats = [1] * len(shape)
    repeats[axis] = x.layer.tiles
    return x.g.node("Tile", [x.inputs[0], x.g.ints(repeats, "repeats")])


@converter("Reduction")
def reduction(x):
    """The axes from `axis` on, flattened and reduced, times coeff (for
    MEAN coeff / count, as the layer computes it in float)."""
    layer, g = x.layer, x.g
    shape = x.bottom_shapes[0]
    axis = canonical_axis(layer, layer.param.reduction_param.axis, shape)
    rows = g.reshape(x.inputs[0], [0] * axis + [-1])
    if layer.op == _Reduction.ASUM:
        rows = g.node("Abs", [rows])
    elif layer.op == _Reduction.SUMSQ:
        rows = g.node("Mul", [rows, rows])
    if x.is_dynamic(0, range(axis, len(shape))) and layer.op == _Reduction.MEAN:
        y = g.reduce("ReduceMean", rows, [axis], keepdims=False)
        coeff = np.float32(layer.param.reduction_param.coeff)
    else:
        y = g.reduce("ReduceSum", rows, [axis], keepdims=False)
        coeff = layer.coeff
    return y if coeff == 1 else g.node("Mul", [y, g.floats(coeff, "coeff")])


@converter("ArgMax")
def argmax(x):
    """Caffe's top_k with ties to the larger index: TopK (which breaks ties
    toward the smaller index) on the axis reversed, indices mapped back."""
    layer, g = x.layer, x.g
    shape = x.bottom_shapes[0]
    if layer.has_axis:
        axis = canonical_axis(layer, layer.param.argmax_param.axis, shape)
        value = x.inputs[0]
        dim = shape[axis]
        if x.is_dynamic(0, [axis]):
            raise x.error(f"the search axis {axis} changes size with the inputs")
    else:
        axis = 1
        value = g.reshape(x.inputs[0], [0, -1])
        dim = layer.dim
        if x.is_dynamic(0, range(1, len(shape))):
            raise x.error("the values per item change in number with the inputs")
    reversed_ = g.slice(value, [-1], [-INT64_MAX], [axis], steps=[-1])
    values, order = g.node("TopK", [reversed_, g.ints([layer.top_k], "k")], 2, axis=axis,
                           largest=1, sorted=1)
    index = g.to_float(g.node("Sub", [g.initializer(np.asarray(dim - 1, np.int64), "last"),
                                      order]))
    if layer.has_axis:
        return values if layer.out_max_val else index
    # (N, top_k) -> (N, 1, top_k[, 1...]), or (N, 2, top_k) indices then values
    pairs = g.node("Concat", [g.unsqueeze(index, [1]), g.unsqueeze(values, [1])], axis=1) \
        if layer.out_max_val else g.unsqueeze(index, [1])
    extra = len(x.top_shapes[0]) - 3
    return g.unsqueeze(pairs, list(range(3, 3 + extra))) if extra else pairs


@converter("Filter")
def filter_(x):
    """The items whose selector (the last bottom) is nonzero."""
    g = x.g
    keep = g.cast(g.reshape(x.inputs[-1], [-1]), TensorProto.BOOL)
    return [g.node("Compress", [value, keep], axis=0) for value in x.inputs[:-1]]


@converter("BatchReindex")
def batch_reindex(x):
    index = x.g.cast(x.inputs[1], TensorProto.INT64)       # Caffe's cast: truncation
    return x.g.node("Gather", [x.inputs[0], index], axis=0)
