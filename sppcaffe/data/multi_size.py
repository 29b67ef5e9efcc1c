"""Multi-size training (SPP-net, Sec. 2.3): the input size of a data
layer changes once per epoch, i.e. per full pass over its source.

`transform_param { multi_size: 224 multi_size: 180 }` (mode ALTERNATE)
uses 224 in epoch 0, 180 in epoch 1, 224 in epoch 2, ...; with
`multi_size_mode: RANDOM_RANGE` the two values are [low, high] and every
epoch draws its size uniformly from that range.  The crop (or the whole
image) is resized to the epoch's size, so the 180 input is the 224 region
resized, as in the paper.
"""
from ..proto import caffe_pb2

ALTERNATE = caffe_pb2.TransformationParameter.ALTERNATE
RANDOM_RANGE = caffe_pb2.TransformationParameter.RANDOM_RANGE


class SizeSchedule:
    """The input side length of every epoch.  RANDOM_RANGE draws from
    `rng` the first time an epoch's size is asked for, so the sequence is
    fixed by the generator's seed."""

    def __init__(self, sizes, mode, rng):
        self.sizes = [int(s) for s in sizes]
        self.mode = mode
        self._rng = rng
        self._drawn = {}
        if not self.sizes:
            raise ValueError("multi_size needs at least one size")
        if any(s <= 0 for s in self.sizes):
            raise ValueError(f"multi_size values must be positive, got {self.sizes}")
        if mode == RANDOM_RANGE:
            if len(self.sizes) != 2:
                raise ValueError("multi_size_mode RANDOM_RANGE needs exactly 2 multi_size "
                                 f"values [low, high], got {len(self.sizes)}: {self.sizes}")
            if self.sizes[0] > self.sizes[1]:
                raise ValueError("multi_size_mode RANDOM_RANGE needs low <= high, got "
                                 f"[{self.sizes[0]}, {self.sizes[1]}]")
        elif mode != ALTERNATE:
            raise ValueError(f"unknown multi_size_mode {mode}")

    @classmethod
    def from_param(cls, transform_param, rng):
        """The schedule of a TransformationParameter, or None without multi_size."""
        if not len(transform_param.multi_size):
            return None
        return cls(transform_param.multi_size, transform_param.multi_size_mode, rng)

    def state(self):
        """The schedule and the sizes drawn so far, for a snapshot."""
        return {"sizes": list(self.sizes), "mode": int(self.mode),
                "drawn": [[epoch, size] for epoch, size in sorted(self._drawn.items())]}

    def check_state(self, saved):
        """Check a `state()` against this schedule; return a function that
        restores its drawn sizes.  ValueError when it is another schedule."""
        try:
            sizes, mode = [int(s) for s in saved["sizes"]], int(saved["mode"])
            drawn = {int(epoch): int(size) for epoch, size in saved["drawn"]}
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"malformed multi-size state {saved!r}") from None
        if (sizes, mode) != (self.sizes, self.mode):
            raise ValueError(f"multi_size was {sizes} (mode {mode}), it is {self.sizes} "
                             f"(mode {self.mode}) now")

        def apply():
            self._drawn = drawn
        return apply

    def size(self, epoch):
        if self.mode == ALTERNATE:
            return self.sizes[epoch % len(self.sizes)]
        if epoch not in self._drawn:
            low, high = self.sizes
            self._drawn[epoch] = int(self._rng.integers(low, high + 1))
        return self._drawn[epoch]
