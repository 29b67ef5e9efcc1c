"""Tests of sppcaffe.io.upgrade against hand-written expected prototxts
(several adapted from BVLC's src/caffe/test/test_upgrade_proto.cpp)."""
import logging
from pathlib import Path

import pytest
from google.protobuf import text_format

from sppcaffe.io import upgrade as up
from sppcaffe.proto import caffe_pb2 as pb

DATA = Path(__file__).parent / "data" / "upgrade"


def load(name):
    return text_format.Parse((DATA / name).read_text(), pb.NetParameter())


def net(text):
    return text_format.Parse(text, pb.NetParameter())


def solver(text):
    return text_format.Parse(text, pb.SolverParameter())


def copy(msg):
    new = type(msg)()
    new.CopyFrom(msg)
    return new


def assert_same(actual, expected):
    # Text first, for a readable diff; then equality, which also compares presence.
    assert text_format.MessageToString(actual) == text_format.MessageToString(expected)
    assert actual == expected


# ---------------------------------------------------------------------------
# Whole pipeline
# ---------------------------------------------------------------------------

FULL_CASES = [
    ("v0_padding.prototxt", "v0_padding_v2.prototxt"),
    ("v0_all_params.prototxt", "v0_all_params_v2.prototxt"),
    ("v1_lenet.prototxt", "v1_lenet_v2.prototxt"),
    ("input_dim.prototxt", "input_dim_v2.prototxt"),
    ("input_shape_v1.prototxt", "input_shape_v1_v2.prototxt"),
    ("batch_norm.prototxt", "batch_norm_v2.prototxt"),
]


@pytest.mark.parametrize("old, new", FULL_CASES)
def test_upgrade_net_matches_expected(old, new):
    original = load(old)
    pristine = copy(original)
    assert up.net_needs_upgrade(original)
    upgraded = up.upgrade_net(original, source=old)
    assert_same(upgraded, load(new))
    assert original == pristine, "upgrade_net must not modify its argument"


@pytest.mark.parametrize("_, new", FULL_CASES)
def test_upgrade_is_idempotent(_, new):
    current = load(new)
    # As in Caffe, three BatchNorm param specs always read as "old style",
    # even once zeroed; upgrading them again changes nothing.
    assert up.net_needs_upgrade(current) == (new == "batch_norm_v2.prototxt")
    again = up.upgrade_net(current)
    assert again is not current
    assert_same(again, current)


def test_upgrade_logs_source(caplog):
    with caplog.at_level(logging.INFO, logger=up.__name__):
        up.upgrade_net(load("v1_lenet.prototxt"), source="lenet_v1.prototxt")
    assert "lenet_v1.prototxt: upgrading deprecated V1LayerParameter layers" in caplog.messages
    assert "lenet_v1.prototxt: upgrading deprecated data transformation fields" in caplog.messages


# ---------------------------------------------------------------------------
# Single steps, as BVLC's PaddingLayerUpgradeTest / NetUpgradeTest run them
# ---------------------------------------------------------------------------

def test_padding_layers_fold_into_conv_and_pool():
    merged = load("v0_padding.prototxt")
    up.upgrade_v0_padding_layers(merged)
    assert_same(merged, load("v0_padding_merged.prototxt"))
    twice = copy(merged)
    up.upgrade_v0_padding_layers(twice)
    assert_same(twice, merged)


def test_padding_layer_reading_a_net_input():
    upgraded = up.upgrade_net(net("""
        input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
        layers { layer { name: "pad" type: "padding" pad: 1 } bottom: "data" top: "p" }
        layers { layer { name: "c" type: "conv" num_output: 2 kernelsize: 3 } bottom: "p" top: "c" }
    """))
    assert [layer.name for layer in upgraded.layer] == ["input", "c"]
    conv = upgraded.layer[1]
    assert list(conv.bottom) == ["data"]
    assert list(conv.convolution_param.pad) == [1]


@pytest.mark.parametrize("v0, v1", [
    ("v0_padding.prototxt", "v0_padding_v1.prototxt"),
    ("v0_all_params.prototxt", "v0_all_params_v1.prototxt"),
])
def test_v0_to_v1_step(v0, v1):
    converted = load(v0)
    assert up.net_needs_v0_to_v1_upgrade(converted)
    up.upgrade_v0_net(converted)
    assert_same(converted, load(v1))
    assert not up.net_needs_v0_to_v1_upgrade(converted)


def test_v1_to_v2_step():
    converted = load("v0_padding_v1.prototxt")
    up.upgrade_v1_net(converted)
    assert_same(converted, load("v0_padding_v2.prototxt"))


def test_v0_upgrade_keeps_only_v0_net_fields():
    upgraded = up.upgrade_net(net("""
        name: "old" force_backward: true debug_info: true
        layers { layer { name: "r" type: "relu" } bottom: "x" top: "x" }
        input: "x"
    """))
    assert upgraded.name == "old" and upgraded.force_backward
    assert not upgraded.HasField("debug_info")  # not a V0 field: Caffe drops it
    # An input without dims, as in old .caffemodel files, is simply dropped.
    assert not upgraded.input
    assert [layer.name for layer in upgraded.layer] == ["r"]


V0_TYPES = [
    ("accuracy", "Accuracy"), ("bnll", "BNLL"), ("concat", "Concat"),
    ("conv", "Convolution"), ("data", "Data"), ("dropout", "Dropout"),
    ("euclidean_loss", "EuclideanLoss"), ("flatten", "Flatten"), ("hdf5_data", "HDF5Data"),
    ("hdf5_output", "HDF5Output"), ("im2col", "Im2col"), ("images", "ImageData"),
    ("infogain_loss", "InfogainLoss"), ("innerproduct", "InnerProduct"), ("lrn", "LRN"),
    ("multinomial_logistic_loss", "MultinomialLogisticLoss"), ("pool", "Pooling"),
    ("relu", "ReLU"), ("sigmoid", "Sigmoid"), ("softmax", "Softmax"),
    ("softmax_loss", "SoftmaxWithLoss"), ("split", "Split"), ("tanh", "TanH"),
    ("window_data", "WindowData"),
]


@pytest.mark.parametrize("v0_type, v2_type", V0_TYPES)
def test_v0_layer_type_strings(v0_type, v2_type):
    upgraded = up.upgrade_net(net(f'layers {{ layer {{ name: "l" type: "{v0_type}" }} }}'))
    assert [(layer.name, layer.type) for layer in upgraded.layer] == [("l", v2_type)]


def test_every_v1_layer_type_has_a_v2_name():
    names = {}
    for enum_name, value in pb.V1LayerParameter.LayerType.items():
        upgraded = up.upgrade_net(net(f"layers {{ type: {enum_name} }}"))
        names[enum_name] = upgraded.layer[0].type
    assert names.pop("NONE") == ""
    assert all(names.values()) and len(set(names.values())) == len(names)
    assert {k: names[k] for k in ("ABSVAL", "DECONVOLUTION", "HDF5_DATA", "SOFTMAX_LOSS",
                                  "SIGMOID_CROSS_ENTROPY_LOSS", "TANH", "THRESHOLD")} == {
        "ABSVAL": "AbsVal", "DECONVOLUTION": "Deconvolution", "HDF5_DATA": "HDF5Data",
        "SOFTMAX_LOSS": "SoftmaxWithLoss", "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
        "TANH": "TanH", "THRESHOLD": "Threshold"}


# The per-layer messages BVLC's UpgradeV1LayerParameter copies, one by one.
CAFFE_V1_COPIED_PARAMS = [
    "accuracy_param", "argmax_param", "concat_param", "contrastive_loss_param",
    "convolution_param", "data_param", "dropout_param", "dummy_data_param", "eltwise_param",
    "exp_param", "hdf5_data_param", "hdf5_output_param", "hinge_loss_param",
    "image_data_param", "infogain_loss_param", "inner_product_param", "lrn_param",
    "memory_data_param", "mvn_param", "pooling_param", "power_param", "relu_param",
    "sigmoid_param", "softmax_param", "slice_param", "tanh_param", "threshold_param",
    "window_data_param", "transform_param", "loss_param",
]


def test_v1_upgrade_copies_every_layer_param():
    v1 = net('layers { name: "all" type: CONVOLUTION }')
    for field in CAFFE_V1_COPIED_PARAMS:
        # Present, and distinguishable from a default-constructed message.
        getattr(v1.layers[0], field).SetInParent()
    v1.layers[0].convolution_param.num_output = 7
    v1.layers[0].loss_param.ignore_label = 3
    layer = up.upgrade_net(v1).layer[0]
    assert sorted(f.name for f, _ in layer.ListFields() if f.name.endswith("_param")) == \
        sorted(CAFFE_V1_COPIED_PARAMS)
    assert layer.convolution_param.num_output == 7 and layer.loss_param.ignore_label == 3


def test_data_upgrade_only_looks_at_v1_layers():
    # Caffe's NetNeedsDataUpgrade ignores V2 `layer` entries, so does ours.
    modern = net('layer { name: "d" type: "Data" data_param { source: "x" scale: 0.5 } }')
    assert not up.net_needs_data_upgrade(modern)
    assert not up.net_needs_upgrade(modern)
    assert up.upgrade_net(modern).layer[0].data_param.scale == 0.5


# ---------------------------------------------------------------------------
# Unconvertible definitions
# ---------------------------------------------------------------------------

ERROR_CASES = {
    "v0 field on wrong type": (
        'layers { layer { name: "r" type: "relu" num_output: 3 } }',
        r"layer 'r': V0 field 'num_output' has no meaning for layer type 'relu'"),
    "v0 pool method on conv": (
        'layers { layer { name: "c" type: "conv" pool: AVE } }',
        r"layer 'c': V0 field 'pool' .* type 'conv'"),
    "v0 source on conv": (
        'layers { layer { name: "c" type: "conv" source: "db" } }',
        r"layer 'c': V0 field 'source' .* type 'conv'"),
    "v0 hdf5_output_param on data": (
        'layers { layer { name: "d" type: "data" hdf5_output_param { file_name: "f" } } }',
        r"layer 'd': V0 field 'hdf5_output_param' .* type 'data'"),
    "v0 unknown type": (
        'layers { layer { name: "m" type: "magic" } }',
        r"layer 'm': unknown V0 layer type 'magic' \(field 'type'\)"),
    "v0 unknown bottom": (
        'layers { layer { name: "r" type: "relu" } bottom: "nope" top: "r" }',
        r"layer 'r': bottom 'nope' is neither a net input nor the top of an earlier layer"),
    "padding into relu": (
        'input: "x" layers { layer { name: "pad" type: "padding" pad: 1 } bottom: "x" top: "p" }'
        ' layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }',
        r"layer 'r': reads padding layer 'pad' but has type 'relu'"),
    "padding into two-bottom conv": (
        'input: "x" layers { layer { name: "pad" type: "padding" pad: 1 } bottom: "x" top: "p" }'
        ' layers { layer { name: "c" type: "conv" } bottom: "p" bottom: "x" top: "c" }',
        r"layer 'c': reads padding layer 'pad' but has 2 bottoms"),
    "padding with two tops": (
        'input: "x" layers { layer { name: "pad" type: "padding" } bottom: "x" top: "p" top: "q" }'
        ' layers { layer { name: "c" type: "conv" } bottom: "p" top: "c" }',
        r"padding layer 'pad': needs exactly one bottom and one top \(has 1 and 2\)"),
    "layer and layers mixed": (
        'layer { name: "new" type: "ReLU" } layers { name: "old" type: RELU }',
        r"net mixes 1 current 'layer' entries with deprecated 'layers' entries"),
    "input_dim too short": (
        'input: "a" input: "b" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4 input_dim: 5',
        r"input 'b': 'input_dim' needs 4 values per input \(2 inputs, 5 values\)"),
    "input_shape missing": (
        'input: "a" input: "b" input_shape { dim: 1 }',
        r"input 'b': no 'input_shape' entry for it \(2 inputs, 1 shapes\)"),
}


@pytest.mark.parametrize("text, message", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_unconvertible_nets_raise(text, message):
    with pytest.raises(ValueError, match=r"^bad\.prototxt: " + message):
        up.upgrade_net(net(text), source="bad.prototxt")


def test_error_names_layers_by_index_when_unnamed():
    with pytest.raises(up.UpgradeError, match=r"^<string>: layer #1: V0 field 'dropout_ratio'"):
        up.upgrade_net(net('layers { layer { name: "ok" type: "relu" } }'
                           'layers { layer { type: "relu" dropout_ratio: 0.1 } }'))


# ---------------------------------------------------------------------------
# Solvers
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("enum_name, type_name", [
    ("SGD", "SGD"), ("NESTEROV", "Nesterov"), ("ADAGRAD", "AdaGrad"),
    ("RMSPROP", "RMSProp"), ("ADADELTA", "AdaDelta"), ("ADAM", "Adam"),
])
def test_solver_type_enum_becomes_string(enum_name, type_name):
    old = solver(f'net: "train.prototxt" base_lr: 0.01 solver_type: {enum_name}')
    pristine = copy(old)
    assert up.solver_needs_upgrade(old)
    new = up.upgrade_solver(old, source="solver.prototxt")
    assert_same(new, solver(f'net: "train.prototxt" base_lr: 0.01 type: "{type_name}"'))
    assert not new.HasField("solver_type") and not up.solver_needs_upgrade(new)
    assert old == pristine


@pytest.mark.parametrize("enum_name, type_name", [("ADAM", "Adam"), ("SGD", "Nesterov")])
def test_solver_with_both_type_fields_is_rejected(enum_name, type_name):
    # Caffe refuses both fields even when they agree.
    both = solver(f'solver_type: {enum_name} type: "{type_name}"')
    with pytest.raises(ValueError, match=rf"^s\.prototxt: both the deprecated 'solver_type' "
                                         rf"\({enum_name}\) and 'type' \('{type_name}'\) are set"):
        up.upgrade_solver(both, source="s.prototxt")


def test_current_solver_is_copied_unchanged():
    current = solver('type: "AdaDelta" momentum: 0.95 delta: 1e-6')
    assert not up.solver_needs_upgrade(current)
    again = up.upgrade_solver(current)
    assert again is not current
    assert_same(again, current)
