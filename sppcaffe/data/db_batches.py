"""Batches of the Data layer: Datums read from an LMDB database in key
order, cycling at its end (Caffe's data_layer.cpp)."""
import logging

import numpy as np
from google.protobuf.message import DecodeError

from ..proto import caffe_pb2
from .batch import Batch, BatchReader, ReaderStateMismatch
from .datum import datum_to_array, parse_datum
from .db import DatumReader
from .errors import DataError
from .transformer import DataTransformer

_log = logging.getLogger(__name__)


def _parse_all(records):
    """The Datums of serialized `records`, or None if one does not parse
    (then the per-record parse names it)."""
    try:
        return [caffe_pb2.Datum.FromString(value) for _, value in records]
    except DecodeError:
        return None


def _raw_pixels(datums):
    """(N x C x H x W uint8 pixels, float32 labels) of Datums that all hold
    raw bytes of one shape, else None (encoded images, float_data,
    differing shapes, or anything datum_to_array would refuse: those take
    the per-datum way, which says what is wrong)."""
    first = datums[0]
    shape = (first.channels, first.height, first.width)
    if min(shape) <= 0 or len(first.data) != shape[0] * shape[1] * shape[2]:
        return None
    if any(d.encoded or (d.channels, d.height, d.width) != shape or len(d.data) != len(first.data)
           for d in datums):
        return None
    pixels = np.frombuffer(b"".join([d.data for d in datums]), np.uint8)
    labels = np.array([d.label for d in datums], np.float32)
    return pixels.reshape((len(datums),) + shape), labels


class DBBatchReader(BatchReader):
    type = "Data"

    def __init__(self, param, phase, num_top):
        super().__init__(param.name, num_top)
        p = param.data_param
        self.batch_size = int(p.batch_size)
        if self.batch_size <= 0:
            raise self.error("data_param.batch_size must be positive")
        self.transformer = DataTransformer(param.transform_param, phase, self.rng, self.where)
        try:
            self.db = DatumReader(p.source, p.backend)
        except DataError as err:
            raise self.error(str(err)) from None
        try:
            if p.rand_skip:
                skip = int(self.rng.integers(p.rand_skip))
                _log.info("%s: skipping first %d data points", self.where, skip)
                self.db.skip(skip)
            key, value = self.db.peek()
            self._first_name = key.decode(errors="replace")
            datum, where = self._parse(key, value)
            if self.transformer.forces_decoding and not datum.encoded:
                _log.warning("%s: force_color and force_gray only apply to encoded datums; "
                             "'%s' holds raw pixels", self.where, p.source)
            self._first_shape = self._pixels(datum, where).shape
        except BaseException:
            self.db.close()
            raise

    def _where(self, key):
        return f"datum '{key.decode(errors='replace')}' of '{self.db.path}'"

    def _parse(self, key, value):
        where = self._where(key)
        try:
            return parse_datum(value, where), where
        except DataError as err:
            raise self.error(str(err)) from None

    def _pixels(self, datum, where):
        try:
            return datum_to_array(datum, self.transformer.decode_mode, where)
        except DataError as err:
            raise self.error(str(err)) from None

    def top_shapes(self):
        item = self.transformer.output_shape(self._first_shape, 0, self._first_name)
        return [(self.batch_size,) + item, (self.batch_size,)][:self.num_top]

    def next_batch(self):
        epoch = self.db.epoch
        records = self.db.next_records(self.batch_size)
        names = [key.decode(errors="replace") for key, _ in records]
        # This runs on the prefetch thread, whose Python time the training
        # waits for (the GIL): raw datums of one shape go as one array
        # (LeNet's batch of 64: 0.33 -> 0.18 ms; 3-4% off its iterations,
        # interleaved in one process).
        datums = _parse_all(records) or [self._parse(key, value)[0] for key, value in records]
        stacked = _raw_pixels(datums)
        if stacked is None:
            items = [self._pixels(datum, self._where(key))
                     for datum, (key, _) in zip(datums, records)]
            labels = np.array([datum.label for datum in datums], np.float32)
        else:
            items, labels = stacked
        data = self.transformer.transform(items, epoch, names)
        return Batch([data, labels][:self.num_top], epoch, self.transformer.size(epoch))

    def skip(self, count):
        """Pass over `count` records without decoding them (other ranks'
        share under MPI, sppcaffe/parallel/sharding.py)."""
        self.db.skip(count)

    def cursor_state(self):
        # The key of the next record: the position survives records being
        # appended, and seeking to it is a B-tree lookup.
        return {"source": self.db.path, "key": self.db.peek()[0].hex(), "epoch": self.db.epoch}

    def check_cursor(self, state):
        try:
            key, epoch = bytes.fromhex(state["key"]), int(state["epoch"])
        except (KeyError, TypeError, ValueError):
            raise ReaderStateMismatch("malformed Data state") from None
        if epoch < 0 or not self.db.contains(key):
            raise ReaderStateMismatch(f"the database '{self.db.path}' has no record with the "
                                      f"saved next key '{key.decode(errors='replace')}'")

        def apply():
            self.db.seek(key, epoch)
        return apply

    def close(self):
        self.db.close()
