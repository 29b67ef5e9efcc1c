"""Stand-ins for PyCUDA and cuBLAS, so CudaDevice's own code -- argument
packing, launch shapes, the row-major to column-major swaps of the BLAS
calls -- runs and is checked on machines without a GPU.

Device memory is host memory; kernels are the g++ build of the same
sources (launched through PyCUDA's prepare/prepared_call protocol, with
the types its format string names); the cuBLAS routines are written here
in NumPy straight from cuBLAS's column-major definitions, independent of
how CudaDevice calls them.
"""
import ctypes
import struct
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

from sppcaffe.backends.gpu.host_device import HostDevice


def _floats(ptr, count):
    return np.frombuffer((ctypes.c_float * count).from_address(ptr), np.float32)


# ---- pycuda.driver -----------------------------------------------------------
class _Allocation:
    def __init__(self, nbytes):
        self.buffer = np.zeros(nbytes, np.uint8)

    def __int__(self):
        return self.buffer.ctypes.data


class _Context:
    def push(self):
        pass

    def synchronize(self):
        pass

    @staticmethod
    def pop():
        pass


class _Device:
    def __init__(self, ordinal):
        self.ordinal = ordinal

    @staticmethod
    def count():
        return 1

    def name(self):
        return "Fake GPU (host memory)"

    def retain_primary_context(self):
        return _Context()


def _driver():
    driver = types.ModuleType("pycuda.driver")
    driver.init = lambda: None
    driver.Device = _Device
    driver.Context = _Context
    driver.mem_alloc = _Allocation
    driver.memcpy_htod = lambda dst, src: ctypes.memmove(int(dst), src.ctypes.data, src.nbytes)
    driver.memcpy_dtoh = lambda dst, src: ctypes.memmove(dst.ctypes.data, int(src), dst.nbytes)
    driver.memcpy_dtod = lambda dst, src, n: ctypes.memmove(int(dst), int(src), n)
    driver.memset_d8 = lambda ptr, value, n: ctypes.memset(int(ptr), value, n)
    return driver


# ---- pycuda.compiler -----------------------------------------------------------
_CTYPE = {"P": ctypes.c_void_p, "i": ctypes.c_int32, "I": ctypes.c_uint32,
          "Q": ctypes.c_uint64, "f": ctypes.c_float}


LAUNCHES = []       # (kernel name, format, grid, block) of every prepared_call


class _Function:
    def __init__(self, function, name):
        self.function, self.name = function, name
        self.format = None

    def prepare(self, format_):
        self.format = format_
        self.function.argtypes = [_CTYPE[c] for c in format_]
        self.function.restype = None

    def prepared_call(self, grid, block, *args):
        assert self.format is not None, "prepared_call before prepare"
        assert len(args) == len(self.format), (self.format, args)
        struct.pack(self.format, *args)         # what PyCUDA does with them
        assert len(grid) == 2 and len(block) == 3 and grid[0] >= 1 and block[0] >= 1
        LAUNCHES.append((self.name, self.format, grid, block))
        self.function(*args)


class _SourceModule:
    def __init__(self, source, no_extern_c=False, include_dirs=()):
        assert no_extern_c, "the kernels declare extern \"C\" themselves"
        # The build lands in the kernel cache; the source copy is not kept.
        with tempfile.TemporaryDirectory(prefix="fake_cuda_") as folder:
            path = Path(folder) / "module.cu"
            path.write_text(source)
            self.library = HostDevice()._compile(path)

    def get_function(self, name):
        return _Function(getattr(self.library, name), name)


# ---- cuBLAS (column-major, as its documentation defines the routines) ----------
def _column_major(ptr, rows, cols, ld):
    """The rows x cols column-major matrix with leading dimension ld: element
    (i, j) at ptr[i + j * ld]."""
    assert ld >= rows, (ld, rows)
    return np.lib.stride_tricks.as_strided(_floats(ptr, ld * cols), (rows, cols), (4, 4 * ld))


def _value(x):
    return x.value if hasattr(x, "value") else x._obj.value


class FakeCublas:
    def __init__(self):
        self.calls = []

    def cublasCreate_v2(self, handle):
        return 0

    def _gemm(self, op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        A = _column_major(a, k, m, lda).T if op_a else _column_major(a, m, k, lda)
        B = _column_major(b, n, k, ldb).T if op_b else _column_major(b, k, n, ldb)
        C = _column_major(c, m, n, ldc)
        C[...] = alpha * (A @ B) + (beta * C if beta else 0)

    def cublasSgemm_v2(self, handle, op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        args = [_value(v) for v in (op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)]
        self.calls.append(("gemm", args))
        self._gemm(*args)
        return 0

    def cublasSgemmStridedBatched(self, handle, op_a, op_b, m, n, k, alpha, a, lda, stride_a, b,
                                  ldb, stride_b, beta, c, ldc, stride_c, batch):
        v = [_value(x) for x in (op_a, op_b, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b,
                                 beta, c, ldc, stride_c, batch)]
        op_a, op_b, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc, sc, batch = v
        self.calls.append(("gemm_batched", v))
        for i in range(batch):
            self._gemm(op_a, op_b, m, n, k, alpha, a + 4 * i * sa, lda, b + 4 * i * sb, ldb,
                       beta, c + 4 * i * sc, ldc)
        return 0

    def cublasSgemv_v2(self, handle, op, m, n, alpha, a, lda, x, incx, beta, y, incy):
        op, m, n, alpha, a, lda, x, incx, beta, y, incy = [
            _value(v) for v in (op, m, n, alpha, a, lda, x, incx, beta, y, incy)]
        assert incx == incy == 1
        A = _column_major(a, m, n, lda)
        if op:
            A, m, n = A.T, n, m
        out = _floats(y, m)
        out[...] = alpha * (A @ _floats(x, n)) + (beta * out if beta else 0)
        return 0

    def cublasSaxpy_v2(self, handle, n, alpha, x, incx, y, incy):
        n, alpha, x, y = _value(n), _value(alpha), _value(x), _value(y)
        _floats(y, n)[...] += np.float32(alpha) * _floats(x, n)
        return 0

    def cublasSscal_v2(self, handle, n, alpha, x, incx):
        _floats(_value(x), _value(n))[...] *= np.float32(_value(alpha))
        return 0

    def cublasSdot_v2(self, handle, n, x, incx, y, incy, result):
        n = _value(n)
        result._obj.value = float(np.dot(_floats(_value(x), n), _floats(_value(y), n)))
        return 0

    def cublasSasum_v2(self, handle, n, x, incx, result):
        n = _value(n)
        result._obj.value = float(np.abs(_floats(_value(x), n)).sum())
        return 0


def install(monkeypatch):
    """Make `import pycuda...` and cuBLAS's loader find the stand-ins;
    returns the fake cuBLAS library (its .calls record what was asked)."""
    from sppcaffe.backends.gpu import cuda_device
    package = types.ModuleType("pycuda")
    driver = _driver()
    compiler = types.ModuleType("pycuda.compiler")
    compiler.SourceModule = _SourceModule
    package.driver, package.compiler = driver, compiler
    for name, module in (("pycuda", package), ("pycuda.driver", driver),
                         ("pycuda.compiler", compiler)):
        monkeypatch.setitem(sys.modules, name, module)
    cublas = FakeCublas()
    monkeypatch.setattr(cuda_device.Cublas, "_load", lambda self: cublas)
    return cublas
