"""Reading training data as Caffe's data layers and tools do.

    image.py         OpenCV reading/decoding (BGR, uint8), HWC <-> CHW
    datum.py         Datum <-> array (raw uint8, float_data, encoded JPEG/PNG)
    db.py            LMDB: cycling reader, one-pass iteration, atomic writer
    transformer.py   DataTransformer: mean, scale, crop, mirror, multi-size resize
    multi_size.py    the per-epoch input size of multi-size training
    batch.py         Batch and the BatchReader interface; the readers' own RNG
                     and their positions (state/restore, for snapshots)
    prefetch.py      background batch preparation
    db_batches.py, image_list.py, hdf5_batches.py, window_file.py
                     the readers of the Data, ImageData, HDF5Data and
                     WindowData layers (sppcaffe/layers/data.py)
"""
from .datum import array_to_datum, datum_to_array, encoded_datum, parse_datum
from .db import DatumReader, LMDBWriter, iterate_db
from .errors import DataError
from .image_list import read_image_list
from .transformer import DataTransformer

__all__ = ["DataError", "DataTransformer", "DatumReader", "LMDBWriter", "array_to_datum",
           "datum_to_array", "encoded_datum", "iterate_db", "parse_datum", "read_image_list"]
