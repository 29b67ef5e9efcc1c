"""The community train/val nets (tests/caffe_models/community) build in both
phases and run a training pass.  Their data sources are replaced the
sppcaffe way -- `data_shapes` makes a Data/ImageData/HDF5Data layer give
tops of a stated shape without opening its source -- at small batch sizes;
the Python data layers they name (FCN's voc_layers, Fast R-CNN's
roi_data_layer) are stand-ins in tests/data/pylayers, written for pycaffe."""
import os
import sys

import numpy as np
import pytest

import sppcaffe

TESTS = os.path.dirname(os.path.abspath(__file__))
COMMUNITY = os.path.join(TESTS, "caffe_models", "community")
PYLAYERS = os.path.join(TESTS, "data", "pylayers")

SENTENCES = {name: (20, 2) for name in ("cont_sentence", "input_sentence", "target_sentence")}
# file -> (data_shapes, stages per phase)
NETS = {
    "squeezenet/SqueezeNet_v1.1-train_val.prototxt":
        ({"data": (2, 3, 227, 227), "label": (2,)}, {}),
    "bvlc_examples/examples-cifar10-cifar10_full_sigmoid_train_test_bn.prototxt":
        ({"data": (4, 3, 32, 32), "label": (4,)}, {}),
    "bvlc_examples/examples-mnist-mnist_autoencoder.prototxt":
        ({"data": (4, 1, 28, 28)}, {"TEST": ["test-on-test"]}),
    "bvlc_examples/examples-siamese-mnist_siamese_train_test.prototxt":
        ({"pair_data": (4, 2, 28, 28), "sim": (4,)}, {}),
    "bvlc_examples/examples-hdf5_classification-nonlinear_auto_train.prototxt":
        ({"data": (4, 4), "label": (4,)}, {}),
    "bvlc_examples/examples-coco_caption-lstm_language_model.prototxt":
        (SENTENCES, {"TEST": ["test-on-val"]}),
    # The stages of BVLC's lrcn_solver.prototxt (a frozen convnet, the factored 2-layer LSTM).
    "bvlc_examples/examples-coco_caption-lrcn.prototxt":
        (dict(SENTENCES, data=(2, 3, 227, 227), label=(2,)),
         {"TRAIN": ["freeze-convnet", "factored", "2-layer"],
          "TEST": ["freeze-convnet", "factored", "2-layer", "test-on-val"]}),
    "fcn/voc-fcn32s-train.prototxt": ({}, {}),
    "fcn/voc-fcn32s-val.prototxt": ({}, {}),
    "fast_rcnn/VGG_CNN_M_1024-train.prototxt": ({}, {}),
}


@pytest.fixture(autouse=True)
def pylayers_on_path(monkeypatch):
    monkeypatch.syspath_prepend(PYLAYERS)
    yield
    for name in ("voc_layers", "roi_data_layer", "roi_data_layer.layer"):
        sys.modules.pop(name, None)


def build(path, phase):
    shapes, stages = NETS[path]
    phase_name = "TRAIN" if phase == sppcaffe.TRAIN else "TEST"
    return sppcaffe.Net(os.path.join(COMMUNITY, path), phase, data_shapes=shapes,
                        stages=stages.get(phase_name, ()))


@pytest.mark.parametrize("phase", [sppcaffe.TRAIN, sppcaffe.TEST], ids=["TRAIN", "TEST"])
@pytest.mark.parametrize("path", sorted(NETS))
def test_train_val_net_builds(path, phase):
    net = build(path, phase)
    assert len(net.layers) > 3
    assert net.outputs


# A forward + backward pass on the nets small enough for the default run:
# every loss finite, every learnable parameter of a trainable layer reached.
@pytest.mark.parametrize("path", [
    "bvlc_examples/examples-cifar10-cifar10_full_sigmoid_train_test_bn.prototxt",
    "bvlc_examples/examples-mnist-mnist_autoencoder.prototxt",
    "bvlc_examples/examples-siamese-mnist_siamese_train_test.prototxt",
    "bvlc_examples/examples-coco_caption-lstm_language_model.prototxt",
    "fast_rcnn/VGG_CNN_M_1024-train.prototxt",
])
def test_train_net_runs_a_training_pass(path):
    sppcaffe.set_random_seed(0)
    net = build(path, sppcaffe.TRAIN)
    rng = np.random.default_rng(0)
    for name, shape in NETS[path][0].items():
        if "sentence" in name or name in ("label", "sim"):
            values = rng.integers(0, 2, shape)
            if name == "cont_sentence":
                values[0] = 0
        else:
            values = rng.standard_normal(shape)
        net.blobs[name].data[...] = values
    loss = net.forward_backward()
    assert np.isfinite(loss)
    learned = [p for p, lr in zip(net.learnable_params, net.params_lr) if lr]
    assert any(np.any(p.diff != 0) for p in learned)
