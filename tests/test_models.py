"""The Table 1 nets of models/: they build, their blobs have the paper's
sizes at 224x224, and the SPP nets give fixed-length features for any
input size."""
import importlib.util
import os

import numpy as np
import pytest

import sppcaffe
from sppcaffe import io
from sppcaffe.proto import caffe_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "models")

# Expected (channels, height, width) at a 224x224 input, from Table 1 of
# the paper (map sizes after each stage) and the layer geometry; the
# feature lengths are channels x 50 bins (SPP) or x 36 (6x6 pool5).
ZF5 = {"conv1": (96, 110, 110), "pool1": (96, 55, 55), "conv2": (256, 26, 26),
       "pool2": (256, 13, 13), "conv3": (384, 13, 13), "conv4": (384, 13, 13),
       "conv5": (256, 13, 13)}
CONVNET5 = {"conv1": (96, 55, 55), "conv2": (256, 55, 55), "pool2": (256, 27, 27),
            "conv3": (384, 27, 27), "pool3": (384, 13, 13), "conv4": (384, 13, 13),
            "conv5": (256, 13, 13)}
OVERFEAT5 = {"conv1": (96, 109, 109), "pool1": (96, 36, 36), "conv2": (256, 36, 36),
             "pool2": (256, 18, 18), "conv3": (512, 18, 18), "conv4": (512, 18, 18),
             "conv5": (512, 18, 18)}
OVERFEAT7 = dict(OVERFEAT5, conv6=(512, 18, 18), conv7=(512, 18, 18))

EXPECTED = {
    "zf5_spp": dict(ZF5, spp=(12800,)),
    "zf5": dict(ZF5, pool5=(256, 6, 6)),
    "convnet5_spp": dict(CONVNET5, spp=(12800,)),
    "convnet5": dict(CONVNET5, pool5=(256, 6, 6)),
    "overfeat5_spp": dict(OVERFEAT5, spp=(25600,)),
    "overfeat5": dict(OVERFEAT5, pool5=(512, 6, 6)),
    "overfeat7_spp": dict(OVERFEAT7, spp=(25600,)),
    "overfeat7": dict(OVERFEAT7, pool5=(512, 6, 6)),
}
FEATURE_LENGTH = {"zf5_spp": 12800, "zf5": 9216, "convnet5_spp": 12800, "convnet5": 9216,
                  "overfeat5_spp": 25600, "overfeat5": 18432,
                  "overfeat7_spp": 25600, "overfeat7": 18432}
DATA_SHAPES = {"data": (2, 3, 224, 224), "label": (2,)}


def model_path(model, kind):
    return os.path.join(MODELS, model, f"{kind}.prototxt")


def without_fillers(path):
    """The net with default (zero) fillers: filling the 50-100 M fc6
    weights with Gaussians takes seconds per net and is not what these
    tests are about (test_train_val_fillers checks the fillers)."""
    param = io.read_net(path)
    for lp in param.layer:
        for field in ("convolution_param", "inner_product_param"):
            if lp.HasField(field):
                getattr(lp, field).ClearField("weight_filler")
                getattr(lp, field).ClearField("bias_filler")
    return param


@pytest.fixture(scope="module")
def zf5_spp_deploy():
    """The zf5_spp deploy net with random conv weights (fc layers stay
    zero: the SPP features do not depend on them)."""
    net = sppcaffe.Net(model_path("zf5_spp", "deploy"), sppcaffe.TEST)
    rng = np.random.default_rng(0)
    for name, blobs in net.params.items():
        if name.startswith("conv"):
            w = blobs[0].data
            w[...] = rng.standard_normal(w.shape, dtype=np.float32) / np.sqrt(w[0].size)
            blobs[1].data[...] = 0.1
    return net


def test_generated_files_are_up_to_date():
    spec = importlib.util.spec_from_file_location("generate_models",
                                                  os.path.join(MODELS, "generate.py"))
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    assert generate.main(["--check"]) == 0
    assert sorted(generate.MODELS) == sorted(EXPECTED)


@pytest.mark.parametrize("model", sorted(EXPECTED))
def test_deploy_blob_shapes_at_224(model):
    net = sppcaffe.Net(model_path(model, "deploy"), sppcaffe.TEST)
    shapes = {name: blob.shape[1:] for name, blob in net.blobs.items()}
    assert {name: shapes[name] for name in EXPECTED[model]} == EXPECTED[model]
    assert net.params["fc6"][0].shape == (4096, FEATURE_LENGTH[model])
    assert shapes["fc8"] == shapes["prob"] == (1000,)
    assert net.inputs == ["data"] and net.blobs["data"].shape == (1, 3, 224, 224)
    assert net.outputs == ["prob"]


@pytest.mark.parametrize("height, width, conv5", [(224, 224, (13, 13)), (180, 180, (10, 10)),
                                                  (300, 500, (17, 30))])
def test_zf5_spp_gives_12800_features_for_any_size(zf5_spp_deploy, height, width, conv5):
    net = zf5_spp_deploy
    x = np.random.default_rng(height).uniform(-1, 1, (1, 3, height, width)).astype(np.float32)
    out = net.forward(data=x)
    assert net.blobs["conv5"].shape == (1, 256) + conv5
    spp = net.blobs["spp"].data
    assert spp.shape == (1, 12800)
    # The 1x1 level (last 256 values) is the global max of each conv5 map.
    np.testing.assert_array_equal(spp[0, -256:], net.blobs["conv5"].data[0].max(axis=(1, 2)))
    assert np.isfinite(spp).all() and (spp > 0).any()
    assert out["prob"].shape == (1, 1000)
    np.testing.assert_allclose(out["prob"].sum(), 1.0, rtol=1e-5)


def test_deploy_adaptive_spp_equals_training_paper_spp_at_224(zf5_spp_deploy):
    """The deploy net's ADAPTIVE bins are the train_val net's PAPER bins at
    224 (13x13 conv5), so weights trained with one serve the other."""
    param = io.read_net(model_path("zf5_spp", "deploy"))
    spp = next(lp for lp in param.layer if lp.type == "SPP").spp_param
    assert spp.method == caffe_pb2.ADAPTIVE
    spp.method = caffe_pb2.PAPER
    paper = sppcaffe.Net(param, sppcaffe.TEST)
    for name, blobs in zf5_spp_deploy.params.items():
        for src, dst in zip(blobs, paper.params[name]):
            dst.data[...] = src.data
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    zf5_spp_deploy.forward(data=x)
    paper.forward(data=x)
    np.testing.assert_array_equal(paper.blobs["spp"].data, zf5_spp_deploy.blobs["spp"].data)


@pytest.mark.parametrize("phase", [sppcaffe.TRAIN, sppcaffe.TEST], ids=["TRAIN", "TEST"])
@pytest.mark.parametrize("model", sorted(EXPECTED))
def test_train_val_builds(model, phase):
    net = sppcaffe.Net(without_fillers(model_path(model, "train_val")), phase,
                       data_shapes=DATA_SHAPES)
    shapes = {name: blob.shape[1:] for name, blob in net.blobs.items()}
    assert {name: shapes[name] for name in EXPECTED[model]} == EXPECTED[model]
    assert net.blobs["data"].shape == DATA_SHAPES["data"]
    assert shapes["fc8"] == (1000,)
    expected_outputs = ["accuracy", "accuracy_top5", "loss"] if phase == sppcaffe.TEST else ["loss"]
    assert net.outputs == expected_outputs
    assert net.blob_loss_weights["loss"] == 1.0


def test_train_val_fillers_and_learning_rates():
    """The fillers and lr/decay multipliers of the train_val nets (one net
    with its real fillers; the others are generated from the same code)."""
    net = sppcaffe.Net(model_path("zf5_spp", "train_val"), sppcaffe.TRAIN,
                       data_shapes=DATA_SHAPES)
    layers = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    assert list(net.params) == layers
    for name in layers:
        weights, bias = net.params[name]
        assert abs(float(weights.data.std()) - 0.01) < 0.001, name
        assert abs(float(weights.data.mean())) < 0.001, name
        expected_bias = 0.0 if name in ("conv1", "conv3", "fc8") else 1.0
        np.testing.assert_array_equal(bias.data, expected_bias, err_msg=name)
    assert net.params_lr == [1.0, 2.0] * len(layers)
    assert net.params_weight_decay == [1.0, 0.0] * len(layers)
