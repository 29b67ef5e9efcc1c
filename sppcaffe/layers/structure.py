"""Layers that move, share or combine blobs without learning anything:
Concat, Flatten, Reshape, Split, Eltwise, Silence.

Their device code (``*_gpu``) keeps the host code's shape logic and float
operations; kernels in backends/gpu/kernels/copy.cu and eltwise.cu.
"""
import numpy as np

from ..backends import gpu
from ..blob import DTYPE
from ..layer import Layer, canonical_axis, register
from ..proto import caffe_pb2


class _ViewLayer(Layer):
    """A top that is a reshaped view of its bottom's data (Caffe's
    ShareData), and of its diff when `shares_diff` (ShareDiff); forward and
    backward move nothing then, unless an array was rebound since reshape."""
    exact_num_bottom = 1
    exact_num_top = 1
    shares_diff = True

    def top_shape(self, shape):
        raise NotImplementedError

    def reshape(self, bottom, top):
        if top[0] is bottom[0]:
            raise self.error("does not allow in-place computation")
        shape = self.top_shape(bottom[0].shape)
        if int(np.prod(shape)) != bottom[0].count:
            raise self.error(f"output count {int(np.prod(shape))} (shape {shape}) must match "
                             f"input count {bottom[0].count} (shape {bottom[0].shape})")
        # Done on every call: the bottom's arrays may have been reallocated.
        self._attach(bottom, top, shape)

    def _attach(self, bottom, top, shape):
        if self.shares_diff:
            top[0].view_of(bottom[0], shape)
        else:
            top[0].reshape(shape)           # its own diff
            top[0].share_data(bottom[0])

    def forward(self, bottom, top):
        # Someone may have rebound an array since reshape; views cost nothing.
        if not np.may_share_memory(top[0].data, bottom[0].data):
            self._attach(bottom, top, top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0] and not np.may_share_memory(top[0].diff, bottom[0].diff):
            np.copyto(bottom[0].diff, top[0].diff.reshape(bottom[0].shape))

    # On the device nothing moves either.  The host checks above read
    # `.data`/`.diff`, which would download; re-making the view costs
    # nothing and touches neither side's memory.
    def forward_gpu(self, bottom, top):
        self._attach(bottom, top, top[0].shape)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0] and not self.shares_diff:
            gpu.blas().copy(bottom[0].mutable_gpu_diff, top[0].gpu_diff, 4 * bottom[0].count)


@register("Flatten")
class FlattenLayer(_ViewLayer):
    """Merges axes [axis, end_axis] into one.  As BVLC's, the top has a
    diff of its own, which backward hands to the bottom (Caffe's bottom
    ShareDiff in Backward; here a copy): a top diff set without a backward
    pass leaves the bottom's alone, while Reshape shares it from the start."""
    shares_diff = False

    def top_shape(self, shape):
        p = self.param.flatten_param
        start = canonical_axis(self, p.axis, shape)
        end = canonical_axis(self, p.end_axis, shape)
        return tuple(shape[:start]) + (int(np.prod(shape[start:end + 1])),) + tuple(shape[end + 1:])


@register("Reshape")
class ReshapeLayer(_ViewLayer):
    """Replaces axes [axis, axis + num_axes) by reshape_param.shape, where a
    0 copies the bottom's dimension and a single -1 is inferred."""

    def layer_setup(self, bottom, top):
        dims = list(self.param.reshape_param.shape.dim)
        if dims.count(-1) > 1:
            raise self.error("new shape contains multiple -1 dims; at most a single (1) value "
                             "of -1 may be specified")
        if any(d < -1 for d in dims):
            raise self.error(f"new shape {dims} has a negative dimension other than -1")
        self.dims = dims

    def top_shape(self, shape):
        p = self.param.reshape_param
        ndim = len(shape)
        start = p.axis if p.axis >= 0 else ndim + p.axis + 1
        if not 0 <= start <= ndim:
            raise self.error(f"axis {p.axis} out of range for {ndim}-D input blob")
        if p.num_axes < -1:
            raise self.error("num_axes must be >= 0, or -1 for all")
        end = ndim if p.num_axes == -1 else start + p.num_axes
        if end > ndim:
            raise self.error(f"end_axis = axis + num_axes = {end} is out of range for "
                             f"{ndim}-D input blob")
        new = []
        for i, d in enumerate(self.dims):
            if d == 0:
                if start + i >= ndim:
                    raise self.error("new shape contains a 0, but there was no corresponding "
                                     "bottom axis to copy")
                d = shape[start + i]
            new.append(d)
        if -1 in new:
            known = int(np.prod(shape[:start])) * int(np.prod(shape[end:])) * \
                int(np.prod([d for d in new if d != -1]))
            count = int(np.prod(shape))
            if known == 0 or count % known:
                raise self.error(f"bottom count ({count}) must be divisible by the product of "
                                 f"the specified dimensions ({known})")
            new[new.index(-1)] = count // known
        return tuple(shape[:start]) + tuple(new) + tuple(shape[end:])


def axis_blocks(parts, axis, whole_shape):
    """How `parts` (Concat's bottoms, Slice's tops) lie side by side along
    `axis` of a blob of `whole_shape`: per part (part, its first element in
    the whole, block length, whole row); part p is `block`-long runs
    repeated every `row` floats of the whole (Caffe's num_concats x
    concat_size), the layout the copy_blocks kernel moves."""
    inner = int(np.prod(whole_shape[axis + 1:]))
    row = whole_shape[axis] * inner
    offset = 0
    for p in parts:
        block = p.shape[axis] * inner
        yield p, offset, block, row
        offset += block


@register("Concat")
class ConcatLayer(Layer):
    min_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.concat_param
        if p.HasField("axis") and p.HasField("concat_dim"):
            raise self.error("Either axis or concat_dim should be specified; not both.")

    def _axis(self, shape):
        p = self.param.concat_param
        if p.HasField("concat_dim"):
            if p.concat_dim >= len(shape):
                raise self.error(f"concat_dim {p.concat_dim} out of range for "
                                 f"{len(shape)}-D blob")
            return p.concat_dim
        return canonical_axis(self, p.axis, shape)

    def reshape(self, bottom, top):
        first = bottom[0].shape
        self.axis = axis = self._axis(first)
        total = 0
        for i, b in enumerate(bottom):
            if len(b.shape) != len(first):
                raise self.error(f"all inputs must have the same #axes: bottom 0 has shape "
                                 f"{first}, bottom {i} has shape {b.shape}")
            if b.shape[:axis] + b.shape[axis + 1:] != first[:axis] + first[axis + 1:]:
                raise self.error(f"all inputs must have the same shape, except at concat_axis "
                                 f"{axis}: bottom 0 has shape {first}, bottom {i} has {b.shape}")
            total += b.shape[axis]
        if len(bottom) == 1:
            top[0].view_of(bottom[0], first)
            return
        top[0].reshape(first[:axis] + (total,) + first[axis + 1:])
        bounds = np.cumsum([0] + [b.shape[axis] for b in bottom])
        lead = (slice(None),) * axis
        self._slices = [lead + (slice(lo, hi),) for lo, hi in zip(bounds[:-1], bounds[1:])]

    def forward(self, bottom, top):
        if len(bottom) > 1:
            np.concatenate([b.data for b in bottom], axis=self.axis, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if len(bottom) == 1:
            return
        for b, index, down in zip(bottom, self._slices, propagate_down):
            if down:
                np.copyto(b.diff, top[0].diff[index])

    def _blocks(self, bottom, top):
        return axis_blocks(bottom, self.axis, top[0].shape)

    def forward_gpu(self, bottom, top):
        if len(bottom) == 1:
            return
        y = top[0].mutable_gpu_data
        copy = gpu.kernel("copy_blocks")
        for b, offset, block, row in self._blocks(bottom, top):
            copy(b.count, b.count, block, b.gpu_data, block, y + 4 * offset, row)

    def backward_gpu(self, top, propagate_down, bottom):
        if len(bottom) == 1:
            return
        dy = top[0].gpu_diff
        copy = gpu.kernel("copy_blocks")
        for (b, offset, block, row), down in zip(self._blocks(bottom, top), propagate_down):
            if down:
                copy(b.count, b.count, block, dy + 4 * offset, row, b.mutable_gpu_diff, block)


@register("Split")
class SplitLayer(Layer):
    """Every top reads the bottom's data array itself (Caffe's ShareData);
    each has its own diff, and the bottom's gradient is their sum."""
    exact_num_bottom = 1
    min_num_top = 1

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        for t in top:
            if t is bottom[0]:
                raise self.error("does not allow in-place computation")
            t.reshape(shape)            # its own diff, of the bottom's shape
            t.share_data(bottom[0])

    def forward(self, bottom, top):
        for t in top:
            t.share_data(bottom[0])     # the bottom may have been given new memory

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        if len(top) == 1:
            np.copyto(dx, top[0].diff)
            return
        np.add(top[0].diff, top[1].diff, out=dx)
        for t in top[2:]:
            dx += t.diff

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        device, n = gpu.blas(), bottom[0].count
        dx = bottom[0].mutable_gpu_diff
        device.copy(dx, top[0].gpu_diff, 4 * n)
        for t in top[1:]:
            device.axpy(n, 1.0, t.gpu_diff, dx)


@register("Eltwise")
class EltwiseLayer(Layer):
    """Elementwise PROD, SUM (with per-bottom coefficients) or MAX."""
    min_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.eltwise_param
        self.op = p.operation
        if len(p.coeff) not in (0, len(bottom)):
            raise self.error(f"Eltwise Layer takes one coefficient per bottom blob "
                             f"({len(bottom)} bottoms, {len(p.coeff)} coefficients)")
        if self.op == caffe_pb2.EltwiseParameter.PROD and len(p.coeff):
            raise self.error("Eltwise layer only takes coefficients for summation.")
        self.coeffs = [DTYPE(c) for c in p.coeff] or [DTYPE(1)] * len(bottom)
        self.stable_prod_grad = p.stable_prod_grad
        self._shape = None
        self._dev = gpu.Workspace()     # MAX: the argmax mask on the device

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != shape:
                raise self.error(f"all bottoms must have the same shape: bottom 0 has shape "
                                 f"{shape}, bottom {i} has {b.shape}")
        top[0].reshape(shape)
        if shape != self._shape:
            self._shape = shape
            self._argmax = np.empty(shape, np.int32)     # MAX: which bottom won
            self._scratch = np.empty(shape, DTYPE)       # SUM: coeff * bottom

    def forward(self, bottom, top):
        y = top[0].data
        if self.op == caffe_pb2.EltwiseParameter.PROD:
            np.multiply(bottom[0].data, bottom[1].data, out=y)
            for b in bottom[2:]:
                y *= b.data
        elif self.op == caffe_pb2.EltwiseParameter.SUM:
            self._forward_sum(bottom, y)
        else:
            self._forward_max(bottom, y)

    def _forward_sum(self, bottom, y):
        # Unit coefficients (ResNet's shortcuts) need no products: the first
        # two bottoms are then one pass.
        first = 1
        if self.coeffs[0] == 1 and self.coeffs[1] == 1:
            np.add(bottom[0].data, bottom[1].data, out=y)
            first = 2
        else:
            np.multiply(bottom[0].data, self.coeffs[0], out=y)
        for b, c in zip(bottom[first:], self.coeffs[first:]):
            y += b.data if c == 1 else np.multiply(b.data, c, out=self._scratch)

    def _forward_max(self, bottom, y):
        # Caffe's tie rule: bottom 1 wins a tie with bottom 0, and later
        # bottoms must be strictly greater to take over.
        argmax = self._argmax
        first = bottom[0].data > bottom[1].data
        np.copyto(y, np.where(first, bottom[0].data, bottom[1].data))
        np.copyto(argmax, ~first)
        for i, b in enumerate(bottom[2:], 2):
            better = b.data > y
            np.copyto(y, b.data, where=better)
            argmax[better] = i

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        for i, (b, down) in enumerate(zip(bottom, propagate_down)):
            if not down:
                continue
            dx = b.diff
            if self.op == caffe_pb2.EltwiseParameter.PROD:
                if self.stable_prod_grad:
                    others = [o.data for j, o in enumerate(bottom) if j != i]
                    np.copyto(dx, others[0])
                    for o in others[1:]:
                        dx *= o
                else:
                    np.divide(top[0].data, b.data, out=dx)
                dx *= dy
            elif self.op == caffe_pb2.EltwiseParameter.SUM:
                np.multiply(dy, self.coeffs[i], out=dx)
            else:
                np.multiply(dy, self._argmax == i, out=dx)

    def forward_gpu(self, bottom, top):
        n = top[0].count
        y = top[0].mutable_gpu_data
        if self.op == caffe_pb2.EltwiseParameter.PROD:
            mul = gpu.kernel("eltwise_mul")
            mul(n, n, bottom[0].gpu_data, bottom[1].gpu_data, y)
            for b in bottom[2:]:
                mul(n, n, y, b.gpu_data, y)
        elif self.op == caffe_pb2.EltwiseParameter.SUM:
            gpu.kernel("eltwise_scale")(n, n, bottom[0].gpu_data, float(self.coeffs[0]), y)
            device = gpu.blas()
            for b, c in zip(bottom[1:], self.coeffs[1:]):
                device.axpy(n, float(c), b.gpu_data, y)
        else:
            mask = self._dev.get("argmax", 4 * n)
            gpu.kernel("eltwise_max_first")(n, n, bottom[0].gpu_data, bottom[1].gpu_data, y, mask)
            step = gpu.kernel("eltwise_max_next")
            for i, b in enumerate(bottom[2:], 2):
                step(n, n, b.gpu_data, i, y, mask)

    def backward_gpu(self, top, propagate_down, bottom):
        n = top[0].count
        dy = top[0].gpu_diff
        for i, (b, down) in enumerate(zip(bottom, propagate_down)):
            if not down:
                continue
            dx = b.mutable_gpu_diff
            if self.op == caffe_pb2.EltwiseParameter.PROD:
                mul = gpu.kernel("eltwise_mul")
                if self.stable_prod_grad:
                    others = [o for j, o in enumerate(bottom) if j != i]
                    gpu.blas().copy(dx, others[0].gpu_data, 4 * n)
                    for o in others[1:]:
                        mul(n, n, dx, o.gpu_data, dx)
                else:
                    gpu.kernel("eltwise_div")(n, n, top[0].gpu_data, b.gpu_data, dx)
                mul(n, n, dx, dy, dx)
            elif self.op == caffe_pb2.EltwiseParameter.SUM:
                gpu.kernel("eltwise_scale")(n, n, dy, float(self.coeffs[i]), dx)
            else:
                mask = self._dev.get("argmax", 4 * n)
                gpu.kernel("eltwise_max_backward")(n, n, dy, mask, i, dx)


@register("Silence")
class SilenceLayer(Layer):
    """Swallows its bottoms (so that they count as used); its backward
    zeroes their diffs, as Caffe's does."""
    min_num_bottom = 1
    exact_num_top = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for b, down in zip(bottom, propagate_down):
            if down:
                b.diff[...] = 0

    def backward_gpu(self, top, propagate_down, bottom):
        device = gpu.blas()
        for b, down in zip(bottom, propagate_down):
            if down:
                device.memset0(b.mutable_gpu_diff, 4 * b.count)
