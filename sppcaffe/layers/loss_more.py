"""Caffe's other loss layers: SigmoidCrossEntropyLoss, HingeLoss,
MultinomialLogisticLoss, InfogainLoss, ContrastiveLoss, and Fast R-CNN's
SmoothL1Loss (py-faster-rcnn's version, with sigma).

As in loss.py, the top is a 0-axis blob whose diff holds the loss weight
during backward.  Device code: kernels/loss_more.cu, summed on the device
and normalized by loss.cu's loss_normalize, so no value travels to the host.
"""
import numpy as np

from .. import io
from ..backends import gpu
from ..blob import DTYPE, Blob
from ..layer import register
from ..proto import caffe_pb2
from .activations import SigmoidLayer
from .loss import (DeviceSums, LabelledPredictions, LossLayer, as_3d, ignore_label,
                   kernel_ignore_args, normalization_mode, normalizer, softmax, softmax_gpu,
                   truncated_labels)

# Caffe's kLOG_THRESHOLD: probabilities are clamped to it before the log.
LOG_THRESHOLD = DTYPE(1e-20)
MODES = caffe_pb2.LossParameter


def _legacy_dims(blob):
    """Caffe's (num, channels, height, width) view of a blob's shape, with
    the count for blobs of more than four axes."""
    return blob.num, blob.channels, blob.height, blob.width, blob.count


def _per_item(blob):
    """Caffe's divisor of the summed loss, the batch size; 1 for an empty
    batch, whose loss is then 0 (not 0 / 0) and whose gradient is empty."""
    return max(blob.num, 1)


def _refuse_label_gradient(layer, propagate_down, what="label", index=1):
    if len(propagate_down) > index and propagate_down[index]:
        raise layer.error(f"{layer.type} Layer cannot backpropagate to {what} inputs.")


def _zero_constant_inputs(bottom, propagate_down, indices, on_device):
    """Inputs Caffe's backward silently skips (ContrastiveLoss's similarity,
    SmoothL1Loss's weights) act as constants: a zero gradient."""
    for i in indices:
        if i < len(bottom) and propagate_down[i]:
            if on_device:
                n = bottom[i].count
                gpu.kernel("fill_constant")(n, n, 0.0, bottom[i].mutable_gpu_diff)
            else:
                bottom[i].diff[...] = 0


class _DeviceLoss:
    """A loss layer's device scratch: per-item terms, their sums, the loss
    top and the inverse normalizer backward reads."""

    def __init__(self):
        self.scratch = gpu.Workspace()
        self._sums = DeviceSums(self.scratch)

    def floats(self, name, count):
        return self.scratch.floats(name, count)

    def finish(self, terms, rows, n, top, fixed_normalizer, use_count=False):
        """top = (sum of the first row of terms) / normalizer; the
        normalizer is the sum of the second row when use_count."""
        gpu.kernel("loss_normalize")(1, 1, self._sums(terms, rows, n), int(use_count),
                                     float(fixed_normalizer), top[0].mutable_gpu_data,
                                     self.inv_normalizer)

    @property
    def inv_normalizer(self):
        return self.floats("inv_normalizer", 1)


# ---- SigmoidCrossEntropyLoss ---------------------------------------------------------
@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(LossLayer):
    """Cross entropy of sigmoid(bottom[0]) against the targets in bottom[1]
    (probabilities of the same count); targets equal to ignore_label do
    not count.  Normalized as loss_param says (BATCH_SIZE by default)."""

    def layer_setup(self, bottom, top):
        self.ignore = ignore_label(self.param)
        self.normalization = normalization_mode(self.param, MODES.BATCH_SIZE)
        # Caffe keeps an inner Sigmoid layer whose output backward reads.
        self._sigmoid = SigmoidLayer(self.param, self.phase)
        self._sigmoid_top = Blob()
        self._sigmoid.setup([bottom[0]], [self._sigmoid_top])
        self._dev = _DeviceLoss()

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count != bottom[1].count:
            raise self.error(f"inputs must have the same count: {bottom[0].shape} vs "
                             f"{bottom[1].shape}")
        self.outer = bottom[0].num
        self.inner = bottom[0].count // max(self.outer, 1)
        self._sigmoid.reshape([bottom[0]], [self._sigmoid_top])

    def _normalizer(self, valid_count):
        return normalizer(self.normalization, self.outer, self.inner, valid_count)

    def _counted(self, target):
        if self.ignore is None:
            return np.ones(target.shape, bool)
        return truncated_labels(target) != self.ignore

    def forward(self, bottom, top):
        self._sigmoid.forward([bottom[0]], [self._sigmoid_top])
        x, t = bottom[0].data, bottom[1].data.reshape(bottom[0].shape)
        counted = self._counted(t)
        loss = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
        self._norm = self._normalizer(int(counted.sum()))
        top[0].data[...] = loss.sum(where=counted, dtype=np.float64) / self._norm

    def backward(self, top, propagate_down, bottom):
        _refuse_label_gradient(self, propagate_down)
        if not propagate_down[0]:
            return
        t = bottom[1].data.reshape(bottom[0].shape)
        dx = bottom[0].diff
        np.subtract(self._sigmoid_top.data, t, out=dx)
        if self.ignore is not None:
            dx *= self._counted(t)
        dx *= DTYPE(self.loss_weight(top) / self._norm)

    def forward_gpu(self, bottom, top):
        self._sigmoid.forward_gpu([bottom[0]], [self._sigmoid_top])
        n = bottom[0].count
        terms = self._dev.floats("terms", 2 * n)        # losses, then counted flags
        gpu.kernel("sigmoid_cross_entropy_loss_forward")(
            n, n, bottom[0].gpu_data, bottom[1].gpu_data, *kernel_ignore_args(self.ignore), terms)
        self._dev.finish(terms, 2, n, top, self._normalizer(0),
                         use_count=self.normalization == MODES.VALID)

    def backward_gpu(self, top, propagate_down, bottom):
        _refuse_label_gradient(self, propagate_down)
        if not propagate_down[0]:
            return
        n = bottom[0].count
        gpu.kernel("sigmoid_cross_entropy_loss_backward")(
            n, n, self._sigmoid_top.gpu_data, bottom[1].gpu_data, *kernel_ignore_args(self.ignore),
            top[0].gpu_diff, self._dev.inv_normalizer, bottom[0].mutable_gpu_diff)


# ---- HingeLoss -----------------------------------------------------------------------
class _PerSampleLabels(LabelledPredictions):
    """One class index per sample: bottom[0] seen as num x (count / num)
    scores (HingeLoss, MultinomialLogisticLoss)."""

    def __init__(self, layer):
        super().__init__(layer, None)

    def reshape(self, predictions, labels):
        num = predictions.num
        super().reshape((num, int(np.prod(predictions.shape[1:]))), labels, 1)

    def sample_labels(self, label_data):
        """The labels as ints, one per sample (an error if out of range)."""
        labels, _, _ = self.read(label_data)
        return labels.reshape(-1)


def _negate_true_class(scores, labels):
    scores[np.arange(len(labels)), labels] *= -1


@register("HingeLoss")
class HingeLossLayer(LossLayer):
    """One-vs-all hinge loss for the class index in bottom[1]: the sum over
    samples and classes of max(0, 1 - x) for the true class and
    max(0, 1 + x) for the others (squared with norm L2), divided by num.

    As Caffe's, forward leaves those margins in bottom[0]'s diff (Caffe
    uses it as scratch; its fixtures show it where no backward follows)."""

    def layer_setup(self, bottom, top):
        self.squared = self.param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2
        self.targets = _PerSampleLabels(self)
        self._margins = np.empty(0, DTYPE)
        self._dev = _DeviceLoss()

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.targets.reshape(bottom[0], bottom[1])
        shape = (self.targets.outer, self.targets.num_classes)
        if self._margins.shape != shape:
            self._margins = np.empty(shape, DTYPE)

    def forward(self, bottom, top):
        m = self._margins
        np.copyto(m, bottom[0].data.reshape(m.shape))
        _negate_true_class(m, self.targets.sample_labels(bottom[1].data))
        m += 1
        np.maximum(m, 0, out=m)
        np.copyto(bottom[0].diff.reshape(m.shape), m)
        flat = m.reshape(-1)
        total = np.dot(flat, flat) if self.squared else flat.sum(dtype=np.float64)
        top[0].data[...] = total / _per_item(bottom[0])

    def backward(self, top, propagate_down, bottom):
        _refuse_label_gradient(self, propagate_down)
        if not propagate_down[0]:
            return
        dx = bottom[0].diff.reshape(self._margins.shape)
        np.copyto(dx, self._margins)
        _negate_true_class(dx, self.targets.sample_labels(bottom[1].data))
        scale = self.loss_weight(top) / _per_item(bottom[0])
        if self.squared:
            dx *= DTYPE(2 * scale)
        else:
            np.sign(dx, out=dx)
            dx *= DTYPE(scale)

    def forward_gpu(self, bottom, top):
        n, dim = bottom[0].count, self.targets.num_classes
        terms = self._dev.floats("terms", n)
        gpu.kernel("hinge_loss_forward")(n, n, dim, bottom[0].gpu_data, bottom[1].gpu_data,
                                         int(self.squared), self._dev.floats("margins", n),
                                         bottom[0].mutable_gpu_diff, terms)
        self._dev.finish(terms, 1, n, top, bottom[0].num)

    def backward_gpu(self, top, propagate_down, bottom):
        _refuse_label_gradient(self, propagate_down)
        if not propagate_down[0]:
            return
        n, dim = bottom[0].count, self.targets.num_classes
        gpu.kernel("hinge_loss_backward")(n, n, dim, self._dev.floats("margins", n),
                                          bottom[1].gpu_data, int(self.squared), top[0].gpu_diff,
                                          1.0 / _per_item(bottom[0]), bottom[0].mutable_gpu_diff)


# ---- MultinomialLogisticLoss ---------------------------------------------------------
@register("MultinomialLogisticLoss")
class MultinomialLogisticLossLayer(LossLayer):
    """-log of the probability bottom[0] gives the class index in
    bottom[1] (clamped to kLOG_THRESHOLD), averaged over num."""

    def layer_setup(self, bottom, top):
        self.targets = _PerSampleLabels(self)
        self._dev = _DeviceLoss()

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.targets.reshape(bottom[0], bottom[1])

    def _picked(self, bottom):
        """(sample indices, labels, clamped probabilities of the labels)."""
        labels = self.targets.sample_labels(bottom[1].data)
        rows = np.arange(len(labels))
        prob = bottom[0].data.reshape(len(labels), self.targets.num_classes)
        return rows, labels, np.maximum(prob[rows, labels], LOG_THRESHOLD)

    def forward(self, bottom, top):
        _, _, picked = self._picked(bottom)
        top[0].data[...] = -np.log(picked, dtype=np.float64).sum() / _per_item(bottom[0])

    def backward(self, top, propagate_down, bottom):
        _refuse_label_gradient(self, propagate_down)
        if not propagate_down[0]:
            return
        rows, labels, picked = self._picked(bottom)
        dx = bottom[0].diff.reshape(len(labels), self.targets.num_classes)
        dx[...] = 0
        dx[rows, labels] = DTYPE(-self.loss_weight(top) / _per_item(bottom[0])) / picked

    def forward_gpu(self, bottom, top):
        num, dim = bottom[0].num, self.targets.num_classes
        terms = self._dev.floats("terms", num)
        gpu.kernel("multinomial_logistic_loss_forward")(num, num, dim, bottom[0].gpu_data,
                                                        bottom[1].gpu_data, terms)
        self._dev.finish(terms, 1, num, top, num)

    def backward_gpu(self, top, propagate_down, bottom):
        _refuse_label_gradient(self, propagate_down)
        if not propagate_down[0]:
            return
        n, dim = bottom[0].count, self.targets.num_classes
        gpu.kernel("multinomial_logistic_loss_backward")(
            n, n, dim, bottom[0].gpu_data, bottom[1].gpu_data, top[0].gpu_diff,
            1.0 / _per_item(bottom[0]), bottom[0].mutable_gpu_diff)


# ---- InfogainLoss --------------------------------------------------------------------
@register("InfogainLoss")
class InfogainLossLayer(LossLayer):
    """Modern Caffe's InfogainLoss: softmax of bottom[0] along
    infogain_loss_param.axis, then -sum_c H[label, c] log(prob_c) per
    labelled position, normalized as loss_param says (VALID by default).
    H (classes x classes) is bottom[2] or the BlobProto file
    infogain_loss_param.source; an optional second top gets the
    probabilities.  Only bottom[0] receives a gradient."""
    exact_num_bottom = None
    min_num_bottom = 2
    max_num_bottom = 3
    exact_num_top = None
    min_num_top = 1
    max_num_top = 2

    def layer_setup(self, bottom, top):
        lp = self.param.loss_param
        if lp.HasField("normalize"):
            raise self.error('normalize is deprecated. use "normalization"')
        self.normalization = lp.normalization
        self.targets = LabelledPredictions(self, ignore_label(self.param))
        self._infogain = None if len(bottom) > 2 else self._read_infogain()
        self._prob = np.empty(0, DTYPE)
        self._dev = _DeviceLoss()

    def _read_infogain(self):
        p = self.param.infogain_loss_param
        if not p.HasField("source"):
            raise self.error("Infogain matrix source must be specified "
                             "(infogain_loss_param.source, or H as a third bottom)")
        try:
            array = io.read_blobproto(p.source)
        except (OSError, ValueError) as err:
            raise self.error(f"infogain matrix (infogain_loss_param.source): {err}") from err
        blob = Blob(array.shape)
        blob.data[...] = array
        return blob

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def _matrix(self, bottom):
        return bottom[2] if len(bottom) > 2 else self._infogain

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        t = self.targets
        t.reshape(bottom[0].shape, bottom[1], self.param.infogain_loss_param.axis)
        infogain = self._matrix(bottom)
        if infogain.count != t.num_classes ** 2:
            raise self.error(f"the infogain matrix must be {t.num_classes} x {t.num_classes} "
                             f"(one row and column per class), got shape {infogain.shape}")
        if self._prob.shape != bottom[0].shape:
            self._prob = np.empty(bottom[0].shape, DTYPE)
        if len(top) > 1:
            top[1].reshape(bottom[0].shape)

    def _normalizer(self, valid_count):
        return normalizer(self.normalization, self.targets.outer, self.targets.inner, valid_count)

    def _rows(self, bottom, safe):
        """H's matrix and its label rows laid out as (outer, classes, inner)."""
        c = self.targets.num_classes
        h = self._matrix(bottom).data.reshape(c, c)
        return h, h[safe].transpose(0, 2, 1)

    def forward(self, bottom, top):
        t = self.targets
        softmax(bottom[0].data, t.axis, self._prob)
        _, valid, safe = t.read(bottom[1].data)
        _, rows = self._rows(bottom, safe)
        log_prob = np.log(np.maximum(as_3d(self._prob, t.axis), LOG_THRESHOLD))
        per_position = -np.einsum("ocj,ocj->oj", rows, log_prob, dtype=np.float64)
        top[0].data[...] = per_position[valid].sum() / self._normalizer(int(valid.sum()))
        if len(top) > 1:
            np.copyto(top[1].data, self._prob)

    def backward(self, top, propagate_down, bottom):
        _refuse_label_gradient(self, propagate_down)
        _refuse_label_gradient(self, propagate_down, "infogain", 2)
        if not propagate_down[0]:
            return
        t = self.targets
        _, valid, safe = t.read(bottom[1].data)
        h, rows = self._rows(bottom, safe)
        dx = as_3d(bottom[0].diff, t.axis)
        np.multiply(as_3d(self._prob, t.axis), h.sum(axis=1)[safe][:, None, :], out=dx)
        dx -= rows
        if not valid.all():
            dx *= valid[:, None, :]
        dx *= DTYPE(self.loss_weight(top) / self._normalizer(int(valid.sum())))

    def forward_gpu(self, bottom, top):
        t = self.targets
        positions = t.outer * t.inner
        prob = self._dev.floats("prob", bottom[0].count)
        softmax_gpu(bottom[0].gpu_data, prob, t.outer, t.num_classes, t.inner, self._dev.scratch)
        terms = self._dev.floats("terms", 2 * positions)      # losses, then counted flags
        gpu.kernel("infogain_loss_forward")(positions, positions, t.num_classes, t.inner, prob,
                                            bottom[1].gpu_data, self._matrix(bottom).gpu_data,
                                            *t.kernel_ignore_args(), terms)
        self._dev.finish(terms, 2, positions, top, self._normalizer(0),
                         use_count=self.normalization == MODES.VALID)
        if len(top) > 1:
            gpu.blas().copy(top[1].mutable_gpu_data, prob, 4 * bottom[0].count)

    def backward_gpu(self, top, propagate_down, bottom):
        _refuse_label_gradient(self, propagate_down)
        _refuse_label_gradient(self, propagate_down, "infogain", 2)
        if not propagate_down[0]:
            return
        t = self.targets
        c, count = t.num_classes, bottom[0].count
        infogain = self._matrix(bottom).gpu_data
        row_sums = self._dev.floats("row_sums", c)
        gpu.blas().gemv(False, c, c, 1.0, infogain, gpu.ones(c), 0.0, row_sums)
        gpu.kernel("infogain_loss_backward")(
            count, count, c, t.inner, self._dev.floats("prob", count), bottom[1].gpu_data,
            infogain, row_sums, *t.kernel_ignore_args(), top[0].gpu_diff,
            self._dev.inv_normalizer, bottom[0].mutable_gpu_diff)


# ---- ContrastiveLoss -----------------------------------------------------------------
@register("ContrastiveLoss")
class ContrastiveLossLayer(LossLayer):
    """Siamese loss of feature pairs a = bottom[0], b = bottom[1] (N x C)
    with similarity flags bottom[2] (N): d^2 for similar pairs,
    max(margin - d, 0)^2 for the others (legacy_version: max(margin - d^2, 0)),
    summed and divided by 2N.  a and b receive gradients, the flags none."""
    exact_num_bottom = 3

    def layer_setup(self, bottom, top):
        p = self.param.contrastive_loss_param
        self.margin, self.legacy = float(p.margin), bool(p.legacy_version)
        self._diff = np.empty(0, DTYPE)
        self._dev = _DeviceLoss()

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        a, b, sim = bottom
        if _legacy_dims(a) != _legacy_dims(b) or a.count != a.num * a.channels:
            raise self.error(f"a and b must be N x C feature blobs of the same shape: "
                             f"{a.shape} vs {b.shape}")
        if sim.count != a.num:
            raise self.error(f"the similarity input needs one value per pair ({a.num}), got shape "
                             f"{sim.shape}")
        if self._diff.shape != (a.num, a.channels):
            self._diff = np.empty((a.num, a.channels), DTYPE)

    def forward(self, bottom, top):
        a, b, sim = bottom
        diff = np.subtract(a.data.reshape(self._diff.shape), b.data.reshape(self._diff.shape),
                           out=self._diff)
        self._dist_sq = np.einsum("nc,nc->n", diff, diff)
        similar = self._similar(sim)
        if self.legacy:
            apart = np.maximum(self.margin - self._dist_sq, 0)
        else:
            apart = np.maximum(self.margin - np.sqrt(self._dist_sq), 0) ** 2
        loss = np.where(similar, self._dist_sq, apart).sum(dtype=np.float64)
        top[0].data[...] = loss / _per_item(a) / 2

    def _similar(self, sim):
        """Caffe's static_cast<int>(sim) != 0, decided in float (|sim| >= 1)
        so that it is the same on every platform; a NaN label is an error
        (the device code makes that pair's loss NaN)."""
        sim = sim.data.reshape(-1)
        bad = np.isnan(sim)
        if bad.any():
            raise self.error(f"similarity label nan at pair {int(np.flatnonzero(bad)[0])}")
        return np.abs(sim) >= 1

    def _pair_scales(self, sim):
        """Per pair, the factor of (a - b) in d loss / d a, before alpha."""
        similar = self._similar(sim)
        if self.legacy:
            apart = np.where(self.margin - self._dist_sq > 0, DTYPE(-1), DTYPE(0))
        else:
            dist = np.sqrt(self._dist_sq)
            mdist = self.margin - dist
            apart = np.where(mdist > 0, -mdist / (dist + DTYPE(1e-4)), DTYPE(0))
        return np.where(similar, DTYPE(1), apart).astype(DTYPE)

    def backward(self, top, propagate_down, bottom):
        scales = None
        for i, sign in ((0, 1.0), (1, -1.0)):
            if not propagate_down[i]:
                continue
            if scales is None:
                scales = self._pair_scales(bottom[2])
            alpha = DTYPE(sign * self.loss_weight(top) / _per_item(bottom[0]))
            np.multiply(self._diff, (alpha * scales)[:, None],
                        out=bottom[i].diff.reshape(self._diff.shape))
        _zero_constant_inputs(bottom, propagate_down, [2], on_device=False)

    def forward_gpu(self, bottom, top):
        a, b, sim = bottom
        num, channels = a.num, a.channels
        terms = self._dev.floats("terms", num)
        gpu.kernel("contrastive_loss_forward")(num, num, channels, a.gpu_data, b.gpu_data,
                                               sim.gpu_data, self.margin, int(self.legacy),
                                               self._dev.floats("dist_sq", num), terms)
        self._dev.finish(terms, 1, num, top, 2.0 * num)

    def backward_gpu(self, top, propagate_down, bottom):
        a, b, sim = bottom
        n = a.count
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                gpu.kernel("contrastive_loss_backward")(
                    n, n, a.channels, a.gpu_data, b.gpu_data, sim.gpu_data,
                    self._dev.floats("dist_sq", a.num), self.margin, int(self.legacy),
                    top[0].gpu_diff, sign / _per_item(a), bottom[i].mutable_gpu_diff)
        _zero_constant_inputs(bottom, propagate_down, [2], on_device=True)


# ---- SmoothL1Loss --------------------------------------------------------------------
@register("SmoothL1Loss")
class SmoothL1LossLayer(LossLayer):
    """Fast R-CNN's box regression loss:
    sum(w_out * f(w_in * (pred - target))) / num, with
    f(x) = 0.5 (sigma x)^2 for |x| < 1 / sigma^2, |x| - 0.5 / sigma^2 beyond.
    Bottoms: pred, target, then optionally the inside weights (3 bottoms:
    the original Fast R-CNN's layer, whose prototxts call them
    bbox_loss_weights) and the outside weights (4 bottoms: py-faster-rcnn's).
    pred and target receive gradients (the target's with the sign
    flipped); the weights are constants."""
    exact_num_bottom = None
    min_num_bottom = 2
    max_num_bottom = 4

    def layer_setup(self, bottom, top):
        self.sigma2 = float(self.param.smooth_l1_loss_param.sigma) ** 2
        self._diff = np.empty(0, DTYPE)
        self._dev = _DeviceLoss()

    def allow_force_backward(self, bottom_index):
        return True

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        for i, name in ((1, "target"), (2, "inside weights"), (3, "outside weights")):
            if i < len(bottom) and _legacy_dims(bottom[i]) != _legacy_dims(bottom[0]):
                raise self.error(f"the {name} (bottom {i}, shape {bottom[i].shape}) must have the "
                                 f"shape of the predictions {bottom[0].shape}")
        if self._diff.shape != bottom[0].shape:
            self._diff = np.empty(bottom[0].shape, DTYPE)

    def _weights(self, bottom):
        """(inside, outside) weights; 1 where not given."""
        given = [b.data.reshape(self._diff.shape) for b in bottom[2:4]]
        return tuple(given + [DTYPE(1)] * (2 - len(given)))

    def forward(self, bottom, top):
        inside, outside = self._weights(bottom)
        d = np.subtract(bottom[0].data, bottom[1].data.reshape(self._diff.shape), out=self._diff)
        d *= inside
        abs_d = np.abs(d)
        quadratic = abs_d < DTYPE(1 / self.sigma2)
        errors = np.where(quadratic, DTYPE(0.5 * self.sigma2) * d * d,
                          abs_d - DTYPE(0.5 / self.sigma2))
        errors *= outside
        top[0].data[...] = errors.sum(dtype=np.float64) / _per_item(bottom[0])

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0] or propagate_down[1]:
            inside, outside = self._weights(bottom)
            d = self._diff
            slope = np.where(np.abs(d) < DTYPE(1 / self.sigma2), DTYPE(self.sigma2) * d, np.sign(d))
            slope *= inside
            slope *= outside
            for i, sign in ((0, 1.0), (1, -1.0)):
                if propagate_down[i]:
                    np.multiply(slope, DTYPE(sign * self.loss_weight(top) / _per_item(bottom[i])),
                                out=bottom[i].diff.reshape(d.shape))
        _zero_constant_inputs(bottom, propagate_down, [2, 3], on_device=False)

    def _device_weights(self, bottom):
        ones = gpu.ones(bottom[0].count)
        given = [b.gpu_data for b in bottom[2:4]]
        return tuple(given + [ones] * (2 - len(given)))

    def forward_gpu(self, bottom, top):
        n = bottom[0].count
        errors = self._dev.floats("errors", n)
        gpu.kernel("smooth_l1_loss_forward")(n, n, bottom[0].gpu_data, bottom[1].gpu_data,
                                             *self._device_weights(bottom), self.sigma2,
                                             self._dev.floats("diff", n), errors)
        self._dev.finish(errors, 1, n, top, bottom[0].num)

    def backward_gpu(self, top, propagate_down, bottom):
        n = bottom[0].count
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                gpu.kernel("smooth_l1_loss_backward")(
                    n, n, self._dev.floats("diff", n), *self._device_weights(bottom), self.sigma2,
                    top[0].gpu_diff, sign / _per_item(bottom[i]), bottom[i].mutable_gpu_diff)
        _zero_constant_inputs(bottom, propagate_down, [2, 3], on_device=True)
