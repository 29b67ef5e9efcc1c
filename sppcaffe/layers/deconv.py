"""Deconvolution and Im2col, as Caffe's DeconvolutionLayer and Im2colLayer.

Deconvolution is Convolution run backwards: its forward is the
convolution's data gradient and its backward the convolution's forward
(bottom diff) and weight gradient, with the roles of bottom and top
swapped.  Seen as that convolution, the deconvolution's top is the
convolution's input and its bottom the convolution's output, so the
column matrix (sppcaffe.im2col's layout) has C_out*kh*kw rows and one
column per *bottom* position, and the weight blob (C_in, C_out/group, kh,
kw) is the convolution's (O, C/group, kh, kw) as it stands.

Im2col exposes that column matrix, per image, as a top blob
(N, C*kh*kw, Ho, Wo).

Both keep the whole batch in one GEMM per group like Convolution (the sums
are Caffe's, in another order), on the host and on the device, where the
kernels are Convolution's own (kernels/im2col.cu).
"""
import numpy as np

from ..backends import gpu
from ..im2col import add_matmul, col2im, im2col
from ..layer import Layer, canonical_axis, register
from ..workspace import Workspace
from .conv import ConvolutionLayer, _group_slices, read_geometry

_INT32_MAX = 2 ** 31 - 1


def _to_rows(images, work, name):
    """(N, C, *spatial) -> (C, N*P): the channels of every image side by
    side, the layout the batch-wide GEMMs take (a view for one image)."""
    n, c = images.shape[:2]
    x = images.reshape(n, c, -1)
    if n == 1:
        return x[0]
    rows = work.get(name, (c, n, x.shape[2]))
    np.copyto(rows, x.transpose(1, 0, 2))
    return rows.reshape(c, -1)


def _from_rows(rows, images):
    """Write (C, N*P) rows into (N, C, *spatial) images (the inverse of _to_rows)."""
    n, c = images.shape[:2]
    x = images.reshape(n, c, -1)
    np.copyto(x, rows.reshape(c, n, -1).transpose(1, 0, 2))


def _check_int32(layer, *counts):
    if max(counts) > _INT32_MAX:
        raise layer.error(f"blobs of {max(counts)} elements are too large for the device "
                          f"kernels (2^31 elements)")


@register("Deconvolution")
class DeconvolutionLayer(ConvolutionLayer):
    """Reuses Convolution's parameter handling (_check_axes, _setup_params,
    _weights2d), reshape and grouped device GEMM (_gemm_groups); the rest
    is its own, since what is input and what is output is reversed."""

    # ---- setup --------------------------------------------------------
    def layer_setup(self, bottom, top):
        p = self._read_convolution_param(bottom, top)
        kh, kw = self.geom.kernel
        # Caffe's reverse_dimensions(): the convolution this one transposes
        # has num_output = C_in and C_out input channels.
        self._setup_params(p, (self.channels, self.num_output // self.group, kh, kw))
        self.param_propagate_down = [True] * len(self.blobs)
        self._in_groups = _group_slices(self.channels, self.group)
        self._col_groups = _group_slices(self.num_output * kh * kw, self.group)
        self._work = Workspace()
        self._dev = gpu.Workspace()
        self._bottom_shape = None

    def _plan(self, shape):
        if len(shape) != 4:
            raise self.error(f"input must stay 4-D, got shape {shape}")
        n, c, h, w = shape
        if c != self.channels:
            raise self.error(f"input has {c} channels, the weights expect {self.channels}")
        ho, wo = (s * (size - 1) + e - 2 * p for size, s, e, p in
                  zip((h, w), self.geom.stride, self.geom.extent(), self.geom.pad))
        if ho < 1 or wo < 1:
            raise self.error(f"output size {(ho, wo)} is empty: padding {self.geom.pad} "
                             f"crops away everything a {(h, w)} input spreads to")
        self._bottom_shape = shape
        self._top_shape = (n, self.num_output, ho, wo)

    # ---- host code ------------------------------------------------------
    def _columns(self):
        n, _, h, w = self._bottom_shape
        kh, kw = self.geom.kernel
        return self._work.get("columns", (self.num_output * kh * kw, n * h * w))

    def _padded_top(self):
        """col2im/im2col scratch for the padded top (None without padding)."""
        if self.geom.pad == (0, 0):
            return None
        n, o, ho, wo = self._top_shape
        ph, pw = self.geom.pad
        return self._work.get("padded", (n, o, ho + 2 * ph, wo + 2 * pw))

    def forward(self, bottom, top):
        w2 = self._weights2d()
        for b, t in zip(bottom, top):
            x = _to_rows(b.data, self._work, "rows")
            col = self._columns()
            for ig, kg in zip(self._in_groups, self._col_groups):
                np.matmul(w2[ig].T, x[ig], out=col[kg])
            col2im(col, self.geom, t.data, self._padded_top())
            if self.bias_term:
                y = t.data.reshape(t.shape[0], t.shape[1], -1)
                y += self.blobs[1].data[:, None]

    def backward(self, top, propagate_down, bottom):
        want_w = self.param_propagate_down[0]
        want_b = self.bias_term and self.param_propagate_down[1]
        w2 = self._weights2d()
        for i, (t, b) in enumerate(zip(top, bottom)):
            if want_b:
                dy = t.diff.reshape(t.shape[0], t.shape[1], -1)
                self.blobs[1].diff += dy.sum(axis=(0, 2), dtype=np.float32)
            if not (want_w or propagate_down[i]):
                continue
            dcol = im2col(t.diff, self.geom, self._columns(), self._padded_top())
            if want_w:
                x = _to_rows(b.data, self._work, "rows")
                grad = self.blobs[0].diff.reshape(w2.shape)
                for ig, kg in zip(self._in_groups, self._col_groups):
                    add_matmul(x[ig], dcol[kg].T, grad[ig])
            if propagate_down[i]:
                n, c, h, w = self._bottom_shape
                single = n == 1
                dx = (b.diff.reshape(c, h * w) if single
                      else self._work.get("rows", (c, n, h * w)).reshape(c, -1))
                for ig, kg in zip(self._in_groups, self._col_groups):
                    np.matmul(w2[ig], dcol[kg], out=dx[ig])
                if not single:
                    _from_rows(dx, b.diff)

    # ---- device code ------------------------------------------------------
    # Sizes: C = C_in bottom channels, P = H*W bottom positions per image,
    # K = C_out*kh*kw column rows, T = C_out*Ho*Wo top values per image.  A
    # chunk of L images has columns (K, L*P) and bottom rows (C, L*P), group
    # g owning the row blocks g*K/G.. and g*C/G.. of each.
    def _device_sizes(self):
        n, c, h, w = self._bottom_shape
        kh, kw = self.geom.kernel
        _, o, ho, wo = self._top_shape
        return n, c, h * w, o * kh * kw, o * ho * wo

    def _images_per_chunk(self):
        n, c, p, k, t = self._device_sizes()
        step = max(1, min(n, self.gpu_column_bytes // (4 * (k + c) * p)))
        _check_int32(self, k * p * step, c * p * step, t * step, n * t)
        return step

    def _device_chunks(self):
        n = self._bottom_shape[0]
        step = self._images_per_chunk()
        return step, [(lo, min(lo + step, n)) for lo in range(0, n, step)]

    def _col_geometry(self):
        """col2im/im2col arguments: the top is the image, the bottom the columns."""
        _, o, ho, wo = self._top_shape
        g = self.geom
        return (o, ho, wo, *g.kernel, *g.pad, *g.stride, *g.dilation, *self._bottom_shape[2:])

    def _rows_gpu(self, x, lo, hi, step):
        """Bottom images [lo, hi) at device address x as (C, L*P) rows (the
        images themselves when L is 1)."""
        _, c, p, _, _ = self._device_sizes()
        if hi - lo == 1:
            return x + 4 * lo * c * p
        rows = self._dev.floats("rows", c * step * p)
        count = c * (hi - lo) * p
        gpu.kernel("conv_images_to_rows")(count, count, x + 4 * lo * c * p, hi - lo, c, p, rows)
        return rows

    def forward_gpu(self, bottom, top):
        n, c, p, k, t = self._device_sizes()
        kg, cg = k // self.group, c // self.group
        w = self.blobs[0].gpu_data
        step, chunks = self._device_chunks()
        for b, tp in zip(bottom, top):
            x, y = b.gpu_data, tp.mutable_gpu_data
            for lo, hi in chunks:
                span = (hi - lo) * p
                rows = self._rows_gpu(x, lo, hi, step)
                col = self._dev.floats("columns", k * step * p)
                self._gemm_groups(True, False, kg, span, cg, w, cg * kg, rows, cg * span, 0.0,
                                  col, kg * span)
                count = (hi - lo) * t
                gpu.kernel("col2im_batch")(count, count, col, hi - lo, *self._col_geometry(),
                                           y + 4 * lo * t)
            if self.bias_term:
                o = self.num_output
                gpu.kernel("conv_add_bias")(n * t, n * t, y, self.blobs[1].gpu_data, o, t // o)

    def backward_gpu(self, top, propagate_down, bottom):
        n, c, p, k, t = self._device_sizes()
        kg, cg = k // self.group, c // self.group
        want_w = self.param_propagate_down[0]
        want_b = self.bias_term and self.param_propagate_down[1]
        w = self.blobs[0].gpu_data
        step, chunks = self._device_chunks()
        for i, (tp, b) in enumerate(zip(top, bottom)):
            dy = tp.gpu_diff
            if want_b:
                self._deconv_bias_grad_gpu(dy)
            want_x = propagate_down[i]
            if not (want_w or want_x):
                continue
            x = b.gpu_data if want_w else 0
            dx = b.mutable_gpu_diff if want_x else 0
            for lo, hi in chunks:
                span = (hi - lo) * p
                col = self._dev.floats("columns", k * step * p)
                count = self.num_output * span
                gpu.kernel("im2col_batch")(count, count, dy + 4 * lo * t, hi - lo,
                                           *self._col_geometry(), col)
                if want_w:
                    rows = self._rows_gpu(x, lo, hi, step)
                    self._gemm_groups(False, True, cg, kg, span, rows, cg * span, col, kg * span,
                                      1.0, self.blobs[0].mutable_gpu_diff, cg * kg)
                if want_x:
                    single = hi - lo == 1
                    out = dx + 4 * lo * c * p if single else self._dev.floats("rows",
                                                                               c * step * p)
                    self._gemm_groups(False, False, cg, span, kg, w, cg * kg, col, kg * span,
                                      0.0, out, cg * span)
                    if not single:
                        count = c * span
                        gpu.kernel("conv_rows_to_images")(count, count, out, hi - lo, c, p, 0, 0,
                                                          dx + 4 * lo * c * p)

    def _deconv_bias_grad_gpu(self, dy):
        # Caffe's backward_gpu_bias: sums over positions, then over images.
        n, _, _, _, t = self._device_sizes()
        o = self.num_output
        q = t // o
        blas = gpu.blas()
        ones = gpu.ones(max(n, q))
        per_image = self._dev.floats("bias_sums", n * o)
        blas.gemv(False, n * o, q, 1.0, dy, ones, 0.0, per_image)
        blas.gemv(True, n, o, 1.0, per_image, ones, 1.0, self.blobs[1].mutable_gpu_diff)


@register("Im2col")
class Im2colLayer(Layer):
    """The columns of a 2-D window (convolution_param: kernel, pad, stride,
    dilation) as a blob: image n's top is Caffe's im2col matrix
    (C*kh*kw, Ho*Wo) of image n.  Axes before the channel axis (`axis`)
    are images; two spatial axes follow it."""
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.convolution_param
        shape = bottom[0].shape
        self.axis = canonical_axis(self, p.axis, shape)
        if len(shape) - self.axis - 1 != 2:
            raise self.error(f"only 2 spatial axes after the channel axis {self.axis} are "
                             f"supported, input {shape} has {len(shape) - self.axis - 1}")
        self.geom = read_geometry(self, p)
        self._work = Workspace()
        self._dev = gpu.Workspace()

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != self.axis + 3:
            raise self.error(f"input must keep {self.axis + 3} axes, got shape {shape}")
        c, h, w = shape[self.axis:]
        ho, wo = self.geom.output_size(h, w)
        if ho < 1 or wo < 1:
            raise self.error(f"kernel extent {self.geom.extent()} is larger than the padded "
                             f"input {(h + 2 * self.geom.pad[0], w + 2 * self.geom.pad[1])}")
        n = int(np.prod(shape[:self.axis], dtype=np.int64))
        kh, kw = self.geom.kernel
        self._images = (n, c, h, w)
        self._cols = (n, c * kh * kw, ho * wo)
        top[0].reshape(shape[:self.axis] + (c * kh * kw, ho, wo))

    def _padded(self):
        if self.geom.pad == (0, 0):
            return None
        n, c, h, w = self._images
        ph, pw = self.geom.pad
        return self._work.get("padded", (n, c, h + 2 * ph, w + 2 * pw))

    def forward(self, bottom, top):
        n, k, p = self._cols
        x = bottom[0].data.reshape(self._images)
        if n == 1:
            im2col(x, self.geom, top[0].data.reshape(k, p), self._padded())
            return
        col = im2col(x, self.geom, self._work.get("columns", (k, n * p)), self._padded())
        np.copyto(top[0].data.reshape(n, k, p), col.reshape(k, n, p).transpose(1, 0, 2))

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        n, k, p = self._cols
        dy = top[0].diff.reshape(n, k, p)
        if n == 1:
            dcol = dy[0]
        else:
            dcol = self._work.get("columns", (k, n * p))
            np.copyto(dcol.reshape(k, n, p), dy.transpose(1, 0, 2))
        col2im(dcol, self.geom, bottom[0].diff.reshape(self._images), self._padded())

    # Device: the batch's columns (K, N*P) in scratch, then transposed into
    # the (N, K, P) top by Convolution's own kernels; backward the reverse.
    def _geometry_args(self):
        n, c, h, w = self._images
        g = self.geom
        return (n, c, h, w, *g.kernel, *g.pad, *g.stride, *g.dilation,
                *g.output_size(h, w))

    def _check_device_size(self):
        n, k, p = self._cols
        _check_int32(self, n * k * p, int(np.prod(self._images)))

    def forward_gpu(self, bottom, top):
        self._check_device_size()
        n, k, p = self._cols
        c = self._images[1]
        y = top[0].mutable_gpu_data
        col = y if n == 1 else self._dev.floats("columns", n * k * p)
        count = c * n * p
        gpu.kernel("im2col_batch")(count, count, bottom[0].gpu_data, *self._geometry_args(), col)
        if n > 1:
            gpu.kernel("conv_rows_to_images")(n * k * p, n * k * p, col, n, k, p, 0, 0, y)

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        self._check_device_size()
        n, k, p = self._cols
        dy = top[0].gpu_diff
        dcol = dy
        if n > 1:
            dcol = self._dev.floats("columns", n * k * p)
            gpu.kernel("conv_images_to_rows")(n * k * p, n * k * p, dy, n, k, p, dcol)
        count = int(np.prod(self._images))
        gpu.kernel("col2im_batch")(count, count, dcol, *self._geometry_args(),
                                   bottom[0].mutable_gpu_diff)
