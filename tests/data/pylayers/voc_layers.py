"""Stand-in for FCN's voc_layers (fcn.berkeleyvision.org): the two data
layers its train/val nets name, emitting a fixed small image and label map
instead of reading PASCAL VOC / SBDD.  Written for pycaffe (import caffe)."""
import ast

import numpy as np

import caffe


class _SegDataLayer(caffe.Layer):
    height, width = 40, 48

    def setup(self, bottom, top):
        params = ast.literal_eval(self.param_str)
        self.mean = np.array(params["mean"], np.float32)
        self.rng = np.random.RandomState(params.get("seed", 0))
        if len(top) != 2:
            raise Exception("needs two tops: data and label")

    def reshape(self, bottom, top):
        top[0].reshape(1, 3, self.height, self.width)
        top[1].reshape(1, 1, self.height, self.width)

    def forward(self, bottom, top):
        image = self.rng.uniform(0, 255, (3, self.height, self.width)).astype(np.float32)
        top[0].data[...] = image - self.mean[:, None, None]
        top[1].data[...] = self.rng.randint(0, 21, (1, self.height, self.width))

    def backward(self, top, propagate_down, bottom):
        pass


class SBDDSegDataLayer(_SegDataLayer):
    pass


class VOCSegDataLayer(_SegDataLayer):
    pass
