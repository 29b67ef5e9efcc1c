"""`draw_net`: pycaffe's python/draw_net.py -- a picture of a net's graph.

    draw_net NET.prototxt OUT.{png,svg,pdf,dot} [--rankdir LR|TB|BT|RL]
             [--phase TRAIN|TEST|ALL] [--display_lrm]

The graph follows pycaffe's conventions (see sppcaffe/draw.py).  The dot
text is written by sppcaffe itself; a picture needs Graphviz's `dot`
program, and where it is missing the tool writes the dot text beside the
asked-for file (OUT with the extension .dot), says how to install Graphviz
and exits with status 1.  Nets in the V0/V1 formats are upgraded first,
as Caffe reads them.
"""
import argparse
import os
import sys

from .. import draw, io
from ..proto import caffe_pb2
from . import CliError, progress, require_file

PROG = "draw_net"
PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST, "ALL": None}


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Draw a graph of the net architecture (layers as boxes, blobs as "
                    "octagons), as pycaffe's draw_net.py.")
    parser.add_argument("input_net_proto_file", help="input network prototxt file")
    parser.add_argument("output_image_file",
                        help="output file; its extension gives the format: .png, .svg, .pdf "
                             "(or any other Graphviz format), or .dot for the graph's text")
    parser.add_argument("--rankdir", type=str.upper, choices=draw.RANKDIRS, default="LR",
                        help="direction of the layout: LR (left to right), TB (top to bottom), "
                             "BT or RL")
    parser.add_argument("--phase", type=str.upper, choices=list(PHASES), default="ALL",
                        help="draw the layers of the TRAIN or TEST net only, or ALL layers "
                             "regardless of phase")
    parser.add_argument("--display_lrm", "--display-lrm", action="store_true",
                        help="show the learning rate multipliers of Convolution, "
                             "Deconvolution and InnerProduct layers")
    return parser


def fallback_dot_path(path):
    """Where the dot text goes when the picture cannot be drawn."""
    return os.path.splitext(path)[0] + ".dot"


def run(args):
    require_file(args.input_net_proto_file, "net")
    param = io.read_net(args.input_net_proto_file)
    fmt = draw.output_format(args.output_image_file)
    print(f"Drawing net to {args.output_image_file}")
    try:
        draw.draw_net_to_file(param, args.output_image_file, args.rankdir, PHASES[args.phase],
                              args.display_lrm)
    except draw.GraphvizMissing as err:
        dot_path = fallback_dot_path(args.output_image_file)
        with open(dot_path, "w") as f:
            f.write(draw.net_graph(param, args.rankdir, PHASES[args.phase],
                                   args.display_lrm).to_dot())
        raise CliError(f"{args.output_image_file} was not drawn: {err}. The graph is in "
                       f"{dot_path}; with Graphviz installed, draw it with "
                       f"`dot -T{fmt} {dot_path} -o {args.output_image_file}`") from None
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    return progress.run_main(PROG, run, args)


if __name__ == "__main__":
    sys.exit(main())
