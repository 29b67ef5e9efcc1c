"""Softmax, SoftmaxWithLoss, EuclideanLoss and Accuracy.

The loss layers export their forward value (a TEST-phase net's reported
loss and accuracy), with Caffe's details: SoftmaxWithLoss clamps the picked
probability at FLT_MIN before the log, sums in double precision and divides
by its normalization mode's count; labels are truncated to integers and
ignore_label masks positions out; Accuracy counts a tie against the true
class.
"""
import numpy as np
from onnx import TensorProto

from ...layers.loss import FLT_MIN
from ...proto import caffe_pb2
from ..registry import converter

_Modes = caffe_pb2.LossParameter


@converter("Softmax")
def softmax(x):
    return x.g.node("Softmax", x.inputs, axis=x.layer.axis)


class _Labelled:
    """Predictions seen as (outer, classes, inner) and their labels as
    (outer, 1, inner) int64, with the mask of the positions that count
    (None when no label is ignored) and labels safe to gather with."""

    def __init__(self, x, targets):
        g = self.g = x.g
        ndim = len(x.bottom_shapes[0])
        axis = targets.axis
        outer, classes, inner = x.merged_dims(0, [range(axis), [axis], range(axis + 1, ndim)])
        self.outer, self.inner = outer, inner
        self.scores = x.reshape(x.inputs[0], [outer, classes, inner])
        self.labels = g.cast(x.reshape(x.inputs[1], [outer, 1, inner]), TensorProto.INT64)
        self.valid, self.safe = None, self.labels
        if targets.ignore_label is not None:
            ignore = g.initializer(np.asarray(targets.ignore_label, np.int64), "ignore_label")
            self.valid = g.node("Not", [g.node("Equal", [self.labels, ignore])])
            self.safe = g.node("Where", [self.valid, self.labels,
                                         g.initializer(np.asarray(0, np.int64), "zero")])

    def masked(self, value, zero):
        return value if self.valid is None else self.g.node("Where", [self.valid, value, zero])

    def count(self, x):
        """Number of positions that count, as a double scalar."""
        if self.valid is None:
            return _scalar(self.g, x.product([self.outer, self.inner]), TensorProto.DOUBLE)
        return self.g.reduce("ReduceSum", self.g.cast(self.valid, TensorProto.DOUBLE), [0, 1, 2],
                             keepdims=False)


def _scalar(g, dims, dtype):
    """A product of dims (ints or 1-D tensors) as a scalar of `dtype`."""
    if isinstance(dims, str):
        return g.cast(g.squeeze(dims, [0]), dtype)
    return g.initializer(np.asarray(dims, np.float64 if dtype == TensorProto.DOUBLE
                                    else np.float32), "count")


@converter("SoftmaxWithLoss")
def softmax_with_loss(x):
    layer, g = x.layer, x.g
    data = _Labelled(x, layer.targets)
    prob = g.node("Softmax", [data.scores], axis=1)
    picked = g.cast(g.node("GatherElements", [prob, data.safe], axis=1), TensorProto.DOUBLE)
    floor = g.initializer(np.asarray(FLT_MIN, np.float64), "FLT_MIN")
    logs = data.masked(g.node("Log", [g.node("Max", [picked, floor])]),
                       g.initializer(np.asarray(0.0), "zero_double"))
    total = g.reduce("ReduceSum", logs, [0, 1, 2], keepdims=False)
    mode = layer.normalization
    if mode == _Modes.VALID:
        normalizer = data.count(x)
    elif mode == _Modes.FULL:
        normalizer = _scalar(g, x.product([data.outer, data.inner]), TensorProto.DOUBLE)
    elif mode == _Modes.BATCH_SIZE:
        normalizer = _scalar(g, data.outer, TensorProto.DOUBLE)
    else:
        normalizer = g.initializer(np.asarray(1.0), "one_double")
    normalizer = g.node("Max", [normalizer, g.initializer(np.asarray(1.0), "one_double")])
    loss = g.to_float(g.node("Neg", [g.node("Div", [total, normalizer])]))
    if len(x.top_shapes) == 1:
        return loss
    return [loss, g.reshape(prob, [g.shape(x.inputs[0])])]


@converter("EuclideanLoss")
def euclidean_loss(x):
    g = x.g
    other = g.reshape(x.inputs[1], [g.shape(x.inputs[0])])
    diff = g.node("Sub", [x.inputs[0], other])
    axes = list(range(len(x.bottom_shapes[0])))
    total = g.reduce("ReduceSumSquare", diff, axes, keepdims=False)
    num = _scalar(g, x.dims(0, [0])[0], TensorProto.FLOAT)
    return g.node("Div", [g.node("Div", [total, num]), g.floats(np.float32(2), "two")])


@converter("Accuracy")
def accuracy(x):
    layer, g = x.layer, x.g
    data = _Labelled(x, layer.targets)
    true_score = g.node("GatherElements", [data.scores, data.safe], axis=1)
    # classes scoring at least as high as the true one, itself excluded
    rivals = g.reduce("ReduceSum", g.to_float(g.node("GreaterOrEqual", [data.scores, true_score])),
                      [1])
    hit = g.node("Less", [rivals, g.floats(np.float32(layer.top_k + 1), "top_k_plus_one")])
    if data.valid is not None:
        hit = g.node("And", [hit, data.valid])
    hits = g.reduce("ReduceSum", g.to_float(hit), [0, 1, 2], keepdims=False)
    count = g.to_float(data.count(x))
    one = g.floats(np.float32(1), "one")
    result = g.node("Div", [hits, g.node("Max", [count, one])])
    if len(x.top_shapes) == 1:
        return result
    classes = layer.targets.num_classes
    index = g.ints(np.arange(classes), "classes")
    is_class = g.node("Equal", [data.labels, g.reshape(index, [1, classes, 1])])
    counted = is_class if data.valid is None else g.node("And", [is_class, data.valid])
    totals = g.reduce("ReduceSum", g.to_float(counted), [0, 2], keepdims=False)
    class_hits = g.reduce("ReduceSum", g.to_float(g.node("And", [is_class, hit])), [0, 2],
                          keepdims=False)
    return [result, g.node("Div", [class_hits, g.node("Max", [totals, one])])]
