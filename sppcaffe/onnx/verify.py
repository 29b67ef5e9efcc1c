"""Checking an exported model against the net: the same inputs through
sppcaffe and ONNX Runtime, and each output's relative error (largest
absolute difference over the largest absolute reference value)."""
import json

import numpy as np

from ..cli.time_net import num_classes
from .export import RENAMED_OUTPUTS


def random_feeds(net, model, seed=0):
    """Random values for each graph input, at the shape the net has now:
    class indices for label blobs (read by a loss or accuracy layer), N(0, 1)
    otherwise."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in model.graph.input:
        shape = net.blobs[info.name].shape
        classes = num_classes(net, info.name) or _embedding_rows(net, info.name)
        feeds[info.name] = (rng.integers(0, classes, shape).astype(np.float32) if classes
                            else rng.standard_normal(shape, dtype=np.float32))
    return feeds


def _embedding_rows(net, name):
    """The table size of an Embed layer reading blob `name` (word indices), or None."""
    for layer, bottoms in zip(net.layers, net.bottom_vecs):
        if layer.type == "Embed" and bottoms[0].name == name:
            return layer.input_dim
    return None


def run_onnx(model, feeds):
    """{output name: array} from ONNX Runtime on the CPU; `model` is a
    ModelProto or a path."""
    import onnxruntime
    source = model if isinstance(model, str) else model.SerializeToString()
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def relative_error(ours, reference):
    """max |ours - reference| / max |reference| over the finite values;
    NaNs and infinities must match exactly."""
    ours = np.asarray(ours, np.float64)
    reference = np.asarray(reference, np.float64)
    if ours.shape != reference.shape:
        return np.inf
    same = (ours == reference) | (np.isnan(ours) & np.isnan(reference))
    if not np.isfinite(reference[~same]).all() or not np.isfinite(ours[~same]).all():
        return np.inf
    scale = np.abs(reference[np.isfinite(reference)]).max(initial=0.0)
    diff = np.abs(ours[~same] - reference[~same]).max(initial=0.0)
    return diff / scale if scale > 0 else diff


def compare(net, model, feeds=None, seed=0):
    """{output blob: relative error} of ONNX Runtime's outputs against the
    net's forward on the same `feeds` (default: random_feeds)."""
    feeds = random_feeds(net, model, seed) if feeds is None else feeds
    blobs = output_blobs(model)
    # The net takes all its inputs, also those the graph does not read.
    given = dict(feeds)
    for name in net.inputs:
        given.setdefault(name, np.array(net.blobs[name].data))
    reference = {name: np.array(value) for name, value in
                 net.forward(blobs=list(blobs.values()), **given).items()}
    ours = run_onnx(model, feeds)
    return {blob: relative_error(ours[name], reference[blob]) for name, blob in blobs.items()}


def output_blobs(model):
    """{ONNX output name: the blob it holds} (the same name but for an
    input blob written in place, whose input keeps the name)."""
    props = {p.key: p.value for p in model.metadata_props}
    renamed = json.loads(props.get(RENAMED_OUTPUTS, "{}"))
    return {o.name: renamed.get(o.name, o.name) for o in model.graph.output}
