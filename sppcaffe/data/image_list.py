"""Image list files (`path label` per line, as convert_imageset and the
ImageData layer read them) and the ImageData layer's batches."""
import os

import numpy as np

from ..io.files import read_text_file
from .batch import Batch, BatchReader, ReaderStateMismatch
from .errors import DataError
from .image import read_image, to_chw
from .transformer import DataTransformer


def read_image_list(path):
    """[(image path, label, line number)] of a list file.  As Caffe, the
    label follows the LAST space of a line, so paths may contain spaces;
    blank lines are skipped."""
    path = os.fspath(path)
    try:
        lines = read_text_file(path, "image list", DataError).splitlines()
    except OSError as err:
        raise DataError(str(err)) from None
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        image, sep, label = line.rstrip().rpartition(" ")
        try:
            if not sep or not image:
                raise ValueError
            entries.append((image, int(label), number))
        except ValueError:
            raise DataError(f"{path}:{number}: expected 'IMAGE_PATH LABEL' with an integer "
                            f"label, got '{line}'") from None
    return entries


class ImageListBatchReader(BatchReader):
    """Caffe's image_data_layer.cpp: images of the list in order (shuffled
    at setup and at every new epoch with `shuffle: true`), read with
    OpenCV, resized to new_height x new_width when both are set.  Batches
    take their shape from their first image, so batch_size 1 lets every
    image keep its own size."""
    type = "ImageData"

    def __init__(self, param, phase, num_top):
        super().__init__(param.name, num_top)
        p = param.image_data_param
        self.source, self.root = p.source, p.root_folder
        self.batch_size = int(p.batch_size)
        if self.batch_size <= 0:
            raise self.error("image_data_param.batch_size must be positive")
        self.new_height, self.new_width = int(p.new_height), int(p.new_width)
        if (self.new_height > 0) != (self.new_width > 0):
            raise self.error("new_height and new_width must be set together, got "
                             f"{self.new_height} and {self.new_width}")
        self.is_color, self.shuffle = bool(p.is_color), bool(p.shuffle)
        self.transformer = DataTransformer(param.transform_param, phase, self.rng, self.where)
        try:
            self.entries = read_image_list(self.source)
        except DataError as err:
            raise self.error(str(err)) from None
        if not self.entries:
            raise self.error(f"image list '{self.source}' lists no images")
        self.order = np.arange(len(self.entries))
        if self.shuffle:
            self.rng.shuffle(self.order)
        self.position, self.epoch = 0, 0
        if p.rand_skip:
            skip = int(self.rng.integers(p.rand_skip))
            if skip >= len(self.entries):
                raise self.error(f"rand_skip drew {skip} but '{self.source}' lists only "
                                 f"{len(self.entries)} images")
            self.position = skip

    def _read(self, index):
        image, label, line = self.entries[index]
        path = self.root + image             # Caffe concatenates: root_folder ends with '/'
        pixels = read_image(path, self.new_height, self.new_width, self.is_color)
        if pixels is None:
            raise self.error(f"cannot read image '{path}' (line {line} of '{self.source}')")
        return to_chw(pixels), label, path

    def top_shapes(self):
        first, _, path = self._read(self.order[self.position])
        item = self.transformer.output_shape(first.shape, 0, path)
        return [(self.batch_size,) + item, (self.batch_size,)]

    def next_batch(self):
        epoch = self.epoch
        items, names = [], []
        labels = np.empty(self.batch_size, np.float32)
        for i in range(self.batch_size):
            item, labels[i], path = self._read(self.order[self.position])
            items.append(item)
            names.append(path)
            self._advance()
        data = self.transformer.transform(items, epoch, names)
        return Batch([data, labels], epoch, self.transformer.size(epoch))

    def _advance(self):
        """On to the next image of the order; past the last, a new epoch
        (reshuffled with `shuffle`)."""
        self.position += 1
        if self.position == len(self.entries):
            self.position = 0
            self.epoch += 1
            if self.shuffle:
                # A new array: the old one may be part of a saved state().
                self.order = self.order.copy()
                self.rng.shuffle(self.order)

    def skip(self, count):
        """Pass over `count` images without reading them (other ranks'
        share under MPI, sppcaffe/parallel/sharding.py)."""
        for _ in range(count):
            self._advance()

    def cursor_state(self):
        return {"source": self.source, "images": len(self.entries), "order": self.order,
                "position": self.position, "epoch": self.epoch}

    def check_cursor(self, state):
        try:
            order = np.asarray(state["order"], np.int64)
            position, epoch = int(state["position"]), int(state["epoch"])
            images = int(state["images"])
        except (KeyError, TypeError, ValueError):
            raise ReaderStateMismatch("malformed ImageData state") from None
        if images != len(self.entries):
            raise ReaderStateMismatch(f"the image list '{state.get('source')}' had {images} "
                                      f"images, '{self.source}' has {len(self.entries)}")
        if (order.shape != (images,) or not 0 <= position < images or epoch < 0
                or not np.array_equal(np.sort(order), np.arange(images))):
            raise ReaderStateMismatch("malformed ImageData state (order or position)")

        def apply():
            self.order, self.position, self.epoch = order, position, epoch
        return apply
