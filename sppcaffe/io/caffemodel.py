"""Binary protobuf files: .caffemodel (NetParameter) and .binaryproto
(BlobProto), with fast conversion between BlobProto and NumPy arrays.

Converting a repeated float field element by element costs seconds for
ZF-5's 52M-float fc6, so blobs cross the protobuf boundary as raw bytes:
a BlobProto is serialized (C speed) and its packed `data` field read with
np.frombuffer; writing appends a hand-built packed field and lets the C
parser take it.
"""
import math
import os

import numpy as np
from google.protobuf.message import DecodeError

from ..proto import caffe_pb2
from .atomic import atomic_write
from .files import read_bytes

# BlobProto field numbers (BVLC): packed float data/diff, packed double data/diff.
_FIELD_FLOAT = {"data": 5, "diff": 6}
_FIELD_DOUBLE = {"data": 8, "diff": 9}
_WIRE_VARINT, _WIRE_64, _WIRE_LEN, _WIRE_32 = 0, 1, 2, 5
_SMALL = 4096
# What a file holding each message is called, for messages naming it.
_FILE_KINDS = {"NetParameter": "weights", "BlobProto": "binaryproto",
               "SolverState": "solver state"}


class CaffemodelError(ValueError):
    """A binary model file that cannot be read; the message names the file."""


def _varint(buf, pos):
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _encode_varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _packed_field(buf, field):
    """Concatenate the payloads of every length-delimited occurrence of
    `field` at the top level of serialized message `buf`."""
    pos, chunks = 0, []
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _WIRE_VARINT:
            _, pos = _varint(buf, pos)
        elif wire == _WIRE_64:
            pos += 8
        elif wire == _WIRE_32:
            pos += 4
        elif wire == _WIRE_LEN:
            length, pos = _varint(buf, pos)
            if number == field:
                chunks.append(memoryview(buf)[pos:pos + length])
            pos += length
        else:
            raise DecodeError(f"unexpected wire type {wire}")
    return b"".join(chunks)


def blob_shape(blob):
    """The shape a BlobProto declares (modern `shape`, else legacy 4-d)."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return (blob.num, blob.channels, blob.height, blob.width)
    return (len(blob.data) or len(blob.double_data),)


def legacy_shape(shape):
    """A shape as Caffe's legacy 4-d view (missing leading axes are 1)."""
    shape = tuple(shape)
    return (1,) * (4 - len(shape)) + shape if len(shape) <= 4 else None


def blob_matches(blob, shape):
    """Caffe's Blob::ShapeEquals: a legacy 4-d proto matches by its last axes."""
    if blob.HasField("shape") or not any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        # Caffe writes a 0-axis blob (a channel-shared PReLU slope) with no
        # shape at all, and reads a shapeless proto as 0-axis.
        if not blob.HasField("shape") and tuple(shape) == ():
            return True
        return blob_shape(blob) == tuple(shape)
    return legacy_shape(shape) == (blob.num, blob.channels, blob.height, blob.width)


def blob_to_array(blob, field="data", shape=None, where="blob"):
    """The values of a BlobProto's `data` (or `diff`) as a float32 array of
    `shape` (default: the proto's own shape); `where` names the blob (file
    and place in it) in errors."""
    float_values = getattr(blob, field)
    double_values = getattr(blob, "double_" + field)
    if len(float_values) > _SMALL or len(double_values) > _SMALL:
        raw = blob.SerializeToString()
        if len(float_values):
            values = np.frombuffer(_packed_field(raw, _FIELD_FLOAT[field]), dtype="<f4")
        else:
            values = np.frombuffer(_packed_field(raw, _FIELD_DOUBLE[field]), dtype="<f8")
    else:
        values = np.asarray(float_values if len(float_values) else double_values)
    shape = blob_shape(blob) if shape is None else tuple(shape)
    if any(d < 0 for d in shape):
        raise CaffemodelError(f"{where} has a negative dimension in its shape {shape}")
    if values.size != math.prod(shape):     # Python ints: no overflow on a corrupt shape
        raise CaffemodelError(f"{where} holds {values.size} values but its shape {shape} "
                              f"needs {math.prod(shape)}")
    return values.astype(np.float32).reshape(shape)


def array_to_blob(array, blob=None, diff=None):
    """Fill (or create) a BlobProto from an array: modern `shape`, float data."""
    blob = caffe_pb2.BlobProto() if blob is None else blob
    blob.Clear()
    blob.shape.dim.extend(int(d) for d in np.shape(array))
    parts = []
    for field, values in (("data", array), ("diff", diff)):
        if values is None:
            continue
        raw = np.ascontiguousarray(values, dtype="<f4").data.cast("B")
        if len(raw):
            parts += [_encode_varint(_FIELD_FLOAT[field] << 3 | _WIRE_LEN),
                      _encode_varint(len(raw)), raw]
    if parts:
        blob.MergeFromString(b"".join(parts))
    return blob


def read_binary(path, message, allow_empty=True):
    """Parse a binary protobuf file into `message`, naming the file on error.
    Protobuf reads a 0-byte file as a message with every field unset:
    `allow_empty=False` makes that an error."""
    path = os.fspath(path)
    kind = _FILE_KINDS.get(message.DESCRIPTOR.name, message.DESCRIPTOR.name)
    raw = read_bytes(path, kind)
    if not raw and not allow_empty:
        raise CaffemodelError(f"'{path}' is empty (0 bytes): not a {kind}")
    try:
        message.ParseFromString(raw)
    except DecodeError as err:
        raise CaffemodelError(f"'{path}' is not a valid binary {message.DESCRIPTOR.name} "
                              f"(truncated or corrupt file: {err})") from None
    not_text = _field_not_utf8(message)
    if not_text:
        raise CaffemodelError(f"'{path}' is not a valid binary {message.DESCRIPTOR.name} "
                              f"(corrupt file: its {not_text} is not UTF-8 text)")
    return message


def _field_not_utf8(message, prefix=""):
    """The name of the first string field of `message` (recursively) that
    is not UTF-8, or None.  Protobuf parses such a field without complaint
    and hands it back as bytes, which no caller expects."""
    for field, value in message.ListFields():
        if field.type not in (field.TYPE_STRING, field.TYPE_MESSAGE):
            continue
        items = list(value) if field.is_repeated else [value]
        for index, item in enumerate(items):
            name = f"{prefix}{field.name}" + (f"[{index}]" if field.is_repeated else "")
            if field.type == field.TYPE_STRING:
                if isinstance(item, bytes):
                    return name
            else:
                found = _field_not_utf8(item, name + ".")
                if found:
                    return found
    return None


def write_binary(message, path):
    with atomic_write(path, "wb") as f:
        f.write(message.SerializeToString())


def read_blobproto(path):
    """A .binaryproto file (e.g. a mean image) as a float32 array."""
    blob = read_binary(path, caffe_pb2.BlobProto(), allow_empty=False)
    return blob_to_array(blob, where=f"'{os.fspath(path)}'")


def write_blobproto(array, path):
    write_binary(array_to_blob(array), path)
