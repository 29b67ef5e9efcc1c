"""The one seedable random generator of the framework (Caffe's RNG).

Fillers and Dropout draw from it, so `set_random_seed(s)` makes a run
repeatable, as Caffe's `random_seed` solver field does.  Data layers draw
from generators of their own (sppcaffe.data.batch), seeded from this one
when they are set up.

`generator_state` / `restore_generator_state` read and set a numpy
Generator's state as plain, JSON-ready values, so a snapshot can carry it
(solvers/resume_state.py).
"""
import numpy as np

_rng = np.random.default_rng()


def set_random_seed(seed):
    global _rng
    _rng = np.random.default_rng(seed)


def get_rng():
    return _rng


def generator_state(rng=None):
    """The state of `rng` (default: the framework's generator): a dict of
    ints and strings, numpy's BitGenerator.state."""
    return (rng or _rng).bit_generator.state


def restore_generator_state(saved, rng=None):
    """Set `rng` (default: the framework's generator) to a state from
    `generator_state`.  A ValueError says what does not fit."""
    bit_generator = (rng or _rng).bit_generator
    kind = type(bit_generator).__name__
    if not isinstance(saved, dict) or saved.get("bit_generator") != kind:
        found = saved.get("bit_generator") if isinstance(saved, dict) else type(saved).__name__
        raise ValueError(f"random state of a {found} generator, this process uses {kind}")
    try:
        bit_generator.state = saved
    except (TypeError, ValueError, KeyError, OverflowError) as err:
        raise ValueError(f"invalid {kind} random state ({err})") from None
