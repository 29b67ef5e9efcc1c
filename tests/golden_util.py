"""Comparison against the BVLC Caffe fixtures in tests/golden (format and
tolerances: tests/golden/README.md)."""
import os

import numpy as np

from sppcaffe import io
from sppcaffe.blob import Blob
from sppcaffe.layer import create_layer
from sppcaffe.proto import caffe_pb2

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
DATA_TOL = 1e-5      # forward data
DIFF_TOL = 1e-4      # diffs, gradients, solver trajectories


def case_path(case, name=""):
    return os.path.join(GOLDEN, case, name)


def load_expected(case, name="expected.npz"):
    with np.load(case_path(case, name)) as f:
        return {k: f[k] for k in f.files}


def relative_error(ours, ref):
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference {ref.shape}"
    norm = np.linalg.norm(ref)
    diff = np.linalg.norm(ours - ref)
    return diff / norm if norm > 0 else diff


def assert_close(ours, ref, tol, what):
    err = relative_error(ours, ref)
    assert err < tol, f"{what}: relative error {err:.3g} >= {tol:g}"


def golden_layers(case):
    """A fixture's net definition and its weights by layer name."""
    net = io.read_net(case_path(case, "net.prototxt"))
    weights = io.read_weights(case_path(case, "weights.caffemodel"))
    blobs = {layer.name: [io.blob_to_array(b) for b in layer.blobs] for layer in weights.layer}
    return net, blobs


def check_golden_layers(case, layer_type):
    """Run each `layer_type` layer of a fixture net alone: forward from the
    fixture's input, backward from its top diff (`topdiff/`, else the summed
    `diff/` of the top); compare the top, the layer's share of the input diff
    (its split copy) and the gradients.  Returns how many layers it checked."""
    net, blobs = golden_layers(case)
    expected = load_expected(case)
    readers = [p.name for p in net.layer if "data" in p.bottom]
    checked = 0
    for p in net.layer:
        if p.type != layer_type:
            continue
        layer = create_layer(p, caffe_pb2.TEST)
        for array in blobs[p.name]:
            layer.blobs.append(Blob(array.shape))
            layer.blobs[-1].data[...] = array
        bottom, top = [Blob(expected["input/data"].shape)], [Blob()]
        bottom[0].data[...] = expected["input/data"]
        layer.setup(bottom, top)
        layer.forward(bottom, top)
        name = p.top[0]
        assert_close(top[0].data, expected[f"data/{name}"], DATA_TOL, f"{p.name} forward")
        key = f"topdiff/{name}" if f"topdiff/{name}" in expected else f"diff/{name}"
        top[0].diff[...] = expected[key]
        layer.backward(top, [True], bottom)
        split = f"diff/data_data_0_split_{readers.index(p.name)}"
        assert_close(bottom[0].diff, expected[split], DIFF_TOL, f"{p.name} bottom diff")
        for i, blob in enumerate(layer.blobs):
            assert_close(blob.diff, expected[f"grad/{p.name}/{i}"], DIFF_TOL,
                         f"{p.name} gradient {i}")
        checked += 1
    return checked


def check_golden_layer(case, layer_name, propagate_down=None):
    """Run one layer of a fixture net alone on the fixture's blobs: forward
    from its bottoms' data (after a reshape, as the net runs it), backward
    from its tops' diffs (`topdiff/`, else the summed `diff/`); compare its
    tops, each propagated bottom's diff (this layer's split share when the
    bottom has several readers) and its gradients.  propagate_down defaults
    to the bottoms the layer allows a gradient to, False means none (a
    fixture whose net ran no backward).  Returns the layer."""
    net, weights = golden_layers(case)
    expected = load_expected(case)
    phase = caffe_pb2.TRAIN if os.path.exists(case_path(case, "phase")) else caffe_pb2.TEST
    index = next(i for i, p in enumerate(net.layer) if p.name == layer_name)
    param = net.layer[index]
    layer = create_layer(param, phase)
    for array in weights.get(layer_name, []):
        layer.blobs.append(Blob(array.shape))
        layer.blobs[-1].data[...] = array
    bottom = [Blob(expected[f"data/{name}"].shape) for name in param.bottom]
    for blob, name in zip(bottom, param.bottom):
        blob.data[...] = expected[f"data/{name}"]
    top = [Blob() for _ in param.top]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    for blob, name in zip(top, param.top):
        assert_close(blob.data, expected[f"data/{name}"], DATA_TOL, f"{layer_name} top '{name}'")
    for blob, name in zip(top, param.top):
        key = f"topdiff/{name}" if f"topdiff/{name}" in expected else f"diff/{name}"
        if key in expected:
            blob.diff[...] = expected[key]
    if propagate_down is None:
        propagate_down = [layer.allow_force_backward(i) for i in range(len(bottom))]
    elif propagate_down is False:
        propagate_down = [False] * len(bottom)
    for blob, down in zip(bottom, propagate_down):
        if down:
            blob.diff[...] = np.nan
    layer.backward(top, propagate_down, bottom)
    for j, (blob, name, down) in enumerate(zip(bottom, param.bottom, propagate_down)):
        if down:
            assert_close(blob.diff, expected[_diff_key(net, index, j, name)], DIFF_TOL,
                         f"{layer_name} diff of bottom '{name}'")
    for i, blob in enumerate(layer.blobs):
        if f"grad/{layer_name}/{i}" in expected:
            assert_close(blob.diff, expected[f"grad/{layer_name}/{i}"], DIFF_TOL,
                         f"{layer_name} gradient {i}")
    return layer


def _diff_key(net, index, bottom_index, name):
    """Where the fixture holds layer `index`'s share of blob `name`'s diff:
    Caffe's split copy `<blob>_<producer>_<top index>_split_<j>` when the
    blob has several readers, else the blob's own diff."""
    producer = max(i for i in range(index) if name in net.layer[i].top)
    readers = [(i, j) for i in range(producer + 1, len(net.layer))
               for j, b in enumerate(net.layer[i].bottom) if b == name]
    if len(readers) == 1:
        return f"diff/{name}"
    top_index = list(net.layer[producer].top).index(name)
    return (f"diff/{name}_{net.layer[producer].name}_{top_index}_split_"
            f"{readers.index((index, bottom_index))}")
