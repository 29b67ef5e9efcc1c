"""Caffe's HDF5 snapshot layout, written and read with h5py.

Follows src/caffe/util/hdf5.cpp (H5LT datasets: an int is a rank-1
dataset of one native int, a string a scalar null-terminated fixed-length
string, a blob a float dataset of the blob's shape) and Net::ToHDF5 /
Net::CopyTrainedLayersFromHDF5 (`data/<layer>/<i>` and, with
snapshot_diff, `diff/<layer>/<i>`).
"""
import contextlib
import os

import numpy as np

# h5py is imported by the functions that use it: `import sppcaffe` stays light.

from .atomic import atomic_write
from .files import check_file


class HDF5SnapshotError(ValueError):
    """An HDF5 snapshot that does not fit the net or solver; names the file."""


@contextlib.contextmanager
def create(path):
    """An h5py File written under a temporary name and renamed into place."""
    import h5py
    with atomic_write(path, "w+b") as f:
        with h5py.File(f, "w") as h5:
            yield h5


def open_for_reading(path, what):
    """The h5py File at `path`, open for reading; errors name the file and
    `what` it was to be read as (HDF5SnapshotError: not an HDF5 file)."""
    import h5py
    check_file(path, what)
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise HDF5SnapshotError(f"cannot read {what} '{os.fspath(path)}': not a readable HDF5 "
                                f"file ({err})") from None


def save_int(group, name, value):
    group.create_dataset(name, data=np.array([value], dtype=np.int32))


def load_int(group, name, source):
    if name not in group:
        raise HDF5SnapshotError(f"{source}: no dataset '{name}'")
    return int(np.asarray(group[name][()]).reshape(-1)[0])


def save_string(group, name, text):
    import h5py
    raw = text.encode() + b"\0"            # H5LTmake_dataset_string stores strlen + 1 bytes
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(raw))
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    dset = h5py.h5d.create(group.id, name.encode(), tid, h5py.h5s.create(h5py.h5s.SCALAR))
    dset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(raw, dtype=f"S{len(raw)}"))


def load_string(group, name):
    value = group[name][()]
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0]
    if isinstance(value, bytes):
        value = value.split(b"\0", 1)[0].decode()
    return str(value)


def save_blob(group, name, array):
    group.create_dataset(name, data=np.ascontiguousarray(array, dtype=np.float32))


def load_blob(group, name, shape, source):
    """Dataset `name` as a float32 array, which must have `shape` (Caffe
    loads snapshots without reshaping: dimensions must match)."""
    dset = group[name]
    if dset.dtype.kind not in "fiu":
        raise HDF5SnapshotError(f"{source}: dataset '{dset.name}' has type {dset.dtype}, "
                                "expected floats")
    if tuple(dset.shape) != tuple(shape):
        raise HDF5SnapshotError(f"{source}: cannot load dataset '{dset.name}': dimensions "
                                f"don't match; file has {tuple(dset.shape)}, expected "
                                f"{tuple(shape)}")
    return np.asarray(dset[()], dtype=np.float32)


# ---------------------------------------------------------------------------
# Net weights (.caffemodel.h5)
# ---------------------------------------------------------------------------
def _param_owners(net):
    """For each layer, whether each of its parameter blobs owns itself
    (is not a later user of a `param { name }` shared blob)."""
    seen, owners = set(), []
    for layer, lp in zip(net.layers, net.param.layer):
        flags = []
        for pi in range(len(layer.blobs)):
            name = lp.param[pi].name if pi < len(lp.param) else ""
            flags.append(not name or name not in seen)
            if name:
                seen.add(name)
        owners.append(flags)
    return owners


def write_net(net, path, write_diff=False):
    """Net::ToHDF5: every layer gets a group; shared parameters are written
    by their owner only, diffs (with `write_diff`) by every user."""
    with create(path) as f:
        data = f.create_group("data")
        diff = f.create_group("diff") if write_diff else None
        for layer, owns in zip(net.layers, _param_owners(net)):
            layer_data = data.create_group(layer.name)
            layer_diff = diff.create_group(layer.name) if write_diff else None
            for i, (blob, owner) in enumerate(zip(layer.blobs, owns)):
                if owner:
                    save_blob(layer_data, str(i), blob.data)
                if write_diff:
                    save_blob(layer_diff, str(i), blob.diff)


def copy_into_net(net, path):
    """Net::CopyTrainedLayersFromHDF5: layers matched by name, unknown
    layers ignored, a missing dataset allowed only for a shared param.
    Returns (names of the net's layers filled, file layers the net lacks)."""
    with open_for_reading(path, "HDF5 weights") as f:
        if "data" not in f:
            raise HDF5SnapshotError(f"{path}: no 'data' group (not a Caffe HDF5 model)")
        data = f["data"]
        names = {layer.name for layer in net.layers}
        ignored = [name for name in data if name not in names]
        filled = []
        for layer, owns in zip(net.layers, _param_owners(net)):
            if layer.name not in data:
                continue
            group = data[layer.name]
            if len(group) > len(layer.blobs):
                raise HDF5SnapshotError(f"{path}: incompatible number of blobs for layer "
                                        f"'{layer.name}': file has {len(group)}, the net "
                                        f"{len(layer.blobs)}")
            for i, (blob, owner) in enumerate(zip(layer.blobs, owns)):
                if str(i) not in group:
                    if owner:
                        raise HDF5SnapshotError(f"{path}: layer '{layer.name}' has no param "
                                                f"{i} in the file")
                    continue
                blob.data[...] = load_blob(group, str(i), blob.shape, path)
            if layer.blobs and len(group):
                filled.append(layer.name)
    return filled, ignored
