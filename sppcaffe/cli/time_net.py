"""`caffe time` for sppcaffe: per-layer forward and backward timings.

Follows BVLC tools/caffe.cpp `time()`: one untimed forward and backward
pass (so that every buffer is allocated), then `--iterations` timed passes
run layer by layer, and the same report lines (per-layer averages, then
the forward, backward and forward-backward averages and the total).
Input blobs and the tops of data layers are filled with random values
once; label blobs (those feeding a loss or accuracy layer) get random class
indices within the classifier's range so losses stay finite.
"""
import argparse
import sys
import time

import numpy as np

from .. import backends, io
from ..layer import LAYER_TYPES, LayerError
from ..layers.data import ExternalDataLayer
from ..net import TEST, TRAIN, Net, filter_net
from ..net_arguments import fed_blob_names
from ..random import set_random_seed
from . import (CliError, add_gpu_argument, add_net_state_arguments, device_for, naming_file,
               require_file, require_layers)

PROG = "time_net"
PHASES = {"TRAIN": TRAIN, "TEST": TEST}
# Layers whose bottom 1 holds class indices into bottom 0's class axis,
# with the parameter field giving that axis.
LABEL_READERS = {"SoftmaxWithLoss": "softmax_param", "Accuracy": "accuracy_param",
                 "MultinomialLogisticLoss": None, "InfogainLoss": "infogain_loss_param",
                 "HingeLoss": None}


def parse_data_shape(text):
    """`name=1,3,224,224` -> ("name", (1, 3, 224, 224))."""
    name, sep, dims = text.partition("=")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or any(d < 0 for d in shape):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not NAME=D0,D1,... (e.g. data=8,3,224,224 or label=8)")
    return name, shape


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Benchmark a net's execution time, layer by layer, as `caffe time`: "
                    "average forward and backward milliseconds per layer and per pass.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Data layers (Data, ImageData, HDF5Data, WindowData) read their sources. To time a\n"
               "net without its databases, give the shape of each of their tops with --data-shape:\n"
               "they are then filled with random values (labels with random classes). Example:\n\n"
               "  %(prog)s --model models/zf5_spp/train_val.prototxt \\\n"
               "      --data-shape data=8,3,224,224 --data-shape label=8 --iterations 10")
    parser.add_argument("--model", required=True, help="the net's prototxt")
    parser.add_argument("--iterations", type=int, default=50,
                        help="number of timed forward-backward passes (default: %(default)s)")
    add_net_state_arguments(parser, "TRAIN")
    parser.add_argument("--weights", help="a .caffemodel to load (default: the net's fillers)")
    parser.add_argument("--data-shape", action="append", default=[], type=parse_data_shape,
                        metavar="NAME=D0,D1,...",
                        help="shape of a data layer's top, or a new shape for an Input blob; "
                             "repeat for each blob (e.g. --data-shape data=8,3,224,224 "
                             "--data-shape label=8)")
    parser.add_argument("--force-backward", action="store_true",
                        help="run every layer's backward even when the net has no loss "
                             "(e.g. a deploy net), as force_backward: true")
    add_gpu_argument(parser)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for the random inputs, fillers and dropout (default: 0)")
    return parser


# ---------------------------------------------------------------------------
# Building the net
# ---------------------------------------------------------------------------
def data_shape_hint(lp):
    """Example --data-shape flags for a data layer, from its batch and crop
    sizes where the prototxt gives them."""
    batch = lp.data_param.batch_size or lp.image_data_param.batch_size or \
        lp.hdf5_data_param.batch_size or lp.window_data_param.batch_size or "N"
    crop = lp.transform_param.crop_size
    image = f"{batch},3,{crop},{crop}" if crop else f"{batch},C,H,W"
    shapes = [image] + [f"{batch}"] * (len(lp.top) - 1)
    return " ".join(f"--data-shape {top}={shape}" for top, shape in zip(lp.top, shapes))


def unreadable_data_layers(param, data_shapes):
    """Data layers of the net whose tops have no --data-shape."""
    return [lp for lp in param.layer
            if issubclass(LAYER_TYPES.get(lp.type, object), ExternalDataLayer)
            and any(t not in data_shapes for t in lp.top)]


def load_net(args):
    require_file(args.model, "model")
    if args.weights is not None:
        require_file(args.weights, "weights")
    data_shapes = dict(args.data_shape)
    try:
        param = io.read_net(args.model)
    except (OSError, ValueError) as err:
        raise CliError(str(err)) from None
    if args.force_backward:
        param.force_backward = True
    try:
        net = Net(param, PHASES[args.phase], level=args.level, stages=args.stage,
                  data_shapes=data_shapes)
    except LayerError as err:
        missing = unreadable_data_layers(net_in_phase(param, args), data_shapes)
        if not missing:
            raise CliError(f"{args.model}: {err}") from None
        hints = "\n".join(f"  {data_shape_hint(lp)}" for lp in missing)
        names = ", ".join(f"'{lp.name}' ({lp.type})" for lp in missing)
        raise CliError(f"{args.model}: {err}\nTo time the net without the sources of data "
                       f"layer(s) {names}, give the shape of each of their tops to fill them "
                       f"with random data, e.g.\n{hints}") from None
    except (OSError, ValueError) as err:
        raise CliError(naming_file(args.model, err)) from None
    require_layers(net, args.model)
    if args.weights is not None:
        try:
            net.copy_from(args.weights)
        except (OSError, ValueError) as err:
            raise CliError(naming_file(args.weights, err)) from None
    unknown = [name for name in data_shapes if name not in net.blobs]
    if unknown:
        raise CliError(f"--data-shape names blob(s) the net does not have: {', '.join(unknown)}")
    return net


def net_in_phase(param, args):
    """The layers the net keeps for the requested phase, level and stages."""
    state = param.state
    state.phase, state.level = PHASES[args.phase], args.level
    state.stage.extend(s for s in args.stage if s not in state.stage)
    return filter_net(param)


# ---------------------------------------------------------------------------
# Random inputs
# ---------------------------------------------------------------------------
def num_classes(net, blob_name):
    """How many classes a label blob indexes: the smallest class-axis size
    among the loss/accuracy layers reading it as their bottom 1 (through
    automatic Split layers); None if no such layer reads it."""
    sizes, pending = [], [blob_name]
    while pending:
        name = pending.pop()
        # Blob lists rather than the name dicts: layer names need not be unique.
        for layer, bottom_vec, top_vec in zip(net.layers, net.bottom_vecs, net.top_vecs):
            bottoms = [b.name for b in bottom_vec]
            if name not in bottoms:
                continue
            kind = layer.param.type
            if kind == "Split":
                pending += [t.name for t in top_vec]
            elif kind in LABEL_READERS and len(bottoms) > 1 and bottoms[1] == name:
                field = LABEL_READERS[kind]
                axis = getattr(layer.param, field).axis if field else 1
                scores = net.blobs[bottoms[0]].shape
                sizes.append(scores[axis % len(scores)])
    return min(sizes) if sizes else None


def fill_random(net, rng):
    for name in fed_blob_names(net):
        blob = net.blobs[name]
        classes = num_classes(net, name)
        if classes:
            blob.data[...] = rng.integers(0, classes, blob.shape)
        else:
            blob.data[...] = rng.standard_normal(blob.shape, dtype=np.float32)


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------
def ms_text(value):
    """A number as C++'s default ostream prints a double (6 significant digits)."""
    return f"{value:g}"


def synchronized_clock():
    """perf_counter after the device has finished its queued work (GPU
    launches return at once; Caffe times with CUDA events to the same end)."""
    if not backends.gpu_mode():
        return time.perf_counter
    device = backends.current_device()

    def clock():
        device.synchronize()
        return time.perf_counter()
    return clock


def time_net(net, iterations, log):
    log("Performing Forward")
    loss = net.forward_from_to()
    log(f"Initial loss: {ms_text(loss)}")
    log("Performing Backward")
    net.backward_from_to()
    if not any(net.layer_need_backward):
        log("Note: the net has no loss, so no layer runs backward (use --force-backward to "
            "time backward passes anyway)")

    n = len(net.layers)
    forward_ms, backward_ms = np.zeros(n), np.zeros(n)
    forward_total = backward_total = 0.0
    log("*** Benchmark begins ***")
    log(f"Testing for {iterations} iterations.")
    clock = synchronized_clock()
    total_start = clock()
    for j in range(iterations):
        iter_start = clock()
        for i in range(n):
            start = clock()
            net.forward_from_to(i, i)
            forward_ms[i] += (clock() - start) * 1e3
        forward_total += (clock() - iter_start) * 1e3
        backward_start = clock()
        for i in range(n - 1, -1, -1):
            start = clock()
            net.backward_from_to(i, i)
            backward_ms[i] += (clock() - start) * 1e3
        backward_total += (clock() - backward_start) * 1e3
        log(f"Iteration: {j + 1} forward-backward time: {ms_text((clock() - iter_start) * 1e3)} ms.")
    log("Average time per layer: ")
    for layer, fwd, bwd in zip(net.layers, forward_ms, backward_ms):
        name = layer.name
        log(f"{name:>10}\tforward: {ms_text(fwd / iterations)} ms.")
        log(f"{name:>10}\tbackward: {ms_text(bwd / iterations)} ms.")
    total = (clock() - total_start) * 1e3
    log(f"Average Forward pass: {ms_text(forward_total / iterations)} ms.")
    log(f"Average Backward pass: {ms_text(backward_total / iterations)} ms.")
    log(f"Average Forward-Backward: {ms_text(total / iterations)} ms.")
    log(f"Total Time: {ms_text(total)} ms.")
    log("*** Benchmark ends ***")
    return forward_ms / iterations, backward_ms / iterations


def main(argv=None):
    args = build_parser().parse_args(argv)

    def log(message):
        print(message, flush=True)

    return run(args, log)


def run(args, log, prog=PROG):
    """Time the net of the parsed arguments, reporting through
    `log(message)` (time_net prints; `caffe time` logs in glog's format);
    the exit status, errors printed as `prog: error: ...`."""
    if args.iterations < 1:
        print(f"{prog}: error: --iterations must be at least 1, got {args.iterations}",
              file=sys.stderr)
        return 2
    set_random_seed(args.seed)
    try:
        with device_for(args.gpu) as on_gpu:
            return _time(args, log, on_gpu, prog)
    except CliError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1


def _time(args, log, on_gpu, prog):
    net = load_net(args)
    rng = np.random.default_rng(args.seed)
    for name, shape in args.data_shape:
        if name in net.inputs:
            net.blobs[name].reshape(shape)
    fill_random(net, rng)
    device = f"GPU ({backends.current_device().name})" if on_gpu else "CPU"
    log(f"Use {device}. Timing net '{net.name}' from {args.model}, phase {args.phase}.")
    try:
        time_net(net, args.iterations, log)
    except LayerError as err:
        print(f"{prog}: error: {args.model}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
