"""Scratch arrays kept from one call to the next.

A fresh large array costs page faults on first touch, about as much again
as the pass that fills it, so layers keep their temporaries here instead.
"""
import threading

import numpy as np


class Workspace:
    def __init__(self):
        self._arrays = {}

    def get(self, name, shape, dtype=np.float32):
        """An uninitialised array of `shape`, reused while the shape holds."""
        shape = tuple(shape)
        array = self._arrays.get(name)
        if array is None or array.shape != shape or array.dtype != dtype:
            array = self._arrays[name] = np.empty(shape, dtype)
        return array

    def like(self, array, name="", dtype=None):
        return self.get(name, array.shape, dtype or array.dtype)


_thread_arrays = threading.local()


def thread_scratch(name, shape, dtype=np.float32):
    """An uninitialised array of `shape`, one per thread and name, shared by
    every caller (so by all layers of a net): for temporaries that do not
    outlive the call, sized by their largest use."""
    arrays = getattr(_thread_arrays, "arrays", None)
    if arrays is None:
        arrays = _thread_arrays.arrays = {}
    size = int(np.prod(shape))
    array = arrays.get((name, np.dtype(dtype)))
    if array is None or array.size < size:
        array = arrays[name, np.dtype(dtype)] = np.empty(size, dtype)
    return array[:size].reshape(shape)
