"""Elementwise layers: the activations, Power, Exp, Log, Threshold, Dropout.
Each reads its constants from the sppcaffe layer, which holds them in
float32 as Caffe computes with them."""
import numpy as np
from onnx import TensorProto, helper

from ...proto import caffe_pb2
from ..registry import converter


def _mul(x, value, factor):
    if factor == 1:
        return value
    return x.g.node("Mul", [value, x.g.floats(np.float32(factor), "factor")])


def _add(x, value, term):
    if term == 0:
        return value
    return x.g.node("Add", [value, x.g.floats(np.float32(term), "term")])


@converter("ReLU")
def relu(x):
    slope = x.layer.negative_slope
    if slope == 0:
        return x.g.node("Relu", x.inputs)
    # max(x, 0) + slope * min(x, 0)
    return x.g.node("LeakyRelu", x.inputs, alpha=float(slope))


@converter("Sigmoid")
def sigmoid(x):
    return x.g.node("Sigmoid", x.inputs)


@converter("TanH")
def tanh(x):
    return x.g.node("Tanh", x.inputs)


@converter("AbsVal")
def absval(x):
    return x.g.node("Abs", x.inputs)


@converter("BNLL")
def bnll(x):
    # log(1 + e^x), evaluated without overflow by ONNX Runtime as by Caffe.
    return x.g.node("Softplus", x.inputs)


@converter("ELU")
def elu(x):
    return x.g.node("Elu", x.inputs, alpha=float(x.layer.alpha))


@converter("PReLU")
def prelu(x):
    layer = x.layer
    ndim = len(x.bottom_shapes[0])
    if layer.shared:
        slope = x.weight(0, "scalar", lambda a: a.reshape(1))
    else:
        # one slope per channel (axis 1), broadcast over the axes after it
        slope = x.weight(0, "per_channel", lambda a: a.reshape((-1,) + (1,) * (ndim - 2)))
    return x.g.node("PRelu", [x.inputs[0], slope])


@converter("Clip")
def clip(x):
    # Caffe's max(min, min(x, max)) as written: ONNX's Clip gives max, not
    # min, where min > max.
    layer = x.layer
    below_max = x.g.node("Min", [x.inputs[0], x.g.floats(layer.max, "max")])
    return x.g.node("Max", [below_max, x.g.floats(layer.min, "min")])


@converter("Swish")
def swish(x):
    gate = x.g.node("Sigmoid", [_mul(x, x.inputs[0], x.layer.beta)])
    return x.g.node("Mul", [x.inputs[0], gate])


@converter("Threshold")
def threshold(x):
    above = x.g.node("Greater", [x.inputs[0], x.g.floats(x.layer.threshold, "threshold")])
    return x.g.to_float(above)


@converter("Exp")
def exp(x):
    layer = x.layer
    # base^(shift + scale x) = base^shift * e^(scale ln(base) x), as Caffe splits it
    return _mul(x, x.g.node("Exp", [_mul(x, x.inputs[0], layer.inner)]), layer.outer)


@converter("Log")
def log(x):
    layer = x.layer
    shifted = _add(x, _mul(x, x.inputs[0], layer.scale), layer.shift)
    return _mul(x, x.g.node("Log", [shifted]), layer.base_scale)


@converter("Power")
def power(x):
    layer = x.layer
    if layer.diff_scale == 0:
        # A constant (power or scale 0), of the input's shape.
        value = helper.make_tensor("value", TensorProto.FLOAT, [1], [layer._constant()])
        return x.g.node("ConstantOfShape", [x.g.shape(x.inputs[0])], value=value)
    y = _add(x, _mul(x, x.inputs[0], layer.scale), layer.shift)
    if layer.power != 1:
        y = x.g.node("Pow", [y, x.g.floats(layer.power, "power")])
    return y


@converter("Dropout")
def dropout(x):
    if x.layer.phase == caffe_pb2.TRAIN:
        raise x.error("drops random units in the TRAIN phase; export the TEST phase, where "
                      "it is the identity")
    return x.inputs[0]
