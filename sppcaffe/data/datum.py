"""Caffe's Datum (one stored image and its label) to and from arrays.

A Datum holds either raw pixels (`data`: uint8 bytes in CHW order, or
`float_data`) with `channels`/`height`/`width`, or an encoded image file
(`encoded: true`, JPEG/PNG bytes in `data`, dimensions unset) that is
decoded with OpenCV into Caffe's BGR order.
"""
import math

import numpy as np
from google.protobuf.message import DecodeError

from ..proto import caffe_pb2
from .errors import DataError
from .image import decode_image, encode_image, read_image, to_chw


def parse_datum(raw, where):
    """A serialized Datum; `where` names it in errors (database and key)."""
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(raw)
    except DecodeError as err:
        raise DataError(f"{where}: not a serialized Datum ({err})") from None
    return datum


def datum_to_array(datum, mode="native", where="datum"):
    """The pixels of a Datum as a CHW array: uint8 for raw bytes and decoded
    images, float32 for `float_data`.  Encoded images are decoded with
    `mode` ("color", "gray" or "native", see image.DECODE_FLAGS)."""
    if datum.encoded:
        image = decode_image(datum.data, mode)
        if image is None:
            raise DataError(f"{where}: cannot decode its encoded image "
                            f"({len(datum.data)} bytes)")
        return to_chw(image)
    shape = (datum.channels, datum.height, datum.width)
    if min(shape) <= 0:
        raise DataError(f"{where}: raw datum has no valid channels/height/width, got "
                        f"{'x'.join(map(str, shape))}")
    count = math.prod(shape)          # Python ints: a corrupt datum's dimensions cannot overflow
    if datum.data:
        values = np.frombuffer(datum.data, np.uint8)
    else:
        values = np.asarray(datum.float_data, np.float32)
    if values.size != count:
        raise DataError(f"{where}: holds {values.size} values but its shape "
                        f"{'x'.join(map(str, shape))} needs {count}")
    return values.reshape(shape)


def array_to_datum(array, label=0):
    """A raw Datum from a CHW array (Caffe's CVMatToDatum for uint8 images;
    other dtypes are stored as float_data)."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"a Datum holds a CHW array, got shape {array.shape}")
    datum = caffe_pb2.Datum(channels=array.shape[0], height=array.shape[1],
                            width=array.shape[2], label=int(label))
    if array.dtype == np.uint8:
        datum.data = np.ascontiguousarray(array).tobytes()
    else:
        datum.float_data.extend(np.asarray(array, np.float32).ravel().tolist())
    return datum


def encoded_datum(data, label=0):
    """A Datum holding an encoded image file's bytes (Caffe's ReadFileToDatum)."""
    return caffe_pb2.Datum(data=bytes(data), label=int(label), encoded=True)


def _extension(path):
    return path.rpartition(".")[2].lower() if "." in path else ""


def read_image_to_datum(path, label, height=0, width=0, is_color=True, encoding=""):
    """Caffe's ReadImageToDatum: (Datum, CHW shape of the image as read),
    or None when the image cannot be read.  Without `encoding` the Datum
    holds raw pixels; with it, an encoded image: the file's own bytes when
    they already are what was asked for (no resize, same colour mode, same
    extension), else the image re-encoded as `encoding` ("png", "jpg")."""
    image = read_image(path, height, width, is_color)
    if image is None:
        return None
    shape = to_chw(image).shape
    if not encoding:
        return array_to_datum(to_chw(image), label), shape
    encoding = encoding.lower()
    same_type = _extension(path) == encoding or (encoding == "jpg" and _extension(path) == "jpeg")
    if (image.ndim == 3 and image.shape[2] == 3) == is_color and not height and not width \
            and same_type:
        with open(path, "rb") as f:
            return encoded_datum(f.read(), label), shape
    return encoded_datum(encode_image(image, encoding), label), shape
