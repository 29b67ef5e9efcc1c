"""InnerProduct and Embed."""
from onnx import TensorProto

from ...layer import canonical_axis
from ..registry import converter


@converter("InnerProduct")
def inner_product(x):
    """Axes before `axis` stay rows, the rest are flattened: a Gemm for
    the usual axis 1, else a MatMul broadcasting over the leading axes."""
    layer, g = x.layer, x.g
    shape = x.bottom_shapes[0]
    axis = canonical_axis(layer, layer.param.inner_product_param.axis, shape)
    bias = [x.weight(1)] if layer.bias_term else []
    if axis == 1:
        rows = x.inputs[0] if len(shape) == 2 else g.node("Flatten", [x.inputs[0]], axis=1)
        # W is (num_output, K), or (K, num_output) with transpose: true
        return g.node("Gemm", [rows, x.weight(0)] + bias, transB=0 if layer.transpose else 1)
    rows = g.reshape(x.inputs[0], [0] * axis + [-1])
    kn = x.weight(0) if layer.transpose else x.weight(0, "transposed", lambda w: w.T)
    y = g.node("MatMul", [rows, kn])
    return g.node("Add", [y] + bias) if bias else y


@converter("Embed")
def embed(x):
    """Row lookup: the float indices truncated to integers, as Caffe's cast."""
    layer, g = x.layer, x.g
    indices = g.cast(x.inputs[0], TensorProto.INT64)
    y = g.node("Gather", [x.weight(0), indices], axis=0)
    return g.node("Add", [y, x.weight(1)]) if layer.bias_term else y
