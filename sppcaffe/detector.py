"""pycaffe's caffe.Detector: R-CNN-style windowed detection with a Net —
each window cropped (optionally with context), warped to the net's input
size and classified (python/caffe/detector.py).

Windows are pycaffe's: (ymin, xmin, ymax, xmax) in 0-based pixels, the
maxima exclusive (``image[ymin:ymax, xmin:xmax]`` is the window).
`detect_selective_search` gets them from sppcaffe's selective search
(sppcaffe/detection/proposals.py, R-CNN's fast mode) where pycaffe called
the MATLAB selective_search_ijcv_with_python package.

This is the R-CNN mode (one forward pass per window); SPP-net's detector,
which pools every window from one conv5 map, is sppcaffe.detection.
"""
import os

import numpy as np

from . import io
from .classifier import input_transformer
from .net import TEST, Net


def proposal_windows(boxes):
    """Proposals (x1 y1 x2 y2, 1-based inclusive: sppcaffe.detection's
    convention) as pycaffe windows (ymin xmin ymax xmax, 0-based, maxima
    exclusive; R-CNN's Python wrapper subtracts 1 from the minima)."""
    boxes = np.asarray(boxes).reshape(-1, 4).astype(int)
    x1, y1, x2, y2 = boxes.T
    return np.stack([y1 - 1, x1 - 1, y2, x2], axis=1)


class Detector(Net):
    """A TEST-phase Net that scores image windows.

    `mean`, `input_scale`, `raw_scale`, `channel_swap`: the Transformer's
    settings (sppcaffe.io.Transformer).  `context_pad`: pixels of the net's
    input that are context around the window (R-CNN uses 16 on 227):
    the window is enlarged accordingly, and where that leaves the image the
    border is filled with the mean.
    """

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None, context_pad=None):
        super().__init__(model_file, TEST, weights=pretrained_file)
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """Score windows: `images_windows` is an iterable of (image filename,
        windows).  Returns one dict per window, in order:
        {"window": ..., "prediction": the net's first output, "filename": ...}."""
        images_windows = [(fname, windows) for fname, windows in images_windows]
        crops = []
        for fname, windows in images_windows:
            image = io.load_image(fname).astype(np.float32)
            crops.extend(self.crop(image, window) for window in windows)
        if not crops:
            return []

        in_ = self.inputs[0]
        caffe_in = np.zeros((len(crops), crops[0].shape[2]) + tuple(self.blobs[in_].data.shape[2:]),
                            dtype=np.float32)
        for ix, crop in enumerate(crops):
            caffe_in[ix] = self.transformer.preprocess(in_, crop)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]

        detections = []
        for fname, windows in images_windows:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[len(detections)],
                                   "filename": fname})
        return detections

    def detect_selective_search(self, image_fnames):
        """Score the selective-search proposals of each image (filenames)."""
        from .data.image import read_image
        from .detection.proposals import selective_search
        image_fnames = [os.path.abspath(os.fspath(f)) for f in image_fnames]
        images_windows = []
        for fname in image_fnames:
            image = read_image(fname)
            if image is None:
                raise ValueError(f"cannot read image '{fname}' for selective search")
            images_windows.append((fname, proposal_windows(selective_search(image))))
        return self.detect_windows(images_windows)

    def crop(self, im, window):
        """The window of `im` (H x W x K); with context_pad, the window grown
        by the context and placed in a crop of the net's input size whose
        parts outside the image hold the mean."""
        window = np.asarray(window)
        crop = im[int(window[0]):int(window[2]), int(window[1]):int(window[3])]
        if not self.context_pad:
            return crop

        crop_size = self.blobs[self.inputs[0]].width     # assumes a square input
        scale = crop_size / (1. * crop_size - self.context_pad * 2)
        # The window's centre and half sizes (pixel-inclusive), scaled by the context.
        half_h = (window[2] - window[0] + 1) / 2.
        half_w = (window[3] - window[1] + 1) / 2.
        centre = (window[0] + half_h, window[1] + half_w)
        box = np.round(np.tile(centre, 2) + scale * np.array((-half_h, -half_w, half_h, half_w)))
        full_h = box[2] - box[0] + 1
        full_w = box[3] - box[1] + 1
        scale_h = crop_size / full_h
        scale_w = crop_size / full_w
        pad_y = int(round(max(0, -box[0]) * scale_h))     # how far it leaves the image
        pad_x = int(round(max(0, -box[1]) * scale_w))

        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0., [im_h, im_w, im_h, im_w])
        clip_h = box[2] - box[0] + 1
        clip_w = box[3] - box[1] + 1
        if not (clip_h > 0 and clip_w > 0):
            raise ValueError(f"window {tuple(window.tolist())} lies outside the image "
                             f"({im_h} x {im_w})")
        crop_h = int(round(clip_h * scale_h))
        crop_w = int(round(clip_w * scale_w))
        crop_h = min(crop_h, crop_size - pad_y)
        crop_w = min(crop_w, crop_size - pad_x)

        box = box.astype(int)
        context_crop = io.resize_image(im[box[0]:box[2], box[1]:box[3]], (crop_h, crop_w))
        crop = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        crop[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context_crop
        return crop

    def configure_crop(self, context_pad):
        """The crop size (the input's H x W x K) and, with context, the mean
        in image space (before channel swap and raw scale) that fills the
        parts of a context crop outside the image."""
        in_ = self.inputs[0]
        inverse = np.argsort(self.transformer.transpose[in_])
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inverse]
        self.context_pad = context_pad
        if not self.context_pad:
            return
        crop_size = self.blobs[in_].width
        if not 0 < 2 * context_pad < crop_size:
            raise ValueError(f"context_pad {context_pad} leaves no room for the window in the "
                             f"net's {crop_size}-pixel input (it needs 0 <= 2 x context_pad "
                             f"< {crop_size})")
        channel_order = self.transformer.channel_swap.get(in_)
        raw_scale = self.transformer.raw_scale.get(in_)
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        crop_mean = np.array(mean, dtype=np.float64).transpose(inverse)
        if channel_order is not None:
            channel_order = list(channel_order)
            crop_mean = crop_mean[:, :, [channel_order.index(i)
                                         for i in range(crop_mean.shape[2])]]
        if raw_scale is not None:
            crop_mean /= raw_scale
        self.crop_mean = crop_mean
