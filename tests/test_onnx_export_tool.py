"""tools/export_onnx: prototxt (+ caffemodel) in, checked ONNX model out;
user errors are one `export_onnx: error: ...` line and exit status 1."""
import os
import subprocess
import sys

import numpy as np
import pytest

import sppcaffe

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from sppcaffe.cli.export_onnx import main  # noqa: E402
from sppcaffe.onnx.verify import run_onnx  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DEPLOY = os.path.join(ROOT, "models", "demo_spp", "deploy.prototxt")
DEMO_TRAIN_VAL = os.path.join(ROOT, "models", "demo_spp", "train_val.prototxt")


def dims(info):
    return [d.dim_param or d.dim_value for d in info.type.tensor_type.shape.dim]


def test_export_with_weights_gives_the_nets_outputs(tmp_path, capsys):
    net = sppcaffe.Net(DEMO_DEPLOY, sppcaffe.TEST)
    rng = np.random.default_rng(0)
    for blobs in net.params.values():
        for blob in blobs:
            blob.data[...] = rng.standard_normal(blob.shape) * 0.3
    weights = tmp_path / "demo.caffemodel"
    net.save(str(weights))
    out = tmp_path / "demo.onnx"
    assert main([DEMO_DEPLOY, "--weights", str(weights), str(out),
                 "--input", "data=2,3,40,56"]) == 0
    log = capsys.readouterr().err
    assert "Wrote" in log and "data (2, 3, 40, 56)" in log and "prob (2, 10)" in log
    x = rng.standard_normal((2, 3, 40, 56), np.float32)
    ours = run_onnx(str(out), {"data": x})["prob"]
    assert np.allclose(ours, net.forward(data=x)["prob"], rtol=1e-5, atol=1e-7)


def test_dynamic_sizes_and_check(tmp_path, capsys):
    out = tmp_path / "demo.onnx"
    assert main([DEMO_DEPLOY, str(out), "--dynamic-batch", "--dynamic-size", "--check",
                 "--output", "prob", "--output", "spp"]) == 0
    log = capsys.readouterr().err
    assert "check: spp relative error" in log and "every output within 1e-05" in log
    model = onnx.load(str(out))
    assert dims(model.graph.input[0]) == ["batch", 3, "height", "width"]
    assert [o.name for o in model.graph.output] == ["prob", "spp"]
    assert dims(model.graph.output[1]) == ["batch", 672]    # 32 channels x (16 + 4 + 1) bins


def test_train_val_needs_its_data_shapes(tmp_path, capsys):
    out = tmp_path / "tv.onnx"
    assert main([DEMO_TRAIN_VAL, str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("export_onnx: error: ") and "--data-shape data=" in err
    assert "Traceback" not in err
    assert main([DEMO_TRAIN_VAL, str(out), "--input", "data=1,3,48,48", "--input", "label=1",
                 "--check"]) == 0
    model = onnx.load(str(out))
    assert sorted(i.name for i in model.graph.input) == ["data", "label"]
    assert sorted(o.name for o in model.graph.output) == ["accuracy", "loss"]


def test_layer_without_onnx_form_is_named(tmp_path, capsys):
    net = tmp_path / "net.prototxt"
    net.write_text('layer { name: "in" type: "Input" top: "x" top: "y" input_param { '
                   'shape { dim: 2 dim: 3 } shape { dim: 2 } } }\n'
                   'layer { name: "hinge" type: "HingeLoss" bottom: "x" bottom: "y" '
                   'top: "loss" }\n')
    assert main([str(net), str(tmp_path / "out.onnx")]) == 1
    err = capsys.readouterr().err
    assert "export_onnx: error: layer 'hinge' (HingeLoss): no ONNX form" in err
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("args, message", [
    (["missing.prototxt", "out.onnx"], "cannot read net 'missing.prototxt'"),
    ([DEMO_DEPLOY, "out.onnx", "--weights", "missing.caffemodel"], "cannot read weights"),
    ([DEMO_DEPLOY, "out.onnx", "--input", "nothing=1,2"], "does not have: nothing"),
    ([DEMO_DEPLOY, "out.onnx", "--opset", "9"], "opset 9 is not supported"),
])
def test_user_errors(tmp_path, capsys, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("export_onnx: error: ") and message in err


def test_the_tool_script_runs():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export_onnx"), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--dynamic-size" in result.stdout
