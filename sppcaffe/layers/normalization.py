"""Normalising layers: BatchNorm and MVN, as Caffe's.

BatchNorm normalises each channel of an N x C x ... blob over the batch
and spatial axes.  Its three blobs are running statistics, not learned
parameters: the mean and variance sums and their scale factor, updated in
every TRAIN-phase forward as moving averages; TEST phase (or
use_global_stats) normalises with them instead of the batch's.

MVN normalises each (sample, channel) -- or each sample, across_channels --
to zero mean and, with normalize_variance, unit variance; its eps is added
to the standard deviation, where BatchNorm adds it to the variance.

Device code: broadcasts with the kernels of scale_bias.cu, the rest in
normalization.cu; sums are gemv's against ones (scale_bias.broadcast_sums_gpu).
"""
import numpy as np

from ..backends import gpu
from ..blob import DTYPE
from ..layer import Layer, register
from ..proto import caffe_pb2
from ..workspace import Workspace
from .scale_bias import broadcast_sums_gpu


def _normalized_backward(dy, y, stddev, inv_m, out, scratch):
    """dx = (dy - inv_m * (sum(dy) + y * sum(dy * y))) / stddev for arrays of
    shape (outer, groups, inner), sums over outer and inner, as Caffe's
    BatchNorm and MVN backward (batch statistics).  `out` may be `dy`."""
    product = np.multiply(dy, y, out=scratch.like(dy, "product"))
    sum_dy_y = product.sum(axis=(0, 2), dtype=DTYPE, keepdims=True)
    sum_dy = dy.sum(axis=(0, 2), dtype=DTYPE, keepdims=True)
    np.multiply(y, sum_dy_y, out=product)
    product += sum_dy
    product *= DTYPE(-inv_m)
    product += dy
    np.divide(product, stddev, out=out)


@register("BatchNorm")
class BatchNormLayer(Layer):
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.batch_norm_param
        self.moving_average_fraction = DTYPE(p.moving_average_fraction)
        self.use_global_stats = self.phase == caffe_pb2.TEST
        if p.HasField("use_global_stats"):
            self.use_global_stats = p.use_global_stats
        self.eps = DTYPE(p.eps)
        self.channels = 1 if bottom[0].ndim == 1 else bottom[0].shape[1]
        if not self.blobs:
            for i, shape in enumerate(((self.channels,), (self.channels,), (1,))):
                blob = self.new_param_blob(shape, i)
                blob.data[...] = 0
                self.blobs.append(blob)
        self._freeze_statistics()
        self.param_propagate_down = [False] * len(self.blobs)
        self._scratch = Workspace()
        self._device = gpu.Workspace()

    def _freeze_statistics(self):
        """Caffe masks the statistics from the solver with lr_mult 0; the net
        registers params from this same LayerParameter."""
        specs = self.param.param
        for i in range(len(self.blobs)):
            if len(specs) == i:
                specs.add().lr_mult = 0.0
            elif specs[i].lr_mult != 0:
                raise self.error("Cannot configure batch normalization statistics as layer "
                                 f"parameters (param {i} has lr_mult {specs[i].lr_mult}; "
                                 "it must be 0)")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if bottom[0].ndim >= 2 and shape[1] != self.channels:
            raise self.error(f"bottom has {shape[1]} channels (shape {shape}), the layer was "
                             f"set up for {self.channels}")
        top[0].reshape(shape)
        self.num = shape[0] if shape else 1
        self.spatial = bottom[0].count // max(self.num * self.channels, 1)

    def view3(self, array):
        return array.reshape(self.num, self.channels, self.spatial)

    def _column(self, vector):
        return vector.reshape(1, self.channels, 1)

    @property
    def _m(self):
        return self.num * self.spatial

    def _bias_correction(self):
        m = self._m
        return DTYPE(m / (m - 1)) if m > 1 else DTYPE(1)

    # ---- host ------------------------------------------------------------
    def forward(self, bottom, top):
        x, y = self.view3(bottom[0].data), self.view3(top[0].data)
        if self.use_global_stats:
            factor = self.blobs[2].data[0]
            factor = DTYPE(0) if factor == 0 else DTYPE(1) / factor
            mean = self.blobs[0].data * factor
            variance = self.blobs[1].data * factor
        else:
            mean = x.mean(axis=(0, 2), dtype=DTYPE)
        np.subtract(x, self._column(mean), out=y)
        if not self.use_global_stats:
            squares = np.multiply(y, y, out=self._scratch.like(y, "squares"))
            variance = squares.mean(axis=(0, 2), dtype=DTYPE)
            self._update_statistics(mean, variance)
        stddev = self._scratch.get("stddev", (self.channels,))
        np.sqrt(variance + self.eps, out=stddev)
        np.divide(y, self._column(stddev), out=y)
        if not self.use_global_stats:
            # Batch statistics' backward reads the normalised input, which
            # later in-place layers (Scale, ReLU) overwrite; with stored
            # statistics it needs only stddev.
            np.copyto(self._scratch.like(y, "x_norm"), y)

    def _update_statistics(self, mean, variance):
        maf = self.moving_average_fraction
        mean_sum, variance_sum, factor = (b.data for b in self.blobs)
        factor *= maf
        factor += DTYPE(1)
        mean_sum *= maf
        mean_sum += mean
        variance_sum *= maf
        variance_sum += self._bias_correction() * variance

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, dx = self.view3(top[0].diff), self.view3(bottom[0].diff)
        stddev = self._column(self._scratch.get("stddev", (self.channels,)))
        if self.use_global_stats:
            np.divide(dy, stddev, out=dx)
            return
        x_norm = self._scratch.get("x_norm", dy.shape)
        _normalized_backward(dy, x_norm, stddev, 1.0 / self._m, dx, self._scratch)

    # ---- device ----------------------------------------------------------
    def _launch(self, kernel, *args):
        n = self.num * self.channels * self.spatial
        gpu.kernel(kernel)(n, n, *args)

    def _channel_sums(self, x, out, alpha=1.0):
        broadcast_sums_gpu(x, self.num, self.channels, self.spatial, out, self._device, alpha)

    def forward_gpu(self, bottom, top):
        c, count = self.channels, bottom[0].count
        ws = self._device
        mean, stddev = ws.floats("mean", c), ws.floats("stddev", c)
        x, y = bottom[0].gpu_data, top[0].mutable_gpu_data
        if self.use_global_stats:
            gpu.kernel("batchnorm_global_stats")(
                c, c, self.blobs[0].gpu_data, self.blobs[1].gpu_data, self.blobs[2].gpu_data,
                self.eps, mean, stddev)
        else:
            self._channel_sums(x, mean, 1.0 / self._m)
        self._launch("bias_forward", x, mean, -1.0, c, self.spatial, y)
        if not self.use_global_stats:
            squares, variance = ws.floats("squares", count), ws.floats("variance", c)
            gpu.kernel("eltwise_mul")(count, count, y, y, squares)
            self._channel_sums(squares, variance, 1.0 / self._m)
            gpu.kernel("batchnorm_update_stats")(
                c, c, mean, variance, self.blobs[0].mutable_gpu_data,
                self.blobs[1].mutable_gpu_data, self.blobs[2].mutable_gpu_data,
                self.moving_average_fraction, self._bias_correction())
            gpu.kernel("batchnorm_stddev")(c, c, variance, self.eps, stddev)
        self._launch("scale_divide", y, stddev, c, self.spatial, y)
        gpu.blas().copy(ws.floats("x_norm", count), y, 4 * count)

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        c, count = self.channels, bottom[0].count
        ws = self._device
        stddev = ws.floats("stddev", c)
        dy, dx = top[0].gpu_diff, bottom[0].mutable_gpu_diff
        if self.use_global_stats:
            self._launch("scale_divide", dy, stddev, c, self.spatial, dx)
            return
        x_norm, product = ws.floats("x_norm", count), ws.floats("squares", count)
        sum_dy, sum_dy_y = ws.floats("sum_dy", c), ws.floats("sum_dy_y", c)
        gpu.kernel("eltwise_mul")(count, count, dy, x_norm, product)
        self._channel_sums(product, sum_dy_y)
        self._channel_sums(dy, sum_dy)
        self._launch("batchnorm_backward", dy, x_norm, sum_dy, sum_dy_y, stddev,
                     1.0 / self._m, c, self.spatial, dx)


@register("MVN")
class MVNLayer(Layer):
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.mvn_param
        self.normalize_variance = p.normalize_variance
        self.across_channels = p.across_channels
        self.eps = DTYPE(p.eps)
        self._scratch = Workspace()
        self._device = gpu.Workspace()

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        # Caffe reshapes the top through the legacy num/channels/height/width
        # accessors: always 4-D, and no more than 4 axes allowed.
        if len(shape) > 4:
            raise self.error(f"cannot use legacy accessors on blobs with > 4 axes "
                             f"(bottom shape {shape})")
        legacy = tuple(shape) + (1,) * (4 - len(shape))
        top[0].reshape(legacy)
        num, channels = legacy[0], legacy[1]
        self.rows = num if self.across_channels else num * channels
        self.dim = bottom[0].count // self.rows if self.rows else 0

    def view3(self, array):
        return array.reshape(1, self.rows, self.dim)

    # ---- host ------------------------------------------------------------
    def forward(self, bottom, top):
        x, y = self.view3(bottom[0].data), self.view3(top[0].data)
        mean = x.mean(axis=2, dtype=DTYPE, keepdims=True)
        np.subtract(x, mean, out=y)
        if not self.normalize_variance:
            return
        squares = np.multiply(y, y, out=self._scratch.like(y, "squares"))
        stddev = self._scratch.get("stddev", (1, self.rows, 1))
        np.sqrt(squares.mean(axis=2, dtype=DTYPE, keepdims=True), out=stddev)
        stddev += self.eps
        np.divide(y, stddev, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, dx = self.view3(top[0].diff), self.view3(bottom[0].diff)
        if self.normalize_variance:
            stddev = self._scratch.get("stddev", (1, self.rows, 1))
            _normalized_backward(dy, self.view3(top[0].data), stddev, 1.0 / self.dim, dx,
                                 self._scratch)
        else:
            np.subtract(dy, dy.mean(axis=2, dtype=DTYPE, keepdims=True), out=dx)

    # ---- device: rows as the broadcast groups (dim = rows, inner = row length)
    def _launch(self, kernel, *args):
        n = self.rows * self.dim
        gpu.kernel(kernel)(n, n, *args)

    def _row_means(self, x, out, alpha):
        gpu.blas().gemv(False, self.rows, self.dim, alpha, x, gpu.ones(self.dim), 0.0, out)

    def forward_gpu(self, bottom, top):
        ws, rows, count = self._device, self.rows, bottom[0].count
        x, y = bottom[0].gpu_data, top[0].mutable_gpu_data
        mean = ws.floats("mean", rows)
        self._row_means(x, mean, 1.0 / self.dim)
        self._launch("bias_forward", x, mean, -1.0, rows, self.dim, y)
        if not self.normalize_variance:
            return
        squares, variance = ws.floats("squares", count), ws.floats("variance", rows)
        stddev = ws.floats("stddev", rows)
        gpu.kernel("eltwise_mul")(count, count, y, y, squares)
        self._row_means(squares, variance, 1.0 / self.dim)
        gpu.kernel("mvn_stddev")(rows, rows, variance, self.eps, stddev)
        self._launch("scale_divide", y, stddev, rows, self.dim, y)

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        ws, rows, count = self._device, self.rows, bottom[0].count
        dy, dx = top[0].gpu_diff, bottom[0].mutable_gpu_diff
        sum_dy = ws.floats("sum_dy", rows)
        if not self.normalize_variance:
            self._row_means(dy, sum_dy, 1.0 / self.dim)
            self._launch("bias_forward", dy, sum_dy, -1.0, rows, self.dim, dx)
            return
        product, sum_dy_y = ws.floats("squares", count), ws.floats("sum_dy_y", rows)
        gpu.kernel("eltwise_mul")(count, count, dy, top[0].gpu_data, product)
        self._row_means(product, sum_dy_y, 1.0)
        self._row_means(dy, sum_dy, 1.0)
        self._launch("batchnorm_backward", dy, top[0].gpu_data, sum_dy, sum_dy_y,
                     ws.floats("stddev", rows), 1.0 / self.dim, rows, self.dim, dx)
