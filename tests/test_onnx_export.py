"""sppcaffe.onnx.export, layer by layer: each exported graph passes
onnx.checker (full check) and ONNX Runtime computes what sppcaffe
computes, to a relative error of 1e-5 (max |difference| / max |value|) on
every output.  Whole nets are in test_onnx_export_models.py, the command
line tool in test_onnx_export_tool.py."""
import importlib
import warnings

import numpy as np
import pytest
from google.protobuf import text_format

import sppcaffe
from sppcaffe import spp_geometry
from sppcaffe.proto import caffe_pb2

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from sppcaffe.onnx import ExportError, export  # noqa: E402
from sppcaffe.onnx.verify import compare, random_feeds, run_onnx  # noqa: E402

TOL = 1e-5


# ---- helpers ---------------------------------------------------------------------

def inputs_text(inputs):
    return "".join(
        f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ '
        + " ".join(f"dim: {d}" for d in shape) + " } } }\n"
        for name, shape in inputs.items())


def make_net(layers, inputs, phase=sppcaffe.TEST, seed=0, **kwargs):
    """A net of Input blobs `inputs` ({name: shape}) and `layers` (prototxt
    text), parameters random (BatchNorm's: plausible statistics)."""
    param = text_format.Parse(inputs_text(inputs) + layers, caffe_pb2.NetParameter())
    net = sppcaffe.Net(param, phase, **kwargs)
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        for i, blob in enumerate(layer.blobs):
            if layer.type == "BatchNorm":
                statistics = [rng.standard_normal(blob.shape), rng.uniform(0.5, 1.5, blob.shape),
                              np.full(blob.shape, 2.0)]
                blob.data[...] = statistics[i]
            else:
                blob.data[...] = rng.standard_normal(blob.shape) * 0.5
    return net


def check(net, feeds=None, outputs=None, tol=TOL, **options):
    """Export, check the model fully, compare every output; the model."""
    model = export(net, outputs=outputs, **options)
    onnx.checker.check_model(model, full_check=True)
    errors = compare(net, model, feeds)
    assert errors and max(errors.values()) <= tol, errors
    return model


def layer(name, kind, bottoms, tops, params=""):
    b = " ".join(f'bottom: "{x}"' for x in bottoms)
    t = " ".join(f'top: "{x}"' for x in tops)
    return f'layer {{ name: "{name}" type: "{kind}" {b} {t} {params} }}\n'


def op_types(model):
    return {node.op_type for node in model.graph.node}


# ---- convolution -----------------------------------------------------------------

@pytest.mark.parametrize("params", [
    "num_output: 6 kernel_size: 3",
    "num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 3",
    "num_output: 4 kernel_h: 2 kernel_w: 5 stride_h: 1 stride_w: 3 pad_h: 1 pad_w: 2",
    "num_output: 6 kernel_size: 3 dilation: 2 pad: 2 bias_term: false",
    "num_output: 3 kernel_size: 1 group: 3",
    "num_output: 5 kernel_size: 4 stride: 3",
])
def test_convolution(params):
    net = make_net(layer("conv", "Convolution", ["x"], ["y"], f"convolution_param {{ {params} }}"),
                   {"x": (2, 3, 11, 9)})
    check(net)


def test_convolution_with_two_bottoms_shares_its_weights():
    net = make_net(layer("conv", "Convolution", ["x", "z"], ["y", "w"],
                         "convolution_param { num_output: 4 kernel_size: 3 }"),
                   {"x": (1, 2, 7, 7), "z": (1, 2, 7, 7)})
    model = check(net)
    assert len(model.graph.initializer) == 2


@pytest.mark.parametrize("params", [
    "num_output: 4 kernel_size: 3",
    "num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2",
    "num_output: 3 kernel_h: 3 kernel_w: 2 stride_h: 3 stride_w: 2 dilation: 2 bias_term: false",
])
def test_deconvolution(params):
    net = make_net(layer("deconv", "Deconvolution", ["x"], ["y"],
                         f"convolution_param {{ {params} }}"), {"x": (2, 4, 5, 6)})
    check(net)


def test_im2col():
    net = make_net(layer("cols", "Im2col", ["x"], ["y"],
                         "convolution_param { kernel_size: 3 stride: 2 pad: 1 }"),
                   {"x": (2, 3, 7, 6)})
    check(net)


# ---- pooling ---------------------------------------------------------------------

def _pooling_sweep():
    """Every valid (kernel, stride, pad, rounding, pool) on maps of 5..13:
    the cases where Caffe's ceil rounding drops a last window, where it
    reaches past the padding, and AVE's clipped divisors."""
    layers, sizes = [], {}
    for size in (5, 6, 7, 8, 11, 13):
        blob = f"x{size}"
        sizes[blob] = (2, 3, size, size + 1)
        for k in range(1, 5):
            for s in range(1, k + 1):
                for p in range(k):
                    for floor in (False, True):
                        for pool in ("MAX", "AVE"):
                            if any(spp_geometry.pooled_size(a, k, s, p, not floor) < 1
                                   for a in (size, size + 1)):
                                continue
                            name = f"p{size}_{k}_{s}_{p}_{int(floor)}_{pool}"
                            rounding = "round_mode: FLOOR" if floor else ""
                            layers.append(layer(name, "Pooling", [blob], [name],
                                                f"pooling_param {{ pool: {pool} kernel_size: {k} "
                                                f"stride: {s} pad: {p} {rounding} }}"))
    return "".join(layers), sizes


def test_pooling_matches_caffe_rounding_and_divisors():
    text, sizes = _pooling_sweep()
    net = make_net(text, sizes)
    assert len(net.outputs) > 500
    model = check(net)
    # Fixed sizes need no ceil mode: Caffe's window count is in the pads.
    assert all(a.name != "ceil_mode" for n in model.graph.node for a in n.attribute)


@pytest.mark.parametrize("params", [
    "pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0",
    "pool: AVE kernel_h: 2 kernel_w: 4 stride_h: 3 stride_w: 2 pad_h: 1 pad_w: 3",
    "pool: MAX global_pooling: true",
    "pool: AVE global_pooling: true",
])
def test_pooling_rectangular_and_global(params):
    net = make_net(layer("pool", "Pooling", ["x"], ["y"], f"pooling_param {{ {params} }}"),
                   {"x": (2, 3, 9, 10)})
    check(net)


def test_pooling_dynamic_size_keeps_caffe_rounding():
    """One graph for every input size: Caffe's window count (the dropped
    window included) and AVE divisors computed from the input's shape."""
    text = layer("global", "Pooling", ["x"], ["global"], "pooling_param { pool: AVE "
                 "global_pooling: true }")
    for k in range(1, 5):
        for s in range(1, k + 1):
            for p in range(k):
                for floor in (False, True):
                    for pool in ("MAX", "AVE"):
                        name = f"p{k}_{s}_{p}_{int(floor)}_{pool}"
                        rounding = "round_mode: FLOOR" if floor else ""
                        text += layer(name, "Pooling", ["x"], [name],
                                      f"pooling_param {{ pool: {pool} kernel_size: {k} "
                                      f"stride: {s} pad: {p} {rounding} }}")
    text += layer("rect", "Pooling", ["x"], ["rect"], "pooling_param { pool: AVE kernel_h: 3 "
                  "kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 }")
    net = make_net(text, {"x": (1, 2, 10, 10)})
    model = export(net, dynamic_size=True, dynamic_batch=True)
    onnx.checker.check_model(model, full_check=True)
    assert all(a.name not in ("ceil_mode", "pads") for n in model.graph.node
               if n.op_type.endswith("Pool") for a in n.attribute)
    rng = np.random.default_rng(1)
    for shape in [(1, 2, 10, 10), (2, 2, 11, 7), (1, 2, 6, 13), (3, 2, 17, 16)]:
        errors = compare(net, model, {"x": rng.standard_normal(shape, dtype=np.float32)})
        assert max(errors.values()) <= TOL, (shape, errors)


def test_pooling_mask_top_is_refused():
    net = make_net(layer("pool", "Pooling", ["x"], ["y", "mask"],
                         "pooling_param { pool: MAX kernel_size: 2 stride: 2 }"),
                   {"x": (1, 1, 4, 4)})
    with pytest.raises(ExportError, match="layer 'pool' \\(Pooling\\).*argmax top"):
        export(net)


# ---- SPP ---------------------------------------------------------------------------

SPP_CASES = [
    ("ADAPTIVE", "levels: 6 levels: 3 levels: 2 levels: 1"),
    ("ADAPTIVE", "levels: 5 levels: 1"),
    ("PAPER", "levels: 4 levels: 2 levels: 1"),
    ("CAFFE", "pyramid_height: 3"),
    ("CAFFE", "pyramid_height: 1"),
]


def _spp_net(cases, shape, pools=("MAX", "AVE")):
    text = "".join(layer(f"spp{i}_{pool}", "SPP", ["x"], [f"spp{i}_{pool}"],
                         f"spp_param {{ pool: {pool} method: {method} {levels} }}")
                   for i, (method, levels) in enumerate(cases) for pool in pools)
    return make_net(text, {"x": shape})


@pytest.mark.parametrize("hw", [(13, 13), (17, 30), (9, 7), (6, 11), (24, 24)])
def test_spp_fixed_size(hw):
    cases = [(m, levels) for m, levels in SPP_CASES
             if _pools(m, levels, hw)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # PAPER's uncovered rows on some sizes
        net = _spp_net(cases, (2, 3) + hw)
        check(net)


def _pools(method, levels, hw):
    """Whether sppcaffe accepts the SPP case on an hw map."""
    counts = [int(v) for v in levels.split()[1::2]]
    if "pyramid_height" in levels:
        counts = spp_geometry.pyramid_levels(counts[0])
    try:
        for n in counts:
            for a in hw:
                spp_geometry.bins(method.lower(), a, n)
    except ValueError:
        return False
    return True


def test_spp_adaptive_on_a_uniform_map_is_plain_pooling():
    """13x13 into 6, 3, 2, 1 bins: ADAPTIVE's bins are windows 3/2, 5/4,
    7/6, 13: one MaxPool per level, no per-bin slicing."""
    net = _spp_net([SPP_CASES[0]], (1, 4, 13, 13), pools=("MAX",))
    model = check(net)
    assert "Slice" not in op_types(model) and "ReduceMax" not in op_types(model)


def test_spp_dynamic_size_is_exact_at_every_size():
    cases = [SPP_CASES[0], SPP_CASES[2], SPP_CASES[3]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = _spp_net(cases, (1, 3, 13, 13))
        model = export(net, dynamic_size=True, dynamic_batch=True)
        onnx.checker.check_model(model, full_check=True)
        rng = np.random.default_rng(2)
        for shape in [(1, 3, 13, 13), (2, 3, 17, 30), (1, 3, 8, 9), (1, 3, 31, 12)]:
            errors = compare(net, model, {"x": rng.standard_normal(shape, dtype=np.float32)})
            assert max(errors.values()) <= TOL, (shape, errors)


def test_spp_single_caffe_level_keeps_the_pooling_shape():
    net = _spp_net([("CAFFE", "pyramid_height: 1")], (2, 3, 5, 7))
    model = check(net)
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 1, 1]


# ---- WindowSPP and ROIPooling ---------------------------------------------------------

def _windows(rng, count, images, height, width, stride):
    x1 = rng.uniform(-20, width * stride, count)
    y1 = rng.uniform(-20, height * stride, count)
    rows = np.stack([rng.integers(0, images, count), x1, y1,
                     x1 + rng.uniform(0, width * stride, count),
                     y1 + rng.uniform(0, height * stride, count)], axis=1)
    rows[::3, 1:] = np.round(rows[::3, 1:] / stride) * stride      # edges on cell boundaries
    return rows.astype(np.float32)


@pytest.mark.parametrize("params", [
    "pool: MAX method: ADAPTIVE levels: 4 levels: 2 levels: 1",
    "pool: AVE method: ADAPTIVE levels: 3 levels: 1 window_stride: 8",
    "pool: MAX method: ADAPTIVE levels: 2 levels: 1 window_mapping: RELEASED_MAPPING",
])
def test_window_spp(params):
    net = make_net(layer("wspp", "WindowSPP", ["x", "rois"], ["y"], f"spp_param {{ {params} }}"),
                   {"x": (2, 5, 9, 13), "rois": (40, 5)})
    rng = np.random.default_rng(3)
    stride = 8 if "window_stride: 8" in params else 16
    feeds = {"x": rng.standard_normal((2, 5, 9, 13), dtype=np.float32),
             "rois": _windows(rng, 40, 2, 9, 13, stride)}
    check(net, feeds, dynamic_batch=True)


def test_roi_pooling_is_max_roi_pool():
    net = make_net(layer("roi", "ROIPooling", ["x", "rois"], ["y"],
                         "roi_pooling_param { pooled_h: 3 pooled_w: 4 spatial_scale: 0.0625 }"),
                   {"x": (2, 3, 12, 15), "rois": (30, 5)})
    rng = np.random.default_rng(4)
    rois = _windows(rng, 30, 2, 12, 15, 16)
    rois[:5, 3:] = rois[:5, 1:3] - 5                 # malformed: x2 < x1
    feeds = {"x": rng.standard_normal((2, 3, 12, 15), dtype=np.float32), "rois": rois}
    model = check(net, feeds, tol=0)          # the same maxima, bit for bit
    assert "MaxRoiPool" in op_types(model)


# ---- normalization -----------------------------------------------------------------

@pytest.mark.parametrize("params", [
    "local_size: 5 alpha: 0.0001 beta: 0.75",
    "local_size: 3 alpha: 0.3 beta: 0.6 k: 2",
    "local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL",
    "local_size: 5 alpha: 2 beta: 1.2 norm_region: WITHIN_CHANNEL",
])
def test_lrn(params):
    net = make_net(layer("lrn", "LRN", ["x"], ["y"], f"lrn_param {{ {params} }}"),
                   {"x": (2, 7, 6, 5)})
    check(net, {"x": np.random.default_rng(5).standard_normal((2, 7, 6, 5), np.float32) * 3})


@pytest.mark.parametrize("shape", [(2, 4, 3, 5), (3, 4)])
def test_batchnorm_with_stored_statistics_and_scale(shape):
    layers = (layer("bn", "BatchNorm", ["x"], ["x"])
              + layer("scale", "Scale", ["x"], ["x"], "scale_param { bias_term: true }"))
    # in place on the input: the output cannot also be called "x"
    with pytest.warns(UserWarning, match="output 'x' is named 'x_out'"):
        model = check(make_net(layers, {"x": shape}))
    assert [o.name for o in model.graph.output] == ["x_out"]


def test_batchnorm_without_statistics_yet():
    """A scale factor of 0 means no statistics: mean and variance 0."""
    net = make_net(layer("bn", "BatchNorm", ["x"], ["y"]), {"x": (2, 3, 4, 4)})
    net.params["bn"][2].data[...] = 0
    check(net)


def test_batchnorm_with_batch_statistics_warns():
    net = make_net(layer("bn", "BatchNorm", ["x"], ["y"],
                         "batch_norm_param { use_global_stats: false }"), {"x": (3, 2, 4, 5)})
    with pytest.warns(UserWarning, match="statistics of the batch"):
        model = export(net)
    assert max(compare(net, model).values()) <= TOL


@pytest.mark.parametrize("params, operand", [
    ("axis: 1 num_axes: 1", None),
    ("axis: 1 num_axes: 2 bias_term: true", None),
    ("axis: 0 num_axes: -1", None),
    ("num_axes: 0", None),
    ("axis: 1", (4,)),
    ("axis: 1 bias_term: true", (4, 3)),
    ("axis: 0", (2, 4)),
])
def test_scale(params, operand):
    inputs = {"x": (2, 4, 3, 5)}
    bottoms = ["x"]
    if operand:
        inputs["s"] = operand
        bottoms.append("s")
    check(make_net(layer("scale", "Scale", bottoms, ["y"], f"scale_param {{ {params} }}"), inputs))


@pytest.mark.parametrize("params, operand", [("axis: 1 num_axes: 1", None),
                                             ("axis: -2 num_axes: 2", None), ("axis: 2", (3, 5))])
def test_bias(params, operand):
    inputs = {"x": (2, 4, 3, 5)}
    bottoms = ["x"]
    if operand:
        inputs["b"] = operand
        bottoms.append("b")
    check(make_net(layer("bias", "Bias", bottoms, ["y"], f"bias_param {{ {params} }}"), inputs))


@pytest.mark.parametrize("params", ["", "normalize_variance: false",
                                    "across_channels: true eps: 0.01"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 6)])
def test_mvn(params, shape):
    check(make_net(layer("mvn", "MVN", ["x"], ["y"], f"mvn_param {{ {params} }}"), {"x": shape}))


# ---- elementwise ------------------------------------------------------------------------

ACTIVATIONS = [
    ("ReLU", ""), ("ReLU", "relu_param { negative_slope: 0.1 }"), ("Sigmoid", ""), ("TanH", ""),
    ("AbsVal", ""), ("BNLL", ""), ("ELU", "elu_param { alpha: 0.7 }"),
    ("Clip", "clip_param { min: -0.5 max: 0.8 }"), ("Clip", "clip_param { min: 1 max: -1 }"),
    ("Swish", ""), ("Swish", "swish_param { beta: 1.7 }"),
    ("Threshold", "threshold_param { threshold: 0.3 }"),
    ("Exp", ""), ("Exp", "exp_param { base: 2 scale: 0.5 shift: 1 }"),
    ("Power", "power_param { power: 2 scale: 0.5 shift: 1 }"),
    ("Power", "power_param { power: 1 scale: -3 shift: 2 }"),
    ("Power", "power_param { power: 0 }"), ("Power", "power_param { scale: 0 shift: 3 power: 2 }"),
    ("Dropout", "dropout_param { dropout_ratio: 0.3 }"),
]


@pytest.mark.parametrize("kind, params", ACTIVATIONS)
def test_activation(kind, params):
    net = make_net(layer("act", kind, ["x"], ["y"], params), {"x": (2, 3, 4, 5)})
    values = np.random.default_rng(6).standard_normal((2, 3, 4, 5)).astype(np.float32) * 2
    values[0, 0, 0, :] = [-100, 100, 0, 0.3, 60]          # large, zero and the threshold
    with np.errstate(over="ignore"):                      # Exp's e^100 is inf in both
        check(net, {"x": values})


@pytest.mark.parametrize("params", ["", "log_param { base: 10 scale: 2 shift: 0.5 }",
                                    "log_param { base: 2 }"])
def test_log(params):
    net = make_net(layer("log", "Log", ["x"], ["y"], params), {"x": (2, 3, 4)})
    check(net, {"x": np.random.default_rng(7).uniform(0.1, 5, (2, 3, 4)).astype(np.float32)})


def test_power_with_a_fractional_exponent():
    net = make_net(layer("pow", "Power", ["x"], ["y"], "power_param { power: 0.75 scale: 2 }"),
                   {"x": (3, 4)})
    check(net, {"x": np.random.default_rng(8).uniform(0, 3, (3, 4)).astype(np.float32)})


@pytest.mark.parametrize("params", ["", "prelu_param { channel_shared: true }"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 3)])
def test_prelu(params, shape):
    check(make_net(layer("prelu", "PReLU", ["x"], ["y"], params), {"x": shape}))


def test_in_place_activations_chain():
    layers = (layer("conv", "Convolution", ["x"], ["c"], "convolution_param { num_output: 4 "
                    "kernel_size: 3 }") + layer("relu", "ReLU", ["c"], ["c"])
              + layer("drop", "Dropout", ["c"], ["c"]) + layer("elu", "ELU", ["c"], ["c"]))
    net = make_net(layers, {"x": (1, 2, 6, 6)})
    model = check(net)
    assert [o.name for o in model.graph.output] == ["c"]


def test_dropout_in_train_phase_is_refused():
    net = make_net(layer("drop", "Dropout", ["x"], ["y"]), {"x": (2, 3)}, phase=sppcaffe.TRAIN)
    with pytest.raises(ExportError, match="layer 'drop' \\(Dropout\\).*TRAIN"):
        export(net)


# ---- fully connected, embedding, softmax ------------------------------------------------

@pytest.mark.parametrize("params, shape", [
    ("num_output: 7", (3, 4, 2, 2)),
    ("num_output: 7 transpose: true", (3, 5)),
    ("num_output: 5 axis: 2 bias_term: false", (2, 3, 4, 3)),
    ("num_output: 6 axis: 2 transpose: true", (4, 2, 5)),
    ("num_output: 3 axis: 0", (2, 3)),
])
def test_inner_product(params, shape):
    check(make_net(layer("fc", "InnerProduct", ["x"], ["y"],
                         f"inner_product_param {{ {params} }}"), {"x": shape}))


@pytest.mark.parametrize("bias", ["true", "false"])
def test_embed(bias):
    net = make_net(layer("embed", "Embed", ["x"], ["y"],
                         f"embed_param {{ input_dim: 10 num_output: 4 bias_term: {bias} }}"),
                   {"x": (2, 3)})
    check(net, {"x": np.array([[0, 9, 3], [3, 7, 1]], np.float32)})


@pytest.mark.parametrize("axis", [1, 0, -1, 2])
def test_softmax(axis):
    net = make_net(layer("sm", "Softmax", ["x"], ["y"], f"softmax_param {{ axis: {axis} }}"),
                   {"x": (2, 5, 3, 4)})
    check(net, {"x": np.random.default_rng(9).standard_normal((2, 5, 3, 4), np.float32) * 5})


# ---- structure ---------------------------------------------------------------------------

def test_concat_slice_split():
    layers = (layer("cat", "Concat", ["a", "b"], ["ab"])
              + layer("cat3", "Concat", ["a", "c", "a"], ["aca"], "concat_param { axis: 2 }")
              + layer("one", "Concat", ["a"], ["a1"])
              + layer("slice", "Slice", ["ab"], ["s1", "s2", "s3"],
                      "slice_param { slice_point: 1 slice_point: 4 }")
              + layer("halves", "Slice", ["aca"], ["h1", "h2"], "slice_param { axis: 3 }")
              + layer("split", "Split", ["s1"], ["t1", "t2"]))
    check(make_net(layers, {"a": (2, 3, 4, 6), "b": (2, 2, 4, 6), "c": (2, 3, 1, 6)}))


@pytest.mark.parametrize("params", ["operation: SUM", "operation: SUM coeff: 0.5 coeff: -2 "
                                    "coeff: 1", "operation: PROD", "operation: MAX"])
def test_eltwise(params):
    net = make_net(layer("e", "Eltwise", ["a", "b", "c"], ["y"], f"eltwise_param {{ {params} }}"),
                   {"a": (2, 3, 4), "b": (2, 3, 4), "c": (2, 3, 4)})
    check(net)


@pytest.mark.parametrize("params", ["", "flatten_param { axis: 2 }",
                                    "flatten_param { axis: 0 end_axis: 1 }",
                                    "flatten_param { axis: 1 end_axis: 2 }"])
def test_flatten(params):
    check(make_net(layer("f", "Flatten", ["x"], ["y"], params), {"x": (2, 3, 4, 5)}),
          dynamic_batch=True)


@pytest.mark.parametrize("params", [
    "shape { dim: 0 dim: -1 }",
    "shape { dim: 0 dim: 3 dim: -1 dim: 2 }",
    "shape { dim: 2 dim: 2 } axis: 2 num_axes: 1",
    "shape { dim: -1 } axis: 1 num_axes: 2",
    "shape { dim: 1 } axis: 0 num_axes: 0",
    "shape { dim: 0 dim: 1 } axis: -3 num_axes: 1",
])
def test_reshape(params):
    check(make_net(layer("r", "Reshape", ["x"], ["y"], f"reshape_param {{ {params} }}"),
                   {"x": (2, 3, 4, 5)}))


@pytest.mark.parametrize("params", ["crop_param { axis: 2 offset: 1 }",
                                    "crop_param { axis: 1 offset: 0 offset: 2 offset: 1 }",
                                    "crop_param { axis: 2 }"])
def test_crop(params):
    check(make_net(layer("crop", "Crop", ["x", "ref"], ["y"], params),
                   {"x": (2, 4, 9, 8), "ref": (2, 3, 5, 6)}))


@pytest.mark.parametrize("params", ["tile_param { axis: 1 tiles: 3 }",
                                    "tile_param { axis: -1 tiles: 2 }",
                                    "tile_param { axis: 0 tiles: 2 }"])
def test_tile(params):
    check(make_net(layer("tile", "Tile", ["x"], ["y"], params), {"x": (2, 3, 4)}))


@pytest.mark.parametrize("params", ["", "operation: ASUM axis: 1", "operation: SUMSQ axis: 2 "
                                    "coeff: 0.5", "operation: MEAN axis: -1 coeff: 3"])
def test_reduction(params):
    check(make_net(layer("red", "Reduction", ["x"], ["y"], f"reduction_param {{ {params} }}"),
                   {"x": (2, 3, 4, 5)}))


@pytest.mark.parametrize("params", ["", "top_k: 3", "top_k: 2 out_max_val: true",
                                    "axis: 1 top_k: 2", "axis: 2 out_max_val: true"])
def test_argmax_breaks_ties_toward_the_larger_index(params):
    net = make_net(layer("am", "ArgMax", ["x"], ["y"], f"argmax_param {{ {params} }}"),
                   {"x": (3, 4, 5)})
    values = np.random.default_rng(10).integers(0, 4, (3, 4, 5)).astype(np.float32)   # ties
    check(net, {"x": values})


def test_filter_and_batch_reindex():
    layers = (layer("filter", "Filter", ["x", "sel"], ["kept"])
              + layer("reindex", "BatchReindex", ["x", "idx"], ["picked"]))
    net = make_net(layers, {"x": (5, 3, 2), "sel": (5, 1), "idx": (4,)})
    check(net, {"x": np.random.default_rng(11).standard_normal((5, 3, 2), np.float32),
                "sel": np.array([[1], [0], [0], [2], [1]], np.float32),
                "idx": np.array([4, 0, 4, 2], np.float32)})


def test_parameter_and_dummy_data_are_constants():
    layers = (layer("p", "Parameter", [], ["w"], "parameter_param { shape { dim: 2 dim: 3 } }")
              + layer("d", "DummyData", [], ["z"], "dummy_data_param { shape { dim: 2 dim: 3 } "
                      "data_filler { type: 'constant' value: 1.5 } }")
              + layer("sum", "Eltwise", ["w", "z", "x"], ["y"]))
    model = check(make_net(layers, {"x": (2, 3)}))
    assert [i.name for i in model.graph.input] == ["x"]


def test_random_dummy_data_is_refused():
    net = make_net(layer("d", "DummyData", [], ["z"], "dummy_data_param { shape { dim: 2 } "
                         "data_filler { type: 'gaussian' } }"), {})
    with pytest.raises(ExportError, match="layer 'd' \\(DummyData\\).*gaussian"):
        export(net)


# ---- losses ----------------------------------------------------------------------------

@pytest.mark.parametrize("params", [
    "", "loss_param { ignore_label: 2 }", "loss_param { ignore_label: 1 normalization: FULL }",
    "loss_param { normalization: BATCH_SIZE }", "loss_param { normalization: NONE }",
    "loss_param { normalize: false }", "softmax_param { axis: 2 }"])
def test_softmax_with_loss(params):
    axis2 = "axis: 2" in params
    net = make_net(layer("loss", "SoftmaxWithLoss", ["x", "label"], ["loss", "prob"], params),
                   {"x": (3, 5, 4), "label": (3, 4) if not axis2 else (3, 5)})
    rng = np.random.default_rng(12)
    labels = rng.integers(0, 4, (3, 5) if axis2 else (3, 4)).astype(np.float32)
    check(net, {"x": rng.standard_normal((3, 5, 4), np.float32) * 3, "label": labels})


@pytest.mark.parametrize("params", ["", "accuracy_param { top_k: 2 }",
                                    "accuracy_param { ignore_label: 0 axis: 1 }"])
def test_accuracy(params):
    net = make_net(layer("acc", "Accuracy", ["x", "label"], ["acc", "per_class"], params),
                   {"x": (6, 5, 3), "label": (6, 3)})
    rng = np.random.default_rng(13)
    scores = rng.integers(0, 3, (6, 5, 3)).astype(np.float32)          # ties count against
    check(net, {"x": scores, "label": rng.integers(0, 5, (6, 3)).astype(np.float32)})


def test_euclidean_loss():
    check(make_net(layer("loss", "EuclideanLoss", ["a", "b"], ["loss"]),
                   {"a": (4, 3), "b": (4, 3, 1, 1)}))


def test_unsupported_layer_is_named():
    net = make_net(layer("hinge", "HingeLoss", ["x", "label"], ["loss"]),
                   {"x": (2, 3), "label": (2,)})
    with pytest.raises(ExportError, match="layer 'hinge' \\(HingeLoss\\): no ONNX form"):
        export(net)


# ---- recurrent ---------------------------------------------------------------------------

def _sequence_feeds(rng, inputs):
    feeds = {name: rng.standard_normal(shape, np.float32) for name, shape in inputs.items()}
    cont = np.ones(inputs["cont"], np.float32)
    cont[0] = 0
    cont[2, 0] = 0                    # a new sequence in stream 0 at step 2
    feeds["cont"] = cont
    return feeds


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("static, exposed", [(False, False), (True, False), (False, True)])
def test_recurrent(kind, static, exposed):
    inputs = {"x": (4, 2, 3, 2), "cont": (4, 2)}
    bottoms = ["x", "cont"]
    tops = ["y"]
    if static:
        inputs["xs"] = (2, 5)
        bottoms.append("xs")
    if exposed:
        states = ["h0", "c0"] if kind == "LSTM" else ["h0"]
        for s in states:
            inputs[s] = (1, 2, 6)
        bottoms += states
        tops += [s.replace("0", "T") for s in states]
    params = f"recurrent_param {{ num_output: 6 expose_hidden: {str(exposed).lower()} }}"
    net = make_net(layer("rec", kind, bottoms, tops, params), inputs)
    feeds = _sequence_feeds(np.random.default_rng(14), inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # the carried-state note
        check(net, feeds)


def test_lstm_without_exposed_state_warns():
    net = make_net(layer("lstm", "LSTM", ["x", "cont"], ["y"],
                         "recurrent_param { num_output: 3 }"), {"x": (2, 1, 4), "cont": (2, 1)})
    with pytest.warns(UserWarning, match="layer 'lstm' \\(LSTM\\).*zero state"):
        model = export(net)
    assert "zero state" in model.doc_string


def test_lstm_unit():
    net = make_net(layer("unit", "LSTMUnit", ["c", "gates", "cont"], ["c1", "h1"]),
                   {"c": (1, 3, 4), "gates": (1, 3, 16), "cont": (1, 3)})
    rng = np.random.default_rng(15)
    check(net, {"c": rng.standard_normal((1, 3, 4), np.float32),
                "gates": rng.standard_normal((1, 3, 16), np.float32),
                "cont": np.array([[1, 0, 1]], np.float32)})


# ---- the export itself ------------------------------------------------------------------

CHAIN = (layer("conv", "Convolution", ["x"], ["conv"], "convolution_param { num_output: 4 "
               "kernel_size: 3 pad: 1 }")
         + layer("relu", "ReLU", ["conv"], ["conv"])
         + layer("pool", "Pooling", ["conv"], ["pool"],
                 "pooling_param { pool: MAX kernel_size: 3 stride: 2 }")
         + layer("fc", "InnerProduct", ["pool"], ["fc"], "inner_product_param { num_output: 5 }")
         + layer("prob", "Softmax", ["fc"], ["prob"]))


def test_names_are_the_blobs_and_intermediates_can_be_outputs():
    net = make_net(CHAIN, {"x": (1, 2, 9, 9)})
    model = check(net, outputs=["prob", "conv", "pool"])
    assert [i.name for i in model.graph.input] == ["x"]
    assert [o.name for o in model.graph.output] == ["prob", "conv", "pool"]
    # "conv" is the ReLU's result (the blob's last value), as net.blobs holds it
    assert next(n for n in model.graph.node if "conv" in n.output).op_type == "Relu"


def test_only_the_layers_the_outputs_need_are_exported():
    text = CHAIN + layer("hinge", "HingeLoss", ["fc", "label"], ["loss"])
    net = make_net(text, {"x": (1, 2, 9, 9), "label": (1,)})
    with pytest.raises(ExportError, match="hinge"):
        export(net)
    model = check(net, outputs=["prob"])
    assert [i.name for i in model.graph.input] == ["x"]


def test_input_shapes_and_dynamic_batch():
    net = make_net(CHAIN, {"x": (1, 2, 9, 9)})
    model = export(net, inputs={"x": (2, 2, 9, 9)}, dynamic_batch=True)
    onnx.checker.check_model(model, full_check=True)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 2, 9, 9]
    assert [d.dim_param or d.dim_value
            for d in model.graph.output[0].type.tensor_type.shape.dim] == ["batch", 5]
    rng = np.random.default_rng(16)
    for n in (1, 4):
        errors = compare(net, model, {"x": rng.standard_normal((n, 2, 9, 9), np.float32)})
        assert max(errors.values()) <= TOL


def test_a_fixed_size_graph_rejects_other_sizes():
    net = make_net(CHAIN, {"x": (1, 2, 9, 9)})
    model = export(net)
    with pytest.raises(Exception):
        run_onnx(model, {"x": np.zeros((1, 2, 11, 11), np.float32)})


def test_dynamic_batch_impossible_is_explained():
    """An LSTM's first axis is its timesteps, which cannot change."""
    net = make_net(layer("lstm", "LSTM", ["x", "cont"], ["y"], "recurrent_param { num_output: 2 }"),
                   {"x": (2, 1, 3), "cont": (2, 1)})
    with pytest.raises(ExportError, match="dynamic batch size is not possible.*timesteps"):
        export(net, dynamic_batch=True)


def test_shared_weights_are_one_initializer():
    shared = 'param { name: "w" } param { name: "b" }'
    text = (layer("fc1", "InnerProduct", ["x"], ["y1"], shared + " inner_product_param { "
                  "num_output: 3 }")
            + layer("fc2", "InnerProduct", ["x"], ["y2"], shared + " inner_product_param { "
                    "num_output: 3 }"))
    model = check(make_net(text, {"x": (2, 4)}))
    assert len(model.graph.initializer) == 2


def test_v1_net_is_upgraded_then_exported():
    text = ('input: "data" input_dim: 1 input_dim: 2 input_dim: 8 input_dim: 8 '
            'layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" '
            'convolution_param { num_output: 3 kernel_size: 3 } } '
            'layers { name: "relu" type: RELU bottom: "conv" top: "conv" } '
            'layers { name: "pool" type: POOLING bottom: "conv" top: "pool" '
            'pooling_param { pool: AVE kernel_size: 3 stride: 2 } }')
    net = sppcaffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), sppcaffe.TEST)
    check(net)


def test_v0_net_is_upgraded_then_exported():
    """A V0 "padding" layer becomes the pad of the convolution it feeds."""
    text = ('input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8 '
            'layers { layer { name: "pad" type: "padding" pad: 1 } bottom: "data" top: "p" } '
            'layers { layer { name: "c" type: "conv" num_output: 2 kernelsize: 3 } '
            'bottom: "p" top: "c" } '
            'layers { layer { name: "pool" type: "pool" pool: MAX kernelsize: 3 stride: 2 } '
            'bottom: "c" top: "pool" }')
    net = sppcaffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), sppcaffe.TEST)
    model = check(net)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert [list(a.ints) for a in conv.attribute if a.name == "pads"] == [[1, 1, 1, 1]]


def test_opset_range_and_newer_opsets():
    net = make_net(CHAIN + layer("red", "Reduction", ["pool"], ["sum"],
                                 "reduction_param { axis: 1 }"), {"x": (1, 2, 9, 9)})
    with pytest.raises(ExportError, match="opset 12"):
        export(net, opset=12)
    for opset in (13, 18, 21):
        model = check(net, opset=opset)
        assert model.opset_import[0].version == opset


def test_write_to_a_file(tmp_path):
    net = make_net(CHAIN, {"x": (1, 2, 9, 9)})
    path = tmp_path / "chain.onnx"
    export(net, path)
    model = onnx.load(str(path))
    feeds = random_feeds(net, model)
    assert np.allclose(run_onnx(str(path), feeds)["prob"], net.forward(**feeds)["prob"],
                       rtol=1e-5, atol=1e-7)


def test_shapes_follow_a_dynamic_batch():
    """Layers that reshape, cut or reduce read the batch from the input."""
    layers = (layer("flat", "Flatten", ["x"], ["flat"])
              + layer("rs", "Reshape", ["x"], ["rs"], "reshape_param { shape { dim: 0 dim: -1 "
                      "dim: 4 } }")
              + layer("fc", "InnerProduct", ["rs"], ["fc"], "inner_product_param { num_output: 3 "
                      "axis: 2 }")
              + layer("red", "Reduction", ["x"], ["red"], "reduction_param { axis: 1 "
                      "operation: MEAN }")
              + layer("am", "ArgMax", ["x"], ["am"], "argmax_param { top_k: 2 }")
              + layer("cut", "Slice", ["x"], ["first", "rest"], "slice_param { axis: 0 "
                      "slice_point: 1 }")
              + layer("loss", "SoftmaxWithLoss", ["flat", "label"], ["loss"],
                      "loss_param { normalization: BATCH_SIZE }")
              + layer("acc", "Accuracy", ["flat", "label"], ["acc"]))
    net = make_net(layers, {"x": (2, 3, 4, 2), "label": (2,)})
    model = export(net, dynamic_batch=True)
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(17)
    for n in (2, 6):
        feeds = {"x": rng.standard_normal((n, 3, 4, 2), np.float32),
                 "label": rng.integers(0, 24, n).astype(np.float32)}
        errors = compare(net, model, feeds)
        assert max(errors.values()) <= TOL, (n, errors)


def test_crop_follows_a_dynamic_reference():
    """FCN's pattern: upsample, then crop back to the input's size."""
    layers = (layer("conv", "Convolution", ["x"], ["c"], "convolution_param { num_output: 2 "
                    "kernel_size: 3 stride: 2 }")
              + layer("up", "Deconvolution", ["c"], ["u"], "convolution_param { num_output: 2 "
                      "kernel_size: 6 stride: 2 bias_term: false }")
              + layer("crop", "Crop", ["u", "x"], ["y"], "crop_param { axis: 2 offset: 1 }"))
    net = make_net(layers, {"x": (1, 2, 12, 10)})
    model = export(net, dynamic_size=True)
    rng = np.random.default_rng(18)
    for shape in [(1, 2, 12, 10), (1, 2, 15, 21)]:
        errors = compare(net, model, {"x": rng.standard_normal(shape, np.float32)})
        assert max(errors.values()) <= TOL, (shape, errors)


def test_crop_to_a_fixed_reference_of_a_dynamic_input():
    """At the export's size nothing is cut, at larger sizes the crop cuts."""
    layers = (layer("ref", "DummyData", [], ["ref"], "dummy_data_param { shape { dim: 1 dim: 2 "
                    "dim: 5 dim: 6 } }")
              + layer("crop", "Crop", ["x", "ref"], ["y"], "crop_param { axis: 2 }"))
    net = make_net(layers, {"x": (1, 2, 5, 6)})
    model = export(net, dynamic_size=True)
    rng = np.random.default_rng(20)
    for shape in [(1, 2, 5, 6), (1, 2, 8, 11)]:
        errors = compare(net, model, {"x": rng.standard_normal(shape, np.float32)})
        assert max(errors.values()) <= TOL, (shape, errors)


def test_dynamic_size_impossible_is_explained():
    """Without SPP the fully connected layer fixes the input size."""
    net = make_net(CHAIN, {"x": (1, 2, 9, 9)})
    with pytest.raises(ExportError, match="dynamic input size is not possible.*'fc'"):
        export(net, dynamic_size=True)


def test_unread_data_tops_are_not_inputs():
    net = make_net(CHAIN + layer("loss", "SoftmaxWithLoss", ["fc", "label"], ["loss"]),
                   {"x": (2, 2, 9, 9), "label": (2,)})
    assert sorted(i.name for i in export(net).graph.input) == ["label", "x"]
    assert [i.name for i in export(net, outputs=["prob"]).graph.input] == ["x"]


def test_weights_over_two_gigabytes_go_beside_the_model(tmp_path, monkeypatch):
    """Protobuf cannot write a model over 2 GiB: its weights then go to
    OUT.onnx.data (the limit lowered here to try it on a small net)."""
    export_module = importlib.import_module("sppcaffe.onnx.export")
    monkeypatch.setattr(export_module, "_EXTERNAL_DATA_BYTES", 100)
    net = make_net(CHAIN, {"x": (1, 2, 9, 9)})
    with pytest.raises(ExportError, match="exceed 2 GiB: give a path"):
        export(net)
    path = tmp_path / "chain.onnx"
    export(net, path)
    assert (tmp_path / "chain.onnx.data").stat().st_size > path.stat().st_size
    feeds = {"x": np.random.default_rng(19).standard_normal((1, 2, 9, 9), np.float32)}
    assert np.allclose(run_onnx(str(path), feeds)["prob"], net.forward(**feeds)["prob"],
                       rtol=1e-5, atol=1e-7)
