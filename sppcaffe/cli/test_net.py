"""`caffe test` for sppcaffe: score a trained net.

As BVLC tools/caffe.cpp `test()`: builds the net in the TEST phase (or
--phase) with the given weights, runs `--iterations` forward passes over
its data layers, logs every output element of every batch (`Batch 3,
accuracy = 0.9`), then the mean loss (`Loss: 0.31`) and each output's mean
over the batches (`accuracy = 0.91`, `loss = 0.3 (* 1 = 0.3 loss)`).

`test_net --detection CONFIG.yml --cache DIR --svms SVMS.npz [...]` tests an
SPP-net detector instead: the other arguments go to tools/test_detection
with CONFIG.yml as its --config, so both commands run the same code and
take the same options.
"""
import argparse
import logging
import sys

import numpy as np

from .. import backends
from ..net import TEST, TRAIN, Net
# The solver's formatting of output values and loss notes, so that both
# tools print numbers exactly as Caffe's solver and `caffe test` do.
from ..solvers.solver import _g as caffe_float
from ..solvers.solver import _loss_note as loss_note
from ..solvers.solver import output_values
from . import add_net_state_arguments, require_file, require_layers
from .train_net import CliError, add_common_arguments, blas_threads, run_tool

PROG = "test_net"
DETECTION = "--detection"
PHASES = {"TRAIN": TRAIN, "TEST": TEST}
log = logging.getLogger("sppcaffe")


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score a trained net over N batches, as `caffe test`; or, with "
                    f"{DETECTION}, an SPP-net detector on a feature cache (VOC AP).",
        epilog="Detection (the options of tools/test_detection; see "
               f"`%(prog)s {DETECTION} CONFIG --help`):\n"
               f"  %(prog)s {DETECTION} configs/detection_voc2007.yml --cache work/cache/test "
               "--svms work/svms.npz [--bbox-reg work/bbox_reg.npz] [--pictures DIR]")
    parser.add_argument(DETECTION, metavar="CONFIG.yml",
                        help="test a detector instead: the detection settings file, followed "
                             "by tools/test_detection's options (--cache, --svms, ...)")
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
        require_file(path, what)
    if args.iterations < 1:
        raise CliError(f"--iterations must be at least 1, got {args.iterations}")
    if not backends.gpu_mode():         # run_tool has logged the GPU it chose
        log.info("Use CPU.")
    net = Net(args.model, PHASES[args.phase], level=args.level, stages=args.stage)
    require_layers(net, args.model)
    net.copy_from(args.weights)
    net.set_forward_only()
    log.info("Running for %d iterations.", args.iterations)
    with blas_threads(args.threads, net):
        score(net, args.iterations)
    return 0


def split_detection(argv):
    """(settings file, the other arguments) when `argv` holds `--detection
    CONFIG` (or `--detection=CONFIG`) anywhere, else None.  The settings
    file is "" when the value is missing."""
    for i, arg in enumerate(argv):
        if arg.startswith(DETECTION + "="):
            return arg[len(DETECTION) + 1:], argv[:i] + argv[i + 1:]
        if arg == DETECTION:
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("-") else ""
            return value, argv[:i] + argv[i + 1 + bool(value):]
    return None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    detection = split_detection(argv)
    if detection is None:
        return run_tool(PROG, run, build_parser().parse_args(argv))
    config, rest = detection
    problem = None
    if not config:
        problem = f"{DETECTION} needs the detection settings file, e.g. " \
                  f"{DETECTION} configs/detection_voc2007.yml"
    elif any(a == "--config" or a.startswith("--config=") for a in rest):
        problem = f"give the settings file once, as {DETECTION} CONFIG (not --config as well)"
    if problem:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 2
    from . import test_detection            # the detection tool's code path, unchanged
    return test_detection.main(["--config", config] + rest,
                               prog=f"{PROG} {DETECTION} CONFIG")


if __name__ == "__main__":
    sys.exit(main())
