"""Batches of the HDF5Data layer (Caffe's hdf5_data_layer.cpp).

`source` is a text file listing .h5 files (whitespace separated, paths as
given, i.e. relative to the working directory as in Caffe).  Each file
holds one dataset per top, named like the top, all with the same number
of rows; a batch takes rows in order and runs on into the next file.
`shuffle` permutes the file order (again at every pass) and the rows of
every file.  Files are loaded whole, one at a time.
"""
import numpy as np

from ..io.files import path_problem, read_text_file
from .batch import Batch, BatchReader, ReaderStateMismatch
from .errors import DataError


class HDF5BatchReader(BatchReader):
    type = "HDF5Data"

    def __init__(self, param, phase, top_names):
        super().__init__(param.name, len(top_names))
        if param.HasField("transform_param"):
            raise self.error("HDF5Data does not transform data: remove transform_param")
        p = param.hdf5_data_param
        self.source, self.top_names = p.source, list(top_names)
        self.batch_size = int(p.batch_size)
        if self.batch_size <= 0:
            raise self.error("hdf5_data_param.batch_size must be positive")
        self.shuffle = bool(p.shuffle)
        try:
            self.files = read_text_file(self.source, "HDF5 file list", DataError).split()
        except (OSError, DataError) as err:
            raise self.error(str(err)) from None
        if not self.files:
            raise self.error(f"'{self.source}' lists no HDF5 files")
        self.file_order = np.arange(len(self.files))
        if self.shuffle:
            self.rng.shuffle(self.file_order)
        self.current_file, self.epoch = 0, 0
        self.item_shapes = None
        self._load(self.file_order[0])

    def _load(self, index):
        """Make file `index` the current one, its rows in a new order."""
        self.data = self._read(index)
        self.loaded = index
        self.row = 0
        self.row_order = np.arange(len(self.data[0]))
        if self.shuffle:
            self.rng.shuffle(self.row_order)

    def _read(self, index):
        """The arrays of file `index`, one per top, checked."""
        path = self.files[index]
        problem = path_problem(path)
        if problem:
            raise self.error(f"cannot open HDF5 file '{path}' (listed in '{self.source}'): "
                             f"{problem}")
        import h5py                 # imported when used: `import sppcaffe` stays light
        try:
            with h5py.File(path, "r") as f:
                missing = [name for name in self.top_names
                           if not isinstance(f.get(name), h5py.Dataset)]
                if missing:
                    raise self.error(f"HDF5 file '{path}' has no dataset named {missing} "
                                     f"(datasets: {sorted(f.keys())}); datasets are named "
                                     "by the layer's tops")
                not_numbers = [f"{name} ({f[name].dtype})" for name in self.top_names
                               if f[name].dtype.kind not in "biuf"]
                if not_numbers:
                    raise self.error(f"HDF5 file '{path}': datasets {not_numbers} do not hold "
                                     "numbers")
                arrays = [np.asarray(f[name], np.float32) for name in self.top_names]
        except OSError as err:
            raise self.error(f"cannot read HDF5 file '{path}': {err}") from None
        rows = {a.shape[0] if a.ndim else 0 for a in arrays}
        if len(rows) != 1 or 0 in rows:
            counts = ", ".join(f"{n}: {a.shape}" for n, a in zip(self.top_names, arrays))
            raise self.error(f"HDF5 file '{path}': the datasets need the same, non-zero, "
                             f"number of rows; got {counts}")
        shapes = [a.shape[1:] for a in arrays]
        if self.item_shapes is not None and shapes != self.item_shapes:
            raise self.error(f"HDF5 file '{path}' has rows of shapes {shapes}, the first file "
                             f"had {self.item_shapes}")
        self.item_shapes = shapes
        return arrays

    def _end_of_file(self):
        """Caffe's Next() past the last row: the next file, or the same one
        again (a new pass) when it is the only one."""
        if len(self.files) > 1:
            self.current_file += 1
            if self.current_file == len(self.files):
                self.current_file = 0
                self.epoch += 1
                if self.shuffle:
                    # New arrays: the old ones may be part of a saved state().
                    self.file_order = self.file_order.copy()
                    self.rng.shuffle(self.file_order)
            self._load(self.file_order[self.current_file])
        else:
            self.epoch += 1
            self.row = 0
            if self.shuffle:
                self.row_order = self.row_order.copy()
                self.rng.shuffle(self.row_order)

    def top_shapes(self):
        return [(self.batch_size,) + tuple(shape) for shape in self.item_shapes]

    def next_batch(self):
        epoch = self.epoch
        out = [np.empty(shape, np.float32) for shape in self.top_shapes()]
        filled = 0
        while filled < self.batch_size:
            take = min(self.batch_size - filled, len(self.row_order) - self.row)
            rows = self.row_order[self.row:self.row + take]
            for batch, data in zip(out, self.data):
                batch[filled:filled + take] = data[rows]
            filled += take
            self.row += take
            if self.row == len(self.row_order):
                self._end_of_file()
        return Batch(out, epoch, None)

    def skip(self, count):
        """Pass over `count` rows without copying them (other ranks' share
        under MPI, sppcaffe/parallel/sharding.py)."""
        while count > 0:
            take = min(count, len(self.row_order) - self.row)
            self.row += take
            count -= take
            if self.row == len(self.row_order):
                self._end_of_file()

    def cursor_state(self):
        return {"source": self.source, "files": len(self.files), "file_order": self.file_order,
                "current_file": self.current_file, "row_order": self.row_order,
                "row": self.row, "epoch": self.epoch}

    def check_cursor(self, state):
        try:
            file_order = np.asarray(state["file_order"], np.int64)
            row_order = np.asarray(state["row_order"], np.int64)
            current, row, epoch = (int(state[k]) for k in ("current_file", "row", "epoch"))
            files = int(state["files"])
        except (KeyError, TypeError, ValueError):
            raise ReaderStateMismatch("malformed HDF5Data state") from None
        if files != len(self.files):
            raise ReaderStateMismatch(f"the file list '{state.get('source')}' had {files} "
                                      f"files, '{self.source}' has {len(self.files)}")
        if (file_order.shape != (files,) or not 0 <= current < files or epoch < 0
                or not np.array_equal(np.sort(file_order), np.arange(files))):
            raise ReaderStateMismatch("malformed HDF5Data state (file order)")
        index = int(file_order[current])
        data = self.data if index == self.loaded else self._read(index)
        rows = len(data[0])
        if (row_order.shape != (rows,) or not 0 <= row < rows
                or not np.array_equal(np.sort(row_order), np.arange(rows))):
            raise ReaderStateMismatch(f"the saved row order does not fit the {rows} rows of "
                                      f"'{self.files[index]}'")

        def apply():
            self.data, self.loaded = data, index
            self.file_order, self.current_file = file_order, current
            self.row_order, self.row, self.epoch = row_order, row, epoch
        return apply
