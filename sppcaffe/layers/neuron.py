"""Caffe's other elementwise ("neuron") layers: AbsVal, BNLL, Clip, ELU,
Exp, Log, Power, PReLU, Swish and Threshold (device code in
backends/gpu/kernels/neuron.cu).

In place (top is bottom): Caffe's AbsVal refuses it, the others accept it.
A backward that reads the bottom data would then read the output instead,
so the layers that need their input (BNLL, Clip, Log, Power, PReLU, and ELU
with a negative alpha) keep a copy of it in forward when in place, as
Caffe's PReLU does.  Caffe's own BNLL, Clip, Log, Power and ELU skip that
copy and give wrong gradients in place; these give the out-of-place ones.
Exp and Swish read only what they computed, and ELU with alpha >= 0 reads
only the sign of its input, which its output keeps.
"""
import math

import numpy as np

from ..backends import gpu
from ..blob import DTYPE
from ..fillers import fill, gpu_set
from ..layer import register
from ..proto import caffe_pb2
from ..workspace import Workspace
from .activations import _NeuronLayer, _elementwise_forward_gpu

F32 = DTYPE


def _launch(kernel, n, *args):
    """An elementwise kernel (n, *args) over n values."""
    gpu.kernel(kernel)(n, n, *args)


class _InputKeepingNeuron(_NeuronLayer):
    """A neuron layer whose backward reads the input: when in place, forward
    keeps a copy of it before overwriting it.  Subclasses set `reads_input`
    in layer_setup (some need the input only for some parameters)."""
    reads_input = True

    def layer_setup(self, bottom, top):
        self._scratch = Workspace()
        self._kept = Workspace()
        self._kept_gpu = gpu.Workspace()

    def _keeps(self, bottom, top):
        return self.reads_input and top[0] is bottom[0]

    def keep_input(self, bottom, top):
        if self._keeps(bottom, top):
            np.copyto(self._kept.like(bottom[0].data, "input"), bottom[0].data)

    def input_data(self, top, bottom):
        """The forward's input, as backward must read it."""
        if self._keeps(bottom, top):
            return self._kept.get("input", bottom[0].shape)
        return bottom[0].data

    def keep_input_gpu(self, bottom, top):
        if self._keeps(bottom, top):
            n = bottom[0].count
            gpu.blas().copy(self._kept_gpu.floats("input", n), bottom[0].gpu_data, 4 * n)

    def input_gpu_data(self, top, bottom):
        if self._keeps(bottom, top):
            return self._kept_gpu.floats("input", bottom[0].count)
        return bottom[0].gpu_data


@register("AbsVal")
class AbsValLayer(_NeuronLayer):
    """y = |x|."""

    def layer_setup(self, bottom, top):
        # Caffe CHECKs this: the sign of x is gone once |x| overwrites it.
        if top[0] is bottom[0]:
            raise self.error("does not allow in-place computation")
        self._scratch = Workspace()

    def forward(self, bottom, top):
        np.abs(bottom[0].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = bottom[0].data
            sign = np.sign(x, out=self._scratch.like(x))     # Caffe's sign: 0 at 0
            np.multiply(sign, top[0].diff, out=bottom[0].diff)

    def forward_gpu(self, bottom, top):
        _elementwise_forward_gpu("absval_forward", bottom, top)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            _launch("absval_backward", bottom[0].count, top[0].gpu_diff, bottom[0].gpu_data,
                    bottom[0].mutable_gpu_diff)


# Caffe's kBNLL_THRESHOLD: the gradient's exponent is capped there.
BNLL_THRESHOLD = F32(50)


@register("BNLL")
class BNLLLayer(_InputKeepingNeuron):
    """y = log(1 + e^x) (binomial normal log likelihood)."""

    def forward(self, bottom, top):
        self.keep_input(bottom, top)
        x, y = bottom[0].data, top[0].data
        # Caffe's two branches, x + log(1 + e^-x) above 0 and log(1 + e^x)
        # below, in one: e^-|x| never overflows.
        tail = np.abs(x, out=self._scratch.like(x))
        np.negative(tail, out=tail)
        np.exp(tail, out=tail)
        np.log1p(tail, out=tail)
        np.maximum(x, F32(0), out=y)
        y += tail

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        e = np.minimum(self.input_data(top, bottom), BNLL_THRESHOLD,
                       out=self._scratch.like(top[0].diff))
        np.exp(e, out=e)
        dx = bottom[0].diff
        np.multiply(top[0].diff, e, out=dx)
        e += F32(1)
        dx /= e

    def forward_gpu(self, bottom, top):
        self.keep_input_gpu(bottom, top)
        _elementwise_forward_gpu("bnll_forward", bottom, top)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            _launch("bnll_backward", bottom[0].count, top[0].gpu_diff,
                    self.input_gpu_data(top, bottom), bottom[0].mutable_gpu_diff)


@register("Clip")
class ClipLayer(_InputKeepingNeuron):
    """y = max(min, min(x, max)); the gradient passes where min <= x <= max."""

    def layer_setup(self, bottom, top):
        super().layer_setup(bottom, top)
        p = self.param.clip_param
        self.min, self.max = F32(p.min), F32(p.max)

    def forward(self, bottom, top):
        self.keep_input(bottom, top)
        y = top[0].data
        np.minimum(bottom[0].data, self.max, out=y)
        np.maximum(y, self.min, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = self.input_data(top, bottom)
        inside = np.greater_equal(x, self.min, out=self._scratch.like(x, "inside", np.bool_))
        inside &= np.less_equal(x, self.max, out=self._scratch.like(x, "below_max", np.bool_))
        np.multiply(top[0].diff, inside, out=bottom[0].diff)

    def forward_gpu(self, bottom, top):
        self.keep_input_gpu(bottom, top)
        _launch("clip_forward", bottom[0].count, bottom[0].gpu_data, self.min, self.max,
                top[0].mutable_gpu_data)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            _launch("clip_backward", bottom[0].count, top[0].gpu_diff,
                    self.input_gpu_data(top, bottom), self.min, self.max,
                    bottom[0].mutable_gpu_diff)


@register("ELU")
class ELULayer(_InputKeepingNeuron):
    """y = x above 0, alpha (e^x - 1) below; the slope below 0 is y + alpha."""

    def layer_setup(self, bottom, top):
        super().layer_setup(bottom, top)
        self.alpha = F32(self.param.elu_param.alpha)
        # With alpha >= 0 the output is > 0 exactly where the input is, so
        # in place the output tells backward all it needs of the input.
        self.reads_input = bool(self.alpha < 0)

    def forward(self, bottom, top):
        self.keep_input(bottom, top)
        x, y = bottom[0].data, top[0].data
        below = np.minimum(x, F32(0), out=self._scratch.like(x))
        np.exp(below, out=below)
        below -= F32(1)
        below *= self.alpha
        np.maximum(x, F32(0), out=y)
        y += below

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x, y = self.input_data(top, bottom), top[0].data
        slope = np.add(y, self.alpha, out=self._scratch.like(y))
        np.copyto(slope, F32(1), where=x > 0)
        np.multiply(top[0].diff, slope, out=bottom[0].diff)

    def forward_gpu(self, bottom, top):
        self.keep_input_gpu(bottom, top)
        _launch("elu_forward", bottom[0].count, bottom[0].gpu_data, self.alpha,
                top[0].mutable_gpu_data)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            _launch("elu_backward", bottom[0].count, top[0].gpu_diff,
                    self.input_gpu_data(top, bottom), top[0].gpu_data, self.alpha,
                    bottom[0].mutable_gpu_diff)


def _log_base(layer, base):
    """ln(base) as Caffe's Exp and Log take it: base -1 means e (exactly 1);
    any other base must be positive with a finite logarithm."""
    if base == F32(-1):
        return 1.0
    if not base > 0:
        raise layer.error(f"base must be strictly positive (or -1 for e), got {base}")
    log_base = float(F32(math.log(base))) if math.isfinite(base) else math.inf
    if not math.isfinite(log_base):
        raise layer.error(f"log(base) = log({base}) is not finite")
    return log_base


@register("Exp")
class ExpLayer(_NeuronLayer):
    """y = base^(shift + scale x), as outer e^(inner x) with
    inner = scale ln(base) and outer = base^shift."""

    def layer_setup(self, bottom, top):
        p = self.param.exp_param
        base, scale, shift = F32(p.base), F32(p.scale), F32(p.shift)
        self.inner = F32(_log_base(self, base)) * scale
        if shift == 0:
            self.outer = F32(1)
        else:
            with np.errstate(over="ignore"):
                self.outer = F32(np.exp(np.float64(shift)) if base == -1
                                 else np.power(np.float64(base), np.float64(shift)))

    def forward(self, bottom, top):
        y = top[0].data
        np.multiply(bottom[0].data, self.inner, out=y)
        np.exp(y, out=y)
        y *= self.outer

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dx = bottom[0].diff
            np.multiply(top[0].data, top[0].diff, out=dx)
            dx *= self.inner

    def forward_gpu(self, bottom, top):
        _launch("exp_forward", bottom[0].count, bottom[0].gpu_data, self.inner, self.outer,
                top[0].mutable_gpu_data)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            _launch("exp_backward", bottom[0].count, top[0].gpu_diff, top[0].gpu_data,
                    self.inner, bottom[0].mutable_gpu_diff)


@register("Log")
class LogLayer(_InputKeepingNeuron):
    """y = log_base(shift + scale x)."""

    def layer_setup(self, bottom, top):
        super().layer_setup(bottom, top)
        p = self.param.log_param
        log_base = F32(_log_base(self, F32(p.base)))
        if log_base == 0:
            raise self.error(f"1 / log(base) is infinite for base {p.base}")
        self.base_scale = F32(1) / log_base
        self.scale, self.shift = F32(p.scale), F32(p.shift)
        self.num_scale = self.scale / log_base

    def _shifted(self, x, out):
        np.multiply(x, self.scale, out=out)
        out += self.shift
        return out

    def forward(self, bottom, top):
        self.keep_input(bottom, top)
        y = self._shifted(bottom[0].data, top[0].data)
        np.log(y, out=y)
        y *= self.base_scale

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = self.input_data(top, bottom)
        slope = self._shifted(x, self._scratch.like(x))
        np.reciprocal(slope, out=slope)
        slope *= self.num_scale
        np.multiply(top[0].diff, slope, out=bottom[0].diff)

    def forward_gpu(self, bottom, top):
        self.keep_input_gpu(bottom, top)
        _launch("log_forward", bottom[0].count, bottom[0].gpu_data, self.scale, self.shift,
                self.base_scale, top[0].mutable_gpu_data)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            _launch("log_backward", bottom[0].count, top[0].gpu_diff,
                    self.input_gpu_data(top, bottom), self.scale, self.shift, self.num_scale,
                    bottom[0].mutable_gpu_diff)


@register("Power")
class PowerLayer(_InputKeepingNeuron):
    """y = (shift + scale x)^power."""

    def layer_setup(self, bottom, top):
        super().layer_setup(bottom, top)
        p = self.param.power_param
        self.power, self.scale, self.shift = F32(p.power), F32(p.scale), F32(p.shift)
        self.diff_scale = self.power * self.scale
        # A constant (power or scale 0) or an affine map (power 1) has a
        # gradient that needs no input.
        self.reads_input = bool(self.diff_scale != 0 and self.power != 1)

    def _constant(self):
        if self.power == 0:
            return F32(1)
        with np.errstate(all="ignore"):       # C's pow: NaN or inf, never an exception
            return F32(np.power(np.float64(self.shift), np.float64(self.power)))

    def forward(self, bottom, top):
        self.keep_input(bottom, top)
        y = top[0].data
        if self.diff_scale == 0:
            y[...] = self._constant()
            return
        np.multiply(bottom[0].data, self.scale, out=y)
        y += self.shift
        if self.power != 1:
            np.power(y, self.power, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, dx = top[0].diff, bottom[0].diff
        if self.diff_scale == 0:
            dx[...] = 0             # as Caffe: no product with the top diff
            return
        if self.power == 1:
            np.multiply(dy, self.diff_scale, out=dx)
            return
        x, y = self.input_data(top, bottom), top[0].data
        slope = self._scratch.like(x)
        # Caffe's three forms of diff_scale (shift + scale x)^(power - 1).
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.power == 2:
                np.multiply(x, self.diff_scale * self.scale, out=slope)
                slope += self.diff_scale * self.shift
            elif self.shift == 0:
                np.divide(y, x, out=slope)
                slope *= self.power
            else:
                np.multiply(x, self.scale, out=slope)
                slope += self.shift
                np.divide(y, slope, out=slope)
                slope *= self.diff_scale
        np.multiply(dy, slope, out=dx)

    def forward_gpu(self, bottom, top):
        n = bottom[0].count
        if self.diff_scale == 0:
            gpu_set(n, self._constant(), top[0].mutable_gpu_data)
            return
        self.keep_input_gpu(bottom, top)
        _launch("power_forward", n, bottom[0].gpu_data, self.power, self.scale, self.shift,
                top[0].mutable_gpu_data)

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        n = bottom[0].count
        if self.diff_scale == 0:
            gpu_set(n, 0.0, bottom[0].mutable_gpu_diff)
        elif self.power == 1:
            blas = gpu.blas()
            if top[0] is not bottom[0]:
                blas.copy(bottom[0].mutable_gpu_diff, top[0].gpu_diff, 4 * n)
            blas.scal(n, self.diff_scale, bottom[0].mutable_gpu_diff)
        else:
            _launch("power_backward", n, top[0].gpu_diff, self.input_gpu_data(top, bottom),
                    top[0].gpu_data, self.power, self.scale, self.shift, self.diff_scale,
                    bottom[0].mutable_gpu_diff)


def _default_prelu_filler():
    return caffe_pb2.FillerParameter(type="constant", value=0.25)


@register("PReLU")
class PReLULayer(_InputKeepingNeuron):
    """y = max(x, 0) + a min(x, 0) with a learnt slope a per channel (axis
    1), or one for all channels with channel_shared."""

    def layer_setup(self, bottom, top):
        super().layer_setup(bottom, top)
        self._check_axes(bottom)
        p = self.param.prelu_param
        self.shared = p.channel_shared
        channels = bottom[0].shape[1]
        if not self.blobs:
            # Caffe's shared slope is a 0-axis blob.
            blob = self.new_param_blob(() if self.shared else (channels,), 0)
            fill(blob, p.filler if p.HasField("filler") else _default_prelu_filler())
            self.blobs.append(blob)
        expected = 1 if self.shared else channels
        if self.blobs[0].count != expected:
            raise self.error(f"negative slope size {self.blobs[0].count} is inconsistent with "
                             f"prototxt config (expected {expected})")
        self.param_propagate_down = [True]
        self._dev = gpu.Workspace()

    def _check_axes(self, bottom):
        if bottom[0].ndim < 2:
            raise self.error(f"bottom must have at least 2 axes, got shape {bottom[0].shape}")

    def reshape(self, bottom, top):
        self._check_axes(bottom)
        if not self.shared and bottom[0].shape[1] != self.blobs[0].count:
            raise self.error(f"bottom has {bottom[0].shape[1]} channels, the slopes "
                             f"{self.blobs[0].count}")
        super().reshape(bottom, top)

    @staticmethod
    def _geometry(shape):
        """(num, channels, dim): the slope of element [n, c, d] is a[c]."""
        return shape[0], shape[1], int(np.prod(shape[2:], dtype=np.int64))

    def _rows(self, array):
        return array.reshape(self._geometry(array.shape))

    def _slope(self):
        a = self.blobs[0].data
        return a.reshape(()) if self.shared else a.reshape(-1, 1)

    def forward(self, bottom, top):
        self.keep_input(bottom, top)
        x, y = self._rows(bottom[0].data), self._rows(top[0].data)
        below = np.minimum(x, F32(0), out=self._scratch.like(x))
        below *= self._slope()
        np.maximum(x, F32(0), out=y)
        y += below

    def backward(self, top, propagate_down, bottom):
        x = self._rows(self.input_data(top, bottom))
        dy = self._rows(top[0].diff)
        # The slope gradient first: in place, the bottom diff is the top diff.
        if self.param_propagate_down[0]:
            terms = np.minimum(x, F32(0), out=self._scratch.like(x))
            terms *= dy
            axes = None if self.shared else (0, 2)
            self.blobs[0].diff += terms.sum(axis=axes, dtype=np.float64).astype(F32)
        if propagate_down[0]:
            slope = np.multiply(x <= 0, self._slope(), out=self._scratch.like(x))
            slope += x > 0
            np.multiply(dy, slope, out=self._rows(bottom[0].diff))

    def forward_gpu(self, bottom, top):
        self.keep_input_gpu(bottom, top)
        n = bottom[0].count
        _, channels, dim = self._geometry(bottom[0].shape)
        _launch("prelu_forward", n, channels, dim, int(self.shared), bottom[0].gpu_data,
                self.blobs[0].gpu_data, top[0].mutable_gpu_data)

    def backward_gpu(self, top, propagate_down, bottom):
        n = bottom[0].count
        num, channels, dim = self._geometry(bottom[0].shape)
        x = self.input_gpu_data(top, bottom)
        if self.param_propagate_down[0] and n:
            image = channels * dim
            terms = self._dev.floats("slope_terms", image)
            _launch("prelu_slope_terms", image, num, top[0].gpu_diff, x, terms)
            rows = 1 if self.shared else channels
            gpu.blas().gemv(False, rows, image // rows, 1.0, terms, gpu.ones(image // rows), 1.0,
                            self.blobs[0].mutable_gpu_diff)
        if propagate_down[0]:
            _launch("prelu_backward", n, channels, dim, int(self.shared), top[0].gpu_diff, x,
                    self.blobs[0].gpu_data, bottom[0].mutable_gpu_diff)


@register("Swish")
class SwishLayer(_NeuronLayer):
    """y = x sigmoid(beta x); the sigmoid is kept for backward, which then
    reads only it and y (in place is safe)."""

    def layer_setup(self, bottom, top):
        self.beta = F32(self.param.swish_param.beta)
        self._scratch = Workspace()
        self._dev = gpu.Workspace()

    def forward(self, bottom, top):
        x = bottom[0].data
        s = np.multiply(x, self.beta, out=self._scratch.like(x, "sigmoid"))
        # Caffe's sigmoid: 0.5 tanh(0.5 z) + 0.5, which never overflows.
        s *= F32(0.5)
        np.tanh(s, out=s)
        s *= F32(0.5)
        s += F32(0.5)
        np.multiply(x, s, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = top[0].data
        s = self._scratch.like(y, "sigmoid")
        by = np.multiply(y, self.beta, out=self._scratch.like(y, "beta_y"))
        slope = np.subtract(F32(1), by, out=self._scratch.like(y, "slope"))
        slope *= s
        slope += by
        np.multiply(top[0].diff, slope, out=bottom[0].diff)

    def forward_gpu(self, bottom, top):
        n = bottom[0].count
        _launch("swish_forward", n, bottom[0].gpu_data, self.beta,
                self._dev.floats("sigmoid", n), top[0].mutable_gpu_data)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            n = bottom[0].count
            _launch("swish_backward", n, top[0].gpu_diff, top[0].gpu_data,
                    self._dev.floats("sigmoid", n), self.beta, bottom[0].mutable_gpu_diff)


@register("Threshold")
class ThresholdLayer(_NeuronLayer):
    """y = 1 where x > threshold, else 0.  Not differentiable: Caffe has no
    backward for it."""

    def layer_setup(self, bottom, top):
        self.threshold = F32(self.param.threshold_param.threshold)

    def forward(self, bottom, top):
        np.greater(bottom[0].data, self.threshold, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise self.error("has no backward (the step function has no useful gradient); "
                             "do not propagate down to its bottom")

    def forward_gpu(self, bottom, top):
        _launch("threshold_forward", bottom[0].count, bottom[0].gpu_data, self.threshold,
                top[0].mutable_gpu_data)

    def backward_gpu(self, top, propagate_down, bottom):
        self.backward(top, propagate_down, bottom)
