"""Elementwise activation layers: ReLU, Sigmoid, TanH, Dropout.

All of them may run in place (top is bottom).  Their backward passes read
only the top data (or, for ReLU, the bottom data whose sign equals the
top's) and compute every temporary before writing the bottom diff, so they
stay correct when ``top[0].diff is bottom[0].diff``.
"""
import numpy as np

from ..backends import gpu
from ..blob import DTYPE
from ..elementwise import maximum_scalar, minimum_scalar
from ..layer import Layer, register
from ..proto import caffe_pb2
from ..random import get_rng
from ..workspace import Workspace


_UINT_MAX = 2 ** 32 - 1


def _elementwise_forward_gpu(kernel, bottom, top):
    """y = f(x) by a kernel (n, x, y)."""
    n = bottom[0].count
    gpu.kernel(kernel)(n, n, bottom[0].gpu_data, top[0].mutable_gpu_data)


def _elementwise_backward_gpu(kernel, top, bottom):
    """dx = dy * f'(x) by a kernel (n, dy, y, dx) reading only the top data,
    so in place is safe."""
    n = bottom[0].count
    gpu.kernel(kernel)(n, n, top[0].gpu_diff, top[0].gpu_data, bottom[0].mutable_gpu_diff)


class _NeuronLayer(Layer):
    """One bottom, one top of the same shape (Caffe's NeuronLayer)."""
    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)


@register("ReLU")
class ReLULayer(_NeuronLayer):
    """y = max(x, 0) + negative_slope * min(x, 0)."""

    def layer_setup(self, bottom, top):
        self.negative_slope = DTYPE(self.param.relu_param.negative_slope)
        self._scratch = Workspace()

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        if self.negative_slope == 0:
            maximum_scalar(x, 0, y)
            return
        negative = minimum_scalar(x, 0, self._scratch.like(x))
        negative *= self.negative_slope
        maximum_scalar(x, 0, y)
        y += negative

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        # In place, bottom data is the top data: same sign, same gradient.
        x, dy, dx = bottom[0].data, top[0].diff, bottom[0].diff
        if self.negative_slope == 0:
            np.multiply(dy, x > 0, out=dx)
            return
        negative = np.multiply(dy, x <= 0, out=self._scratch.like(x))
        negative *= self.negative_slope
        np.multiply(dy, x > 0, out=dx)
        dx += negative

    def forward_gpu(self, bottom, top):
        n = bottom[0].count
        gpu.kernel("relu_forward")(n, n, bottom[0].gpu_data, top[0].mutable_gpu_data,
                                   self.negative_slope)

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        n = bottom[0].count
        gpu.kernel("relu_backward")(n, n, top[0].gpu_diff, bottom[0].gpu_data,
                                    bottom[0].mutable_gpu_diff, self.negative_slope)


@register("Sigmoid")
class SigmoidLayer(_NeuronLayer):
    """y = 1 / (1 + exp(-x)), computed as Caffe does through tanh, which
    never overflows."""

    def layer_setup(self, bottom, top):
        self._scratch = Workspace()

    def forward(self, bottom, top):
        y = top[0].data
        np.multiply(bottom[0].data, DTYPE(0.5), out=y)
        np.tanh(y, out=y)
        y *= DTYPE(0.5)
        y += DTYPE(0.5)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = top[0].data
        slope = np.subtract(DTYPE(1), y, out=self._scratch.like(y))
        slope *= y
        np.multiply(top[0].diff, slope, out=bottom[0].diff)

    def forward_gpu(self, bottom, top):
        _elementwise_forward_gpu("sigmoid_forward", bottom, top)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            _elementwise_backward_gpu("sigmoid_backward", top, bottom)


@register("TanH")
class TanHLayer(_NeuronLayer):

    def layer_setup(self, bottom, top):
        self._scratch = Workspace()

    def forward(self, bottom, top):
        np.tanh(bottom[0].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = top[0].data
        slope = np.multiply(y, y, out=self._scratch.like(y))
        np.subtract(DTYPE(1), slope, out=slope)
        np.multiply(top[0].diff, slope, out=bottom[0].diff)

    def forward_gpu(self, bottom, top):
        _elementwise_forward_gpu("tanh_forward", bottom, top)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            _elementwise_backward_gpu("tanh_backward", top, bottom)


@register("Dropout")
class DropoutLayer(_NeuronLayer):
    """Caffe's inverted dropout: in TRAIN each unit is kept with probability
    1 - dropout_ratio and scaled by 1 / (1 - dropout_ratio), so TEST is the
    identity.  The mask comes from the framework's seedable generator.
    With the Fast R-CNN fork's `scale_train: false`, kept units are not
    scaled in TRAIN and TEST multiplies by 1 - dropout_ratio instead."""

    def layer_setup(self, bottom, top):
        ratio = float(self.param.dropout_param.dropout_ratio)
        if not 0.0 <= ratio < 1.0:
            raise self.error(f"dropout_ratio must be in [0, 1), got {ratio}")
        self.keep_prob = DTYPE(1.0 - ratio)
        self.scale = DTYPE(1.0 / (1.0 - ratio))
        self.train = self.phase == caffe_pb2.TRAIN
        if not self.param.dropout_param.scale_train:
            self.scale = DTYPE(1.0)
        # What TEST multiplies by: 1 unless the scaling moved there.
        self.test_scale = None if self.param.dropout_param.scale_train else self.keep_prob
        # Caffe's uint_thres_: on the device a unit is dropped when its 32
        # random bits are at most UINT_MAX * dropout_ratio.
        self._gpu_threshold = int(_UINT_MAX * ratio)
        # Kept units hold `scale`, dropped ones 0: one multiply applies both.
        self._mask = Workspace()

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        if not self.train:
            if self.test_scale is not None:
                np.multiply(x, self.test_scale, out=y)
            elif y is not x:
                np.copyto(y, x)
            return
        mask = self._mask.like(x)
        get_rng().random(out=mask, dtype=DTYPE)
        np.multiply(mask < self.keep_prob, self.scale, out=mask)
        np.multiply(x, mask, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, dx = top[0].diff, bottom[0].diff
        if self.train:
            np.multiply(dy, self._mask.like(dy), out=dx)
        elif self.test_scale is not None:
            np.multiply(dy, self.test_scale, out=dx)
        elif dx is not dy:
            np.copyto(dx, dy)

    # The device mask is a hash of (seed, element index) (kernels/dropout.cu):
    # one seed drawn per forward from the framework's generator, and
    # backward recomputes the same mask from it instead of storing one.
    def forward_gpu(self, bottom, top):
        n = bottom[0].count
        if not self.train:
            if top[0] is not bottom[0]:
                gpu.blas().copy(top[0].mutable_gpu_data, bottom[0].gpu_data, 4 * n)
            if self.test_scale is not None:
                gpu.blas().scal(n, self.test_scale, top[0].mutable_gpu_data)
            return
        self._gpu_seed = int(get_rng().integers(0, 2 ** 64, dtype=np.uint64))
        gpu.kernel("dropout_forward")(n, n, bottom[0].gpu_data, top[0].mutable_gpu_data,
                                      self._gpu_seed, self._gpu_threshold, self.scale)

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        n = bottom[0].count
        if not self.train:
            if top[0] is not bottom[0]:
                gpu.blas().copy(bottom[0].mutable_gpu_diff, top[0].gpu_diff, 4 * n)
            if self.test_scale is not None:
                gpu.blas().scal(n, self.test_scale, bottom[0].mutable_gpu_diff)
            return
        gpu.kernel("dropout_backward")(n, n, top[0].gpu_diff, bottom[0].mutable_gpu_diff,
                                       self._gpu_seed, self._gpu_threshold, self.scale)
