"""Whole nets through sppcaffe.onnx.export: ZF-5 SPP with each SPP method at
224x224 and 300x500 (and one dynamic-size graph for both), every net in
models/, and the community deploy nets with zoo_fill.py's parameters (also
against the reference BVLC Caffe's outputs).  ONNX Runtime's outputs, and
intermediate blobs exported as extra outputs, equal sppcaffe's to a
relative error of 1e-5.

The default run shrinks fc6/fc7 of the models/ nets to 64 outputs (their
4096-wide weights cost seconds to write and load and test nothing the
conv layers don't); `-m slow` runs them at full size, and FCN-8s."""
import glob
import importlib.util
import json
import os
import warnings

import numpy as np
import pytest

import sppcaffe
from sppcaffe import io

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from sppcaffe.onnx import export  # noqa: E402
from sppcaffe.onnx.verify import compare, run_onnx  # noqa: E402

TOL = 1e-5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "models")
COMMUNITY = os.path.join(ROOT, "tests", "caffe_models", "community")
ZF5_SPP = os.path.join(MODELS, "zf5_spp", "deploy.prototxt")


def read_net(path, shrink_fc=False, spp=None):
    """The prototxt without weight fillers (the tests fill the weights);
    with `shrink_fc` fc6 and fc7 get 64 outputs; `spp` replaces the spp
    layer's spp_param (text)."""
    param = io.read_net(path)
    for lp in param.layer:
        for field in ("convolution_param", "inner_product_param"):
            if lp.HasField(field):
                getattr(lp, field).ClearField("weight_filler")
                getattr(lp, field).ClearField("bias_filler")
        if shrink_fc and lp.type == "InnerProduct" and lp.name in ("fc6", "fc7"):
            lp.inner_product_param.num_output = 64
        if spp is not None and lp.type == "SPP":
            from google.protobuf import text_format
            lp.ClearField("spp_param")
            text_format.Parse(spp, lp.spp_param)
    return param


def fill_weights(net, seed=0):
    """Uniform weights of variance 1/fan_in (activations keep their scale
    through the layers), small biases."""
    rng = np.random.default_rng(seed)
    for blobs in net.params.values():
        for i, blob in enumerate(blobs):
            shape = blob.shape
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            bound = np.sqrt(3.0 / fan_in) if i == 0 and len(shape) > 1 else 0.05
            blob.data[...] = (rng.random(shape, dtype=np.float32) * 2 - 1) * bound


def check_net(net, feeds=None, outputs=None, **options):
    model = export(net, outputs=outputs, **options)
    errors = compare(net, model, feeds)
    assert errors and max(errors.values()) <= TOL, errors
    return model, errors


# ---- ZF-5 SPP ----------------------------------------------------------------------

SPP_METHODS = {
    "CAFFE": "pool: MAX method: CAFFE pyramid_height: 3",          # 1, 2, 4 bins per side
    "PAPER": "pool: MAX method: PAPER levels: 6 levels: 3 levels: 2 levels: 1",
    "ADAPTIVE": "pool: MAX method: ADAPTIVE levels: 6 levels: 3 levels: 2 levels: 1",
}
INTERMEDIATES = ["conv1", "norm1", "pool1", "pool2", "conv5", "spp", "fc7"]


FC_SIZES = ["fc64", pytest.param("fc4096", marks=pytest.mark.slow)]


@pytest.fixture(scope="module", params=FC_SIZES)
def zf5_spp_nets(request):
    """ZF-5 SPP per method, weights filled; fc6/fc7 64 wide by default, the
    deploy file's 4096 with -m slow."""
    nets = {}
    for method, spp in SPP_METHODS.items():
        param = read_net(ZF5_SPP, shrink_fc=request.param == "fc64", spp=spp)
        net = sppcaffe.Net(param, sppcaffe.TEST)
        fill_weights(net)
        nets[method] = net
    return nets


@pytest.mark.parametrize("method", sorted(SPP_METHODS))
@pytest.mark.parametrize("hw", [(224, 224), (300, 500)])
def test_zf5_spp_deploy(zf5_spp_nets, method, hw):
    net = zf5_spp_nets[method]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # PAPER's uncovered-rows warning
        model, errors = check_net(net, inputs={"data": (1, 3) + hw},
                                  outputs=["prob"] + INTERMEDIATES)
    assert set(errors) == {"prob", *INTERMEDIATES}
    if hw == (300, 500):
        # conv5 is 17x30: 17 mod 6 = 5, where PAPER's windows leave the last rows out
        assert net.blobs["conv5"].shape[2:] == (17, 30)


def test_zf5_spp_one_graph_for_every_size(zf5_spp_nets):
    net = zf5_spp_nets["ADAPTIVE"]
    net.blobs["data"].reshape(1, 3, 224, 224)
    net.reshape()
    model = export(net, dynamic_batch=True, dynamic_size=True, outputs=["prob", "spp", "conv5"])
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(1)
    for shape in [(1, 3, 224, 224), (2, 3, 300, 500), (1, 3, 180, 180)]:
        errors = compare(net, model, {"data": rng.standard_normal(shape, np.float32)})
        assert max(errors.values()) <= TOL, (shape, errors)


# ---- every net in models/ -------------------------------------------------------------

def model_files():
    return sorted(os.path.relpath(p, MODELS)
                  for p in glob.glob(os.path.join(MODELS, "**", "*.prototxt"), recursive=True))


def data_shapes(relpath):
    """Shapes for the tops of data layers that read databases."""
    if relpath.startswith("demo_spp"):
        return {"data": (1, 3, 48, 48), "label": (1,)}
    return {"data": (2, 3, 224, 224), "label": (2,)}


def build_model_net(relpath, shrink_fc):
    param = read_net(os.path.join(MODELS, relpath), shrink_fc=shrink_fc)
    net = sppcaffe.Net(param, sppcaffe.TEST, data_shapes=data_shapes(relpath))
    fill_weights(net)
    return net


def test_every_models_prototxt_is_covered():
    assert len(model_files()) >= 24


def _check_model_file(relpath, shrink_fc):
    net = build_model_net(relpath, shrink_fc)
    conv_blobs = [name for name in net.blobs if name.startswith(("conv", "pool", "spp"))]
    outputs = list(net.outputs) + conv_blobs[-2:]
    model, errors = check_net(net, outputs=outputs)
    assert set(errors) >= set(net.outputs)


@pytest.mark.parametrize("relpath", model_files())
def test_models_net(relpath):
    _check_model_file(relpath, shrink_fc=True)


@pytest.mark.slow
@pytest.mark.parametrize("relpath", model_files())
def test_models_net_full_size(relpath):
    _check_model_file(relpath, shrink_fc=False)


# ---- community deploy nets ------------------------------------------------------------

with open(os.path.join(COMMUNITY, "manifest.json")) as _f:
    MANIFEST = json.load(_f)
# FCN-8s: a 500x500 input, ~35 s on two cores; R-CNN: 240 MB of fc weights, ~10 s.
SLOW_COMMUNITY = {"fcn8s", "rcnn_deploy"}


def _zoo_fill():
    spec = importlib.util.spec_from_file_location("zoo_fill",
                                                  os.path.join(COMMUNITY, "zoo_fill.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sampled(array):
    flat = np.asarray(array).reshape(-1)
    return flat[np.linspace(0, flat.size - 1, min(flat.size, 20000)).astype(int)]


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_COMMUNITY
                                  else c for c in sorted(MANIFEST)])
def test_community_deploy_net(case):
    zoo_fill = _zoo_fill()
    net = sppcaffe.Net(os.path.join(COMMUNITY, MANIFEST[case]), sppcaffe.TEST)
    zoo_fill.fill_params(net, 7)
    feeds = zoo_fill.fill_inputs(net, 7)
    if case == "lstm_lm":         # a word index and a sequence start
        feeds = {"cont_sentence": np.zeros((1, 1), np.float32),
                 "input_sentence": np.full((1, 1), 17, np.float32)}
    with np.load(os.path.join(COMMUNITY, "expected_outputs.npz")) as expected:
        caffe = {k.split("/", 1)[1]: expected[k] for k in expected.files
                 if k.startswith(case + "/")}
    outputs = list(dict.fromkeys(list(net.outputs) + list(caffe)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # lstm_lm: the carried-state note
        model, errors = check_net(net, feeds, outputs=outputs)
    # ONNX Runtime against the reference BVLC Caffe's own outputs too
    ours = run_onnx(model, feeds)
    for blob, reference in caffe.items():
        sample = _sampled(ours[blob]).astype(np.float64)
        err = np.linalg.norm(sample - reference) / np.linalg.norm(reference)
        assert err < 1e-4, f"{case}/{blob}: relative error {err:.3g} against Caffe"
