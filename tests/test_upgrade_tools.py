"""tools/upgrade_*: Caffe's upgrade programs, run as a user runs them."""
import os
import subprocess
import sys

from sppcaffe import io
from sppcaffe.proto import caffe_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data", "upgrade")


def run_tool(name, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *args],
                          capture_output=True, text=True)


def test_upgrade_net_text_matches_expected(tmp_path):
    out = tmp_path / "lenet.prototxt"
    result = run_tool("upgrade_net_proto_text", os.path.join(DATA, "v1_lenet.prototxt"), str(out))
    assert result.returncode == 0, result.stderr
    got = io.read_text(out, caffe_pb2.NetParameter())
    want = io.read_text(os.path.join(DATA, "v1_lenet_v2.prototxt"), caffe_pb2.NetParameter())
    assert got == want and not len(got.layers)


def test_upgrade_net_binary_round_trip(tmp_path):
    v1 = io.read_text(os.path.join(DATA, "v1_lenet.prototxt"), caffe_pb2.NetParameter())
    src, out = tmp_path / "old.caffemodel", tmp_path / "new.caffemodel"
    io.write_binary(v1, src)
    assert run_tool("upgrade_net_proto_binary", str(src), str(out)).returncode == 0
    assert io.read_binary(out, caffe_pb2.NetParameter()) == io.upgrade_net(v1)


def test_upgrade_solver(tmp_path):
    src, out = tmp_path / "solver.prototxt", tmp_path / "new.prototxt"
    src.write_text('net: "n.prototxt"\nbase_lr: 0.1\nsolver_type: NESTEROV\n')
    assert run_tool("upgrade_solver_proto_text", str(src), str(out)).returncode == 0
    solver = io.read_text(out, caffe_pb2.SolverParameter())
    assert solver.type == "Nesterov" and not solver.HasField("solver_type")


def test_bad_input_is_a_message_not_a_traceback(tmp_path):
    src = tmp_path / "broken.prototxt"
    src.write_text("layers { name: \n")
    result = run_tool("upgrade_net_proto_text", str(src), str(tmp_path / "o"))
    assert result.returncode == 1
    assert "broken.prototxt:" in result.stderr and "Traceback" not in result.stderr
