"""Blob: an n-d float32 array with its gradient, as Caffe's Blob.

`data` and `diff` are NumPy arrays that Python code may read and write in
place (``blob.data[...] = x``), exactly as pycaffe exposes them.  Behind
them is a SyncedMemory each (backends/memory.py): in GPU mode layers use
``gpu_data``/``mutable_gpu_data`` (device addresses) and the host array is
brought up to date only when `data` is read.  Blobs that share memory
(Split tops, Flatten views, shared params) share the SyncedMemory itself.
"""
import numpy as np

from .backends import current_device
from .backends.memory import SyncedMemory

DTYPE = np.float32


def _count(shape):
    count = 1
    for s in shape:
        count *= s
    return count


class Blob:
    __slots__ = ("name", "_shape", "_data", "_diff")

    def __init__(self, shape=(), name=""):
        self.name = name
        self._shape = self._checked(shape)
        count = _count(self._shape)
        self._data = SyncedMemory(count)
        self._diff = SyncedMemory(count)

    def _checked(self, shape):
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"blob '{self.name}': negative dimension in shape {shape}")
        return shape

    # ---- host side (pycaffe's view) --------------------------------------
    @property
    def data(self):
        return self._data.host_view(self._shape)

    @data.setter
    def data(self, value):
        # `blob.data += x` ends in this assignment; any other value is
        # copied in, never rebinding the memory other blobs may share.
        view = self.data
        if value is not view:
            view[...] = value

    @property
    def diff(self):
        return self._diff.host_view(self._shape)

    @diff.setter
    def diff(self, value):
        view = self.diff
        if value is not view:
            view[...] = value

    @property
    def cpu_data(self):
        """`data` for reading only (Caffe's const cpu_data): in GPU mode the
        device copy stays current, so writing to this array is lost."""
        return self._data.host_view(self._shape, write=False)

    # ---- device side (Caffe's gpu_data & co.) ----------------------------
    @property
    def gpu_data(self):
        return self._data.device_ptr(current_device())

    @property
    def mutable_gpu_data(self):
        return self._data.mutable_device_ptr(current_device())

    @property
    def gpu_diff(self):
        return self._diff.device_ptr(current_device())

    @property
    def mutable_gpu_diff(self):
        return self._diff.mutable_device_ptr(current_device())

    # ---- shape -----------------------------------------------------------
    @property
    def shape(self):
        return self._shape

    @property
    def count(self):
        return self._data.count

    @property
    def ndim(self):
        return len(self._shape)

    @property
    def num(self):
        return self._shape[0] if len(self._shape) > 0 else 1

    @property
    def channels(self):
        return self._shape[1] if len(self._shape) > 1 else 1

    @property
    def height(self):
        return self._shape[2] if len(self._shape) > 2 else 1

    @property
    def width(self):
        return self._shape[3] if len(self._shape) > 3 else 1

    def reshape(self, *shape):
        """Give the blob a new shape.  The memory is kept when the count
        holds, so Python references stay valid across a forward pass at a
        fixed input size (pycaffe's behaviour); otherwise it is new and
        zero."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        if shape == self._shape:        # every layer reshapes its tops every pass
            return
        shape = self._checked(shape)
        if shape == self._shape:
            return
        count = _count(shape)
        if count != self._data.count:
            self._data = SyncedMemory(count)
            self._diff = SyncedMemory(count)
        self._shape = shape

    def reshape_like(self, other):
        self.reshape(other.shape)

    # ---- sharing (Caffe's ShareData / ShareDiff) ---------------------------
    def _check_share(self, other, shape, what):
        if _count(shape) != other.count:
            raise ValueError(f"blob '{self.name}' cannot share the {what} of '{other.name}': "
                             f"{other.count} values cannot take shape {tuple(shape)}")

    def share_data(self, other):
        """Use `other`'s data memory (same count) from now on."""
        self._check_share(other, self._shape, "data")
        self._data = other._data

    def share_diff(self, other):
        self._check_share(other, self._shape, "diff")
        self._diff = other._diff

    def view_of(self, other, shape):
        """Become `other`'s data and diff seen with another shape (Flatten,
        Reshape, params shared with a different shape)."""
        shape = self._checked(shape)
        self._check_share(other, shape, "data")
        self._shape = shape
        self._data, self._diff = other._data, other._diff

    def __repr__(self):
        return f"Blob({self.name!r}, shape={self.shape})"
