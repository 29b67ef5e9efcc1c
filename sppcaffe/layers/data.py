"""Layers that bring data into a net: Input (fed from Python), DummyData,
MemoryData, and the database/file readers (Data, ImageData, HDF5Data,
WindowData)."""
import numpy as np

from ..fillers import fill
from ..layer import Layer, register
from ..proto import caffe_pb2


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
    """A reader of databases or files.  Until the reader itself is
    implemented, the layer works only when the net is given the shapes of
    its tops (`Net(..., data_shapes={...})`): it then acts as an input that
    Python fills, which is enough to build and run train/val nets."""
    exact_num_bottom = 0
    min_num_top = 1
    is_data = True

    def source(self):
        return ""

    def layer_setup(self, bottom, top):
        shapes = getattr(self, "net_data_shapes", {}) or {}
        missing = [t.name for t in top if t.name not in shapes]
        if missing:
            raise self.error(
                f"cannot read source '{self.source()}': this build does not read {self.type} "
                f"sources yet; give the shapes of tops {missing} with "
                f"Net(..., data_shapes={{name: shape}}) and fill them from Python")
        for t in top:
            t.reshape(shapes[t.name])

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass


@register("Data")
class DataLayer(ExternalDataLayer):
    def source(self):
        return self.param.data_param.source


@register("ImageData")
class ImageDataLayer(ExternalDataLayer):
    def source(self):
        return self.param.image_data_param.source


@register("HDF5Data")
class HDF5DataLayer(ExternalDataLayer):
    def source(self):
        return self.param.hdf5_data_param.source


@register("WindowData")
class WindowDataLayer(ExternalDataLayer):
    def source(self):
        return self.param.window_data_param.source
