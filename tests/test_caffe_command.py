"""The `caffe` command (BVLC tools/caffe.cpp): gflags spellings, the four
actions on top of train_net/test_net/time_net, GPU ids, usage, glog's
-log_dir, and a Caffe example script run with only the binary changed."""
import os
import re
import subprocess
import types

import pytest

from sppcaffe.cli import CliError, caffe
from test_demo import demo_checkout
from test_train_net import TINY_NET, TINY_SOLVER

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAFFE = os.path.join(ROOT, "tools", "caffe")
GLOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] ", re.M)


@pytest.fixture(autouse=True)
def no_glog_environment(monkeypatch):
    """caffe reads GLOG_minloglevel, GLOG_log_dir and GLOG_logtostderr, as
    Caffe does; a shell set up for the reference Caffe sets some."""
    for name in ("GLOG_minloglevel", "GLOG_log_dir", "GLOG_logtostderr"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tiny(tmp_path):
    """(solver, net, snapshot prefix) of a net that trains on DummyData."""
    net = tmp_path / "tiny.prototxt"
    net.write_text(TINY_NET)
    prefix = tmp_path / "snapshots" / "tiny"
    solver = tmp_path / "tiny_solver.prototxt"
    solver.write_text(TINY_SOLVER.format(net=net, prefix=prefix))
    return str(solver), str(net), str(prefix)


def run(capsys, *argv):
    """(exit status, stdout, stderr) of `caffe argv` run in this process."""
    try:
        code = caffe.main(list(argv))
    except SystemExit as exit_:      # argparse's errors, from the tool behind an action
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["train", "-solver", "s.prototxt"],
    ["train", "--solver", "s.prototxt"],
    ["train", "-solver=s.prototxt"],
    ["train", "--solver=s.prototxt"],
    ["--solver=s.prototxt", "train"],
    ["-solver", "s.prototxt", "train"],
])
def test_gflags_spellings(argv):
    assert caffe.parse_command_line(argv) == ([("solver", "s.prototxt")], ["train"])


def test_booleans_repeats_and_the_end_of_flags():
    flags, positional = caffe.parse_command_line(
        ["train", "-no_plot", "-force_backward=false", "-nono_progress", "-stage", "a,b",
         "--stage=c", "--", "-solver"])
    assert flags == [("no_plot", "true"), ("force_backward", "false"), ("no_progress", "false"),
                     ("stage", "a,b"), ("stage", "c")]
    assert positional == ["train", "-solver"]
    # A value that looks like a flag is still the value, as in gflags.
    assert caffe.parse_command_line(["-weights", "-x.caffemodel"])[0] == [("weights",
                                                                            "-x.caffemodel")]


@pytest.mark.parametrize("argv, message", [
    (["train", "-bogus", "1"], "unknown command line flag 'bogus'"),
    (["train", "-solver"], "flag 'solver' is missing its argument"),
    (["train", "-no_plot=maybe"], "illegal value 'maybe' specified for bool flag 'no_plot'"),
])
def test_bad_flags(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 1 and err.startswith(f"caffe: error: {message}")


def test_flags_become_the_tools_arguments():
    flags, _ = caffe.parse_command_line(
        ["-solver", "s", "-weights", "a.caffemodel,b.caffemodel", "-stage", "x,y", "-stage", "z",
         "-level", "2", "-sigint_effect", "snapshot", "-sighup_effect=none", "-iterations", "7",
         "-model", "ignored", "-iters", "3", "-set", "base_lr=0.1", "-no_progress"])
    args = caffe.tool_arguments("train", flags, gpu=None)
    assert (args.solver, args.weights, args.stage, args.level) == \
        ("s", "a.caffemodel,b.caffemodel", ["x", "y", "z"], 2)
    assert (args.sigint_effect, args.sighup_effect) == ("snapshot", "none")
    assert (args.iters, args.settings, args.no_progress, args.gpu) == (3, ["base_lr=0.1"], True,
                                                                       None)
    # -iterations and -model are Caffe flags train does not read: ignored, as in Caffe.
    args = caffe.tool_arguments("time", caffe.parse_command_line(
        ["-model", "m", "-phase", "TEST", "-data_shape", "data=1,3,8,8", "-solver", "s"])[0],
        gpu=0)
    assert (args.model, args.phase, args.data_shape, args.gpu, args.iterations) == \
        ("m", "TEST", [("data", (1, 3, 8, 8))], "0", 50)
    with pytest.raises(CliError, match="-data_shape is not an option of `caffe train`"):
        caffe.tool_arguments("train", [("solver", "s"), ("data_shape", "x=1")], gpu=None)


def test_usage(capsys):
    for argv in ([], ["-help"], ["--help"]):
        code, out, _ = run(capsys, *argv)
        assert code == 0
        assert out.startswith("caffe: command line brew\nusage: caffe <command> <args>\n")
        for command in ("train", "test", "device_query", "time"):
            assert re.search(rf"^  {command} +\S", out, re.M)
        for flag in caffe.CAFFE_FLAGS:
            assert re.search(rf"^    -{flag.name} \(", out, re.M)
        assert "-data_shape NAME=D0,D1,..." in out and "-log_dir" in out
    code, out, _ = run(capsys, "-version")
    assert code == 0 and out.startswith("caffe version 1.0.0")


@pytest.mark.parametrize("argv, message", [
    (["foo"], "Unknown action: foo; available caffe actions: device_query, test, time, train"),
    (["train", "extra"], "one action expected, got 2: train extra"),
    (["train"], "Need a solver definition to train (-solver)"),
    (["test", "-model", "m"], "Need model weights to score (-weights)"),
    (["time"], "Need a model definition to time (-model)"),
    (["train", "-solver", "s", "-snapshot", "x", "-weights", "w"],
     "Give a snapshot to resume training or weights to finetune but not both."),
    (["train", "-solver", "missing.prototxt"], "cannot read solver 'missing.prototxt'"),
    (["train", "-solver", "s", "-gpu", "zero"], "-gpu expects device ids separated by ','"),
    (["train", "-solver", "s", "-gpu", "0,1"], "names 2 GPUs: multi-GPU training is not "
                                               "supported"),
])
def test_errors(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert err.startswith("caffe: error: ") and message in err, err


# ---------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------
def test_train_test_time(tiny, capsys):
    solver, net, prefix = tiny
    code, _, err = run(capsys, "train", f"--solver={solver}", "-no_plot")
    assert code == 0, err
    for line in ("Use CPU.", "Solving tiny", "Iteration 20, Testing net (#0)",
                 "Test net output #0: accuracy = ", "Train net output #0: loss = ",
                 "Iteration 15, lr = 0.05", "Optimization Done."):
        assert line in err
    assert all(GLOG_LINE.match(line) for line in err.splitlines() if "] " in line[:40])
    weights = prefix + "_iter_20.caffemodel"
    assert os.path.isfile(weights) and os.path.isfile(prefix + "_iter_20.solverstate")

    code, _, err = run(capsys, "test", "-model", net, "-weights", weights, "-iterations", "2")
    assert code == 0, err
    assert "Running for 2 iterations." in err and "Batch 1, accuracy = " in err
    assert re.search(r"\] loss = [-0-9.e]+ \(\* 1 = [-0-9.e]+ loss\)$", err, re.M)

    code, out, err = run(capsys, "time", "-model", net, "-iterations", "3", "-phase", "TEST")
    assert code == 0 and out == ""
    assert re.search(r"^I\d{4} .*\] Testing for 3 iterations\.$", err, re.M)
    assert re.search(r"\]       conv\tforward: [0-9.e-]+ ms\.$", err, re.M)
    assert re.search(r"\] Average Forward-Backward: [0-9.e-]+ ms\.$", err, re.M)


def test_resume_and_finetune(tiny, capsys):
    solver, net, prefix = tiny
    assert run(capsys, "train", "-solver", solver, "-iters", "10", "-no_plot")[0] == 0
    code, _, err = run(capsys, "train", "-solver", solver, "-snapshot",
                       prefix + "_iter_10.solverstate", "-no_plot")
    assert code == 0 and f"Resuming from {prefix}_iter_10.solverstate" in err
    assert "Iteration 20, Testing net" in err and "Iteration 5, lr" not in err
    first, second = prefix + "_iter_10.caffemodel", prefix + "_iter_20.caffemodel"
    code, _, err = run(capsys, "train", "-solver", solver, "-weights", f"{first},{second}",
                       "-iters", "1", "-no_plot")
    assert code == 0
    assert f"Finetuning from {first}" in err and f"Finetuning from {second}" in err


def test_the_shipped_demo_solver(tmp_path, capsys, monkeypatch):
    """`caffe train --solver=solvers/demo_spp.prototxt` from the repository
    root (a copy with a small demo set), a few iterations."""
    monkeypatch.chdir(demo_checkout(tmp_path, train_per_class=1, test_per_class=1))
    code, _, err = run(capsys, "train", "--solver=solvers/demo_spp.prototxt", "-iters", "4",
                       "-set", "test_iter=2", "-set", "test_interval=4", "-set", "display=2",
                       "-no_plot")
    assert code == 0, err
    assert "Solving demo_spp" in err and "Iteration 4, Testing net (#0)" in err
    assert os.path.isfile("snapshots/demo_spp/demo_spp_iter_4.caffemodel")


def test_time_a_shipped_model(capsys):
    code, _, err = run(capsys, "time", "-model",
                       os.path.join(ROOT, "models", "demo_spp", "deploy.prototxt"),
                       "-iterations", "3")
    assert code == 0, err
    assert "Average Forward pass" in err and "*** Benchmark ends ***" in err


def test_log_dir_and_minloglevel(tiny, tmp_path, capsys, monkeypatch):
    solver, _, _ = tiny
    logs = tmp_path / "logs"
    code, _, err = run(capsys, "train", "-solver", solver, "-iters", "5", "-no_plot",
                       "-log_dir", str(logs), "-minloglevel", "1")
    assert code == 0 and "Solving" not in err
    info = logs / "caffe.INFO"
    assert os.path.islink(info)
    assert re.fullmatch(r"caffe\..+\..+\.log\.INFO\.\d{8}-\d{6}\.\d+", os.readlink(info))
    text = info.read_text()
    assert text.startswith("Log file created at: ") and "] Solving tiny" not in text
    # At level 0 (glog's default, here from the environment) the file has the whole log.
    monkeypatch.setenv("GLOG_minloglevel", "0")
    assert run(capsys, "train", "-solver", solver, "-iters", "5", "-no_plot",
               f"--log_dir={logs}")[0] == 0
    text = info.read_text()
    assert "] Solving tiny" in text and "Iteration 5, loss = " in text
    assert GLOG_LINE.search(text)


def test_caffe_example_script_with_only_the_binary_changed(tiny, tmp_path):
    """examples/mnist/train_lenet.sh, with ./build/tools/caffe replaced."""
    solver, _, prefix = tiny
    script = tmp_path / "train_tiny.sh"
    script.write_text(f"#!/usr/bin/env sh\nset -e\n\n{CAFFE} train --solver={solver} $@\n")
    result = subprocess.run(["sh", str(script), "-sighup_effect", "none", "-no_plot"],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr
    assert "Optimization Done." in result.stderr
    assert os.path.isfile(prefix + "_iter_20.caffemodel")


# ---------------------------------------------------------------------------
# GPUs
# ---------------------------------------------------------------------------
def test_gpu_ids(monkeypatch, capsys):
    monkeypatch.setattr(caffe, "gpu_count", lambda: 3)
    assert caffe.gpu_ids("") == [] and caffe.gpu_ids("1") == [1]
    assert caffe.gpu_ids("all") == [0, 1, 2] and caffe.gpu_ids("2,0") == [2, 0]
    restore = caffe.progress.configure_logging()
    try:
        assert caffe.single_gpu("all") == 0
        assert caffe.single_gpu(None) is None
    finally:
        restore()
    err = capsys.readouterr().err
    assert "Not using GPU #2 for single-GPU function" in err
    assert err.index("GPU #2") < err.index("GPU #1")


def test_no_gpu_is_said_clearly(capsys, monkeypatch):
    def no_gpu():
        raise caffe.backends.GPUUnavailable("no NVIDIA driver here")
    monkeypatch.setattr(caffe.backends, "current_device", no_gpu)
    for argv in (["device_query", "-gpu", "0"], ["time", "-model", "m", "-gpu", "0"],
                 ["train", "-solver", "s", "-gpu", "all"]):
        code, _, err = run(capsys, *argv)
        assert code == 1
        assert "caffe: error: -gpu 0: no NVIDIA driver here" in err


def test_device_query_without_gpu_flag(capsys):
    code, _, err = run(capsys, "device_query")
    assert code == 0 and "Querying GPUs \n" in err


class FakeDevice:
    """What device_properties reads of a CudaDevice: PyCUDA's Device and driver."""
    names = ["MAX_SHARED_MEMORY_PER_BLOCK", "MAX_REGISTERS_PER_BLOCK", "WARP_SIZE", "MAX_PITCH",
             "MAX_THREADS_PER_BLOCK", "MAX_BLOCK_DIM_X", "MAX_BLOCK_DIM_Y", "MAX_BLOCK_DIM_Z",
             "MAX_GRID_DIM_X", "MAX_GRID_DIM_Y", "MAX_GRID_DIM_Z", "CLOCK_RATE",
             "TOTAL_CONSTANT_MEMORY", "TEXTURE_ALIGNMENT", "GPU_OVERLAP", "MULTIPROCESSOR_COUNT",
             "KERNEL_EXEC_TIMEOUT"]
    values = [49152, 65536, 32, 2147483647, 1024, 1024, 1024, 64, 2147483647, 65535, 65535,
              1980000, 65536, 512, 1, 132, 0]

    def __init__(self):
        self.cuda = types.SimpleNamespace(device_attribute=types.SimpleNamespace(
            **{name: name for name in self.names}))
        self.gpu = types.SimpleNamespace(
            get_attributes=lambda: dict(zip(self.names, self.values)),
            compute_capability=lambda: (9, 0), name=lambda: "NVIDIA H200",
            total_memory=lambda: 150106062848)


def test_device_query_prints_what_caffe_prints(capsys, monkeypatch):
    monkeypatch.setattr(caffe, "open_gpu", lambda device_id: FakeDevice())
    code, _, err = run(capsys, "device_query", "-gpu", "0")
    assert code == 0
    messages = [line.split("] ", 1)[1] for line in err.splitlines()]
    assert messages == [
        "Querying GPUs 0",
        "Device id:                     0",
        "Major revision number:         9",
        "Minor revision number:         0",
        "Name:                          NVIDIA H200",
        "Total global memory:           150106062848",
        "Total shared memory per block: 49152",
        "Total registers per block:     65536",
        "Warp size:                     32",
        "Maximum memory pitch:          2147483647",
        "Maximum threads per block:     1024",
        "Maximum dimension of block:    1024, 1024, 64",
        "Maximum dimension of grid:     2147483647, 65535, 65535",
        "Clock rate:                    1980000",
        "Total constant memory:         65536",
        "Texture alignment:             512",
        "Concurrent copy and execution: Yes",
        "Number of multiprocessors:     132",
        "Kernel execution timeout:      No"]


def test_device_query_on_the_host_build(capsys, monkeypatch):
    monkeypatch.setenv("SPPCAFFE_GPU", "host")
    monkeypatch.setitem(caffe.backends._state, "device", None)
    code, _, err = run(capsys, "device_query", "-gpu", "0")
    assert code == 0, err
    assert "Name:                          host (CUDA kernels built for the CPU)" in err
    assert "not a GPU" in err
