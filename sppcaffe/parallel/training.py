"""A solver as one of N ranks: synchronous data-parallel training.

Every rank builds the solver and its train net; rank r's data layers
read batches r, r + N, ... of their sources (sharding.py).  Each
iteration every rank runs forward/backward on its own batch, the
gradients are averaged over the ranks bucket by bucket while backward
goes on (mpi.GradientReducer), and every rank applies the same update to
the same weights, so the weights stay identical everywhere.

Semantics: N ranks x batch B train as one process x batch N*B (or
batch B with iter_size N) up to the order of float sums, for losses
normalized by the batch (Caffe's defaults: SoftmaxWithLoss VALID without
ignore_label, BATCH_SIZE, FULL, EuclideanLoss, ...): those give each rank
the gradient of its batch's mean loss, and the mean over ranks is the
mean over the N*B items.  Losses summed over the batch (normalization
NONE) or normalized by a per-rank count of valid labels (VALID with
ignore_label) differ; a warning names them.  `iter_size` works as in one
process: each rank accumulates its passes, the reduction runs once per
iteration.  Random draws differ from one process: each rank crops,
mirrors and drops out with a generator of its own (sharding.py).

Who does what:

- rank 0 alone reads --weights / `weights` / --snapshot and broadcasts
  the weights, the solver history, the iteration and the lr schedule
  position, so other machines need not see those files;
- rank 0 alone builds the test nets and tests, with the whole test data
  (the others wait, without using a core), writes the snapshots and the
  training curves, and logs (other ranks log warnings, prefixed with
  their rank);
- the training loss logged is the mean of the ranks' losses, and so are
  the net's scalar outputs (accuracy, ...) shown with it;
- SIGINT / SIGHUP (mpiexec forwards Ctrl-C to every rank; a SIGHUP sent
  to any one rank is enough) and Python's `requested_action` are agreed
  on once per iteration, with the gradients: if any rank asks to stop,
  every rank stops after the same iteration, with a snapshot; a NaN loss
  on any rank stops all (the mean is NaN);
- an error on one rank ends them all with its message (MPI_Abort:
  parallel.end_all_on_failure).

Snapshots and resume.  A snapshot's `.rng` sidecar (solvers/
resume_state.py) holds rank 0's generators and data positions where a
single process's are, plus ``"ranks": {"size": N, "random": [one per
rank], "train_net": [[data layers] per rank]}``, which rank 0 gathers
from the others.  Resuming with the same N restores every rank's
generators and positions: the run continues bit for bit as if never
stopped.  Resuming with another N (or from a one-process snapshot, or a
one-process run from an N-rank snapshot) continues from the same point
of the data (rank 0's position is where the whole sequence stands), with
new per-rank random draws; a warning says so.
"""
import logging
import zlib

import numpy as np

from .. import random as framework_random
from ..proto import caffe_pb2
from ..solvers import get_solver, resume_state, signals
from ..solvers.state import read_rng_state
from .mpi import GradientReducer
from .sharding import data_shard, rank_generator

log = logging.getLogger("sppcaffe")
_ACTION_CODES = {signals.NONE: 0, signals.SNAPSHOT: 1, signals.STOP: 2}
_ACTIONS = {code: action for action, code in _ACTION_CODES.items()}
MODES = caffe_pb2.LossParameter


def prepare_param(param, comm):
    """Make a SolverParameter ready for rank `comm.rank`: every rank the
    same random seed (rank 0's random_seed, or one it draws), so readers
    shuffle alike; on ranks other than 0 no test nets and no `weights`
    (rank 0 tests, and broadcasts the weights)."""
    seed = comm.bcast(int(param.random_seed) if param.random_seed >= 0 else
                      int(np.random.SeedSequence().entropy % 2 ** 31) if comm.is_root else None)
    if param.random_seed < 0 and comm.is_root:
        log.info("random_seed is not set: rank 0 drew %d for every rank (set random_seed "
                 "for a repeatable run)", seed)
    param.random_seed = seed
    if not comm.is_root:
        for field in ("test_net", "test_net_param", "test_iter", "test_state", "weights"):
            param.ClearField(field)
    return param


def build_solver(param, comm, **kwargs):
    """`get_solver(param, **kwargs)` as rank `comm.rank`: prepare_param,
    and the train net's data layers reading this rank's share."""
    prepare_param(param, comm)
    with data_shard(comm.rank, comm.size):
        return get_solver(param, **kwargs)


def root_first(comm, function, *args, **kwargs):
    """`function(*args, **kwargs)` on rank 0, then on the other ranks (e.g.
    creating a folder: on a shared file system the others find it made);
    simply called without `comm`."""
    if comm is None:
        return function(*args, **kwargs)
    if comm.is_root:
        result = function(*args, **kwargs)
    comm.barrier()
    if not comm.is_root:
        result = function(*args, **kwargs)
    return result


def _nothing():
    pass


class DataParallel:
    """Runs `solver` (built with build_solver) as one of the ranks of
    `comm`: ``DataParallel(solver, comm).start(resume_file)`` after rank 0
    restored or fine-tuned, then ``solver.solve()`` on every rank.  The
    solver calls back through `solver.parallel` (finish_iteration,
    agreed_action, snapshot)."""

    def __init__(self, solver, comm, bucket_mb=25.0):
        self.solver, self.comm = solver, comm
        self.reducer = GradientReducer(comm, solver.net, solver.param.iter_size, bucket_mb)
        solver.add_callback(self.reducer.begin, _nothing)
        solver.parallel = self
        self._action = signals.NONE
        self._scalar_outputs = [name for name in solver.net.outputs
                                if solver.net.blobs[name].count == 1]
        if comm.is_root:
            log.info("Data-parallel training over %d ranks (%s): %.1f MB of gradients per "
                     "iteration in %d buckets", comm.size, comm.library(),
                     self.reducer.nbytes / 2 ** 20, len(self.reducer.buckets))
            for warning in self._warnings():
                log.warning("%s", warning)

    def _warnings(self):
        net, problems = self.solver.net, []
        for layer in net.layers:
            if getattr(layer, "is_data", False):
                state = layer.data_state() if hasattr(layer, "data_state") else None
                if not (state and "shard" in state["reader"]):
                    problems.append(
                        f"data layer '{layer.name}' ({layer.type}) is not split over the ranks: "
                        "every rank reads the same batches")
            if not hasattr(layer, "normalization"):
                continue
            mode = layer.normalization
            if mode == MODES.NONE:
                problems.append(
                    f"loss layer '{layer.name}' sums over its batch (normalization NONE): the "
                    f"mean gradient of {self.comm.size} ranks is 1/{self.comm.size} of what "
                    "one process with the whole batch computes (scale base_lr to match)")
            elif mode == MODES.VALID and layer.param.loss_param.HasField("ignore_label"):
                problems.append(
                    f"loss layer '{layer.name}' divides by its count of non-ignored labels, "
                    "which differs between ranks: the mean over ranks is not exactly the "
                    "loss of the whole batch")
        return problems

    # ---- before training ------------------------------------------------------------
    def start(self, resume_file=None):
        """Give every rank rank 0's starting point: its weights (initial,
        fine-tuned or restored), solver history, iteration and lr step,
        and, resuming from `resume_file` (which rank 0 alone read), each
        rank its generators and data positions."""
        solver, comm = self.solver, self.comm
        content = read_rng_state(resume_file) if comm.is_root and resume_file else None
        head = comm.bcast((solver.iter, solver.current_step, resume_file, content)
                          if comm.is_root else None)
        solver.iter, solver.current_step, resume_file, content = head
        for blob in list(solver.net.learnable_params) + list(solver.history_blobs):
            # The host copy, written in place on the other ranks (in GPU mode
            # the next use uploads it).
            self.comm.comm.Bcast(blob.data, root=0)
        exact = self._written_by_as_many(content)
        if content is not None and not exact and comm.is_root:
            ranks = content.get("ranks") if isinstance(content, dict) else None
            log.warning("%s was written by %s, this run has %d ranks: every rank continues "
                        "from the saved data position, but the random draws (crops, mirrors, "
                        "Dropout) differ from those of the uninterrupted run", resume_file,
                        f"{ranks.get('size')} ranks" if isinstance(ranks, dict) else
                        "one process", comm.size)
        if content is not None and not comm.is_root:
            # (Rank 0 restored its own part, the sidecar's top level, already.)
            resume_state.apply(solver, self._part_of(content, exact), resume_file)
        if not exact:
            # A fresh start (or another layout): each rank a generator of its
            # own for Dropout and DummyData, derived from the common one.
            generator = rank_generator(framework_random.get_rng(), comm.rank)
            framework_random.restore_generator_state(framework_random.generator_state(generator))

    def _written_by_as_many(self, content):
        ranks = content.get("ranks") if isinstance(content, dict) else None
        return isinstance(ranks, dict) and ranks.get("size") == self.comm.size

    def _part_of(self, content, exact):
        """This rank's (not 0) part of a sidecar: its own entries when it
        was written by as many ranks, else rank 0's (or the single
        process's), which sharding.ShardedReader continues from."""
        if "bit_generator" in content:
            return content                  # version 1: the generator alone
        part = {key: value for key, value in content.items() if key != "ranks"}
        part["test_nets"] = []              # rank 0 alone has test nets
        if exact:
            ranks = content["ranks"]
            part["random"] = ranks["random"][self.comm.rank]
            part["train_net"] = ranks["train_net"][self.comm.rank]
        return part

    # ---- the solver's calls -----------------------------------------------------------
    def finish_iteration(self, loss):
        """After the iteration's forward/backward passes: wait for the
        gradients of every rank (then averaged in every diff), agree on the
        signals, and return the mean loss (the scalar outputs become their
        means too)."""
        solver = self.solver
        self.reducer.finish()
        requested = _ACTION_CODES[solver._poll_request()]
        values = [float(loss), requested] + [float(solver.net.blobs[name].cpu_data.reshape(-1)[0])
                                             for name in self._scalar_outputs]
        table = self.comm.allgather_array(values)
        total = table[0].copy()
        for row in table[1:]:
            total += row
        self._action = _ACTIONS[int(table[:, 1].max())]
        means = total / self.comm.size
        for name, mean in zip(self._scalar_outputs, means[2:]):
            solver.net.blobs[name].data[...] = mean
        return np.float32(means[0])

    def agreed_action(self):
        """The action every rank takes now (consumed)."""
        action, self._action = self._action, signals.NONE
        return action

    def snapshot(self, solver):
        """Every rank's generators and data positions to rank 0, which
        writes the snapshot; its (model, state) paths on every rank."""
        sidecar = resume_state.capture(solver)
        parts = self.comm.gather({"random": sidecar["random"], "train_net": sidecar["train_net"]})
        paths = None
        if self.comm.is_root:
            sidecar["ranks"] = {"size": self.comm.size,
                                "random": [part["random"] for part in parts],
                                "train_net": [part["train_net"] for part in parts]}
            paths = solver.write_snapshot(sidecar)
        return tuple(self.comm.bcast(paths))

    def finish(self):
        """After training: rank 0 logs the communication the backward pass
        did not hide, and the ranks wait for each other (rank 0's last test
        and files) without using a core."""
        stats = self.reducer.stats
        self.comm.barrier()
        # The ranks applied the same updates to the same weights: check it.
        digest = 0
        for blob in self.solver.net.learnable_params:
            digest = zlib.crc32(blob.cpu_data.tobytes(), digest)
        digests = self.comm.allgather(digest)
        if len(set(digests)) > 1 and self.comm.is_root:
            log.error("the ranks' weights differ after training (CRC-32 %s): a bug, please "
                      "report it", ", ".join(f"{d:08x}" for d in digests))
        if self.comm.is_root and stats["iterations"]:
            log.info("MPI: %d iterations over %d ranks; waiting for gradients %.1f ms per "
                     "iteration (of which copies and sums %.1f ms)", stats["iterations"],
                     self.comm.size, 1e3 * stats["wait_s"] / stats["iterations"],
                     1e3 * stats["copy_sum_s"] / stats["iterations"])
