"""The one seedable random generator of the framework (Caffe's RNG).

Fillers and Dropout draw from it, so `set_random_seed(s)` makes a run
repeatable, as Caffe's `random_seed` solver field does.
"""
import numpy as np

_rng = np.random.default_rng()


def set_random_seed(seed):
    global _rng
    _rng = np.random.default_rng(seed)


def get_rng():
    return _rng
