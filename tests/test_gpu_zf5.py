"""ZF-5 SPP (models/zf5_spp) on the device against the CPU backend: a
forward/backward pass, and (on a real GPU) ten solver steps."""
import math
import os

import numpy as np
import pytest

import sppcaffe
from sppcaffe import backends, io
from sppcaffe.proto import caffe_pb2

from conftest import ROOT

TRAIN_VAL = os.path.join(ROOT, "models", "zf5_spp", "train_val.prototxt")


def zf5_net(batch, phase=sppcaffe.TEST, seed=1):
    """TEST phase (Dropout passes through, so both backends compute the
    same function); He-scaled weights, so max-pooling winners do not hinge
    on rounding as they would with the fillers' tiny std."""
    net = sppcaffe.Net(TRAIN_VAL, phase, data_shapes={"data": (batch, 3, 224, 224), "label": (batch,)})
    rng = np.random.default_rng(seed)
    for weights, bias in net.params.values():
        weights.data[...] = rng.standard_normal(weights.shape) * math.sqrt(2 / math.prod(weights.shape[1:]))
        bias.data[...] = rng.uniform(-0.1, 0.1, bias.shape)
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    net.blobs["label"].data[...] = rng.integers(0, 1000, batch)
    return net


def relative_error(ours, ref):
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def test_forward_backward_matches_the_cpu_backend(gpu_device):
    batch = 8 if gpu_device.kind == "cuda" else 1
    backends.set_mode_cpu()
    net = zf5_net(batch)
    net.forward_from_to()
    net.backward_from_to()
    blobs = {name: b.data.copy() for name, b in net.blobs.items()}
    grads = {name: [p.diff.copy() for p in params] for name, params in net.params.items()}
    net.clear_param_diffs()
    backends.set_mode_gpu()
    net.forward_from_to()
    net.backward_from_to()
    for name, ref in blobs.items():
        assert relative_error(net.blobs[name].data, ref) < 1e-5, name
    for name, refs in grads.items():
        for i, ref in enumerate(refs):
            assert relative_error(net.params[name][i].diff, ref) < 1e-4, f"{name}[{i}]"


@pytest.mark.gpu
def test_ten_sgd_steps_match_the_cpu_backend(gpu_device):
    if gpu_device.kind != "cuda":
        pytest.skip("ten ZF-5 steps take too long with the kernels built for the CPU")

    def train(on_gpu):
        (backends.set_mode_gpu if on_gpu else backends.set_mode_cpu)()
        param = caffe_pb2.SolverParameter(base_lr=0.001, momentum=0.9, weight_decay=5e-4,
                                          lr_policy="fixed", max_iter=10, display=0,
                                          snapshot_after_train=False, type="SGD")
        param.net_param.CopyFrom(io.read_net(TRAIN_VAL))
        for layer in param.net_param.layer:
            if layer.type == "Dropout":
                layer.dropout_param.dropout_ratio = 0.0     # the two backends' masks differ
        solver = sppcaffe.get_solver(param, data_shapes={"data": (4, 3, 224, 224), "label": (4,)})
        template = zf5_net(4, sppcaffe.TRAIN)
        for name, params in solver.net.params.items():
            for p, q in zip(params, template.params[name]):
                p.data[...] = q.data
        for name in ("data", "label"):
            solver.net.blobs[name].data[...] = template.blobs[name].data
        solver.step(10)
        return {name: [p.data.copy() for p in params] for name, params in solver.net.params.items()}

    cpu, gpu = train(False), train(True)
    for name in cpu:
        for i, (c, g) in enumerate(zip(cpu[name], gpu[name])):
            # Summation order differs (cuBLAS, atomics): a few max-pooling
            # winners may flip over ten steps, so compare whole tensors.
            assert np.linalg.norm(g - c) < 1e-3 * np.linalg.norm(c), f"{name}[{i}]"
