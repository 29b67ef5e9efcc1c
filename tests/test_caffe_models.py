"""Real prototxt files from BVLC Caffe's model zoo parse and build with
Caffe's shapes (tests/caffe_models, BSD licence beside them)."""
import glob
import os

import numpy as np
import pytest

import sppcaffe
from sppcaffe import io
from sppcaffe.proto import caffe_pb2

MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "caffe_models")
ALL = sorted(glob.glob(os.path.join(MODELS, "*.prototxt")))


def model(name):
    return os.path.join(MODELS, name + ".prototxt")


@pytest.mark.parametrize("path", ALL, ids=os.path.basename)
def test_every_file_parses(path):
    if path.endswith("solver.prototxt"):
        solver = io.read_solver(path)
        assert solver.base_lr > 0
    else:
        net = io.read_net(path)
        assert len(net.layer) > 0 and not len(net.layers)


ALEXNET = {"conv1": (10, 96, 55, 55), "pool1": (10, 96, 27, 27), "conv2": (10, 256, 27, 27),
           "pool2": (10, 256, 13, 13), "conv5": (10, 256, 13, 13), "pool5": (10, 256, 6, 6),
           "fc6": (10, 4096), "fc7": (10, 4096), "fc8": (10, 1000), "prob": (10, 1000)}
GOOGLENET = {"conv1/7x7_s2": (10, 64, 112, 112), "pool1/3x3_s2": (10, 64, 56, 56),
             "conv2/3x3": (10, 192, 56, 56), "pool2/3x3_s2": (10, 192, 28, 28),
             "inception_3a/output": (10, 256, 28, 28), "inception_3b/output": (10, 480, 28, 28),
             "pool3/3x3_s2": (10, 480, 14, 14), "inception_4a/output": (10, 512, 14, 14),
             "inception_4d/output": (10, 528, 14, 14), "inception_4e/output": (10, 832, 14, 14),
             "pool4/3x3_s2": (10, 832, 7, 7), "inception_5b/output": (10, 1024, 7, 7),
             "pool5/7x7_s1": (10, 1024, 1, 1), "loss3/classifier": (10, 1000), "prob": (10, 1000)}
DEPLOY = {"models_bvlc_alexnet_deploy": ALEXNET,
          "models_bvlc_reference_caffenet_deploy": dict(ALEXNET, norm1=(10, 96, 27, 27)),
          "models_bvlc_googlenet_deploy": GOOGLENET}


@pytest.mark.parametrize("name", sorted(DEPLOY))
def test_deploy_nets_have_caffe_shapes(name):
    net = sppcaffe.Net(model(name), sppcaffe.TEST)
    for blob, shape in DEPLOY[name].items():
        assert net.blobs[blob].shape == shape, blob
    assert net.outputs == ["prob"]


@pytest.mark.parametrize("name", ["models_bvlc_reference_caffenet_deploy"])
def test_deploy_net_runs_forward(name):
    net = sppcaffe.Net(model(name), sppcaffe.TEST)
    x = np.random.default_rng(0).standard_normal((1, 3, 227, 227)).astype(np.float32)
    out = net.forward(data=x)["prob"]
    assert out.shape == (1, 1000)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


IMAGENET = {"data": (256, 3, 227, 227), "label": (256,)}
IMAGENET_VAL = {"data": (50, 3, 227, 227), "label": (50,)}
TRAIN_TEST = {
    # name: (TRAIN data shapes, TEST data shapes, expected blob shapes in TRAIN, outputs TRAIN, TEST)
    "examples_mnist_lenet_train_test": (
        {"data": (64, 1, 28, 28), "label": (64,)}, {"data": (100, 1, 28, 28), "label": (100,)},
        {"conv1": (64, 20, 24, 24), "pool1": (64, 20, 12, 12), "conv2": (64, 50, 8, 8),
         "pool2": (64, 50, 4, 4), "ip1": (64, 500), "ip2": (64, 10), "loss": ()},
        ["loss"], ["accuracy", "loss"]),
    "examples_cifar10_cifar10_quick_train_test": (
        {"data": (100, 3, 32, 32), "label": (100,)}, {"data": (100, 3, 32, 32), "label": (100,)},
        {"conv1": (100, 32, 32, 32), "pool1": (100, 32, 16, 16), "pool2": (100, 32, 8, 8),
         "pool3": (100, 64, 4, 4), "ip1": (100, 64), "ip2": (100, 10)},
        ["loss"], ["accuracy", "loss"]),
    "examples_cifar10_cifar10_full_train_test": (
        {"data": (100, 3, 32, 32), "label": (100,)}, {"data": (100, 3, 32, 32), "label": (100,)},
        {"pool1": (100, 32, 16, 16), "norm1": (100, 32, 16, 16), "pool3": (100, 64, 4, 4),
         "ip1": (100, 10)},
        ["loss"], ["accuracy", "loss"]),
    "models_bvlc_alexnet_train_val": (IMAGENET, IMAGENET_VAL, {
        "conv1": (256, 96, 55, 55), "pool5": (256, 256, 6, 6), "fc8": (256, 1000), "loss": ()},
        ["loss"], ["accuracy", "loss"]),
    "models_bvlc_reference_caffenet_train_val": (IMAGENET, IMAGENET_VAL, {
        "conv1": (256, 96, 55, 55), "pool5": (256, 256, 6, 6), "fc8": (256, 1000)},
        ["loss"], ["accuracy", "loss"]),
}


@pytest.mark.parametrize("name", sorted(TRAIN_TEST))
def test_train_test_nets_build_in_both_phases(name):
    train_shapes, test_shapes, expected, train_out, test_out = TRAIN_TEST[name]
    train = sppcaffe.Net(model(name), sppcaffe.TRAIN, data_shapes=train_shapes)
    for blob, shape in expected.items():
        assert train.blobs[blob].shape == shape, blob
    assert train.outputs == train_out
    test = sppcaffe.Net(model(name), sppcaffe.TEST, data_shapes=test_shapes)
    assert test.outputs == test_out
    assert test.blobs["data"].shape == test_shapes["data"]
    # Dropout and the TRAIN-only data layer are phase-filtered, weights are shared by name.
    assert set(train.params) == set(test.params)


def test_data_layer_without_source_names_the_path():
    with pytest.raises(sppcaffe.LayerError, match="mnist_train_lmdb"):
        sppcaffe.Net(model("examples_mnist_lenet_train_test"), sppcaffe.TRAIN)


def test_solver_files_upgrade():
    solver = io.read_solver(model("models_bvlc_reference_caffenet_solver"))
    assert solver.lr_policy == "step" and solver.base_lr == pytest.approx(0.01)
    assert isinstance(solver, caffe_pb2.SolverParameter)
