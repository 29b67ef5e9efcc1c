"""Batch im2col / col2im for 2-D sliding windows (convolution and friends).

Column layout
-------------
For a batch ``x`` of shape (N, C, H, W) and a window with kernel (kh, kw),
padding (ph, pw), stride (sh, sw) and dilation (dh, dw), the column matrix
``col`` has shape (C*kh*kw, N*Ho*Wo) and holds::

    col[(c*kh + i)*kw + j, (n*Ho + y)*Wo + x]
        = x[n, c, y*sh + i*dh - ph, x*sw + j*dw - pw]     (0 in the padding)

Rows are Caffe's im2col rows, so a weight blob (O, C, kh, kw) reshaped to
(O, C*kh*kw) multiplies ``col`` directly, and the rows of channel group g
are the contiguous block [g*K/G, (g+1)*K/G).  Columns are Caffe's
per-image columns for every image side by side (image-major), so a single
GEMM covers the whole batch; its (O, N*Ho*Wo) result is the top blob with
its first two axes swapped.  Equivalently ``col`` is a C-contiguous array
of shape (C, kh, kw, N, Ho, Wo).

Both directions work on a strided 6-d window view of the (padded) input, so
im2col is one NumPy copy and col2im is one strided add per kernel offset;
there is no loop over pixels or images.  Large batches are split over
threads (by image or by channel).

`add_matmul` (out += a @ b) lives here too: it is the weight-gradient GEMM
of every layer lowered to matrix products (Convolution, InnerProduct).
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .backends import native


class Geometry(NamedTuple):
    """Window parameters as (height, width) pairs."""
    kernel: tuple
    pad: tuple = (0, 0)
    stride: tuple = (1, 1)
    dilation: tuple = (1, 1)

    def extent(self):
        """Input span covered by one dilated window, per axis."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))

    def output_size(self, height, width):
        """(Ho, Wo) as Caffe computes them; a value <= 0 means the window
        does not fit in the padded input (callers report that)."""
        return tuple((size + 2 * p - e) // s + 1 if size + 2 * p >= e else 0
                     for size, p, e, s in zip((height, width), self.pad, self.extent(),
                                              self.stride))

    def is_pointwise(self):
        """True when im2col is the identity up to a transpose (1x1, stride 1, no pad)."""
        return self.kernel == (1, 1) and self.stride == (1, 1) and self.pad == (0, 0)


def column_shape(x_shape, geom):
    """Shape of im2col's result for an (N, C, H, W) input."""
    n, c, h, w = x_shape
    ho, wo = geom.output_size(h, w)
    return (c * geom.kernel[0] * geom.kernel[1], n * ho * wo)


def _padded_shape(x_shape, geom):
    n, c, h, w = x_shape
    return (n, c, h + 2 * geom.pad[0], w + 2 * geom.pad[1])


def _scratch(buffer, shape):
    """`buffer` when it already has `shape`, else a new array."""
    if buffer is not None and buffer.shape == shape:
        return buffer
    return np.empty(shape, np.float32)


def _windows(padded, geom, out_hw, writeable=False):
    """(C, kh, kw, N, Ho, Wo) view of every window of a padded (N, C, Hp, Wp) array."""
    sn, sc, sh, sw = padded.strides
    (kh, kw), (dh, dw), (th, tw) = geom.kernel, geom.dilation, geom.stride
    n, c = padded.shape[:2]
    return as_strided(padded, (c, kh, kw, n) + tuple(out_hw),
                      (sc, sh * dh, sw * dw, sn, sh * th, sw * tw), writeable=writeable)


def _interior(padded, geom, height, width):
    ph, pw = geom.pad
    return padded[:, :, ph:ph + height, pw:pw + width]


# NumPy releases the GIL inside copies and adds, so independent slices of
# the batch run truly in parallel while BLAS has nothing to do.  (OpenBLAS
# workers busy-wait for a while after each GEMM and then compete for the
# cores; OPENBLAS_THREAD_TIMEOUT=4 in the environment stops that.)
_WORKERS = max(1, min(os.cpu_count() or 1, 8))
_MIN_PARALLEL_ELEMENTS = 1 << 18
_pool = None
_pool_pid = None


def _worker_pool():
    # A pool inherited through fork() has no threads: make a new one.
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():
        _pool = ThreadPoolExecutor(max(1, _WORKERS - 1), thread_name_prefix="im2col")
        _pool_pid = os.getpid()
    return _pool


def set_workers(count):
    """Split copies over `count` threads from now on (several MPI ranks on
    one machine share its cores: sppcaffe/parallel)."""
    global _WORKERS, _pool
    _WORKERS = max(1, int(count))
    _pool = None


_task_state = threading.local()


def in_task():
    """Whether this thread runs one of several tasks that share the cores
    (threads.run_tasks): work inside it is not split again."""
    return getattr(_task_state, "inside", False)


def as_task(function):
    """`function`, run with in_task() true."""
    def run():
        _task_state.inside = True
        try:
            function()
        finally:
            _task_state.inside = False
    return run


def split_parallel(task, size, elements):
    """Call task(lo, hi) over chunks of range(size), on several threads
    when there is enough work (`elements` touched) to pay for the hand-off."""
    chunks = min(_WORKERS, size) if elements >= _MIN_PARALLEL_ELEMENTS else 1
    if in_task():
        chunks = 1
    if chunks <= 1:
        task(0, size)
        return
    pool = _worker_pool()
    bounds = [size * k // chunks for k in range(chunks + 1)]
    futures = [pool.submit(task, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    task(bounds[0], bounds[1])
    for f in futures:
        f.result()


def _block_slicer(n, c):
    """Split along images or channels, whichever is longer.  Both are
    race-free for col2im: windows never mix images or channels.  Returns the
    extent and a function giving the (N, C, ...) and column-array slices."""
    if n >= c:
        return n, lambda lo, hi: (np.s_[lo:hi], np.s_[:, :, :, lo:hi])
    return c, lambda lo, hi: (np.s_[:, lo:hi], np.s_[lo:hi])


def _pad_into(x, geom, padded):
    """Copy x inside a zero border (the buffer may hold anything)."""
    ph, pw = geom.pad
    h, w = x.shape[2:]
    padded[:, :, :ph] = 0
    padded[:, :, ph + h:] = 0
    padded[:, :, ph:ph + h, :pw] = 0
    padded[:, :, ph:ph + h, pw + w:] = 0
    _interior(padded, geom, h, w)[...] = x


def run_native(name, arrays, args, units, elements):
    """Run native.c's `name` (sppcaffe/backends/native.py) with `args`
    (arrays passed as pointers) and a unit range [lo, hi) split over the
    worker threads as split_parallel does; False, with nothing done, where
    the compiled loops are not available or cannot take `arrays`."""
    lib = native.library()
    if lib is None or not native.usable(*arrays):
        return False
    function = lib[name]
    args = [native.pointer(a) if isinstance(a, np.ndarray) else a for a in args]
    split_parallel(lambda lo, hi: function(*args, lo, hi), units, elements)
    return True


def _native(name, src, dst, geom, out_hw, image_shape):
    """im2col or col2im (by `name`) over (channel, image) units."""
    n, c, h, w = image_shape
    return run_native(name, (src, dst), (src, n, c, h, w, *geom.kernel, *geom.pad, *geom.stride,
                                         *geom.dilation, *out_hw, dst),
                      n * c, src.size + dst.size)


def im2col(x, geom, col=None, padded=None):
    """Column matrix (C*kh*kw, N*Ho*Wo) of an (N, C, H, W) float32 batch.

    `col` and `padded` (an (N, C, H+2ph, W+2pw) scratch array, overwritten)
    are reused when they have the right shape, so a caller that keeps them
    allocates nothing per call.
    """
    n, c, h, w = x.shape
    out_hw = geom.output_size(h, w)
    col = _scratch(col, column_shape(x.shape, geom))
    if _native("sc_im2col", x, col, geom, out_hw, x.shape):
        return col
    cols = col.reshape((c,) + geom.kernel + (n,) + out_hw)
    source = x
    if geom.pad != (0, 0):
        source = padded = _scratch(padded, _padded_shape(x.shape, geom))
    size, slicer = _block_slicer(n, c)

    def task(lo, hi):
        image_part, col_part = slicer(lo, hi)
        if source is not x:
            _pad_into(x[image_part], geom, source[image_part])
        np.copyto(cols[col_part], _windows(source[image_part], geom, out_hw))

    split_parallel(task, size, col.size)
    return col


def col2im(col, geom, out, padded=None):
    """Sum the columns back onto their input pixels: the adjoint of im2col.

    Overwrites `out` (N, C, H, W).  `padded` is a scratch array as for
    im2col (overwritten); it is not needed when there is no padding.
    """
    n, c, h, w = out.shape
    out_hw = geom.output_size(h, w)
    if _native("sc_col2im", col, out, geom, out_hw, out.shape):
        return out
    cols = col.reshape((c,) + geom.kernel + (n,) + out_hw)
    target = out
    if geom.pad != (0, 0):
        target = _scratch(padded, _padded_shape(out.shape, geom))
    size, slicer = _block_slicer(n, c)

    def task(lo, hi):
        image_part, col_part = slicer(lo, hi)
        part = target[image_part]
        part[...] = 0
        windows = _windows(part, geom, out_hw, writeable=True)
        src = cols[col_part]
        # One kernel offset's windows never overlap each other, so each
        # strided add is a plain elementwise add; offsets overlap, hence
        # the loop.
        for i in range(geom.kernel[0]):
            for j in range(geom.kernel[1]):
                windows[:, i, j] += src[:, i, j]
        if target is not out:
            out[image_part] = _interior(part, geom, h, w)

    split_parallel(task, size, col.size)
    return out


# ---- accumulating GEMM --------------------------------------------------
# Parameter gradients accumulate (Caffe's beta = 1), which np.matmul cannot
# do in place.  A full-size temporary would cost as much memory as the
# weights (210 MB for ZF-5's fc6) plus an extra pass over them, so the
# product goes through a cache-sized scratch one block of rows at a time.
_BLOCK_ELEMENTS = 1 << 21      # 8 MB: a conv layer's weights in one block


def add_matmul(a, b, out):
    """out += a @ b for 2-d float32 arrays, without a temporary as large as out."""
    n_rows, n_cols = out.shape
    step = max(1, _BLOCK_ELEMENTS // max(1, n_cols))
    scratch = np.empty((min(step, n_rows), n_cols), out.dtype)
    for lo in range(0, n_rows, step):
        part = scratch[:min(step, n_rows - lo)]
        np.matmul(a[lo:lo + step], b, out=part)
        out[lo:lo + step] += part
    return out
