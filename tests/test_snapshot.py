"""Snapshots: Caffe's file names and layouts (binary and HDF5), bit-exact
resuming, atomic writes, and SIGINT/SIGHUP during solve()."""
import logging
import os
import signal

import h5py
import numpy as np
import pytest

import sppcaffe
from sppcaffe import io
from sppcaffe.proto import caffe_pb2
from sppcaffe.solvers import SGDSolver, SolverStateError, get_solver
from sppcaffe.solvers.state import write_state
from test_solvers import LINEAR_NET, feed_by_iteration, make_param

BINARY, HDF5 = caffe_pb2.SolverParameter.BINARYPROTO, caffe_pb2.SolverParameter.HDF5

DROPOUT_NET = """
name: "dropnet"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 5 } shape { dim: 4 dim: 1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param { dropout_ratio: 0.5 } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""
_rng = np.random.default_rng(99)
XS = _rng.standard_normal((6, 4, 5)).astype(np.float32)
YS = _rng.standard_normal((6, 4, 1)).astype(np.float32)


def dropout_solver(tmp_path, kind="SGD", fmt=BINARY, **fields):
    fields = {**dict(type=kind, momentum=0.9, lr_policy="multistep", stepvalue=[2, 4],
                     gamma=0.5, base_lr=0.05, weight_decay=0.001, snapshot=3,
                     snapshot_prefix=str(tmp_path / "snap"), snapshot_format=fmt,
                     max_iter=6), **fields}
    solver = get_solver(make_param(DROPOUT_NET, **fields))
    feed_by_iteration(solver, XS, YS)
    return solver


def state_of(solver):
    return ([p.data.copy() for p in solver.net.learnable_params],
            [h.copy() for h in solver.history], solver.iter, solver.current_step)


def assert_same_state(a, b):
    (pa, ha, ia, ca), (pb, hb, ib, cb) = a, b
    assert (ia, ca) == (ib, cb)
    assert len(pa) == len(pb) and len(ha) == len(hb)
    for x, y in zip(pa + ha, pb + hb):
        assert np.array_equal(x, y)


# ---------------------------------------------------------------------------
# Resuming
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, suffix", [(BINARY, ".solverstate"), (HDF5, ".solverstate.h5")])
@pytest.mark.parametrize("kind", ["SGD", "Adam"])
def test_resume_is_bit_exact(tmp_path, kind, fmt, suffix):
    straight = dropout_solver(tmp_path, kind, fmt)
    straight.step(6)
    expected = state_of(straight)
    resumed = dropout_solver(tmp_path, kind, fmt)
    resumed.restore(str(tmp_path / f"snap_iter_3{suffix}"))
    assert resumed.iter == 3 and resumed.current_step == 1
    resumed.step(3)
    assert_same_state(state_of(resumed), expected)
    assert len(expected[1]) == (8 if kind == "Adam" else 4)

    # The generator's state (Dropout masks) is part of what makes it exact.
    os.unlink(tmp_path / f"snap_iter_3{suffix}.rng")
    without_rng = dropout_solver(tmp_path, kind, fmt)
    without_rng.restore(str(tmp_path / f"snap_iter_3{suffix}"))
    without_rng.step(3)
    assert not np.array_equal(without_rng.net.params["ip1"][0].data, expected[0][0])


def test_solve_resume_file(tmp_path):
    first = dropout_solver(tmp_path, max_iter=3, snapshot=0, snapshot_after_train=True)
    first.solve()
    resumed = dropout_solver(tmp_path, snapshot=0, snapshot_after_train=True)
    resumed.solve(str(tmp_path / "snap_iter_3.solverstate"))
    straight = dropout_solver(tmp_path / "straight", snapshot=0)
    straight.step(6)
    assert_same_state(state_of(resumed), state_of(straight))
    assert (tmp_path / "snap_iter_6.caffemodel").exists()


def test_restore_rejects_a_state_of_another_solver_type(tmp_path):
    adam = dropout_solver(tmp_path, "Adam")
    _, state_path = adam.snapshot()
    sgd = dropout_solver(tmp_path, "SGD")
    with pytest.raises(SolverStateError, match="incorrect length of history blobs: the state "
                                               "holds 8, this solver keeps 4"):
        sgd.restore(state_path)


def test_learned_net_found_beside_the_state_when_its_path_is_gone(tmp_path):
    solver = dropout_solver(tmp_path)
    solver.step(2)
    model, state_path = solver.snapshot()
    weights = [p.data.copy() for p in solver.net.learnable_params]
    # As a Caffe snapshot copied from another machine: an absolute path that does not exist.
    write_state(state_path, 2, "/machine/that/wrote/it/" + os.path.basename(model), 1,
                solver.history)
    fresh = dropout_solver(tmp_path)
    fresh.restore(state_path)
    for p, w in zip(fresh.net.learnable_params, weights):
        assert np.array_equal(p.data, w)
    os.unlink(model)
    with pytest.raises(FileNotFoundError, match="cannot find its learned_net"):
        dropout_solver(tmp_path).restore(state_path)


# ---------------------------------------------------------------------------
# Files and layouts
# ---------------------------------------------------------------------------
def test_binary_snapshot_names_and_contents(tmp_path, caplog):
    solver = dropout_solver(tmp_path, max_iter=5, snapshot=2, snapshot_after_train=True)
    seen = {}
    solver.add_listener(type("L", (), {"on_snapshot": lambda self, s, m, st: seen.setdefault(
        s.iter, ([p.data.copy() for p in s.net.learnable_params], m, st))})())
    caplog.set_level(logging.INFO, logger="sppcaffe")
    solver.solve()
    prefix = str(tmp_path / "snap")
    assert sorted(seen) == [2, 4, 5]
    for it, (weights, model, state_path) in seen.items():
        assert model == f"{prefix}_iter_{it}.caffemodel"
        assert state_path == f"{prefix}_iter_{it}.solverstate"
        assert f"Snapshotting to binary proto file {model}" in caplog.messages
        assert f"Snapshotting solver state to binary proto file {state_path}" in caplog.messages
        state = io.read_binary(state_path, caffe_pb2.SolverState())
        assert (state.iter, state.learned_net) == (it, model)
        # multistep at stepvalues 2, 4: the step moves when the rate of that iteration is taken
        assert state.current_step == {2: 0, 4: 1, 5: 2}[it]
        assert [tuple(h.shape.dim) for h in state.history] == [(6, 5), (6,), (1, 6), (1,)]
        saved = sppcaffe.Net(io.parse_text(DROPOUT_NET, caffe_pb2.NetParameter()),
                             sppcaffe.TEST, weights=model)
        for p, w in zip(saved.learnable_params, weights):
            assert np.array_equal(p.data, w)
    assert sorted(os.listdir(tmp_path)) == sorted(
        f"snap_iter_{i}{ext}" for i in (2, 4, 5)
        for ext in (".caffemodel", ".solverstate", ".solverstate.rng"))


def test_hdf5_snapshot_has_caffes_layout(tmp_path):
    solver = dropout_solver(tmp_path, fmt=HDF5, snapshot_diff=True)
    solver.step(2)
    model, state_path = solver.snapshot()
    assert model.endswith("snap_iter_2.caffemodel.h5")
    assert state_path.endswith("snap_iter_2.solverstate.h5")
    with h5py.File(state_path, "r") as f:
        assert f["iter"].dtype == np.int32 and f["iter"][()].tolist() == [2]
        assert f["current_step"][()].tolist() == [0]
        learned = f["learned_net"]
        assert learned.shape == () and learned.id.get_type().get_strpad() == h5py.h5t.STR_NULLTERM
        assert learned[()] == model.encode()
        assert sorted(f["history"]) == ["0", "1", "2", "3"]
        assert np.array_equal(f["history/2"][()], solver.history[2])
    with h5py.File(model, "r") as f:
        assert sorted(f) == ["data", "diff"]
        assert sorted(f["data"]) == sorted(layer.name for layer in solver.net.layers)
        assert np.array_equal(f["data/ip1/0"][()], solver.net.params["ip1"][0].data)
        assert np.array_equal(f["diff/ip2/1"][()], solver.net.params["ip2"][1].diff)
        assert f["data/ip1/0"].dtype == np.float32 and len(f["data/relu"]) == 0


SHARED_NET = """
name: "shared"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "a" type: "InnerProduct" bottom: "data" top: "a" param { name: "w" }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" }
        inner_product_param { num_output: 3 bias_filler { type: "gaussian" std: 1 } } }
"""


def test_hdf5_weights_write_shared_params_once(tmp_path):
    net_param = io.parse_text(SHARED_NET, caffe_pb2.NetParameter())
    net = sppcaffe.Net(net_param, sppcaffe.TRAIN)
    path = str(tmp_path / "shared.caffemodel.h5")
    net.save(path)
    with h5py.File(path, "r") as f:
        assert sorted(f["data/a"]) == ["0", "1"] and sorted(f["data/b"]) == ["1"]
    other = sppcaffe.Net(net_param, sppcaffe.TRAIN)
    other.copy_from(path)
    for name in ("a", "b"):
        for mine, theirs in zip(other.params[name], net.params[name]):
            assert np.array_equal(mine.data, theirs.data)
    bad = io.parse_text(SHARED_NET.replace("num_output: 3 weight", "num_output: 3 "
                                           "bias_term: false weight"), caffe_pb2.NetParameter())
    with pytest.raises(ValueError, match="incompatible number of blobs for layer 'a'"):
        sppcaffe.Net(bad, sppcaffe.TRAIN, weights=path)


def test_snapshot_prefix_defaults_to_solver_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(LINEAR_NET)
    (tmp_path / "runs").mkdir()
    path = tmp_path / "my_solver.prototxt"
    path.write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" snapshot: 1')
    assert SGDSolver(str(path)).param.snapshot_prefix == str(tmp_path / "my_solver")
    path.write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" snapshot: 1 '
                    'snapshot_prefix: "runs"')
    assert SGDSolver(str(path)).param.snapshot_prefix == os.path.join("runs", "my_solver")


@pytest.mark.parametrize("fmt", [BINARY, HDF5])
def test_failed_snapshot_leaves_previous_files_and_no_temporaries(tmp_path, monkeypatch, fmt):
    solver = dropout_solver(tmp_path, fmt=fmt)
    solver.step(1)
    paths = solver.snapshot()
    before = {p: open(p, "rb").read() for p in paths}
    listing = sorted(os.listdir(tmp_path))
    for p in solver.net.learnable_params:
        p.data += 1
    solver.history[0] += 1

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        solver.snapshot()
    assert sorted(os.listdir(tmp_path)) == listing
    assert {p: open(p, "rb").read() for p in paths} == before


# ---------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------
def raise_at(solver, iteration, signum):
    def on_gradients_ready():
        if solver.iter == iteration:
            signal.raise_signal(signum)
    solver.add_callback(lambda: None, on_gradients_ready)


def test_sigint_snapshots_and_stops(tmp_path, caplog):
    solver = dropout_solver(tmp_path, max_iter=20, snapshot=0, snapshot_after_train=True)
    raise_at(solver, 4, signal.SIGINT)
    previous = signal.getsignal(signal.SIGINT)
    caplog.set_level(logging.INFO, logger="sppcaffe")
    solver.solve()
    assert solver.iter == 5
    assert (tmp_path / "snap_iter_5.caffemodel").exists()
    assert (tmp_path / "snap_iter_5.solverstate").exists()
    assert "Optimization stopped early." in caplog.messages
    assert "Optimization Done." not in caplog.messages
    assert signal.getsignal(signal.SIGINT) is previous


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_snapshots_and_goes_on(tmp_path):
    solver = dropout_solver(tmp_path, snapshot=0, snapshot_after_train=True)
    raise_at(solver, 1, signal.SIGHUP)
    solver.solve()
    assert solver.iter == 6
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".caffemodel")) == [
        "snap_iter_2.caffemodel", "snap_iter_6.caffemodel"]


def test_sigint_effect_none_keeps_training(tmp_path):
    solver = get_solver(make_param(DROPOUT_NET, max_iter=4), sigint_effect="none")
    feed_by_iteration(solver, XS, YS)
    raise_at(solver, 1, signal.SIGINT)
    solver.solve()
    assert solver.iter == 4


def test_bad_signal_effect():
    with pytest.raises(ValueError, match="sighup_effect must be one of"):
        SGDSolver(make_param(), sighup_effect="restart")
