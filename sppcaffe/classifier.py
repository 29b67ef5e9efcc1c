"""pycaffe's caffe.Classifier: a Net that classifies images, by the centre
crop or by averaging the 10 crops of caffe.io.oversample
(python/caffe/classifier.py).

    net = sppcaffe.Classifier("deploy.prototxt", "weights.caffemodel",
                              image_dims=(256, 256), mean=mean_bgr,
                              raw_scale=255, channel_swap=(2, 1, 0))
    probabilities = net.predict([sppcaffe.io.load_image("cat.jpg")])  # (1, classes)
"""
import numpy as np

from . import io
from .net import TEST, Net


def input_transformer(net, mean=None, input_scale=None, raw_scale=None, channel_swap=None):
    """A caffe.io.Transformer for the net's first input, set up as pycaffe's
    Classifier and Detector do: H x W x K images transposed to K x H x W,
    then the given channel swap, raw scale, mean and input scale."""
    if not net.inputs:
        raise ValueError(f"net '{net.name}' ({net.source}) has no Input blob to feed "
                         "images to (Classifier and Detector need a deploy net)")
    in_ = net.inputs[0]
    transformer = io.Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


class Classifier(Net):
    """A TEST-phase Net for image classification.

    `image_dims` (height, width): the size images are resized to before
    cropping (default: the net's input size, i.e. no cropping); `mean`,
    `input_scale`, `raw_scale`, `channel_swap`: the Transformer's settings
    (see sppcaffe.io.Transformer).
    """

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None,
                 input_scale=None, raw_scale=None, channel_swap=None):
        super().__init__(model_file, TEST, weights=pretrained_file)
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[self.inputs[0]].data.shape[2:])
        if not image_dims:
            image_dims = self.crop_dims
        self.image_dims = image_dims

    def predict(self, inputs, oversample=True):
        """Class scores of images (each H x W x K, as load_image gives):
        (N, classes), the net's first output.  With `oversample` each image
        is scored on its 10 crops (corners, centre, mirrors) and the scores
        averaged; without, on its centre crop."""
        in_ = self.inputs[0]
        batch = np.zeros((len(inputs), self.image_dims[0], self.image_dims[1],
                          inputs[0].shape[2]), dtype=np.float32)
        for ix, image in enumerate(inputs):
            batch[ix] = io.resize_image(image, self.image_dims)

        if oversample:
            batch = io.oversample(batch, self.crop_dims)
        else:
            centre = np.array(self.image_dims) / 2.0
            crop = np.concatenate([centre - self.crop_dims / 2.0,
                                   centre + self.crop_dims / 2.0]).astype(int)
            batch = batch[:, crop[0]:crop[2], crop[1]:crop[3], :]

        caffe_in = np.zeros(np.array(batch.shape)[[0, 3, 1, 2]], dtype=np.float32)
        for ix, image in enumerate(batch):
            caffe_in[ix] = self.transformer.preprocess(in_, image)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]

        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions
