"""Caffe's upgrade tools: rewrite V0/V1 nets and old solvers in the modern
form (upgrade_net_proto_text, upgrade_net_proto_binary,
upgrade_solver_proto_text)."""
import argparse
import sys

from .. import io
from ..proto import caffe_pb2


def _run(description, read, upgrade, write, argv):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("input", help="file to upgrade")
    parser.add_argument("output", help="where to write the upgraded file")
    args = parser.parse_args(argv)
    try:
        message = upgrade(read(args.input), source=args.input)
        write(message, args.output)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Wrote upgraded file to {args.output}")
    return 0


def net_text(argv=None):
    return _run("Upgrade a V0/V1 net prototxt to the modern format.",
                lambda p: io.read_text(p, caffe_pb2.NetParameter()), io.upgrade_net,
                io.write_text, argv)


def net_binary(argv=None):
    return _run("Upgrade a V0/V1 binary .caffemodel to the modern format.",
                lambda p: io.read_binary(p, caffe_pb2.NetParameter()), io.upgrade_net,
                io.write_binary, argv)


def solver_text(argv=None):
    return _run("Upgrade a solver prototxt (solver_type enum) to the modern format.",
                lambda p: io.read_text(p, caffe_pb2.SolverParameter()), io.upgrade_solver,
                io.write_text, argv)
