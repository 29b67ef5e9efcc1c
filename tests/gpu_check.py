"""The one CPU-vs-GPU comparison every layer's device code is tested with.

The same layer object runs its host code and then its device code on the
same random inputs; top data, bottom diffs and param diffs must agree.
Blobs mirror themselves, so reading ``.data`` after the device pass
downloads exactly what the kernels wrote.
"""
import contextlib

import numpy as np

from sppcaffe import backends
from sppcaffe.backends.gpu.host_device import HostDevice


class CountingDevice(HostDevice):
    """The host build, counting copies between host and "device": tests
    of the memory-mirroring promise (no copy while a net runs)."""

    def __init__(self):
        super().__init__()
        self.uploads = self.downloads = 0

    def upload(self, ptr, array):
        self.uploads += 1
        super().upload(ptr, array)

    def download(self, ptr, array):
        self.downloads += 1
        super().download(ptr, array)


@contextlib.contextmanager
def on_device(device):
    """GPU mode on `device` inside the block, CPU mode again after it."""
    backends.use_device(device)
    backends.set_mode_gpu()
    try:
        yield device
    finally:
        backends.set_mode_cpu()
        backends.use_device(None)


def _randomize(blobs, rng, low=-1.0, high=1.0):
    for b in blobs:
        b.data[...] = rng.uniform(low, high, size=b.shape)


def _run(layer, bottom, top, propagate_down, top_diffs, gpu):
    layer.reshape(bottom, top)
    for p in layer.blobs:
        p.diff[...] = 0
    (layer.forward_gpu if gpu else layer.forward)(bottom, top)
    outputs = [t.data.copy() for t in top]
    if propagate_down is not None:
        for t, d in zip(top, top_diffs):
            t.diff[...] = d
        for b in bottom:
            if not any(b is t for t in top):
                b.diff[...] = np.nan       # every gradient the layer owes must be written
        (layer.backward_gpu if gpu else layer.backward)(top, propagate_down, bottom)
    grads = [b.diff.copy() if propagate_down is not None and want else None
             for b, want in zip(bottom, propagate_down or [False] * len(bottom))]
    param_grads = [p.diff.copy() for p in layer.blobs] if propagate_down is not None else []
    return outputs, grads, param_grads


def compare_cpu_gpu(layer, bottom, top, propagate_down=True, seed=0, rtol=1e-4, atol=1e-5,
                    setup=True, randomize=True, check_params=True):
    """Run `layer` on the host and on the current GPU device; assert they
    agree.  propagate_down: True (all bottoms), a list of flags, or None
    (forward only).  Must be called in GPU mode (the ``gpu_device``
    fixture); returns the device outputs for further checks."""
    assert backends.gpu_mode(), "compare_cpu_gpu needs the gpu_device fixture"
    rng = np.random.default_rng(seed)
    backends.set_mode_cpu()
    try:
        if setup:
            layer.setup(bottom, top)
        if randomize:
            _randomize(bottom, rng)
        inputs = [b.data.copy() for b in bottom]
        if propagate_down is True:
            propagate_down = [True] * len(bottom)
        top_diffs = [rng.uniform(-1, 1, size=t.shape).astype(np.float32) for t in top]
        expected = _run(layer, bottom, top, propagate_down, top_diffs, gpu=False)
    finally:
        backends.set_mode_gpu()
    for b, x in zip(bottom, inputs):
        b.data[...] = x                 # in-place layers overwrote their input
    got = _run(layer, bottom, top, propagate_down, top_diffs, gpu=True)
    for what, exp, out in zip(("top data", "bottom diff", "param diff"), expected, got):
        if what == "param diff" and not check_params:
            continue
        for i, (e, g) in enumerate(zip(exp, out)):
            if e is None:
                continue
            np.testing.assert_allclose(g, e, rtol=rtol, atol=atol,
                                       err_msg=f"{layer.name} ({layer.type}): {what} {i}")
    return got
