"""Real community prototxts (tests/caffe_models/community: ResNet, FCN,
SqueezeNet, MobileNet, GoogLeNet, R-CNN, a coco_caption LSTM; licences
beside them) against what the reference BVLC Caffe computed: every blob's
shape as Caffe built it, and with zoo_fill.py's deterministic parameters and
inputs, sampled outputs within relative error 1e-4."""
import importlib.util
import json
import os

import numpy as np
import pytest

import sppcaffe

COMMUNITY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "caffe_models", "community")
OUTPUT_TOL = 1e-4


def _load_json(name):
    with open(os.path.join(COMMUNITY, name)) as f:
        return json.load(f)


MANIFEST = _load_json("manifest.json")
SHAPES = _load_json("expected_shapes.json")


def _zoo_fill():
    spec = importlib.util.spec_from_file_location("zoo_fill", os.path.join(COMMUNITY, "zoo_fill.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(case):
    return sppcaffe.Net(os.path.join(COMMUNITY, MANIFEST[case]), sppcaffe.TEST)


@pytest.mark.parametrize("case", sorted(MANIFEST))
def test_deploy_net_has_caffe_shapes(case):
    net = build(case)
    compared = 0
    for name, shape in SHAPES[case].items():
        if name not in net.blobs and "_split_" in name:
            continue                  # Caffe's automatic split copies: optional
        assert name in net.blobs, f"{case}: no blob '{name}'"
        assert net.blobs[name].shape == tuple(shape), f"{case}: blob '{name}'"
        compared += 1
    assert compared >= sum("_split_" not in name for name in SHAPES[case])


def _sampled(array):
    flat = np.asarray(array).reshape(-1)
    return flat[np.linspace(0, flat.size - 1, min(flat.size, 20000)).astype(int)]


@pytest.mark.parametrize("case", sorted({k.split("/", 1)[0] for k in
                                         np.load(os.path.join(COMMUNITY, "expected_outputs.npz")).files}))
def test_deploy_net_reproduces_caffe_outputs(case):
    zoo_fill = _zoo_fill()
    net = build(case)
    zoo_fill.fill_params(net, 7)
    zoo_fill.fill_inputs(net, 7)
    net.forward()
    with np.load(os.path.join(COMMUNITY, "expected_outputs.npz")) as expected:
        keys = [k for k in expected.files if k.startswith(case + "/")]
        assert keys
        for key in keys:
            blob = key.split("/", 1)[1]
            ours, ref = _sampled(net.blobs[blob].data).astype(np.float64), expected[key]
            err = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
            assert err < OUTPUT_TOL, f"{key}: relative error {err:.3g}"
