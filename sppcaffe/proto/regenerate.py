"""Regenerate ``caffe_pb2.py`` from ``protos/caffe.proto``.

Usage (from the repository root)::

    python -m sppcaffe.proto.regenerate

which rewrites ``sppcaffe/proto/caffe_pb2.py`` in place.  Needs
``grpcio-tools`` (it bundles ``protoc``); the generated module needs a
``protobuf`` runtime at least as new as that ``protoc``.
"""

import os
import sys

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(PACKAGE_DIR))
PROTO_DIR = os.path.join(REPO_ROOT, "protos")
PROTO_FILE = os.path.join(PROTO_DIR, "caffe.proto")
GENERATED_NAME = "caffe_pb2.py"


def generate(out_dir):
    """Compile ``protos/caffe.proto`` into *out_dir*; return the path of
    the generated ``caffe_pb2.py``."""
    from grpc_tools import protoc

    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        "-I" + PROTO_DIR,
        "--python_out=" + out_dir,
        PROTO_FILE,
    ]
    status = protoc.main(args)
    if status != 0:
        raise RuntimeError("protoc failed (exit status %d) on %s" % (status, PROTO_FILE))
    path = os.path.join(out_dir, GENERATED_NAME)
    if not os.path.isfile(path):
        raise RuntimeError("protoc did not produce %s" % path)
    return path


def main(argv=None):
    path = generate(PACKAGE_DIR)
    print("wrote", os.path.relpath(path, os.getcwd()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
