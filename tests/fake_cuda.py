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

    def detach(self):
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
# Argument checks as cuBLAS makes them (the reference BLAS's, whose rules its
# documentation lists under CUBLAS_STATUS_INVALID_VALUE), with its status
# codes; then the reference's quick returns, which skip the work -- and the
# beta scaling -- for an empty product.
SUCCESS, NOT_INITIALIZED, INVALID_VALUE = 0, 1, 7
_OPERATIONS = (0, 1, 2)         # CUBLAS_OP_N, CUBLAS_OP_T, CUBLAS_OP_C


def _column_major(ptr, rows, cols, ld):
    """The rows x cols column-major matrix with leading dimension ld: element
    (i, j) at ptr[i + j * ld]; reads nothing past its last element."""
    if rows == 0 or cols == 0:
        return np.zeros((rows, cols), np.float32)
    span = (cols - 1) * ld + rows
    return np.lib.stride_tricks.as_strided(_floats(ptr, span), (rows, cols), (4, 4 * ld))


def _value(x):
    """What a ctypes argument (a value or a byref) holds; None stays None
    (a NULL handle)."""
    if x is None:
        return None
    return x.value if hasattr(x, "value") else x._obj.value


def gemm_status(op_a, op_b, m, n, k, lda, ldb, ldc, batch=1):
    """cublasSgemm's (and cublasSgemmStridedBatched's) argument rules:
    op(A) is m x k and op(B) k x n, so A is stored with m rows untransposed,
    k rows transposed."""
    if op_a not in _OPERATIONS or op_b not in _OPERATIONS or min(m, n, k, batch) < 0:
        return INVALID_VALUE
    if lda < max(1, k if op_a else m) or ldb < max(1, n if op_b else k) or ldc < max(1, m):
        return INVALID_VALUE
    return SUCCESS


def gemv_status(op, m, n, lda, incx, incy):
    """cublasSgemv's: A is m x n as stored, whatever op."""
    if op not in _OPERATIONS or min(m, n) < 0 or lda < max(1, m) or incx == 0 or incy == 0:
        return INVALID_VALUE
    return SUCCESS


def _unit_strides(*increments):
    # The backend always passes 1; other strides are legal cuBLAS but not
    # written here, so they fail loudly instead of computing something else.
    if any(inc != 1 for inc in increments):
        raise NotImplementedError(f"the cuBLAS stand-in only implements unit strides, "
                                  f"got {increments}")


class FakeCublas:
    def __init__(self):
        self.calls = []
        self.live = set()           # handles created and not destroyed
        self._next_handle = 0x1000

    def cublasCreate_v2(self, handle):
        handle._obj.value = self._next_handle
        self.live.add(self._next_handle)
        self._next_handle += 1
        return SUCCESS

    def cublasDestroy_v2(self, handle):
        value = _value(handle)
        if value not in self.live:
            return NOT_INITIALIZED
        self.live.discard(value)
        self.calls.append(("destroy", [value]))
        return SUCCESS

    def _alive(self, handle):
        return _value(handle) in self.live

    def _gemm(self, op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        if m == 0 or n == 0 or ((alpha == 0 or k == 0) and beta == 1):
            return
        A = _column_major(a, k, m, lda).T if op_a else _column_major(a, m, k, lda)
        B = _column_major(b, n, k, ldb).T if op_b else _column_major(b, k, n, ldb)
        C = _column_major(c, m, n, ldc)
        C[...] = alpha * (A @ B) + (beta * C if beta else 0)

    def cublasSgemm_v2(self, handle, op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        args = [_value(v) for v in (op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)]
        self.calls.append(("gemm", args))
        if not self._alive(handle):
            return NOT_INITIALIZED
        op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc = args
        status = gemm_status(op_a, op_b, m, n, k, lda, ldb, ldc)
        if status == SUCCESS:
            self._gemm(*args)
        return status

    def cublasSgemmStridedBatched(self, handle, op_a, op_b, m, n, k, alpha, a, lda, stride_a, b,
                                  ldb, stride_b, beta, c, ldc, stride_c, batch):
        v = [_value(x) for x in (op_a, op_b, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b,
                                 beta, c, ldc, stride_c, batch)]
        op_a, op_b, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc, sc, batch = v
        self.calls.append(("gemm_batched", v))
        if not self._alive(handle):
            return NOT_INITIALIZED
        status = gemm_status(op_a, op_b, m, n, k, lda, ldb, ldc, batch)
        if status != SUCCESS:
            return status
        for i in range(batch):
            self._gemm(op_a, op_b, m, n, k, alpha, a + 4 * i * sa, lda, b + 4 * i * sb, ldb,
                       beta, c + 4 * i * sc, ldc)
        return SUCCESS

    def cublasSgemv_v2(self, handle, op, m, n, alpha, a, lda, x, incx, beta, y, incy):
        args = [_value(v) for v in (op, m, n, alpha, a, lda, x, incx, beta, y, incy)]
        self.calls.append(("gemv", args))
        if not self._alive(handle):
            return NOT_INITIALIZED
        op, m, n, alpha, a, lda, x, incx, beta, y, incy = args
        status = gemv_status(op, m, n, lda, incx, incy)
        if status != SUCCESS or m == 0 or n == 0 or (alpha == 0 and beta == 1):
            return status
        _unit_strides(incx, incy)
        A = _column_major(a, m, n, lda)
        if op:
            A, m, n = A.T, n, m
        out = _floats(y, m)
        out[...] = alpha * (A @ _floats(x, n)) + (beta * out if beta else 0)
        return SUCCESS

    def cublasSaxpy_v2(self, handle, n, alpha, x, incx, y, incy):
        if not self._alive(handle):
            return NOT_INITIALIZED
        n, alpha, x, incx, y, incy = (_value(v) for v in (n, alpha, x, incx, y, incy))
        if n <= 0 or alpha == 0:
            return SUCCESS
        _unit_strides(incx, incy)
        _floats(y, n)[...] += np.float32(alpha) * _floats(x, n)
        return SUCCESS

    def cublasSscal_v2(self, handle, n, alpha, x, incx):
        if not self._alive(handle):
            return NOT_INITIALIZED
        n, alpha, x, incx = (_value(v) for v in (n, alpha, x, incx))
        if n <= 0 or incx <= 0:
            return SUCCESS
        _unit_strides(incx)
        _floats(x, n)[...] *= np.float32(alpha)
        return SUCCESS

    def cublasSdot_v2(self, handle, n, x, incx, y, incy, result):
        if not self._alive(handle):
            return NOT_INITIALIZED
        n, x, incx, y, incy = (_value(v) for v in (n, x, incx, y, incy))
        result._obj.value = 0.0
        if n > 0:
            _unit_strides(incx, incy)
            result._obj.value = float(np.dot(_floats(x, n), _floats(y, n)))
        return SUCCESS

    def cublasSasum_v2(self, handle, n, x, incx, result):
        if not self._alive(handle):
            return NOT_INITIALIZED
        n, x, incx = (_value(v) for v in (n, x, incx))
        result._obj.value = 0.0
        if n > 0 and incx > 0:
            _unit_strides(incx)
            result._obj.value = float(np.abs(_floats(x, n)).sum())
        return SUCCESS


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
