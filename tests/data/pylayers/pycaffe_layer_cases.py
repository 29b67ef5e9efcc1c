"""Python layers written for pycaffe (``import caffe``), for
tests/test_python_layer.py: a learnable one, a loss, a data layer, and
layers that fail in the ways Caffe users meet."""
import json

import numpy as np

import caffe


class ScaleByParam(caffe.Layer):
    """top = w * bottom with one learnable scalar w (param_str: {"init": w})."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = json.loads(self.param_str or "{}").get("init", 1.0)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += np.sum(top[0].diff * bottom[0].data)
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff


class EuclideanLoss(caffe.Layer):
    """pycaffe's example loss: sum of squared differences / (2 num); the
    loss weight arrives as the top's diff."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.0

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if propagate_down[i]:
                sign = 1 if i == 0 else -1
                bottom[i].diff[...] = sign * top[0].diff[0] * self.diff / bottom[i].num


class CountingData(caffe.Layer):
    """No bottoms: batches of consecutive integers (BVLC's SimpleDataLayer)."""

    def setup(self, bottom, top):
        self.batch = 4
        self.next = 0
        top[0].reshape(self.batch)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        top[0].data[...] = np.arange(self.next, self.next + self.batch)
        self.next += self.batch

    def reset(self, start=0):
        self.next = start

    def backward(self, top, propagate_down, bottom):
        pass


class Attributes(caffe.Layer):
    """Reports what Caffe hands a Python layer: phase, param_str, type."""

    def setup(self, bottom, top):
        self.seen = {"phase": self.phase, "param_str": self.param_str,
                     "param_str_": self.param_str_, "type": self.type,
                     "blobs": len(self.blobs)}

    def reshape(self, bottom, top):
        top[0].reshape(1)

    def forward(self, bottom, top):
        top[0].data[...] = self.phase


class FailingSetup(caffe.Layer):
    def setup(self, bottom, top):
        raise Exception("needs exactly one bottom")


class NoForward(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)


class FailingForward(NoForward):
    def forward(self, bottom, top):
        raise KeyError("missing key")


NOT_A_CLASS = 3
