"""CudaDevice: an NVIDIA GPU through PyCUDA, matrix products through cuBLAS.

PyCUDA compiles the kernel sources with nvcc at first use (its own disk
cache keeps the cubins between processes) and launches them; it has no
BLAS, so ``Cublas`` binds the few cuBLAS routines Caffe uses with ctypes.
Kernels and cuBLAS both run on the legacy default stream, so they are
ordered without explicit synchronization.
"""
import atexit
import ctypes
import ctypes.util
import os
from pathlib import Path

import numpy as np

from .. import GPUUnavailable
from .device import THREADS_PER_BLOCK, Allocation, Device, LaunchError, launch_grid
from .sources import KERNEL_DIR

THREADS = THREADS_PER_BLOCK     # launch shape: device.launch_grid (the host emulation shares it)
_FORMAT = {"ptr": "P", "i32": "i", "u32": "I", "u64": "Q", "f32": "f"}

INSTALL_HINT = ("GPU mode needs PyCUDA built against the CUDA toolkit and an NVIDIA driver: "
                "pip install '.[gpu]' on a machine that has both (README, section 'GPU')")


class CudaDevice(Device):
    def __init__(self, device_id=0):
        super().__init__()
        try:
            import pycuda.driver as cuda
        except ImportError as exc:       # no PyCUDA, or no libcuda.so behind it
            raise GPUUnavailable(f"{INSTALL_HINT}; importing pycuda failed: {exc}") from None
        try:
            cuda.init()
            count = cuda.Device.count()
        except Exception as exc:
            raise GPUUnavailable(f"the NVIDIA driver did not start: {exc}") from None
        if device_id >= count:
            raise GPUUnavailable(f"GPU {device_id} asked for, but this machine has {count} GPU(s)")
        self.cuda = cuda
        self.gpu = cuda.Device(device_id)
        self.name = f"GPU {device_id}: {self.gpu.name()}"
        # The primary context is the one the CUDA runtime (and so cuBLAS) uses.
        self.context = self.gpu.retain_primary_context()
        self.context.push()
        self.cublas = None
        self._open = True
        atexit.register(self._release_at_exit)
        try:
            self.cublas = Cublas()
        except BaseException:
            self.close()
            raise

    def close(self):
        """Release the GPU: destroy the cuBLAS handle, pop this device's
        context and release the primary context it retained.  Idempotent;
        the device is unusable afterwards.  Drop the nets and blobs that used
        it first: their memory is freed in this context."""
        if self._open:
            atexit.unregister(self._release_at_exit)
            self._release(detach=True)

    def _release_at_exit(self):
        # Blobs still alive at exit are freed after the exit hooks, each in
        # its context, so the primary context is kept (the driver ends it with
        # the process); the handle goes and the context is popped.
        if self._open:
            self._release(detach=False)

    def _release(self, detach):
        self._open = False
        self._ones = None               # freed now, while the context lives
        try:
            if self.cublas is not None:
                self.cublas.destroy()
        finally:
            self.cuda.Context.pop()
            if detach:
                self.context.detach()

    def _compile(self, path):
        from pycuda.compiler import SourceModule
        return SourceModule(path.read_text(), no_extern_c=True, include_dirs=[str(KERNEL_DIR)])

    def _launcher(self, module, name, kinds):
        function = module.get_function(name)
        function.prepare("".join(_FORMAT[k] for k in kinds))

        def launch(count, args):
            blocks, threads = launch_grid(count)
            function.prepared_call((blocks, 1), (threads, 1, 1), *args)
        return launch

    # ---- memory ------------------------------------------------------
    def alloc(self, nbytes):
        nbytes = max(int(nbytes), 4)
        handle = self.cuda.mem_alloc(nbytes)
        return Allocation(int(handle), nbytes, self, handle)

    def upload(self, ptr, array):
        self.cuda.memcpy_htod(ptr, np.ascontiguousarray(array))

    def download(self, ptr, array):
        self.cuda.memcpy_dtoh(array, ptr)

    def copy(self, dst, src, nbytes):
        if nbytes:
            self.cuda.memcpy_dtod(dst, src, int(nbytes))

    def memset0(self, ptr, nbytes):
        if nbytes:
            self.cuda.memset_d8(ptr, 0, int(nbytes))

    def synchronize(self):
        self.context.synchronize()

    # ---- BLAS (row-major calls turned into cuBLAS's column-major) -------
    # Empty sizes (an empty batch) are settled here: cuBLAS rejects a leading
    # dimension of 0 (status 7), and where it accepts an empty sum it leaves
    # the output untouched instead of scaling it by beta.  The contract of
    # Device (and HostDevice's NumPy) is a sum over nothing: out = beta out.
    def _scale_output(self, beta, c, count):
        if beta == 0:
            self.memset0(c, 4 * count)
        elif beta != 1:
            self.cublas.sscal(count, beta, c)

    def gemm(self, trans_a, trans_b, m, n, k, alpha, a, b, beta, c):
        if m == 0 or n == 0:
            return
        if k == 0:
            self._scale_output(beta, c, m * n)
            return
        # C^T = op(B)^T op(A)^T: swap the operands instead of transposing.
        lda = m if trans_a else k
        ldb = k if trans_b else n
        self.cublas.sgemm(int(trans_b), int(trans_a), n, m, k, alpha, b, ldb, a, lda, beta, c, n)

    def gemm_strided_batched(self, trans_a, trans_b, m, n, k, alpha, a, stride_a, b, stride_b,
                             beta, c, stride_c, batch):
        if m == 0 or n == 0 or batch == 0:
            return
        if k == 0:
            for i in range(int(batch)):
                self._scale_output(beta, c + 4 * i * stride_c, m * n)
            return
        lda = m if trans_a else k
        ldb = k if trans_b else n
        self.cublas.sgemm_strided_batched(int(trans_b), int(trans_a), n, m, k, alpha, b, ldb, stride_b,
                                          a, lda, stride_a, beta, c, n, stride_c, batch)

    def gemv(self, trans, m, n, alpha, a, x, beta, y):
        rows, summed = (n, m) if trans else (m, n)
        if rows == 0:
            return
        if summed == 0:
            self._scale_output(beta, y, rows)
            return
        # Row-major A (m x n) is column-major A^T: flip the transpose flag.
        self.cublas.sgemv(0 if trans else 1, n, m, alpha, a, n, x, beta, y)

    def axpy(self, n, alpha, x, y):
        self.cublas.saxpy(n, alpha, x, y)

    def scal(self, n, alpha, x):
        self.cublas.sscal(n, alpha, x)

    def dot(self, n, x, y):
        return self.cublas.sdot(n, x, y)

    def asum(self, n, x):
        return self.cublas.sasum(n, x)


def _c_int(value):
    """A cuBLAS int argument; ctypes would wrap one past 32 bits silently
    (2^32 + 3 becomes 3), cuBLAS's 32-bit API cannot take it."""
    if not -2 ** 31 <= value < 2 ** 31:
        raise LaunchError(f"cuBLAS takes 32-bit sizes; got {value} (split the work, e.g. a "
                          f"smaller batch)")
    return ctypes.c_int(value)


class Cublas:
    """The cuBLAS v2 routines the backend needs, bound with ctypes."""
    LIBRARIES = ("libcublas.so", "libcublas.so.13", "libcublas.so.12", "libcublas.so.11")

    def __init__(self):
        self.lib = self._load()
        self.handle = ctypes.c_void_p()
        self._check(self.lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate")
        self._live = True

    def destroy(self):
        """cublasDestroy: frees the handle's resources; later calls get a null
        handle, which cuBLAS refuses (not initialized).  Idempotent."""
        if self._live:
            self._live = False
            handle, self.handle = self.handle, ctypes.c_void_p()
            self._check(self.lib.cublasDestroy_v2(handle), "cublasDestroy")

    def _load(self):
        names = list(self.LIBRARIES)
        found = ctypes.util.find_library("cublas")
        if found:
            names.insert(0, found)
        names += [str(p) for p in self._bundled()]
        for name in names:
            try:
                return ctypes.CDLL(name)
            except OSError:
                continue
        raise GPUUnavailable("cuBLAS (libcublas.so) was not found: install the CUDA toolkit's "
                             "libraries or put their folder on LD_LIBRARY_PATH")

    @staticmethod
    def _bundled():
        """libcublas from the toolkit folder or from NVIDIA's pip wheel
        (nvidia-cublas, which PyTorch installs), neither always on the
        loader's path."""
        folders = []
        for variable in ("CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"):
            if os.environ.get(variable):
                folders.append(Path(os.environ[variable]) / "lib64")
        folders.append(Path("/usr/local/cuda/lib64"))
        try:
            import nvidia.cublas
            folders += [Path(p) / "lib" for p in nvidia.cublas.__path__]
        except ImportError:
            pass
        return [lib for folder in folders for lib in sorted(folder.glob("libcublas.so*"))]

    @staticmethod
    def _check(status, what):
        if status != 0:
            raise RuntimeError(f"{what} failed with cuBLAS status {status}")

    @staticmethod
    def _f(value):
        return ctypes.byref(ctypes.c_float(value))

    def sgemm(self, op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        P, i = ctypes.c_void_p, _c_int
        self._check(self.lib.cublasSgemm_v2(
            self.handle, i(op_a), i(op_b), i(m), i(n), i(k), self._f(alpha), P(a), i(lda), P(b),
            i(ldb), self._f(beta), P(c), i(ldc)), "cublasSgemm")

    def sgemm_strided_batched(self, op_a, op_b, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b,
                              beta, c, ldc, stride_c, batch):
        P, i, ll = ctypes.c_void_p, _c_int, ctypes.c_longlong
        self._check(self.lib.cublasSgemmStridedBatched(
            self.handle, i(op_a), i(op_b), i(m), i(n), i(k), self._f(alpha), P(a), i(lda),
            ll(stride_a), P(b), i(ldb), ll(stride_b), self._f(beta), P(c), i(ldc), ll(stride_c),
            i(batch)), "cublasSgemmStridedBatched")

    def sgemv(self, op, m, n, alpha, a, lda, x, beta, y):
        P, i = ctypes.c_void_p, _c_int
        self._check(self.lib.cublasSgemv_v2(self.handle, i(op), i(m), i(n), self._f(alpha), P(a),
                                            i(lda), P(x), i(1), self._f(beta), P(y), i(1)),
                    "cublasSgemv")

    def saxpy(self, n, alpha, x, y):
        P, i = ctypes.c_void_p, _c_int
        self._check(self.lib.cublasSaxpy_v2(self.handle, i(n), self._f(alpha), P(x), i(1), P(y),
                                            i(1)), "cublasSaxpy")

    def sscal(self, n, alpha, x):
        P, i = ctypes.c_void_p, _c_int
        self._check(self.lib.cublasSscal_v2(self.handle, i(n), self._f(alpha), P(x), i(1)),
                    "cublasSscal")

    def sdot(self, n, x, y):
        P, i = ctypes.c_void_p, _c_int
        result = ctypes.c_float()
        self._check(self.lib.cublasSdot_v2(self.handle, i(n), P(x), i(1), P(y), i(1),
                                           ctypes.byref(result)), "cublasSdot")
        return float(result.value)

    def sasum(self, n, x):
        P, i = ctypes.c_void_p, _c_int
        result = ctypes.c_float()
        self._check(self.lib.cublasSasum_v2(self.handle, i(n), P(x), i(1), ctypes.byref(result)),
                    "cublasSasum")
        return float(result.value)
