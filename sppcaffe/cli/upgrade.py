"""Caffe's upgrade tools: rewrite V0/V1 nets and old solvers in the modern
form (upgrade_net_proto_text, upgrade_net_proto_binary,
upgrade_solver_proto_text).  upgrade_net_proto_text also reads the dialects
of sppcaffe/io/dialects.py (the SPP-net release's files, fork fields)."""
import argparse

from .. import io
from ..proto import caffe_pb2
from .progress import run_main


def _run(prog, description, read, upgrade, write, argv):
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("input", help="file to upgrade")
    parser.add_argument("output", help="where to write the upgraded file")
    args = parser.parse_args(argv)

    def run(args):
        write(upgrade(read(args.input), source=args.input), args.output)
        print(f"Wrote upgraded file to {args.output}")
        return 0
    return run_main(prog, run, args)


def net_text(argv=None):
    return _run("upgrade_net_proto_text",
                "Upgrade a V0/V1 net prototxt (or one in the SPP-net release's dialect) to the "
                "modern format.",
                io.read_net_text, io.upgrade_net, io.write_text, argv)


def net_binary(argv=None):
    return _run("upgrade_net_proto_binary",
                "Upgrade a V0/V1 binary .caffemodel to the modern format.",
                lambda p: io.read_binary(p, caffe_pb2.NetParameter()), io.upgrade_net,
                io.write_binary, argv)


def solver_text(argv=None):
    return _run("upgrade_solver_proto_text",
                "Upgrade a solver prototxt (solver_type enum) to the modern format.",
                lambda p: io.read_text(p, caffe_pb2.SolverParameter()), io.upgrade_solver,
                io.write_text, argv)
