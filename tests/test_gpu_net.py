"""Whole nets in GPU mode: device code for every compute layer, and no
copies between host and device while a net runs (Caffe's SyncedMemory
promise: blobs stay on the device until Python reads them)."""
import numpy as np
import pytest

import sppcaffe
from sppcaffe import LAYER_TYPES
from sppcaffe.layer import Layer

from golden_util import case_path

# Layers whose work is on the host by nature: they read files or Python
# arrays into their tops (the blobs then copy them up once), as Caffe's
# data layers fill host memory from their prefetch threads.
HOST_LAYERS = {"Input", "DummyData", "MemoryData", "Data", "ImageData", "HDF5Data", "WindowData",
               "HDF5Output"}


# Forward passes that move no numbers (Split shares its bottom's memory,
# Silence does nothing): the host code is already right on the device.
NO_ARITHMETIC_FORWARD = {"Split", "Silence"}


@pytest.mark.parametrize("type_name", sorted(set(LAYER_TYPES) - HOST_LAYERS))
def test_every_compute_layer_has_device_code(type_name):
    cls = LAYER_TYPES[type_name]
    if type_name not in NO_ARITHMETIC_FORWARD:
        assert cls.forward_gpu is not Layer.forward_gpu, f"{type_name} has no forward_gpu"
    if cls.backward is not Layer.backward and type_name != "Accuracy":   # Accuracy: no gradient
        assert cls.backward_gpu is not Layer.backward_gpu, f"{type_name} has no backward_gpu"


def test_a_training_pass_copies_only_the_loss(counting_device):
    device = counting_device
    net = sppcaffe.Net(case_path("zf5_spp_small", "net.prototxt"), sppcaffe.TRAIN)
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    net.blobs["label"].data[...] = rng.integers(0, 5, net.blobs["label"].shape)
    net.forward_backward()                  # first pass: inputs and params go up
    device.uploads = device.downloads = 0
    loss = net.forward_backward()
    losses = len(net._loss_tops)
    # The loss value is read on the host (as Caffe's Forward does) and its
    # diff, the loss weight, is set there: one copy each way per loss top.
    assert device.downloads <= losses and device.uploads <= losses, \
        (device.downloads, device.uploads)
    assert np.isfinite(loss)
