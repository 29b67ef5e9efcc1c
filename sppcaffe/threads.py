"""Matrix products on several cores that stay fast when the cores are shared,
and whose results do not depend on how many threads computed them.

OpenBLAS's own threads are fast on an idle machine and collapse on a busy
one: its threads wait for each other at every step of a product, so when
another process takes one core away, a product on two threads can run 30x
slower than on one (a 50x4096 by 4096x500 product: 1.2 GFLOP/s on 2 threads
against 35 on 1).  Its results also depend on the thread count (it blocks
the sum over K differently), so choosing threads by load would make
training results depend on the load.

So the products here run OpenBLAS on one thread and split the work
themselves, in column (or row) blocks fixed by the shape alone: every block
is an independent one-thread product, and the result is the same bits
whether one thread computes all blocks or several share them.  Threads
take blocks from a shared counter, so a thread that the scheduler pauses
delays only the block it holds.  How many threads to use is then a pure
speed question, answered per product shape by timing both ways (`Chooser`):
all threads on an idle machine, the calling thread alone when a competing
process makes the hand-offs cost more than they bring.

The thread limit is the BLAS library's (threadpoolctl's `threadpool_limits`,
OPENBLAS_NUM_THREADS, train_net --threads, the MPI ranks' share of the
cores): read when a product starts, and put back when it ends.
"""
import collections
import functools
import itertools
import os
import queue
import threading
import time

import numpy as np

from .backends import native
from .im2col import add_matmul as _add_through_scratch, as_task, in_task

# A block is at least this many multiply-adds (smaller ones cost more to
# hand over than to compute) and at least MIN_BLOCK_WIDTH columns or rows
# (OpenBLAS computes one-row products by another routine, in another
# order).  Every block packs the whole of the other operand again, so there
# are few: at most two per core, 4 to 16 (the count depends on the machine's
# cores, never on the threads a product gets).
MIN_BLOCK_MACS = 4_000_000
# BLAS libraries compute products this small on one thread whatever their
# setting (OpenBLAS below 4 x 65536 multiply-adds): no thread count to set.
SINGLE_THREAD_MACS = 65536
MIN_BLOCK_WIDTH = 16
MAX_BLOCKS = min(16, max(4, 2 * (os.cpu_count() or 1)))


# ---------------------------------------------------------------------------
# The BLAS library's thread count
# ---------------------------------------------------------------------------
class _BlasThreads:
    """Get and set the thread count of the BLAS libraries NumPy loaded
    (threadpoolctl finds them: OpenBLAS, MKL, BLIS).  OpenBLAS's own
    functions are called directly: a product changes the count twice, and
    threadpoolctl lets only the first thread that set it set it again."""

    def __init__(self):
        from threadpoolctl import ThreadpoolController
        self.getters, self.setters = [], []
        self.controllers = ThreadpoolController().select(user_api="blas").lib_controllers
        for lib in _numpy_blas(self.controllers):
            functions = _openblas_functions(lib)
            if functions is None:
                functions = lib.get_num_threads, lib.set_num_threads
            self.getters.append(functions[0])
            self.setters.append(functions[1])
        self.controls = bool(self.getters)

    def get(self):
        return max((get() or 1 for get in self.getters), default=1)

    def set(self, count):
        for set_threads in self.setters:
            set_threads(count)


def _numpy_blas(libs):
    """The BLAS libraries NumPy's wheel ships (OpenCV's wheel brings an
    OpenBLAS of its own, which NumPy never calls); all of them when none is
    NumPy's (a NumPy built against the system's BLAS)."""
    # site-packages/numpy.libs (Linux, Windows) or site-packages/numpy/.dylibs (macOS)
    numpy_folder = os.path.dirname(np.__file__)
    own = [lib for lib in libs if lib.filepath and lib.filepath.startswith(numpy_folder)]
    return own or libs


def _openblas_functions(lib):
    """(get, set) of an OpenBLAS with its own threads (not OpenMP's, whose
    count is per calling thread), by its exported names, or None."""
    if getattr(lib, "internal_api", None) != "openblas" or \
            getattr(lib, "threading_layer", None) == "openmp":
        return None
    dynlib = getattr(lib, "dynlib", None)
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_", "_64"):
            get = getattr(dynlib, f"{prefix}openblas_get_num_threads{suffix}", None)
            set_threads = getattr(dynlib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and set_threads is not None:
                return get, set_threads
    return None


_blas = None


def _blas_threads():
    global _blas
    if _blas is None:
        _blas = _BlasThreads()
    return _blas


def blas_thread_limit():
    """The thread count the BLAS library is set to use (the limit here)."""
    return _blas_threads().get()


# ---------------------------------------------------------------------------
# Blocks of a product: fixed by the shape
# ---------------------------------------------------------------------------
def block_bounds(rows, inner, cols):
    """How (rows x inner) @ (inner x cols) is cut: (axis, bounds), axis 1
    for column blocks, 0 for row blocks, or (None, None) for one block.
    Depends on the shape alone, so the result never depends on threads."""
    macs = rows * inner * cols
    axis, extent = (1, cols) if cols >= rows else (0, rows)
    blocks = min(MAX_BLOCKS, macs // MIN_BLOCK_MACS, extent // MIN_BLOCK_WIDTH)
    if blocks < 2:
        return None, None
    # Block edges on multiples of 16 keep OpenBLAS's kernels on full panels;
    # a short remainder joins the last block.
    step = -(-extent // blocks)
    step = -(-step // 16) * 16
    bounds = list(range(0, extent, step))
    if extent - bounds[-1] < MIN_BLOCK_WIDTH:
        bounds.pop()
    if len(bounds) < 2:
        return None, None
    return axis, bounds + [extent]


# ---------------------------------------------------------------------------
# Worker threads
# ---------------------------------------------------------------------------
class _Job:
    """Tasks that the calling thread and the helpers take by index."""

    def __init__(self, tasks):
        self.tasks = tasks
        self.indices = itertools.count()            # next() is atomic under the GIL
        self.lock = threading.Lock()
        self.left = len(tasks)
        self.finished = threading.Event()
        self.error = None

    def work(self):
        for i in self.indices:
            if i >= len(self.tasks):
                return
            try:
                self.tasks[i]()
            except BaseException as err:            # re-raised by the caller
                self.error = err
            with self.lock:
                self.left -= 1
                if self.left == 0:
                    self.finished.set()


class _Pool:
    """Helper threads that sleep (not spin) between jobs."""

    def __init__(self):
        self.pid = os.getpid()
        self.queues = []

    def grow(self, helpers):
        while len(self.queues) < helpers:
            jobs = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(jobs,), daemon=True,
                             name=f"sppcaffe-gemm-{len(self.queues)}").start()
            self.queues.append(jobs)

    @staticmethod
    def _serve(jobs):
        while True:
            jobs.get().work()

    def run(self, tasks, threads):
        """Run `tasks` on the calling thread and threads - 1 helpers."""
        self.grow(threads - 1)
        job = _Job(tasks)
        for jobs in self.queues[:threads - 1]:
            jobs.put(job)
        job.work()
        job.finished.wait()
        if job.error is not None:
            raise job.error


_pool = None


def _the_pool():
    # A pool inherited through fork() has no threads: make a new one.
    global _pool
    if _pool is None or _pool.pid != os.getpid():
        _pool = _Pool()
    return _pool


class _OneBlasThread:
    """Inside: the BLAS library on one thread; the limit it had is kept in
    `limit` and put back when the last product running (in any thread)
    ends."""

    def __init__(self):
        self.lock = threading.Lock()
        self.depth = 0
        self.limit = 1

    def __enter__(self):
        blas = _blas_threads()
        with self.lock:
            if self.depth == 0:
                self.limit = blas.get() if blas.controls else 1
                if self.limit != 1:
                    blas.set(1)
            self.depth += 1
            return self.limit

    def __exit__(self, *exc):
        with self.lock:
            self.depth -= 1
            if self.depth == 0 and self.limit != 1:
                _blas_threads().set(self.limit)


_one_blas_thread = _OneBlasThread()


# ---------------------------------------------------------------------------
# Choosing the thread count by measured time
# ---------------------------------------------------------------------------
class Chooser:
    """Per product shape, whether several threads beat one, by timing both.

    A shape is timed `trials` times each way after a warm-up call; then the
    faster way runs.  Each way is judged by the best of its last `window`
    times, so that one disturbed product (a helper thread woken from a long
    sleep, a core busy for a moment) does not move a shape to the slower
    way.  When the way taken gets slower than the other way's figure
    (another process took a core), the other way runs next.  The way not
    taken is tried again from time to time, `window` products in a row (the
    first after a long pause is slow: helpers wake up, caches refill), less
    and less often while it keeps losing (`backoff` seconds, doubling up to
    `max_backoff`), so a busy machine pays for few failed tries and an idle
    one gets its threads back within seconds.  The tries share one clock
    over all shapes: a busy machine is busy for all of them."""

    trials = 2
    window = 3
    min_backoff, max_backoff = 0.05, 4.0
    # A try wins only when clearly faster: ways about as fast as each other
    # would otherwise keep resetting the backoff by chance.
    win_margin = 0.9

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.shapes = {}
        self.next_try = 0.0
        self.backoff = self.min_backoff

    def choose(self, key, threads):
        """(threads to use, whether this call tries the way not taken)."""
        state = self.shapes.get(key)
        if state is None:
            state = self.shapes[key] = _ShapeState(self.window)
        calls = state.calls
        if calls == 0:
            return threads, False                    # warm-up: first-touch costs
        if calls <= 2 * self.trials:
            return (1 if calls % 2 else threads), False
        if state.trying == 0 and self.clock() >= self.next_try:
            state.trying = self.window
            self.next_try = self.clock() + self.backoff      # one shape tries at a time
        if state.trying:
            return (threads if state.use_one else 1), True
        return (1 if state.use_one else threads), False

    def record(self, key, used_one, seconds, tried):
        state = self.shapes[key]
        state.calls += 1
        if state.calls == 1:
            return
        state.times[used_one].append(seconds)
        if state.calls <= 2 * self.trials + 1:               # the timed trials
            if state.calls == 2 * self.trials + 1:
                state.use_one = state.best(True) <= state.best(False)
                self.next_try = max(self.next_try, self.clock() + self.backoff)
            return
        if tried:
            state.trying -= 1
            if state.trying:
                return
            if state.best(used_one) < self.win_margin * state.best(not used_one):
                state.use_one = used_one
                self.backoff = self.min_backoff
            else:
                self.backoff = min(2 * self.backoff, self.max_backoff)
            self.next_try = self.clock() + self.backoff
            return
        if state.best(used_one) > state.best(not used_one):
            state.use_one = not used_one


class _ShapeState:
    __slots__ = ("calls", "times", "use_one", "trying")

    def __init__(self, window):
        self.calls = 0
        self.times = {True: collections.deque(maxlen=window),     # used one thread? -> s
                      False: collections.deque(maxlen=window)}
        self.use_one = False
        self.trying = 0                 # products left in the current try

    def best(self, used_one):
        return min(self.times[used_one])


_chooser = Chooser()


# ---------------------------------------------------------------------------
# The products
# ---------------------------------------------------------------------------
def matmul(a, b, out, accumulate=False):
    """out = a @ b (or out += a @ b with `accumulate`) for 2-d float32
    arrays, on up to the BLAS thread limit's threads; the bits do not depend
    on the thread count.  `out` may be a strided view (unit column stride)."""
    rows, inner = a.shape
    cols = b.shape[1]
    if rows * inner * cols <= SINGLE_THREAD_MACS or in_task():
        _product(a, b, out, accumulate)
        return out
    axis, bounds = block_bounds(rows, inner, cols)
    with _one_blas_thread as limit:
        if axis is None:
            _product(a, b, out, accumulate)
            return out
        pieces = zip(bounds[:-1], bounds[1:])
        if axis == 1:
            tasks = [_task(a, b[:, lo:hi], out[:, lo:hi], accumulate) for lo, hi in pieces]
        else:
            tasks = [_task(a[lo:hi], b, out[lo:hi], accumulate) for lo, hi in pieces]
        _run_blocks((rows, inner, cols, a.strides, b.strides, accumulate), tasks, limit)
    return out


def matmul_stack(a, b, out, then=None):
    """out[i] = a @ b[i] (a 2-d `a`) or a[i] @ b[i] (a stack `a`) for stacks
    b (N, K, P) and out (N, M, P) of 2-d float32 matrices (any strides BLAS
    takes): one product per image, written where it belongs.  Split over the
    stack in blocks fixed by the shape, as matmul; for convolutions with few
    column rows, where one wide product plus the transposes around it cost
    2-3x more.  `then(lo, hi)`, if given, runs after the products of images
    lo..hi on the same thread, while they are in its cache (a bias add)."""
    n = b.shape[0]
    rows, inner = a.shape[-2:]
    blocks = min(MAX_BLOCKS, n, rows * inner * b.shape[2] * n // MIN_BLOCK_MACS)
    with _one_blas_thread as limit:
        if blocks < 2 or in_task():
            _stack_block(a, b, out, then, 0, n)
            return out
        bounds = [n * k // blocks for k in range(blocks + 1)]
        tasks = [functools.partial(_stack_block, a, b, out, then, lo, hi)
                 for lo, hi in zip(bounds, bounds[1:])]
        _run_blocks(("stack",) + a.shape + a.strides + b.shape + b.strides, tasks, limit)
    return out


def _stack_block(a, b, out, then, lo, hi):
    np.matmul(a if a.ndim == 2 else a[lo:hi], b[lo:hi], out=out[lo:hi])
    if then is not None:
        then(lo, hi)


def run_tasks(key, tasks):
    """Run independent `tasks` on the chooser's thread count for `key`,
    each whole on one thread (with BLAS on one thread): for jobs that
    parallelize better as a whole than product by product, such as a
    convolution's chunks of images, each im2col, product and bias add
    while its columns are in the core's cache."""
    if in_task():                   # a task's own tasks stay on its thread
        for task in tasks:
            task()
        return
    with _one_blas_thread as limit:
        _run_blocks(key, [as_task(task) for task in tasks], limit)


def _run_blocks(key, tasks, limit):
    """Run independent `tasks` on the chooser's thread count for `key`."""
    threads = min(limit, len(tasks))
    if threads < 2:
        for task in tasks:
            task()
        return
    chosen, tried = _chooser.choose(key, threads)
    start = time.perf_counter()
    if chosen == 1:
        for task in tasks:
            task()
    else:
        _the_pool().run(tasks, chosen)
    _chooser.record(key, chosen == 1, time.perf_counter() - start, tried)


def add_matmul(a, b, out):
    """out += a @ b (see matmul)."""
    return matmul(a, b, out, accumulate=True)


def _task(a, b, out, accumulate):
    return lambda: _product(a, b, out, accumulate)


def _product(a, b, out, accumulate):
    if accumulate:
        # Both in-place ways below write `out` by rows: one with unit row
        # stride (a transposed weight gradient) is the same sum transposed.
        rows_first = (b.T, a.T, out.T) if out.strides[1] != 4 and out.strides[0] == 4 \
            else (a, b, out)
        if rows_first[0].shape[1] == 1 and native.add_outer(*rows_first):
            return                          # batch 1's weight gradient: one pass
        if _blas_accumulate(*rows_first):
            return
    if accumulate:
        _add_through_scratch(a, b, out)     # no temporary as large as the weights
    else:
        np.matmul(a, b, out=out)


# ---------------------------------------------------------------------------
# out += a @ b in the BLAS call itself (beta = 1)
# ---------------------------------------------------------------------------
# NumPy's matmul has no beta, so an accumulating product otherwise goes
# through a scratch block and a second pass over `out` (fc6's weight
# gradient at batch 8: 19.6 -> 11.8 ms this way).  OpenBLAS adds the sum of
# each block of the inner dimension (hundreds of terms) to C: for inner
# sizes up to one block the bits are those of the scratch way, beyond it the
# sum is added in parts (the same parts every time).
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_sgemm = None


def _find_sgemm():
    """cblas_sgemm of NumPy's BLAS, or False.  Only the 64-bit-integer names
    (NumPy's wheels ship such an OpenBLAS): a plain `cblas_sgemm` may take
    32- or 64-bit integers, which the library does not say."""
    import ctypes
    for lib in _numpy_blas(_blas_threads().controllers):
        for name in ("scipy_cblas_sgemm64_", "cblas_sgemm64_"):
            function = getattr(getattr(lib, "dynlib", None), name, None)
            if function is None:
                continue
            i64 = ctypes.c_int64
            function.argtypes = [ctypes.c_int] * 3 + [i64] * 3 + [
                ctypes.c_float, ctypes.c_void_p, i64, ctypes.c_void_p, i64,
                ctypes.c_float, ctypes.c_void_p, i64]
            function.restype = None
            return function
    return False


def _operand(m):
    """(transpose flag, leading dimension) of a 2-d float32 view as BLAS
    takes it in row-major order, or None."""
    rows, cols = m.shape
    s0, s1 = m.strides
    if (s1 == 4 or cols == 1) and s0 % 4 == 0 and (rows == 1 or s0 // 4 >= cols):
        return _NO_TRANS, max(1, cols, s0 // 4 if rows > 1 else 0)
    if (s0 == 4 or rows == 1) and s1 % 4 == 0 and (cols == 1 or s1 // 4 >= rows):
        return _TRANS, max(1, rows, s1 // 4 if cols > 1 else 0)
    return None


def _blas_accumulate(a, b, out):
    global _sgemm
    if _sgemm is None:
        _sgemm = _find_sgemm()
    if not _sgemm or not (a.dtype == b.dtype == out.dtype == np.float32):
        return False
    left, right, target = _operand(a), _operand(b), _operand(out)
    if left is None or right is None or target is None or target[0] != _NO_TRANS:
        return False
    rows, inner = a.shape
    _sgemm(_ROW_MAJOR, left[0], right[0], rows, out.shape[1], inner, 1.0, a.ctypes.data,
           left[1], b.ctypes.data, right[1], 1.0, out.ctypes.data, target[1])
    return True
