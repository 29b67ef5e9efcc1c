"""Softmax, the loss layers (SoftmaxWithLoss, EuclideanLoss) and Accuracy.

A loss layer's top is a 0-axis blob; the net writes the loss weight into
its diff before backward, and backward scales the gradient by it.  The
helpers here (softmax, label bookkeeping, normalization, device sums) also
serve the loss layers of loss_more.py.
"""
import math

import numpy as np

from ..backends import gpu
from ..blob import DTYPE
from ..layer import Layer, canonical_axis, register
from ..proto import caffe_pb2


FLT_MIN = np.finfo(DTYPE).tiny
# What truncated_labels gives a value that names no integer: no class, and
# never equal to an ignore_label (an int32).
INVALID_LABEL = np.iinfo(np.int64).min


def truncated_labels(values):
    """Float labels as int64, truncated toward zero like Caffe's
    static_cast<int>, with the range decided in float first: converting NaN,
    an infinity or a value outside int32's range is undefined in C and
    differs between platforms (x86 gives the most negative integer, ARM and
    GPUs 0 or a saturated value), so those become INVALID_LABEL everywhere.
    The device code reads labels the same way (kernels/labels.cuh)."""
    values = np.asarray(values)
    defined = (values >= -2.0 ** 31) & (values < 2.0 ** 31)        # False for NaN
    labels = np.full(values.shape, INVALID_LABEL, np.int64)
    labels[defined] = values[defined].astype(np.int64)
    return labels


def softmax(x, axis, out):
    """Numerically stable softmax along `axis` (max subtracted first, as
    Caffe does); `out` may be `x`."""
    peak = x.max(axis=axis, keepdims=True)
    np.subtract(x, peak, out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)


def split_at(shape, axis):
    """(outer, classes, inner): Caffe's outer_num_ x channels x inner_num_
    layout around the softmax axis."""
    return int(np.prod(shape[:axis])), int(shape[axis]), int(np.prod(shape[axis + 1:]))


def as_3d(array, axis):
    """(outer, classes, inner) view of a contiguous array."""
    return array.reshape(split_at(array.shape, axis))


# ---- device helpers (kernels/softmax.cu, kernels/loss.cu) --------------------
def softmax_gpu(x, y, outer, channels, inner, scratch):
    """Softmax of the device array at `x` into `y` (may be `x`), in Caffe's
    steps; `scratch` (a gpu.Workspace) holds the per-position max, then sum."""
    positions, count = outer * inner, outer * channels * inner
    per_position = scratch.floats("softmax_per_position", positions)
    gpu.kernel("softmax_channel_max")(positions, positions, channels, inner, x, per_position)
    gpu.kernel("softmax_subtract_exp")(count, count, channels, inner, x, per_position, y)
    gpu.kernel("softmax_channel_sum")(positions, positions, channels, inner, y, per_position)
    gpu.kernel("softmax_channel_div")(count, count, channels, inner, per_position, y)


class DeviceSums:
    """Row sums of a packed (rows, n) device matrix, left on the device: a
    gemv with a ones vector, so a loss never waits for the host."""

    def __init__(self, scratch):
        self.scratch = scratch

    def __call__(self, matrix, rows, n):
        """The address of `rows` floats holding the sums."""
        sums = self.scratch.floats("sums", rows)
        gpu.blas().gemv(False, rows, n, 1.0, matrix, gpu.ones(n), 0.0, sums)
        return sums


class LabelledPredictions:
    """Shared bookkeeping of SoftmaxWithLoss and Accuracy: one integer label
    per (outer, inner) position of the predictions, some possibly ignored."""

    def __init__(self, layer, ignore_label):
        self.layer = layer
        self.ignore_label = ignore_label          # None: no label is ignored

    def reshape(self, shape, labels, axis):
        """Fix the class axis of predictions of `shape` and the (outer,
        inner) grid of positions."""
        self.axis = canonical_axis(self.layer, axis, shape)
        self.outer = int(np.prod(shape[:self.axis]))
        self.inner = int(np.prod(shape[self.axis + 1:]))
        self.num_classes = shape[self.axis]
        if self.outer * self.inner != labels.count:
            raise self.layer.error(
                f"number of labels ({labels.count}, shape {labels.shape}) must match number of "
                f"predictions ({self.outer * self.inner}); e.g., if prediction shape is "
                f"(N, C, H, W) and the axis is 1, label count must be N*H*W, with integer "
                f"values in {{0, 1, ..., C-1}}")

    def read(self, label_data):
        """Labels as ints (truncated, like Caffe's static_cast), the mask of
        the positions that count, and labels safe to index with.  A label
        naming no class (NaN included) is an error here; the device code
        gives a NaN loss instead, as it cannot raise."""
        values = label_data.reshape(self.outer, self.inner)
        labels = truncated_labels(values)
        valid = np.ones(labels.shape, bool) if self.ignore_label is None \
            else labels != self.ignore_label
        bad = valid & ((labels < 0) | (labels >= self.num_classes))
        if bad.any():
            raise self.layer.error(f"label value {values[bad][0]:g} out of range "
                                   f"[0, {self.num_classes})")
        return labels, valid, np.where(valid, labels, 0)

    def kernel_ignore_args(self):
        return kernel_ignore_args(self.ignore_label)


def kernel_ignore_args(ignore):
    """(has_ignore, ignore_label) as the kernels take them; `ignore` is None
    when no label is ignored."""
    return (0, 0) if ignore is None else (1, int(ignore))


@register("Softmax")
class SoftmaxLayer(Layer):
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        self._dev = gpu.Workspace()

    def reshape(self, bottom, top):
        self.axis = canonical_axis(self, self.param.softmax_param.axis, bottom[0].shape)
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        softmax(bottom[0].data, self.axis, top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y, dy = top[0].data, top[0].diff
        # dx = (dy - <dy, y>) * y; the dot is taken before dx (maybe dy)
        # is written.
        dot = np.einsum("ijk,ijk->ik", as_3d(dy, self.axis), as_3d(y, self.axis))
        dx3 = as_3d(bottom[0].diff, self.axis)
        np.subtract(as_3d(dy, self.axis), dot[:, None, :], out=dx3)
        dx3 *= as_3d(y, self.axis)

    def forward_gpu(self, bottom, top):
        softmax_gpu(bottom[0].gpu_data, top[0].mutable_gpu_data,
                    *split_at(bottom[0].shape, self.axis), self._dev)

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        outer, channels, inner = split_at(top[0].shape, self.axis)
        positions, count = outer * inner, top[0].count
        y, dy = top[0].gpu_data, top[0].gpu_diff
        dot = self._dev.floats("dot", positions)
        gpu.kernel("softmax_channel_dot")(positions, positions, channels, inner, dy, y, dot)
        gpu.kernel("softmax_backward_apply")(count, count, channels, inner, dy, y, dot,
                                             bottom[0].mutable_gpu_diff)


def ignore_label(param):
    """loss_param.ignore_label, or None when no label is ignored."""
    lp = param.loss_param
    return lp.ignore_label if lp.HasField("ignore_label") else None


def normalization_mode(param, default):
    """loss_param's normalization: the explicit mode, else the legacy
    `normalize` flag (true: VALID, false: BATCH_SIZE), else `default`,
    which differs between Caffe's loss layers."""
    lp, modes = param.loss_param, caffe_pb2.LossParameter
    if lp.HasField("normalization"):
        return lp.normalization
    if lp.HasField("normalize"):
        return modes.VALID if lp.normalize else modes.BATCH_SIZE
    return default


def normalizer(mode, outer, inner, valid_count):
    """Caffe's LossLayer::GetNormalizer over `outer` x `inner` predictions,
    `valid_count` of them labelled; at least 1, so that a batch whose
    labels are all ignored gives 0, not NaN."""
    modes = caffe_pb2.LossParameter
    value = {modes.FULL: outer * inner,
             modes.VALID: valid_count,
             modes.BATCH_SIZE: outer,
             modes.NONE: 1}[mode]
    return max(1.0, float(value))


class LossLayer(Layer):
    """Caffe's LossLayer: predictions and targets share their first axis,
    the loss top is a scalar and the label input gets no gradient."""
    is_loss = True
    exact_num_bottom = 2
    exact_num_top = 1

    def reshape(self, bottom, top):
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise self.error(f"the data and label should have the same first dimension: "
                             f"{bottom[0].shape} vs {bottom[1].shape}")
        top[0].reshape(())

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    @staticmethod
    def loss_weight(top):
        return float(top[0].diff.reshape(-1)[0])


@register("SoftmaxWithLoss")
class SoftmaxWithLossLayer(LossLayer):
    """Multinomial logistic loss of the softmax of bottom[0] for the labels
    in bottom[1]; an optional second top gets the probabilities."""
    exact_num_top = None
    min_num_top = 1
    max_num_top = 2

    def layer_setup(self, bottom, top):
        self.targets = LabelledPredictions(self, ignore_label(self.param))
        self.normalization = normalization_mode(self.param, caffe_pb2.LossParameter.VALID)
        self._prob = np.empty(0, DTYPE)
        self._dev = gpu.Workspace()         # device prob, per-position terms, sums
        self._sums = DeviceSums(self._dev)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.targets.reshape(bottom[0].shape, bottom[1], self.param.softmax_param.axis)
        if self._prob.shape != bottom[0].shape:
            self._prob = np.empty(bottom[0].shape, DTYPE)
        if len(top) > 1:
            top[1].reshape(bottom[0].shape)

    def normalizer(self, valid_count):
        return normalizer(self.normalization, self.targets.outer, self.targets.inner, valid_count)

    def forward(self, bottom, top):
        axis = self.targets.axis
        softmax(bottom[0].data, axis, self._prob)
        _, valid, safe = self.targets.read(bottom[1].data)
        picked = np.take_along_axis(as_3d(self._prob, axis), safe[:, None, :], axis=1)[:, 0, :]
        loss = -np.log(np.maximum(picked[valid], FLT_MIN), dtype=np.float64).sum()
        self._valid = valid
        self._safe = safe
        self._count = int(valid.sum())
        top[0].data[...] = loss / self.normalizer(self._count)
        if len(top) > 1:
            np.copyto(top[1].data, self._prob)

    def _wants_gradient(self, propagate_down):
        if propagate_down[1]:
            raise self.error("SoftmaxWithLoss Layer cannot backpropagate to label inputs.")
        return propagate_down[0]

    def backward(self, top, propagate_down, bottom):
        if not self._wants_gradient(propagate_down):
            return
        dx = bottom[0].diff
        np.copyto(dx, self._prob)
        dx3 = as_3d(dx, self.targets.axis)
        outer_idx, inner_idx = np.nonzero(self._valid)
        dx3[outer_idx, self._safe[outer_idx, inner_idx], inner_idx] -= 1
        if not self._valid.all():
            dx3 *= self._valid[:, None, :]
        dx *= DTYPE(self.loss_weight(top) / self.normalizer(self._count))

    def forward_gpu(self, bottom, top):
        t = self.targets
        positions = t.outer * t.inner
        prob = self._dev.floats("prob", bottom[0].count)
        softmax_gpu(bottom[0].gpu_data, prob, t.outer, t.num_classes, t.inner, self._dev)
        terms = self._dev.floats("terms", 2 * positions)      # losses, then counted flags
        gpu.kernel("softmax_loss_forward")(positions, positions, t.num_classes, t.inner, prob,
                                           bottom[1].gpu_data, *t.kernel_ignore_args(), terms)
        sums = self._sums(terms, 2, positions)
        # VALID divides by the count summed on the device; the other modes'
        # normalizers do not depend on the labels.
        use_count = self.normalization == caffe_pb2.LossParameter.VALID
        gpu.kernel("loss_normalize")(1, 1, sums, int(use_count), self.normalizer(0),
                                     top[0].mutable_gpu_data, self._dev.floats("inv_normalizer", 1))
        if len(top) > 1:
            gpu.blas().copy(top[1].mutable_gpu_data, prob, 4 * bottom[0].count)

    def backward_gpu(self, top, propagate_down, bottom):
        if not self._wants_gradient(propagate_down):
            return
        t = self.targets
        count = bottom[0].count
        gpu.kernel("softmax_loss_backward")(
            count, count, t.num_classes, t.inner, self._dev.floats("prob", count),
            bottom[1].gpu_data, *t.kernel_ignore_args(), top[0].gpu_diff,
            self._dev.floats("inv_normalizer", 1), bottom[0].mutable_gpu_diff)


@register("EuclideanLoss")
class EuclideanLossLayer(LossLayer):
    """sum((a - b)^2) / (2 N); both inputs may receive a gradient.  An empty
    batch (N = 0, e.g. after a Filter that keeps nothing) has loss 0 (Caffe
    divides 0 by 0) and nothing to differentiate."""

    def layer_setup(self, bottom, top):
        self._diff = np.empty(0, DTYPE)
        self._dev = gpu.Workspace()         # device diff, its squares, sums
        self._sums = DeviceSums(self._dev)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count != bottom[1].count:
            raise self.error(f"inputs must have the same dimension: {bottom[0].shape} vs "
                             f"{bottom[1].shape}")
        if self._diff.shape != bottom[0].shape:
            self._diff = np.empty(bottom[0].shape, DTYPE)

    def allow_force_backward(self, bottom_index):
        return True

    def forward(self, bottom, top):
        diff = np.subtract(bottom[0].data, bottom[1].data.reshape(bottom[0].shape), out=self._diff)
        flat = diff.reshape(-1)
        top[0].data[...] = np.dot(flat, flat) / max(bottom[0].num, 1) / 2

    def backward(self, top, propagate_down, bottom):
        for b, down, sign in zip(bottom, propagate_down, (1.0, -1.0)):
            if down and b.count:
                np.multiply(self._diff.reshape(b.shape), DTYPE(sign * self.loss_weight(top) / b.num),
                            out=b.diff)

    def forward_gpu(self, bottom, top):
        n = bottom[0].count
        diff, squared = self._dev.floats("diff", n), self._dev.floats("squared", n)
        gpu.kernel("euclidean_loss_forward")(n, n, bottom[0].gpu_data, bottom[1].gpu_data, diff,
                                             squared)
        gpu.kernel("loss_normalize")(1, 1, self._sums(squared, 1, n), 0, 2.0 * bottom[0].num,
                                     top[0].mutable_gpu_data, self._dev.floats("inv_normalizer", 1))

    def backward_gpu(self, top, propagate_down, bottom):
        n = bottom[0].count
        for b, down, sign in zip(bottom, propagate_down, (1.0, -1.0)):
            if down and n:
                gpu.kernel("euclidean_loss_backward")(n, n, self._dev.floats("diff", n),
                                                      top[0].gpu_diff, sign / b.num,
                                                      b.mutable_gpu_diff)


@register("Accuracy")
class AccuracyLayer(Layer):
    """Fraction of labelled positions whose true class is among the top_k
    scores (a tie counts against it, as in Caffe); the optional second top
    holds the accuracy of each class.  No gradient."""
    exact_num_bottom = 2
    min_num_top = 1
    max_num_top = 2

    def allow_force_backward(self, bottom_index):
        # Caffe would abort in Backward under force_backward; a metric has no gradient.
        return False

    def layer_setup(self, bottom, top):
        p = self.param.accuracy_param
        self.top_k = int(p.top_k)
        self.targets = LabelledPredictions(self, p.ignore_label if p.HasField("ignore_label") else None)
        self._dev = gpu.Workspace()         # device per-position terms, sums
        self._sums = DeviceSums(self._dev)

    def reshape(self, bottom, top):
        self.targets.reshape(bottom[0].shape, bottom[1], self.param.accuracy_param.axis)
        # The classes from the shape, not Caffe's count ratio (0 / 0 for an empty batch).
        if self.top_k > self.targets.num_classes:
            raise self.error(f"top_k ({self.top_k}) must be less than or equal to the number "
                             f"of classes ({self.targets.num_classes})")
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((self.targets.num_classes,))

    def forward(self, bottom, top):
        labels, valid, safe = self.targets.read(bottom[1].data)
        scores = as_3d(bottom[0].data, self.targets.axis)
        true_score = np.take_along_axis(scores, safe[:, None, :], axis=1)
        # Classes scoring at least as high as the true one, itself excluded.
        rivals = (scores >= true_score).sum(axis=1) - 1
        hit = valid & (rivals < self.top_k)
        count = int(valid.sum())
        top[0].data[...] = DTYPE(hit.sum()) / DTYPE(count) if count else 0
        if len(top) > 1:
            n = self.targets.num_classes
            totals = np.bincount(labels[valid], minlength=n).astype(DTYPE)
            hits = np.bincount(labels[hit], minlength=n).astype(DTYPE)
            top[1].data[...] = np.divide(hits, totals, out=np.zeros(n, DTYPE), where=totals > 0)

    def backward(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise self.error("Accuracy has no backward (set propagate_down: false on its bottoms)")

    def forward_gpu(self, bottom, top):
        t = self.targets
        positions = t.outer * t.inner
        labels = bottom[1].gpu_data
        terms = self._dev.floats("terms", 2 * positions)      # hits, then counted flags
        gpu.kernel("accuracy_forward")(positions, positions, t.num_classes, t.inner,
                                       bottom[0].gpu_data, labels, self.top_k,
                                       *t.kernel_ignore_args(), terms)
        # hits / max(1, counted) is hits / counted, or 0 when nothing counted.
        gpu.kernel("loss_normalize")(1, 1, self._sums(terms, 2, positions), 1, 1.0,
                                     top[0].mutable_gpu_data, self._dev.floats("inv_normalizer", 1))
        if len(top) > 1:
            # Counted per class in about sqrt(positions) chunks, then summed
            # over the chunks: two short steps, both deterministic.
            classes = t.num_classes
            chunks = max(1, math.isqrt(positions - 1) + 1) if positions else 1
            partials = self._dev.get("class_partials", 4 * 2 * classes * chunks)
            gpu.kernel("accuracy_class_partials")(chunks, chunks, positions, classes, labels,
                                                  *t.kernel_ignore_args(), terms, partials)
            gpu.kernel("accuracy_per_class")(classes, classes, chunks, partials,
                                             top[1].mutable_gpu_data)
