"""Command-line tools (the scripts in tools/ are thin wrappers around these
modules' ``main`` functions)."""
import contextlib
import logging
import os

from .. import backends, parallel
from ..io.atomic import folder_problem, write_problem
from ..io.files import path_problem
from ..proto import caffe_pb2


class CliError(ValueError):
    """A user-facing error: printed without a traceback."""


def require_file(path, what):
    """CliError unless `path` is a file: "cannot read WHAT 'PATH': no such
    file" (or "it is a directory, not a file")."""
    problem = path_problem(path)
    if problem:
        raise CliError(f"cannot read {what} '{path}': {problem}")


def require_writable(path, what):
    """CliError now, before any work is done, unless a file can be written
    at `path` (its folder exists and takes new files)."""
    problem = write_problem(path)
    if problem:
        raise CliError(f"cannot write {what} '{path}': {problem}")


def require_writable_folder(folder, what):
    """CliError now unless folder `folder` can be made and written to."""
    problem = folder_problem(folder)
    if problem:
        raise CliError(f"cannot write {what} '{folder}': {problem}")


def naming_file(path, err):
    """The message of `err` about file `path`, prefixed with the path
    unless the message already names it."""
    text = str(err)
    return text if os.fspath(path) in text else f"{path}: {text}"


def require_layers(net, path):
    """CliError for a net without a layer (an empty prototxt, or one whose
    layers are all excluded from the phase): nothing to test or time."""
    if not net.layers:
        empty = " (the file is empty)" if os.path.getsize(path) == 0 else ""
        raise CliError(f"{path}: the net has no layers in phase "
                       f"{caffe_pb2.Phase.Name(net.phase)}{empty}")


def add_net_state_arguments(parser, default_phase):
    """--phase, --level and --stage: the NetState a tool builds its net in."""
    parser.add_argument("--phase", type=str.upper, choices=["TEST", "TRAIN"], default=default_phase,
                        help="network phase (default: %(default)s)")
    parser.add_argument("--level", type=int, default=0, help="network level (default: 0)")
    parser.add_argument("--stage", action="append", default=[],
                        help="network stage; repeat for several")


def add_gpu_argument(parser):
    """--gpu ID, as Caffe's tools take it."""
    parser.add_argument("--gpu", metavar="ID",
                        help="run on the GPU with this CUDA ordinal, e.g. --gpu 0 (needs PyCUDA and "
                             "an NVIDIA driver: README, section 'GPU'); default: the CPU")


def select_device(gpu, flag="--gpu"):
    """GPU mode on the device `gpu` names (the value of `flag`), or nothing
    when it is None; a CliError saying why where that cannot be."""
    if gpu is None:
        return False
    try:
        gpu = parallel.rank_gpu(gpu, flag)     # over MPI: this rank's id of a list or 'all'
    except parallel.ParallelError as err:
        raise CliError(str(err)) from None
    ids = [part.strip() for part in str(gpu).split(",") if part.strip()]
    if str(gpu).strip() == "all" or len(ids) != 1:
        raise CliError(f"{flag} {gpu}: one GPU at a time (multi-GPU training is not supported "
                       "in one process: run one process per GPU with mpiexec, README); give "
                       "one id, e.g. --gpu 0")
    try:
        device_id = int(ids[0])
    except ValueError:
        raise CliError(f"{flag} expects a GPU id such as 0, got '{gpu}'") from None
    try:
        backends.set_device(device_id)
        backends.set_mode_gpu()
    except (backends.GPUUnavailable, ValueError) as err:
        raise CliError(f"{flag} {gpu}: {err}") from None
    logging.getLogger("sppcaffe").info("Use GPU with device ID %d (%s)", device_id,
                                       backends.current_device().name)
    return True


@contextlib.contextmanager
def device_for(gpu, flag="--gpu"):
    """The device `gpu` names (None: the CPU) inside the block, CPU mode
    again after it, so that a caller in the same process finds the mode as
    it was; yields whether it is a GPU."""
    try:
        yield select_device(gpu, flag)
    finally:
        backends.set_mode_cpu()
