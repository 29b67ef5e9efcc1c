"""LRN, BatchNorm, Scale, Bias and MVN.

LRN: Caffe's ACROSS_CHANNELS scale is k + alpha/n * (sum of squares over n
channels), ONNX's LRN exactly (it divides alpha by size too).  WITHIN_CHANNEL
has no ONNX operator: it is Caffe's own composition, x / (1 + alpha * box
average of x^2)^beta, the average an AveragePool over the zero-padded n x n
box that counts the padding (divisor n^2 everywhere, as Caffe's).

BatchNorm: the stored sums are divided by the scale-factor blob (0 meaning
"no statistics yet": zeros), as the layer does, and become the mean and
variance of ONNX's BatchNormalization.
"""
import numpy as np

from ...layer import canonical_axis
from ..registry import converter


@converter("LRN")
def lrn(x):
    layer, g = x.layer, x.g
    value = x.inputs[0]
    p = layer.param.lrn_param
    if not layer.within:
        return g.node("LRN", [value], size=layer.size, alpha=float(p.alpha),
                      beta=float(p.beta), bias=float(p.k))
    half = (layer.size - 1) // 2
    average = g.node("AveragePool", [g.node("Mul", [value, value])],
                     kernel_shape=[layer.size, layer.size], pads=[half] * 4, count_include_pad=1)
    scale = g.node("Add", [g.node("Mul", [average, g.floats(np.float32(p.alpha), "alpha")]),
                           g.floats(np.float32(1), "one")])
    return g.node("Div", [value, g.node("Pow", [scale, g.floats(np.float32(layer.beta),
                                                                  "beta")])])


@converter("BatchNorm")
def batch_norm(x):
    layer, g = x.layer, x.g
    value = x.inputs[0]
    ndim = len(x.bottom_shapes[0])
    eps = np.float32(layer.eps)
    if not layer.use_global_stats:
        x.note("normalises with the statistics of the batch it is given (use_global_stats "
               "false); the running averages the layer updates are not part of the graph")
        axes = [a for a in range(ndim) if a != 1] if ndim > 1 else [0]
        centered = g.node("Sub", [value, g.reduce("ReduceMean", value, axes)])
        variance = g.reduce("ReduceMean", g.node("Mul", [centered, centered]), axes)
        stddev = g.node("Sqrt", [g.node("Add", [variance, g.floats(eps, "eps")])])
        return g.node("Div", [centered, stddev])
    factor = layer.blobs[2].data.reshape(-1)[0]
    inverse = np.float32(0) if factor == 0 else np.float32(1) / factor
    mean = x.weight(0, "mean", lambda a: a * inverse)
    variance = x.weight(1, "variance", lambda a: a * inverse)
    if ndim < 2:
        stddev = g.node("Sqrt", [g.node("Add", [variance, g.floats(eps, "eps")])])
        return g.node("Div", [g.node("Sub", [value, mean]), stddev])
    channels = x.bottom_shapes[0][1]
    ones = g.floats(np.ones(channels, np.float32), "ones")
    zeros = g.floats(np.zeros(channels, np.float32), "zeros")
    return g.node("BatchNormalization", [value, ones, zeros, mean, variance], epsilon=float(eps))


def _operand(x, value_index, blob_index, axis_param):
    """The operand of Scale or Bias shaped to broadcast against bottom 0:
    its axes at [axis, axis + k), ones after them."""
    shape = x.bottom_shapes[0]
    if blob_index is None:
        operand_shape = x.bottom_shapes[value_index]
    else:
        operand_shape = x.layer.blobs[blob_index].shape
    axis = 0 if len(operand_shape) == 0 else canonical_axis(x.layer, axis_param, shape)
    trailing = len(shape) - axis - len(operand_shape)
    if blob_index is not None:
        return x.weight(blob_index, "broadcast",
                        lambda a: a.reshape(tuple(operand_shape) + (1,) * trailing))
    value = x.inputs[value_index]
    if trailing > 0:
        value = x.g.unsqueeze(value, list(range(len(operand_shape), len(operand_shape) + trailing)))
    return value


@converter("Scale")
def scale(x):
    layer = x.layer
    p = layer.param.scale_param
    two = len(x.inputs) > 1
    y = x.g.node("Mul", [x.inputs[0], _operand(x, 1, None if two else 0, p.axis)])
    if layer._bias is not None:
        y = x.g.node("Add", [y, _operand(x, None, len(layer.blobs) - 1, p.axis)])
    return y


@converter("Bias")
def bias(x):
    two = len(x.inputs) > 1
    return x.g.node("Add", [x.inputs[0], _operand(x, 1, None if two else 0,
                                                   x.layer.param.bias_param.axis)])


@converter("MVN")
def mvn(x):
    layer, g = x.layer, x.g
    shape = x.bottom_shapes[0]
    value = x.inputs[0]
    if len(shape) < 4:            # the top has Caffe's legacy 4 axes
        value = g.unsqueeze(value, list(range(len(shape), 4)))
    axes = [1, 2, 3] if layer.across_channels else [2, 3]
    y = g.node("Sub", [value, g.reduce("ReduceMean", value, axes)])
    if not layer.normalize_variance:
        return y
    stddev = g.node("Sqrt", [g.reduce("ReduceMean", g.node("Mul", [y, y]), axes)])
    stddev = g.node("Add", [stddev, g.floats(layer.eps, "eps")])
    return g.node("Div", [y, stddev])

