"""Scratch arrays kept from one call to the next.

A fresh large array costs page faults on first touch, about as much again
as the pass that fills it, so layers keep their temporaries here instead.
"""
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
