"""Nets in the SPP-net release's V0 dialect and with Caffe-fork fields
(sppcaffe/io/dialects.py): read, built, upgraded, and computing what their
modern form computes.

The release (ShaoqingRen/SPP_net, model-defs/Zeiler_conv5.prototxt and
pascal_finetune_fc_spm_{train,test}.prototxt) writes V0 `layers { layer {
name type conv_param {...} blobs_lr ... } bottom top }` blocks.  Its licence
forbids commercial use, so the nets below are our own, written in the same
dialect.  Its ZF-5 conv5 net builds the pyramid by hand from plain pooling
layers on the 13x13 conv5 map (224x224 input), read from that file:
pool5_spm6 kernel 3 stride 2, pool5_spm3 kernel 5 stride 4, pool5_spm2
kernel 7 stride 7, pool5_spm1 kernel 13 stride 13, each flattened, then
concatenated in the order spm1, spm2, spm3, spm6.
"""
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format

import sppcaffe
from sppcaffe import io
from sppcaffe.cli import time_net
from sppcaffe.proto import caffe_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A small net using all eleven V0 type strings of the release, with its
# hand-built two-level pyramid on pool1's 10x10 map.
RELEASE_NET = """\
name: "release_dialect"
input: "data"
input_dim: 2
input_dim: 3
input_dim: 20
input_dim: 20
input: "label"
input_dim: 2
input_dim: 1
input_dim: 1
input_dim: 1
layers {
 layer {
   name: "conv1"
   type: "conv"
   conv_param {
     num_output: 4
     kernel_size: 3
     pad: 1
     stride: 1
     weight_filler { type: "gaussian" std: 0.1 }
     bias_filler { type: "constant" value: 0.1 }
   }
   blobs_lr: 1.0
   blobs_lr: 2.0
   weight_decay: 1.
   weight_decay: 0.
 }
 bottom: "data"
 top: "conv1"
}
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers {
  layer { name: "norm1" type: "lrn"
          lrn_param { local_size: 3 alpha: 0.00005 beta: 0.75 norm_region: WITHIN_CHANNEL } }
  bottom: "conv1" top: "norm1"
}
layers {
  layer { name: "pool1" type: "pool" pool_param { kernel_size: 3 stride: 2 pool: MAX } }
  bottom: "norm1" top: "pool1"
}
layers { layer { name: "spm2" type: "pool" pool_param { kernel_size: 5 stride: 5 pool: MAX } }
         bottom: "pool1" top: "spm2" }
layers { layer { name: "spm2_flatten" type: "flatten" } bottom: "spm2" top: "spm2_flatten" }
layers { layer { name: "spm1" type: "pool" pool_param { kernel_size: 10 stride: 10 pool: AVE } }
         bottom: "pool1" top: "spm1" }
layers { layer { name: "spm1_flatten" type: "flatten" } bottom: "spm1" top: "spm1_flatten" }
layers { layer { name: "spm" type: "concat" concat_param { concat_dim: 1 } }
         bottom: "spm1_flatten" bottom: "spm2_flatten" top: "spm" }
layers {
  layer { name: "fc6" type: "inner_product"
          inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.1 } }
          blobs_lr: 1 blobs_lr: 2 }
  bottom: "spm" top: "fc6"
}
layers { layer { name: "relu6" type: "relu" } bottom: "fc6" top: "fc6" }
layers { layer { name: "drop6" type: "dropout" dropout_param { dropout_ratio: 0.5 } }
         bottom: "fc6" top: "fc6" }
layers {
  layer { name: "fc7" type: "inner_product"
          inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 }
                                bias_filler { type: "constant" value: 0.2 } } }
  bottom: "fc6" top: "fc7"
}
layers { layer { name: "prob" type: "softmax" } bottom: "fc7" top: "prob" }
layers { layer { name: "loss" type: "softmax_loss" } bottom: "fc7" bottom: "label" top: "loss" }
layers { layer { name: "accuracy" type: "accuracy" } bottom: "prob" bottom: "label"
         top: "accuracy" }
"""

MODERN_TYPES = [
    ("input", "Input"), ("conv1", "Convolution"), ("relu1", "ReLU"), ("norm1", "LRN"),
    ("pool1", "Pooling"), ("spm2", "Pooling"), ("spm2_flatten", "Flatten"), ("spm1", "Pooling"),
    ("spm1_flatten", "Flatten"), ("spm", "Concat"), ("fc6", "InnerProduct"), ("relu6", "ReLU"),
    ("drop6", "Dropout"), ("fc7", "InnerProduct"), ("prob", "Softmax"),
    ("loss", "SoftmaxWithLoss"), ("accuracy", "Accuracy"),
]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    return {"data": rng.standard_normal((2, 3, 20, 20)).astype(np.float32),
            "label": np.array([0, 2], np.float32).reshape(2, 1, 1, 1)}


def run_upgrade_tool(source, out):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "upgrade_net_proto_text"),
                           str(source), str(out)], capture_output=True, text=True)


def copy_params(source, target):
    assert list(source.params) == list(target.params)
    for name, blobs in source.params.items():
        for src, dst in zip(blobs, target.params[name]):
            dst.data[...] = src.data


# ---------------------------------------------------------------------------
# The release's dialect
# ---------------------------------------------------------------------------

def test_all_eleven_release_types_read_into_the_modern_form(tmp_path):
    path = write(tmp_path, "release.prototxt", RELEASE_NET)
    net = io.read_net(path)
    assert [(lp.name, lp.type) for lp in net.layer] == MODERN_TYPES
    assert not net.layers
    layers = {lp.name: lp for lp in net.layer}
    conv = layers["conv1"]
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    assert (conv.convolution_param.num_output, list(conv.convolution_param.kernel_size),
            list(conv.convolution_param.pad), list(conv.convolution_param.stride)) == \
        (4, [3], [1], [1])
    assert conv.convolution_param.weight_filler.std == pytest.approx(0.1)
    assert conv.convolution_param.bias_filler.value == pytest.approx(0.1)
    assert layers["norm1"].lrn_param.norm_region == caffe_pb2.LRNParameter.WITHIN_CHANNEL
    assert layers["spm1"].pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    assert layers["spm"].concat_param.concat_dim == 1
    assert layers["drop6"].dropout_param.dropout_ratio == pytest.approx(0.5)
    assert [p.lr_mult for p in layers["fc6"].param] == [1, 2]
    assert layers["fc7"].inner_product_param.num_output == 3
    assert list(layers["input"].input_param.shape[1].dim) == [2, 1, 1, 1]


def test_release_layer_upgrades_to_the_expected_text():
    upgraded = io.upgrade_net(io.parse_net_text("""
        layers { layer { name: "c" type: "conv" conv_param { num_output: 2 kernel_size: 3 }
                         blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 }
                 bottom: "x" top: "c" }
        input: "x"
    """))
    expected = text_format.Parse("""
        layer { name: "c" type: "Convolution" bottom: "x" top: "c"
                param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
                convolution_param { num_output: 2 kernel_size: 3 } }
    """, caffe_pb2.NetParameter())
    assert io.to_text(upgraded) == io.to_text(expected)
    assert upgraded == expected


def test_release_net_computes_what_its_upgraded_form_computes(tmp_path):
    release = write(tmp_path, "release.prototxt", RELEASE_NET)
    upgraded_text = io.to_text(io.read_net(release))
    # The upgraded text is for BVLC's schema (protos/caffe.proto is BVLC's): parse it strictly.
    text_format.Parse(upgraded_text, caffe_pb2.NetParameter())
    modern = write(tmp_path, "modern.prototxt", upgraded_text)

    for phase in (sppcaffe.TEST, sppcaffe.TRAIN):
        nets = [sppcaffe.Net(path, phase) for path in (release, modern)]
        copy_params(*nets)
        for net in nets:
            sppcaffe.random.set_random_seed(3)      # the same Dropout mask in TRAIN
            net.forward(**inputs())
            net.backward()
        a, b = nets
        assert list(a.blobs) == list(b.blobs)
        for name in a.blobs:
            np.testing.assert_array_equal(a.blobs[name].data, b.blobs[name].data, err_msg=name)
        for name in a.params:
            for pa, pb in zip(a.params[name], b.params[name]):
                np.testing.assert_array_equal(pa.diff, pb.diff, err_msg=name)
    assert a.blobs["spm"].data.shape == (2, 4 * (1 + 4))
    assert float(b.blobs["loss"].data) > 0


def test_release_style_finetuning_nets_train_through_the_solver(tmp_path):
    # As the release's pascal_finetune_fc_spm_{train,test}: pooled features
    # as an (N, D, 1, 1) input, labels (N, 1, 1, 1); softmax_loss in the
    # train net, softmax + accuracy in the test net.
    head = ('input: "data" input_dim: 4 input_dim: 20 input_dim: 1 input_dim: 1\n'
            'input: "label" input_dim: 4 input_dim: 1 input_dim: 1 input_dim: 1\n'
            'layers { layer { name: "fc8" type: "inner_product" inner_product_param {\n'
            '  num_output: 3 weight_filler { type: "gaussian" std: 0.01 } }\n'
            '  blobs_lr: 1. blobs_lr: 2. weight_decay: 1. weight_decay: 0. }\n'
            '  bottom: "data" top: "fc8" }\n')
    write(tmp_path, "train.prototxt", head + 'layers { layer { name: "loss" type: "softmax_loss" }'
          ' bottom: "fc8" bottom: "label" top: "loss" }\n')
    write(tmp_path, "test.prototxt", head + 'layers { layer { name: "prob" type: "softmax" }'
          ' bottom: "fc8" top: "prob" }\nlayers { layer { name: "accuracy" type: "accuracy" }'
          ' bottom: "prob" bottom: "label" top: "accuracy" }\n')
    solver_path = write(tmp_path, "solver.prototxt",
                        'train_net: "train.prototxt"\ntest_net: "test.prototxt"\ntest_iter: 1\n'
                        'test_interval: 1000\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 2\n'
                        'display: 0\nsnapshot_after_train: false\nsolver_mode: CPU\n')
    solver = sppcaffe.get_solver(solver_path)
    net = solver.net
    net.blobs["data"].data[...] = np.random.default_rng(0).standard_normal((4, 20, 1, 1))
    net.blobs["label"].data[...] = np.array([0, 1, 2, 1]).reshape(4, 1, 1, 1)
    before = net.params["fc8"][1].data.copy()
    solver.step(1)
    assert not np.array_equal(net.params["fc8"][1].data, before)
    assert "accuracy" in solver.test_nets[0].blobs


def test_time_net_reads_the_dialect(tmp_path, capsys):
    path = write(tmp_path, "release.prototxt", RELEASE_NET)
    assert time_net.main(["--model", path, "--iterations", "1"]) == 0
    assert "Average Forward-Backward" in capsys.readouterr().out


def test_upgrade_tool_writes_a_modern_file(tmp_path):
    source = write(tmp_path, "release.prototxt", RELEASE_NET)
    out = tmp_path / "modern.prototxt"
    result = run_upgrade_tool(source, out)
    assert result.returncode == 0, result.stderr
    assert "reading the SPP-net release's V0 dialect" in result.stderr
    written = text_format.Parse(out.read_text(), caffe_pb2.NetParameter())
    assert not written.layers and [(lp.name, lp.type) for lp in written.layer] == MODERN_TYPES
    assert written == io.read_net(source)


# ---------------------------------------------------------------------------
# The release's ZF-5 conv5 net with its hand-built pyramid, against
# models/zf5_spp with method PAPER
# ---------------------------------------------------------------------------

def v0_layer(name, kind, bottom, top, body=""):
    return (f'layers {{\n layer {{\n   name: "{name}"\n   type: "{kind}"\n{body}'
            f' }}\n bottom: "{bottom}"\n top: "{top}"\n}}\n')


def conv(name, bottom, num_output, kernel, pad, stride):
    body = (f"   conv_param {{\n     num_output: {num_output}\n     kernel_size: {kernel}\n"
            f"     pad: {pad}\n     stride: {stride}\n   }}\n   blobs_lr: 1.0\n   blobs_lr: 2.0\n")
    return v0_layer(name, "conv", bottom, name, body)


def pool(name, bottom, kernel, stride):
    return v0_layer(name, "pool", bottom, name,
                    f"   pool_param {{ kernel_size: {kernel} stride: {stride} pool: MAX }}\n")


def flatten(bottom):
    return v0_layer(f"{bottom}_flatten", "flatten", bottom, f"{bottom}_flatten")


LRN = "   lrn_param { local_size: 3 alpha: 0.00005 beta: 0.75 norm_region: WITHIN_CHANNEL }\n"
PYRAMID = {6: (3, 2), 3: (5, 4), 2: (7, 7), 1: (13, 13)}   # bins -> (kernel, stride), as released
ZF_RELEASE_NET = (
    'name: "zf5_release_dialect"\ninput: "data"\n'
    + "".join(f"input_dim: {d}\n" for d in (1, 3, 224, 224))
    + conv("conv1", "data", 96, 7, 1, 2) + v0_layer("relu1", "relu", "conv1", "conv1")
    + v0_layer("norm1", "lrn", "conv1", "norm1", LRN) + pool("pool1", "norm1", 3, 2)
    + conv("conv2", "pool1", 256, 5, 0, 2) + v0_layer("relu2", "relu", "conv2", "conv2")
    + v0_layer("norm2", "lrn", "conv2", "norm2", LRN) + pool("pool2", "norm2", 3, 2)
    + conv("conv3", "pool2", 384, 3, 1, 1) + v0_layer("relu3", "relu", "conv3", "conv3")
    + conv("conv4", "conv3", 384, 3, 1, 1) + v0_layer("relu4", "relu", "conv4", "conv4")
    + conv("conv5", "conv4", 256, 3, 1, 1) + v0_layer("relu5", "relu", "conv5", "conv5")
    + "".join(pool(f"pool5_spm{n}", "conv5", k, s) + flatten(f"pool5_spm{n}")
              for n, (k, s) in PYRAMID.items())
    + 'layers {\n layer {\n   name: "pool5_spm"\n   type: "concat"\n'
      '   concat_param { concat_dim: 1 }\n }\n'
    + "".join(f' bottom: "pool5_spm{n}_flatten"\n' for n in (1, 2, 3, 6))
    + ' top: "pool5_spm"\n}\n')


def zf5_spp_paper_to_spp():
    """models/zf5_spp's deploy net up to its SPP layer, with method PAPER."""
    param = io.read_net(os.path.join(ROOT, "models", "zf5_spp", "deploy.prototxt"))
    names = [lp.name for lp in param.layer]
    del param.layer[names.index("spp") + 1:]
    spp = param.layer[-1].spp_param
    assert list(spp.levels) == [6, 3, 2, 1]
    spp.method = caffe_pb2.PAPER
    return param


def max_bins(conv5, windows):
    """(C, n, n) maxima of conv5 (1, C, 13, 13) over windows x windows, flattened."""
    return np.stack([np.stack([conv5[0, :, r0:r1, c0:c1].max(axis=(1, 2)) for c0, c1 in windows],
                              axis=1) for r0, r1 in windows], axis=1).ravel()


def test_zf5_release_pyramid_against_zf5_spp_paper(tmp_path):
    release = sppcaffe.Net(write(tmp_path, "zf5.prototxt", ZF_RELEASE_NET), sppcaffe.TEST)
    paper = sppcaffe.Net(zf5_spp_paper_to_spp(), sppcaffe.TEST)
    rng = np.random.default_rng(5)
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        weight, bias = paper.params[name]
        weight.data[...] = rng.standard_normal(weight.data.shape) * np.sqrt(
            2.0 / np.prod(weight.data.shape[1:]))
        bias.data[...] = rng.uniform(-0.1, 0.1, bias.data.shape)
    copy_params(paper, release)
    image = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    release.forward(data=image)
    paper.forward(data=image)

    spm = release.blobs["pool5_spm"].data
    assert spm.shape == (1, 12800)
    conv5 = release.blobs["conv5"].data
    assert conv5.shape == (1, 256, 13, 13)
    np.testing.assert_array_equal(conv5, paper.blobs["conv5"].data)

    # Both outputs are levels of (channel, row, column) maxima; the release
    # concatenates them as 1, 2, 3, 6 bins per side, the SPP layer as 6, 3, 2, 1.
    def levels(vector, order):
        sizes = [256 * n * n for n in order]
        starts = np.cumsum([0] + sizes)
        return {n: vector[0, s:s + size] for n, s, size in zip(order, starts, sizes)}
    released, spp = levels(spm, (1, 2, 3, 6)), levels(paper.blobs["spp"].data, (6, 3, 2, 1))
    # Same geometry (PAPER: window ceil(13/n), stride floor(13/n)), same numbers:
    for n in (6, 3, 1):
        np.testing.assert_array_equal(released[n], spp[n], err_msg=f"{n}x{n} level")
    # Not the same at n = 2: the release pools 7x7 windows with stride 7, i.e.
    # rows/columns [0, 7) and [7, 13); PAPER's stride floor(13/2) = 6 gives
    # [0, 7) and [6, 13), so row and column 6 fall in both bins there.
    np.testing.assert_array_equal(released[2], max_bins(conv5, [(0, 7), (7, 13)]))
    np.testing.assert_array_equal(spp[2], max_bins(conv5, [(0, 7), (6, 13)]))
    assert np.any(released[2] != spp[2])


# ---------------------------------------------------------------------------
# Fork fields: ceil_mode
# ---------------------------------------------------------------------------

def pooling_net(option):
    return ('name: "densenet_stem"\ninput: "data"\ninput_dim: 1\ninput_dim: 2\n'
            'input_dim: 8\ninput_dim: 8\n'
            'layer {\n  name: "pool1"\n  type: "Pooling"\n  bottom: "data"\n  top: "pool1"\n'
            f'  pooling_param {{\n    pool: MAX\n    kernel_size: 3\n    stride: 2\n    pad: 1\n'
            f'    {option}\n  }}\n}}\n')


@pytest.mark.parametrize("ceil_mode, round_mode, side", [
    ("false", "FLOOR", 4),      # floor((8 + 2 - 3) / 2) + 1
    ("true", "CEIL", 5),        # ceil(...) + 1
])
def test_ceil_mode_reads_as_round_mode(tmp_path, caplog, ceil_mode, round_mode, side):
    fork = write(tmp_path, "fork.prototxt", pooling_net(f"ceil_mode: {ceil_mode}"))
    bvlc = write(tmp_path, "bvlc.prototxt", pooling_net(f"round_mode: {round_mode}"))
    with caplog.at_level(logging.WARNING, logger="sppcaffe.io.dialects"):
        assert io.read_net(fork) == io.read_net(bvlc)
    notes = [r.getMessage() for r in caplog.records if r.name == "sppcaffe.io.dialects"]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert fork in notes[0] and "PR #3057" in notes[0] and "layer 'pool1'" in notes[0]

    image = np.random.default_rng(1).standard_normal((1, 2, 8, 8)).astype(np.float32)
    outputs = []
    for path in (fork, bvlc):
        net = sppcaffe.Net(path, sppcaffe.TEST)
        net.forward(data=image)
        outputs.append(net.blobs["pool1"].data.copy())
    assert outputs[0].shape == (1, 2, side, side)
    np.testing.assert_array_equal(*outputs)


@pytest.mark.parametrize("text", [
    'layers { name: "p" type: POOLING pooling_param { kernel_size: 2 ceil_mode: false } }',
    'layers { layer { name: "p" type: "pool" pool_param { kernel_size: 2 ceil_mode: false } } }',
], ids=["V1", "release"])
def test_ceil_mode_in_v1_and_release_layers(text):
    net = io.upgrade_net(io.parse_net_text(text))
    assert [(lp.name, lp.type) for lp in net.layer] == [("p", "Pooling")]
    assert net.layer[0].pooling_param.round_mode == caffe_pb2.PoolingParameter.FLOOR
    assert net.layer[0].pooling_param.kernel_size == 2


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

UNKNOWN_FIELDS = {
    "in a release layer": (
        'layers {\n  layer {\n    name: "c"\n    type: "conv"\n    conv_parm { num_output: 2 }\n'
        '  }\n}\n', 5, "V0LayerParameter", "conv_parm"),
    "in a release sub-message": (
        'layers {\n  layer {\n    name: "c"\n    type: "conv"\n    conv_param {\n'
        '      kernelsize: 3\n    }\n  }\n}\n', 6, "ConvolutionParameter", "kernelsize"),
    "in pooling_param": (
        pooling_net("floor_mode: true"), 17, "PoolingParameter", "floor_mode"),
}


@pytest.mark.parametrize("text, line, message, field", UNKNOWN_FIELDS.values(),
                         ids=UNKNOWN_FIELDS.keys())
def test_unknown_fields_are_errors_naming_file_line_and_field(tmp_path, text, line, message, field):
    path = write(tmp_path, "bad.prototxt", text)
    with pytest.raises(io.PrototxtError,
                       match=rf'^{re.escape(path)}:{line}:\d+: .*"caffe\.{message}" has no field '
                             rf'named "{field}"'):
        io.read_net(path)


UNCONVERTIBLE = {
    "sub-message of another type": (
        'layers { layer { name: "p" type: "pool" conv_param { num_output: 2 } } }',
        r"layer 'p': 'conv_param' has no meaning for layer type 'pool'"),
    "sub-message and V0 field": (
        'layers { layer { name: "c" type: "conv" kernelsize: 3 conv_param { kernel_size: 3 } } }',
        r"layer 'c': 'conv_param.kernel_size' is also given by a V0 field of the layer"),
    "ceil_mode and round_mode": (
        'layer { name: "p" type: "Pooling" pooling_param { ceil_mode: false round_mode: CEIL } }',
        r"layer 'p': both 'ceil_mode' \(.*PR #3057.*\) and BVLC's 'round_mode' are set"),
}


@pytest.mark.parametrize("text, message", UNCONVERTIBLE.values(), ids=UNCONVERTIBLE.keys())
def test_unconvertible_dialect_nets_raise(text, message):
    with pytest.raises(ValueError, match=r"^bad\.prototxt: " + message):
        io.parse_net_text(text, source="bad.prototxt")


def test_release_fields_and_flat_v0_fields_combine():
    # A V0 field and the release's message may each set different fields.
    net = io.upgrade_net(io.parse_net_text(
        'layers { layer { name: "c" type: "conv" num_output: 2 conv_param { kernel_size: 3 } } }'))
    assert net.layer[0].convolution_param.num_output == 2
    assert list(net.layer[0].convolution_param.kernel_size) == [3]


def test_upgrade_tool_reports_an_unknown_field_without_traceback(tmp_path):
    source = write(tmp_path, "bad.prototxt", UNKNOWN_FIELDS["in a release sub-message"][0])
    result = run_upgrade_tool(source, tmp_path / "out.prototxt")
    assert result.returncode == 1
    assert result.stderr.startswith(f"upgrade_net_proto_text: error: {source}:6:")
    assert '"kernelsize"' in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.prototxt").exists()
