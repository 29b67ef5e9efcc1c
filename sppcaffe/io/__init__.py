"""Reading and writing Caffe's files: prototxt nets and solvers (upgraded
from V0/V1 to the modern form on the way in; nets also in the SPP-net
release's dialect and with known fork fields, see dialects.py), binary
.caffemodel and .binaryproto files."""
import os

from ..proto import caffe_pb2
from .caffemodel import (CaffemodelError, array_to_blob, blob_matches, blob_shape,  # noqa: F401
                         blob_to_array, read_binary, read_blobproto, write_binary,
                         write_blobproto)
from .dialects import parse_net_text, read_net_text  # noqa: F401
from .text import PrototxtError, parse_text, read_text, to_text, write_text  # noqa: F401
# pycaffe's caffe.io: images, Transformer, BlobProto/Datum <-> array.
from .arrays import (array_to_blobproto, array_to_datum,  # noqa: F401
                     arraylist_to_blobprotovecor_str, arraylist_to_blobprotovector_str,
                     blobproto_to_array, blobprotovector_str_to_arraylist, datum_to_array)
from .images import load_image, oversample, resize_image  # noqa: F401
from .transformer import Transformer  # noqa: F401
from .upgrade import net_needs_upgrade, upgrade_net, upgrade_solver


def _is_binary(path):
    return os.fspath(path).endswith((".caffemodel", ".binaryproto", ".pb"))


def read_net(path):
    """A net prototxt (or binary caffemodel) as a modern NetParameter; a
    prototxt may also be in a dialect that dialects.py reads."""
    path = os.fspath(path)
    param = read_binary(path, caffe_pb2.NetParameter()) if _is_binary(path) else read_net_text(path)
    return upgrade_net(param, source=path)


def read_solver(path):
    """A solver prototxt as a modern SolverParameter."""
    path = os.fspath(path)
    return upgrade_solver(read_text(path, caffe_pb2.SolverParameter()), source=path)


def read_weights(path):
    """A .caffemodel as a modern NetParameter (V1 `layers` upgraded)."""
    path = os.fspath(path)
    param = read_binary(path, caffe_pb2.NetParameter())
    if not len(param.layer) and not len(param.layers):
        # Protobuf reads an empty file, and some other messages, as an empty
        # NetParameter: copying it would silently leave the net as it was.
        what = "is empty (0 bytes)" if not os.path.getsize(path) else "holds no layers"
        raise CaffemodelError(f"'{path}' {what}: not a .caffemodel (a NetParameter with the "
                              "layers' weights)")
    # Upgrading copies the message: skip it for modern files (weights can be 200 MB+).
    return upgrade_net(param, source=path) if net_needs_upgrade(param) else param
