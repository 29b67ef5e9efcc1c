"""export_onnx: write a Caffe net (prototxt + caffemodel) as an ONNX model.

    export_onnx NET.prototxt [--weights W.caffemodel] OUT.onnx
                [--input NAME=N,C,H,W ...] [--phase TEST] [--opset K]
                [--dynamic-batch] [--dynamic-size] [--output BLOB ...] [--check]

The graph is sppcaffe.onnx.export's: Caffe's numbers, the blobs' names,
an error naming any layer without an exact ONNX form.  --check runs the
net and ONNX Runtime on the same random inputs and prints each output's
relative error.
"""
import argparse
import logging
import os

from .. import io
from ..layer import LayerError
from ..net import TEST, TRAIN, Net
from . import CliError, add_net_state_arguments, require_file
from .progress import run_main
from .time_net import data_shape_hint, net_in_phase, parse_data_shape, unreadable_data_layers

PROG = "export_onnx"
PHASES = {"TRAIN": TRAIN, "TEST": TEST}
log = logging.getLogger("sppcaffe")


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a Caffe net to ONNX: the same outputs as sppcaffe (and Caffe), "
                    "weights embedded, inputs and outputs named as the net's blobs.",
        epilog="Examples:\n"
               "  %(prog)s models/zf5_spp/deploy.prototxt --weights zf5_spp.caffemodel "
               "zf5_spp.onnx\n"
               "  %(prog)s models/zf5_spp/deploy.prototxt zf5_spp.onnx --dynamic-batch "
               "--dynamic-size --check\n"
               "  %(prog)s models/zf5/train_val.prototxt zf5_test.onnx "
               "--input data=8,3,224,224 --input label=8")
    parser.add_argument("net", metavar="NET.prototxt", help="the net definition")
    parser.add_argument("output", metavar="OUT.onnx", help="where to write the model")
    parser.add_argument("--weights", metavar="W.caffemodel",
                        help="trained weights (default: the net's fillers)")
    parser.add_argument("--input", "--data-shape", dest="inputs", action="append", default=[],
                        type=parse_data_shape, metavar="NAME=D0,D1,...",
                        help="shape of an input blob (or of a data layer's top, whose source "
                             "is then not opened); repeat for each")
    add_net_state_arguments(parser, "TEST")
    # No default read from sppcaffe.onnx here: importing onnx takes most of
    # a second, which --help need not pay (nor fail on without the extra).
    parser.add_argument("--opset", type=int,
                        help="ONNX opset version (default: the exporter's, DEFAULT_OPSET in "
                             "sppcaffe/onnx/export.py)")
    parser.add_argument("--dynamic-batch", action="store_true",
                        help="leave the first axis of the inputs free")
    parser.add_argument("--dynamic-size", action="store_true",
                        help="leave the height and width of image inputs free (SPP nets: "
                             "one graph for every size)")
    parser.add_argument("--output", dest="outputs", action="append", metavar="BLOB",
                        help="a blob the graph returns; repeat for several (default: the net's "
                             "outputs)")
    parser.add_argument("--check", action="store_true",
                        help="compare ONNX Runtime with sppcaffe on random inputs")
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="largest relative error --check accepts (default: %(default)g)")
    return parser


def load_net(args):
    for what, path in (("net", args.net), ("weights", args.weights)):
        if path is not None:
            require_file(path, what)
    shapes = dict(args.inputs)
    param = io.read_net(args.net)
    try:
        net = Net(param, PHASES[args.phase], level=args.level, stages=args.stage,
                  data_shapes=shapes)
    except LayerError as err:
        missing = unreadable_data_layers(net_in_phase(param, args), shapes)
        if not missing:
            raise CliError(f"{args.net}: {err}") from None
        hints = "\n".join(f"  {data_shape_hint(lp)}" for lp in missing)
        raise CliError(f"{args.net}: {err}\nTo export without the data source, give the shape "
                       f"of each top of its data layer(s), e.g.\n{hints}") from None
    if args.weights is not None:
        net.copy_from(args.weights)
    unknown = [name for name in shapes if name not in net.blobs]
    if unknown:
        raise CliError(f"--input names blob(s) the net does not have: {', '.join(unknown)}")
    return net


def _shape_text(info):
    dims = [d.dim_param or str(d.dim_value) for d in info.type.tensor_type.shape.dim]
    return f"{info.name} ({', '.join(dims)})"


def run(args):
    try:
        from ..onnx import export
        from ..onnx.export import DEFAULT_OPSET
        from ..onnx.verify import compare
    except ImportError as err:
        raise CliError(f"{err}: install the ONNX extra, pip install 'sppcaffe[onnx]'") from None
    if args.opset is None:
        args.opset = DEFAULT_OPSET
    net = load_net(args)
    model = export(net, args.output, inputs=dict(args.inputs), outputs=args.outputs,
                   opset=args.opset, dynamic_batch=args.dynamic_batch,
                   dynamic_size=args.dynamic_size)
    graph = model.graph
    log.info("Wrote %s: opset %d, %d nodes, %.1f MB", args.output, args.opset, len(graph.node),
             os.path.getsize(args.output) / 2 ** 20)
    log.info("inputs: %s", ", ".join(_shape_text(i) for i in graph.input))
    log.info("outputs: %s", ", ".join(_shape_text(o) for o in graph.output))
    if not args.check:
        return 0
    errors = compare(net, model)
    for name, error in errors.items():
        log.info("check: %s relative error %.3g", name, error)
    worst = max(errors, key=errors.get)
    if errors[worst] > args.tolerance:
        raise CliError(f"--check: output '{worst}' differs from sppcaffe's by {errors[worst]:.3g} "
                       f"(relative), more than {args.tolerance:g}")
    log.info("check: every output within %g of sppcaffe's", args.tolerance)
    return 0


def main(argv=None):
    return run_main(PROG, run, build_parser().parse_args(argv))
