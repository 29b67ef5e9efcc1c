"""pycaffe's caffe.io conversions between NumPy arrays and Caffe's BlobProto
and Datum messages, with pycaffe's names, arguments and result types
(python/caffe/io.py).  The conversions themselves are sppcaffe's own
(BlobProto: io/caffemodel.py; Datum: data/datum.py); this module gives
them pycaffe's face:

- BlobProto -> array is float64 (pycaffe's ``np.array(blob.data)``) in
  the legacy num/channels/height/width shape when any of those is set,
  else in `shape`; array -> BlobProto writes `shape` and float data.
- Datum -> array is uint8 for raw bytes, float64 for float_data
  (pycaffe's ``astype(float)``); array -> Datum stores uint8 arrays as
  bytes, anything else as float_data, and sets `label` only when given.
"""
import numpy as np

from ..proto import caffe_pb2
from .caffemodel import array_to_blob, blob_to_array

_LEGACY_DIMS = ("num", "channels", "height", "width")


def blobproto_to_array(blob, return_diff=False):
    """A BlobProto's data (or diff, with `return_diff`) as a float64 array."""
    field = "diff" if return_diff else "data"
    shape = None
    if any(blob.HasField(dim) for dim in _LEGACY_DIMS):
        # pycaffe reads the legacy 4-d shape first, even beside `shape`.
        shape = tuple(getattr(blob, dim) for dim in _LEGACY_DIMS)
    return blob_to_array(blob, field, shape).astype(np.float64)


def array_to_blobproto(arr, diff=None):
    """A BlobProto holding `arr` (any number of axes) and optionally `diff`."""
    return array_to_blob(np.asarray(arr), diff=None if diff is None else np.asarray(diff))


def arraylist_to_blobprotovector_str(arraylist):
    """A list of arrays as a serialized BlobProtoVector (bytes)."""
    vector = caffe_pb2.BlobProtoVector()
    vector.blobs.extend(array_to_blobproto(arr) for arr in arraylist)
    return vector.SerializeToString()


# The name older pycaffe releases spelled it with.
arraylist_to_blobprotovecor_str = arraylist_to_blobprotovector_str


def blobprotovector_str_to_arraylist(serialized):
    """A serialized BlobProtoVector as a list of float64 arrays."""
    vector = caffe_pb2.BlobProtoVector()
    vector.ParseFromString(serialized)
    return [blobproto_to_array(blob) for blob in vector.blobs]


def array_to_datum(arr, label=None):
    """A Datum from a (channels, height, width) array."""
    # Imported here: sppcaffe.data imports sppcaffe.io.
    from ..data.datum import array_to_datum as to_datum
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(f"a Datum holds a (channels, height, width) array, got shape {arr.shape}")
    datum = to_datum(arr, 0 if label is None else label)
    if label is None:
        datum.ClearField("label")
    return datum


def datum_to_array(datum):
    """A Datum's pixels as a (channels, height, width) array: uint8 for raw
    bytes (and decoded images), float64 for float_data.  The label is
    `datum.label`."""
    from ..data.datum import datum_to_array as to_array
    arr = to_array(datum)
    return arr if arr.dtype == np.uint8 else arr.astype(np.float64)
