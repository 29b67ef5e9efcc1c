"""HostDevice: the CUDA kernels compiled for the CPU, NumPy for BLAS.

It exists so that the GPU code path -- memory mirroring, every kernel,
every launch and its arguments -- runs and is tested on machines without a
GPU.  "Device" memory is separate host memory here, so a missing copy
between host and device shows up as a wrong number just as on a GPU.
Kernels are built once per source with g++ (host_shim.h supplies the CUDA
built-ins) and the shared objects are cached on disk by content hash.

By default one thread walks every index of a launch in order.  A GPU
promises no order, so ``HostDevice(order=...)`` runs the emulated build
instead: "reversed" and "shuffled" (seeded, a new shuffle every launch)
walk the indices in that order, "parallel" runs CUDA's launch shape of
simulated threads on OpenMP workers with real atomics.  A kernel whose
results differ between the orders would differ between GPU runs.  The
environment's SPPCAFFE_HOST_ORDER picks the order of every HostDevice
made without one (e.g. ``SPPCAFFE_HOST_ORDER=parallel pytest tests``).
"""
import ctypes
import os
from pathlib import Path

import numpy as np

from .. import GPUUnavailable, shared_objects
from .device import Allocation, Device, launch_grid
from .sources import HOST_SHIM, KERNEL_DIR, parse_signatures

CXX_FLAGS = ["-O2", "-std=c++17", "-shared", "-fPIC", "-fno-fast-math", "-x", "c++"]
EMULATION_FLAGS = ["-fopenmp", "-DSPPCAFFE_EMULATE"]
_CTYPES = {"ptr": ctypes.c_void_p, "i32": ctypes.c_int32, "u32": ctypes.c_uint32,
           "u64": ctypes.c_uint64, "f32": ctypes.c_float}

# How a launch's indices are walked; the first is the plain build's.
ORDERS = ("natural", "reversed", "shuffled", "parallel")
_ORDER_CODES = {"reversed": 1, "shuffled": 2, "parallel": 0}     # host_shim.h's enum


class _Launch(ctypes.Structure):
    """host_shim.h's sppcaffe_launch."""
    _fields_ = [("blocks", ctypes.c_longlong), ("threads_per_block", ctypes.c_longlong),
                ("seed", ctypes.c_ulonglong), ("order", ctypes.c_int), ("parallel", ctypes.c_int),
                ("workers", ctypes.c_int)]


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
    """order: one of ORDERS, by default SPPCAFFE_HOST_ORDER's, else
    "natural"; seed: the shuffles' (reproducible per device); workers:
    OpenMP threads of the parallel order (more than the cores interleave the
    simulated threads more)."""

    def __init__(self, compiler="g++", order=None, seed=0, workers=4):
        super().__init__()
        if order is None:
            order = os.environ.get("SPPCAFFE_HOST_ORDER", "").strip().lower() or "natural"
            if order not in ORDERS:
                raise GPUUnavailable(f"SPPCAFFE_HOST_ORDER={order!r}: expected one of "
                                     f"{', '.join(ORDERS)}")
        if order not in ORDERS:
            raise ValueError(f"HostDevice order {order!r}: expected one of {', '.join(ORDERS)}")
        self.compiler, self.order = compiler, order
        self.seed, self.workers = int(seed), int(workers)
        self.emulated = order != "natural"
        self.launches = 0
        suffix = "" if order == "natural" else f", {order} order"
        self.name = f"host (CUDA kernels built for the CPU{suffix})"
        if self.emulated:
            # Idle OpenMP workers sleep instead of spinning on the shared cores
            # (read when libgomp loads, so before the first emulated build).
            os.environ.setdefault("OMP_WAIT_POLICY", "passive")

    def _compile(self, path):
        path = Path(path)
        flags = CXX_FLAGS + ["-include", str(HOST_SHIM), "-I", str(KERNEL_DIR)]
        source = None           # the plain build compiles the file itself
        if self.emulated:
            flags += EMULATION_FLAGS
            exports = "".join(f"SPPCAFFE_EXPORT_LAUNCHER({name})\n"
                              for name in parse_signatures(path))
            source = f'#include "{path.resolve()}"\n{exports}'
        # The exports, not the path, key the emulated build: copies share it.
        # Every header of the kernel folder (labels.cuh, ...), not only the
        # ones this file includes: a stale build must never be reused.
        headers = sorted(KERNEL_DIR.glob("*.cuh")) + sorted(KERNEL_DIR.glob("*.h"))
        try:
            return shared_objects.load(self.compiler, flags, path, headers, source,
                                       key=None if source is None else exports)
        except shared_objects.CompilerMissing:
            raise GPUUnavailable(f"the host build of the CUDA kernels needs a C++ compiler; "
                                 f"'{self.compiler}' was not found") from None

    def _launcher(self, module, name, kinds):
        argtypes = [_CTYPES[k] for k in kinds]
        if not self.emulated:
            function = getattr(module, name)
            function.argtypes = argtypes
            function.restype = None

            def launch(count, args):
                function(*args)
            return launch

        address = ctypes.c_void_p.in_dll(module, f"sppcaffe_launch_{name}").value
        function = ctypes.CFUNCTYPE(None, ctypes.POINTER(_Launch), *argtypes)(address)

        def launch(count, args):
            function(ctypes.byref(self._launch_shape(count)), *args)
        return launch

    def _launch_shape(self, count):
        """One simulated thread walking the whole loop in the device's
        order, or CUDA's grid of threads on OpenMP workers."""
        self.launches += 1
        parallel = self.order == "parallel"
        blocks, threads = launch_grid(count) if parallel else (1, 1)
        seed = (self.seed * 1_000_003 + self.launches) % 2 ** 64
        return _Launch(blocks, threads, seed, _ORDER_CODES[self.order], int(parallel),
                       self.workers)

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
