"""tools/train_net and tools/test_net (`caffe train` / `caffe test`), the
--cfg/--set overrides, and the shipped solvers."""
import csv
import glob
import io as io_module
import logging
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import sppcaffe
from sppcaffe import io
from sppcaffe.cli import config, progress, test_net, train_net
from sppcaffe.proto import caffe_pb2
from sppcaffe.solvers import SOLVER_TYPES, get_solver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
SOLVERS = sorted(glob.glob(os.path.join(ROOT, "solvers", "*.prototxt")))
NUMBER = r"[-0-9.e+naif]+"

# Trains without any data file: DummyData draws fresh Gaussian images each
# pass and every label is class 1, so the loss falls as soon as fc learns.
TINY_NET = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 4 dim: 3 dim: 6 dim: 6 } shape { dim: 4 }
                           data_filler { type: "gaussian" std: 1 }
                           data_filler { type: "constant" value: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy"
        include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""
TINY_SOLVER = """
net: "{net}"
test_iter: 2
test_interval: 10
base_lr: 0.05
momentum: 0.9
lr_policy: "fixed"
display: 5
max_iter: 20
snapshot: 10
snapshot_prefix: "{prefix}"
solver_mode: CPU
random_seed: 1
"""


@pytest.fixture
def tiny(tmp_path):
    """(solver path, snapshot prefix) of the tiny net; the snapshot folder
    does not exist yet (train_net creates it)."""
    net = tmp_path / "tiny.prototxt"
    net.write_text(TINY_NET)
    prefix = tmp_path / "snapshots" / "tiny"
    solver = tmp_path / "tiny_solver.prototxt"
    solver.write_text(TINY_SOLVER.format(net=net, prefix=prefix))
    return str(solver), str(prefix)


def run_main(module, capsys, *argv):
    """(exit code, stderr) of a tool's main() run in this process."""
    try:
        code = module.main(list(argv))
    except SystemExit as exit_:          # argparse errors
        code = exit_.code
    return code, capsys.readouterr().err


def read_curves(prefix):
    with open(prefix + "_training.csv", newline="") as f:
        return list(csv.DictReader(f))


def series(rows, phase, output):
    return [(int(r["iteration"]), float(r["value"])) for r in rows
            if r["phase"] == phase and r["output"] == output]


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def test_trains_logs_snapshots_and_writes_curves(tiny, capsys):
    solver, prefix = tiny
    code, err = run_main(train_net, capsys, "--solver", solver)
    assert code == 0, err
    # Caffe's log lines with glog's prefix, as parse_log.py expects them.
    glog = r"I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] "
    assert re.search(glog + rf"Iteration 5 \({NUMBER} iter/s, {NUMBER}s/5 iters\), "
                            rf"loss = {NUMBER}\n", err)
    assert re.search(glog + rf"    Train net output #0: loss = {NUMBER} \(\* 1 = {NUMBER} loss\)",
                     err)
    assert re.search(glog + rf"    Test net output #0: accuracy = {NUMBER}\n", err)
    assert re.search(r"Iteration 10, lr = 0.05\n", err)
    assert "Optimization Done." in err and "Traceback" not in err
    assert os.path.isdir(os.path.dirname(prefix))                  # created for the snapshots
    for it in (10, 20):
        assert os.path.isfile(f"{prefix}_iter_{it}.caffemodel")
        assert os.path.isfile(f"{prefix}_iter_{it}.solverstate")
    rows = read_curves(prefix)
    losses = series(rows, "train", "smoothed_loss")
    assert [it for it, _ in losses] == [0, 5, 10, 15]
    assert losses[-1][1] < losses[0][1]
    assert [it for it, _ in series(rows, "test", "accuracy")] == [0, 10, 20]
    assert series(rows, "test", "accuracy")[-1][1] == 1.0       # every label is 1
    assert series(rows, "train", "lr")[0] == (0, 0.05)
    with open(prefix + "_training.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_progress_bar_counts_iterations_and_shows_scores(tiny):
    solver_path, prefix = tiny
    os.makedirs(os.path.dirname(prefix))
    solver = get_solver(solver_path)
    stream = io_module.StringIO()
    bar = progress.ProgressBar(solver, enabled=True, stream=stream)
    solver.step(11)                             # tests at 0 and 10, displays at 0, 5, 10
    bar.close()
    text = stream.getvalue()
    assert "11/20" in text and "it/s" not in text and "iter/s" in text
    assert re.search(r"loss=[0-9.]+", text) and "test accuracy=1" in text
    assert "test loss" not in text              # losses are in the loss column already


def blas_thread_counts():
    from threadpoolctl import threadpool_info
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_small_nets_get_one_blas_thread_for_the_run_only(tiny, capsys):
    solver, _ = tiny
    before = blas_thread_counts()
    code, err = run_main(train_net, capsys, "--solver", solver, "--iters", "1", "--no-plot")
    assert code == 0, err
    assert "BLAS threads: 1 for this small net (largest layer 0.0 M multiply-adds" in err
    assert blas_thread_counts() == before


def test_largest_layer_macs():
    net = sppcaffe.Net(io.parse_text(TINY_NET, caffe_pb2.NetParameter()), sppcaffe.TRAIN)
    # conv: 4 x 4x4x4 outputs of 3x3x3 products; fc: 4 x 3 outputs of 64 products
    assert train_net.largest_layer_macs(net) == max(4 * 4 * 4 * 4 * 27, 4 * 3 * 64)
    zf5 = sppcaffe.Net(shrunk_solver("zf5_spp").net_param, sppcaffe.TRAIN,
                       data_shapes={"data": (1, 3, 224, 224), "label": (1,)})
    assert train_net.largest_layer_macs(zf5) > 10 * train_net.SMALL_NET_MACS


def test_iters_overrides_max_iter_and_no_plot(tiny, capsys):
    solver, prefix = tiny
    code, err = run_main(train_net, capsys, "--solver", solver, "--iters", "3", "--no-plot")
    assert code == 0, err
    assert os.path.isfile(f"{prefix}_iter_3.caffemodel")       # snapshot_after_train
    assert not os.path.exists(f"{prefix}_iter_10.caffemodel")
    assert not os.path.exists(prefix + "_training.csv")


def test_weights_fine_tune_train_and_test_nets(tiny, tmp_path, capsys):
    solver, prefix = tiny
    source = sppcaffe.Net(str(tmp_path / "tiny.prototxt"), sppcaffe.TRAIN)
    rng = np.random.default_rng(5)
    for blobs in source.params.values():
        for blob in blobs:
            blob.data[...] = rng.standard_normal(blob.shape)
    weights = str(tmp_path / "given.caffemodel")
    source.save(weights)
    # One step at base_lr 0: the final snapshot holds the weights training started from.
    code, err = run_main(train_net, capsys, "--solver", solver, "--weights", weights,
                         "--iters", "1", "--set", "snapshot=0", "--set", "base_lr=0")
    assert code == 0, err
    assert f"Finetuning from {weights}" in err
    assert "copied weights into 2 of the 2 parameter layers of net 'tiny'" in err
    trained = sppcaffe.Net(str(tmp_path / "tiny.prototxt"), sppcaffe.TEST,
                           weights=f"{prefix}_iter_1.caffemodel")
    for name, blobs in source.params.items():
        for a, b in zip(blobs, trained.params[name]):
            np.testing.assert_array_equal(a.data, b.data)


def test_resume_from_snapshot_keeps_earlier_curves(tiny, capsys):
    solver, prefix = tiny
    assert run_main(train_net, capsys, "--solver", solver, "--iters", "10")[0] == 0
    code, err = run_main(train_net, capsys, "--solver", solver,
                         "--snapshot", f"{prefix}_iter_10.solverstate")
    assert code == 0, err
    assert f"Resuming from {prefix}_iter_10.solverstate" in err
    assert re.search(r"Iteration 15 \(", err) and not re.search(r"Iteration 5 \(", err)
    assert os.path.isfile(f"{prefix}_iter_20.caffemodel")
    losses = [it for it, _ in series(read_curves(prefix), "train", "smoothed_loss")]
    assert losses == [0, 5, 10, 15]            # 0 and 5 from the first run


def test_weights_and_snapshot_together_is_an_error(tiny, capsys):
    solver, prefix = tiny
    code, err = run_main(train_net, capsys, "--solver", solver, "--weights", "a.caffemodel",
                         "--snapshot", "b.solverstate")
    assert code == 2
    assert "--snapshot to resume training or --weights to fine-tune, not both" in err


@pytest.mark.parametrize("module", [train_net, test_net])
def test_gpu_without_pycuda_gives_a_clear_error(module, tiny, capsys, monkeypatch):
    try:
        import pycuda  # noqa: F401
        pytest.skip("PyCUDA is installed here")
    except ImportError:
        pass
    monkeypatch.delenv("SPPCAFFE_GPU", raising=False)
    solver, _ = tiny
    argv = ["--solver", solver] if module is train_net else ["--model", solver, "--weights", "w"]
    code, err = run_main(module, capsys, *argv, "--gpu", "0")
    assert code == 1
    assert "error: --gpu 0: GPU mode needs PyCUDA" in err and "README" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("value, message", [("0,1", "one GPU at a time"), ("all", "one GPU at a time"),
                                            ("x", "expects a GPU id")])
def test_gpu_ids_are_checked(tiny, capsys, value, message):
    solver, _ = tiny
    code, err = run_main(train_net, capsys, "--solver", solver, "--gpu", value)
    assert code == 1 and message in err


def test_train_net_on_the_host_build_of_the_gpu_kernels(tiny, capsys, monkeypatch):
    """--gpu 0 with SPPCAFFE_GPU=host runs the whole GPU path (kernels
    compiled for the CPU) and learns what the CPU run learns."""
    from sppcaffe import backends
    monkeypatch.setenv("SPPCAFFE_GPU", "host")
    backends.use_device(None)
    solver, prefix = tiny
    code, err = run_main(train_net, capsys, "--solver", solver)
    assert code == 0, err
    cpu_losses = series(read_curves(prefix), "train", "loss")
    try:
        code, err = run_main(train_net, capsys, "--solver", solver, "--gpu", "0")
    finally:
        backends.use_device(None)
    assert code == 0, err
    assert "Use GPU with device ID 0 (host" in err and not backends.gpu_mode()
    gpu_losses = series(read_curves(prefix), "train", "loss")
    assert len(gpu_losses) == len(cpu_losses) > 1
    np.testing.assert_allclose([v for _, v in gpu_losses], [v for _, v in cpu_losses], rtol=1e-3)


def test_bad_inputs_exit_1_without_traceback(tiny, tmp_path, capsys):
    solver, _ = tiny
    broken = tmp_path / "broken.prototxt"
    broken.write_text('net: "x.prototxt"\nbase_lr: 0.01\nmax_iter: ten\n')
    missing_net = tmp_path / "missing_net.prototxt"
    missing_net.write_text('net: "no/such/net.prototxt"\nbase_lr: 0.01\nmax_iter: 1\n')
    cases = [
        (["--solver", str(tmp_path / "nope.prototxt")], r"cannot read solver .*nope.prototxt"),
        (["--solver", str(broken)], r"broken.prototxt:3:\d+: .*max_iter"),
        (["--solver", str(missing_net)], r"no/such/net.prototxt' not found"),
        (["--solver", solver, "--set", "base_rl=0.1"], r"unknown field 'base_rl'.*base_lr"),
        (["--solver", solver, "--set", "max_iter=1.5"], r"max_iter expects an integer"),
        (["--solver", solver, "--weights", str(tmp_path / "w.caffemodel")],
         r"cannot read weights .*w.caffemodel"),
        (["--solver", solver, "--cfg", str(tmp_path / "none.yml")], r"cannot read config"),
    ]
    for argv, message in cases:
        code, err = run_main(train_net, capsys, *argv)
        assert code == 1, (argv, err)
        assert re.search(r"train_net: error: .*" + message, err), (argv, err)
        assert "Traceback" not in err


def test_tool_runs_as_an_executable(tiny):
    solver, prefix = tiny
    result = subprocess.run([os.path.join(TOOLS, "train_net"), "--solver", solver, "--iters", "2",
                             "--no-plot", "--threads", "1"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "BLAS threads: 1" in result.stderr
    assert "Optimization Done." in result.stderr
    assert "\r" not in result.stderr              # no progress bar: stderr is not a terminal
    assert os.path.isfile(f"{prefix}_iter_2.caffemodel")


@pytest.mark.parametrize("argv, starts", [
    (["--solver", "s.prototxt"], True),
    (["--solver", "s.prototxt", "--no-plot"], False),
    (["--help"], False),
])
def test_the_launcher_starts_the_curve_helper_only_for_runs_that_draw(monkeypatch, argv, starts):
    from sppcaffe.cli import curve_plot
    helper = curve_plot.PlotProcess.for_command_line(argv)
    try:
        assert (helper is not None) == starts
    finally:
        if helper is not None:
            helper.close()
    monkeypatch.setenv("PMI_RANK", "1")                # another MPI rank: rank 0 draws
    assert curve_plot.PlotProcess.for_command_line(["--solver", "s.prototxt"]) is None


@pytest.mark.parametrize("no_plot", [False, True])
def test_train_net_uses_or_ends_the_helper_it_is_given(tiny, capsys, no_plot):
    """tools/train_net starts the helper before importing sppcaffe and hands
    it to main(): the curves are drawn by it, and a run that draws none
    ends it."""
    from sppcaffe.cli import curve_plot
    solver, prefix = tiny
    helper = curve_plot.PlotProcess()
    proc = helper.proc
    code = train_net.main(["--solver", solver, "--iters", "2"] + ["--no-plot"] * no_plot,
                          plot_helper=helper)
    capsys.readouterr()
    assert code == 0
    assert helper.proc is None and proc.poll() is not None       # used up or ended
    assert os.path.isfile(prefix + "_training.png") == (not no_plot)
    if not no_plot:
        assert proc.returncode == 0                    # it answered (not killed)


def test_sigint_snapshots_and_exits_cleanly(tiny):
    solver, prefix = tiny
    proc = subprocess.Popen([sys.executable, os.path.join(TOOLS, "train_net"), "--solver", solver,
                             "--iters", "100000000", "--set", "snapshot=0"],
                            stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        for line in proc.stderr:                 # wait until training is under way
            lines.append(line)
            if re.search(r"Iteration 10 \(", line) or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = "".join(lines) + rest
    assert proc.returncode == 0, log
    assert "Optimization stopped early." in log and "Traceback" not in log
    stopped_at = int(re.findall(r"_iter_(\d+)\.caffemodel", log)[-1])
    assert stopped_at >= 10
    assert os.path.isfile(f"{prefix}_iter_{stopped_at}.caffemodel")
    assert os.path.isfile(f"{prefix}_iter_{stopped_at}.solverstate")
    assert os.path.isfile(prefix + "_training.png")
    assert not glob.glob(os.path.join(os.path.dirname(prefix), "*.tmp"))


# ---------------------------------------------------------------------------
# test_net
# ---------------------------------------------------------------------------
def test_test_net_prints_caffe_lines(tmp_path, capsys):
    model = tmp_path / "tiny.prototxt"
    model.write_text(TINY_NET)
    net = sppcaffe.Net(str(model), sppcaffe.TEST)
    weights = str(tmp_path / "w.caffemodel")
    net.save(weights)
    code, err = run_main(test_net, capsys, "--model", str(model), "--weights", weights,
                         "--iterations", "3")
    assert code == 0, err
    assert "Running for 3 iterations." in err
    batch = {(int(i), name): float(v) for i, name, v in
             re.findall(rf"\] Batch (\d+), (\w+) = ({NUMBER})\n", err)}
    assert sorted(batch) == [(i, n) for i in range(3) for n in ("accuracy", "loss")]
    mean_loss = np.mean([batch[i, "loss"] for i in range(3)], dtype=np.float32)
    assert re.search(rf"\] Loss: {NUMBER}\n", err)
    accuracy = float(re.search(rf"\] accuracy = ({NUMBER})\n", err).group(1))
    assert accuracy == pytest.approx(np.mean([batch[i, "accuracy"] for i in range(3)]), abs=1e-6)
    loss, weighted = re.search(rf"\] loss = ({NUMBER}) \(\* 1 = ({NUMBER}) loss\)\n", err).groups()
    assert float(loss) == pytest.approx(mean_loss, rel=1e-5) and loss == weighted


def test_test_net_missing_weights(tmp_path, capsys):
    model = tmp_path / "tiny.prototxt"
    model.write_text(TINY_NET)
    code, err = run_main(test_net, capsys, "--model", str(model), "--weights",
                         str(tmp_path / "none.caffemodel"))
    assert code == 1 and "cannot read weights" in err and "Traceback" not in err


# ---------------------------------------------------------------------------
# --cfg / --set
# ---------------------------------------------------------------------------
def solver_param(text=""):
    return io.parse_text(text, caffe_pb2.SolverParameter())


@pytest.mark.parametrize("setting, field, expected", [
    ("base_lr=0.02", "base_lr", 0.02),
    ("base_lr=1e-3", "base_lr", 0.001),              # YAML 1.1 reads this as a string
    ("max_iter=100", "max_iter", 100),
    ("max_iter=1e4", "max_iter", 10000),
    ("random_seed=-1", "random_seed", -1),
    ("test_initialization=false", "test_initialization", False),
    ("snapshot_diff=yes", "snapshot_diff", True),
    ("lr_policy=step", "lr_policy", "step"),
    ("snapshot_prefix=007", "snapshot_prefix", "007"),  # a string field keeps the text
    ("solver_mode=cpu", "solver_mode", caffe_pb2.SolverParameter.CPU),
    ("snapshot_format=0", "snapshot_format", caffe_pb2.SolverParameter.HDF5),
    ("stepvalue=[10, 20]", "stepvalue", [10, 20]),
    ("test_iter=5", "test_iter", [5]),                # a scalar for a repeated field
    ("weights=[a.caffemodel, b.caffemodel]", "weights", ["a.caffemodel", "b.caffemodel"]),
])
def test_set_is_typed_by_the_field(setting, field, expected):
    param = solver_param("stepvalue: 1 test_iter: 3")
    config.apply_settings(param, [config.Setting(setting)])
    value = getattr(param, field)
    if isinstance(expected, list):
        assert list(value) == expected
    elif isinstance(expected, float):
        assert value == pytest.approx(expected, rel=1e-7)
    else:
        assert value == expected and type(value) is type(expected)


def test_set_nested_fields_and_clearing():
    param = solver_param('snapshot: 50 train_state { stage: "x" }')
    config.apply_settings(param, [config.Setting("train_state.level=2"),
                                  config.Setting("test_state=[{stage: [a]}, {level: 3}]"),
                                  config.Setting("snapshot=")])
    assert param.train_state.level == 2 and list(param.train_state.stage) == ["x"]
    assert [list(s.stage) for s in param.test_state] == [["a"], []]
    assert param.test_state[1].level == 3
    assert not param.HasField("snapshot") and param.snapshot == 0


@pytest.mark.parametrize("setting, message", [
    ("max_iter=1.5", "max_iter expects an integer, got 1.5"),
    ("max_iter=99999999999", "max_iter expects an integer in"),
    ("base_lr=fast", "base_lr expects a number, got 'fast'"),
    ("base_lr=true", "base_lr expects a number"),
    ("test_initialization=maybe", "test_initialization expects true or false"),
    ("solver_mode=TPU", "solver_mode expects one of CPU, GPU"),
    ("stepvalue=[1, x]", r"stepvalue\[1\] expects an integer"),
    ("lr_policy=[a, b]", "lr_policy expects a string"),
    ("train_state=3", "train_state is a NetState message"),
    ("base_rl=0.1", "unknown field 'base_rl' of SolverParameter; did you mean base_lr"),
    ("train_state.levl=1", "unknown field 'train_state.levl' of NetState; did you mean level"),
    ("max_iter.x=1", "'max_iter' is not a single message field"),
    ("zzz=1", r"unknown field 'zzz' of SolverParameter \(see message SolverParameter"),
    ("=1", "expected KEY=VALUE"),
    ("base_lr", "expected KEY=VALUE"),
    ("stepvalue=[1,", "not valid YAML"),
])
def test_bad_settings_are_rejected(setting, message):
    with pytest.raises(config.ConfigError, match=message):
        config.apply_settings(solver_param(), [config.Setting(setting)])


def test_cfg_then_set_then_iters(tiny, tmp_path):
    solver, _ = tiny
    cfg = tmp_path / "over.yml"
    cfg.write_text("base_lr: 0.5\nmax_iter: 7\nlr_policy: multistep\nstepvalue: [3, 5]\n"
                   "momentum: 1e-1\n")
    args = train_net.build_parser().parse_args(
        ["--solver", solver, "--cfg", str(cfg), "--set", "base_lr=0.25", "--set", "max_iter=9",
         "--iters", "11", "--level", "2", "--stage", "s"])
    param = train_net.solver_parameters(args)
    assert param.base_lr == 0.25 and param.max_iter == 11
    assert param.lr_policy == "multistep" and list(param.stepvalue) == [3, 5]
    assert param.momentum == pytest.approx(0.1)
    assert param.train_state.level == 2 and list(param.train_state.stage) == ["s"]
    assert param.test_iter == [2]                    # untouched fields stay


@pytest.mark.parametrize("content, message", [
    ("- a\n- b\n", "expected a mapping"),
    ("base_lr: [\n", "not valid YAML"),
    ("1: 2\n", "keys must be field names"),
])
def test_bad_cfg_files(tmp_path, content, message):
    path = tmp_path / "bad.yml"
    path.write_text(content)
    with pytest.raises(config.ConfigError, match=message):
        config.apply_cfg(solver_param(), config.load_cfg(str(path)), str(path))


def test_empty_cfg_changes_nothing(tmp_path):
    path = tmp_path / "empty.yml"
    path.write_text("# nothing\n")
    param = solver_param("base_lr: 0.1")
    config.apply_cfg(param, config.load_cfg(str(path)), str(path))
    assert param == solver_param("base_lr: 0.1")


# ---------------------------------------------------------------------------
# Shipped solvers
# ---------------------------------------------------------------------------
def test_solvers_are_shipped():
    names = {os.path.basename(p) for p in SOLVERS}
    assert {"demo_spp.prototxt", "zf5_spp.prototxt", "zf5_spp_multisize.prototxt"} <= names


@pytest.mark.parametrize("path", SOLVERS, ids=os.path.basename)
def test_shipped_solver_parses_and_names_a_net(path):
    param = io.read_solver(path)
    assert param.type in SOLVER_TYPES and param.solver_mode == caffe_pb2.SolverParameter.CPU
    net = os.path.join(ROOT, param.net)         # paths are relative to the repository root
    assert os.path.isfile(net)
    io.read_net(net)
    if param.lr_policy == "multistep":          # every drop happens before the end
        assert list(param.stepvalue) == sorted(param.stepvalue)
        assert param.stepvalue[-1] < param.max_iter


@pytest.mark.parametrize("name", ["demo_spp", "zf5_spp", "zf5_spp_multisize"])
def test_training_solvers_test_and_snapshot(name):
    param = io.read_solver(os.path.join(ROOT, "solvers", f"{name}.prototxt"))
    assert param.snapshot_prefix.startswith(f"snapshots/{name}")
    assert len(param.test_iter) == 1 and param.test_interval > 0
    assert param.max_iter % param.test_interval == 0       # a last test at the end


@pytest.mark.parametrize("name", ["zf5_spp", "zf5_spp_multisize"])
def test_zf5_solvers_follow_the_paper(name):
    param = io.read_solver(os.path.join(ROOT, "solvers", f"{name}.prototxt"))
    assert param.base_lr == pytest.approx(0.01)
    assert param.lr_policy == "multistep" and param.gamma == pytest.approx(0.1)
    assert len(param.stepvalue) == 2                # divided by 10 twice
    assert param.momentum == pytest.approx(0.9) and param.weight_decay == pytest.approx(0.0005)
    assert list(param.test_iter) == [1000]          # 50,000 val images / batch 50
    assert (param.display, param.snapshot) == (20, 10000)
    assert param.snapshot_prefix == f"snapshots/{name}"
    net = io.read_net(os.path.join(ROOT, param.net))
    val = [lp for lp in net.layer if lp.type == "Data" and lp.include[0].phase == caffe_pb2.TEST]
    assert val[0].data_param.batch_size * param.test_iter[0] == 50000


def shrunk_solver(name, batch=1):
    """A shipped ZF-5 solver with fc6/fc7 narrowed to 16 outputs (the
    full ones hold 200 MB of weights): the conv trunk, SPP layer and data
    layers are the shipped ones."""
    param = io.read_solver(os.path.join(ROOT, "solvers", f"{name}.prototxt"))
    net = io.read_net(os.path.join(ROOT, param.net))
    for lp in net.layer:
        if lp.name in ("fc6", "fc7"):
            lp.inner_product_param.num_output = 16
    param.ClearField("net")
    param.net_param.CopyFrom(net)
    param.snapshot = 0
    return param


@pytest.mark.parametrize("name", ["zf5_spp", "zf5_spp_multisize"])
def test_zf5_solver_builds_its_nets(name):
    shapes = {"data": (1, 3, 224, 224), "label": (1,)}
    solver = get_solver(shrunk_solver(name), data_shapes=shapes)
    assert len(solver.test_nets) == 1
    for net in [solver.net] + solver.test_nets:
        net.forward_from_to()
        assert net.blobs["conv5"].shape == (1, 256, 13, 13)
        assert net.blobs["spp"].shape == (1, 256 * 50)


def test_multisize_net_at_180_is_the_papers(caplog):
    """The 180 epoch: conv5 10x10, the same 12800-d SPP output, and the
    PAPER geometry's warning about level 6 (10 mod 6 = 4)."""
    param = shrunk_solver("zf5_spp_multisize")
    data = [lp for lp in param.net_param.layer if lp.type == "Data"]
    train = [lp for lp in data if lp.include[0].phase == caffe_pb2.TRAIN][0]
    assert list(train.transform_param.multi_size) == [224, 180]
    assert train.transform_param.multi_size_mode == caffe_pb2.TransformationParameter.ALTERNATE
    assert all(not len(lp.transform_param.multi_size) for lp in data if lp is not train)
    with caplog.at_level(logging.WARNING, logger="sppcaffe"):
        net = sppcaffe.Net(param.net_param, sppcaffe.TRAIN,
                           data_shapes={"data": (1, 3, 180, 180), "label": (1,)})
        net.forward_from_to()
    assert re.search(r"10x10 input .*\[6\] bins per side", caplog.text)
    assert net.blobs["conv5"].shape == (1, 256, 10, 10)
    assert net.blobs["spp"].shape == (1, 256 * 50)
