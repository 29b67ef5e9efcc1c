"""The one numerical gradient checker every layer test uses.

Central differences on a random linear objective L = sum_t <w_t, top_t>,
compared elementwise with the analytic gradient using Caffe's rule
(GradientChecker): |analytic - numeric| <= threshold * max(|a|, |n|, 1).
"""
import numpy as np

from sppcaffe.blob import Blob


def make_blobs(*shapes, seed=0, low=-1.0, high=1.0):
    rng = np.random.default_rng(seed)
    blobs = []
    for shape in shapes:
        b = Blob(shape)
        b.data[...] = rng.uniform(low, high, size=shape)
        blobs.append(b)
    return blobs


def _objective(top, weights):
    return sum(float(np.dot(t.data.ravel().astype(np.float64), w.ravel())) for t, w in zip(top, weights))


def check_gradient(layer, bottom, top, check_bottom=None, check_params=True,
                   stepsize=1e-2, threshold=1e-3, kink=None, kink_range=-1.0,
                   seed=1701, setup=True):
    """Check d(objective)/d(bottom) and d(objective)/d(params) of `layer`.

    check_bottom: indices of bottoms to check (default: all).
    kink/kink_range: skip elements whose top value lies within kink_range of
    a non-differentiable point (ReLU at 0, max pooling ties), as Caffe does.
    Returns the number of elements compared, so tests can assert it is > 0.
    """
    if setup:
        layer.setup(bottom, top)
    rng = np.random.default_rng(seed)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    weights = [rng.uniform(-1, 1, size=t.shape) for t in top]
    if check_bottom is None:
        check_bottom = list(range(len(bottom)))

    # Analytic gradient.  Bottom diffs are cleared before the top diffs are
    # set, because view layers (Flatten, Reshape) share one diff array.
    for b in bottom:
        b.diff[...] = 0
    for p in layer.blobs:
        p.diff[...] = 0
    for t, w in zip(top, weights):
        t.diff[...] = w
    propagate = [i in check_bottom for i in range(len(bottom))]
    layer.backward(top, propagate, bottom)
    targets = [(f"bottom[{i}]", bottom[i], bottom[i].diff.astype(np.float64).copy())
               for i in check_bottom]
    if check_params:
        targets += [(f"param[{i}]", p, p.diff.astype(np.float64).copy())
                    for i, p in enumerate(layer.blobs)]

    checked = 0
    for label, blob, analytic in targets:
        flat = blob.data.reshape(-1)
        for i in range(flat.size):
            orig = flat[i]
            flat[i] = orig + stepsize
            layer.forward(bottom, top)
            plus = _objective(top, weights)
            flat[i] = orig - stepsize
            layer.forward(bottom, top)
            minus = _objective(top, weights)
            flat[i] = orig
            if kink is not None and abs(orig - kink) < kink_range:
                continue
            numeric = (plus - minus) / (2 * stepsize)
            a = analytic.reshape(-1)[i]
            scale = max(abs(a), abs(numeric), 1.0)
            assert abs(a - numeric) <= threshold * scale, (
                f"{layer.name} {label} element {i}: analytic {a:.6g} vs numeric {numeric:.6g}")
            checked += 1
    layer.forward(bottom, top)
    return checked


def layer_param(text):
    """Build a LayerParameter from prototxt text (test convenience)."""
    from google.protobuf import text_format
    from sppcaffe.proto import caffe_pb2
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def check_overwrite_and_accumulate(layer, bottom, top, seed=5):
    """Caffe's contract: backward overwrites the bottom diff and adds to the
    parameter diffs.  A second backward (without forward) must give the same
    bottom diff and twice the parameter gradients."""
    layer.forward(bottom, top)
    top[0].diff[...] = np.random.default_rng(seed).uniform(-1, 1, size=top[0].shape)
    for blob in layer.blobs:
        blob.diff[...] = 0
    bottom[0].diff[...] = 0
    layer.backward(top, [True], bottom)
    once = [bottom[0].diff.copy()] + [b.diff.copy() for b in layer.blobs]
    bottom[0].diff[...] = 123.0
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, once[0], rtol=1e-6)
    for blob, first in zip(layer.blobs, once[1:]):
        np.testing.assert_allclose(blob.diff, 2 * first, rtol=1e-6)
