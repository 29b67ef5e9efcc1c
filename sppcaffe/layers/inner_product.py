"""InnerProduct (fully connected), as Caffe's InnerProductLayer."""
import functools

import numpy as np

from ..backends import gpu
from ..threads import MIN_BLOCK_MACS, add_matmul, matmul, run_tasks
from ..layer import Layer, canonical_axis, register


@register("InnerProduct")
class InnerProductLayer(Layer):
    """top = bottom flattened from `axis` on, times W^T, plus b.

    W is (num_output, K), or (K, num_output) with `transpose: true`; axes
    before `axis` are kept as independent rows.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.inner_product_param
        self.num_output = p.num_output
        self.bias_term = p.bias_term
        self.transpose = p.transpose
        if self.num_output < 1:
            raise self.error("num_output must be positive")
        axis = self._axis(bottom[0].shape)
        self.inputs = int(np.prod(bottom[0].shape[axis:], dtype=np.int64))
        weight_shape = ((self.inputs, self.num_output) if self.transpose
                        else (self.num_output, self.inputs))
        shapes = [weight_shape] + ([(self.num_output,)] if self.bias_term else [])
        self.setup_param_blobs(shapes, [p.weight_filler, p.bias_filler])
        self.param_propagate_down = [True] * len(self.blobs)
        self._bottom_shape = None

    def _axis(self, shape):
        return canonical_axis(self, self.param.inner_product_param.axis, shape)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if shape != self._bottom_shape:
            axis = self._axis(shape)
            inputs = int(np.prod(shape[axis:], dtype=np.int64))
            if inputs != self.inputs:
                raise self.error(f"input {shape} flattens to {inputs} values from axis "
                                 f"{axis}, the weights expect {self.inputs}")
            self._bottom_shape = shape
            self._top_shape = shape[:axis] + (self.num_output,)
            self._rows = int(np.prod(shape[:axis], dtype=np.int64))
        top[0].reshape(self._top_shape)

    def _weights_nk(self, array):
        """A weight-shaped array seen as (num_output, K), whatever its storage."""
        return array.T if self.transpose else array

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self._rows, self.inputs)
        y = top[0].data.reshape(self._rows, self.num_output)
        matmul(x, self._weights_nk(self.blobs[0].data).T, y)
        if self.bias_term:
            y += self.blobs[1].data

    # Backward's two products (weight gradient, bottom gradient) of between
    # two blocks' worth (smaller ones are never split) and this many
    # multiply-adds each run whole, one per thread, rather than each split
    # over the threads in turn: such products gain less from a split than
    # its hand-offs cost (LeNet's ip1, 26 M each: ~0.55 ms split over two
    # threads, ~0.5 ms on one).  Fixed by the shape, so the bits never
    # depend on the thread count.
    paired_backward_macs = 32 << 20

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self._rows, self.num_output)
        products = []
        if self.param_propagate_down[0]:
            x = bottom[0].data.reshape(self._rows, self.inputs)
            if self.transpose:
                products.append(functools.partial(add_matmul, x.T, dy, self.blobs[0].diff))
            else:
                products.append(functools.partial(add_matmul, dy.T, x, self.blobs[0].diff))
        if propagate_down[0]:
            dx = bottom[0].diff.reshape(self._rows, self.inputs)
            products.append(functools.partial(matmul, dy, self._weights_nk(self.blobs[0].data), dx))
        macs = self._rows * self.inputs * self.num_output
        if len(products) == 2 and 2 * MIN_BLOCK_MACS <= macs <= self.paired_backward_macs:
            run_tasks(("inner product backward", self._rows, self.inputs, self.num_output),
                      products)
        else:
            for product in products:
                product()
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0, dtype=np.float32)

    # ---- device code: the same products with cuBLAS (row-major) ----------
    # x is (rows, K); W is (num_output, K), or (K, num_output) transposed.
    def forward_gpu(self, bottom, top):
        m, k, n = self._rows, self.inputs, self.num_output
        blas = gpu.blas()
        y = top[0].mutable_gpu_data
        blas.gemm(False, not self.transpose, m, n, k, 1.0, bottom[0].gpu_data,
                  self.blobs[0].gpu_data, 0.0, y)
        if self.bias_term:
            # y += ones (rows x 1) * b (1 x num_output): Caffe's bias GEMM.
            blas.gemm(False, False, m, n, 1, 1.0, gpu.ones(m), self.blobs[1].gpu_data,
                      1.0, y)

    def backward_gpu(self, top, propagate_down, bottom):
        m, k, n = self._rows, self.inputs, self.num_output
        blas = gpu.blas()
        dy = top[0].gpu_diff
        if self.param_propagate_down[0]:
            x, dw = bottom[0].gpu_data, self.blobs[0].mutable_gpu_diff
            if self.transpose:
                blas.gemm(True, False, k, n, m, 1.0, x, dy, 1.0, dw)
            else:
                blas.gemm(True, False, n, k, m, 1.0, dy, x, 1.0, dw)
        if self.bias_term and self.param_propagate_down[1]:
            blas.gemv(True, m, n, 1.0, dy, gpu.ones(m), 1.0,
                      self.blobs[1].mutable_gpu_diff)
        if propagate_down[0]:
            blas.gemm(False, self.transpose, m, k, n, 1.0, dy, self.blobs[0].gpu_data, 0.0,
                      bottom[0].mutable_gpu_diff)
