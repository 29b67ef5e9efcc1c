"""`caffe train` for sppcaffe: train or fine-tune a net from a solver prototxt.

As BVLC tools/caffe.cpp `train()`: `--snapshot` resumes from a
.solverstate, `--weights` copies .caffemodel weights into the train net and
the test nets before training (fine-tuning; not with --snapshot), SIGINT
stops (with a snapshot) and SIGHUP snapshots unless told otherwise, and the
log lines are Caffe's, on stderr.  Conveniences on top:

- `--iters N` replaces max_iter; `--cfg file.yml` and `--set key=value`
  override any SolverParameter field by name (see sppcaffe/cli/config.py);
- the snapshot folder is created when missing;
- a progress bar on a terminal (not with --no-progress);
- one BLAS thread for small nets, where more only cost time (--threads N
  to choose);
- at the end, `<snapshot_prefix>_training.csv` and `_training.png`: the
  training loss and the test outputs against the iteration;
- nothing is lost late: the outputs are checked writable before the first
  iteration, weights that fill none of the net's layers are an error
  (--allow-unmatched-weights), and a NaN or infinite loss stops training
  with a snapshot of the last finite weights (--allow-nan trains on);
- `mpiexec -n N tools/train_net ...` trains data-parallel over N ranks
  (one process x batch N*B; --gpu all or a list: a GPU per local rank):
  sppcaffe/parallel/training.py.
"""
import argparse
import contextlib
import functools
import logging
import math
import os
import sys

from .. import io, parallel
from ..io.atomic import write_problem
from ..net import WeightsError
from ..parallel import training as parallel_training
from ..proto import caffe_pb2
from ..solvers import get_solver
from ..solvers.signals import ACTIONS, SNAPSHOT, STOP
from ..solvers.solver import default_snapshot_prefix
from . import config, curve_plot, progress
from . import CliError, add_gpu_argument, device_for, require_file, select_device

PROG = "train_net"
log = logging.getLogger("sppcaffe")


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train or fine-tune a net from a solver prototxt, as `caffe train`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Overrides (applied in this order: --cfg, --set, --iters):\n"
               "  --cfg my.yml           a YAML mapping of SolverParameter fields, e.g.\n"
               "                         'base_lr: 0.005' or 'stepvalue: [2000, 3000]'\n"
               "  --set base_lr=0.005    one field; dotted for nested fields\n"
               "                         (--set train_state.level=1); repeat the flag\n\n"
               "Example:\n"
               "  %(prog)s --solver solvers/demo_spp.prototxt --set base_lr=0.02 --iters 500")
    parser.add_argument("--solver", required=True, help="the solver prototxt")
    parser.add_argument("--weights", metavar="A.caffemodel[,B.caffemodel...]",
                        help="weights copied into the train and test nets before training "
                             "(fine-tuning); comma-separated files are copied in order")
    parser.add_argument("--allow-unmatched-weights", action="store_true",
                        help="accept a --weights file (or the solver's `weights`) that fills "
                             "none of the net's parameter layers (default: an error; such a "
                             "file is usually another net's)")
    parser.add_argument("--snapshot", metavar="FILE.solverstate",
                        help="resume training from a solver state")
    parser.add_argument("--iters", type=int, metavar="N", help="train to N iterations "
                        "(replaces the solver's max_iter)")
    parser.add_argument("--cfg", metavar="FILE.yml",
                        help="YAML file of SolverParameter fields to override")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        dest="settings", help="override one SolverParameter field; repeatable")
    parser.add_argument("--level", type=int, help="train net level (train_state.level)")
    parser.add_argument("--stage", action="append", default=[],
                        help="train net stage (added to train_state.stage); repeatable")
    parser.add_argument("--sigint-effect", choices=ACTIONS, default=STOP,
                        help="what Ctrl-C (SIGINT) does: %(choices)s (default: %(default)s)")
    parser.add_argument("--sighup-effect", choices=ACTIONS, default=SNAPSHOT,
                        help="what SIGHUP does: %(choices)s (default: %(default)s)")
    parser.add_argument("--allow-nan", action="store_true",
                        help="train on when the loss becomes NaN or infinite, as Caffe does "
                             "(default: stop with an error and a snapshot of the weights "
                             "before that iteration's update)")
    add_common_arguments(parser)
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (it is shown only when stderr is a terminal)")
    parser.add_argument("--no-plot", action="store_true",
                        help="do not write the _training.csv and _training.png files")
    return parser


def add_common_arguments(parser):
    parser.add_argument("--threads", type=int, metavar="N",
                        help="BLAS threads (default: 1 for a small net, whose largest conv/fc "
                             "layer has under 20 M multiply-adds per pass, else the BLAS "
                             "library's own choice, one per core)")
    add_gpu_argument(parser)


# Below this many multiply-adds in its largest conv/fc layer, a net runs
# faster on one BLAS thread: the matrix products are too small to split,
# and idle BLAS threads waiting for work slow everything down several times
# when other processes share the cores (the demo net: ~3 M; ZF-5 at batch
# 1: 170 M).
SMALL_NET_MACS = 20_000_000


def largest_layer_macs(net):
    """Multiply-adds of the net's largest Convolution or InnerProduct layer
    at its current shapes (each output value is one weight row's dot product)."""
    sizes = [tops[0].count * math.prod(layer.blobs[0].shape[1:])
             for layer, tops in zip(net.layers, net.top_vecs)
             if layer.param.type in ("Convolution", "InnerProduct") and layer.blobs]
    return max(sizes, default=0)


@contextlib.contextmanager
def blas_threads(requested, net):
    """Cap the BLAS threads inside the block: at `requested`, or at 1 for a
    small `net` when nothing was requested (the limit is undone on exit, so
    a caller's process keeps its own setting)."""
    if requested is not None and requested < 1:
        raise CliError(f"--threads must be at least 1, got {requested}")
    if requested is None:
        macs = largest_layer_macs(net)
        if macs >= SMALL_NET_MACS:
            yield
            return
        requested = 1
        log.info("BLAS threads: 1 for this small net (largest layer %.1f M multiply-adds; "
                 "--threads N to change)", macs / 1e6)
    else:
        log.info("BLAS threads: %d", requested)
    from threadpoolctl import threadpool_limits      # installed with scikit-learn
    with threadpool_limits(limits=requested, user_api="blas"):
        yield


# ---------------------------------------------------------------------------
# The solver parameters
# ---------------------------------------------------------------------------
def solver_parameters(args):
    """The solver file's SolverParameter with the command line's overrides."""
    require_file(args.solver, "solver")
    param = io.read_solver(args.solver)
    if args.cfg is not None:
        config.apply_cfg(param, config.load_cfg(args.cfg), args.cfg)
    config.apply_settings(param, [config.Setting(s) for s in args.settings])
    if args.iters is not None:
        if args.iters < 1:
            raise CliError(f"--iters must be >= 1, got {args.iters}")
        param.max_iter = args.iters
    # As caffe train: the command line's level and stages go to train_state.
    if args.level is not None:
        param.train_state.level = args.level
    param.train_state.stage.extend(s for s in args.stage if s not in param.train_state.stage)
    default_snapshot_prefix(param, args.solver)
    return param


def make_snapshot_folder(param, plots=True):
    """Create the folder of snapshot_prefix (Caffe requires it to exist)
    when snapshots or the training curves (`plots`) go there, and check now
    that they can be written: not after the training."""
    folder = os.path.dirname(param.snapshot_prefix)
    writes_snapshots = param.snapshot > 0 or param.snapshot_after_train
    if not (writes_snapshots or plots):
        return
    if folder and not os.path.isdir(folder):
        try:
            os.makedirs(folder)
        except OSError as err:
            raise CliError(f"cannot create the snapshot folder '{folder}' (snapshot_prefix "
                           f"'{param.snapshot_prefix}'): {err.strerror or err}") from None
        log.info("Created snapshot folder %s", folder)
    if plots:
        csv_path = progress.curve_paths(param.snapshot_prefix)[0]
        problem = write_problem(csv_path)
        if problem:
            raise CliError(f"cannot write the training curves '{csv_path}' ({problem}); "
                           "--no-plot does without them")


def copy_weights(solver, weights, allow_unmatched=False):
    """caffe.cpp's CopyLayers: each model, in order, into the train net and
    every test net (see Net.copy_from for `allow_unmatched`)."""
    for model in (m.strip() for m in weights.split(",")):
        if not model:
            continue
        require_file(model, "weights")
        log.info("Finetuning from %s", model)
        with unmatched_weights_hint():
            for net in [solver.net] + list(solver.test_nets):
                net.copy_from(model, allow_unmatched=allow_unmatched)


@contextlib.contextmanager
def unmatched_weights_hint():
    """Weights that fill nothing: say which flag accepts them anyway."""
    try:
        yield
    except WeightsError as err:
        err.add_note("--allow-unmatched-weights starts training from them anyway (e.g. a net "
                     "whose layers were all renamed for fine-tuning)")
        raise


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def train(args, plot_helper=None):
    """`plot_helper`: a curve_plot.PlotProcess started early (tools/train_net)."""
    # Several MPI ranks (mpiexec -n N ...): data-parallel, see parallel/training.py.
    comm = parallel.world()
    param = solver_parameters(args)
    if args.gpu is None:
        solver_device(param, args.solver)
    parallel_training.root_first(comm, make_snapshot_folder, param,
                                 plots=not args.no_plot and parallel.is_root())
    build = get_solver if comm is None else functools.partial(parallel_training.build_solver,
                                                              comm=comm)
    with unmatched_weights_hint():          # the solver file's `weights`
        solver = build(param, sigint_effect=args.sigint_effect,
                       sighup_effect=args.sighup_effect, source=args.solver,
                       allow_nan=args.allow_nan,
                       allow_unmatched_weights=args.allow_unmatched_weights)
    with blas_threads(args.threads, solver.net):
        run_solver(solver, param, args, comm, plot_helper)
    return 0


def run_solver(solver, param, args, comm=None, plot_helper=None):
    """Resume or fine-tune, train to max_iter, write the curves.  Over
    MPI (`comm`), rank 0 alone reads the files and writes the curves."""
    curves = progress.TrainingCurves()
    root = comm is None or comm.is_root
    if args.snapshot and root:
        require_file(args.snapshot, "snapshot")
        log.info("Resuming from %s", args.snapshot)
        solver.restore(args.snapshot)
        curves.keep_earlier(progress.curve_paths(param.snapshot_prefix)[0], solver.iter)
    elif args.weights and root:
        copy_weights(solver, args.weights, args.allow_unmatched_weights)
    if comm is not None:
        data_parallel = parallel_training.DataParallel(solver, comm)
        data_parallel.start(args.snapshot)
    if root:
        solver.add_listener(curves)
    bar = progress.ProgressBar(solver, enabled=sys.stderr.isatty() and not args.no_progress)
    # matplotlib gets ready in another process while training runs.
    plotter = None
    if root and not args.no_plot:
        plotter = plot_helper or curve_plot.PlotProcess()
    elif plot_helper is not None:
        plot_helper.close()
    log.info("Starting Optimization")
    try:
        solver.solve()
    finally:
        bar.close()
        if curves.rows and not args.no_plot:
            title = f"{solver.net.name} ({os.path.basename(args.solver)})"
            csv_path, png_path = curves.write(param.snapshot_prefix, title, plotter)
            log.info("Training curves written to %s and %s", png_path, csv_path)
        if plotter is not None:
            plotter.close()
    if comm is not None:
        data_parallel.finish()


def is_user_error(err):
    """Errors about the user's files and flags (shown as one message),
    as opposed to bugs (shown with their traceback)."""
    if isinstance(err, (CliError, OSError)):
        return True
    return isinstance(err, ValueError) and type(err).__module__.startswith("sppcaffe")


def solver_device(param, source):
    """Without --gpu, caffe train takes the mode and device from the solver
    file; where its GPU cannot be had, train on the CPU and say why (the
    model zoo's solvers all say GPU)."""
    if param.solver_mode != caffe_pb2.SolverParameter.GPU:
        log.info("Use CPU.")
        return
    try:
        select_device(parallel.consecutive_gpus(param.device_id))
    except CliError as err:
        log.warning("%s asks for solver_mode GPU, which cannot run here (%s); training on the "
                    "CPU", source, err)
        log.info("Use CPU.")


def run_tool(prog, body, args):
    """Run `body(args)` as a command-line tool: the --gpu device (if any)
    selected, then progress.run_main (Caffe-format logging, user errors as
    one message, Ctrl-C as exit 130); CPU mode again afterwards, so a tool
    called from Python leaves the mode as it found it."""
    def run(args):
        with device_for(getattr(args, "gpu", None)):
            return body(args)
    return progress.run_main(prog, run, args, is_user_error=is_user_error)


@parallel.end_all_on_failure      # under mpiexec: a failing rank stops them all
def main(argv=None, plot_helper=None):
    """`plot_helper`: the curves' helper process, when the launcher started
    it before importing sppcaffe (tools/train_net); ended here if unused."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.snapshot and args.weights:
            # caffe train's check: resuming restores the weights the snapshot names.
            parser.error("give --snapshot to resume training or --weights to fine-tune, not both")
        return run_tool(PROG, functools.partial(train, plot_helper=plot_helper), args)
    finally:
        if plot_helper is not None:
            plot_helper.close()


if __name__ == "__main__":
    sys.exit(main())
