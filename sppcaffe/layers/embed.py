"""Embed: a learned lookup table, as Caffe's EmbedLayer.

The bottom holds integer indices stored as floats; each picks a row of
the (input_dim, num_output) weight table (stored transposed relative to
InnerProduct's, as Caffe does, so one index reads one contiguous row).
There is no gradient for the indices themselves.
"""
import numpy as np

from ..backends import gpu
from ..layer import Layer, register


@register("Embed")
class EmbedLayer(Layer):
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.embed_param
        self.num_output = int(p.num_output)
        self.input_dim = int(p.input_dim)
        self.bias_term = p.bias_term
        if self.num_output < 1:
            raise self.error("num_output must be positive")
        if self.input_dim < 1:
            raise self.error("input_dim must be positive")
        shapes = [(self.input_dim, self.num_output)]
        if self.bias_term:
            shapes.append((self.num_output,))
        self.setup_param_blobs(shapes, [p.weight_filler, p.bias_filler])
        self.param_propagate_down = [True] * len(self.blobs)

    def reshape(self, bottom, top):
        self._rows = bottom[0].count
        top[0].reshape(bottom[0].shape + (self.num_output,))

    def _indices(self, values):
        """The indices as ints; Caffe (debug builds) CHECKs each is an
        integer in [0, input_dim)."""
        values = values.reshape(-1)
        with np.errstate(invalid="ignore"):     # NaN and huge values fail the test below
            indices = values.astype(np.int64)   # truncation, as static_cast<int>
        bad = (indices != values) | (indices < 0) | (indices >= self.input_dim)
        if bad.any():
            raise self.error(f"input {values[bad][0]!r} is not an integer index in "
                             f"[0, {self.input_dim})")
        return indices

    def forward(self, bottom, top):
        y = top[0].data.reshape(self._rows, self.num_output)
        np.take(self.blobs[0].data, self._indices(bottom[0].data), axis=0, out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise self.error("can't backpropagate to EmbedLayer input")
        dy = top[0].diff.reshape(self._rows, self.num_output)
        if self.param_propagate_down[0]:
            # Unbuffered: a word used twice adds both of its gradients.
            np.add.at(self.blobs[0].diff, self._indices(bottom[0].data), dy)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0, dtype=np.float32)

    # ---- device code: gather rows / atomically scatter gradients ----------
    def forward_gpu(self, bottom, top):
        # The indices are validated where the host copy is read; inputs come
        # from the host (data layers), so this normally copies nothing.
        self._indices(bottom[0].cpu_data)
        m, n = self._rows, self.num_output
        y = top[0].mutable_gpu_data
        gpu.kernel("embed_forward")(m * n, m * n, n, self.input_dim, bottom[0].gpu_data,
                                    self.blobs[0].gpu_data, y)
        if self.bias_term:
            gpu.blas().gemm(False, False, m, n, 1, 1.0, gpu.ones(m), self.blobs[1].gpu_data,
                            1.0, y)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise self.error("can't backpropagate to EmbedLayer input")
        m, n = self._rows, self.num_output
        dy = top[0].gpu_diff
        if self.param_propagate_down[0]:
            gpu.kernel("embed_backward")(m * n, m * n, n, self.input_dim, bottom[0].gpu_data, dy,
                                         self.blobs[0].mutable_gpu_diff)
        if self.bias_term and self.param_propagate_down[1]:
            gpu.blas().gemv(True, m, n, 1.0, dy, gpu.ones(m), 1.0,
                            self.blobs[1].mutable_gpu_diff)
