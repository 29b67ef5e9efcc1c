"""sppcaffe: Caffe-compatible nets and SPP-net in Python.

The public names follow pycaffe: ``sppcaffe.Net(prototxt, sppcaffe.TEST,
weights=...)``, ``net.blobs``, ``net.params``, ``net.forward()``.
"""
from . import io, layers  # noqa: F401  (importing layers fills the registry)
from .blob import Blob
from .layer import LAYER_TYPES, Layer, LayerError, register
from .net import TEST, TRAIN, Net
from .random import set_random_seed

__all__ = ["Blob", "Layer", "LayerError", "LAYER_TYPES", "Net", "TEST", "TRAIN", "io",
           "register", "set_random_seed", "set_mode_cpu"]


def set_mode_cpu():
    """Run on the CPU (NumPy backend), the default."""
