"""pycaffe's caffe.io.Transformer: turn a loaded image (H x W x K, float in
[0, 1], RGB) into a net input (K x H x W, scaled, BGR, mean subtracted) and
back, with pycaffe's steps and order (python/caffe/io.py).

preprocess: float32 -> resize to the input's H x W -> transpose ->
channel swap -> * raw_scale -> - mean -> * input_scale.
deprocess undoes them in reverse order.

(Caffe's C++ DataTransformer, used by the data layers, is
sppcaffe/data/transformer.py; this one is the Python-side helper that
scripts and notebooks use.)
"""
import numpy as np

from .images import resize_image


class Transformer:
    """Preprocessing for the inputs of a net.

    `inputs` maps each input blob's name to its shape (N, K, H, W), e.g.
    ``Transformer({"data": net.blobs["data"].data.shape})``.  Each setting
    is per input name.
    """

    def __init__(self, inputs):
        self.inputs = inputs
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def _check_input(self, in_):
        if in_ not in self.inputs:
            raise ValueError(f"'{in_}' is not one of the net inputs: {sorted(self.inputs)}")

    def preprocess(self, in_, data):
        """(H' x W' x K) array -> (K x H x W) float32 input for blob `in_`."""
        self._check_input(in_)
        caffe_in = np.asarray(data).astype(np.float32, copy=False)
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        in_dims = tuple(self.inputs[in_][2:])
        if caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if transpose is not None:
            caffe_in = caffe_in.transpose(transpose)
        if channel_swap is not None:
            caffe_in = caffe_in[list(channel_swap), :, :]
        # The in-place steps must not write into the caller's array (no
        # resize, transpose or swap made a copy when `data` was float32).
        if np.may_share_memory(caffe_in, data):
            caffe_in = caffe_in.copy()
        if raw_scale is not None:
            caffe_in *= raw_scale
        if mean is not None:
            caffe_in -= mean
        if input_scale is not None:
            caffe_in *= input_scale
        return caffe_in

    def deprocess(self, in_, data):
        """Undo `preprocess` (except the resize): a net input or an
        (1, K, H, W) blob -> (H x W x K)."""
        self._check_input(in_)
        decaf_in = np.array(data, copy=True).squeeze()
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            decaf_in /= input_scale
        if mean is not None:
            decaf_in += mean
        if raw_scale is not None:
            decaf_in /= raw_scale
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap), :, :]
        if transpose is not None:
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in

    def set_transpose(self, in_, order):
        """The axis order taking the image to the input, e.g. (2, 0, 1) for
        H x W x K -> K x H x W."""
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise ValueError(f"transpose order {tuple(order)} for '{in_}' needs "
                             f"{len(self.inputs[in_]) - 1} axes, as the input "
                             f"{tuple(self.inputs[in_])} without its batch axis")
        self.transpose[in_] = order

    def set_channel_swap(self, in_, order):
        """The order to take the channels in, after the transpose: (2, 1, 0)
        takes RGB to Caffe's BGR."""
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise ValueError(f"channel swap {tuple(order)} for '{in_}' needs one entry per "
                             f"input channel ({self.inputs[in_][1]})")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_, scale):
        """Multiply the image by `scale` before subtracting the mean (255 for
        models trained on [0, 255] pixels, as the reference ImageNet ones)."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """The mean to subtract: one value per channel (K,), or a per-pixel
        mean (K x H x W, or H x W), resized to the input's H x W when it
        differs (as pycaffe: rescaled to [0, 1], resized, scaled back)."""
        self._check_input(in_)
        mean = np.asarray(mean)
        shape = mean.shape
        if mean.ndim == 1:
            if shape[0] != self.inputs[in_][1]:
                raise ValueError(f"mean for '{in_}' has {shape[0]} channels, the input has "
                                 f"{self.inputs[in_][1]}")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(shape) == 2:
                shape = (1,) + shape
            if len(shape) != 3:
                raise ValueError(f"mean for '{in_}' must be (K,), (H, W) or (K, H, W), "
                                 f"got shape {mean.shape}")
            in_shape = tuple(self.inputs[in_][1:])
            if shape != in_shape:
                if mean.ndim == 2:
                    mean = mean[np.newaxis]
                low, high = mean.min(), mean.max()
                if high > low:
                    normal = (mean - low) / (high - low)
                    mean = resize_image(normal.transpose((1, 2, 0)),
                                        in_shape[1:]).transpose((2, 0, 1)) * (high - low) + low
                else:
                    mean = np.full((shape[0],) + in_shape[1:], low, dtype=np.float32)
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Multiply the input by `scale` after subtracting the mean."""
        self._check_input(in_)
        self.input_scale[in_] = scale
