"""LayerExport: what a converter sees of the layer it turns into ONNX nodes.

A converter gets the sppcaffe layer (its parameters, and the geometry the
layer itself computed at the export's input sizes), the ONNX values of
its bottoms, their shapes, and which of their axes are dynamic (change
with the graph's input sizes, see shapes.py).  It writes nodes into
``x.g`` and returns the ONNX value of each top.
"""
import warnings

import numpy as np

from .registry import ExportError


class LayerExport:
    def __init__(self, graph, index, layer, inputs, bottom_shapes, top_shapes, bottom_dynamic,
                 top_dynamic, weights, graph_input, notes):
        self.g = graph
        self.index = index                  # the layer's position in the net
        self.layer = layer
        self.param = layer.param
        self.name = layer.name
        self.type = layer.param.type
        self.inputs = list(inputs)
        self.bottom_shapes = [tuple(s) for s in bottom_shapes]
        self.top_shapes = [tuple(s) for s in top_shapes]
        self.bottom_dynamic = list(bottom_dynamic)
        self.top_dynamic = list(top_dynamic)
        self._weights = weights             # shared cache: (id(blob), variant) -> initializer
        self._graph_input = graph_input
        self._notes = notes

    def note(self, message):
        """A remark kept in the model's doc_string (and warned about): what the
        graph does that a user of the Caffe net might not expect."""
        text = f"layer '{self.name}' ({self.type}): {message}"
        if text not in self._notes:
            self._notes.append(text)
            warnings.warn(text, stacklevel=2)

    def error(self, message):
        return ExportError(f"layer '{self.name}' ({self.type}): {message}")

    # ---- parameters ----------------------------------------------------------
    def weight(self, index, variant="", transform=None):
        """The initializer holding parameter blob `index` of the layer, or
        `transform` of it (a variant named by `variant`).  Blobs shared
        between layers become one initializer."""
        blob = self.layer.blobs[index]
        key = (id(blob), variant)
        if key not in self._weights:
            array = np.asarray(blob.data, np.float32)
            if transform is not None:
                array = np.asarray(transform(array), np.float32)
            hint = blob.name or f"{self.name}/{index}"
            suffix = f"/{variant}" if variant else ""
            self._weights[key] = self.g.initializer(array, hint + suffix)
        return self._weights[key]

    def graph_input(self, top_index):
        """Make top `top_index` a graph input named as the Caffe blob."""
        return self._graph_input(self, top_index)

    # ---- shapes ----------------------------------------------------------------
    def is_dynamic(self, bottom_index, axes=None):
        """Whether any of `axes` (default: all) of the bottom changes with the
        graph's input sizes."""
        dynamic = self.bottom_dynamic[bottom_index]
        if axes is None:
            return bool(dynamic)
        return any(a in dynamic for a in axes)

    def dims(self, bottom_index, axes):
        """The bottom's dims at `axes`: an int where static, a 1-D int64
        tensor read from the value's shape where dynamic."""
        shape, dynamic = self.bottom_shapes[bottom_index], self.bottom_dynamic[bottom_index]
        value = self.inputs[bottom_index]
        return [self.g.shape(value, a, a + 1) if a in dynamic else int(shape[a]) for a in axes]

    def product(self, parts):
        """The product of dims from `dims`: an int, or a 1-D int64 tensor."""
        static = int(np.prod([p for p in parts if not isinstance(p, str)], dtype=np.int64))
        tensors = [p for p in parts if isinstance(p, str)]
        if not tensors:
            return static
        result = tensors[0]
        for t in tensors[1:]:
            result = self.g.node("Mul", [result, t])
        if static != 1:
            result = self.g.node("Mul", [result, self.g.ints([static])])
        return result

    def merged_dims(self, bottom_index, groups):
        """The bottom's dims with each group of axes (a range) multiplied
        into one: ints, or 1-D int64 tensors where dynamic."""
        return [self.product(self.dims(bottom_index, list(group))) for group in groups]

    def reshape(self, value, parts):
        """Reshape `value` to dims given as ints or 1-D tensors; a single
        tensor among them becomes -1, so the shape stays a constant."""
        symbolic = [i for i, p in enumerate(parts) if isinstance(p, str)]
        if len(symbolic) == 1:
            parts = list(parts)
            parts[symbolic[0]] = -1
        return self.g.reshape(value, parts)
