"""What every GPU device offers the layers: memory, kernels, BLAS.

Two devices implement it: ``CudaDevice`` (PyCUDA and cuBLAS on an NVIDIA
GPU) and ``HostDevice`` (the same kernel sources built with g++, NumPy for
the BLAS calls), so everything above this interface is the same code on
both.  Addresses are plain ints; offsets are the caller's
(``ptr + 4 * elements`` for float32).  Matrices are row-major and packed,
with Caffe's ``caffe_gpu_gemm``/``caffe_gpu_gemv`` argument order.
"""
from pathlib import Path

import numpy as np

from .sources import find_kernel, parse_signatures

# How each argument kind is turned into what the launcher packs.
_CONVERT = {"ptr": int, "i32": int, "u32": int, "u64": int, "f32": float}
# The integer kinds' ranges: ctypes would wrap a value outside silently
# (2^32 + 3 becomes 3) and PyCUDA's packing refuses it with no kernel named.
_RANGES = {"i32": (-2 ** 31, 2 ** 31 - 1), "u32": (0, 2 ** 32 - 1), "u64": (0, 2 ** 64 - 1)}
# Kernels index with 32-bit ints (their counts are `int`), so one launch
# covers fewer than 2^31 iterations; the loop variable itself is 64-bit.
MAX_COUNT = 2 ** 31 - 1

# The launch shape of every grid-stride kernel on a GPU (and of the host
# build's parallel emulation): 256 threads a block, at most 65535 blocks.
THREADS_PER_BLOCK = 256
MAX_BLOCKS = 65535


def launch_grid(count):
    """(blocks, threads per block) for a grid-stride loop of `count`."""
    return min(-(-count // THREADS_PER_BLOCK), MAX_BLOCKS), THREADS_PER_BLOCK


class LaunchError(ValueError):
    """A launch the kernels cannot take (a count or argument outside the
    32-bit range they index with)."""


class Allocation:
    """Device memory that lives as long as this object."""
    __slots__ = ("ptr", "nbytes", "device", "_handle")

    def __init__(self, ptr, nbytes, device, handle):
        self.ptr, self.nbytes, self.device, self._handle = ptr, nbytes, device, handle


class Kernel:
    """A compiled kernel: ``kernel(count, *args)`` launches it over a
    grid-stride loop of `count` iterations."""
    __slots__ = ("name", "kinds", "_launch", "_convert", "_ranged")

    def __init__(self, name, kinds, launch):
        self.name, self.kinds, self._launch = name, kinds, launch
        self._convert = [_CONVERT[k] for k in kinds]
        # (position, kind, (low, high)) of the integer arguments, checked per launch.
        self._ranged = [(i, k, _RANGES[k]) for i, k in enumerate(kinds) if k in _RANGES]

    def __call__(self, count, *args):
        if len(args) != len(self.kinds):
            raise TypeError(f"kernel '{self.name}' takes {len(self.kinds)} arguments "
                            f"({', '.join(self.kinds)}), got {len(args)}")
        count = int(count)
        if count > MAX_COUNT:
            raise LaunchError(f"kernel '{self.name}': {count} elements in one launch; the "
                              f"kernels index with 32-bit ints, so at most 2^31 - 1 = {MAX_COUNT} "
                              f"(split the work, e.g. a smaller batch)")
        values = [c(a) for c, a in zip(self._convert, args)]
        for position, kind, (low, high) in self._ranged:
            if not low <= values[position] <= high:
                raise LaunchError(f"kernel '{self.name}': argument {position + 1} ({kind}) is "
                                  f"{values[position]}, outside [{low}, {high}]")
        if count > 0:
            self._launch(count, values)


class Device:
    """Base of the two devices: kernel lookup and compile-once caching."""
    name = "device"

    def __init__(self):
        self._modules = {}      # kernel file -> compiled module
        self._kernels = {}      # kernel name -> Kernel
        self._ones = None

    def ones(self, count):
        """The address of at least `count` ones, kept on the device and
        grown on demand: sums over rows (bias gradients, losses) are
        gemv's against it."""
        held = self._ones
        if held is None or held.nbytes < 4 * count:
            held = self._ones = self.alloc(4 * max(int(count), 1024))
            self.upload(held.ptr, np.ones(held.nbytes // 4, np.float32))
        return held.ptr

    def kernel(self, name):
        kernel = self._kernels.get(name)
        if kernel is None:
            path, kinds = find_kernel(name)
            module = self._modules.get(path)
            if module is None:
                module = self._modules[path] = self._compile(path)
            kernel = self._kernels[name] = Kernel(name, kinds, self._launcher(module, name, kinds))
        return kernel

    def kernels_in(self, path):
        """{name: Kernel} for every kernel of one .cu file anywhere (``kernel``
        looks in kernels/ only), compiled for this device."""
        module = self._compile(Path(path))
        return {name: Kernel(name, kinds, self._launcher(module, name, kinds))
                for name, kinds in parse_signatures(path).items()}

    # Each device provides these.
    def _compile(self, path):
        raise NotImplementedError

    def _launcher(self, module, name, kinds):
        raise NotImplementedError

    def alloc(self, nbytes):
        raise NotImplementedError

    def upload(self, ptr, array):
        raise NotImplementedError

    def download(self, ptr, array):
        raise NotImplementedError

    def copy(self, dst, src, nbytes):
        raise NotImplementedError

    def memset0(self, ptr, nbytes):
        raise NotImplementedError

    def synchronize(self):
        pass

    # BLAS (float32).
    def gemm(self, trans_a, trans_b, m, n, k, alpha, a, b, beta, c):
        """C (m x n) = alpha op(A) op(B) + beta C; op(A) is m x k."""
        raise NotImplementedError

    def gemm_strided_batched(self, trans_a, trans_b, m, n, k, alpha, a, stride_a, b, stride_b,
                             beta, c, stride_c, batch):
        """`batch` gemms, operand i at ptr + 4 * i * stride (strides in elements)."""
        raise NotImplementedError

    def gemv(self, trans, m, n, alpha, a, x, beta, y):
        """y = alpha op(A) x + beta y, A is m x n."""
        raise NotImplementedError

    def axpy(self, n, alpha, x, y):
        raise NotImplementedError

    def scal(self, n, alpha, x):
        raise NotImplementedError

    def dot(self, n, x, y):
        raise NotImplementedError

    def asum(self, n, x):
        raise NotImplementedError
