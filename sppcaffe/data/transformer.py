"""Caffe's DataTransformer: mean subtraction, scaling, cropping and
mirroring of the items of a batch, plus SPP-net's multi-size resize.

Per item, exactly as data_transformer.cpp: out = (x - mean) * scale over
the crop window, mirrored horizontally when drawn.  The mean is either a
mean image (`mean_file`, a binaryproto of the data's own size, read at the
crop's offsets) or `mean_value` (one value, or one per channel).  Crops are
random in TRAIN and centred in TEST (offsets (h - crop) / 2); mirroring,
when `mirror: true`, is random in both phases, as in Caffe.  Because every
step is element-wise, cropping first and subtracting the mean's window
gives Caffe's float32 values exactly while touching only the crop.

Multi-size (sppcaffe extension, see multi_size.py): the result is then
resized, plane by plane with cv2.resize (bilinear, float32), to the
current epoch's size.

Random draws come from the generator the transformer is given (the
layer's own, seeded from sppcaffe.random at layer setup), in a fixed order
per batch: mirror flags, row offsets, column offsets.
"""
import numpy as np

from .. import io
from ..layer import LayerError
from ..proto import caffe_pb2
from .errors import DataError
from .multi_size import SizeSchedule

TRAIN = caffe_pb2.TRAIN


def _shape_text(shape):
    return "x".join(str(int(d)) for d in shape)


def load_mean_image(path):
    """A mean binaryproto (1 x C x H x W, as compute_image_mean writes) as
    a C x H x W float32 array."""
    try:
        mean = io.read_blobproto(path)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read mean_file '{path}': {err}") from None
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3:
        raise DataError(f"mean_file '{path}' has shape {_shape_text(mean.shape)}; expected "
                        "1 x channels x height x width")
    return np.ascontiguousarray(mean, np.float32)


def resize_planes(batch, size):
    """Every H x W plane of an N x C x H x W float32 batch resized to
    size x size (bilinear).  Plane by plane, so an item's values do not
    depend on how many items or channels the batch has."""
    import cv2          # where used: see image.DECODE_FLAGS
    n, c, h, w = batch.shape
    out = np.empty((n, c, size, size), np.float32)
    for src, dst in zip(batch.reshape(n * c, h, w), out.reshape(n * c, size, size)):
        cv2.resize(src, (size, size), dst=dst, interpolation=cv2.INTER_LINEAR)
    return out


class DataTransformer:
    def __init__(self, param, phase, rng, where="data transformer"):
        """`param`: a TransformationParameter; `rng`: a numpy Generator;
        `where` prefixes error messages (e.g. "layer 'data' (Data)")."""
        self.where = where
        self.phase = phase
        self.rng = rng
        self.scale = np.float32(param.scale)
        self.crop_size = int(param.crop_size)
        self.mirror = bool(param.mirror)
        if param.HasField("mean_file") and len(param.mean_value):
            raise self.error("cannot specify mean_file and mean_value at the same time")
        self.mean_file = param.mean_file if param.HasField("mean_file") else None
        try:
            self.mean_image = load_mean_image(self.mean_file) if self.mean_file else None
        except DataError as err:
            raise self.error(str(err)) from None
        self.mean_values = (np.asarray(param.mean_value, np.float32)
                            if len(param.mean_value) else None)
        if param.force_color and param.force_gray:
            raise self.error("cannot set both force_color and force_gray")
        self.decode_mode = ("color" if param.force_color else
                            "gray" if param.force_gray else "native")
        self.forces_decoding = param.force_color or param.force_gray
        try:
            self.schedule = SizeSchedule.from_param(param, rng)
        except ValueError as err:
            raise self.error(f"transform_param: {err}") from None

    def error(self, message):
        return LayerError(f"{self.where}: {message}")

    def size(self, epoch):
        """The multi-size side length of `epoch`, or None without multi-size."""
        return self.schedule.size(epoch) if self.schedule else None

    def output_shape(self, item_shape, epoch=0, name=None):
        """C x H x W of a transformed item (Caffe's InferBlobShape); `name`
        names the item in errors."""
        self._check_items([tuple(item_shape)], None if name is None else [name])
        c, h, w = item_shape
        if self.crop_size:
            h = w = self.crop_size
        size = self.size(epoch)
        return (c, size, size) if size else (c, h, w)

    def _check_crop(self, h, w, what):
        if h < self.crop_size or w < self.crop_size:
            raise self.error(f"{what} is {h}x{w} (height x width), smaller than crop_size "
                             f"{self.crop_size}")

    def _check_items(self, shapes, names):
        name = (lambda i: f"'{names[i]}'") if names else (lambda i: f"#{i}")
        if len(shapes[0]) != 3:
            raise self.error(f"items must be channels x height x width, got shape "
                             f"{shapes[0]}")
        channels = shapes[0][0]
        for i, shape in enumerate(shapes):
            if shape[0] != channels:
                raise self.error(f"items of a batch need the same number of channels: item "
                                 f"{name(0)} has {channels}, item {name(i)} has {shape[0]}")
            if self.crop_size:
                self._check_crop(shape[1], shape[2], f"item {name(i)}")
            elif shape != shapes[0]:
                raise self.error(
                    f"items of a batch must have the same size when there is no crop_size: "
                    f"item {name(0)} is {_shape_text(shapes[0])}, item {name(i)} is "
                    f"{_shape_text(shape)} (resize them, set crop_size, or use batch_size 1)")
            if self.mean_image is not None and shape != self.mean_image.shape:
                raise self.error(
                    f"mean_file '{self.mean_file}' is {_shape_text(self.mean_image.shape)} but "
                    f"item {name(i)} is {_shape_text(shape)}; the mean must have the data's "
                    f"size before cropping")
        if self.mean_values is not None and len(self.mean_values) not in (1, channels):
            raise self.error(f"specify either 1 mean_value or as many as channels "
                             f"({channels}), got {len(self.mean_values)}")

    def transform(self, items, epoch=0, names=None):
        """An N x C x H x W float32 batch from N CHW arrays (uint8 or float;
        with crop_size they may differ in height and width), or from one
        N x C x H x W array.  `names` (one per item) are used in error
        messages."""
        if isinstance(items, np.ndarray) and not self.crop_size and not self.mirror:
            return self._transform_stacked(items, epoch, names)
        shapes = [tuple(x.shape) for x in items]
        if not shapes:
            raise self.error("no items to transform")
        self._check_items(shapes, names)
        n, channels = len(items), shapes[0][0]
        heights = np.array([s[1] for s in shapes])
        widths = np.array([s[2] for s in shapes])
        rng = self.rng
        flip = rng.integers(0, 2, size=n).astype(bool) if self.mirror else np.zeros(n, bool)
        if self.crop_size:
            out_h = out_w = self.crop_size
            if self.phase == TRAIN:
                h_off = rng.integers(0, heights - out_h + 1)
                w_off = rng.integers(0, widths - out_w + 1)
            else:
                h_off, w_off = (heights - out_h) // 2, (widths - out_w) // 2
        else:
            out_h, out_w = shapes[0][1:]
            h_off = w_off = np.zeros(n, int)

        out = np.empty((n, channels, out_h, out_w), np.float32)
        for i, item in enumerate(items):
            rows = slice(h_off[i], h_off[i] + out_h)
            cols = slice(w_off[i], w_off[i] + out_w)
            window = item[:, rows, cols]
            mean = None if self.mean_image is None else self.mean_image[:, rows, cols]
            if flip[i]:
                window = window[:, :, ::-1]
                mean = None if mean is None else mean[:, :, ::-1]
            if mean is None:
                out[i] = window
            else:
                np.subtract(window, mean, out=out[i], dtype=np.float32)
        return self._finish(out, epoch)

    def _transform_stacked(self, items, epoch, names):
        """transform() of one N x C x H x W array without crop or mirror:
        the same arithmetic on the whole batch at once (no random draws
        either way), for a Data layer's raw datums."""
        if items.ndim != 4 or not len(items):
            return self.transform(list(items), epoch, names)
        self._check_items([tuple(items.shape[1:])], names)
        out = np.empty(items.shape, np.float32)
        if self.mean_image is None:
            out[...] = items
        else:
            np.subtract(items, self.mean_image, out=out, dtype=np.float32)
        return self._finish(out, epoch)

    def _finish(self, out, epoch):
        """Mean values, scale and the multi-size resize of a batch."""
        if self.mean_values is not None:
            out -= self.mean_values[:, None, None]
        if self.scale != 1:
            out *= self.scale
        size = self.size(epoch)
        if size and out.shape[2:] != (size, size):
            out = resize_planes(out, size)
        return out
