"""Key/value databases of serialized Datums, as Caffe's util/db_lmdb.cpp.

LMDB is the supported backend.  LevelDB has no maintained Python binding
among sppcaffe's dependencies, so asking for it (including through
DataParameter's default `backend: LEVELDB`) is an error that says so.

Readers open each database once per process and share the environment:
LMDB forbids opening the same environment twice in one process, and a
TRAIN and a TEST net may well read the same database.
"""
import os
import re
import shutil
import tempfile
import threading

import lmdb

from ..io.atomic import TEMP_SUFFIX, remove_stale_temps
from ..proto import caffe_pb2
from .errors import DataError

LMDB, LEVELDB = "lmdb", "leveldb"
_BACKEND_NAMES = {caffe_pb2.DataParameter.LMDB: LMDB, caffe_pb2.DataParameter.LEVELDB: LEVELDB}
# Caffe commits every 1000 records (convert_imageset, db_lmdb).
TRANSACTION_SIZE = 1000
_INITIAL_MAP_SIZE = 1 << 28    # doubled whenever a commit finds the map full


def backend_name(backend):
    """'lmdb' or 'leveldb' from a DataParameter.DB value or a tool's string."""
    if isinstance(backend, str):
        name = backend.lower()
        if name not in (LMDB, LEVELDB):
            raise DataError(f"unknown database backend '{backend}' (expected lmdb)")
        return name
    return _BACKEND_NAMES[backend]


def check_backend(backend, path):
    """Refuse backends other than LMDB, with a hint when `path` is an LMDB
    database read as LevelDB (DataParameter's default backend)."""
    if backend_name(backend) == LMDB:
        return
    hint = ""
    if os.path.isfile(os.path.join(os.fspath(path), "data.mdb")):
        hint = (f"; '{path}' is an LMDB database: set `backend: LMDB` in data_param "
                "(Caffe's default backend is LEVELDB)")
    raise DataError(f"cannot read '{path}': the LEVELDB backend is not supported, "
                    f"sppcaffe reads LMDB databases (convert with tools/convert_imageset "
                    f"--backend lmdb){hint}")


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------
_envs = {}                 # real path -> [Environment, number of users]
_envs_lock = threading.Lock()


def _acquire_env(path):
    path = os.fspath(path)
    if not os.path.isdir(path):
        what = "is not a directory" if os.path.exists(path) else "does not exist"
        raise DataError(f"cannot open LMDB database '{path}': it {what}")
    if not os.path.isfile(os.path.join(path, "data.mdb")):
        raise DataError(f"cannot open LMDB database '{path}': no data.mdb in it")
    key = os.path.realpath(path)
    with _envs_lock:
        entry = _envs.get(key)
        if entry is None:
            try:
                # lock=False: a read-only dataset needs no reader table, and the
                # directory may be read-only.
                env = lmdb.open(path, readonly=True, lock=False, readahead=True,
                                max_readers=512)
            except lmdb.Error as err:
                raise DataError(f"cannot open LMDB database '{path}': {err}") from None
            problem = _truncation(env, path)
            if problem:
                env.close()
                raise DataError(f"cannot open LMDB database '{path}': {problem}")
            entry = _envs[key] = [env, 0]
        entry[1] += 1
        return key, entry[0]


def _truncation(env, path):
    """What is missing from a data.mdb cut short (copied or downloaded in
    part), or None.  LMDB maps the file and would crash the process (SIGBUS)
    on the first page past its end; the meta page says how far they go."""
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = os.path.getsize(os.path.join(path, "data.mdb"))
    if size < needed:
        return f"data.mdb is truncated: {size} bytes, its pages reach {needed}"
    return None


def _release_env(key):
    with _envs_lock:
        entry = _envs.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _envs[key]
            entry[0].close()


class DatumReader:
    """Records of a database read in key order, for ever: after the last
    record the cursor goes back to the first (Caffe's "Restarting data
    prefetching from start") and `epoch` counts the completed passes.

    One reader is used by one thread at a time (the layer's prefetch
    thread once it runs)."""

    def __init__(self, path, backend=LMDB):
        self.path = os.fspath(path)
        check_backend(backend, self.path)
        self._key, env = _acquire_env(self.path)
        try:
            self.size = env.stat()["entries"]
            if self.size == 0:
                raise DataError(f"LMDB database '{self.path}' is empty")
            self._txn = env.begin(buffers=False)
            self._cursor = self._txn.cursor()
            self._cursor.first()
        except BaseException:
            _release_env(self._key)
            raise
        self.epoch = 0

    def peek(self):
        """(key, value) of the next record, without moving on."""
        return self._cursor.key(), self._cursor.value()

    def next(self):
        """(key, value) of the next record, then move on (cycling)."""
        record = self.peek()
        if not self._cursor.next():
            self._cursor.first()
            self.epoch += 1
        return record

    def next_records(self, count):
        """[(key, value)] of the next `count` records, as `count` calls of
        next() (cycling) with fewer Python calls per record."""
        cursor, records = self._cursor, []
        item, step = cursor.item, cursor.next
        for _ in range(count):
            records.append(item())
            if not step():
                cursor.first()
                self.epoch += 1
        return records

    def skip(self, count):
        for _ in range(count):
            self.next()

    def contains(self, key):
        return self._txn.get(key) is not None

    def seek(self, key, epoch):
        """Make `key` (a key of the database) the next record and `epoch`
        the pass count, as the reader stood when peek() gave that key."""
        if not self._cursor.set_key(key):
            raise DataError(f"LMDB database '{self.path}' has no key {key!r}")
        self.epoch = epoch

    def close(self):
        if self._cursor is None:
            return
        self._cursor.close()
        self._txn.abort()
        self._cursor = self._txn = None
        _release_env(self._key)


def iterate_db(path, backend=LMDB):
    """Every (key, value) of a database once, in key order."""
    path = os.fspath(path)
    check_backend(backend, path)
    key, env = _acquire_env(path)
    try:
        with env.begin(buffers=False) as txn:
            yield from txn.cursor()
    finally:
        _release_env(key)


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------
class LMDBWriter:
    """A new LMDB database written in transactions (Caffe's db::NEW mode).

    The records go to a temporary directory beside `path` that is renamed
    into place by `close()`; an interrupted conversion leaves no database
    behind (and no half-written one under the final name).  Use as a
    context manager: leaving it by an exception removes the temporary
    directory."""

    def __init__(self, path):
        self.path = os.fspath(path).rstrip(os.sep) or os.sep
        if os.path.exists(self.path):
            raise DataError(f"cannot create database '{self.path}': it already exists "
                            "(remove it or choose another name)")
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise DataError(f"cannot create database '{self.path}': no directory '{parent}'")
        name = os.path.basename(self.path)
        remove_stale_temps(parent, re.escape(name), directories=True)    # a killed conversion's
        self._tmp = tempfile.mkdtemp(prefix=name + ".", suffix=TEMP_SUFFIX, dir=parent)
        self._env = lmdb.open(self._tmp, map_size=_INITIAL_MAP_SIZE, subdir=True)
        self._pending = []
        self.count = 0

    def put(self, key, value):
        """Queue one record; it is written by the next `commit()`."""
        self._pending.append((key.encode() if isinstance(key, str) else key, value))

    def commit(self):
        """Write the queued records in one transaction, growing the map
        (as Caffe's LMDBTransaction::Commit) when it is full."""
        while self._pending:
            try:
                with self._env.begin(write=True) as txn:
                    for key, value in self._pending:
                        txn.put(key, value)
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)
                continue
            self.count += len(self._pending)
            self._pending = []

    def close(self):
        """Commit what is left and move the database into place."""
        self.commit()
        self._env.sync(True)
        self._env.close()
        os.rename(self._tmp, self.path)

    def abort(self):
        self._env.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False
