"""The GPU backend: mirrored memory, CUDA kernels, cuBLAS.

Layers reach it through three names:

- ``kernel(name)``: a kernel from ``kernels/*.cu``, compiled on first use
  and cached; call it as ``kernel("relu_forward")(count, *args)`` where
  `count` is the length of its grid-stride loop (the launch is sized from
  it) and `args` follow the kernel's C signature (pointers as ints).
- ``blas()``: the current device's matrix routines (row-major, Caffe's
  ``caffe_gpu_gemm`` conventions), see ``Device`` in ``device.py``.
- ``Workspace``: device scratch buffers kept between calls.

Blobs hand out device pointers with ``blob.gpu_data`` (read) and
``blob.mutable_gpu_data`` (write), as Caffe's do.
"""
from .. import current_device


def kernel(name):
    return current_device().kernel(name)


def blas():
    return current_device()


def ones(count):
    """The address of a device vector of at least `count` ones."""
    return current_device().ones(count)


class Workspace:
    """Device scratch buffers by name, kept between calls and reused while
    they are large enough: a smaller request (a shorter batch, fewer
    windows) takes no new memory, since every free of device memory
    synchronises the device."""

    def __init__(self):
        self._buffers = {}

    def get(self, name, nbytes):
        """The address of an uninitialised device buffer of at least `nbytes`."""
        nbytes = max(int(nbytes), 4)
        held = self._buffers.get(name)
        if held is None or held.nbytes < nbytes or held.device is not current_device():
            self._buffers.pop(name, None)          # freed before the new one is taken
            held = self._buffers[name] = current_device().alloc(nbytes)
        return held.ptr

    def floats(self, name, count):
        return self.get(name, 4 * int(count))
