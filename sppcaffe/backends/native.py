"""The CPU's compiled loops (native.c): im2col, col2im, MAX pooling, batch
1's rank-one weight gradient and the SGD update.

NumPy runs these as several strided passes over the whole batch, which
costs more than the convolutions' GEMMs on small nets (LeNet's conv2:
col2im 2.1 ms against a 1.7 ms GEMM).  native.c does each in one pass and
gives the same bits as the NumPy code (tests/test_native.py), so the
library is an accelerator, never a different result.

It is built with the machine's C compiler (``$CC``, else ``cc``) the first
time it is needed and cached with the GPU kernels' host builds (see
shared_objects).  Without a compiler the NumPy code runs, after one logged
warning.  ``SPPCAFFE_NATIVE=0`` in the environment turns it off.
"""
import ctypes
import logging
import os
import shutil
import threading
from pathlib import Path

import numpy as np

from . import shared_objects

SOURCE = Path(__file__).with_name("native.c")
FLAGS = ["-O2", "-std=c99", "-shared", "-fPIC", "-fno-fast-math", "-ffp-contract=off", "-x", "c"]

_I64 = ctypes.c_int64
_P = ctypes.c_void_p
_SIGNATURES = {
    "sc_im2col": [_P] + [_I64] * 14 + [_P, _I64, _I64],
    "sc_col2im": [_P] + [_I64] * 14 + [_P, _I64, _I64],
    "sc_max_pool": [_P] + [_I64] * 10 + [_P, _P, _I64, _I64],
    "sc_max_pool_backward": [_P, _P] + [_I64] * 4 + [_P, ctypes.c_int, _I64, _I64],
    "sc_add_outer": [_P, _I64, _P, _I64, _P, _I64, _I64, _I64],
    "sc_sgd_update": [_P, _P, _P, _I64, ctypes.c_float, ctypes.c_float, ctypes.c_float,
                      ctypes.c_int],
}

_lock = threading.Lock()
_library = None          # the loaded functions, False when unavailable
log = logging.getLogger(__name__)


def enabled():
    return os.environ.get("SPPCAFFE_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def library():
    """The functions of native.c by name, or None (switched off, or no
    compiler: the callers then run their NumPy code)."""
    global _library
    if not enabled():
        return None
    if _library is None:
        with _lock:
            if _library is None:
                _library = _load()
    return _library or None


def _load():
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        log.warning("no C compiler ('%s'): im2col, col2im and pooling run in NumPy, "
                    "slower (same results); set CC to use another compiler", compiler)
        return False
    try:
        module = shared_objects.load(compiler, FLAGS, SOURCE)
    except (RuntimeError, OSError) as exc:
        log.warning("could not build %s, NumPy runs instead (same results): %s", SOURCE.name, exc)
        return False
    functions = {}
    for name, argtypes in _SIGNATURES.items():
        function = getattr(module, name)
        function.argtypes, function.restype = argtypes, None
        functions[name] = function
    return functions


def pointer(array):
    return array.ctypes.data


def usable(*arrays):
    """True when every array is C-contiguous (float32 or int32), as the
    loops index them."""
    return all(a.flags.c_contiguous and a.dtype in (np.float32, np.int32) for a in arrays)


def add_outer(a, b, out):
    """out += a @ b for a (rows, 1) and b (1, cols) (float32, any strides;
    out with unit column stride): True when done, False when the caller's
    GEMM must run (no library, or strides it cannot take)."""
    lib = library()
    if lib is None or not (a.dtype == b.dtype == out.dtype == np.float32):
        return False
    if out.strides[1] != 4 or min(a.strides[0], b.strides[1], out.strides[0]) < 0:
        return False
    lib["sc_add_outer"](pointer(a), a.strides[0] // 4, pointer(b), b.strides[1] // 4,
                        pointer(out), out.strides[0] // 4, *out.shape)
    return True
