"""Layers that bring data into a net: Input (fed from Python), DummyData,
MemoryData, and the database/file readers (Data, ImageData, HDF5Data,
WindowData) whose reading lives in sppcaffe.data."""
import logging
import weakref

import numpy as np

from ..data.batch import ReaderStateMismatch, json_ready
from ..data.db_batches import DBBatchReader
from ..data.hdf5_batches import HDF5BatchReader
from ..data.image_list import ImageListBatchReader
from ..data.prefetch import Prefetcher, SynchronousBatches
from ..data.window_file import WindowBatchReader
from ..fillers import fill
from ..layer import Layer, register
from ..parallel.sharding import shard_reader
from ..proto import caffe_pb2

_log = logging.getLogger(__name__)


@register("Input")
class InputLayer(Layer):
    """Tops of fixed initial shape that Python code fills; the net lists
    them in `net.inputs`."""
    exact_num_bottom = 0
    min_num_top = 1
    is_data = True

    def layer_setup(self, bottom, top):
        shapes = self.param.input_param.shape
        if len(shapes) not in (0, 1, len(top)):
            raise self.error(f"input_param needs 0, 1 or {len(top)} shapes, got {len(shapes)}")
        for i, t in enumerate(top):
            if len(shapes):
                t.reshape([int(d) for d in shapes[i if len(shapes) > 1 else 0].dim])

    def reshape(self, bottom, top):
        pass    # Inputs keep whatever shape the user gave them.

    def forward(self, bottom, top):
        pass


@register("DummyData")
class DummyDataLayer(Layer):
    """Tops filled by fillers: once if every filler is constant, else at
    every forward (as Caffe's refill rule)."""
    exact_num_bottom = 0
    min_num_top = 1
    is_data = True

    def layer_setup(self, bottom, top):
        p = self.param.dummy_data_param
        legacy = [list(getattr(p, f)) for f in ("num", "channels", "height", "width")]
        if len(p.shape):
            if any(legacy):
                raise self.error("give either shape or num/channels/height/width, not both")
            shapes = [tuple(int(d) for d in s.dim) for s in p.shape]
        else:
            shapes = list(zip(*legacy))
        if len(shapes) not in (1, len(top)):
            raise self.error(f"needs 1 or {len(top)} shapes, got {len(shapes)}")
        if len(p.data_filler) not in (0, 1, len(top)):
            raise self.error(f"needs 0, 1 or {len(top)} data_filler, got {len(p.data_filler)}")
        fillers = list(p.data_filler) or [caffe_pb2.FillerParameter(type="constant", value=0)]
        self.fillers = [fillers[i if len(fillers) > 1 else 0] for i in range(len(top))]
        self.refill = [f.type != "constant" for f in self.fillers]
        for i, t in enumerate(top):
            t.reshape(shapes[i if len(shapes) > 1 else 0])
            fill(t, self.fillers[i])

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        for t, f, again in zip(top, self.fillers, self.refill):
            if again:
                fill(t, f)


@register("MemoryData")
class MemoryDataLayer(Layer):
    """Batches taken in turn from arrays given with `set_input_arrays`
    (pycaffe's Net.set_input_arrays)."""
    exact_num_bottom = 0
    exact_num_top = 2
    is_data = True

    def layer_setup(self, bottom, top):
        p = self.param.memory_data_param
        self.batch = p.batch_size
        if self.batch <= 0:
            raise self.error("memory_data_param.batch_size must be positive")
        top[0].reshape(self.batch, p.channels, p.height, p.width)
        top[1].reshape(self.batch)
        self.data = self.labels = None
        self.pos = 0

    def set_input_arrays(self, data, labels):
        data = np.asarray(data, np.float32)
        labels = np.asarray(labels, np.float32).reshape(len(labels))
        if data.shape[0] != labels.shape[0] or data.shape[0] % self.batch:
            raise self.error(f"needs as many labels as data items, a multiple of the batch size "
                             f"{self.batch}; got {data.shape[0]} items, {labels.shape[0]} labels")
        self.data, self.labels, self.pos = data, labels, 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        if self.data is None:
            raise self.error("no data: call net.set_input_arrays(data, labels) first")
        if self.data.shape[1:] != top[0].shape[1:]:
            raise self.error(f"data items have shape {self.data.shape[1:]}, the layer "
                             f"expects {top[0].shape[1:]}")
        batch = slice(self.pos, self.pos + self.batch)
        top[0].data[...] = self.data[batch]
        top[1].data[...] = self.labels[batch]
        self.pos = (self.pos + self.batch) % len(self.data)


class ExternalDataLayer(Layer):
    """Base of the layers reading databases and files.

    Normally setup builds the layer's reader (sppcaffe.data), shapes the
    tops from its first item as Caffe's DataLayerSetUp, and starts a
    prefetch thread keeping `data_param.prefetch` batches ready (default 4;
    `prefetch: 0` prepares each batch in forward instead).  Forward copies
    the next batch into the tops, reshaping them when its shape changed
    (batch_size 1 images of varying sizes, multi-size epochs).

    Batches are the same with and without prefetching and repeatable:
    the reader draws from its own generator, seeded from sppcaffe.random
    when the layer is set up, so `set_random_seed(s)` before building the
    net fixes every crop, mirror and shuffle.

    When the net is given the shapes of the layer's tops
    (`Net(..., data_shapes={...})`), the source is not opened: the tops
    keep those shapes and Python fills them (`fed_from_python` is True).

    `epoch` and `current_size` describe the last batch delivered: its pass
    over the source and its multi-size side (None without multi-size).
    `close()` stops the thread and closes the source; it also runs when
    the layer is garbage collected and at interpreter exit.

    `data_state()` is where the layer stands for a snapshot: the position
    of the batch the next forward takes (not what the prefetch thread has
    read ahead) with the reader's generator, order and epoch;
    `restore_data_state(state)` goes back there (see
    solvers/resume_state.py).
    """
    exact_num_bottom = 0
    min_num_top = 1
    is_data = True
    reader_class = None

    def make_reader(self, top):
        return self.reader_class(self.param, self.phase, len(top))

    def layer_setup(self, bottom, top):
        self.epoch, self.current_size = 0, None
        self._batches = None
        self._logged_epoch = None
        shapes = getattr(self, "net_data_shapes", None) or {}
        given = [t.name for t in top if t.name in shapes]
        self.fed_from_python = bool(given)
        if given:
            missing = [t.name for t in top if t.name not in shapes]
            if missing:
                raise self.error(f"data_shapes gives tops {given} but not {missing}; give the "
                                 "shapes of all the layer's tops or of none")
            for t in top:
                t.reshape(shapes[t.name])
            return
        reader = self.make_reader(top)
        try:
            # Under MPI, this rank's share of the batches (parallel/sharding.py).
            reader = shard_reader(reader, self.phase, self.name)
            for t, shape in zip(top, reader.top_shapes()):
                t.reshape(shape)
            self.current_size = reader.size(0)
            depth = int(self.param.data_param.prefetch)
            self._batches = (Prefetcher(reader, depth, self.name) if depth > 0
                             else SynchronousBatches(reader))
        except BaseException:
            reader.close()
            raise
        # Holds the batches, not the layer: a collected net stops its thread.
        self._finalizer = weakref.finalize(self, self._batches.close)
        _log.info("%s layer '%s': output data size: %s", self.type, self.name,
                  ", ".join(",".join(map(str, t.shape)) for t in top))

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        if self.fed_from_python:
            return
        if self._batches is None:
            raise self.error("the layer was closed")
        batch = self._batches.next()
        for t, array in zip(top, batch.arrays):
            t.reshape(array.shape)
            t.data[...] = array
        self.epoch, self.current_size = batch.epoch, batch.size
        if batch.size is not None and batch.epoch != self._logged_epoch:
            self._logged_epoch = batch.epoch
            _log.info("%s layer '%s': epoch %d, input size %dx%d", self.type, self.name,
                      batch.epoch, batch.size, batch.size)

    def data_state(self):
        """A value for restore_data_state(), JSON-ready, or None when the
        layer reads nothing (fed from Python)."""
        if self._batches is None:
            return None
        return {"epoch": self.epoch, "size": self.current_size,
                "reader": json_ready(self._batches.position())}

    def restore_data_state(self, state):
        """Continue from a data_state() of this layer in an earlier run.
        Raises ReaderStateMismatch, changing nothing, when it does not fit
        (another source, another layer type)."""
        if self._batches is None:
            raise self.error("the layer was closed" if not self.fed_from_python else
                             "the layer is fed from Python: it has no data position")
        try:
            epoch, size = int(state["epoch"]), state["size"]
            size = None if size is None else int(size)
            reader = state["reader"]
        except (KeyError, TypeError, ValueError):
            raise ReaderStateMismatch(f"malformed data layer state {state!r:.80}") from None
        self._batches.restore(reader)
        self.epoch, self.current_size = epoch, size
        self._logged_epoch = epoch if size is not None else None

    def close(self):
        """Stop the prefetch thread and close the source."""
        if self._batches is not None:
            self._finalizer()
            self._batches = None


@register("Data")
class DataLayer(ExternalDataLayer):
    """Datums from an LMDB database (data_param); top 1, when present, gets
    the labels."""
    max_num_top = 2
    reader_class = DBBatchReader


@register("ImageData")
class ImageDataLayer(ExternalDataLayer):
    """Images named in a list file of `path label` lines (image_data_param)."""
    exact_num_top = 2
    reader_class = ImageListBatchReader


@register("HDF5Data")
class HDF5DataLayer(ExternalDataLayer):
    """Rows of HDF5 datasets named by the tops (hdf5_data_param)."""

    def make_reader(self, top):
        return HDF5BatchReader(self.param, self.phase, [t.name for t in top])


@register("WindowData")
class WindowDataLayer(ExternalDataLayer):
    """Windows of an R-CNN window file, warped (window_data_param)."""
    exact_num_top = 2
    reader_class = WindowBatchReader
