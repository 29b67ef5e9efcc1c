"""`caffe test` for sppcaffe: score a trained net.

As BVLC tools/caffe.cpp `test()`: builds the net in the TEST phase (or
--phase) with the given weights, runs `--iterations` forward passes over
its data layers, logs every output element of every batch (`Batch 3,
accuracy = 0.9`), then the mean loss (`Loss: 0.31`) and each output's mean
over the batches (`accuracy = 0.91`, `loss = 0.3 (* 1 = 0.3 loss)`).
"""
import argparse
import logging
import os
import sys

import numpy as np

from .. import io
from ..net import TEST, TRAIN, Net
# The solver's formatting of output values and loss notes, so that both
# tools print numbers exactly as Caffe's solver and `caffe test` do.
from ..solvers.solver import _g as caffe_float
from ..solvers.solver import _loss_note as loss_note
from ..solvers.solver import output_values
from . import add_net_state_arguments
from .train_net import CliError, add_common_arguments, blas_threads, run_tool

PROG = "test_net"
PHASES = {"TRAIN": TRAIN, "TEST": TEST}
log = logging.getLogger("sppcaffe")


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, description="Score a trained net over N batches, as `caffe test`.")
    parser.add_argument("--model", required=True, help="the net's prototxt (e.g. a train_val)")
    parser.add_argument("--weights", required=True, help="the trained .caffemodel")
    parser.add_argument("--iterations", type=int, default=50,
                        help="number of batches to run (default: %(default)s)")
    add_net_state_arguments(parser, "TEST")
    add_common_arguments(parser)
    return parser


def score(net, iterations):
    """caffe.cpp's test loop: per-batch lines, then the means.  Returns
    [(output name, mean)] in Caffe's order."""
    totals, names, loss = None, None, np.float32(0)
    for i in range(iterations):
        loss += np.float32(net.forward_from_to())
        pairs = output_values(net)
        values = np.array([v for _, v in pairs], np.float32)
        if totals is None:
            totals, names = values, [n for n, _ in pairs]
        elif values.shape != totals.shape:
            raise CliError(f"the net's outputs changed from {totals.size} to {values.size} "
                           f"values at batch {i}")
        else:
            totals += values
        for name, value in pairs:
            log.info("Batch %d, %s = %s", i, name, caffe_float(value))
    log.info("Loss: %s", caffe_float(loss / np.float32(iterations)))
    weights = net.blob_loss_weights
    means = [] if totals is None else (totals / np.float32(iterations)).tolist()
    for name, mean in zip(names or [], means):
        log.info("%s = %s%s", name, caffe_float(mean), loss_note(weights[name], mean))
    return list(zip(names or [], means))


def run(args):
    for what, path in (("model", args.model), ("weights", args.weights)):
        if not os.path.isfile(path):
            raise CliError(f"cannot read {what} '{path}': no such file")
    if args.iterations < 1:
        raise CliError(f"--iterations must be at least 1, got {args.iterations}")
    log.info("Use CPU.")
    net = Net(io.read_net(args.model), PHASES[args.phase], level=args.level, stages=args.stage)
    net.copy_from(args.weights)
    log.info("Running for %d iterations.", args.iterations)
    with blas_threads(args.threads, net):
        score(net, args.iterations)
    return 0


def main(argv=None):
    return run_tool(PROG, run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
