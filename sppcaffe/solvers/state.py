"""Solver snapshots: the solver state (Caffe's SolverState, binary or
HDF5) and the weights file it points to.

A state holds the iteration, `learned_net` (the weights file written with
it), the multistep position `current_step` and the history blobs in the
solver's layout (SGD: one per learnable param; AdaDelta and Adam: two).

Caffe's SolverState has no field for the random generators and the data
layers' positions, so they go into a sidecar file ``<state>.rng`` (JSON)
beside the state; resume_state.py says what it holds.  Caffe ignores it;
restoring uses it when present, which makes a resumed run bit-for-bit
equal to an uninterrupted one.
"""
import collections
import json
import os

from .. import io
from ..io.atomic import atomic_write
from ..io.caffemodel import blob_matches, blob_shape
from ..io.files import read_json_file
from ..proto import caffe_pb2
from ..io import hdf5

SolverSnapshot = collections.namedtuple("SolverSnapshot",
                                        "iter learned_net current_step history")


class SolverStateError(ValueError):
    """A solver state that does not fit the solver restoring it; names the file."""


def is_hdf5(path):
    return os.fspath(path).endswith(".h5")


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------
def write_state(path, iteration, learned_net, current_step, history):
    """Write a state file, HDF5 when `path` ends in .h5, else binary proto."""
    if is_hdf5(path):
        with hdf5.create(path) as f:
            hdf5.save_int(f, "iter", iteration)
            hdf5.save_string(f, "learned_net", learned_net)
            hdf5.save_int(f, "current_step", current_step)
            group = f.create_group("history")
            for i, array in enumerate(history):
                hdf5.save_blob(group, str(i), array)
        return
    state = caffe_pb2.SolverState(iter=iteration, learned_net=learned_net,
                                  current_step=current_step)
    for array in history:
        io.array_to_blob(array, state.history.add())
    io.write_binary(state, path)


def write_rng_state(state_path, content):
    """Write the sidecar of `state_path`: `content`, JSON-ready (see
    resume_state.py)."""
    with atomic_write(rng_path(state_path), "w") as f:
        json.dump(content, f)


def rng_path(state_path):
    return os.fspath(state_path) + ".rng"


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------
def _check_count(path, found, shapes):
    if found != len(shapes):
        raise SolverStateError(f"{path}: incorrect length of history blobs: the state holds "
                               f"{found}, this solver keeps {len(shapes)}")


def _mismatch(path, index, found, shape):
    return SolverStateError(f"{path}: history blob {index} has shape {found}, this solver's "
                            f"is {tuple(shape)} (a state from another net or solver type?)")


def read_state(path, shapes):
    """A SolverSnapshot from a binary or HDF5 state; its history arrays
    must have `shapes` (the solver's history layout)."""
    path = os.fspath(path)
    if is_hdf5(path):
        with hdf5.open_for_reading(path, "solver state") as f:
            learned = hdf5.load_string(f, "learned_net") if "learned_net" in f else None
            if "history" not in f:
                raise SolverStateError(f"{path}: no 'history' group")
            group = f["history"]
            _check_count(path, len(group), shapes)
            history = []
            for i, shape in enumerate(shapes):
                if str(i) not in group:
                    raise SolverStateError(f"{path}: history/{i} is missing")
                history.append(hdf5.load_blob(group, str(i), shape, path))
            return SolverSnapshot(hdf5.load_int(f, "iter", path), learned,
                                  hdf5.load_int(f, "current_step", path), history)
    state = io.read_binary(path, caffe_pb2.SolverState(), allow_empty=False)
    _check_count(path, len(state.history), shapes)
    history = []
    for i, (blob, shape) in enumerate(zip(state.history, shapes)):
        if not blob_matches(blob, shape):
            raise _mismatch(path, i, blob_shape(blob), shape)
        history.append(io.blob_to_array(blob, shape=shape, where=f"{path}: history blob {i}"))
    learned = state.learned_net if state.HasField("learned_net") else None
    return SolverSnapshot(state.iter, learned, state.current_step, history)


def find_learned_net(learned_net, state_path):
    """The weights file a state names: as stored (Caffe opens it relative to
    the working directory), else relative to the state's folder, else the
    file of that name beside the state (a snapshot moved from the machine
    that wrote it, whose absolute path no longer exists)."""
    state_dir = os.path.dirname(os.path.abspath(state_path))
    candidates = [learned_net, os.path.join(state_dir, learned_net),
                  os.path.join(state_dir, os.path.basename(learned_net))]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    tried = ", ".join(dict.fromkeys(candidates))
    raise FileNotFoundError(f"{state_path}: cannot find its learned_net weights "
                            f"'{learned_net}' (tried {tried})")


def read_rng_state(state_path):
    """The content of `state_path`'s sidecar, or None when there is none
    (e.g. a state written by Caffe)."""
    path = rng_path(state_path)
    if not os.path.isfile(path):
        return None
    return read_json_file(path, "resume state (.rng sidecar)", SolverStateError)
