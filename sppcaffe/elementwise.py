"""Elementwise kernels NumPy runs slower than it could when called plainly.

NumPy's SIMD loops for maximum/minimum only run when both operands are
arrays; against a scalar (``np.maximum(x, 0)``) the generic loop runs,
about 3x slower per element on this machine.  So the scalar goes through
as a small constant block, reused block by block over the data; results
are those of the plain call, bit for bit (NaN propagates as there).
"""
import numpy as np

_BLOCK = 1 << 16          # elements per call: 256 KB of float32, in cache
_constants = {}


def _constant_block(value, dtype):
    key = (float(value), np.dtype(dtype))
    block = _constants.get(key)
    if block is None:
        block = _constants[key] = np.full(_BLOCK, value, dtype)
        block.flags.writeable = False
    return block


def _blockwise(ufunc, x, value, out):
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)
    if not (x.flags.c_contiguous and out.flags.c_contiguous) or flat_x.size <= _BLOCK:
        ufunc(x, x.dtype.type(value), out=out)
        return out
    block = _constant_block(value, x.dtype)
    for lo in range(0, flat_x.size, _BLOCK):
        hi = min(lo + _BLOCK, flat_x.size)
        ufunc(flat_x[lo:hi], block[:hi - lo], out=flat_out[lo:hi])
    return out


def maximum_scalar(x, value, out):
    """np.maximum(x, value, out=out) for C-contiguous arrays, faster."""
    return _blockwise(np.maximum, x, value, out)


def minimum_scalar(x, value, out):
    """np.minimum(x, value, out=out) for C-contiguous arrays, faster."""
    return _blockwise(np.minimum, x, value, out)
