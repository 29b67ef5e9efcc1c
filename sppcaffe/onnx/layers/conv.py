"""Convolution, Deconvolution and Im2col.

Caffe and ONNX size a convolution the same way (floor of the padded span
over the stride, plus one), so symmetric pads suffice; Deconvolution is
ONNX's ConvTranspose with the same weight layout (C_in, C_out/group, kh, kw)
and output size stride*(in-1) + extent - 2*pad.
"""
import numpy as np

from ..registry import converter


def _window_attrs(geom, group):
    ph, pw = geom.pad
    return dict(kernel_shape=list(geom.kernel), strides=list(geom.stride),
                pads=[ph, pw, ph, pw], dilations=list(geom.dilation), group=group)


def _each_bottom(x, op):
    """One node per bottom/top pair, all sharing the weights (as Caffe's
    layer with several bottoms)."""
    layer = x.layer
    params = [x.weight(0)] + ([x.weight(1)] if layer.bias_term else [])
    attrs = _window_attrs(layer.geom, layer.group)
    return [x.g.node(op, [value] + params, **attrs) for value in x.inputs]


@converter("Convolution")
def convolution(x):
    return _each_bottom(x, "Conv")


@converter("Deconvolution")
def deconvolution(x):
    return _each_bottom(x, "ConvTranspose")


@converter("Im2col")
def im2col(x):
    """A depthwise convolution with one-hot kernels: output channel
    (c*kh + i)*kw + j of group c copies cell (i, j) of channel c's windows,
    Caffe's column order (each output sums one product with 1 and zeros)."""
    layer = x.layer
    if layer.axis != 1:
        raise x.error(f"only the channel axis 1 has an ONNX form, got axis {layer.axis}")
    c = x.bottom_shapes[0][1]
    kh, kw = layer.geom.kernel
    picks = np.eye(kh * kw, dtype=np.float32).reshape(kh * kw, 1, kh, kw)
    weights = x.g.initializer(np.tile(picks, (c, 1, 1, 1)), f"{x.name}/one_hot")
    return x.g.node("Conv", [x.inputs[0], weights], **_window_attrs(layer.geom, c))
