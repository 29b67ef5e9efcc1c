"""What a data layer's reader produces, and the interface every reader
(Data, ImageData, HDF5Data, WindowData) implements.

A reader prepares whole batches, synchronously and deterministically: all
its random draws come from its own generator, seeded once from
sppcaffe.random when the layer is set up.  Running it on a prefetch
thread (prefetch.py) therefore yields the same batches as calling it
directly, and `set_random_seed` makes a run repeatable.

A reader's position is a value: `state()` returns what the next batch
depends on (its generator, cursor, epoch, shuffled order, drawn
multi-size sizes) and `restore(state)` puts a reader of the same source
back there, so a resumed training run reads exactly what an uninterrupted
one would.  States hold ints, strings, dicts and numpy index arrays that
are never written in place once in a state (a reshuffle makes a new
array), so taking one after every batch is cheap.
"""
import collections

import numpy as np

from ..layer import LayerError
from ..random import generator_state, get_rng, restore_generator_state

# arrays: one per top, in top order.  epoch: the pass over the source the
# batch's first item belongs to.  size: that epoch's multi-size side (None
# without multi-size).
Batch = collections.namedtuple("Batch", "arrays epoch size")


class ReaderStateMismatch(ValueError):
    """A saved reader state that does not fit this reader (another source,
    list or database); the message says what differs."""


def json_ready(value):
    """A state with its numpy arrays and scalars turned into lists and
    numbers, as JSON holds it (restore() takes either form)."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return value


def reader_rng():
    """A generator of the reader's own, seeded from the framework's."""
    return np.random.default_rng(int(get_rng().integers(2 ** 63)))


class BatchReader:
    """Base of the readers: `top_shapes()` (known at setup, from the first
    item as Caffe's DataLayerSetUp), `next_batch()`, `close()`."""
    type = "?"
    transformer = None

    def __init__(self, layer_name, num_top):
        self.layer_name = layer_name
        self.num_top = num_top
        self.where = f"layer '{layer_name}' ({self.type})"
        self.rng = reader_rng()

    def error(self, message):
        return LayerError(f"{self.where}: {message}")

    def top_shapes(self):
        raise NotImplementedError

    def next_batch(self):
        raise NotImplementedError

    def state(self):
        """Where the reader stands: everything its next batch depends on."""
        state = {"type": self.type, "rng": generator_state(self.rng)}
        schedule = self.transformer.schedule if self.transformer is not None else None
        if schedule is not None:
            state["sizes"] = schedule.state()
        state.update(self.cursor_state())
        return state

    def restore(self, state):
        """Go back to a `state()` of a reader of the same source.  Raises
        ReaderStateMismatch, changing nothing, when it does not fit."""
        if not isinstance(state, dict) or state.get("type") != self.type:
            found = state.get("type") if isinstance(state, dict) else type(state).__name__
            raise ReaderStateMismatch(f"the saved state is of a {found} reader, not {self.type}")
        schedule = self.transformer.schedule if self.transformer is not None else None
        if (schedule is not None) != ("sizes" in state):
            raise ReaderStateMismatch("multi_size is " + ("set now but was not" if schedule
                                                          else "not set now but was"))
        rng = np.random.default_rng()
        try:
            restore_generator_state(state.get("rng"), rng)
            apply_sizes = schedule.check_state(state["sizes"]) if schedule else None
        except ValueError as err:
            raise ReaderStateMismatch(str(err)) from None
        apply_cursor = self.check_cursor(state)
        # Checked: now change the reader.  (The transformer and the size
        # schedule draw from self.rng, so its state is set in place.)
        apply_cursor()
        if apply_sizes is not None:
            apply_sizes()
        self.rng.bit_generator.state = rng.bit_generator.state

    def cursor_state(self):
        """The reader's own part of `state()` (besides generator and sizes)."""
        return {}

    def check_cursor(self, state):
        """Check the reader's part of a saved state; return a function that
        applies it.  Raises ReaderStateMismatch when it does not fit."""
        return lambda: None

    def size(self, epoch):
        """The multi-size side of `epoch`'s batches (None without multi-size)."""
        return self.transformer.size(epoch) if self.transformer is not None else None

    def close(self):
        pass
