"""The MPI side: a communicator of the ranks, and the gradient reduction.

`Communicator` wraps mpi4py's COMM_WORLD with what sppcaffe needs: rank,
size, the rank on this machine, broadcasts and gathers of Python values,
and waiting that does not burn a core.  MPI libraries wait by polling,
at full speed; where a rank waits long (rank 0 testing or writing a
snapshot while the others wait for the next iteration) that steals the
core the working rank needs when ranks share a machine.  So every wait
here polls with MPI_Test and sleeps between polls (20 us, doubling up to
1 ms): about a millisecond of latency, no busy core.

`GradientReducer` sums the parameter gradients of the ranks, Caffe's
`layer_wise_reduce`: the learnable parameters are cut into buckets (about
`bucket_mb` each, in backward order) and a bucket's reduction starts as
soon as the backward pass has run the lowest layer owning one of its
parameters, while the layers below compute on.  The sum is made
deterministic and identical on every rank by doing it by hand instead of
MPI_Allreduce (whose summation order is the library's business, and may
differ between ranks): a bucket is cut into N chunks, an all-to-all hands
chunk c of every rank to rank c, rank c adds them in rank order (0, 1,
..., N-1) and scales by 1/N, and an all-gather gives every rank every
summed chunk.  Each value is thus added once, in a fixed order, and every
rank receives the same bits (so the ranks' weights never drift apart),
with the bandwidth of a ring all-reduce: each rank sends and receives
2 (N-1)/N of the gradients.  Averaging over the ranks (Caffe's multi-GPU
rule) makes N ranks x batch B equal one process x batch N*B for losses
normalized by the batch (see parallel/training.py).

In GPU mode the gradients go through host buffers (reading `blob.diff`
downloads them, writing it makes the host copy current, and the update
uploads it); a CUDA-aware MPI or NCCL could reduce device buffers in
place of `_pack`/`_unpack`.
"""
import math
import time

import numpy as np


class MPIUnavailable(RuntimeError):
    """Launched under MPI but mpi4py (or its MPI library) cannot be used;
    the message says what to install."""


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise MPIUnavailable(
            f"this process was started by an MPI launcher, but mpi4py cannot be imported "
            f"({err}); install it with pip install 'sppcaffe[mpi]' (mpi4py and the mpich "
            "wheel), or set SPPCAFFE_MPI=0 to run each process on its own") from None
    except RuntimeError as err:            # mpi4py found no MPI library
        raise MPIUnavailable(
            f"mpi4py cannot load an MPI library ({err}); pip install mpich, or point "
            "MPI4PY_LIBMPI at the cluster's libmpi.so") from None
    return MPI


def wait_politely(requests):
    """Wait for the MPI requests, sleeping between polls (module docstring)."""
    pending = [r for r in requests if r is not None]
    pause = 20e-6
    while pending:
        pending = [r for r in pending if not r.Test()]
        if pending:
            time.sleep(pause)
            pause = min(pause * 2, 1e-3)


class Communicator:
    """The ranks of one MPI job (mpi4py's COMM_WORLD) and the collective
    operations sppcaffe uses.  `local_rank` / `local_size`: this rank among
    the ranks on the same machine (one GPU per local rank)."""

    def __init__(self, comm):
        self.MPI = _import_mpi()
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        local = comm.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()

    @classmethod
    def world(cls):
        return cls(_import_mpi().COMM_WORLD)

    @property
    def is_root(self):
        return self.rank == 0

    def library(self):
        """The MPI library's one-line version, e.g. 'MPICH Version: 5.0.2'."""
        return " ".join(self.MPI.Get_library_version().split("\n")[0].split())

    def duplicate(self):
        """A new communicator over the same ranks (collectives on it never
        mix with those on this one)."""
        return self.comm.Dup()

    # ---- Python values (pickled); the waits sleep --------------------------------
    def barrier(self):
        wait_politely([self.comm.Ibarrier()])

    def bcast(self, value, root=0):
        """`value` of rank `root`, on every rank."""
        self.barrier()
        return self.comm.bcast(value, root=root)

    def gather(self, value, root=0):
        """[value of rank 0, ..., value of rank N-1] on `root`, None elsewhere."""
        self.barrier()
        return self.comm.gather(value, root=root)

    def allgather(self, value):
        self.barrier()
        return self.comm.allgather(value)

    def allgather_array(self, array):
        """(N, *shape) float64: every rank's `array` (the same shape on all)."""
        array = np.ascontiguousarray(array, np.float64)
        out = np.empty((self.size,) + array.shape, np.float64)
        wait_politely([self.comm.Iallgather(array, out)])
        return out

    def abort(self, status=1):
        """End every rank of the job now (MPI_Abort) with exit status `status`."""
        self.comm.Abort(int(status) or 1)


def param_first_layers(net):
    """For each of `net.learnable_params`, the index of the layer that owns
    it (its first user).  A shared parameter collects gradient from every
    layer using it; backward runs from the last layer down, so its gradient
    is complete once its owner, the lowest of them, has run."""
    first, seen = [], set()
    for li, layer in enumerate(net.layers):
        specs = layer.param.param
        for pi in range(len(layer.blobs)):
            name = specs[pi].name if pi < len(specs) else ""
            if not name or name not in seen:        # as Net._append_params registers them
                first.append(li)
            if name:
                seen.add(name)
    if len(first) != len(net.learnable_params):
        raise RuntimeError(f"net '{net.name}': found {len(first)} parameter owners for "
                           f"{len(net.learnable_params)} learnable parameters")
    return first


class _Bucket:
    """Parameters reduced together, and their buffers (allocated once)."""

    def __init__(self, indices, params, trigger, size):
        self.indices, self.params, self.trigger = indices, params, trigger
        self.counts = [p.count for p in params]
        self.offsets = np.cumsum([0] + self.counts[:-1]).tolist()
        total = sum(self.counts)
        self.chunk = math.ceil(total / size) if total else 0
        self.send = np.zeros((size, self.chunk), np.float32)     # padding stays 0
        self.received = np.empty((size, self.chunk), np.float32)
        self.summed = np.empty(self.chunk, np.float32)
        self.request = None
        self.phase = 0          # 0 waiting for backward, 1 all-to-all, 2 all-gather, 3 done

    @property
    def nbytes(self):
        return 4 * sum(self.counts)


class GradientReducer:
    """Averages the gradients of `net`'s learnable parameters over the
    ranks of `comm` (a Communicator), bucket by bucket as backward
    finishes (module docstring).  Parameters with lr_mult 0 are left out:
    they are never updated.

    Use: `begin()` before an iteration's first forward pass; the net's
    backward hooks start the buckets during the last of `iter_size`
    passes; `finish()` after it waits for every bucket and leaves the mean
    gradient in every param's diff.  `stats` counts iterations, seconds
    spent in finish() (communication the backward pass did not hide) and
    in packing/summing/unpacking."""

    def __init__(self, comm, net, iter_size=1, bucket_mb=25.0):
        self.comm, self.net, self.iter_size = comm, net, int(iter_size)
        self.size = comm.size
        # Two communicators: the all-to-alls start in bucket order, the
        # all-gathers in bucket order too, but the two kinds interleave
        # differently on each rank (as its polls find them done); MPI wants
        # the collectives of one communicator started in the same order.
        self._exchange, self._share = comm.duplicate(), comm.duplicate()
        self.buckets = self._make_buckets(bucket_mb * 2 ** 20)
        self._last_layer = len(net.layers) - 1
        self._passes = 0
        self._next = 0               # the next bucket to start
        self.stats = {"iterations": 0, "wait_s": 0.0, "copy_sum_s": 0.0}
        net.before_backward(self._before_layer)
        net.after_backward(self._after_layer)

    def _make_buckets(self, bucket_bytes):
        net = self.net
        first = param_first_layers(net)
        buckets, current = [], []

        def close():
            if current:
                indices = list(current)
                buckets.append(_Bucket(indices, [net.learnable_params[k] for k in indices],
                                       first[indices[-1]], self.size))
                current.clear()

        size = 0
        for k in range(len(net.learnable_params) - 1, -1, -1):   # backward order
            if net.params_lr[k] == 0:
                continue
            current.append(k)
            size += 4 * net.learnable_params[k].count
            if size >= bucket_bytes:
                close()
                size = 0
        close()
        return buckets

    @property
    def nbytes(self):
        """Bytes of gradient reduced per iteration."""
        return sum(b.nbytes for b in self.buckets)

    # ---- an iteration --------------------------------------------------------------
    def begin(self):
        self._passes, self._next = 0, 0
        for bucket in self.buckets:
            bucket.phase, bucket.request = 0, None

    def _before_layer(self, li):
        if li == self._last_layer:
            self._passes += 1

    def _after_layer(self, li):
        if self._passes != self.iter_size:
            return               # gradients of earlier passes are still being summed
        started = False
        while self._next < len(self.buckets) and self.buckets[self._next].trigger >= li:
            self._start(self.buckets[self._next])
            self._next += 1
            started = True
        if started or any(b.phase in (1, 2) for b in self.buckets):
            self._progress(block=False)

    def _start(self, bucket):
        self._pack(bucket)
        bucket.request = self._exchange.Ialltoall(bucket.send, bucket.received)
        bucket.phase = 1

    def _pack(self, bucket):
        """The bucket's gradients into its send buffer (in GPU mode reading
        `diff` downloads them)."""
        t = time.perf_counter()
        flat = bucket.send.reshape(-1)
        for p, offset, count in zip(bucket.params, bucket.offsets, bucket.counts):
            flat[offset:offset + count] = p.diff.reshape(-1)
        self.stats["copy_sum_s"] += time.perf_counter() - t

    def _sum_and_share(self, bucket):
        t = time.perf_counter()
        summed = bucket.summed
        summed[...] = bucket.received[0]
        for r in range(1, self.size):             # rank order: the same bits every run
            summed += bucket.received[r]
        summed *= np.float32(1.0 / self.size)
        self.stats["copy_sum_s"] += time.perf_counter() - t
        # The send buffer is free again: it receives every rank's summed chunk.
        bucket.request = self._share.Iallgather(summed, bucket.send)
        bucket.phase = 2

    def _unpack(self, bucket):
        """Every rank's summed chunks back into the gradients."""
        t = time.perf_counter()
        flat = bucket.send.reshape(-1)
        for p, offset, count in zip(bucket.params, bucket.offsets, bucket.counts):
            p.diff[...] = flat[offset:offset + count].reshape(p.shape)
        self.stats["copy_sum_s"] += time.perf_counter() - t
        bucket.request = None
        bucket.phase = 3

    def _progress(self, block):
        """Move the started buckets on, strictly in bucket order (so the
        all-gathers start in the same order on every rank)."""
        for bucket in self.buckets:
            if bucket.phase == 0:
                return
            if bucket.phase == 1:
                if block:
                    wait_politely([bucket.request])
                elif not bucket.request.Test():
                    return
                self._sum_and_share(bucket)
        for bucket in self.buckets:
            if bucket.phase == 2:
                if block:
                    wait_politely([bucket.request])
                elif not bucket.request.Test():
                    return
                self._unpack(bucket)

    def finish(self):
        """Wait for every bucket; the params' diffs then hold the mean
        gradient of the ranks."""
        t = time.perf_counter()
        while self._next < len(self.buckets):     # hooks that did not run (a partial backward)
            self._start(self.buckets[self._next])
            self._next += 1
        self._progress(block=True)
        self.stats["iterations"] += 1
        self.stats["wait_s"] += time.perf_counter() - t
