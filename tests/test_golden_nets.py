"""Whole nets against BVLC Caffe: every blob's data and diff, every
parameter and gradient (fixtures made by the real Caffe)."""
import os
import sys

import numpy as np
import pytest

import sppcaffe
from golden_util import DATA_TOL, DIFF_TOL, assert_close, case_path, load_expected

CORE_CASES = ["conv", "pool", "spp_caffe", "lrn", "fc_act", "loss", "graph", "zf5_spp_small"]
# The rest of Caffe's layer catalogue (tests/golden/README.md).
CATALOGUE_CASES = ["deconv_crop", "batchnorm_train", "batchnorm_test", "activations_more",
                   "structure_more", "losses_more", "embed_recurrent", "python_layer",
                   "resnet_block", "fcn_small"]
NET_CASES = CORE_CASES + CATALOGUE_CASES


def case_phase(case):
    """TEST unless the fixture's `phase` file says TRAIN."""
    path = case_path(case, "phase")
    if os.path.exists(path):
        with open(path) as f:
            return sppcaffe.TRAIN if f.read().strip() == "TRAIN" else sppcaffe.TEST
    return sppcaffe.TEST


def run_case(case):
    expected = load_expected(case)
    # Python layers' modules sit beside the net, as Caffe finds them on sys.path.
    folder = case_path(case)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    net = sppcaffe.Net(case_path(case, "net.prototxt"), case_phase(case),
                       weights=case_path(case, "weights.caffemodel"))
    # What went into each Input blob: `input/<blob>`, else the blob's recorded
    # data (structure_more records its input under the name of the blob its
    # first layer writes).
    inputs = {name: expected.get(f"input/{name}", expected.get(f"data/{name}"))
              for name in net.inputs}
    net.forward(**inputs)
    forward = {name: blob.data.copy() for name, blob in net.blobs.items()}
    for key, value in expected.items():
        if key.startswith("topdiff/"):
            net.blobs[key.split("/", 1)[1]].diff[...] = value
    net.backward()
    return net, expected, forward


@pytest.mark.parametrize("case", NET_CASES)
def test_net_matches_caffe(case):
    check_case(case)


@pytest.mark.parametrize("case", NET_CASES)
def test_net_matches_caffe_on_gpu(case, gpu_device):
    """The same fixtures with every layer's device code (gpu_device: the
    kernels built for the CPU, and a real GPU where there is one)."""
    check_case(case)


def check_case(case):
    net, expected, forward = run_case(case)
    compared = 0
    for key, ref in expected.items():
        kind, _, name = key.partition("/")
        if kind == "data":
            assert_close(forward[name], ref, DATA_TOL, f"{case} data of blob '{name}'")
        elif kind == "diff":
            assert_close(net.blobs[name].diff, ref, DIFF_TOL, f"{case} diff of blob '{name}'")
        elif kind in ("param", "grad"):
            layer, index = name.rsplit("/", 1)
            blob = net.params[layer][int(index)]
            if kind == "param":
                assert_close(blob.data, ref, DATA_TOL, f"{case} param {name}")
            else:
                assert_close(blob.diff, ref, DIFF_TOL, f"{case} gradient {name}")
        else:
            continue
        compared += 1
    assert compared > 0


def test_graph_shares_one_gradient_between_layers():
    net, expected, _ = run_case("graph")
    a, b = net.params["conv_a"], net.params["conv_b"]
    assert a[0] is b[0] and a[1] is b[1]
    assert len(net.learnable_params) == 6      # shared_w, shared_b, fc w/b, fc2 w/b


def test_graph_split_blobs_and_loss_weights():
    net, _, _ = run_case("graph")
    assert "fc_fc_0_split_0" in net.blobs
    weights = net.blob_loss_weights
    assert weights["loss"] == 1.0 and weights["loss2"] == pytest.approx(0.3)
    assert weights["aux"] == pytest.approx(0.5)
    np.testing.assert_allclose(net.blobs["aux"].diff, 0.5)
