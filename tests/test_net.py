"""The net graph: phase/level/stage rules, splits, in-place layers,
sharing, loss weights, which layers run backward, reshaping."""
import numpy as np
import pytest

import sppcaffe
from sppcaffe.io import parse_text
from sppcaffe.net import filter_net, insert_splits
from sppcaffe.proto import caffe_pb2


def net_param(text):
    return parse_text(text, caffe_pb2.NetParameter())


def make_net(text, phase=sppcaffe.TEST, **kw):
    return sppcaffe.Net(net_param(text), phase, **kw)


RULES = """
layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 1 } } }
layer { name: "train_only" type: "ReLU" bottom: "a" top: "t" include { phase: TRAIN } }
layer { name: "test_only" type: "ReLU" bottom: "a" top: "u" include { phase: TEST } }
layer { name: "not_test" type: "ReLU" bottom: "a" top: "v" exclude { phase: TEST } }
layer { name: "level2" type: "ReLU" bottom: "a" top: "w" include { min_level: 2 } }
layer { name: "staged" type: "ReLU" bottom: "a" top: "x" include { stage: "deploy" } }
layer { name: "unstaged" type: "ReLU" bottom: "a" top: "y" include { not_stage: "deploy" } }
"""


@pytest.mark.parametrize("phase,level,stages,expected", [
    (sppcaffe.TRAIN, 0, (), ["a", "train_only", "not_test", "unstaged"]),
    (sppcaffe.TEST, 0, (), ["a", "test_only", "unstaged"]),
    (sppcaffe.TEST, 2, (), ["a", "test_only", "level2", "unstaged"]),
    (sppcaffe.TEST, 0, ("deploy",), ["a", "test_only", "staged"]),
])
def test_phase_level_stage_rules(phase, level, stages, expected):
    param = net_param(RULES)
    param.state.phase, param.state.level = phase, level
    param.state.stage.extend(stages)
    assert [lp.name for lp in filter_net(param).layer] == expected


def test_include_and_exclude_together_is_an_error():
    param = net_param('layer { name: "x" type: "ReLU" include { phase: TEST } exclude { phase: TRAIN } }')
    with pytest.raises(sppcaffe.LayerError, match="layer 'x'"):
        filter_net(param)


def test_splits_named_as_caffe():
    param = net_param("""
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }
layer { name: "r1" type: "ReLU" bottom: "x" top: "r1" }
layer { name: "r2" type: "ReLU" bottom: "x" top: "r2" }
""")
    names = [(lp.name, list(lp.bottom), list(lp.top)) for lp in insert_splits(param).layer]
    assert names == [("in", [], ["x"]),
                     ("x_in_0_split", ["x"], ["x_in_0_split_0", "x_in_0_split_1"]),
                     ("r1", ["x_in_0_split_0"], ["r1"]),
                     ("r2", ["x_in_0_split_1"], ["r2"])]


TWO_HEADS = """
force_backward: {force}
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
layer {{ name: "label" type: "Input" top: "label" input_param {{ shape {{ dim: 2 }} }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        param {{ lr_mult: {lr} }} param {{ lr_mult: {lr} }}
        inner_product_param {{ num_output: 4 weight_filler {{ type: "gaussian" std: 1 }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "fc" top: "fc" }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
layer {{ name: "side" type: "InnerProduct" bottom: "data" top: "side" inner_product_param {{ num_output: 2 }} }}
"""


def feed(net):
    rng = np.random.default_rng(3)
    net.blobs["data"].data[...] = rng.standard_normal((2, 3))
    net.blobs["label"].data[...] = [1, 3]


def test_backward_only_where_a_loss_is_reached():
    net = make_net(TWO_HEADS.format(force="false", lr=1))
    need = dict(zip(net._layer_names, net.layer_need_backward))
    assert need["fc"] and need["loss"] and need["relu"]
    assert not need["side"]                      # reaches no loss
    assert not need["data"]
    feed(net)
    net.forward()
    net.backward()
    assert np.abs(net.params["fc"][0].diff).sum() > 0
    assert not net.blobs["data"].diff.any()      # inputs get no gradient without force_backward


def test_force_backward_reaches_inputs():
    net = make_net(TWO_HEADS.format(force="true", lr=1))
    feed(net)
    net.forward()
    diffs = net.backward()
    assert np.abs(diffs["data"]).sum() > 0


def test_frozen_params_get_no_gradient():
    net = make_net(TWO_HEADS.format(force="false", lr=0))
    feed(net)
    net.forward()
    net.backward()
    assert not net.params["fc"][0].diff.any()
    assert not dict(zip(net._layer_names, net.layer_need_backward))["fc"]


def test_force_backward_computes_frozen_gradients_as_caffe():
    # Caffe's force_backward also turns on param_propagate_down for every param.
    net = make_net(TWO_HEADS.format(force="true", lr=0))
    feed(net)
    net.forward()
    net.backward()
    assert np.abs(net.params["fc"][0].diff).sum() > 0
    assert np.abs(net.blobs["data"].diff).sum() > 0


def test_loss_weight_defaults_and_forward_loss():
    net = make_net(TWO_HEADS.format(force="false", lr=1))
    feed(net)
    out = net.forward()
    assert net.blob_loss_weights["loss"] == 1.0 and net.blob_loss_weights["side"] == 0.0
    assert net.loss == pytest.approx(float(out["loss"]))
    assert sorted(out) == ["loss", "side"]


def test_propagate_down_false_stops_gradient():
    text = TWO_HEADS.format(force="false", lr=1).replace(
        'bottom: "fc" bottom: "label" top: "loss"',
        'bottom: "fc" bottom: "label" top: "loss" propagate_down: false propagate_down: false')
    net = make_net(text)
    feed(net)
    net.forward()
    net.backward()
    assert not net.params["fc"][0].diff.any()


def test_in_place_layer_shares_blob():
    net = make_net(TWO_HEADS.format(force="false", lr=1))
    layer = list(net.layer_dict).index("relu")
    assert net.bottom_vecs[layer][0] is net.top_vecs[layer][0]


def test_top_produced_twice_is_an_error():
    text = """
layer { name: "a" type: "Input" top: "x" input_param { shape { dim: 1 } } }
layer { name: "b" type: "Input" top: "x" input_param { shape { dim: 1 } } }
"""
    with pytest.raises(sppcaffe.LayerError, match="layer 'b'.*'x'.*multiple sources"):
        make_net(text)


def test_inputs_outputs_and_names():
    net = make_net(TWO_HEADS.format(force="false", lr=1))
    assert net.inputs == ["data", "label"]
    assert net.outputs == ["loss", "side"]
    assert net.top_names["fc"] == ["fc"]
    assert net.bottom_names["loss"] == ["fc", "label"]
    assert list(net.params) == ["fc", "side"]
    assert isinstance(net.layer_dict["fc"], sppcaffe.Layer)


def test_forward_reshapes_for_new_input_size():
    net = make_net("""
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "spp" type: "SPP" bottom: "conv" top: "spp"
        spp_param { method: ADAPTIVE levels: 3 levels: 1 } }
""")
    rng = np.random.default_rng(0)
    for shape in [(1, 2, 8, 8), (1, 2, 13, 9), (2, 2, 20, 31)]:
        out = net.forward(data=rng.standard_normal(shape))["spp"]
        assert out.shape == (shape[0], 3 * (9 + 1))
        assert net.blobs["conv"].shape == (shape[0], 3, shape[2] - 2, shape[3] - 2)


def test_blob_data_is_writable_and_reshape_keeps_it():
    net = make_net(TWO_HEADS.format(force="false", lr=1))
    blob = net.blobs["data"]
    blob.data[...] = 7
    same = blob.data
    blob.reshape(2, 3)
    assert blob.data is same and (blob.data == 7).all()
    blob.reshape(4, 3)
    assert blob.shape == (4, 3)


def test_memory_data_set_input_arrays():
    net = make_net("""
layer { name: "mem" type: "MemoryData" top: "data" top: "label"
        memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }
""")
    data = np.arange(16, dtype=np.float32).reshape(4, 1, 2, 2)
    net.set_input_arrays(data, np.array([0, 1, 2, 3]))
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, data[:2])
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, [2, 3])
