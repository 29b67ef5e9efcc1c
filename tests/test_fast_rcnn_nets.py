"""Fast R-CNN's and py-faster-rcnn's real test nets (tests/caffe_models/
community) build and run forward: ROIPooling over conv5, the classifier and
box regressor per roi; py-faster-rcnn's proposals come from a Python layer
(a stand-in rpn.proposal_layer under tests/data/pylayers).  Also the fork's
Dropout `scale_train` those nets set."""
import importlib.util
import os

import numpy as np
import pytest

import sppcaffe
from gpu_check import compare_cpu_gpu
from gradient_check import layer_param
from sppcaffe.blob import Blob
from sppcaffe.layer import create_layer
from sppcaffe.proto import caffe_pb2

TESTS = os.path.dirname(os.path.abspath(__file__))
COMMUNITY = os.path.join(TESTS, "caffe_models", "community")
PYLAYERS = os.path.join(TESTS, "data", "pylayers")


def zoo_fill():
    path = os.path.join(COMMUNITY, "zoo_fill.py")
    spec = importlib.util.spec_from_file_location("zoo_fill", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_detections(net, r, conv5):
    """Shapes as the fork defines them for `r` rois, and the roi pooling of
    the whole map."""
    assert net.blobs["cls_prob"].shape == (r, 21)
    assert net.blobs["bbox_pred"].shape == (r, 84)
    prob = net.blobs["cls_prob"].data
    np.testing.assert_allclose(prob.sum(axis=1), 1, rtol=1e-5)
    assert np.isfinite(net.blobs["bbox_pred"].data).all()
    # Roi 0 covers the whole map: each channel's maximum is in some bin.
    pooled = net.blobs[conv5[1]].data
    feature = net.blobs[conv5[0]].data
    np.testing.assert_array_equal(pooled[0].max(axis=(1, 2)), feature[0].max(axis=(1, 2)))
    assert not np.array_equal(pooled[0], pooled[1])
    # Different boxes, different class scores.
    assert np.abs(prob[0] - prob[1]).max() > 0


def test_fast_rcnn_caffenet_test_net():
    net = sppcaffe.Net(os.path.join(COMMUNITY, "fast_rcnn", "CaffeNet-test.prototxt"),
                       sppcaffe.TEST)
    assert net.inputs == ["data", "rois"]
    zoo_fill().fill_params(net, 7)
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, 227, 227)).astype(np.float32)
    # (batch index, x1, y1, x2, y2) in image pixels, valid boxes.
    rois = np.array([[0, 0, 0, 226, 226], [0, 10, 20, 100, 200], [0, 150, 150, 160, 160],
                     [0, 0, 100, 226, 120], [0, 50, 50, 50, 50]], np.float32)
    net.blobs["rois"].reshape(*rois.shape)
    out = net.forward(data=image, rois=rois)
    assert sorted(out) == ["bbox_pred", "cls_prob"]
    assert net.blobs["pool5"].shape == (5, 256, 6, 6)
    check_detections(net, len(rois), ("conv5", "pool5"))


@pytest.fixture
def rpn_on_path(monkeypatch):
    monkeypatch.syspath_prepend(PYLAYERS)


def test_py_faster_rcnn_zf_end2end_test_net(rpn_on_path):
    net = sppcaffe.Net(os.path.join(COMMUNITY, "py_faster_rcnn",
                                    "ZF-faster_rcnn_end2end-test.prototxt"), sppcaffe.TEST)
    assert net.inputs == ["data", "im_info"]
    assert net.layer_dict["proposal"].type == "Python"
    zoo_fill().fill_params(net, 7)
    rng = np.random.default_rng(1)
    image = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    out = net.forward(data=image, im_info=np.array([[224, 224, 1.0]], np.float32))
    assert sorted(out) == ["bbox_pred", "cls_prob"]
    rois = net.blobs["rois"].data
    r = len(rois)
    assert rois.shape == (r, 5) and r > 1 and (rois[:, 0] == 0).all()
    assert (rois[:, 1:] >= 0).all() and (rois[:, 1:] <= 223).all()
    assert net.blobs["rpn_cls_prob_reshape"].shape == (1, 18, 15, 15)
    assert net.blobs["roi_pool_conv5"].shape == (r, 256, 6, 6)
    check_detections(net, r, ("conv5", "roi_pool_conv5"))


# ---- the fork's Dropout scale_train ---------------------------------------------------
def dropout(phase, scale_train):
    text = (f'name: "drop" type: "Dropout" dropout_param {{ dropout_ratio: 0.25 '
            f'scale_train: {str(scale_train).lower()} }}')
    return create_layer(layer_param(text), phase)


def test_dropout_scale_train_false_scales_at_test_time():
    bottom, top = [Blob((4, 5))], [Blob()]
    bottom[0].data[...] = np.arange(20).reshape(4, 5)
    layer = dropout(caffe_pb2.TEST, False)
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, 0.75 * bottom[0].data, rtol=1e-6)
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, 0.75, rtol=1e-6)
    # TRAIN keeps units unscaled.
    layer = dropout(caffe_pb2.TRAIN, False)
    bottom[0].data[...] = 1 + np.arange(20).reshape(4, 5)
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    kept = top[0].data != 0
    np.testing.assert_array_equal(top[0].data[kept], bottom[0].data[kept])


@pytest.mark.parametrize("phase", [caffe_pb2.TRAIN, caffe_pb2.TEST])
def test_dropout_scale_train_false_on_the_device(gpu_device, phase):
    if phase == caffe_pb2.TRAIN:
        # The device mask differs from the host's by design: check its rule.
        layer, bottom, top = dropout(phase, False), [Blob((6, 7))], [Blob()]
        bottom[0].data[...] = 1 + np.arange(42).reshape(6, 7)
        layer.setup(bottom, top)
        layer.forward_gpu(bottom, top)
        kept = top[0].data != 0
        assert kept.any() and not kept.all()
        np.testing.assert_array_equal(top[0].data[kept], bottom[0].data[kept])
        return
    compare_cpu_gpu(dropout(phase, False), [Blob((6, 7))], [Blob()])


def test_zf_end2end_in_gpu_mode_matches_cpu(rpn_on_path, gpu_device):
    # A smaller image keeps the host build quick; the net is the same.
    net = sppcaffe.Net(os.path.join(COMMUNITY, "py_faster_rcnn",
                                    "ZF-faster_rcnn_end2end-test.prototxt"), sppcaffe.TEST)
    zoo_fill().fill_params(net, 7)
    image = np.random.default_rng(2).standard_normal((1, 3, 96, 128)).astype(np.float32)
    net.blobs["data"].reshape(*image.shape)
    feed = {"data": image, "im_info": np.array([[96, 128, 1.0]], np.float32)}
    sppcaffe.set_mode_cpu()
    expected = {k: v.copy() for k, v in net.forward(**feed).items()}
    sppcaffe.set_mode_gpu()
    got = net.forward(**feed)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
