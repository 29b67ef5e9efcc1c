"""Stand-in for Fast R-CNN's roi_data_layer.layer.RoIDataLayer: two images'
worth of fixed regions with labels and regression targets, in the tops and
shapes of the original (data, rois, labels, bbox_targets, bbox loss
weights), instead of reading an roidb.  Written for pycaffe (import caffe)."""
import numpy as np

import caffe


class RoIDataLayer(caffe.Layer):
    images, rois_per_image, height, width = 2, 4, 96, 128

    def setup(self, bottom, top):
        # Fast R-CNN's param_str is a dict body: "'num_classes': 21".
        self.num_classes = int(eval("{" + self.param_str + "}")["num_classes"])   # noqa: S307
        self.rng = np.random.RandomState(3)

    def reshape(self, bottom, top):
        r = self.images * self.rois_per_image
        top[0].reshape(self.images, 3, self.height, self.width)
        top[1].reshape(r, 5)
        top[2].reshape(r)
        for t in top[3:]:
            t.reshape(r, 4 * self.num_classes)

    def forward(self, bottom, top):
        r = self.images * self.rois_per_image
        top[0].data[...] = self.rng.randn(*top[0].data.shape)
        x1 = self.rng.randint(0, self.width // 2, r)
        y1 = self.rng.randint(0, self.height // 2, r)
        top[1].data[...] = np.stack([np.repeat(np.arange(self.images), self.rois_per_image), x1, y1,
                                     x1 + self.width // 3, y1 + self.height // 3], axis=1)
        labels = self.rng.randint(0, self.num_classes, r)
        top[2].data[...] = labels
        targets = np.zeros((r, 4 * self.num_classes), np.float32)
        weights = np.zeros_like(targets)
        for i, c in enumerate(labels):
            if c:
                targets[i, 4 * c:4 * c + 4] = self.rng.randn(4)
                weights[i, 4 * c:4 * c + 4] = 1
        top[3].data[...] = targets
        for t in top[4:]:
            t.data[...] = weights

    def backward(self, top, propagate_down, bottom):
        pass
