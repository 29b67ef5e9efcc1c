"""Local response normalisation: Caffe's LRN layer.

Both regions share one formula, with W the zero-padded sum over a centred
window of `local_size` = n cells:

    scale = k' + a * W(x^2),     y = x * scale^-beta
    dx    = dy * scale^-beta - 2 a beta * x * W(dy * y / scale)

(W is its own adjoint, which gives the backward formula).
- ACROSS_CHANNELS: W runs over n channels, a = alpha / n, k' = k
  (Caffe's CrossChannelForward/Backward).
- WITHIN_CHANNEL: W runs over an n x n spatial box, a = alpha / n^2 and
  k' = 1, k being ignored: Caffe composes this region from an AVE pooling
  (kernel n, pad (n-1)/2, stride 1; its divisor counts the padded cells, so
  it is n^2 even at the borders) and a Power layer with shift 1.
"""
import numpy as np

from ..backends import gpu
from ..blob import DTYPE
from ..layer import Layer, register
from ..proto import caffe_pb2


# Elements of one block of work.  A block's half-dozen arrays then stay in
# the CPU caches through the ~10 elementwise passes LRN makes over them;
# whole-array passes stream each one through DRAM and measured 1.8x slower
# on ZF-5's first LRN (8x96x110x110).
_BLOCK_ELEMENTS = 1 << 18


class _WindowSum:
    """Zero-padded sum over a centred window of `size` cells along some axes
    of a block of independent units (axis 0), for any leading count of them.

    The operand is written into `interior`, a view into a zero-bordered
    buffer.  On the flattened buffer a window sum along one axis is then the
    sum of `size` copies shifted by that axis' stride: one contiguous NumPy
    op per window offset, whatever the batch or channel count (a cumulative
    sum along the axis, the other loop-free way, measured 3x slower than the
    four adds of local_size 5, and cancels precision away).  Reads that
    run past a row (or plane, or unit) only ever land in border cells of the
    result, which `__call__` never exposes; so the borders of the operand
    buffer, never written, stay zero, and the other buffers may hold stale
    values there.
    """

    def __init__(self, shape, size, axes):
        pad = size - 1
        padded = list(shape)
        for axis in axes:
            padded[axis] += pad
        self.size = size
        self.unit = int(np.prod(padded[1:]))
        self.src = np.zeros(padded, DTYPE)
        self.dst = np.zeros(padded, DTYPE)
        # Two axes go through a scratch buffer.
        self.buffers = [self.src] + ([np.zeros(padded, DTYPE)] if len(axes) > 1 else []) + [self.dst]
        # Innermost axis first: its stride is the smallest.
        self.strides = [int(np.prod(padded[axis + 1:])) for axis in sorted(axes, reverse=True)]
        self.interior = self.src[tuple(slice(pad // 2, pad // 2 + s) if a in axes else slice(None)
                                       for a, s in enumerate(shape))]
        self.result = self.dst[tuple(slice(0, s) for s in shape)]

    def _shifted_sum(self, src, dst, stride):
        m = src.size - (self.size - 1) * stride
        if self.size == 1:
            np.copyto(dst[:m], src[:m])
            return
        np.add(src[:m], src[stride:stride + m], out=dst[:m])
        for d in range(2, self.size):
            dst[:m] += src[d * stride:d * stride + m]

    def __call__(self, count):
        """Window sums of `interior[:count]`, as a view shaped like it."""
        flat = [b.reshape(-1)[:count * self.unit] for b in self.buffers]
        for stride, src, dst in zip(self.strides, flat, flat[1:]):
            self._shifted_sum(src, dst, stride)
        return self.result[:count]


def _power(base, exponent, out, scratch):
    """out = base ** exponent.  For the 0.75 of every LRN in the model zoo,
    sqrt(b) * sqrt(sqrt(b)) is several times faster than pow and within
    two float32 ulps of it."""
    if exponent == 0.75:
        np.sqrt(base, out=out)
        np.sqrt(out, out=scratch)
        out *= scratch
    elif exponent == 0.5:
        np.sqrt(base, out=out)
    elif exponent == 1.0:
        np.copyto(out, base)
    else:
        np.power(base, DTYPE(exponent), out=out)


@register("LRN")
class LRNLayer(Layer):
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 != 1:
            raise self.error(f"LRN only supports odd values for local_size, got {self.size}")
        self.beta = float(p.beta)
        self.within = p.norm_region == caffe_pb2.LRNParameter.WITHIN_CHANNEL
        if self.within:
            self.a, self.k = float(p.alpha) / (self.size * self.size), 1.0
        else:
            self.a, self.k = float(p.alpha) / self.size, float(p.k)
        self._shape = None
        self._dev = gpu.Workspace()     # the device's scale (and backward scratch)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.error(f"input must have 4 axes (num, channels, height, width), got shape {shape}")
        top[0].reshape(shape)
        if shape == self._shape:
            return
        self._shape = shape
        num, channels, height, width = shape
        # Units normalised independently of each other: planes within
        # channels, whole images across them.
        if self.within:
            self._units = (num * channels, 1, height, width)
            axes = (2, 3)
        else:
            self._units = shape
            axes = (1,)
        unit_size = int(np.prod(self._units[1:]))
        self._block = max(1, min(self._units[0], _BLOCK_ELEMENTS // max(unit_size, 1)))
        block_shape = (self._block,) + self._units[1:]
        self._window = _WindowSum(block_shape, self.size, axes)
        self._scratch = np.empty(block_shape, DTYPE)
        self._scale = np.empty(self._units, DTYPE)
        self._scale_pow = np.empty(self._units, DTYPE)     # scale^beta

    def _blocks(self):
        units = self._units[0]
        for lo in range(0, units, self._block):
            yield slice(lo, min(lo + self._block, units))

    def forward(self, bottom, top):
        x, y = bottom[0].data.reshape(self._units), top[0].data.reshape(self._units)
        for b in self._blocks():
            self._forward_block(x[b], y[b], self._scale[b], self._scale_pow[b])

    def _forward_block(self, x, y, scale, scale_pow):
        count = len(x)
        np.multiply(x, x, out=self._window.interior[:count])
        np.multiply(self._window(count), DTYPE(self.a), out=scale)
        scale += DTYPE(self.k)
        _power(scale, self.beta, scale_pow, self._scratch[:count])
        np.divide(x, scale_pow, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x, y = bottom[0].data.reshape(self._units), top[0].data.reshape(self._units)
        dy, dx = top[0].diff.reshape(self._units), bottom[0].diff.reshape(self._units)
        for b in self._blocks():
            self._backward_block(x[b], y[b], dy[b], dx[b], self._scale[b], self._scale_pow[b])

    def _backward_block(self, x, y, dy, dx, scale, scale_pow):
        count = len(x)
        ratio = self._window.interior[:count]
        np.multiply(dy, y, out=ratio)
        ratio /= scale
        correction = np.multiply(self._window(count), x, out=self._scratch[:count])
        correction *= DTYPE(2.0 * self.a * self.beta)
        np.divide(dy, scale_pow, out=dx)
        dx -= correction

    # ---- device code (kernels/lrn.cu) ----------------------------------
    # The scale is kept on the device from forward to backward, as Caffe's
    # scale_ blob; the host's _scale arrays are not used.
    def forward_gpu(self, bottom, top):
        num, channels, height, width = bottom[0].shape
        count = bottom[0].count
        x = bottom[0].gpu_data
        scale = self._dev.floats("scale", count)
        if self.within:
            gpu.kernel("lrn_within_fill_scale")(count, count, x, height, width, self.size,
                                                self.a, self.k, scale)
        else:
            gpu.kernel("lrn_across_fill_scale")(count, count, x, channels, height * width,
                                                self.size, self.a, self.k, scale)
        gpu.kernel("lrn_compute_output")(count, count, x, scale, -self.beta,
                                         top[0].mutable_gpu_data)

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        num, channels, height, width = bottom[0].shape
        count = bottom[0].count
        x, y, dy = bottom[0].gpu_data, top[0].gpu_data, top[0].gpu_diff
        scale = self._dev.floats("scale", count)
        cache_ratio = 2.0 * self.a * self.beta
        ratio = self._dev.floats("ratio", count)
        gpu.kernel("lrn_ratio")(count, count, dy, y, scale, ratio)
        if self.within:
            gpu.kernel("lrn_within_compute_diff")(count, count, x, scale, dy, ratio, height, width,
                                                  self.size, -self.beta, cache_ratio,
                                                  bottom[0].mutable_gpu_diff)
        else:
            gpu.kernel("lrn_across_compute_diff")(count, count, x, scale, dy, ratio, channels,
                                                  height * width, self.size, -self.beta,
                                                  cache_ratio, bottom[0].mutable_gpu_diff)
