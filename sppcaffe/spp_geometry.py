"""Window geometry of Caffe pooling and of the three SPP bin layouts.

Pure integer arithmetic on one spatial axis at a time: SPP bins of a
rectangular map are the product of its row bins and its column bins.
Caffe's pooling output-size rule lives here, rather than in the Pooling
layer, because the ``caffe`` SPP layout is defined through it.

A layout is returned as ``Bins``: for each bin, the cells ``[start, end)``
it reads (clipped to the map) and the divisor average pooling uses.  The
divisor equals ``end - start`` except for Caffe, which counts the padding a
window covers inside the padded map (PoolingLayer's ``pool_size``).

SPP methods (``n`` bins over a map of ``a`` cells):
- ``caffe``: BVLC SPPLayer.  kernel = ceil(a/n), pad = (kernel*n - a + 1)//2,
  a Pooling with stride = kernel.  Fails when pad >= kernel (Caffe's
  CHECK_LT in PoolingLayer), e.g. a=13, n=8.
- ``paper``: the paper's cuda-convnet layout: window = ceil(a/n),
  stride = floor(a/n), exactly n windows from 0.  When a mod n is neither
  0 nor 1 the last cells are read by no bin (see ``paper_covers``).  A map
  smaller than n (stride 0) is an error: ADAPTIVE handles such maps.
- ``adaptive``: bin i = [floor(i*a/n), ceil((i+1)*a/n)); always covers.
"""
from typing import NamedTuple

import numpy as np

CAFFE, PAPER, ADAPTIVE = "caffe", "paper", "adaptive"
METHODS = (CAFFE, PAPER, ADAPTIVE)


class Bins(NamedTuple):
    starts: np.ndarray     # first cell read by each bin
    ends: np.ndarray       # one past the last cell read
    divisors: np.ndarray   # average pooling divides the bin's sum by this


def ceil_div(a, b):
    return -(-a // b)


def pooled_size(size, kernel, stride, pad, ceil_mode=True, drop_padding_window=None):
    """Caffe PoolingLayer's output count along one axis.

    ceil or floor of (size + 2*pad - kernel)/stride, plus one; then, when the
    layer has any padding (``drop_padding_window``, default ``pad > 0``; Caffe
    tests both axes' pads together), a last window starting in the bottom
    padding is dropped.  Returns an int, possibly < 1 for a too small map.
    """
    if pad >= kernel:
        raise ValueError(f"pad {pad} must be smaller than kernel {kernel}")
    span = size + 2 * pad - kernel
    count = (ceil_div(span, stride) if ceil_mode else span // stride) + 1
    if drop_padding_window is None:
        drop_padding_window = pad > 0
    if drop_padding_window and (count - 1) * stride >= size + pad:
        count -= 1
    return count


def uniform_bins(size, kernel, stride, pad, count):
    """`count` windows of `kernel` cells every `stride` cells from -pad,
    as Caffe's pooling reads them (clipped to the map) and averages them
    (divisor: the window clipped to the padded map)."""
    starts = np.arange(count, dtype=np.intp) * stride - pad
    ends = starts + kernel
    divisors = np.minimum(ends, size + pad) - starts
    return Bins(np.maximum(starts, 0), np.minimum(ends, size), divisors)


def caffe_kernel_pad(size, n):
    """Kernel (= stride) and pad of BVLC SPPLayer's pooling for n bins.

    The count Caffe's pooling then produces is always n: with r = kernel*n - size,
    the padded span is kernel*n (+1 when r is odd, and that extra window is
    dropped as starting in the padding); `caffe_bins` asserts it.
    """
    kernel = ceil_div(size, n)
    pad = (kernel * n - size + 1) // 2
    if pad >= kernel:
        raise ValueError(f"BVLC SPP cannot pool a map of size {size} into {n} bins: "
                         f"kernel {kernel} with pad {pad} (Caffe requires pad < kernel)")
    return kernel, pad


def caffe_bins(size, n):
    kernel, pad = caffe_kernel_pad(size, n)
    count = pooled_size(size, kernel, kernel, pad)
    assert count == n, (size, n, count)
    return uniform_bins(size, kernel, kernel, pad, count)


def paper_window_stride(size, n):
    """Window ceil(size/n) and stride floor(size/n) of the paper's layout."""
    if size < n:
        raise ValueError(f"the paper's SPP layout needs a map of at least {n} cells for "
                         f"{n} bins, got {size} (stride would be 0; use method ADAPTIVE)")
    return ceil_div(size, n), size // n


def paper_covers(size, n):
    """Whether the paper's n windows read every cell of the axis
    (true exactly when size mod n is 0 or 1)."""
    window, stride = paper_window_stride(size, n)
    return (n - 1) * stride + window >= size


def paper_bins(size, n):
    window, stride = paper_window_stride(size, n)
    return uniform_bins(size, window, stride, 0, n)


def adaptive_bins(size, n):
    i = np.arange(n, dtype=np.intp)
    starts = (i * size) // n
    ends = ceil_div((i + 1) * size, n)
    return Bins(starts, ends, ends - starts)


_BINS = {CAFFE: caffe_bins, PAPER: paper_bins, ADAPTIVE: adaptive_bins}


def bins(method, size, n):
    """The n bins of `method` over an axis of `size` cells (ValueError when
    the method cannot pool that size into n bins)."""
    if n < 1:
        raise ValueError(f"a pyramid level needs at least 1 bin, got {n}")
    try:
        return _BINS[method](size, n)
    except KeyError:
        raise ValueError(f"unknown SPP method {method!r} (known: {', '.join(METHODS)})") from None


def pyramid_levels(pyramid_height):
    """BVLC's levels for pyramid_height: 2**l bins per side, l = 0 .. h-1
    (coarse to fine, the order of the concatenated output)."""
    return [2 ** level for level in range(pyramid_height)]


def pyramid_output_length(levels, channels):
    """Length of the fixed-size SPP vector: channels * sum of n^2."""
    return channels * sum(n * n for n in levels)
