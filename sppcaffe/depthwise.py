"""Depthwise convolution on the CPU (group == input channels, any channel
multiplier m), without im2col.

A depthwise filter has only kh*kw taps per output, so the grouped GEMM
spends its time building the column matrix (kh*kw copies of the input) and
launching one tiny product per channel.  Here each output plane is the sum
over taps of one scalar weight times a shifted view of its input plane,
computed for blocks of (image, channel) planes small enough to stay in
cache, and the gradients are the same sums taken backwards.

Flat phase layout
-----------------
So that every tap's view is one contiguous range per plane, the
zero-padded input plane is split into stride phases (padded rows
a, a + sh, ... and columns b, b + sw, ...; only the phases some tap reads)
and each phase is stored flat with row length Wq = Wo + (kw-1)*dw // sw.
Output (y, x) is position y*Wq + x of a flat (Ho, Wq) grid, and tap (i, j)
reads phase ((i*dh) % sh, (j*dw) % sw) from flat offset
(i*dh // sh)*Wq + (j*dw // sw): for x < Wo the read stays in the tap's row.
The last Wq - Wo columns of the grid are junk: never written to the top,
and zero as top gradients.

Plane blocks are split over threads (sppcaffe.im2col.split_parallel).
The sums over taps are Caffe's sums in another order.
"""
import threading

import numpy as np

from .im2col import split_parallel

# Scratch for one block of planes (phases, sums, products).  NumPy's cost
# per call (~1-2 us) dominates small blocks; blocks beyond the L2 cache
# gain little more.
_BLOCK_BYTES = 2 << 20
_local = threading.local()


def _scratch(name, shape):
    """A per-thread uninitialised array of `shape` (float32)."""
    size = int(np.prod(shape))
    arrays = getattr(_local, "arrays", None)
    if arrays is None:
        arrays = _local.arrays = {}
    array = arrays.get(name)
    if array is None or array.size < size:
        array = arrays[name] = np.empty(size, np.float32)
    return array[:size].reshape(shape)


def _axis_phase(phase, pad, size, length, stride):
    """Positions r in [0, length) of a phase that hold input, i.e. with
    phase + r*stride - pad in [0, size): (first r, count, its input index)."""
    first = max(0, -(-(pad - phase) // stride))
    end = min(length, -(-(size + pad - phase) // stride))
    return first, max(0, end - first), phase + first * stride - pad


class DepthwisePlan:
    """Geometry of a depthwise convolution of an (N, C, H, W) input with
    channel multiplier m (see the module docstring)."""

    def __init__(self, x_shape, geom, multiplier):
        n, c, h, w = x_shape
        (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.stride, geom.dilation
        self.shape, self.multiplier, self.stride = (n, c, h, w), multiplier, (sh, sw)
        self.out_hw = ho, wo = geom.output_size(h, w)
        self.wq = wq = wo + (kw - 1) * dw // sw
        # One spare row: the junk columns of the last output row read past
        # the rows any window needs.
        self.rows = ho + (kh - 1) * dh // sh + 1
        self.length = ho * wq
        phases, self.taps = {}, []
        for i in range(kh):
            for j in range(kw):
                key = ((i * dh) % sh, (j * dw) % sw)
                index = phases.setdefault(key, len(phases))
                self.taps.append((index, (i * dh // sh) * wq + j * dw // sw))
        self.phases = [(_axis_phase(a, geom.pad[0], h, self.rows, sh),
                        _axis_phase(b, geom.pad[1], w, wq, sw)) for a, b in phases]
        # Each input cell lies in exactly one phase; cells outside the
        # stored ones are read by no window (zero gradient).
        self.covers_input = sum(r[1] * q[1] for r, q in self.phases) == h * w
        per_plane = len(self.phases) * self.rows * wq + (2 + multiplier) * self.length
        self.block = max(1, _BLOCK_BYTES // (4 * per_plane))

    def split_phases(self, planes, name="phases"):
        """(phases, B, rows*Wq) scratch: the padded phases of (B, H, W) planes."""
        count = planes.shape[0]
        out = _scratch(name, (len(self.phases), count, self.rows, self.wq))
        sh, sw = self.stride
        for phase, ((r0, nr, y0), (q0, nq, x0)) in zip(out, self.phases):
            phase[:, :r0] = 0
            phase[:, r0 + nr:] = 0
            phase[:, r0:r0 + nr, :q0] = 0
            phase[:, r0:r0 + nr, q0 + nq:] = 0
            phase[:, r0:r0 + nr, q0:q0 + nq] = \
                planes[:, y0:y0 + (nr - 1) * sh + 1:sh, x0:x0 + (nq - 1) * sw + 1:sw]
        return out.reshape(len(self.phases), count, -1)

    def merge_phases(self, phases, planes):
        """Write the input cells of phase gradients (phases, B, rows*Wq) into
        (B, H, W) planes, overwriting them: the adjoint of split_phases."""
        if not self.covers_input:
            planes[...] = 0
        sh, sw = self.stride
        grids = phases.reshape(len(self.phases), -1, self.rows, self.wq)
        for phase, ((r0, nr, y0), (q0, nq, x0)) in zip(grids, self.phases):
            planes[:, y0:y0 + (nr - 1) * sh + 1:sh, x0:x0 + (nq - 1) * sw + 1:sw] = \
                phase[:, r0:r0 + nr, q0:q0 + nq]

    def grid(self, planes):
        """(B, Ho, Wo) planes as a flat (B, Ho*Wq) scratch grid, junk zero."""
        ho, wo = self.out_hw
        grid = _scratch("grid", (planes.shape[0], ho, self.wq))
        grid[:, :, wo:] = 0
        grid[:, :, :wo] = planes
        return grid.reshape(planes.shape[0], -1)

    def plane_weights(self, values):
        """(C*m, ...) per-output values as (m, ..., N*C): each input plane's
        value for its k-th output, contiguous along the planes."""
        n, c = self.shape[:2]
        m = self.multiplier
        rest = values.shape[1:]
        by_k = np.moveaxis(values.reshape((c, m) + rest), (0, 1), (-1, 0))  # (m, ..., C)
        tiled = np.broadcast_to(by_k[..., None, :], by_k.shape[:-1] + (n, c))
        return np.ascontiguousarray(tiled).reshape(by_k.shape[:-1] + (n * c,))


def forward(plan, x, weights, bias, y):
    """y (N, C*m, Ho, Wo) = depthwise convolution of x (N, C, H, W) with
    weights (C*m, T) (T = kh*kw taps, row-major) plus bias (C*m,) or None."""
    n, c, h, w = plan.shape
    m, (ho, wo), length = plan.multiplier, plan.out_hw, plan.length
    planes = x.reshape(n * c, h, w)
    out = y.reshape(n * c, m, ho, wo)
    scalars = plan.plane_weights(weights)                       # (m, T, N*C)
    shifts = None if bias is None else plan.plane_weights(bias)  # (m, N*C)

    def task(lo, hi):
        for start in range(lo, hi, plan.block):
            stop = min(hi, start + plan.block)
            src = plan.split_phases(planes[start:stop])
            acc = _scratch("acc", (stop - start, length))
            tmp = _scratch("tmp", acc.shape)
            for k in range(m):
                for t, (phase, offset) in enumerate(plan.taps):
                    view = src[phase, :, offset:offset + length]
                    scalar = scalars[k, t, start:stop, None]
                    if t == 0:
                        np.multiply(view, scalar, out=acc)
                    else:
                        acc += np.multiply(view, scalar, out=tmp)
                grid = acc.reshape(-1, ho, plan.wq)[:, :, :wo]
                if shifts is None:
                    np.copyto(out[start:stop, k], grid)
                else:
                    np.add(grid, shifts[k, start:stop, None, None], out=out[start:stop, k])

    split_parallel(task, n * c, y.size * len(plan.taps))
    return y


def backward(plan, x, weights, dy, weight_diff=None, dx=None):
    """Gradients of `forward`: adds the weight gradient to weight_diff
    (C*m, T) and overwrites dx (N, C, H, W), each when given."""
    n, c, h, w = plan.shape
    m, (ho, wo), length = plan.multiplier, plan.out_hw, plan.length
    taps = len(plan.taps)
    planes = x.reshape(n * c, h, w)
    dy_planes = dy.reshape(n * c, m, ho, wo)
    dx_planes = None if dx is None else dx.reshape(n * c, h, w)
    scalars = None if dx is None else plan.plane_weights(weights)
    # Per plane and output, each tap's sum; images are summed at the end.
    sums = None if weight_diff is None else np.empty((n * c, m, taps), np.float32)

    def task(lo, hi):
        for start in range(lo, hi, plan.block):
            stop = min(hi, start + plan.block)
            src = None if sums is None else plan.split_phases(planes[start:stop])
            dsrc = None
            if dx_planes is not None:
                dsrc = _scratch("dphases", (len(plan.phases), stop - start, plan.rows * plan.wq))
                dsrc[...] = 0
                tmp = _scratch("tmp", (stop - start, length))
            for k in range(m):
                grid = plan.grid(dy_planes[start:stop, k])
                for t, (phase, offset) in enumerate(plan.taps):
                    if sums is not None:
                        view = src[phase, :, offset:offset + length]
                        sums[start:stop, k, t] = np.einsum("pl,pl->p", grid, view)
                    if dsrc is not None:
                        np.multiply(grid, scalars[k, t, start:stop, None], out=tmp)
                        dsrc[phase, :, offset:offset + length] += tmp
            if dsrc is not None:
                plan.merge_phases(dsrc, dx_planes[start:stop])

    split_parallel(task, n * c, dy.size * taps)
    if sums is not None:
        # (N, C, m, T) summed over the images is (C*m, T) in output order.
        weight_diff += sums.reshape(n, c * m, taps).sum(axis=0)
