"""Each rank its own share of the work: data layers' batches, and lists
(images, classes) split over the ranks.

Data layers.  Inside ``with data_shard(rank, size):`` the database and
file readers of the data layers set up (Data, ImageData, HDF5Data,
WindowData; in the TRAIN phase unless told otherwise) read only rank
`rank`'s share, as Caffe's multi-GPU solvers give each solver other
batches.  The rule, for a layer of batch size B: the source is one
sequence of items, cut into batches of B; rank r takes batches r, r + N,
r + 2N, ...  So in an iteration the N ranks together read exactly the N*B
items one process with batch size N*B reads (also across epoch ends and
reshuffles), which is what makes N ranks x batch B train like one process
x batch N*B.  A rank passes over the other ranks' items without reading
them (the readers' `skip`).

Random draws are split in two:

- the order of the items (ImageData/HDF5Data `shuffle`, `rand_skip`,
  multi-size sizes drawn per epoch) comes from the reader's own generator,
  seeded identically on every rank (the ranks agree on the framework's
  seed before the nets are built), so every rank shuffles the same way and
  the shares stay disjoint;
- the per-item draws (crop offsets, mirrors) come from a generator of the
  rank's own, derived from that one and the rank: ranks crop and mirror
  independently.  WindowData, which samples windows with replacement and
  has no order, draws everything from the rank's own generator.

A reader's state (for snapshots, see solvers/resume_state.py) carries
its shard ("shard": rank, size, batch size) and the item generator, so a
resume with the same number of ranks continues bit for bit.  A state
saved by another number of ranks (or by one process) is taken as the
position of the whole sequence: rank 0's share starts there, rank r skips
r batches further (parallel/training.py hands every rank rank 0's state
in that case).
"""
import contextlib
import logging

import numpy as np

from ..data.batch import ReaderStateMismatch
from ..proto import caffe_pb2
from ..random import generator_state, restore_generator_state

log = logging.getLogger("sppcaffe")

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
_active = []            # the data_shard() blocks in force, innermost last


class Shard:
    """Rank `rank` of `size`, for data layers of the given phases."""

    def __init__(self, rank, size, phases=(TRAIN,)):
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} is not in [0, {size})")
        self.rank, self.size, self.phases = int(rank), int(size), tuple(phases)

    def __repr__(self):
        return f"Shard(rank={self.rank}, size={self.size})"


@contextlib.contextmanager
def data_shard(rank, size, phases=(TRAIN,)):
    """Data layers of `phases` set up inside the block read rank `rank`'s
    share of their sources (see the module docstring)."""
    _active.append(Shard(rank, size, phases))
    try:
        yield _active[-1]
    finally:
        _active.pop()


def current_shard(phase):
    """The Shard data layers of `phase` set up now read, or None."""
    if _active and phase in _active[-1].phases and _active[-1].size > 1:
        return _active[-1]
    return None


def shard_reader(reader, phase, layer_name="?"):
    """`reader` itself, or a ShardedReader over it when a data_shard()
    block is in force for `phase` (called by the data layers' setup)."""
    shard = current_shard(phase)
    if shard is None:
        return reader
    return ShardedReader(reader, shard.rank, shard.size)


def split(items, rank, size):
    """Rank `rank`'s share of `items`: every size-th item from the rank-th
    (images, classes: balanced and independent of what the others get)."""
    return list(items)[rank::size]


def rank_generator(rng, rank):
    """A generator of the rank's own, derived from the state of `rng` (the
    same on every rank) and the rank.  `rng` itself is not advanced, so
    whatever it draws next is what it would draw in one process."""
    peek = np.random.default_rng()
    peek.bit_generator.state = rng.bit_generator.state
    entropy = int(peek.integers(2 ** 63))
    return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(rank,)))


class ShardedReader:
    """A reader (sppcaffe.data's BatchReader interface) that hands out
    every size-th batch of `reader`, from batch `rank` on."""

    def __init__(self, reader, rank, size):
        self.reader, self.rank, self.ranks = reader, rank, size
        self.type = reader.type
        self.batch_size = int(reader.batch_size)
        transformer = getattr(reader, "transformer", None)
        self.skips = hasattr(reader, "skip")
        self.item_rng = None
        if self.skips:
            # The order stays the shared reader.rng; crops and mirrors get the rank's own.
            if transformer is not None:
                self.item_rng = transformer.rng = rank_generator(reader.rng, rank)
            reader.skip(rank * self.batch_size)
        else:
            # No order to share (WindowData): the rank draws everything itself.
            reader.rng.bit_generator.state = rank_generator(reader.rng, rank).bit_generator.state

    # ---- what the data layer and the prefetcher use -----------------------------
    def top_shapes(self):
        return self.reader.top_shapes()

    def size(self, epoch):
        return self.reader.size(epoch)

    def next_batch(self):
        batch = self.reader.next_batch()
        if self.skips:
            self.reader.skip((self.ranks - 1) * self.batch_size)
        return batch

    def close(self):
        self.reader.close()

    def describe(self):
        return {"rank": self.rank, "size": self.ranks, "batch": self.batch_size}

    def state(self):
        state = dict(self.reader.state(), shard=self.describe())
        if self.item_rng is not None:
            state["item_rng"] = generator_state(self.item_rng)
        return state

    def restore(self, state):
        """A state of this very shard continues exactly; any other (one
        process, or another number of ranks: then rank 0's) is the position
        of the whole sequence, from which this rank skips to its share."""
        same = isinstance(state, dict) and state.get("shard") == self.describe()
        if same and self.item_rng is not None:
            item_rng = np.random.default_rng()
            try:
                restore_generator_state(state.get("item_rng"), item_rng)
            except ValueError as err:
                raise ReaderStateMismatch(str(err)) from None
        self.reader.restore(state)
        if same and self.item_rng is not None:
            self.item_rng.bit_generator.state = item_rng.bit_generator.state
        elif not same and self.skips:
            self.reader.skip(self.rank * self.batch_size)
        elif not same:
            self.reader.rng.bit_generator.state = rank_generator(
                self.reader.rng, self.rank).bit_generator.state
