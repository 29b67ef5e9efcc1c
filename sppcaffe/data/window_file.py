"""R-CNN window files and the WindowData layer's batches (Caffe's
window_data_layer.cpp).

Window file format, repeated for every image (whitespace separated):

    # image_index
    img_path
    channels
    height
    width
    num_windows
    class_index overlap x1 y1 x2 y2      (num_windows lines, 0-based inclusive pixels)

Windows with overlap >= fg_threshold are foreground (their class must be
> 0), those with overlap < bg_threshold background (class and overlap set
to 0); others are dropped.  A batch samples, with replacement, the
background windows first then the foreground ones (int(batch_size *
fg_fraction) of them), each warped to crop_size x crop_size with
`context_pad` pixels of context (`crop_mode: square` first makes the box
square), mirrored at random with `mirror`, minus the mean, times `scale`.
Pixels the context reaches beyond the image stay 0, as in Caffe.
"""
import math
import os

import numpy as np

from ..io.files import read_bytes, read_text_file
from .batch import Batch, BatchReader
from .errors import DataError
from .image import decode_image, to_chw
from .transformer import load_mean_image

F32 = np.float32
IMAGE, LABEL, OVERLAP, X1, Y1, X2, Y2 = range(7)


def _tokens(path):
    try:
        text = read_text_file(path, "window file", DataError)
    except OSError as err:
        raise DataError(str(err)) from None
    return [(token, number) for number, line in enumerate(text.splitlines(), 1)
            for token in line.split()]


def read_window_file(path, root_folder="", fg_threshold=0.5, bg_threshold=0.5):
    """(images, foreground, background): images is [(path, (c, h, w))] in
    file order; foreground and background are float arrays with one row
    (image index, label, overlap, x1, y1, x2, y2) per window."""
    path = os.fspath(path)
    tokens = _tokens(path)
    if not tokens:
        raise DataError(f"window file '{path}' is empty")
    pos = 0

    def take(kind, what):
        nonlocal pos
        if pos >= len(tokens):
            raise DataError(f"{path}: file ends where {what} was expected")
        token, number = tokens[pos]
        pos += 1
        try:
            return kind(token)
        except ValueError:
            raise DataError(f"{path}:{number}: expected {what}, got '{token}'") from None

    images, windows = [], []
    while pos < len(tokens):
        line = tokens[pos][1]
        if take(str, "'#'") != "#":
            raise DataError(f"{path}:{line}: expected '# image_index', got '{tokens[pos - 1][0]}'")
        index = take(int, "an image index")
        if index != len(images):
            # Caffe looks images up by their position in the file.
            raise DataError(f"{path}:{line}: image index {index}, but this is image "
                            f"{len(images)} of the file; indices must be 0, 1, 2, ... in order")
        image_path = root_folder + take(str, "an image path")
        size = tuple(take(int, what) for what in ("channels", "height", "width"))
        for _ in range(take(int, "a number of windows")):
            label = take(int, "a class index")
            overlap = take(float, "an overlap")
            box = [take(int, f"window coordinate {c}") for c in ("x1", "y1", "x2", "y2")]
            windows.append([index, label, overlap] + box)
        images.append((image_path, size))
    windows = np.asarray(windows, np.float64).reshape(-1, 7)
    overlap = windows[:, OVERLAP].astype(F32)
    foreground = windows[overlap >= F32(fg_threshold)]
    background = windows[(overlap < F32(bg_threshold)) & (overlap < F32(fg_threshold))].copy()
    bad = foreground[foreground[:, LABEL] <= 0]
    if len(bad):
        image = images[int(bad[0, IMAGE])][0]
        raise DataError(f"window file '{path}': a foreground window of '{image}' (overlap "
                        f"{bad[0, OVERLAP]:g} >= fg_threshold) has class {int(bad[0, LABEL])}; "
                        "foreground classes must be > 0")
    background[:, [LABEL, OVERLAP]] = 0
    return images, foreground, background


def _round(value):
    """C's round(): halves away from zero."""
    value = float(value)
    return int(math.floor(value + 0.5)) if value >= 0 else int(math.ceil(value - 0.5))


def warp_window(image, box, crop_size, context_pad=0, square=False, mirror=False):
    """Caffe's window warp, in its float32 arithmetic.  Returns (warped HWC
    image, pad_h, pad_w): the warped region goes at (pad_h, pad_w) of the
    crop_size x crop_size output."""
    x1, y1, x2, y2 = (int(v) for v in box)
    rows, cols = image.shape[:2]
    crop_h = crop_w = crop_size
    pad_h = pad_w = 0
    if context_pad > 0 or square:
        context_scale = F32(crop_size) / F32(crop_size - 2 * context_pad)
        half_height = F32((y2 - y1 + 1) / 2.0)
        half_width = F32((x2 - x1 + 1) / 2.0)
        center_x, center_y = F32(x1) + half_width, F32(y1) + half_height
        if square:
            half_height = half_width = max(half_height, half_width)
        x1 = _round(center_x - half_width * context_scale)
        x2 = _round(center_x + half_width * context_scale)
        y1 = _round(center_y - half_height * context_scale)
        y2 = _round(center_y + half_height * context_scale)
        unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
        pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
        pad_x2, pad_y2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
        x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
        scale_x = F32(crop_size) / F32(unclipped_w)
        scale_y = F32(crop_size) / F32(unclipped_h)
        crop_w = _round(F32(x2 - x1 + 1) * scale_x)
        crop_h = _round(F32(y2 - y1 + 1) * scale_y)
        pad_x1, pad_x2 = _round(F32(pad_x1) * scale_x), _round(F32(pad_x2) * scale_x)
        pad_h = _round(F32(pad_y1) * scale_y)
        pad_w = pad_x2 if mirror else pad_x1      # mirrored, the padding is mirrored too
        crop_h = min(crop_h, crop_size - pad_h)   # rounding may overshoot the output
        crop_w = min(crop_w, crop_size - pad_w)
    if not (0 <= x1 <= x2 < cols and 0 <= y1 <= y2 < rows):
        raise DataError(f"window ({x1}, {y1}, {x2}, {y2}) is not inside the {cols}x{rows} "
                        "image (x1 y1 x2 y2 are 0-based inclusive pixels)")
    if crop_h <= 0 or crop_w <= 0:
        raise DataError(f"window ({x1}, {y1}, {x2}, {y2}) warps to an empty region")
    import cv2          # where used: see image.DECODE_FLAGS
    warped = cv2.resize(image[y1:y2 + 1, x1:x2 + 1], (crop_w, crop_h),
                        interpolation=cv2.INTER_LINEAR)
    if mirror:
        warped = warped[:, ::-1]
    return warped, pad_h, pad_w


class WindowBatchReader(BatchReader):
    type = "WindowData"

    def __init__(self, param, phase, num_top):
        super().__init__(param.name, num_top)
        wp, tp = param.window_data_param, param.transform_param
        if len(tp.multi_size):
            raise self.error("multi_size is not supported: WindowData samples windows at "
                             "random and has no epochs")
        self.batch_size = int(wp.batch_size)
        if self.batch_size <= 0:
            raise self.error("window_data_param.batch_size must be positive")
        self.crop_size = int(tp.crop_size)
        if self.crop_size <= 0:
            raise self.error("transform_param.crop_size (the warped window size) must be set")
        if wp.crop_mode not in ("warp", "square"):
            raise self.error(f"crop_mode must be 'warp' or 'square', got '{wp.crop_mode}'")
        self.square = wp.crop_mode == "square"
        self.context_pad = int(wp.context_pad)
        if 2 * self.context_pad >= self.crop_size:
            raise self.error(f"context_pad {self.context_pad} leaves nothing of crop_size "
                             f"{self.crop_size}")
        self.mirror = bool(tp.mirror)
        # BVLC reads the scale from window_data_param only; transform_param.scale
        # (where Caffe's V1 upgrade moves it) is used when that is unset.
        self.scale = F32(wp.scale if wp.HasField("scale") else tp.scale)
        self.source = wp.source
        try:
            self.images, self.fg, self.bg = read_window_file(
                wp.source, wp.root_folder, wp.fg_threshold, wp.bg_threshold)
        except DataError as err:
            raise self.error(str(err)) from None
        self.channels = self.images[-1][1][0]     # as Caffe: the last image's
        for path, (channels, _, _) in self.images:
            if channels != 3:
                raise self.error(f"images are read in colour (3 channels), but the window "
                                 f"file '{wp.source}' lists '{path}' with {channels}")
        self.num_fg = int(F32(self.batch_size) * F32(wp.fg_fraction))
        for count, windows, kind in ((self.num_fg, self.fg, "foreground"),
                                     (self.batch_size - self.num_fg, self.bg, "background")):
            if count and not len(windows):
                raise self.error(f"a batch needs {count} {kind} windows but '{wp.source}' has "
                                 f"none (fg_threshold {wp.fg_threshold:g}, bg_threshold "
                                 f"{wp.bg_threshold:g})")
        self._setup_mean(tp)
        self.cache = None
        if wp.cache_images:
            self.cache = [self._read_bytes(path) for path, _ in self.images]

    def _setup_mean(self, tp):
        if tp.HasField("mean_file") and len(tp.mean_value):
            raise self.error("cannot specify mean_file and mean_value at the same time")
        self.mean_image = self.mean_values = None
        if tp.HasField("mean_file"):
            try:
                self.mean_image = load_mean_image(tp.mean_file)
            except DataError as err:
                raise self.error(str(err)) from None
            c, h, w = self.mean_image.shape
            self.mean_off = (w - self.crop_size) // 2     # Caffe centres by the width
            if c != self.channels or self.mean_off < 0 or self.mean_off + self.crop_size > h:
                raise self.error(f"mean_file '{tp.mean_file}' is {c}x{h}x{w}; it needs "
                                 f"{self.channels} channels and room for a centred "
                                 f"{self.crop_size}x{self.crop_size} crop")
        elif len(tp.mean_value):
            if len(tp.mean_value) not in (1, self.channels):
                raise self.error(f"specify either 1 mean_value or as many as channels "
                                 f"({self.channels}), got {len(tp.mean_value)}")
            self.mean_values = np.asarray(tp.mean_value, F32)[:, None, None]

    def _read_bytes(self, path):
        try:
            return read_bytes(path, "image")
        except OSError as err:
            raise self.error(f"{err} (listed in window file '{self.source}')") from None

    def _image(self, index):
        path = self.images[index][0]
        data = self.cache[index] if self.cache is not None else self._read_bytes(path)
        image = decode_image(data, "color")
        if image is None:
            raise self.error(f"cannot decode image '{path}' (listed in window file "
                             f"'{self.source}')")
        return image

    def top_shapes(self):
        return [(self.batch_size, self.channels, self.crop_size, self.crop_size),
                (self.batch_size,)]

    def next_batch(self):
        out = np.zeros(self.top_shapes()[0], F32)
        labels = np.empty(self.batch_size, F32)
        item = 0
        for windows, count in ((self.bg, self.batch_size - self.num_fg), (self.fg, self.num_fg)):
            for _ in range(count):
                window = windows[self.rng.integers(len(windows))]
                mirror = bool(self.mirror and self.rng.integers(2))
                index = int(window[IMAGE])
                try:
                    warped, pad_h, pad_w = warp_window(
                        self._image(index), window[X1:Y2 + 1], self.crop_size,
                        self.context_pad, self.square, mirror)
                except DataError as err:
                    raise self.error(f"image '{self.images[index][0]}' (listed in window file "
                                     f"'{self.source}'): {err}") from None
                self._store(out[item], to_chw(warped), pad_h, pad_w)
                labels[item] = window[LABEL]
                item += 1
        return Batch([out, labels], 0, None)

    def cursor_state(self):
        # Windows are drawn with replacement: the generator is the whole position.
        return {"source": self.source}

    def _store(self, out, pixels, pad_h, pad_w):
        """out[:, region] = (pixels - mean) * scale, the region starting at
        (pad_h, pad_w)."""
        _, h, w = pixels.shape
        region = out[:, pad_h:pad_h + h, pad_w:pad_w + w]
        if self.mean_image is not None:
            top, left = self.mean_off + pad_h, self.mean_off + pad_w
            np.subtract(pixels, self.mean_image[:, top:top + h, left:left + w], out=region,
                        dtype=F32)
        elif self.mean_values is not None:
            np.subtract(pixels, self.mean_values, out=region, dtype=F32)
        else:
            region[...] = pixels
        if self.scale != 1:
            region *= self.scale
