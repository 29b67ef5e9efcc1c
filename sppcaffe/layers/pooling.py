"""Pooling, as Caffe's PoolingLayer (MAX and AVE), and the pooling kernels
that SPP and window pooling reuse.

Two families of module-level functions, on (N, C, H, W) float32 arrays:

- uniform windows (``kernel``, ``stride``, ``pad`` and the output size, each
  an (h, w) pair), Caffe's pooling: ``max_pool_forward``,
  ``ave_pool_forward``, ``ave_pool_backward``;
- arbitrary bins given per axis as ``spp_geometry.Bins`` (SPP levels,
  window pooling): ``max_pool_bins``, ``ave_pool_bins``,
  ``ave_pool_bins_backward``.

MAX returns Caffe's argmax: per (n, c) plane, the flat index h*W + w of the
first maximum in row-major window order; ``max_pool_backward`` routes top
gradients through it for either family.  Backward functions ADD into the
``dx`` they are given, so several poolings of one input can share it.

PoolingLayer's device code runs Caffe's kernels (kernels/pooling.cu) with the
geometry planned here; SPP and window pooling reach the bin kernels of the
same file through sppcaffe.layers.window_pool_device.
"""
import numpy as np

from ..backends import gpu
from ..flat_windows import FlatWindows, blocks
from ..im2col import run_native, split_parallel
from ..layer import Layer, register
from ..proto import caffe_pb2
from ..spp_geometry import ceil_div, pooled_size, uniform_bins
from ..workspace import Workspace, thread_scratch

_P = caffe_pb2.PoolingParameter


# ---- uniform windows --------------------------------------------------
#
# One pass per kernel offset (i, j): the (i, j) cells of every window form a
# strided grid of the padded input.  Strided reads cost NumPy ~10x more than
# unit-stride ones, so the padded input is first split into stride_h*stride_w
# "phases" (rows = a, columns = b modulo the stride); each offset then reads
# a plain sub-rectangle of one phase.

def _axis_phase(phase, kernel, stride, pad, size, out):
    """Rows phase, phase + stride, ... of the padded input that some window
    reads: (their count, first one t0 inside the image, its input row, how
    many are inside the image)."""
    extent = (out - 1) * stride + kernel          # padded rows any window reads
    length = ceil_div(extent - phase, stride)
    t0 = max(0, ceil_div(pad - phase, stride))
    src = phase + t0 * stride - pad
    last = min(size, extent - pad) - 1            # last input row read
    count = max(0, (last - src) // stride + 1)
    return length, t0, src, count


def _phase_plan(x_shape, kernel, stride, pad, out_shape):
    """For each phase (a, b) some kernel offset reads: its shape, and the
    (phase slice, input slice) pair of the cells inside the image."""
    n, c, h, w = x_shape
    plan = {}
    for a in range(min(stride[0], kernel[0])):
        rows = _axis_phase(a, kernel[0], stride[0], pad[0], h, out_shape[0])
        for b in range(min(stride[1], kernel[1])):
            cols = _axis_phase(b, kernel[1], stride[1], pad[1], w, out_shape[1])
            inside = (slice(None), slice(None), slice(rows[1], rows[1] + rows[3]),
                      slice(cols[1], cols[1] + cols[3]))
            source = (slice(None), slice(None),
                      slice(rows[2], rows[2] + rows[3] * stride[0], stride[0]),
                      slice(cols[2], cols[2] + cols[3] * stride[1], stride[1]))
            full = (rows[3], cols[3]) == (rows[0], cols[0])
            plan[a, b] = ((n, c, rows[0], cols[0]), inside, source, full)
    return plan


def _split_phases(x, kernel, stride, pad, out_shape, fill, ws):
    if tuple(stride) == (1, 1) and tuple(pad) == (0, 0):
        return {(0, 0): x}                        # the windows read x itself
    phases = {}
    for key, (shape, inside, source, full) in _phase_plan(
            x.shape, kernel, stride, pad, out_shape).items():
        phase = phases[key] = ws.get(("phase", key), shape)
        if not full:
            phase.fill(fill)
        phase[inside] = x[source]
    return phases


def _offsets(kernel, stride, out_shape):
    """Kernel offsets in row-major order (Caffe's scan order) with the phase
    and the sub-rectangle of it that they read."""
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            yield (i, j), (i % stride[0], j % stride[1]), (
                slice(None), slice(None),
                slice(i // stride[0], i // stride[0] + out_shape[0]),
                slice(j // stride[1], j // stride[1] + out_shape[1]))


def _window_origins(in_width, stride, pad, out_shape):
    """Plane index of each window's (0, 0) cell (may lie in the padding)."""
    rows = np.arange(out_shape[0]) * stride[0] - pad[0]
    cols = np.arange(out_shape[1]) * stride[1] - pad[1]
    return (rows[:, None] * in_width + cols[None, :]).astype(np.int32)


def _single_window(x, kernel, pad):
    """The one window of a 1x1 output (global pooling): its clipped cells."""
    h0, w0 = max(0, -pad[0]), max(0, -pad[1])
    return h0, w0, x[:, :, h0:min(x.shape[2], kernel[0] - pad[0]),
                     w0:min(x.shape[3], kernel[1] - pad[1])]


# Without argmax, MAX and AVE's sums run in sppcaffe.flat_windows' layout
# instead: each kernel offset is one contiguous range per plane there, where
# the phases above cost NumPy a call per row.
_BLOCK_BYTES = 1 << 20


def _combine_windows(x, kernel, stride, pad, out_shape, y, combine, fill):
    """y = combine (np.maximum, np.add) over each window's cells in
    Caffe's scan order, `fill` outside the input; on blocks of planes,
    across threads."""
    n, c, h, w = x.shape
    windows = FlatWindows((h, w), kernel, stride, pad, (1, 1), out_shape)
    planes = x.reshape(n * c, h, w)
    target = y if y.flags.c_contiguous else np.empty(y.shape, y.dtype)
    out = target.reshape((n * c,) + tuple(out_shape))
    block = max(1, _BLOCK_BYTES // (4 * (windows.phase_size + windows.length)))

    def task(lo, hi):
        for start, stop in blocks(lo, hi, block):
            src = windows.split(planes[start:stop], fill)
            acc = thread_scratch("acc", (stop - start, windows.length))
            np.copyto(acc, windows.view(src, 0))
            for tap in range(1, len(windows.taps)):
                combine(acc, windows.view(src, tap), out=acc)
            np.copyto(out[start:stop], windows.crop(acc))

    split_parallel(task, n * c, y.size * len(windows.taps))
    if target is not y:
        y[...] = target


def max_pool_forward(x, kernel, stride, pad, out_shape, out=None, argmax=None, ws=None,
                     with_argmax=True):
    """Caffe MAX pooling.  Returns (y, argmax): argmax[n, c, ph, pw] is the plane
    index h*W + w of the first maximum of the window (int32); None when
    `with_argmax` is False (a third of the work: tracking the winner costs
    three passes per window offset, the maximum one).  `ws`: a Workspace to
    reuse between calls."""
    n, c, _, width = x.shape
    shape = (n, c) + tuple(out_shape)
    y = np.empty(shape, x.dtype) if out is None else out
    arg = None if not with_argmax else np.empty(shape, np.int32) if argmax is None else argmax
    if tuple(out_shape) != (1, 1) and _native_max_pool(x, kernel, stride, pad, out_shape, y, arg):
        return y, arg
    if not with_argmax:
        if tuple(out_shape) == (1, 1):
            win = _single_window(x, kernel, pad)[2]
            np.max(win.reshape(n, c, -1), axis=2, out=y.reshape(n, c))
            return y, None
        _combine_windows(x, kernel, stride, pad, out_shape, y, np.maximum, -np.inf)
        return y, None
    if tuple(out_shape) == (1, 1):
        # One window (global pooling): a plain reduction instead of one pass
        # per cell; argmax's first-occurrence rule is Caffe's tie rule.
        h0, w0, win = _single_window(x, kernel, pad)
        flat = win.reshape(n, c, -1)
        best = flat.argmax(axis=2)
        y[..., 0, 0] = np.take_along_axis(flat, best[..., None], 2)[..., 0]
        arg[..., 0, 0] = (h0 + best // win.shape[3]) * width + w0 + best % win.shape[3]
        return y, arg
    ws = ws or Workspace()
    phases = _split_phases(x, kernel, stride, pad, out_shape, -np.inf, ws)
    # `which` holds the running maximum's kernel offset number.  Masked
    # updates go through XOR arithmetic on it: np.copyto(where=) and boolean
    # indexing are ~40x slower than plain ufuncs on uint8.
    kind = np.uint8 if kernel[0] * kernel[1] <= 256 else np.int32
    which = ws.get("which", shape, kind)
    step = ws.get("step", shape, kind)
    better = ws.get("better", shape, bool)
    for number, ((i, j), phase, window) in enumerate(_offsets(kernel, stride, out_shape)):
        v = phases[phase][window]
        if number == 0:
            np.copyto(y, v)
            which.fill(0)
            continue
        np.greater(v, y, out=better)               # strict: the first maximum wins ties
        np.maximum(y, v, out=y)
        np.bitwise_xor(which, number, out=step)
        np.multiply(step, better, out=step)
        np.bitwise_xor(which, step, out=which)
    plane_offset = np.array([i * width + j for i in range(kernel[0]) for j in range(kernel[1])],
                            np.int32)
    np.take(plane_offset, which, out=arg)
    arg += _window_origins(width, stride, pad, out_shape)
    return y, arg


def _native_max_pool(x, kernel, stride, pad, out_shape, y, arg):
    """native.c's MAX pooling (same bits as the NumPy code below) over
    blocks of planes on the worker threads; False when not available."""
    n, c, h, w = x.shape
    arrays = (x, y) if arg is None else (x, y, arg)
    return run_native("sc_max_pool", arrays, (x, h, w, *kernel, *stride, *pad, *out_shape, y, arg),
                      n * c, x.size)


def max_pool_backward(dy, argmax, dx, overwrite=False):
    """Add each top gradient to the input cell its argmax names (any window
    geometry; dx C-contiguous), onto zeros with `overwrite`.  np.add.at adds
    repeated cells in top order, as Caffe does."""
    if not dx.flags.c_contiguous:
        raise ValueError("max_pool_backward needs a C-contiguous dx")
    n, c, h, w = dx.shape
    if run_native("sc_max_pool_backward", (dy, argmax),
                  (dy, argmax, h, w, *dy.shape[2:], dx, int(overwrite)), n * c, dx.size):
        return
    if overwrite:
        dx[...] = 0
    planes = np.arange(n * c, dtype=np.intp).reshape(n, c, 1, 1) * (h * w)
    index = np.add(argmax, planes).reshape(-1)
    np.add.at(dx.reshape(-1), index, dy.reshape(-1))


def _pool_sizes(in_shape, kernel, stride, pad, out_shape):
    """Caffe's AVE divisor: each window clipped to the padded input."""
    rows = uniform_bins(in_shape[2], kernel[0], stride[0], pad[0], out_shape[0]).divisors
    cols = uniform_bins(in_shape[3], kernel[1], stride[1], pad[1], out_shape[1]).divisors
    return (rows[:, None] * cols[None, :]).astype(np.float32)


def ave_pool_forward(x, kernel, stride, pad, out_shape, out=None, ws=None):
    """Caffe AVE pooling: the sum over the window's cells inside the image
    divided by the window's size inside the padded image.  Cells are added
    in Caffe's order (zero padding adds exact zeros), so y is bit-exact
    except for a single window, summed by NumPy's pairwise sum."""
    n, c = x.shape[:2]
    y = np.empty((n, c) + tuple(out_shape), x.dtype) if out is None else out
    if tuple(out_shape) == (1, 1):
        y[...] = _single_window(x, kernel, pad)[2].sum(axis=(2, 3), keepdims=True)
    else:
        _combine_windows(x, kernel, stride, pad, out_shape, y, np.add, 0.0)
    np.divide(y, _pool_sizes(x.shape, kernel, stride, pad, out_shape), out=y)
    return y


def ave_pool_backward(dy, kernel, stride, pad, dx, ws=None):
    """Add each top gradient / pool size to every input cell of its window."""
    out_shape = dy.shape[2:]
    g = dy / _pool_sizes(dx.shape, kernel, stride, pad, out_shape)
    if tuple(out_shape) == (1, 1):
        _single_window(dx, kernel, pad)[2][...] += g
        return
    ws = ws or Workspace()
    plan = _phase_plan(dx.shape, kernel, stride, pad, out_shape)
    dphases = {}
    for key, (shape, *_) in plan.items():
        dphases[key] = ws.get(("dphase", key), shape)
        dphases[key].fill(0)
    # Reverse offset order adds a cell's windows in Caffe's (ph, pw) order.
    for _, phase, window in reversed(list(_offsets(kernel, stride, out_shape))):
        dphases[phase][window] += g
    for key, (_, inside, source, _) in plan.items():
        dx[source] += dphases[key][inside]


# ---- bins given per axis (SPP, window pooling) ------------------------
#
# A rectangle's maximum is the maximum over its rows of each row's maximum,
# and the first maximum in row-major order is the first row holding the
# maximum, at that row's first maximum: so MAX runs as two 1-D passes (columns,
# then rows), each looping over the offsets within a bin only (bins are a few
# cells wide).  The pooled axes are moved in front first, so that every
# gather copies whole contiguous (N, C) blocks (2-3x faster than gathering
# along the last axis).  AVE is linear: two small matrix products.

def _axis_max(x, axis, bins):
    """Max over each bin along `axis`, and the index along `axis` of its first
    occurrence.  Shorter bins repeat their last cell, which never wins."""
    shape = [1] * x.ndim
    shape[axis] = -1
    best = np.take(x, bins.starts, axis=axis)
    arg = np.empty(best.shape, np.int32)
    arg[...] = bins.starts.reshape(shape)
    better = np.empty(best.shape, bool)
    step = np.empty(best.shape, np.int32)
    for k in range(1, int((bins.ends - bins.starts).max())):
        index = np.minimum(bins.starts + k, bins.ends - 1)
        v = np.take(x, index, axis=axis)
        np.greater(v, best, out=better)             # strict: the first maximum wins ties
        np.maximum(best, v, out=best)
        np.bitwise_xor(arg, index.reshape(shape).astype(np.int32), out=step)
        np.multiply(step, better, out=step)
        np.bitwise_xor(arg, step, out=arg)
    return best, arg


def max_pool_bins(x, row_bins, col_bins):
    """MAX over the bins row_bins x col_bins: (y, argmax) as max_pool_forward."""
    by_cell = np.ascontiguousarray(x.transpose(3, 2, 0, 1))       # (W, H, N, C)
    by_col, col_arg = _axis_max(by_cell, 0, col_bins)               # (nw, H, N, C)
    y, row_arg = _axis_max(by_col, 1, row_bins)                     # (nw, nh, N, C)
    col_arg = np.take_along_axis(col_arg, row_arg, axis=1)
    argmax = row_arg * x.shape[3] + col_arg
    return y.transpose(2, 3, 1, 0), argmax.transpose(2, 3, 1, 0)


def _membership(bins, size):
    """(bins, size) 0/1 matrix: which cells each bin reads."""
    cells = np.arange(size)
    return ((cells >= bins.starts[:, None]) & (cells < bins.ends[:, None])).astype(np.float32)


def _bin_divisors(row_bins, col_bins):
    return (row_bins.divisors[:, None] * col_bins.divisors[None, :]).astype(np.float32)


def ave_pool_bins(x, row_bins, col_bins):
    """AVE over the bins: sum of each bin's cells / its divisor."""
    rows = _membership(row_bins, x.shape[2])
    cols = _membership(col_bins, x.shape[3])
    return rows @ (x @ cols.T) / _bin_divisors(row_bins, col_bins)


def ave_pool_bins_backward(dy, row_bins, col_bins, dx):
    """Add each top gradient / divisor to every cell of its bin."""
    rows = _membership(row_bins, dx.shape[2])
    cols = _membership(col_bins, dx.shape[3])
    dx += rows.T @ (dy / _bin_divisors(row_bins, col_bins)) @ cols


# ---- the layer --------------------------------------------------------

def _hw_setting(layer, p, name, square):
    """(h, w) of a PoolingParameter setting: `square` for both axes, or both
    `name`_h and `name`_w (Caffe rejects a mix)."""
    h, w = name + "_h", name + "_w"
    if p.HasField(h) or p.HasField(w):
        if p.HasField(square) or not (p.HasField(h) and p.HasField(w)):
            raise layer.error(f"give either {square} or both {h} and {w}")
        return getattr(p, h), getattr(p, w)
    return getattr(p, square), getattr(p, square)


class MapPoolingLayer(Layer):
    """Base of layers pooling (N, C, H, W) maps: their geometry is planned
    by ``_plan(shape)`` (setting ``_top_shape``) only when the input shape
    changes, since reshape runs before every forward."""
    exact_num_bottom = 1
    _in_shape = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.error(f"input must have 4 axes (N, C, H, W), got shape {shape}")
        if shape != self._in_shape:
            self._plan(shape)
            self._in_shape = shape
        for t in top:
            t.reshape(self._top_shape)

    def _plan(self, shape):
        raise NotImplementedError


@register("Pooling")
class PoolingLayer(MapPoolingLayer):
    min_num_top = 1
    max_num_top = 2        # MAX may output Caffe's argmax mask as a second top

    def layer_setup(self, bottom, top):
        self._argmax_of_forward = False
        p = self.param.pooling_param
        if p.pool == _P.STOCHASTIC:
            raise self.error("STOCHASTIC pooling is not implemented (use MAX or AVE)")
        self.is_max = p.pool == _P.MAX
        if len(top) > 1 and not self.is_max:
            raise self.error("only MAX pooling has a second top (the argmax mask)")
        self.global_pooling = p.global_pooling
        has_kernel = p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w")
        if self.global_pooling:
            if has_kernel:
                raise self.error("global_pooling takes the kernel from the input; "
                                 "do not give kernel_size/kernel_h/kernel_w")
            self.kernel = None
        elif not has_kernel:
            raise self.error("kernel_size (or kernel_h and kernel_w) is required")
        else:
            self.kernel = _hw_setting(self, p, "kernel", "kernel_size")
            if min(self.kernel) < 1:
                raise self.error(f"kernel must be positive, got {self.kernel}")
        self.pad = _hw_setting(self, p, "pad", "pad")
        self.stride = _hw_setting(self, p, "stride", "stride")
        if min(self.stride) < 1:
            raise self.error(f"stride must be positive, got {self.stride}")
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise self.error("global_pooling allows only pad 0 and stride 1")
        if self.kernel and (self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]):
            raise self.error(f"pad {self.pad} must be smaller than kernel {self.kernel}")
        self.ceil_mode = p.round_mode == _P.CEIL
        self._ws = Workspace()
        self._dev = gpu.Workspace()

    def _plan(self, shape):
        n, c, h, w = shape
        self.window = (h, w) if self.global_pooling else self.kernel
        any_pad = self.pad != (0, 0)        # Caffe applies the padding rule to both axes
        out = tuple(pooled_size(size, k, s, p, self.ceil_mode, any_pad)
                    for size, k, s, p in zip((h, w), self.window, self.stride, self.pad))
        if min(out) < 1:
            raise self.error(f"kernel {self.window} (pad {self.pad}) does not fit "
                             f"the {h}x{w} input")
        for axis, size, k, s, p, o in zip("HW", (h, w), self.window, self.stride, self.pad, out):
            if (o - 1) * s - p >= size:
                # Caffe reads outside the window (and writes bottom_diff[-1]) here.
                raise self.error(f"the last window along {axis} starts at {(o - 1) * s - p}, "
                                 f"outside the input of size {size} (stride > kernel)")
        self.out_shape = out
        self._top_shape = (n, c) + out
        self._argmax = np.empty(self._top_shape, np.int32) if self.is_max else None

    def forward(self, bottom, top):
        x = bottom[0].data
        geometry = (self.window, self.stride, self.pad, self.out_shape)
        if self.is_max:
            # A TEST net rarely runs backward: find the winners only if it does.
            self._argmax_of_forward = self.phase != caffe_pb2.TEST or len(top) > 1
            max_pool_forward(x, *geometry, out=top[0].data, argmax=self._argmax, ws=self._ws,
                             with_argmax=self._argmax_of_forward)
            if len(top) > 1:
                top[1].data[...] = self._argmax
        else:
            ave_pool_forward(x, *geometry, out=top[0].data, ws=self._ws)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        if self.is_max:
            if not self._argmax_of_forward:     # the input is unchanged since forward
                max_pool_forward(bottom[0].data, self.window, self.stride, self.pad,
                                 self.out_shape, out=self._ws.get("recomputed", self._top_shape),
                                 argmax=self._argmax, ws=self._ws)
                self._argmax_of_forward = True
            # Caffe routes through the mask top when there is one.
            argmax = top[1].data.astype(np.int32) if len(top) > 1 else self._argmax
            max_pool_backward(top[0].diff, argmax, dx, overwrite=True)
        else:
            dx[...] = 0
            ave_pool_backward(top[0].diff, self.window, self.stride, self.pad, dx, ws=self._ws)

    # ---- device code (kernels/pooling.cu: Caffe's kernels) ------------------
    def _device_geometry(self, bottom):
        _, c, h, w = bottom[0].shape
        return (c, h, w, *self.out_shape, *self.window, *self.stride, *self.pad)

    def forward_gpu(self, bottom, top):
        count = top[0].count
        args = (count, bottom[0].gpu_data, *self._device_geometry(bottom), top[0].mutable_gpu_data)
        if not self.is_max:
            gpu.kernel("pool_ave_forward")(count, *args)
        elif len(top) > 1:          # Caffe writes the mask straight into the second top
            gpu.kernel("pool_max_forward")(count, *args, 0, top[1].mutable_gpu_data)
        else:
            gpu.kernel("pool_max_forward")(count, *args, self._dev.get("mask", 4 * count), 0)

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        count = bottom[0].count
        geometry = self._device_geometry(bottom)
        dy, dx = top[0].gpu_diff, bottom[0].mutable_gpu_diff
        # The kernels gather every bottom cell's gradient: dx is overwritten.
        if not self.is_max:
            gpu.kernel("pool_ave_backward")(count, count, dy, *geometry, dx)
        elif len(top) > 1:
            gpu.kernel("pool_max_backward")(count, count, dy, 0, top[1].gpu_data, *geometry, dx)
        else:
            mask = self._dev.get("mask", 4 * top[0].count)
            gpu.kernel("pool_max_backward")(count, count, dy, mask, 0, *geometry, dx)
