"""Issue 11, items 1, 4 and 5: inputs that used to give wrong results (or
lose a run) without a word now give a clear error, or a log line saying
what happened.

- weights that fill none of the net's layers (another net's, an empty
  file), and a resume whose learned_net is another net's;
- outputs that cannot be written, checked before the first iteration;
  temporary files of a killed write removed by the next run; solver values
  outside their domain; a NaN/inf loss;
- pycaffe's argument rules for forward/backward; the SPP warning as one
  log line.
"""
import logging
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import sppcaffe
from sppcaffe import io
from sppcaffe.cli import test_net, time_net, train_net
from sppcaffe.io import CaffemodelError
from sppcaffe.net import WeightsError
from sppcaffe.proto import caffe_pb2
from sppcaffe.solvers import SGDSolver, SolverError, SolverStateError, TrainingDiverged

# Two small nets with different layer names: each one's weights are
# "another net's" for the other.
NET_A = """
name: "a"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""
NET_B = NET_A.replace('"a"', '"b"').replace("ip1", "fc1").replace("ip2", "fc2")


def write(path, text):
    path.write_text(text)
    return str(path)


def net(text, phase=sppcaffe.TRAIN):
    return sppcaffe.Net(io.parse_text(text, caffe_pb2.NetParameter()), phase)


def weights_file(tmp_path, text, name, seed=0):
    """A .caffemodel of the net `text` with random weights; its path."""
    source = net(text)
    rng = np.random.default_rng(seed)
    for blobs in source.params.values():
        for blob in blobs:
            blob.data[...] = rng.standard_normal(blob.shape)
    path = str(tmp_path / name)
    source.save(path)
    return path


def params_of(n):
    return {name: [b.data.copy() for b in blobs] for name, blobs in n.params.items()}


# ---------------------------------------------------------------------------
# Weight loading tells the truth
# ---------------------------------------------------------------------------
def test_weights_of_another_net_are_an_error_naming_the_file(tmp_path, caplog):
    other = weights_file(tmp_path, NET_B, "b.caffemodel")
    target = net(NET_A)
    before = params_of(target)
    with caplog.at_level(logging.INFO, logger="sppcaffe"), \
            pytest.raises(WeightsError, match=r"b\.caffemodel: these weights fill none of the 2 "
                                              r"parameter layers of net 'a' \('ip1', 'ip2'\); "
                                              r"its layers that the net lacks: 'fc1', 'fc2'"):
        target.copy_from(other)
    # As Caffe logs it, each source layer the net does not have.
    assert "Ignoring source layer fc1" in caplog.text
    assert "Ignoring source layer fc2" in caplog.text
    # The constructor's weights= goes the same way.
    with pytest.raises(WeightsError, match="fill none"):
        sppcaffe.Net(write(tmp_path / "a.prototxt", NET_A), sppcaffe.TEST, weights=other)
    # Asked for, the copy goes ahead, changes nothing and says so.
    copied = target.copy_from(other, allow_unmatched=True)
    assert copied.filled == [] and copied.unfilled == ["ip1", "ip2"]
    assert copied.ignored == ["fc1", "fc2"]
    for name, arrays in params_of(target).items():
        for a, b in zip(arrays, before[name]):
            np.testing.assert_array_equal(a, b)


def test_partly_matching_weights_say_what_was_left_out(tmp_path, caplog):
    # Fine-tuning: ip2 renamed in the new net keeps its fillers' weights.
    source = weights_file(tmp_path, NET_A, "a.caffemodel")
    target = net(NET_A.replace("ip2", "new_ip2"))
    with caplog.at_level(logging.INFO, logger="sppcaffe"):
        copied = target.copy_from(source)
    assert copied.filled == ["ip1"] and copied.unfilled == ["new_ip2"]
    assert "Ignoring source layer ip2" in caplog.text
    assert "copied weights into 1 of the 2 parameter layers of net 'a'; left as initialized: " \
           "'new_ip2'" in caplog.text
    whole = sppcaffe.Net(write(tmp_path / "a.prototxt", NET_A), sppcaffe.TEST, weights=source)
    np.testing.assert_array_equal(target.params["ip1"][0].data, whole.params["ip1"][0].data)


def test_hdf5_weights_of_another_net_are_an_error(tmp_path, caplog):
    other = net(NET_B)
    path = str(tmp_path / "b.caffemodel.h5")
    other.save(path)
    with caplog.at_level(logging.INFO, logger="sppcaffe"), \
            pytest.raises(WeightsError, match=r"b\.caffemodel\.h5: these weights fill none"):
        net(NET_A).copy_from(path)
    assert "Ignoring source layer fc1" in caplog.text
    with pytest.raises(WeightsError, match="fill none"):
        net(NET_A).load_hdf5(path)


def test_empty_or_non_netparameter_weights_are_errors_naming_the_file(tmp_path):
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(CaffemodelError, match=r"empty\.caffemodel' is empty \(0 bytes\): not a "
                                              r"\.caffemodel"):
        net(NET_A).copy_from(str(empty))
    # A mean image (BlobProto) parses as a NetParameter without layers.
    mean = str(tmp_path / "mean.binaryproto")
    io.write_blobproto(np.ones((3, 2, 2), np.float32), mean)
    with pytest.raises(CaffemodelError, match=r"mean\.binaryproto' holds no layers"):
        net(NET_A).copy_from(mean)


def run_tool(module, capsys, *argv):
    try:
        code = module.main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("module", [test_net, time_net])
def test_scoring_tools_refuse_weights_that_fill_nothing(tmp_path, capsys, module):
    model = write(tmp_path / "a.prototxt", NET_A)
    other = weights_file(tmp_path, NET_B, "b.caffemodel")
    code, out = run_tool(module, capsys, "--model", model, "--weights", other,
                         "--iterations", "1")
    assert code == 1, out
    assert f"{module.PROG}: error:" in out and "fill none of the 2 parameter layers" in out
    assert "Traceback" not in out


# A solver over NET_A with a snapshot folder of its own.
SOLVER = """
net: "{net}"
base_lr: 0.01
lr_policy: "fixed"
max_iter: 2
display: 1
snapshot_prefix: "{prefix}"
random_seed: 3
solver_mode: CPU
"""


@pytest.fixture
def solver_file(tmp_path):
    """(solver path, snapshot prefix) for NET_A fed from Python."""
    model = write(tmp_path / "a.prototxt", NET_A)
    (tmp_path / "snap").mkdir()
    prefix = str(tmp_path / "snap" / "a")
    return write(tmp_path / "solver.prototxt", SOLVER.format(net=model, prefix=prefix)), prefix


def test_train_net_weights_that_fill_nothing_need_allowing(tmp_path, capsys, solver_file):
    solver, prefix = solver_file
    other = weights_file(tmp_path, NET_B, "b.caffemodel")
    code, out = run_tool(train_net, capsys, "--solver", solver, "--weights", other,
                         "--no-plot")
    assert code == 1 and "train_net: error:" in out and "fill none" in out, out
    assert "--allow-unmatched-weights starts training from them anyway" in out
    assert "Iteration 0" not in out                  # nothing trained
    code, out = run_tool(train_net, capsys, "--solver", solver, "--weights", other,
                         "--no-plot", "--allow-unmatched-weights")
    assert code == 0, out
    assert "Ignoring source layer fc1" in out
    assert "copied weights into 0 of the 2 parameter layers" in out


def snapshot_naming(tmp_path, solver_path, learned_net):
    """A snapshot of NET_A's solver whose state names `learned_net`."""
    solver = SGDSolver(solver_path)
    _, state_path = solver.snapshot()
    state = io.read_binary(state_path, caffe_pb2.SolverState())
    state.learned_net = learned_net
    io.write_binary(state, state_path)
    return state_path


def test_resume_refuses_a_learned_net_of_another_net(tmp_path, capsys, solver_file):
    solver_path, prefix = solver_file
    other = weights_file(tmp_path, NET_B, "b.caffemodel")
    state_path = snapshot_naming(tmp_path, solver_path, other)
    with pytest.raises(SolverStateError, match=r"learned_net '.*b\.caffemodel' does not fit net "
                                               r"'a': it holds no weights for its layer\(s\) "
                                               r"'ip1', 'ip2'"):
        SGDSolver(solver_path).restore(state_path)
    code, out = run_tool(train_net, capsys, "--solver", solver_path, "--snapshot", state_path,
                         "--no-plot")
    assert code == 1 and "train_net: error:" in out and "does not fit net 'a'" in out, out
    # Weights of a net lacking one layer: also not a snapshot of this net.
    partial = weights_file(tmp_path, NET_A.replace("ip2", "other"), "partial.caffemodel")
    with pytest.raises(SolverStateError, match=r"no weights for its layer\(s\) 'ip2'"):
        SGDSolver(solver_path).restore(snapshot_naming(tmp_path, solver_path, partial))


# ---------------------------------------------------------------------------
# Fail early, lose nothing
# ---------------------------------------------------------------------------
def linear_solver(**fields):
    param = io.parse_text(f"net_param {{ {NET_A} }}", caffe_pb2.SolverParameter())
    defaults = dict(base_lr=0.01, lr_policy="fixed", max_iter=3, display=0, random_seed=7)
    for name, value in {**defaults, **fields}.items():
        if isinstance(value, list):
            getattr(param, name).extend(value)
        else:
            setattr(param, name, value)
    return param


def feed(solver, poison_at=None):
    """Random batches before each iteration; NaN data from `poison_at` on."""
    rng = np.random.default_rng(0)

    def on_start():
        solver.net.blobs["data"].data[...] = rng.standard_normal((4, 3))
        solver.net.blobs["label"].data[...] = rng.standard_normal((4, 1))
        if poison_at is not None and solver.iter >= poison_at:
            solver.net.blobs["data"].data[0, 0] = np.nan
    solver.add_callback(on_start, lambda: None)


def refuse_writes_in(monkeypatch, folder):
    """Make `folder` unwritable for sppcaffe's writers (tests run as root,
    where permission bits do not stop writes)."""
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and os.path.abspath(dir) == os.path.abspath(folder):
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)
    monkeypatch.setattr("sppcaffe.io.atomic.tempfile.mkstemp", mkstemp)


def test_unwritable_snapshot_prefix_fails_before_the_first_iteration(tmp_path, monkeypatch):
    # `snapshot` unset: only the final snapshot (snapshot_after_train) writes there.
    refuse_writes_in(monkeypatch, tmp_path)
    solver = SGDSolver(linear_solver(snapshot_prefix=str(tmp_path / "run")))
    feed(solver)
    with pytest.raises(SolverError, match=r"cannot write to snapshot prefix '.*run' \(cannot "
                                          r"create a file in .*Permission denied\)"):
        solver.solve()
    assert solver.iter == 0


def test_train_net_checks_snapshot_and_curve_locations_first(tmp_path, capsys, monkeypatch,
                                                             solver_file):
    solver, prefix = solver_file
    refuse_writes_in(monkeypatch, os.path.dirname(prefix))
    code, out = run_tool(train_net, capsys, "--solver", solver)
    assert code == 1 and "cannot write the training curves" in out, out
    code, out = run_tool(train_net, capsys, "--solver", solver, "--no-plot")
    assert code == 1 and "cannot write to snapshot prefix" in out, out
    assert "Iteration 0" not in out


def leave_temp_file(path):
    """What a write of `path` killed before its rename leaves behind: run
    atomic_write in a process that dies inside it."""
    code = ("import os, sys\n"
            "from sppcaffe.io.atomic import atomic_write\n"
            "with atomic_write(sys.argv[1]) as f:\n"
            "    f.write(b'half a snapshot')\n"
            "    f.flush()\n"
            "    os._exit(9)\n")
    subprocess.run([sys.executable, "-c", code, path], check=False, timeout=120)
    folder, name = os.path.split(path)
    left = [n for n in os.listdir(folder) if n.startswith(name + ".") and n.endswith(".tmp")]
    assert len(left) == 1, os.listdir(folder)
    return os.path.join(folder, left[0])


def test_a_killed_snapshot_writes_temp_file_is_removed_by_the_next_run(tmp_path):
    prefix = str(tmp_path / "run")
    stale = [leave_temp_file(f"{prefix}_iter_5.solverstate"),
             leave_temp_file(f"{prefix}_iter_5.caffemodel.h5"),
             leave_temp_file(f"{prefix}_training.csv")]
    kept = [tmp_path / "other_iter_5.solverstate.abcd1234.tmp",     # another run's
            tmp_path / "run_iter_5.solverstate.tmp",                # not atomic_write's naming
            tmp_path / "run_notes.txt.abcd1234.tmp",                # not a file of the run
            tmp_path / "run_notes.txt"]
    for path in kept:
        path.write_text("keep")
    solver = SGDSolver(linear_solver(snapshot_prefix=prefix, max_iter=1))
    feed(solver)
    solver.solve()
    assert not any(os.path.exists(p) for p in stale)
    assert all(p.exists() for p in kept)
    assert os.path.isfile(f"{prefix}_iter_1.caffemodel")


@pytest.mark.parametrize("fields, message", [
    ({"base_lr": -0.01}, "base_lr must be >= 0, got -0.01"),
    ({"base_lr": float("nan")}, "base_lr must be >= 0, got nan"),
    ({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1"),
    ({"momentum": -0.5}, r"momentum must be in \[0, 1\), got -0.5"),
    ({"weight_decay": -0.0005}, "weight_decay must be >= 0, got -0.0005"),
    ({"type": "Adam", "delta": 0.0}, "delta must be > 0 for Adam, got 0"),
    ({"type": "Adam", "momentum2": 1.5}, r"momentum2 must be in \[0, 1\), got 1.5"),
    ({"type": "AdaDelta", "momentum": 0.95, "delta": -1e-6}, "delta must be > 0 for AdaDelta"),
    ({"display": -1}, "display must be >= 0, got -1"),
    ({"snapshot": -5}, "snapshot must be >= 0, got -5"),
    ({"test_iter": [-1], "test_interval": 5}, r"test_iter must be >= 0, got \[-1\]"),
])
def test_solver_values_outside_their_domain_are_errors(fields, message):
    with pytest.raises(SolverError, match=f"<SolverParameter>: {message}"):
        sppcaffe.get_solver(linear_solver(**fields))


@pytest.mark.parametrize("fields, message", [
    ({"max_iter": 0}, "max_iter must be > 0 to train, got 0"),
    ({"lr_policy": "poly", "power": 1.0, "max_iter": 0}, "max_iter must be > 0"),
    ({"lr_policy": "step"}, "lr_policy 'step' needs stepsize > 0"),
])
def test_solve_refuses_what_would_fail_or_do_nothing(fields, message):
    solver = SGDSolver(linear_solver(**fields))
    feed(solver)
    with pytest.raises(ValueError, match=message):
        solver.solve()
    assert solver.iter == 0


def test_nan_loss_stops_training_with_a_snapshot_of_the_last_finite_weights(tmp_path):
    prefix = str(tmp_path / "run")
    solver = SGDSolver(linear_solver(snapshot_prefix=prefix, max_iter=10))
    feed(solver, poison_at=3)
    with pytest.raises(TrainingDiverged, match=r"iteration 3: the training loss is nan \(loss = "
                                               r"nan\); training stopped before updating the "
                                               r"weights with it, the weights before this "
                                               r"update are in .*run_iter_3\.caffemodel"):
        solver.solve()
    assert solver.iter == 3
    weights = params_of(solver.net)
    assert all(np.isfinite(a).all() for arrays in weights.values() for a in arrays)
    saved = sppcaffe.Net(write(tmp_path / "a.prototxt", NET_A), sppcaffe.TEST,
                         weights=f"{prefix}_iter_3.caffemodel")
    for name, arrays in params_of(saved).items():
        for a, b in zip(arrays, weights[name]):
            np.testing.assert_array_equal(a, b)
    assert os.path.isfile(f"{prefix}_iter_3.solverstate")


def test_allow_nan_trains_on_as_caffe_does(tmp_path):
    solver = SGDSolver(linear_solver(snapshot_prefix=str(tmp_path / "run"), max_iter=6),
                       allow_nan=True)
    feed(solver, poison_at=3)
    solver.solve()
    assert solver.iter == 6
    assert np.isnan(solver.net.params["ip1"][0].data).all()


def test_train_net_stops_on_a_diverging_loss_and_allow_nan_goes_on(tmp_path, capsys):
    # DummyData, so the tool feeds itself; a huge rate makes the loss overflow.
    model = write(tmp_path / "d.prototxt", """
        name: "d"
        layer { name: "data" type: "DummyData" top: "data" top: "label"
                dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 1 }
                                   data_filler { type: "gaussian" std: 1 }
                                   data_filler { type: "constant" value: 1 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param { num_output: 1 weight_filler { type: "gaussian" } } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }
        """)
    prefix = str(tmp_path / "d")
    text = SOLVER.format(net=model, prefix=prefix)
    solver = write(tmp_path / "s.prototxt", text.replace("base_lr: 0.01", "base_lr: 1e18")
                   .replace("max_iter: 2", "max_iter: 30"))
    code, out = run_tool(train_net, capsys, "--solver", solver, "--no-plot")
    assert code == 1, out
    assert "train_net: error:" in out and "the training loss is" in out and "--allow-nan" in out
    assert "Traceback" not in out
    stopped = [n for n in os.listdir(tmp_path) if n.startswith("d_iter_") and
               n.endswith(".caffemodel")]
    assert len(stopped) == 1
    saved = sppcaffe.Net(model, sppcaffe.TEST, weights=str(tmp_path / stopped[0]))
    assert np.isfinite(saved.params["ip"][0].data).all()
    code, out = run_tool(train_net, capsys, "--solver", solver, "--no-plot", "--allow-nan")
    assert code == 0, out
    assert os.path.isfile(f"{prefix}_iter_30.caffemodel")


# ---------------------------------------------------------------------------
# pycaffe's argument rules for forward and backward
# ---------------------------------------------------------------------------
TWO_OUTPUTS = """
name: "two"
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
layer { name: "twice" type: "Power" bottom: "ip" top: "twice" power_param { scale: 2 } }
"""


def test_forward_takes_only_input_blobs_as_keywords():
    n = net(TWO_OUTPUTS, sppcaffe.TEST)
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"Input blob arguments do not match net inputs: got "
                                         r"\['data', 'prob'\], the net's are \['data'\]; not "
                                         r"inputs: \['prob'\] \(to read \['prob'\], list them "
                                         r"in blobs=\[\.\.\.\]\)"):
        n.forward(data=x, prob=np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="Input blob arguments do not match"):
        n.forward(prob=np.ones((2, 4), np.float32))
    with pytest.raises(TypeError, match=r"takes the input arrays as keywords, e.g. "
                                        r"net.forward\(data=x\)"):
        n.forward(x)
    with pytest.raises(TypeError, match="`blobs` is a list of blob names, got the string 'ip'"):
        n.forward(blobs="ip")
    with pytest.raises(KeyError, match="blobs names 'nope'"):
        n.forward(blobs=["nope"])
    with pytest.raises(TypeError, match="`end` is a layer name, got an array"):
        n.forward(None, None, x)
    out = n.forward(data=x, blobs=["ip"])
    assert set(out) == {"ip", "prob", "twice"}


def test_forward_checks_shapes_and_dtypes_and_still_reshapes():
    n = net(TWO_OUTPUTS, sppcaffe.TEST)
    with pytest.raises(ValueError, match=r"input 'data' has 2 axes, shape \(2, 3\); got an array "
                                         r"of shape \(3,\) \(one item without its batch axis"):
        n.forward(data=np.ones(3, np.float32))
    with pytest.raises(TypeError, match=r"input 'data' must hold real numbers .* got dtype <U1"):
        n.forward(data=np.array([["a", "b", "c"]] * 2))
    with pytest.raises(TypeError, match="got dtype complex128"):
        n.forward(data=np.ones((2, 3), complex))
    # sppcaffe's extension: another batch (or image) size reshapes the input.
    assert n.forward(data=np.ones((5, 3), np.float64))["prob"].shape == (5, 4)


def test_data_layer_tops_fed_from_python_are_accepted(tmp_path):
    text = """
        name: "fed"
        layer { name: "data" type: "ImageData" top: "data" top: "label"
                image_data_param { source: "nowhere.txt" batch_size: 2 } }
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param { num_output: 2 } }
        """
    n = sppcaffe.Net(io.parse_text(text, caffe_pb2.NetParameter()), sppcaffe.TEST,
                     data_shapes={"data": (2, 3, 4, 4), "label": (2,)})
    assert n.inputs == []
    out = n.forward(data=np.ones((2, 3, 4, 4), np.float32))
    assert out["ip"].shape == (2, 2)


def test_backward_takes_only_output_diffs_and_returns_pycaffes_blobs():
    n = net(TWO_OUTPUTS, sppcaffe.TEST)
    n.forward(data=np.ones((2, 3), np.float32))
    g = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"Top diff arguments do not match net outputs: got "
                                         r"\['prob'\], the net's are \['prob', 'twice'\]; "
                                         r"missing: \['twice'\]"):
        n.backward(prob=g)
    with pytest.raises(ValueError, match=r"not outputs: \['ip'\]"):
        n.backward(prob=g, twice=g, ip=g)
    with pytest.raises(ValueError, match=r"the diff of output 'prob' must have its shape "
                                         r"\(2, 4\), got \(4,\)"):
        n.backward(prob=np.ones(4, np.float32), twice=g)
    with pytest.raises(TypeError, match=r"takes the output diffs as keywords, e.g. "
                                        r"net.backward\(prob=g\)"):
        n.backward(g)
    assert set(n.backward(prob=g, twice=g)) == {"data"}
    # With `end`, pycaffe returns the diffs of that layer's bottoms.
    assert set(n.backward(end="prob", diffs=["data"])) == {"ip_ip_0_split_0", "data"}


# ---------------------------------------------------------------------------
# Warnings: once, through logging
# ---------------------------------------------------------------------------
def test_time_net_shows_the_spp_paper_warning_once_as_a_log_line(tmp_path):
    model = write(tmp_path / "spp.prototxt", """
        name: "spp"
        layer { name: "data" type: "Input" top: "data"
                input_param { shape { dim: 1 dim: 2 dim: 10 dim: 10 } } }
        layer { name: "spp" type: "SPP" bottom: "data" top: "spp"
                spp_param { pool: MAX method: PAPER levels: 4 levels: 1 } }
        """)
    result = subprocess.run([sys.executable, "-m", "sppcaffe.cli.time_net", "--model", model,
                             "--iterations", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines()
             if "method PAPER" in line or "warn" in line.lower()]
    assert len(lines) == 1, lines
    assert "layer 'spp' (SPP, method PAPER): on a 10x10 input" in lines[0]
    assert "UserWarning" not in result.stderr
