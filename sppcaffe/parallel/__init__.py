"""Several processes working as one over MPI: synchronous data-parallel
training and sharded detection (feature caching, SVMs, testing).

    mpiexec -n 4 tools/train_net --solver S.prototxt      # or: caffe train -solver ...
    mpiexec -n 4 tools/extract_features spp --dataset ... --out cache/trainval
    mpiexec -n 4 tools/train_svms --cache cache/trainval --output svms.npz
    mpiexec -n 4 tools/test_detection --cache cache/test --svms svms.npz

MPI is the engine: mpi4py, with MPI itself from the `mpich` wheel
(``pip install 'sppcaffe[mpi]'`` gives a working `mpiexec`) or a cluster's
own MPI (README, "Several processes and machines").

No MPI, no change: `world()` imports mpi4py only when the process was
started by an MPI launcher with more than one process, which the
launcher's environment variables say (PMI_SIZE: MPICH, Intel MPI,
MVAPICH and Slurm's PMI; OMPI_COMM_WORLD_SIZE: Open MPI; PMIX_RANK: PMIx
launchers), or when SPPCAFFE_MPI=1 asks for it; SPPCAFFE_MPI=0 keeps
every process on its own.  Otherwise every tool runs exactly as before.

Modules: mpi.py (the communicator; the bucketed, deterministic gradient
reduction), sharding.py (which rank reads which batches, images,
classes), training.py (a solver as one of N ranks), detection.py (the
detection tools over N ranks).
"""
import functools
import logging
import os
import sys
import time
import traceback

SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARIABLES = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK")
_OFF, _ON = ("0", "no", "off", "false"), ("1", "yes", "on", "true")
_world = {}


class ParallelError(ValueError):
    """A setting that does not fit a run over several ranks (e.g. one GPU
    id for several ranks of a machine); the message says what to give."""


def launched_size():
    """How many processes the MPI launcher started, from the environment:
    None when this process was not started by one (or SPPCAFFE_MPI=0), 0
    when it does not say how many."""
    setting = os.environ.get("SPPCAFFE_MPI", "").strip().lower()
    if setting in _OFF:
        return None
    for name in SIZE_VARIABLES:
        if name in os.environ:
            try:
                return int(os.environ[name])
            except ValueError:
                return 0
    if setting in _ON or any(name in os.environ for name in RANK_VARIABLES):
        return 0
    return None


def world():
    """The Communicator (mpi.py) of this job's ranks when this process is
    one of several under MPI; None otherwise, and then mpi4py is never
    imported.  Raises mpi.MPIUnavailable, saying what to install, when
    launched under MPI without a usable mpi4py."""
    if "comm" not in _world:
        size = launched_size()
        comm = None
        if size is not None and size != 1:
            from .mpi import Communicator
            comm = Communicator.world()
            if comm.size == 1:
                comm = None
        if comm is not None:
            _quiet_other_ranks(comm)
            _share_cores(comm)
        _world["comm"] = comm
    return _world["comm"]


def started():
    """Whether world() found several ranks (without starting MPI)."""
    return _world.get("comm") is not None


def is_root():
    """True on rank 0, and in a process of its own."""
    comm = world()
    return comm is None or comm.is_root


def _quiet_other_ranks(comm):
    """Rank 0 alone logs progress; the others log warnings and errors
    only (child loggers inherit the level), each prefixed with the rank."""
    if comm.is_root:
        return
    for name in ("sppcaffe", "py.warnings"):
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    make_record = logging.getLogRecordFactory()
    prefix = f"[rank {comm.rank}] "

    def record_with_rank(name, *args, **kwargs):
        record = make_record(name, *args, **kwargs)
        if name.startswith(("sppcaffe", "py.warnings")):
            record.msg = prefix + str(record.msg)
        return record
    logging.setLogRecordFactory(record_with_rank)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _share_cores(comm):
    """Ranks on one machine split its cores: each uses cores / local ranks
    threads for BLAS and for sppcaffe's own parallel copies (im2col,
    pooling), instead of every rank starting a thread per core.  A thread
    count set in the environment (OMP_NUM_THREADS, ...) is kept for BLAS;
    train_net --threads still sets it for training."""
    if comm.local_size == 1:
        return
    threads = max(1, (os.cpu_count() or 1) // comm.local_size)
    from .. import im2col
    im2col.set_workers(threads)
    if not any(name in os.environ for name in THREAD_VARIABLES):
        from threadpoolctl import threadpool_limits         # installed with scikit-learn
        threadpool_limits(limits=threads, user_api="blas")
    if comm.is_root:
        logging.getLogger("sppcaffe").info(
            "%d ranks on this machine (%d cores): %d thread(s) each", comm.local_size,
            os.cpu_count() or 1, threads)


def rank_gpu(gpu, flag="--gpu"):
    """This rank's GPU id for a --gpu value, under MPI: 'all' means device
    r for the machine's local rank r; 'A,B,...' lists one id per local
    rank; a single id suits one rank per machine.  Unchanged (a string or
    None) outside MPI."""
    if gpu is None:
        return None
    comm = world()
    if comm is None:
        return gpu
    text = str(gpu).strip()
    if text == "all":
        return str(comm.local_rank)
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if len(ids) == 1 and comm.local_size == 1:
        return ids[0]
    if len(ids) < comm.local_size:
        raise ParallelError(
            f"{flag} {gpu}: {comm.local_size} ranks run on this machine and each needs its own "
            f"GPU; give one id per local rank (e.g. {flag} "
            f"{','.join(str(i) for i in range(comm.local_size))}) or {flag} all")
    return ids[comm.local_rank]


def consecutive_gpus(first):
    """The GPUs a solver file's `device_id` means: itself in one process;
    under MPI, one per local rank from it on ('first,first+1,...')."""
    comm = world()
    if comm is None:
        return first
    return ",".join(str(int(first) + i) for i in range(comm.local_size))


def end_all_on_failure(main):
    """Decorate a tool's main(): under MPI with several ranks, a failure on
    this rank (a non-zero exit status, or an exception, whose traceback is
    printed) ends every rank at once with MPI_Abort and that status, instead
    of leaving the others waiting for it for ever.  The failing rank's
    message (the tool's error line) is on stderr before.  A traceback of a
    rank other than 0 is printed after a moment, so that where every rank
    fails alike rank 0's usually comes alone."""
    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            status = main(*args, **kwargs)
        except SystemExit as exit_:
            status = exit_.code
            if not started() or status in (None, 0):
                raise
            if not isinstance(status, int):
                print(status, file=sys.stderr)
                status = 1
        except BaseException:
            if not started():
                raise
            comm = world()
            if not comm.is_root:
                time.sleep(0.5)
            traceback.print_exc()
            status = 130 if isinstance(sys.exc_info()[1], KeyboardInterrupt) else 1
        if status and started():
            sys.stderr.flush()
            sys.stdout.flush()
            # The launcher forwards our output through a pipe and stops doing so
            # when it kills the job: give it time to pass the message on.
            time.sleep(0.5)
            world().abort(status)
        return status
    return run
