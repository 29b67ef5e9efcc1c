"""Folding BatchNorm (+ Scale) into the convolution before it in
forward-only nets (sppcaffe/fusion.py): same numbers as the layers run one
by one, only where nothing observable changes, and switchable off."""
import numpy as np
import pytest

import sppcaffe
from sppcaffe.proto import caffe_pb2
from google.protobuf import text_format

CHAIN = """
name: "chain"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 3 dim: 9 dim: 8 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "{conv_top}"
        convolution_param {{ num_output: 5 kernel_size: 3 pad: 1 bias_term: {bias}
                             weight_filler {{ type: "gaussian" std: 0.3 }}
                             bias_filler {{ type: "gaussian" std: 0.3 }} }} }}
layer {{ name: "bn" type: "BatchNorm" bottom: "{conv_top}" top: "conv" {bn_param} }}
layer {{ name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param {{ bias_term: true }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "conv1x1" type: "Convolution" bottom: "conv" top: "pw"
        convolution_param {{ num_output: 4 kernel_size: 1 weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
layer {{ name: "bn2" type: "BatchNorm" bottom: "pw" top: "pw" }}
"""


def make_net(fold=True, conv_top="conv", bias="true", bn_param="", force_backward=False, seed=0):
    text = CHAIN.format(conv_top=conv_top, bias=bias, bn_param=bn_param)
    param = text_format.Parse(text, caffe_pb2.NetParameter())
    param.force_backward = force_backward
    net = sppcaffe.Net(param, sppcaffe.TEST, fold_batchnorm=fold)
    rng = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            if name.startswith("bn"):
                value = [rng.normal(0, 1, blob.shape), rng.uniform(0.5, 2, blob.shape),
                         np.full(blob.shape, 0.8)][i]
            else:
                value = rng.normal(0, 0.5, blob.shape)
            blob.data[...] = value
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    return net


def outputs(net, **kwargs):
    net.forward(**kwargs)
    return {name: blob.data.copy() for name, blob in net.blobs.items()}


@pytest.mark.parametrize("bias", ["true", "false"])
def test_folded_net_computes_what_the_layers_compute(bias):
    folded, plain = make_net(True, bias=bias), make_net(False, bias=bias)
    assert [f.skipped for f in folded._folds] == [[2, 3], [6]]      # bn + scale, bn2 alone
    assert plain._folds == []
    ours, theirs = outputs(folded), outputs(plain)
    for name in theirs:
        err = np.linalg.norm(ours[name] - theirs[name]) / np.linalg.norm(theirs[name])
        assert err < 1e-5, name


def test_parameters_edited_between_passes_are_seen():
    folded, plain = make_net(True), make_net(False)
    for net in (folded, plain):
        net.forward()
        net.params["bn"][0].data[...] += 0.5
        net.params["scale"][0].data[...] *= 2
        net.params["conv"][1].data[...] -= 1
    np.testing.assert_allclose(outputs(folded)["pw"], outputs(plain)["pw"], rtol=1e-5, atol=1e-5)


def test_a_pass_ending_inside_a_chain_is_not_folded():
    folded, plain = make_net(True), make_net(False)
    np.testing.assert_array_equal(outputs(folded, end="conv")["conv"],
                                  outputs(plain, end="conv")["conv"])
    assert folded.layers[1].fold is None          # reset after every pass


def test_only_in_place_chains_without_backward_fold():
    # BatchNorm writing another blob: the convolution's top must keep the raw output.
    assert [f.skipped for f in make_net(conv_top="raw")._folds] == [[6]]
    # Batch statistics (use_global_stats false) cannot fold.
    assert [f.skipped for f in make_net(bn_param="batch_norm_param { use_global_stats: false }")
            ._folds] == [[6]]
    # Backward needs every layer's own state.
    assert make_net(force_backward=True)._folds == []


def test_gpu_mode_runs_the_layers(gpu_device):
    folded, plain = make_net(True), make_net(False)
    np.testing.assert_allclose(outputs(folded)["pw"], outputs(plain)["pw"], rtol=1e-5, atol=1e-5)


def test_resnet50_folded_equals_unfolded():
    """The real ResNet-50 deploy net (53 chains), zoo_fill's parameters."""
    import os

    from test_community_models import COMMUNITY, _zoo_fill
    zoo_fill = _zoo_fill()
    results = []
    for fold in (True, False):
        net = sppcaffe.Net(os.path.join(COMMUNITY, "resnet", "ResNet-50-deploy.prototxt"),
                           sppcaffe.TEST, fold_batchnorm=fold)
        assert len(net._folds) == (53 if fold else 0)
        zoo_fill.fill_params(net, 7)
        zoo_fill.fill_inputs(net, 7)
        net.forward()
        results.append({name: blob.data.copy() for name, blob in net.blobs.items()})
    for name, ref in results[1].items():
        err = np.linalg.norm(results[0][name] - ref) / max(np.linalg.norm(ref), 1e-30)
        assert err < 1e-5, name


SMALL_MAP = """
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 16 dim: 3 dim: 3 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "gaussian" std: 0.3 } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
"""


def test_scale_onto_the_output_where_it_is_smaller_than_the_weights():
    """1 x 3 x 3 outputs per channel against 16 x 3 x 3 weights: the fold's
    scale multiplies the output instead (ResNet's late layers at batch 1)."""
    results = []
    for fold in (True, False):
        net = sppcaffe.Net(text_format.Parse(SMALL_MAP, caffe_pb2.NetParameter()), sppcaffe.TEST,
                           fold_batchnorm=fold)
        rng = np.random.default_rng(1)
        for blobs in net.params.values():
            for blob in blobs:
                blob.data[...] = rng.uniform(0.5, 2, blob.shape)
        net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
        conv = net.layer_dict["conv"]
        conv.fold = net._folds[0].affine if fold else None
        if fold:
            assert conv._folded(conv.blobs[0].data.reshape(6, -1), None)[1] is not None
        conv.fold = None
        results.append(outputs(net)["conv"])
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5)
