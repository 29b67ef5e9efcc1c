"""Layers that reduce axes: Reduction (sums) and ArgMax (top-k search).
Kernels in backends/gpu/kernels/reduction.cu."""
import numpy as np

from ..backends import gpu
from ..blob import DTYPE
from ..layer import Layer, canonical_axis, register
from ..proto import caffe_pb2
from ..workspace import Workspace

_Op = caffe_pb2.ReductionParameter


@register("Reduction")
class ReductionLayer(Layer):
    """Reduces every axis from `axis` on to one number, coeff times their
    SUM, ASUM (sum of |x|), SUMSQ or MEAN; the top keeps the axes before
    `axis` (a scalar for axis 0)."""
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        self.op = self.param.reduction_param.operation
        if self.op not in (_Op.SUM, _Op.ASUM, _Op.SUMSQ, _Op.MEAN):
            raise self.error(f"Unknown reduction op {self.op}")
        self._scratch = Workspace()
        self._dev = gpu.Workspace()

    def reshape(self, bottom, top):
        if top[0] is bottom[0]:
            raise self.error("does not allow in-place computation")
        shape = bottom[0].shape
        axis = canonical_axis(self, self.param.reduction_param.axis, shape)
        top[0].reshape(shape[:axis])
        self.num = int(np.prod(shape[:axis]))
        self.dim = int(np.prod(shape[axis:]))
        # Float arithmetic as Caffe's: coeff_ /= dim_ in the blob's type.
        self.coeff = DTYPE(self.param.reduction_param.coeff)
        if self.op == _Op.MEAN:
            self.coeff = DTYPE(self.coeff / DTYPE(self.dim))

    def _rows(self, array):
        return array.reshape(self.num, self.dim)

    def forward(self, bottom, top):
        x = self._rows(bottom[0].data)
        y = top[0].data.reshape(self.num)
        if self.op in (_Op.SUM, _Op.MEAN):
            terms = x
        else:
            terms = self._scratch.like(x, "terms")
            (np.abs if self.op == _Op.ASUM else np.square)(x, out=terms)
        np.sum(terms, axis=1, out=y)
        if self.coeff != 1:
            y *= self.coeff

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = self._rows(bottom[0].diff)
        scale = top[0].diff.reshape(self.num, 1) * self.coeff
        if self.op in (_Op.SUM, _Op.MEAN):
            dx[...] = scale
        elif self.op == _Op.ASUM:
            x = self._rows(bottom[0].data)
            # Caffe's sign: (0 < x) - (x < 0), so sign(0) = 0.
            np.subtract(x > 0, x < 0, out=dx, dtype=DTYPE)
            dx *= scale
        else:
            np.multiply(self._rows(bottom[0].data), 2 * scale, out=dx)

    def forward_gpu(self, bottom, top):
        if not self.num:
            return
        y = top[0].mutable_gpu_data
        if not self.dim:
            gpu.blas().memset0(y, 4 * self.num)
            return
        rows = bottom[0].gpu_data
        if self.op in (_Op.ASUM, _Op.SUMSQ):
            n = bottom[0].count
            terms = self._dev.floats("terms", n)
            gpu.kernel("reduction_terms")(n, n, self.op, rows, terms)
            rows = terms
        gpu.blas().gemv(False, self.num, self.dim, float(self.coeff), rows, gpu.ones(self.dim),
                        0.0, y)

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        n = bottom[0].count
        x = bottom[0].gpu_data if self.op in (_Op.ASUM, _Op.SUMSQ) else 0
        gpu.kernel("reduction_backward")(n, n, self.dim, self.op, float(self.coeff), x,
                                         top[0].gpu_diff, bottom[0].mutable_gpu_diff)


@register("ArgMax")
class ArgMaxLayer(Layer):
    """The top_k largest values' indices (or the values, out_max_val) along
    `axis`; without an axis, per item over all its values, as (N, 1, top_k)
    indices or (N, 2, top_k) indices then values.  Ties go to the larger
    index (Caffe's partial_sort with std::greater on (value, index)).
    No gradient."""
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.argmax_param
        self.out_max_val = p.out_max_val
        self.top_k = int(p.top_k)
        self.has_axis = p.HasField("axis")
        if self.top_k < 1:
            raise self.error("top k must not be less than 1.")

    def allow_force_backward(self, bottom_index):
        return False            # Caffe's Backward is NOT_IMPLEMENTED

    def reshape(self, bottom, top):
        if top[0] is bottom[0]:
            raise self.error("does not allow in-place computation")
        shape = bottom[0].shape
        if self.has_axis:
            axis = canonical_axis(self, self.param.argmax_param.axis, shape)
            self.dim, self.stride = shape[axis], int(np.prod(shape[axis + 1:]))
            if self.top_k > self.dim:
                raise self.error(f"top_k ({self.top_k}) must be less than or equal to the "
                                 f"dimension of the axis ({self.dim})")
            top_shape = shape[:axis] + (self.top_k,) + shape[axis + 1:]
        else:
            if not shape:
                raise self.error("needs an item axis when no axis is given")
            self.dim, self.stride = int(np.prod(shape[1:])), 1
            if self.top_k > self.dim:
                raise self.error(f"top_k ({self.top_k}) must be less than or equal to the "
                                 f"dimension of the flattened bottom blob per instance "
                                 f"({self.dim})")
            top_shape = [1] * max(len(shape), 3)
            top_shape[0], top_shape[2] = shape[0], self.top_k
            if self.out_max_val:
                top_shape[1] = 2
        self.num = bottom[0].count // self.dim if self.dim else 0
        top[0].reshape(tuple(top_shape))

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(-1, self.dim, self.stride)
        # Reversed, a stable sort of -x puts equal values larger index first.
        order = np.argsort(-x[:, ::-1, :], axis=1, kind="stable")[:, :self.top_k, :]
        index = (self.dim - 1) - order
        y = top[0].data
        if self.has_axis or not self.out_max_val:
            picked = np.take_along_axis(x, index, axis=1) if self.out_max_val else index
            y.reshape(picked.shape)[...] = picked
        else:
            pairs = y.reshape(-1, 2, self.top_k)
            pairs[:, 0] = index[:, :, 0]
            pairs[:, 1] = np.take_along_axis(x, index, axis=1)[:, :, 0]

    def backward(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise self.error("ArgMax has no backward (set propagate_down: false on its bottom)")

    def forward_gpu(self, bottom, top):
        gpu.kernel("argmax_forward")(self.num, self.num, self.dim, self.stride, self.top_k,
                                     int(self.out_max_val), int(self.has_axis),
                                     bottom[0].gpu_data, top[0].mutable_gpu_data)

    backward_gpu = backward
