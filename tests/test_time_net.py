"""tools/time_net: `caffe time`'s report for a net, and clear errors."""
import math
import os
import re
import subprocess
import sys

import pytest

import sppcaffe
from sppcaffe.cli import time_net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "time_net")

LAYERS = ["data", "label", "conv1", "relu1", "pool1", "fc2", "loss"]
TINY_NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc2" type: "InnerProduct" bottom: "pool1" top: "fc2"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc2" bottom: "label" top: "loss" }
"""
# The same net reading a database, with accuracy in TEST: labels reach
# three readers through a Split layer.
DATA_NET = TINY_NET.replace(
    'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }\n'
    'layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }',
    'layer { name: "data" type: "Data" top: "data" top: "label"\n'
    '        transform_param { crop_size: 8 } data_param { source: "some_lmdb" batch_size: 4 } }'
) + """
layer { name: "acc" type: "Accuracy" bottom: "fc2" bottom: "label" top: "acc" include { phase: TEST } }
layer { name: "acc5" type: "Accuracy" bottom: "fc2" bottom: "label" top: "acc5"
        accuracy_param { top_k: 5 } include { phase: TEST } }
"""
NUMBER = r"[0-9.e+-]+"


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.prototxt"
    path.write_text(TINY_NET)
    return str(path)


@pytest.fixture
def data_net(tmp_path):
    path = tmp_path / "data_net.prototxt"
    path.write_text(DATA_NET)
    return str(path)


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def check_report(out, layers, iterations):
    """The lines of caffe time's report, in order, with plausible numbers."""
    lines = out.splitlines()
    loss = float(re.search(rf"^Initial loss: ({NUMBER})$", out, re.M).group(1))
    for j in range(1, iterations + 1):
        assert re.search(rf"^Iteration: {j} forward-backward time: {NUMBER} ms\.$", out, re.M)
    per_layer = [line for line in lines if "\tforward: " in line or "\tbackward: " in line]
    expected = [f"{name:>10}\t{d}" for name in layers for d in ("forward", "backward")]
    assert [line.split(": ")[0] for line in per_layer] == expected
    times = {}
    for line in per_layer:
        m = re.fullmatch(rf"\s*(\S+)\t(forward|backward): ({NUMBER}) ms\.", line)
        assert m, line
        times[m.group(1), m.group(2)] = float(m.group(3))
    summary = [line for line in lines if line.startswith(("Average F", "Average B", "Total Time"))]
    assert [s.split(":")[0] for s in summary] == [
        "Average Forward pass", "Average Backward pass", "Average Forward-Backward", "Total Time"]
    values = [float(re.fullmatch(rf".*: ({NUMBER}) ms\.", s).group(1)) for s in summary]
    forward, backward, both, total = values
    assert 0 < forward <= both and 0 <= backward <= both
    assert total == pytest.approx(both * iterations, rel=1e-3)
    assert sum(t for (_, d), t in times.items() if d == "forward") <= forward * 1.01
    return loss, times


def test_tiny_net_report(tiny):
    result = run_tool("--model", tiny, "--iterations", "3")
    assert result.returncode == 0, result.stderr
    loss, times = check_report(result.stdout, LAYERS, 3)
    # Random labels are valid classes of the 5-way classifier: a finite loss.
    assert math.isfinite(loss) and loss > 0
    assert times["conv1", "forward"] > 0 and times["conv1", "backward"] > 0


def test_gpu_report_on_the_host_build(tiny):
    """--gpu 0 runs the GPU path (SPPCAFFE_GPU=host: the kernels built for
    the CPU) with the same report and the same initial loss."""
    cpu = run_tool("--model", tiny, "--iterations", "1")
    env = dict(os.environ, SPPCAFFE_GPU="host")
    gpu = subprocess.run([sys.executable, TOOL, "--model", tiny, "--iterations", "1", "--gpu", "0"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert gpu.returncode == 0, gpu.stderr
    assert "Use GPU (host" in gpu.stdout
    assert check_report(gpu.stdout, LAYERS, 1)[0] == pytest.approx(check_report(cpu.stdout, LAYERS, 1)[0],
                                                                   rel=1e-4)


def test_data_layer_needs_shapes(data_net):
    result = run_tool("--model", data_net)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "'data' (Data)" in result.stderr
    # The hint is built from the layer's batch_size and crop_size.
    assert "--data-shape data=4,3,8,8 --data-shape label=4" in result.stderr


@pytest.mark.parametrize("phase, layers", [
    ("TRAIN", ["data"] + LAYERS[2:]),
    # In TEST, label and fc2 have three readers each: automatic Split layers.
    ("TEST", ["data", "label_data_1_split", "conv1", "relu1", "pool1", "fc2", "fc2_fc2_0_split",
              "loss", "acc", "acc5"]),
])
def test_data_layer_with_shapes(data_net, capsys, phase, layers):
    code = time_net.main(["--model", data_net, "--iterations", "2", "--phase", phase,
                          "--data-shape", "data=4,3,8,8", "--data-shape", "label=4"])
    assert code == 0
    out = capsys.readouterr().out
    loss, _ = check_report(out, layers, 2)
    assert math.isfinite(loss) and loss > 0


def test_input_shape_override(tiny, capsys):
    assert time_net.main(["--model", tiny, "--iterations", "1",
                          "--data-shape", "data=3,3,8,8", "--data-shape", "label=3"]) == 0
    loss, _ = check_report(capsys.readouterr().out, LAYERS, 1)
    assert math.isfinite(loss)


@pytest.mark.parametrize("args, message", [
    (["--model", "no/such/net.prototxt"], "'no/such/net.prototxt'"),
    (["--weights", "no/such/weights.caffemodel"], "'no/such/weights.caffemodel'"),
    (["--data-shape", "bogus=2,3"], "bogus"),
])
def test_errors_are_clear(tiny, capsys, args, message):
    argv = (["--model", tiny] if "--model" not in args else []) + args
    assert time_net.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("time_net: error: ") and message in err


def test_bad_model_path_from_the_command_line():
    result = run_tool("--model", "no/such/net.prototxt")
    assert result.returncode != 0
    assert "no/such/net.prototxt" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("text", ["data", "data=", "=1,2", "data=1,x", "data=-1"])
def test_bad_data_shape_flag(tiny, capsys, text):
    with pytest.raises(SystemExit) as exc:
        time_net.main(["--model", tiny, "--data-shape", text])
    assert exc.value.code == 2
    assert "NAME=D0,D1" in capsys.readouterr().err


def test_zf5_spp_deploy(capsys):
    model = os.path.join(ROOT, "models", "zf5_spp", "deploy.prototxt")
    assert time_net.main(["--model", model, "--iterations", "1", "--phase", "TEST"]) == 0
    out = capsys.readouterr().out
    names = [line.split("\t")[0].strip() for line in out.splitlines() if "\tforward: " in line]
    assert names[:2] == ["data", "conv1"] and names[-1] == "prob" and "spp" in names
    # A deploy net has no loss: Caffe's rules skip every backward.
    assert "no layer runs backward" in out
    check_report(out, names, 1)


def test_weights(tmp_path, tiny, capsys):
    """--weights loads a .caffemodel; one that does not fit is a clear error."""
    net = sppcaffe.Net(tiny, sppcaffe.TRAIN)
    good = str(tmp_path / "good.caffemodel")
    net.save(good)
    assert time_net.main(["--model", tiny, "--iterations", "1", "--weights", good]) == 0
    check_report(capsys.readouterr().out, LAYERS, 1)

    wider = tmp_path / "wider.prototxt"
    wider.write_text(TINY_NET.replace("num_output: 4", "num_output: 6"))
    bad = str(tmp_path / "bad.caffemodel")
    sppcaffe.Net(str(wider), sppcaffe.TRAIN).save(bad)
    assert time_net.main(["--model", tiny, "--weights", bad]) == 1
    err = capsys.readouterr().err
    assert err.startswith("time_net: error: ") and "conv1" in err and "shape" in err
