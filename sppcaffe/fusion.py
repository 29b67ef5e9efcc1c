"""Folding BatchNorm (+ Scale) into the convolution before it, for nets
that run forward only.

ResNet and MobileNet follow every convolution with an in-place BatchNorm
using stored statistics and an in-place per-channel Scale.  Together they
are one per-channel affine map z = a x + c of the convolution's output, so
the convolution can compute z directly with weights a W and bias a b + c:
two passes over every activation saved.

The folded weights are derived from the current parameters on every
forward (O x K multiplies, nothing next to the convolution's O x K x P), so
editing ``net.params`` between passes is always seen.  A chain is folded
only where it changes nothing a user can observe: the BatchNorm and Scale
run in place on the convolution's top (the blob ends up holding the same
values as without folding), none of the three layers runs backward, the
pass covers the whole chain, and the net runs on the CPU.  Results differ
from the unfolded net only by float rounding (relative 1e-6 or less).
``Net(..., fold_batchnorm=False)`` switches it off.
"""
import numpy as np

from .blob import DTYPE
from .layer import canonical_axis
from .proto import caffe_pb2


class BatchNormFold:
    """One Convolution -> BatchNorm [-> Scale] chain of a net."""

    def __init__(self, conv, bn, scale, indices):
        self.conv, self.bn, self.scale = conv, bn, scale
        self.first, self.last = indices[0], indices[-1]
        self.skipped = indices[1:]          # the layers the convolution stands in for

    def affine(self):
        """(a, c): the chain's output is a * conv + c per channel, from the
        current parameters, as BatchNorm and Scale compute it."""
        mean, var, factor = (b.data for b in self.bn.blobs[:3])
        inv = DTYPE(0) if factor[0] == 0 else DTYPE(1) / factor[0]
        eps = DTYPE(self.bn.param.batch_norm_param.eps)
        a = DTYPE(1) / np.sqrt(var * inv + eps)
        c = -(mean * inv) * a
        if self.scale is not None:
            gamma = self.scale.blobs[0].data
            a, c = a * gamma, c * gamma
            if len(self.scale.blobs) > 1:
                c = c + self.scale.blobs[1].data
        return a.astype(DTYPE), c.astype(DTYPE)


def _in_place_on(lp, blob):
    return list(lp.bottom) == [blob] and list(lp.top) == [blob]


def _uses_stored_statistics(lp, phase):
    p = lp.batch_norm_param
    return p.use_global_stats if p.HasField("use_global_stats") else phase == caffe_pb2.TEST


def _per_channel_scale(layer, channels, shape):
    p = layer.param.scale_param
    return (len(layer.param.bottom) == 1 and canonical_axis(layer, p.axis, shape) == 1
            and layer.blobs[0].shape == (channels,))


def find_folds(net):
    """Every foldable chain of `net` (see the module docstring)."""
    folds = []
    layers, params = net.layers, [layer.param for layer in net.layers]
    for i, (layer, lp) in enumerate(zip(layers, params)):
        if lp.type != "Convolution" or len(lp.bottom) != 1 or len(lp.top) != 1:
            continue
        blob = lp.top[0]
        if i + 1 >= len(layers) or params[i + 1].type != "BatchNorm" \
                or not _in_place_on(params[i + 1], blob) \
                or not _uses_stored_statistics(params[i + 1], net.phase):
            continue
        channels = layer.blobs[0].shape[0]
        if any(b.shape != (channels,) for b in layers[i + 1].blobs[:2]):
            continue
        indices = [i, i + 1]
        scale = None
        if i + 2 < len(layers) and params[i + 2].type == "Scale" \
                and _in_place_on(params[i + 2], blob) \
                and _per_channel_scale(layers[i + 2], channels, net.blobs[blob].shape):
            scale = layers[i + 2]
            indices.append(i + 2)
        if any(net.layer_need_backward[j] for j in indices):
            continue
        folds.append(BatchNormFold(layer, layers[i + 1], scale, indices))
    return folds
