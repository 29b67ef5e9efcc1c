"""HostDevice: the CUDA kernels compiled for the CPU, NumPy for BLAS.

It exists so that the GPU code path -- memory mirroring, every kernel,
every launch and its arguments -- runs and is tested on machines without a
GPU.  "Device" memory is separate host memory here, so a missing copy
between host and device shows up as a wrong number just as on a GPU.
Kernels are built once per source with g++ (host_shim.h supplies the CUDA
built-ins) and the shared objects are cached on disk by content hash.
"""
import ctypes
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .. import GPUUnavailable
from .device import Allocation, Device
from .sources import COMMON_HEADER, HOST_SHIM, KERNEL_DIR

CXX_FLAGS = ["-O2", "-std=c++17", "-shared", "-fPIC", "-fno-fast-math", "-x", "c++"]
_CTYPES = {"ptr": ctypes.c_void_p, "i32": ctypes.c_int32, "u32": ctypes.c_uint32,
           "u64": ctypes.c_uint64, "f32": ctypes.c_float}


def cache_dir():
    root = os.environ.get("SPPCAFFE_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sppcaffe", "kernels")
    return Path(root)


def _floats(ptr, count):
    if count == 0:
        return np.zeros(0, np.float32)
    return np.frombuffer((ctypes.c_float * count).from_address(ptr), np.float32)


def _matrix(ptr, rows, cols, trans):
    """op(M) for a packed row-major M stored at `ptr`; op(M) is rows x cols."""
    if trans:
        return _floats(ptr, rows * cols).reshape(cols, rows).T
    return _floats(ptr, rows * cols).reshape(rows, cols)


class HostDevice(Device):
    name = "host (CUDA kernels built for the CPU)"

    def __init__(self, compiler="g++"):
        super().__init__()
        self.compiler = compiler

    def _compile(self, path):
        flags = CXX_FLAGS + ["-include", str(HOST_SHIM), "-I", str(KERNEL_DIR)]
        digest = hashlib.sha256()
        for part in (HOST_SHIM, COMMON_HEADER, path):
            digest.update(Path(part).read_bytes())
        digest.update(" ".join([self.compiler] + flags).encode())
        target = cache_dir() / f"{path.stem}-{digest.hexdigest()[:16]}.so"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
            os.close(fd)
            try:
                result = subprocess.run([self.compiler, *flags, str(path), "-o", tmp],
                                        capture_output=True, text=True)
            except FileNotFoundError:
                os.unlink(tmp)
                raise GPUUnavailable(f"the host build of the CUDA kernels needs a C++ compiler; "
                                     f"'{self.compiler}' was not found") from None
            if result.returncode != 0:
                os.unlink(tmp)
                raise RuntimeError(f"g++ failed on {path.name}:\n{result.stderr}")
            os.replace(tmp, target)     # atomic: a concurrent build never sees half a file
        return ctypes.CDLL(str(target))

    def _launcher(self, module, name, kinds):
        function = getattr(module, name)
        function.argtypes = [_CTYPES[k] for k in kinds]
        function.restype = None

        def launch(count, args):
            function(*args)
        return launch

    # ---- memory ------------------------------------------------------
    def alloc(self, nbytes):
        nbytes = max(int(nbytes), 4)
        buffer = np.empty(nbytes, np.uint8)
        return Allocation(buffer.ctypes.data, nbytes, self, buffer)

    def upload(self, ptr, array):
        array = np.ascontiguousarray(array)
        ctypes.memmove(ptr, array.ctypes.data, array.nbytes)

    def download(self, ptr, array):
        if not array.flags.c_contiguous:
            raise ValueError("download needs a contiguous host array")
        ctypes.memmove(array.ctypes.data, ptr, array.nbytes)

    def copy(self, dst, src, nbytes):
        ctypes.memmove(dst, src, int(nbytes))

    def memset0(self, ptr, nbytes):
        ctypes.memset(ptr, 0, int(nbytes))

    # ---- BLAS ----------------------------------------------------------
    def gemm(self, trans_a, trans_b, m, n, k, alpha, a, b, beta, c):
        self.gemm_strided_batched(trans_a, trans_b, m, n, k, alpha, a, 0, b, 0, beta, c, 0, 1)

    def gemm_strided_batched(self, trans_a, trans_b, m, n, k, alpha, a, stride_a, b, stride_b,
                             beta, c, stride_c, batch):
        for i in range(int(batch)):
            op_a = _matrix(a + 4 * i * stride_a, m, k, trans_a)
            op_b = _matrix(b + 4 * i * stride_b, k, n, trans_b)
            out = _matrix(c + 4 * i * stride_c, m, n, False)
            product = op_a @ op_b
            if beta == 0:
                np.multiply(product, np.float32(alpha), out=out)
            else:
                out *= np.float32(beta)
                product *= np.float32(alpha)
                out += product

    def gemv(self, trans, m, n, alpha, a, x, beta, y):
        matrix = _matrix(a, m, n, False)
        if trans:
            matrix, m, n = matrix.T, n, m
        out = _floats(y, m)
        product = matrix @ _floats(x, n)
        if beta == 0:
            np.multiply(product, np.float32(alpha), out=out)
        else:
            out *= np.float32(beta)
            out += np.float32(alpha) * product

    def axpy(self, n, alpha, x, y):
        _floats(y, n)[...] += np.float32(alpha) * _floats(x, n)

    def scal(self, n, alpha, x):
        _floats(x, n)[...] *= np.float32(alpha)

    def dot(self, n, x, y):
        return float(np.dot(_floats(x, n), _floats(y, n)))

    def asum(self, n, x):
        return float(np.abs(_floats(x, n)).sum(dtype=np.float32))
