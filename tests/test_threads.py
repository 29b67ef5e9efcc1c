"""sppcaffe/threads.py: matrix products split over threads in blocks fixed by
the shape (the same bits on any number of threads), the BLAS limit read and
put back, and the per-shape choice of threads by measured time."""
import itertools
import threading
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from sppcaffe import threads

RNG = np.random.default_rng(0)


def operands(rows, inner, cols, transposed_a=False, transposed_b=False):
    a = RNG.standard_normal((inner, rows) if transposed_a else (rows, inner), dtype=np.float32)
    b = RNG.standard_normal((cols, inner) if transposed_b else (inner, cols), dtype=np.float32)
    return (a.T if transposed_a else a), (b.T if transposed_b else b)


# Shapes of LeNet's and ZF-5's products (conv forward, weight and data
# gradients, fc layers), and a few awkward ones.
SHAPES = [(50, 500, 4096), (50, 4096, 500), (20, 25, 36864), (500, 64, 800), (96, 147, 6050),
          (1, 9216, 2048), (1024, 1, 4608), (37, 1001, 333), (20, 20000, 33)]


@pytest.mark.parametrize("rows, inner, cols", SHAPES)
def test_same_bits_on_any_number_of_threads(rows, inner, cols):
    a, b = operands(rows, inner, cols)
    results = []
    for limit in (1, 2, 3):
        with threadpool_limits(limit, user_api="blas"):
            for _ in range(6):          # past the chooser's trials: both ways run
                out = np.full((rows, cols), np.nan, np.float32)
                results.append(threads.matmul(a, b, out).copy())
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    np.testing.assert_allclose(results[0], a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("transposed_a, transposed_b", [(True, False), (False, True),
                                                        (True, True)])
def test_transposed_operands_and_strided_output(transposed_a, transposed_b):
    a, b = operands(48, 300, 2000, transposed_a, transposed_b)
    wide = np.zeros((48, 2100), np.float32)
    out = wide[:, 50:2050]                      # a column slice: strided rows
    with threadpool_limits(2, user_api="blas"):
        threads.matmul(a, b, out)
    np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)
    assert not wide[:, :50].any() and not wide[:, 2050:].any()


def test_accumulates():
    a, b = operands(50, 4096, 500)
    start = RNG.standard_normal((50, 500), dtype=np.float32)
    out = start.copy()
    threads.add_matmul(a, b, out)
    np.testing.assert_allclose(out, start + a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)


def test_blocks_depend_on_the_shape_only():
    axis, bounds = threads.block_bounds(50, 500, 4096)
    assert axis == 1 and bounds[0] == 0 and bounds[-1] == 4096
    assert len(bounds) - 1 <= threads.MAX_BLOCKS
    assert all(b % 16 == 0 for b in bounds[:-1])        # OpenBLAS panels stay whole
    assert threads.block_bounds(4096, 500, 50)[0] == 0  # taller than wide: row blocks
    assert threads.block_bounds(10, 10, 10) == (None, None)
    # Never a one-row (or one-column) block: BLAS sums those in another order.
    for shape in [(20, 100000, 40), (20, 100000, 33), (7, 3_000_000, 200)]:
        axis, bounds = threads.block_bounds(*shape)
        assert axis is None or min(np.diff(bounds)) >= threads.MIN_BLOCK_WIDTH


def test_the_blas_limit_is_put_back():
    a, b = operands(64, 800, 2000)
    out = np.empty((64, 2000), np.float32)
    with threadpool_limits(2, user_api="blas"):
        threads.matmul(a, b, out)
        assert threads.blas_thread_limit() == 2
    with threadpool_limits(1, user_api="blas"):
        threads.matmul(a, b, out)
        assert threads.blas_thread_limit() == 1


def test_products_from_several_threads_at_once():
    a, b = operands(64, 800, 2000)
    expected = threads.matmul(a, b, np.empty((64, 2000), np.float32)).copy()
    outs = [np.empty((64, 2000), np.float32) for _ in range(4)]
    with threadpool_limits(2, user_api="blas"):
        workers = [threading.Thread(target=lambda o=o: [threads.matmul(a, b, o)
                                                        for _ in range(5)]) for o in outs]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert threads.blas_thread_limit() == 2
    for out in outs:
        np.testing.assert_array_equal(out, expected)


def test_an_error_in_a_block_reaches_the_caller():
    pool = threads._the_pool()

    def fails():
        raise ValueError("block failed")
    with pytest.raises(ValueError, match="block failed"):
        pool.run([lambda: None, fails, lambda: None], 2)


# ---------------------------------------------------------------------------
# The chooser, on a clock the test moves
# ---------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def call(chooser, key, times, threads_=2):
    """One product: the chooser's choice, timed by `times` (threads -> s)."""
    chosen, tried = chooser.choose(key, threads_)
    chooser.record(key, chosen == 1, times[chosen], tried)
    return chosen, tried


def settle(chooser, key, times):
    for _ in range(1 + 2 * chooser.trials):          # warm-up and the timed trials
        call(chooser, key, times)


def test_chooser_takes_the_faster_way_after_timing_both():
    clock = Clock()
    chooser = threads.Chooser(clock)
    settle(chooser, "quiet", {1: 2.0e-3, 2: 1.1e-3})
    assert call(chooser, "quiet", {1: 2.0e-3, 2: 1.1e-3}) == (2, False)
    settle(chooser, "small", {1: 1.0e-4, 2: 3.0e-4})
    assert call(chooser, "small", {1: 1.0e-4, 2: 3.0e-4}) == (1, False)


def test_chooser_leaves_threads_that_collapse_and_comes_back():
    clock = Clock()
    chooser = threads.Chooser(clock)
    quiet = {1: 2.0e-3, 2: 1.1e-3}
    busy = {1: 3.0e-3, 2: 40e-3}                # a competing process: threads wait on each other
    settle(chooser, "k", quiet)
    for _ in range(chooser.window):              # the slow products fill the window...
        assert call(chooser, "k", busy) == (2, False)
    assert call(chooser, "k", busy) == (1, False)       # ...and the next runs alone
    # While busy, tries of two threads come less and less often, each a few
    # products in a row.
    tries, run = [], 0
    for step in range(400):
        clock.now += 0.01
        chosen, tried = call(chooser, "k", busy)
        if tried:
            assert chosen == 2
            if run == 0:
                tries.append(clock.now)
            run += 1
        else:
            assert chosen == 1
            assert run in (0, chooser.window)
            run = 0
    gaps = np.diff(tries)
    assert len(tries) >= 3 and all(g2 >= g1 for g1, g2 in zip(gaps, gaps[1:]))
    assert gaps[-1] > 0.5
    # Quiet again: the next try wins and two threads stay.
    clock.now += chooser.max_backoff
    for _ in range(chooser.window):
        assert call(chooser, "k", quiet) == (2, True)
        clock.now += 0.001
    assert call(chooser, "k", quiet) == (2, False)


def test_one_slow_product_does_not_move_a_shape():
    """A helper woken from a long sleep makes one product slow: neither the
    way taken nor a try is judged by that one product."""
    clock = Clock()
    chooser = threads.Chooser(clock)
    quiet = {1: 2.0e-3, 2: 1.1e-3}
    settle(chooser, "k", quiet)
    assert call(chooser, "k", {1: 2.0e-3, 2: 9e-3}) == (2, False)    # one disturbed product
    assert call(chooser, "k", quiet) == (2, False)
    # A shape on one thread: the try's first product is slow, the rest fast.
    settle(chooser, "j", {1: 1.0e-3, 2: 4e-3})                         # one thread chosen
    clock.now += chooser.max_backoff
    assert call(chooser, "j", {1: 1.0e-3, 2: 4e-3}) == (2, True)
    for _ in range(chooser.window - 1):
        assert call(chooser, "j", {1: 1.0e-3, 2: 0.6e-3}) == (2, True)
    assert call(chooser, "j", {1: 1.0e-3, 2: 0.6e-3}) == (2, False)


def test_a_try_must_win_clearly():
    clock = Clock()
    chooser = threads.Chooser(clock)
    same = {1: 1.0e-3, 2: 0.97e-3}
    settle(chooser, "k", {1: 1.0e-3, 2: 1.2e-3})        # one thread chosen
    clock.now += 1.0
    for _ in range(chooser.window):
        assert call(chooser, "k", same) == (2, True)    # tried: only 3% faster
    assert call(chooser, "k", same)[0] == 1
    assert chooser.backoff > chooser.min_backoff


@pytest.mark.parametrize("inner, same_bits", [(64, True), (3000, False)])
def test_accumulating_products_in_the_blas_call(monkeypatch, inner, same_bits):
    """out += a @ b with beta = 1 in the BLAS call: the scratch way's bits
    while the inner dimension fits one BLAS block, its values beyond."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((inner, 300)).astype(np.float32).T       # a transposed view
    b = rng.standard_normal((inner, 200)).astype(np.float32)
    start = rng.standard_normal((300, 200)).astype(np.float32)
    direct = start.copy()
    assert threads._blas_accumulate(a, b, direct)
    monkeypatch.setattr(threads, "_sgemm", False)
    scratch = start.copy()
    threads.add_matmul(a, b, scratch)
    if same_bits:
        assert np.array_equal(direct, scratch)
    np.testing.assert_allclose(direct, scratch, rtol=1e-4, atol=1e-3)
    assert not np.array_equal(direct, start)


def test_tasks_run_whole_on_one_thread_each():
    """run_tasks: products inside a task are not split again (a helper
    waiting on helpers would deadlock), and give the same bits."""
    from sppcaffe.im2col import in_task
    rng = np.random.default_rng(8)
    a = rng.standard_normal((64, 300)).astype(np.float32)
    bs = [rng.standard_normal((300, 2000)).astype(np.float32) for _ in range(6)]
    outs = [np.empty((64, 2000), np.float32) for _ in bs]
    inside = []

    def task(k):
        inside.append(in_task())
        threads.matmul(a, bs[k], outs[k])
    with threadpool_limits(2):
        for _ in range(8):                       # past the chooser's trials: both ways run
            threads.run_tasks("test tasks", [lambda k=k: task(k) for k in range(6)])
    assert all(inside) and not in_task()
    # Tasks of tasks run on the thread of the task that made them, even with
    # a helper free to take them: the first outer task waits for the other.
    nested, started, other_done = [], itertools.count(), threading.Event()

    def outer():
        if next(started) == 1:
            other_done.set()
            return
        assert other_done.wait(5)
        me = threading.current_thread()

        def inner():
            time.sleep(0.05)                    # time for a free helper to take one
            nested.append(threading.current_thread() is me)
        threads.run_tasks("inner", [inner] * 3)
    with threadpool_limits(2):
        threads.run_tasks("outer", [outer, outer])          # the first call uses every thread
    assert nested == [True] * 3
    for b, out in zip(bs, outs):
        assert np.array_equal(out, threads.matmul(a, b, np.empty_like(out)))


def test_stacked_products_run_their_follow_up_on_each_block():
    """matmul_stack's `then(lo, hi)` (a convolution's bias add) runs once per
    block of images, after that block's products."""
    rng = np.random.default_rng(9)
    a = rng.standard_normal((20, 25)).astype(np.float32)
    b = rng.standard_normal((64, 25, 576)).astype(np.float32)
    out = np.empty((64, 20, 576), np.float32)
    seen = []

    def then(lo, hi):
        seen.append((lo, hi))
        out[lo:hi] += 1.0
    with threadpool_limits(2):
        threads.matmul_stack(a, b, out, then=then)
    assert sorted(seen)[0][0] == 0 and sorted(seen)[-1][1] == 64 and len(seen) > 1
    assert all(hi == lo2 for (_, hi), (lo2, _) in zip(sorted(seen), sorted(seen)[1:]))
    np.testing.assert_allclose(out, np.matmul(a, b) + 1.0, rtol=1e-5, atol=1e-5)
