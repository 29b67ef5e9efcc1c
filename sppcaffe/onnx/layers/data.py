"""Data layers: their tops are what the graph is fed (DummyData with
constant fillers and Parameter are constants)."""
import numpy as np
from onnx import helper, TensorProto

from ..registry import converter


@converter("Input", "Data", "ImageData", "HDF5Data", "WindowData", "MemoryData")
def fed(x):
    """The graph takes each top as an input: what the layer hands the net
    (for a database layer, the batch after its transform_param)."""
    return [x.graph_input(i) for i in range(len(x.top_shapes))]


@converter("DummyData")
def dummy_data(x):
    values = []
    for filler, shape in zip(x.layer.fillers, x.top_shapes):
        if filler.type != "constant":
            raise x.error(f"a '{filler.type}' data_filler draws new random values at every "
                          "forward; only constant fillers have an ONNX form")
        value = helper.make_tensor("value", TensorProto.FLOAT, [1], [np.float32(filler.value)])
        values.append(x.g.node("ConstantOfShape", [x.g.ints(shape, "shape")], value=value))
    return values


@converter("Parameter")
def parameter(x):
    return x.weight(0)
