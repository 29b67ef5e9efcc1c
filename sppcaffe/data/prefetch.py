"""Background batch preparation (Caffe's BasePrefetchingDataLayer).

A daemon thread calls the reader's `next_batch()` and keeps up to `depth`
ready batches in a queue (Caffe's PREFETCH_COUNT, `data_param.prefetch`,
default 4); the layer's forward only takes the next one.  The reader is
deterministic on its own (its random draws come from a generator seeded
at layer setup), and batches are taken in the order they were made, so a
prefetched run equals a synchronous one (`prefetch: 0`).

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
            item = reader.next_batch()
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

    def close(self):
        self._reader.close()


class Prefetcher:
    def __init__(self, reader, depth, name="prefetch"):
        if depth < 1:
            raise ValueError(f"prefetch depth must be at least 1, got {depth}")
        self.name = name
        self._reader = reader
        self._ready = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error = None
        self._closed = False
        self._thread = threading.Thread(target=_fill, args=(reader, self._ready, self._stop),
                                        name=f"sppcaffe-prefetch-{name}", daemon=True)
        self._thread.start()

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
        return item

    def close(self):
        """Stop the thread, then close the reader (only once the thread is
        gone: the reader must never be closed under it)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        while True:                          # unblock a put() and drop ready batches
            try:
                self._ready.get_nowait()
            except queue.Empty:
                break
        self._thread.join(_JOIN_TIMEOUT_S)
        if not self._thread.is_alive():
            self._reader.close()
