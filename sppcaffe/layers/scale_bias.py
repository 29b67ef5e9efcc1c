"""Scale and Bias: an operand broadcast over a range of axes of bottom 0,
as Caffe's ScaleLayer and BiasLayer.

The operand (a learned blob, or bottom 1) has the shape of bottom 0's axes
[axis, axis + num_axes); bottom 0 is then seen as (outer, dim, inner) with
the operand along the middle.  A scalar operand (num_axes 0) always uses
axis 0.  Scale with `bias_term` runs an inner Bias layer on its top, whose
blob is Scale's last blob, as Caffe's does.

Kernels in backends/gpu/kernels/scale_bias.cu; the sums over outer and
inner axes are gemv's against gpu.ones (``broadcast_sums_gpu``), which the
normalising layers use too.
"""
import numpy as np

from ..backends import gpu
from ..blob import DTYPE
from ..fillers import fill
from ..layer import Layer, canonical_axis, register
from ..proto import caffe_pb2
from ..workspace import Workspace


def learned_operand_shape(layer, shape, axis, num_axes):
    """The shape of a learned operand: bottom axes [axis, axis + num_axes),
    or [axis, end) for num_axes -1."""
    axis = canonical_axis(layer, axis, shape)
    if num_axes < -1:
        raise layer.error("num_axes must be non-negative, or -1 to extend to the end of bottom[0]")
    if num_axes >= 0 and len(shape) < axis + num_axes:
        raise layer.error(f"the operand's shape extends past bottom[0]'s shape {tuple(shape)} "
                          f"when applied starting with bottom[0] axis = {axis}")
    return tuple(shape[axis:]) if num_axes == -1 else tuple(shape[axis:axis + num_axes])


def broadcast_geometry(layer, shape, operand_shape, axis):
    """(outer, dim, inner) of bottom 0 around an operand of `operand_shape`."""
    axis = 0 if len(operand_shape) == 0 else canonical_axis(layer, axis, shape)
    end = axis + len(operand_shape)
    if len(shape) < end:
        raise layer.error(f"the operand's shape {tuple(operand_shape)} extends past bottom[0]'s "
                          f"shape {tuple(shape)} when applied starting with axis = {axis}")
    if tuple(shape[axis:end]) != tuple(operand_shape):
        raise layer.error(f"dimension mismatch between bottom[0] shape {tuple(shape)} (axes "
                          f"{axis}..{end - 1}) and the operand's shape {tuple(operand_shape)}")
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    dim = int(np.prod(operand_shape, dtype=np.int64))
    inner = int(np.prod(shape[end:], dtype=np.int64))
    return outer, dim, inner


def broadcast_sums(array, outer, dim, inner):
    """Sums of an (outer, dim, inner) array over outer and inner: (dim,)."""
    return array.reshape(outer, dim, inner).sum(axis=(0, 2), dtype=DTYPE)


def broadcast_sums_gpu(x, outer, dim, inner, out, workspace, alpha=1.0, accumulate=False):
    """out (dim floats) = alpha * sums of device array x (outer, dim, inner)
    over outer and inner (+ out when accumulating): two gemv's against ones,
    Caffe's way, so no kernel needs atomics."""
    blas = gpu.blas()
    rows = x
    if inner != 1:
        rows = workspace.floats("broadcast_rows", outer * dim)
        blas.gemv(False, outer * dim, inner, 1.0, x, gpu.ones(inner), 0.0, rows)
    blas.gemv(True, outer, dim, float(alpha), rows, gpu.ones(outer),
              1.0 if accumulate else 0.0, out)


class _BroadcastLayer(Layer):
    """Shared by Scale and Bias: one or two bottoms, the operand's geometry."""
    min_num_bottom = 1
    max_num_bottom = 2
    exact_num_top = 1

    def operand(self, bottom):
        raise NotImplementedError

    def axis_param(self):
        raise NotImplementedError

    def reshape(self, bottom, top):
        operand = self.operand(bottom)
        self.outer, self.dim, self.inner = broadcast_geometry(
            self, bottom[0].shape, operand.shape, self.axis_param())
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def view3(self, array):
        return array.reshape(self.outer, self.dim, self.inner)

    def operand_column(self, array):
        return array.reshape(self.dim, 1)

    def launch(self, kernel, *args):
        """A scale_bias.cu kernel over bottom 0's elements."""
        n = self.outer * self.dim * self.inner
        gpu.kernel(kernel)(n, n, *args)


@register("Bias")
class BiasLayer(_BroadcastLayer):
    """top = bottom[0] + b, b learned (bias_param.filler, default 0) or bottom[1]."""

    def layer_setup(self, bottom, top):
        p = self.param.bias_param
        if len(bottom) == 1 and not self.blobs:
            shape = learned_operand_shape(self, bottom[0].shape, p.axis, p.num_axes)
            blob = self.new_param_blob(shape, 0)
            fill(blob, p.filler)
            self.blobs = [blob]
        self.param_propagate_down = [True] * len(self.blobs)
        self._scratch = gpu.Workspace()

    def operand(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def axis_param(self):
        return self.param.bias_param.axis

    def _wants_operand_grad(self, propagate_down, bottom):
        if len(bottom) > 1:
            return propagate_down[1]
        return self.param_propagate_down[0]

    def forward(self, bottom, top):
        b = self.operand_column(self.operand(bottom).data)
        np.add(self.view3(bottom[0].data), b, out=self.view3(top[0].data))

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        if self._wants_operand_grad(propagate_down, bottom):
            sums = broadcast_sums(dy, self.outer, self.dim, self.inner)
            if len(bottom) > 1:
                bottom[1].diff[...] = sums.reshape(bottom[1].shape)
            else:
                self.blobs[0].diff += sums.reshape(self.blobs[0].shape)
        # In place the diff passes through untouched.
        if propagate_down[0] and bottom[0] is not top[0]:
            np.copyto(bottom[0].diff, dy)

    def forward_gpu(self, bottom, top):
        self.launch("bias_forward", bottom[0].gpu_data, self.operand(bottom).gpu_data, 1.0,
                    self.dim, self.inner, top[0].mutable_gpu_data)

    def backward_gpu(self, top, propagate_down, bottom):
        dy = top[0].gpu_diff
        if self._wants_operand_grad(propagate_down, bottom):
            two = len(bottom) > 1
            out = bottom[1].mutable_gpu_diff if two else self.blobs[0].mutable_gpu_diff
            broadcast_sums_gpu(dy, self.outer, self.dim, self.inner, out, self._scratch,
                               accumulate=not two)
        if propagate_down[0] and bottom[0] is not top[0]:
            gpu.blas().copy(bottom[0].mutable_gpu_diff, dy, 4 * bottom[0].count)


@register("Scale")
class ScaleLayer(_BroadcastLayer):
    """top = bottom[0] * s (+ b with bias_term); s learned (filler, default
    constant 1) or bottom[1]."""

    def layer_setup(self, bottom, top):
        p = self.param.scale_param
        if len(bottom) == 1 and not self.blobs:
            shape = learned_operand_shape(self, bottom[0].shape, p.axis, p.num_axes)
            blob = self.new_param_blob(shape, 0)
            filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(
                type="constant", value=1.0)
            fill(blob, filler)
            self.blobs = [blob]
        self._bias = None
        if p.bias_term:
            self._setup_bias(bottom, top)
        self.param_propagate_down = [True] * len(self.blobs)
        self._saved = Workspace()           # the bottom, when in place
        self._x_saved = False
        self._scratch = Workspace()
        self._device = gpu.Workspace()

    def _setup_bias(self, bottom, top):
        p = self.param.scale_param
        bias_param = caffe_pb2.LayerParameter()
        bias_param.CopyFrom(self.param)
        bias_param.type = "Bias"
        bias_param.bias_param.axis = p.axis
        bias_param.bias_param.num_axes = bottom[1].ndim if len(bottom) > 1 else p.num_axes
        bias_param.bias_param.filler.CopyFrom(p.bias_filler)
        self._bias = BiasLayer(bias_param, self.phase)
        # As Caffe: a bias blob given with the scale's is kept, else the
        # inner layer makes one and it becomes this layer's last blob.
        if len(self.blobs) + len(bottom) < 3:
            self._bias.setup([bottom[0]], top)
            self._bias.blobs[0].name = f"{self.name}/{len(self.blobs)}"
            self.blobs.append(self._bias.blobs[0])
        else:
            self._bias.blobs = [self.blobs[-1]]
            self._bias.setup([bottom[0]], top)

    def _bias_layer(self):
        # The net may have replaced the blob by a shared one since setup.
        self._bias.blobs[0] = self.blobs[-1]
        return self._bias

    def operand(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def axis_param(self):
        return self.param.scale_param.axis

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if self._bias is not None:
            self._bias_layer().reshape([top[0]], top)

    def _wants_scale_grad(self, propagate_down, bottom):
        if len(bottom) > 1:
            return propagate_down[1]
        return self.param_propagate_down[0]

    def _bias_backward(self, top, gpu_mode):
        if self._bias is not None and self.param_propagate_down[-1]:
            bias = self._bias_layer()
            run = bias.backward_gpu if gpu_mode else bias.backward
            run(top, [False], [top[0]])

    # ---- host ------------------------------------------------------------
    def forward(self, bottom, top):
        x = bottom[0].data
        # Backward needs the input, which this forward overwrites in place;
        # not worth a copy when the net never runs backward.
        self._x_saved = top[0] is bottom[0] and not self.forward_only
        if self._x_saved:
            np.copyto(self._saved.like(x, "x"), x)
        s = self.operand_column(self.operand(bottom).data)
        np.multiply(self.view3(x), s, out=self.view3(top[0].data))
        if self._bias is not None:
            self._bias_layer().forward([top[0]], top)

    def backward(self, top, propagate_down, bottom):
        self._bias_backward(top, gpu_mode=False)
        dy = top[0].diff
        scale = self.operand(bottom)
        if self._wants_scale_grad(propagate_down, bottom):
            if top[0] is bottom[0] and not self._x_saved:
                raise self.error("the scale gradient needs the input, which the last "
                                 "forward (in place, in a net not running backward) did not keep")
            x = self._saved.like(dy, "x") if top[0] is bottom[0] else bottom[0].data
            product = np.multiply(dy, x, out=self._scratch.like(dy, "product"))
            sums = broadcast_sums(product, self.outer, self.dim, self.inner)
            if len(bottom) > 1:
                bottom[1].diff[...] = sums.reshape(bottom[1].shape)
            else:
                scale.diff += sums.reshape(scale.shape)
        if propagate_down[0]:
            s = self.operand_column(scale.data)
            np.multiply(self.view3(dy), s, out=self.view3(bottom[0].diff))

    # ---- device ----------------------------------------------------------
    def forward_gpu(self, bottom, top):
        count = bottom[0].count
        if top[0] is bottom[0]:
            saved = self._device.floats("x", count)
            gpu.blas().copy(saved, bottom[0].gpu_data, 4 * count)
        self.launch("scale_forward", bottom[0].gpu_data, self.operand(bottom).gpu_data,
                    self.dim, self.inner, top[0].mutable_gpu_data)
        if self._bias is not None:
            self._bias_layer().forward_gpu([top[0]], top)

    def backward_gpu(self, top, propagate_down, bottom):
        self._bias_backward(top, gpu_mode=True)
        count = bottom[0].count
        dy = top[0].gpu_diff
        scale = self.operand(bottom)
        if self._wants_scale_grad(propagate_down, bottom):
            x = self._device.floats("x", count) if top[0] is bottom[0] else bottom[0].gpu_data
            product = self._device.floats("product", count)
            gpu.kernel("eltwise_mul")(count, count, dy, x, product)
            two = len(bottom) > 1
            out = bottom[1].mutable_gpu_diff if two else scale.mutable_gpu_diff
            broadcast_sums_gpu(product, self.outer, self.dim, self.inner, out, self._device,
                               accumulate=not two)
        if propagate_down[0]:
            self.launch("scale_forward", dy, scale.gpu_data, self.dim, self.inner,
                        bottom[0].mutable_gpu_diff)
