"""Depthwise convolution on the CPU (group == input channels, any channel
multiplier m), without im2col.

A depthwise filter has only kh*kw taps per output, so the grouped GEMM
spends its time building the column matrix (kh*kw copies of the input) and
launching one tiny product per channel.  Here each output plane is the sum
over taps of one scalar weight times a shifted view of its input plane
(sppcaffe.flat_windows' layout: one contiguous range per plane and tap),
over blocks of (image, channel) planes split across threads, and the
gradients are the same sums taken backwards.  The sums over taps are
Caffe's sums in another order.

Small maps (MobileNet's 28x28 and 14x14, stride 1) run forward with the
planes as the last axis instead: a phase's taps are then one einsum, a multiply-add
in a single pass over runs of planes, where the per-plane layout pays
NumPy a call per short row; on large maps the transposes in and out cost
more than that saves.
"""
import numpy as np

from .flat_windows import FlatWindows, blocks
from .im2col import split_parallel
from .workspace import thread_scratch

# Scratch for one block of planes.  NumPy's cost per call (~1-2 us)
# dominates small blocks; blocks beyond the L2 cache gain little more.
_BLOCK_BYTES = 4 << 20
# Planes last for stride 1 where an output grid (Ho*Wq) has this many
# cells (measured: MobileNet's 28x28 and 14x14 layers gain 15-45%; its 7x7
# and strided ones, whose input gathers cost more, do not), in blocks of
# this many planes (einsum's inner loop: shorter runs cost more per
# element, longer ones slow the transposes), copied out this many at a
# time (a transposing copy is fastest on short runs).
_PLANES_LAST_LENGTH = (100, 1024)
_PLANES_LAST_STRIDED = False
_PLANES_LAST_BLOCK = 256
_TRANSPOSE_RUN = 64


class DepthwisePlan:
    """A depthwise convolution of an (N, C, H, W) input with channel
    multiplier m: its windows and how many planes a block takes."""

    def __init__(self, x_shape, geom, multiplier):
        n, c, h, w = x_shape
        self.shape, self.multiplier, self.kernel = (n, c, h, w), multiplier, geom.kernel
        self.out_hw = geom.output_size(h, w)
        self.windows = FlatWindows((h, w), geom.kernel, geom.stride, geom.pad, geom.dilation,
                                   self.out_hw)
        per_plane = self.windows.phase_size + (2 + multiplier) * self.windows.length
        self.block = max(1, _BLOCK_BYTES // (4 * per_plane))
        low, high = _PLANES_LAST_LENGTH
        self.planes_last = (geom.stride == (1, 1) or _PLANES_LAST_STRIDED) \
            and low <= self.windows.length <= high

    def plane_values(self, values):
        """(C*m, ...) per-output values as (m, ..., N*C): each input plane's
        value for its k-th output, contiguous along the planes."""
        n, c = self.shape[:2]
        m = self.multiplier
        rest = values.shape[1:]
        by_k = np.moveaxis(values.reshape((c, m) + rest), (0, 1), (-1, 0))  # (m, ..., C)
        tiled = np.broadcast_to(by_k[..., None, :], by_k.shape[:-1] + (n, c))
        return np.ascontiguousarray(tiled).reshape(by_k.shape[:-1] + (n * c,))

    def run(self, task, work, block=None):
        """task(start, stop) over blocks of planes, on threads when `work`
        (elements touched) is large enough."""
        def chunk(lo, hi):
            for start, stop in blocks(lo, hi, block or self.block):
                task(start, stop)
        split_parallel(chunk, self.shape[0] * self.shape[1], work)


def forward(plan, x, weights, bias, y):
    """y (N, C*m, Ho, Wo) = depthwise convolution of x (N, C, H, W) with
    weights (C*m, T) (T = kh*kw taps, row-major) plus bias (C*m,) or None."""
    if plan.planes_last:
        return _forward_planes_last(plan, x, weights, bias, y)
    n, c, h, w = plan.shape
    m, windows = plan.multiplier, plan.windows
    planes = x.reshape(n * c, h, w)
    out = y.reshape((n * c, m) + plan.out_hw)
    scalars = plan.plane_values(weights)                        # (m, T, N*C)
    shifts = None if bias is None else plan.plane_values(bias)  # (m, N*C)

    def task(start, stop):
        src = windows.split(planes[start:stop])
        acc = thread_scratch("acc", (stop - start, windows.length))
        tmp = thread_scratch("tmp", acc.shape)
        for k in range(m):
            for t in range(len(windows.taps)):
                scalar = scalars[k, t, start:stop, None]
                if t == 0:
                    np.multiply(windows.view(src, t), scalar, out=acc)
                else:
                    acc += np.multiply(windows.view(src, t), scalar, out=tmp)
            target = out[start:stop, k]
            if shifts is None:
                np.copyto(target, windows.crop(acc))
            else:
                np.add(windows.crop(acc), shifts[k, start:stop, None, None], out=target)

    plan.run(task, y.size * len(windows.taps))
    return y


def _forward_planes_last(plan, x, weights, bias, y):
    n, c, h, w = plan.shape
    m, windows = plan.multiplier, plan.windows
    (ho, wo), wq = plan.out_hw, windows.wq
    planes = x.reshape(n * c, h, w)
    out = y.reshape((n * c, m) + plan.out_hw)
    by_tap = plan.plane_values(weights).reshape((m,) + plan.kernel + (n * c,))
    # Per tap grid: (m, its kernel rows, its kernel columns, N*C).
    grid_weights = [np.ascontiguousarray(by_tap[:, ii][:, :, jj])
                    for _, ii, jj, *_ in windows.tap_grids]
    shifts = None if bias is None else plan.plane_values(bias)     # (m, N*C)

    def task(start, stop):
        src = windows.split_last(planes[start:stop])
        acc = thread_scratch("acc", (windows.length, stop - start))
        tmp = thread_scratch("tmp", acc.shape)
        for k in range(m):
            for g, grid in enumerate(windows.tap_grids):
                np.einsum("ijlb,ijb->lb", windows.grid_view(src, grid),
                          grid_weights[g][k, :, :, start:stop], out=tmp if g else acc)
                if g:
                    acc += tmp
            cells = acc.reshape(ho, wq, -1)[:, :wo]
            for lo in range(0, stop - start, _TRANSPOSE_RUN):
                hi = min(stop - start, lo + _TRANSPOSE_RUN)
                run, target = cells[:, :, lo:hi].transpose(2, 0, 1), out[start + lo:start + hi, k]
                if shifts is None:
                    np.copyto(target, run)
                else:
                    np.add(run, shifts[k, start + lo:start + hi, None, None], out=target)

    plan.run(task, y.size * len(windows.taps), _PLANES_LAST_BLOCK)
    return y


def backward(plan, x, weights, dy, weight_diff=None, dx=None):
    """Gradients of `forward`: adds the weight gradient to weight_diff
    (C*m, T) and overwrites dx (N, C, H, W), each when given."""
    n, c, h, w = plan.shape
    m, windows = plan.multiplier, plan.windows
    taps = len(windows.taps)
    planes = x.reshape(n * c, h, w)
    dy_planes = dy.reshape((n * c, m) + plan.out_hw)
    dx_planes = None if dx is None else dx.reshape(n * c, h, w)
    scalars = None if dx is None else plan.plane_values(weights)
    # Per plane and output, each tap's sum; images are summed at the end.
    sums = None if weight_diff is None else np.empty((n * c, m, taps), np.float32)

    def task(start, stop):
        src = None if sums is None else windows.split(planes[start:stop])
        dsrc = tmp = None
        if dx_planes is not None:
            dsrc = thread_scratch("dphases", (len(windows.phases), stop - start,
                                       windows.rows * windows.wq))
            dsrc[...] = 0
            tmp = thread_scratch("tmp", (stop - start, windows.length))
        for k in range(m):
            grid = windows.grid(dy_planes[start:stop, k])
            for t in range(taps):
                if sums is not None:
                    sums[start:stop, k, t] = np.einsum("pl,pl->p", grid, windows.view(src, t))
                if dsrc is not None:
                    np.multiply(grid, scalars[k, t, start:stop, None], out=tmp)
                    windows.view(dsrc, t)[...] += tmp
        if dsrc is not None:
            windows.merge(dsrc, dx_planes[start:stop])

    plan.run(task, dy.size * taps)
    if sums is not None:
        # (N, C, m, T) summed over the images is (C*m, T) in output order.
        weight_diff += sums.reshape(n, c * m, taps).sum(axis=0)
