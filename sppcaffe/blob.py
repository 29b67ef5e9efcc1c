"""Blob: an n-d float32 array with its gradient, as Caffe's Blob.

`data` and `diff` are plain NumPy arrays that Python code may read and
write in place (``blob.data[...] = x``), exactly as pycaffe exposes them.
"""
import numpy as np

DTYPE = np.float32


class Blob:
    __slots__ = ("data", "diff", "name")

    def __init__(self, shape=(), name=""):
        self.name = name
        shape = tuple(int(s) for s in shape)
        # np.zeros, not zeros_like: untouched pages (a deploy net's diffs) cost nothing.
        self.data = np.zeros(shape, DTYPE)
        self.diff = np.zeros(shape, DTYPE)

    @property
    def shape(self):
        return self.data.shape

    @property
    def count(self):
        return self.data.size

    @property
    def num(self):
        return self.shape[0] if self.data.ndim > 0 else 1

    @property
    def channels(self):
        return self.shape[1] if self.data.ndim > 1 else 1

    @property
    def height(self):
        return self.shape[2] if self.data.ndim > 2 else 1

    @property
    def width(self):
        return self.shape[3] if self.data.ndim > 3 else 1

    def reshape(self, *shape):
        """Give the blob a new shape.  The arrays are reallocated only when
        the shape changes, so Python references stay valid across a
        forward pass at a fixed input size (pycaffe's behaviour)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"blob '{self.name}': negative dimension in shape {shape}")
        if shape == self.data.shape:
            return
        if int(np.prod(shape)) == self.data.size:
            self.data = self.data.reshape(shape)
            self.diff = self.diff.reshape(shape)
        else:
            self.data = np.zeros(shape, DTYPE)
            self.diff = np.zeros(shape, DTYPE)

    def reshape_like(self, other):
        self.reshape(other.shape)

    def view_of(self, other, shape):
        """Make this blob a reshaped view of `other`'s data and diff
        (Caffe's ShareData + ShareDiff, used by Flatten and Reshape)."""
        self.data = other.data.reshape(shape)
        self.diff = other.diff.reshape(shape)

    def __repr__(self):
        return f"Blob({self.name!r}, shape={self.shape})"
