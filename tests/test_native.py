"""native.c gives the NumPy code's bits: im2col, col2im and MAX pooling
with and without the compiled loops, over geometries with padding, strides,
dilation, partial windows, ties, -inf and NaN."""
import logging

import numpy as np
import pytest

from sppcaffe import im2col as im2col_module
from sppcaffe.backends import native, shared_objects
from sppcaffe.im2col import Geometry, col2im, column_shape, im2col
from sppcaffe.layers.pooling import max_pool_backward, max_pool_forward
from sppcaffe.spp_geometry import pooled_size

pytestmark = pytest.mark.skipif(native.library() is None, reason="no C compiler here")


def both(monkeypatch, run):
    """run() with the compiled loops, then with NumPy's."""
    compiled = run()
    monkeypatch.setenv("SPPCAFFE_NATIVE", "0")
    assert native.library() is None
    plain = run()
    monkeypatch.delenv("SPPCAFFE_NATIVE")
    return compiled, plain


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a.view(np.uint8), b.view(np.uint8))


def awkward(shape, seed):
    """Random values with repeats (ties), -0.0, -inf and a few NaN."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-4, 5, size=shape).astype(np.float32) * 0.5
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, size=max(1, flat.size // 50), replace=False)
    flat[picks[0::3]] = -np.inf
    flat[picks[1::3]] = np.nan
    flat[picks[2::3]] = -0.0
    return x


GEOMETRIES = [
    ((2, 3, 7, 6), Geometry((3, 3))),
    ((3, 2, 9, 8), Geometry((3, 2), pad=(1, 2), stride=(2, 1))),
    ((2, 4, 11, 10), Geometry((3, 3), pad=(2, 1), stride=(2, 3), dilation=(2, 1))),
    ((1, 1, 5, 5), Geometry((5, 5), pad=(4, 4))),
    ((64, 20, 12, 12), Geometry((5, 5))),
    ((5, 3, 4, 13), Geometry((1, 4), stride=(1, 4))),
    # stride-1 rows moved 8 and 4 cells at a time, then the tail, with and
    # without padding on both sides (LeNet's conv1: rows of 24 cells)
    ((2, 3, 15, 17), Geometry((3, 3), pad=(1, 2))),
    ((3, 1, 28, 28), Geometry((5, 5))),
    ((2, 2, 6, 30), Geometry((2, 3), pad=(0, 1), dilation=(1, 2))),
    ((2, 3, 11, 10), Geometry((3, 3), stride=(2, 1), dilation=(2, 1))),  # all inside, row stride 2
]


@pytest.mark.parametrize("shape, geom", GEOMETRIES)
def test_im2col_and_col2im_bits(monkeypatch, shape, geom):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    cols = np.random.default_rng(2).standard_normal(column_shape(shape, geom)).astype(np.float32)
    # The scratch buffers hold garbage first: every element must be written.
    compiled, plain = both(monkeypatch, lambda: (
        im2col(x, geom, np.full(column_shape(shape, geom), 7, np.float32)),
        col2im(cols, geom, np.full(shape, 7, np.float32))))
    same_bits(compiled[0], plain[0])
    same_bits(compiled[1], plain[1])


def test_units_split_over_threads_give_the_same_bits(monkeypatch):
    monkeypatch.setattr(im2col_module, "_MIN_PARALLEL_ELEMENTS", 1)
    shape, geom = GEOMETRIES[2]
    cols = np.random.default_rng(3).standard_normal(column_shape(shape, geom)).astype(np.float32)
    split = col2im(cols, geom, np.empty(shape, np.float32))
    monkeypatch.setattr(im2col_module, "_WORKERS", 1)
    same_bits(split, col2im(cols, geom, np.empty(shape, np.float32)))


POOLS = [   # input shape, kernel, stride, pad, ceil mode
    ((2, 3, 24, 24), (2, 2), (2, 2), (0, 0), True),
    ((2, 3, 9, 19), (2, 2), (2, 2), (0, 0), True),     # partial last row and column
    ((2, 3, 13, 13), (3, 3), (2, 2), (0, 0), True),
    ((2, 2, 13, 11), (3, 2), (2, 3), (1, 1), True),
    ((1, 3, 7, 9), (3, 3), (1, 1), (1, 1), False),
    ((3, 2, 6, 6), (4, 4), (3, 3), (2, 2), True),
]


@pytest.mark.parametrize("shape, kernel, stride, pad, ceil_mode", POOLS)
@pytest.mark.parametrize("seed", [0, 1])
def test_max_pooling_bits(monkeypatch, shape, kernel, stride, pad, ceil_mode, seed):
    x = awkward(shape, seed)
    any_pad = pad != (0, 0)
    out = tuple(pooled_size(s, k, st, p, ceil_mode, any_pad)
                for s, k, st, p in zip(shape[2:], kernel, stride, pad))
    dy = np.random.default_rng(seed).standard_normal(shape[:2] + out).astype(np.float32)

    def run():
        y, arg = max_pool_forward(x, kernel, stride, pad, out)
        bare, _ = max_pool_forward(x, kernel, stride, pad, out, with_argmax=False)
        dx = np.zeros(shape, np.float32)
        max_pool_backward(dy, arg, dx)
        # onto what is there, or onto zeros (the stale values dropped)
        onto = np.full(shape, 0.75, np.float32)
        max_pool_backward(dy, arg, onto)
        overwritten = np.full(shape, np.nan, np.float32)
        max_pool_backward(dy, arg, overwritten, overwrite=True)
        return y, arg, bare, dx, onto, overwritten

    compiled, plain = both(monkeypatch, run)
    for a, b in zip(compiled, plain):
        same_bits(a, b)
    assert np.isnan(compiled[0]).any()          # the NaN rule was exercised
    dx, onto, overwritten = compiled[3:]
    same_bits(overwritten, dx)
    assert not np.array_equal(onto, dx)


def test_switched_off_and_missing_compiler(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("SPPCAFFE_NATIVE", "off")
    assert native.library() is None
    monkeypatch.delenv("SPPCAFFE_NATIVE")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with caplog.at_level(logging.WARNING):
        assert native._load() is False
    assert "no C compiler" in caplog.text and "same results" in caplog.text


def test_a_failing_build_is_reported_and_leaves_no_file(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("SPPCAFFE_KERNEL_CACHE", str(tmp_path / "cache"))
    broken = tmp_path / "native.c"
    broken.write_text("this is not C\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    with caplog.at_level(logging.WARNING):
        assert native._load() is False
    assert "could not build native.c" in caplog.text
    assert list((tmp_path / "cache").iterdir()) == []
    assert shared_objects.cache_dir() == tmp_path / "cache"


@pytest.mark.parametrize("rows, cols, transposed", [(7, 13, False), (300, 1000, True), (1, 9, False)])
def test_rank_one_weight_gradient_bits(monkeypatch, rows, cols, transposed):
    """Batch 1's weight gradient, out += a @ b with one inner term, as the
    GEMM-and-add it replaces, also on strided operands and outputs."""
    from sppcaffe.threads import add_matmul
    rng = np.random.default_rng(5)
    a = rng.standard_normal((1, rows)).astype(np.float32).T      # a column view, stride != 4
    b = rng.standard_normal((1, cols)).astype(np.float32)
    start = rng.standard_normal((cols, rows) if transposed else (rows, cols)).astype(np.float32)

    def run():
        out = start.copy()
        add_matmul(a, b, out.T if transposed else out)
        return out

    compiled, plain = both(monkeypatch, run)
    same_bits(compiled, plain)
    assert not np.array_equal(compiled, start)


def test_built_once_then_loaded_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SPPCAFFE_KERNEL_CACHE", str(tmp_path))
    native._load()
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"
    stamp = built[0].stat().st_mtime_ns
    assert native._load() is not False
    assert list(tmp_path.iterdir()) == built and built[0].stat().st_mtime_ns == stamp


def test_sgd_update_gives_the_numpy_solvers_bits(monkeypatch):
    """The fused SGD + L2 step (a golden case with momentum, decay and
    multipliers) against the NumPy update, over several steps."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from test_solvers import golden_solver, load_expected
    from sppcaffe.solvers.updates import SGDSolver

    def run():
        solver = golden_solver("solver_sgd")
        assert type(solver) is SGDSolver and solver.param.weight_decay > 0
        feed = load_expected("solver_sgd", "feed.npz")
        for it in range(4):
            solver.net.blobs["data"].data[...] = feed["data"][it % len(feed["data"])]
            solver.net.blobs["label"].data[...] = feed["label"][it % len(feed["label"])]
            solver.step(1)
        return ([p.data.copy() for p in solver.net.learnable_params]
                + [h.data.copy() for h in solver.history_blobs])

    calls = []
    real = native._load

    def counting_load():
        functions = real()
        if functions:
            update = functions["sc_sgd_update"]
            functions = dict(functions, sc_sgd_update=lambda *a: (calls.append(1), update(*a)))
        return functions

    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_load", counting_load)
    compiled, plain = both(monkeypatch, run)
    assert calls                                   # the fused step ran
    for a, b in zip(compiled, plain):
        same_bits(a, b)
