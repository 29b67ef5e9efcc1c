"""What a data layer's reader produces, and the interface every reader
(Data, ImageData, HDF5Data, WindowData) implements.

A reader prepares whole batches, synchronously and deterministically: all
its random draws come from its own generator, seeded once from
sppcaffe.random when the layer is set up.  Running it on a prefetch
thread (prefetch.py) therefore yields the same batches as calling it
directly, and `set_random_seed` makes a run repeatable.
"""
import collections

import numpy as np

from ..layer import LayerError
from ..random import get_rng

# arrays: one per top, in top order.  epoch: the pass over the source the
# batch's first item belongs to.  size: that epoch's multi-size side (None
# without multi-size).
Batch = collections.namedtuple("Batch", "arrays epoch size")


def reader_rng():
    """A generator of the reader's own, seeded from the framework's."""
    return np.random.default_rng(int(get_rng().integers(2 ** 63)))


class BatchReader:
    """Base of the readers: `top_shapes()` (known at setup, from the first
    item as Caffe's DataLayerSetUp), `next_batch()`, `close()`."""
    type = "?"
    transformer = None

    def __init__(self, layer_name, num_top):
        self.layer_name = layer_name
        self.num_top = num_top
        self.where = f"layer '{layer_name}' ({self.type})"
        self.rng = reader_rng()

    def error(self, message):
        return LayerError(f"{self.where}: {message}")

    def top_shapes(self):
        raise NotImplementedError

    def next_batch(self):
        raise NotImplementedError

    def size(self, epoch):
        """The multi-size side of `epoch`'s batches (None without multi-size)."""
        return self.transformer.size(epoch) if self.transformer is not None else None

    def close(self):
        pass
