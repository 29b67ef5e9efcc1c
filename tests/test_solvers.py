"""Solvers: the BVLC Caffe trajectories in tests/golden/solver_*, the update
pieces (clipping, iter_size, L1/L2 decay, lr/decay multipliers) against
closed forms, construction rules, testing and the display log."""
import logging
import re

import numpy as np
import pytest

import sppcaffe
from sppcaffe import io
from sppcaffe.proto import caffe_pb2
from sppcaffe.solvers import (SOLVER_TYPES, AdaGradSolver, AdamSolver, RMSPropSolver, SGDSolver,
                              SolverError, get_solver)
from golden_util import DIFF_TOL, assert_close, case_path, load_expected

# A linear regression net: loss = sum((X W^T + b - y)^2) / (2 N); lr_mult and
# decay_mult differ per param so the multipliers are exercised.
LINEAR_NET = """
name: "linear"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        param { lr_mult: 0.5 decay_mult: 2 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }
"""

RNG = np.random.default_rng(1234)
BATCHES_X = RNG.standard_normal((5, 4, 3)).astype(np.float32)
BATCHES_Y = RNG.standard_normal((5, 4, 1)).astype(np.float32)


def make_param(net_text=LINEAR_NET, **fields):
    """A SolverParameter with the net inline (net_param) and `fields`."""
    param = io.parse_text(f"net_param {{ {net_text} }}", caffe_pb2.SolverParameter())
    defaults = dict(base_lr=0.1, lr_policy="fixed", max_iter=10, display=0, random_seed=7,
                    snapshot_after_train=False)
    for name, value in {**defaults, **fields}.items():
        if isinstance(value, (list, tuple)):
            getattr(param, name).extend(value)
        elif hasattr(value, "DESCRIPTOR"):
            getattr(param, name).CopyFrom(value)
        else:
            setattr(param, name, value)
    return param


def feed_by_iteration(solver, xs=BATCHES_X, ys=BATCHES_Y):
    """Before each iteration, put batch `iter % len(xs)` into the Input blobs."""
    def on_start():
        k = solver.iter % len(xs)
        solver.net.blobs["data"].data[...] = xs[k]
        solver.net.blobs["label"].data[...] = ys[k]
    solver.add_callback(on_start, lambda: None)


def linear_gradient(w, b, x, y):
    """Closed-form gradient of the linear net's loss, in float64."""
    x, y = np.float64(x), np.float64(y)
    r = (x @ np.float64(w).T + np.float64(b) - y) / len(x)
    return r.T @ x, r.sum(axis=0)


def set_weights(solver, w, b):
    solver.net.params["ip"][0].data[...] = w
    solver.net.params["ip"][1].data[...] = b


W0 = np.array([[0.5, -1.0, 2.0]], np.float32)
B0 = np.array([0.25], np.float32)


# ---------------------------------------------------------------------------
# Golden trajectories from BVLC Caffe
# ---------------------------------------------------------------------------
def golden_solver(case):
    param = io.read_solver(case_path(case, "solver.prototxt"))
    param.net = case_path(case, "net.prototxt")
    solver = get_solver(param)
    solver.net.copy_from(case_path(case, "init.caffemodel"))
    return solver


def run_golden(solver, case, first, last):
    feed, expected = load_expected(case, "feed.npz"), load_expected(case)
    n = len(feed["data"])
    for it in range(first, last):
        solver.net.blobs["data"].data[...] = feed["data"][it % n]
        solver.net.blobs["label"].data[...] = feed["label"][it % n]
        solver.step(1)
        assert_close(solver.net.blobs["loss"].data, expected[f"loss/{it}"], DIFF_TOL,
                     f"{case} loss at step {it}")
    finals = [k for k in expected if k.startswith("final/")]
    assert finals
    for key in finals:
        _, layer, i = key.split("/")
        assert_close(solver.net.params[layer][int(i)].data, expected[key], DIFF_TOL, key)


def golden_steps(case):
    return sum(k.startswith("loss/") for k in load_expected(case))


@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adagrad", "rmsprop", "adadelta", "adam"])
def test_golden_trajectory(kind):
    case = f"solver_{kind}"
    solver = golden_solver(case)
    assert type(solver).type.lower() == kind
    run_golden(solver, case, 0, golden_steps(case))
    assert solver.iter == golden_steps(case)


def test_golden_solver_file_finds_its_net_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)             # `net: "net.prototxt"` is not in the CWD
    case = "solver_nesterov"
    solver = get_solver(case_path(case, "solver.prototxt"))
    assert solver.net.source == case_path(case, "net.prototxt")
    solver.net.copy_from(case_path(case, "init.caffemodel"))
    run_golden(solver, case, 0, golden_steps(case))


def test_golden_resume_from_caffe_snapshot(tmp_path, monkeypatch):
    # Caffe's learned_net is relative to the folder it ran in: resolve it beside the state.
    monkeypatch.chdir(tmp_path)
    case = "solver_sgd"
    solver = golden_solver(case)
    solver.restore(case_path(case, "snap_iter_6.solverstate"))
    assert solver.iter == 6 and solver.current_step == 1
    run_golden(solver, case, 6, golden_steps(case))


# ---------------------------------------------------------------------------
# Update pieces against closed forms
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("regularization", ["L2", "L1"])
def test_weight_decay_and_multipliers(regularization):
    decay, lr = 0.1, 0.2
    solver = SGDSolver(make_param(base_lr=lr, weight_decay=decay,
                                  regularization_type=regularization))
    set_weights(solver, W0, B0)
    feed_by_iteration(solver)
    solver.step(1)
    gw, gb = linear_gradient(W0, B0, BATCHES_X[0], BATCHES_Y[0])
    penalty = W0 if regularization == "L2" else np.sign(W0)
    # weights: lr_mult 0.5, decay_mult 2; bias: lr_mult 2, decay_mult 0
    expected_w = W0 - lr * 0.5 * (gw + decay * 2 * penalty)
    expected_b = B0 - lr * 2 * gb
    np.testing.assert_allclose(solver.net.params["ip"][0].data, expected_w, rtol=1e-5)
    np.testing.assert_allclose(solver.net.params["ip"][1].data, expected_b, rtol=1e-5)


def test_unknown_regularization_type_names_solver():
    # Refused when the solver is built, not at the first update.
    with pytest.raises(SolverError, match="regularization_type 'L3'"):
        SGDSolver(make_param(weight_decay=0.1, regularization_type="L3"))


def test_momentum_accumulates_history():
    lr, momentum = 0.1, 0.9
    solver = SGDSolver(make_param(base_lr=lr, momentum=momentum))
    set_weights(solver, W0, B0)
    feed_by_iteration(solver)
    w, b = np.float64(W0), np.float64(B0)
    hw, hb = np.zeros_like(w), np.zeros_like(b)
    for k in range(3):
        gw, gb = linear_gradient(w, b, BATCHES_X[k], BATCHES_Y[k])
        hw, hb = momentum * hw + lr * 0.5 * gw, momentum * hb + lr * 2 * gb
        w, b = w - hw, b - hb
    solver.step(3)
    np.testing.assert_allclose(solver.net.params["ip"][0].data, w, rtol=1e-5)
    np.testing.assert_allclose(solver.history[0], hw, rtol=1e-5)
    np.testing.assert_allclose(solver.history[1], hb, rtol=1e-5)


def memory_net(batch):
    return LINEAR_NET.replace(
        'type: "Input" top: "data" top: "label"\n'
        '        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 1 } }',
        'type: "MemoryData" top: "data" top: "label"\n'
        f'        memory_data_param {{ batch_size: {batch} channels: 3 height: 1 width: 1 }}')


@pytest.mark.parametrize("iter_size", [1, 2])
def test_clip_gradients_scales_the_summed_gradient_before_normalizing(iter_size, caplog):
    clip, lr = 0.05, 1.0
    solver = SGDSolver(make_param(memory_net(4), base_lr=lr, clip_gradients=clip,
                                  iter_size=iter_size))
    set_weights(solver, W0, B0)
    xs, ys = BATCHES_X[:iter_size], BATCHES_Y[:iter_size]
    solver.net.set_input_arrays(xs.reshape(-1, 3, 1, 1), ys.reshape(-1))
    caplog.set_level(logging.INFO, logger="sppcaffe")
    solver.step(1)
    grads = [linear_gradient(W0, B0, x, y) for x, y in zip(xs, ys)]
    gw, gb = sum(g[0] for g in grads), sum(g[1] for g in grads)
    norm = np.sqrt((gw ** 2).sum() + (gb ** 2).sum())
    assert norm > clip
    gw, gb = gw * clip / norm / iter_size, gb * clip / norm / iter_size
    np.testing.assert_allclose(solver.net.params["ip"][0].data, W0 - lr * 0.5 * gw, rtol=1e-5)
    np.testing.assert_allclose(solver.net.params["ip"][1].data, B0 - lr * 2 * gb, rtol=1e-5)
    assert any(m.startswith(f"Gradient clipping: scaling down gradients (L2 norm {norm:.6g} > "
                            f"{clip:g}) by scale factor") for m in caplog.messages)


def test_iter_size_equals_one_big_batch():
    x, y = BATCHES_X[:4].reshape(-1, 3, 1, 1), BATCHES_Y[:4].reshape(-1)
    runs = []
    for batch, iter_size in ((4, 4), (16, 1)):
        solver = SGDSolver(make_param(memory_net(batch), momentum=0.9, weight_decay=0.01,
                                      iter_size=iter_size))
        solver.net.set_input_arrays(x, y)
        losses = []
        solver.add_callback(lambda: None, lambda s=solver: losses.append(s.smoothed_loss))
        solver.step(3)
        runs.append(([p.data.copy() for p in solver.net.learnable_params], losses))
    (params_a, losses_a), (params_b, losses_b) = runs
    for a, b in zip(params_a, params_b):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    np.testing.assert_allclose(losses_a, losses_b, rtol=1e-5)


# ---------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------
def write_solver(folder, text, net_text=LINEAR_NET, net_name="net.prototxt"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / net_name).write_text(net_text)
    path = folder / "solver.prototxt"
    path.write_text(text)
    return path


def test_net_path_relative_to_cwd_else_beside_solver(tmp_path, monkeypatch):
    path = write_solver(tmp_path / "exp", 'net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed"')
    monkeypatch.chdir(tmp_path)             # not found in the CWD: the solver's folder is used
    solver = get_solver(str(path))
    assert solver.net.source == str(tmp_path / "exp" / "net.prototxt")
    # Caffe's rule comes first: a file of that name in the CWD wins.
    (tmp_path / "net.prototxt").write_text(LINEAR_NET.replace('"linear"', '"cwd"'))
    assert get_solver(str(path)).net.name == "cwd"


def test_missing_net_file_names_solver(tmp_path, monkeypatch):
    path = write_solver(tmp_path, 'net: "nowhere.prototxt" base_lr: 0.1')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="solver.prototxt: net file 'nowhere.prototxt'"):
        SGDSolver(str(path))


def test_get_solver_picks_class_from_type_and_upgrades_solver_type():
    for name, cls in SOLVER_TYPES.items():
        momentum = 0.0 if name in ("AdaGrad", "RMSProp") else 0.9
        assert type(get_solver(make_param(type=name, momentum=momentum))) is cls
    old = make_param()
    old.ClearField("type")
    old.solver_type = caffe_pb2.SolverParameter.ADAM
    assert type(get_solver(old)) is AdamSolver
    with pytest.raises(SolverError, match="unknown solver type 'Lion'"):
        get_solver(make_param(type="Lion"))


@pytest.mark.parametrize("cls, fields, message", [
    (AdaGradSolver, {"momentum": 0.9}, "Momentum cannot be used with AdaGrad"),
    (RMSPropSolver, {"momentum": 0.9}, "Momentum cannot be used with RMSProp"),
    (RMSPropSolver, {"rms_decay": 1.0}, "rms_decay should lie between 0 and 1"),
    (SGDSolver, {"average_loss": 0}, "average_loss must be >= 1"),
    (SGDSolver, {"test_iter": [5], "test_interval": 0}, "test_interval must be > 0"),
    (SGDSolver, {"test_iter": [1, 2], "test_state": [caffe_pb2.NetState()], "test_interval": 1},
     "test_state must be unspecified or specified once per test net"),
    (SGDSolver, {"snapshot": 5}, "snapshot is specified but snapshot_prefix is not"),
    (SGDSolver, {"snapshot": 5, "snapshot_prefix": "/no/such/folder/snap"},
     "cannot write to snapshot prefix"),
])
def test_invalid_solver_parameters(cls, fields, message):
    with pytest.raises(SolverError, match=message):
        cls(make_param(**fields))


def test_test_iter_must_match_test_nets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_solver(tmp_path, 'train_net: "net.prototxt" test_net: "net.prototxt" '
                                  'test_iter: 1 test_iter: 2 test_interval: 5 base_lr: 0.1')
    with pytest.raises(SolverError, match=r"solver.prototxt: test_iter must be specified for "
                                          r"each test network"):
        SGDSolver(str(path))
    path.write_text('train_net: "net.prototxt" test_net: "net.prototxt" test_iter: 2 '
                    'test_interval: 5 base_lr: 0.1')
    solver = SGDSolver(str(path))
    assert len(solver.test_nets) == 1 and solver.test_nets[0].phase == sppcaffe.TEST


@pytest.mark.parametrize("fields", [{}, {"net": "a.prototxt"}])
def test_exactly_one_train_net(fields):
    param = make_param(**fields)
    if not fields:
        param.ClearField("net_param")
    with pytest.raises(SolverError, match="exactly one train net"):
        SGDSolver(param)


STAGED_NET = """
name: "staged"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 1 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "extra" type: "Flatten" bottom: "ip" top: "extra" include { stage: "debug" } }
layer { name: "val" type: "Flatten" bottom: "ip" top: "val" include { phase: TEST } }
"""


def test_states_merge_phase_and_stages():
    stage = caffe_pb2.NetState(stage=["debug"])
    solver = SGDSolver(make_param(STAGED_NET, train_state=stage, test_iter=[1, 1],
                                  test_interval=10, test_state=[caffe_pb2.NetState(), stage]))
    names = lambda net: [layer.name for layer in net.layers]  # noqa: E731
    assert solver.net.phase == sppcaffe.TRAIN
    assert "extra" in names(solver.net) and "val" not in names(solver.net)
    assert [n.phase for n in solver.test_nets] == [sppcaffe.TEST, sppcaffe.TEST]
    assert "val" in names(solver.test_nets[0]) and "extra" not in names(solver.test_nets[0])
    assert "extra" in names(solver.test_nets[1])


def test_random_seed_makes_construction_repeatable():
    a, b = SGDSolver(make_param(random_seed=3)), SGDSolver(make_param(random_seed=3))
    c = SGDSolver(make_param(random_seed=4))
    wa, wb, wc = (s.net.params["ip"][0].data for s in (a, b, c))
    assert np.array_equal(wa, wb) and not np.array_equal(wa, wc)


def test_weights_field_finetunes_train_and_test_nets(tmp_path):
    source = SGDSolver(make_param(random_seed=11))
    model = str(tmp_path / "init.caffemodel")
    source.net.save(model)
    solver = SGDSolver(make_param(random_seed=12, weights=[model], test_iter=[1],
                                  test_interval=5))
    for net in (solver.net, solver.test_nets[0]):
        assert np.array_equal(net.params["ip"][0].data, source.net.params["ip"][0].data)


def test_data_shapes_reach_the_nets():
    net = LINEAR_NET.replace(
        'type: "Input" top: "data" top: "label"\n'
        '        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 1 } }',
        'type: "Data" top: "data" top: "label" data_param { source: "no_db" batch_size: 4 }')
    with pytest.raises(Exception):          # no database to read
        SGDSolver(make_param(net))
    solver = SGDSolver(make_param(net), data_shapes={"data": (4, 3), "label": (4, 1)})
    feed_by_iteration(solver)
    solver.step(2)
    assert solver.iter == 2


# ---------------------------------------------------------------------------
# Testing, display, callbacks
# ---------------------------------------------------------------------------
TEST_NET = """
name: "with_test"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 1 } } include { phase: TRAIN } }
layer { name: "mem" type: "MemoryData" top: "data" top: "label"
        memory_data_param { batch_size: 2 channels: 3 height: 1 width: 1 } include { phase: TEST } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "flat" type: "Flatten" bottom: "ip" top: "flat" include { phase: TEST } }
"""


class Recorder:
    def __init__(self):
        self.tests, self.displays, self.snapshots = [], [], []

    def on_test(self, solver, net_index, scores):
        self.tests.append((solver.iter, net_index, scores))

    def on_display(self, solver, smoothed_loss, outputs, lr):
        self.displays.append((solver.iter, smoothed_loss, outputs, lr))

    def on_snapshot(self, solver, model_path, state_path):
        self.snapshots.append((solver.iter, model_path, state_path))


def test_scores_accumulate_over_test_iterations_with_trained_weights(caplog):
    solver = SGDSolver(make_param(TEST_NET, test_iter=[3], test_interval=2))
    xs = RNG.standard_normal((6, 3, 1, 1)).astype(np.float32)
    ys = RNG.standard_normal(6).astype(np.float32)
    solver.test_nets[0].set_input_arrays(xs, ys)
    feed_by_iteration(solver)
    recorder = Recorder()
    solver.add_listener(recorder)
    caplog.set_level(logging.INFO, logger="sppcaffe")
    solver.step(3)
    assert [(it, i) for it, i, _ in recorder.tests] == [(0, 0), (2, 0)]
    # The test at iteration 2 uses the weights after two updates.
    caplog.clear()
    recorder.tests.clear()
    w = np.float64(solver.net.params["ip"][0].data)
    b = np.float64(solver.net.params["ip"][1].data)
    scores = solver.test(0)
    ip = (np.float64(xs.reshape(6, 3)) @ w.T + b).reshape(3, 2)       # per test iteration
    loss = ((ip - ys.reshape(3, 2)) ** 2).sum(axis=1) / 4
    expected = [("flat", v) for v in ip.mean(axis=0)] + [("loss", loss.mean())]
    assert [name for name, _ in scores] == [name for name, _ in expected]
    np.testing.assert_allclose([v for _, v in scores], [v for _, v in expected], rtol=1e-5)
    assert recorder.tests == [(3, 0, scores)]
    assert solver.mean_scores[0] == [v for _, v in scores]
    assert caplog.messages[0] == "Iteration 3, Testing net (#0)"
    value = f"{np.float32(scores[2][1]):g}"
    assert caplog.messages[-1] == f"    Test net output #2: loss = {value} (* 1 = {value} loss)"
    assert caplog.messages[1].startswith("    Test net output #0: flat = ")


@pytest.mark.parametrize("initialization, expected", [(True, [0, 2, 4]), (False, [2, 4])])
def test_test_initialization(initialization, expected):
    solver = SGDSolver(make_param(TEST_NET, test_iter=[1], test_interval=2,
                                  test_initialization=initialization))
    solver.test_nets[0].set_input_arrays(np.ones((2, 3, 1, 1)), np.ones(2))
    feed_by_iteration(solver)
    recorder = Recorder()
    solver.add_listener(recorder)
    solver.step(5)
    assert [it for it, _, _ in recorder.tests] == expected


def test_display_lines_and_smoothed_loss(caplog):
    solver = SGDSolver(make_param(display=2, average_loss=2, base_lr=0.01))
    feed_by_iteration(solver)
    raw = []
    solver.add_callback(lambda: None, lambda: raw.append(float(solver.net.blobs["loss"].data)))
    recorder = Recorder()
    solver.add_listener(recorder)
    caplog.set_level(logging.INFO, logger="sppcaffe")
    solver.step(5)
    smoothed = {0: raw[0], 2: (raw[1] + raw[2]) / 2, 4: (raw[3] + raw[4]) / 2}
    header = re.compile(r"Iteration (\d+) \(\S+ iter/s, \S+s/2 iters\), loss = (\S+)$")
    found = [header.match(m) for m in caplog.messages]
    found = {int(m.group(1)): float(m.group(2)) for m in found if m}
    assert sorted(found) == [0, 2, 4]
    for it, value in found.items():
        assert value == pytest.approx(smoothed[it], rel=1e-5)
        i = caplog.messages.index(next(m for m in caplog.messages if m.startswith(
            f"Iteration {it} (")))
        loss = f"{np.float32(raw[it]):g}"
        assert caplog.messages[i + 1] == (f"    Train net output #0: loss = {loss} "
                                          f"(* 1 = {loss} loss)")
        assert caplog.messages[i + 2] == f"Iteration {it}, lr = 0.01"
    assert [it for it, *_ in recorder.displays] == [0, 2, 4]
    for it, loss, outputs, lr in recorder.displays:
        assert loss == pytest.approx(smoothed[it], rel=1e-6)
        assert outputs == [("loss", pytest.approx(raw[it], rel=1e-6))]
        assert lr == np.float32(0.01)


def test_solve_final_display_and_test(caplog):
    solver = SGDSolver(make_param(TEST_NET, display=3, max_iter=6, test_iter=[1],
                                  test_interval=3))
    solver.test_nets[0].set_input_arrays(np.ones((2, 3, 1, 1)), np.ones(2))
    feed_by_iteration(solver)
    recorder = Recorder()
    solver.add_listener(recorder)
    caplog.set_level(logging.INFO, logger="sppcaffe")
    solver.solve()
    assert solver.iter == 6
    assert [it for it, _, _ in recorder.tests] == [0, 3, 6]
    assert caplog.messages[:2] == ["Solving with_test", "Learning Rate Policy: fixed"]
    final = next(i for i, m in enumerate(caplog.messages) if m.startswith("Iteration 6, loss = "))
    assert caplog.messages[final + 1] == "Iteration 6, Testing net (#0)"
    assert caplog.messages[-1] == "Optimization Done."


def test_callbacks_run_in_order_each_iteration():
    solver = SGDSolver(make_param())
    events = []
    feed_by_iteration(solver)
    solver.add_callback(lambda: events.append(("start", solver.iter)),
                        lambda: events.append(("ready", solver.iter)))
    solver.step(2)
    assert events == [("start", 0), ("ready", 0), ("start", 1), ("ready", 1)]


def test_requested_action_stop_from_python():
    solver = SGDSolver(make_param(max_iter=10))
    feed_by_iteration(solver)

    def ready():
        if solver.iter == 2:
            solver.requested_action = "stop"
    solver.add_callback(lambda: None, ready)
    solver.solve()
    assert solver.iter == 3


def test_apply_update_counts_the_iteration():
    solver = SGDSolver(make_param())
    set_weights(solver, W0, B0)
    solver.net.blobs["data"].data[...] = BATCHES_X[0]
    solver.net.blobs["label"].data[...] = BATCHES_Y[0]
    solver.net.clear_param_diffs()
    solver.net.forward_backward()
    solver.apply_update()
    assert solver.iter == 1
    gw, _ = linear_gradient(W0, B0, BATCHES_X[0], BATCHES_Y[0])
    np.testing.assert_allclose(solver.net.params["ip"][0].data, W0 - 0.1 * 0.5 * gw, rtol=1e-5)


def test_share_weights_gives_a_net_the_trained_arrays():
    solver = SGDSolver(make_param())
    other = sppcaffe.Net(io.parse_text(LINEAR_NET, caffe_pb2.NetParameter()), sppcaffe.TEST)
    solver.share_weights(other)
    assert other.params["ip"][0].data is solver.net.params["ip"][0].data
