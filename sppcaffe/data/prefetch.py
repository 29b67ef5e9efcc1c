"""Background batch preparation (Caffe's BasePrefetchingDataLayer).

A daemon thread calls the reader's `next_batch()` and keeps up to `depth`
ready batches in a queue (Caffe's PREFETCH_COUNT, `data_param.prefetch`,
default 4); the layer's forward only takes the next one.  The reader is
deterministic on its own (its random draws come from a generator seeded
at layer setup), and batches are taken in the order they were made, so a
prefetched run equals a synchronous one (`prefetch: 0`).

Position: the thread reads ahead, so the reader's own state is not where
the net stands.  Each batch therefore travels with the reader's state()
taken right after it was made; `position()` is the state after the last
batch handed out, i.e. where the next step's batch starts, which is what a
snapshot records.  `restore(state)` stops the thread, drops what it read
ahead, puts the reader there and starts it again.

Stopping: `close()` stops the thread and then closes the reader.  The
thread holds the reader, never the layer, so a net that is garbage
collected is finalised (see layers/data.py), and finalisers also run at
interpreter exit.  An error raised while preparing a batch (an unreadable
image, say) is raised again by the forward that would have received it.
"""
import queue
import threading

_POLL_S = 0.1          # how often a blocked thread looks at the stop flag
_JOIN_TIMEOUT_S = 10.0


class _Failure:
    def __init__(self, error):
        self.error = error


def _fill(reader, ready, stop):
    """Thread body; takes no reference to the layer or the Prefetcher."""
    while not stop.is_set():
        try:
            item = (reader.next_batch(), reader.state())
        except BaseException as err:       # noqa: B902 - handed to the consumer
            item = _Failure(err)
        while not stop.is_set():
            try:
                ready.put(item, timeout=_POLL_S)
                break
            except queue.Full:
                pass
        if isinstance(item, _Failure):
            return


class SynchronousBatches:
    """The same interface without a thread: each `next()` prepares a batch."""

    def __init__(self, reader):
        self._reader = reader

    def next(self):
        return self._reader.next_batch()

    def position(self):
        return self._reader.state()

    def restore(self, state):
        self._reader.restore(state)

    def close(self):
        self._reader.close()


class Prefetcher:
    def __init__(self, reader, depth, name="prefetch"):
        if depth < 1:
            raise ValueError(f"prefetch depth must be at least 1, got {depth}")
        self.name = name
        self.depth = depth
        self._reader = reader
        self._closed = False
        self._position = reader.state()
        self._start()

    def _start(self):
        self._error = None
        self._ready = queue.Queue(maxsize=self.depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=_fill, args=(self._reader, self._ready, self._stop),
                                        name=f"sppcaffe-prefetch-{self.name}", daemon=True)
        self._thread.start()

    def _halt(self):
        """Stop the thread and drop the batches it made; True once it is gone."""
        self._stop.set()
        while True:                          # unblock a put() and drop ready batches
            try:
                self._ready.get_nowait()
            except queue.Empty:
                break
        self._thread.join(_JOIN_TIMEOUT_S)
        return not self._thread.is_alive()

    def next(self):
        """The next batch, waiting for it if the thread is behind."""
        if self._error is not None:
            raise self._error
        while True:
            if self._closed:
                raise RuntimeError(f"{self.name}: the data reader was closed")
            try:
                item = self._ready.get(timeout=_POLL_S * 5)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._ready.empty():
                    raise RuntimeError(f"{self.name}: the prefetch thread stopped") from None
        if isinstance(item, _Failure):
            self._error = item.error
            raise item.error
        batch, self._position = item
        return batch

    def position(self):
        """The reader's state where the next batch handed out starts."""
        return self._position

    def restore(self, state):
        """Continue from `state` (a reader state, e.g. a saved position()),
        dropping what the thread had read ahead.  The reader's
        ReaderStateMismatch leaves the position as it was."""
        if self._closed:
            raise RuntimeError(f"{self.name}: the data reader was closed")
        if not self._halt():
            raise RuntimeError(f"{self.name}: the prefetch thread did not stop within "
                               f"{_JOIN_TIMEOUT_S:g} s; cannot move its reader")
        try:
            self._reader.restore(state)
            self._position = state
        finally:
            if self._position is not state:
                self._reader.restore(self._position)   # what the thread had read ahead from
            self._start()

    def close(self):
        """Stop the thread, then close the reader (only once the thread is
        gone: the reader must never be closed under it)."""
        if self._closed:
            return
        self._closed = True
        if self._halt():
            self._reader.close()
