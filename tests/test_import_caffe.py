"""The opt-in `import caffe` (sppcaffe/as_caffe.py, pycaffe_compat.py): a
script written for pycaffe runs unchanged through `python -m
sppcaffe.as_caffe` or `import sppcaffe.as_caffe`, gets pycaffe's
submodules, and a real Caffe on the path is never shadowed."""
import os
import subprocess
import sys
import textwrap
import types

import pytest

import sppcaffe
from sppcaffe import pycaffe_compat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""

SOLVER = """net: "net.prototxt"
base_lr: 0.5 lr_policy: "fixed" display: 1 max_iter: 5
snapshot_after_train: false random_seed: 1
"""

# Written for pycaffe, as its examples are: nothing refers to sppcaffe.
PYCAFFE_SCRIPT = '''
import sys

import numpy as np
import caffe
import caffe.io
from caffe.proto import caffe_pb2
from caffe.pycaffe import Net

caffe.set_mode_cpu()
net = caffe.Net(sys.argv[1], caffe.TEST)
assert isinstance(net, Net)
x = np.array([[2, 0, 0], [0, 2, 0], [2, 0, 0], [0, 2, 0]], np.float32)
out = net.forward(data=x, label=np.array([0, 1, 0, 1], np.float32))
print("loss before", float(out["loss"]))

solver = caffe.SGDSolver(sys.argv[2])
def feed():
    solver.net.blobs["data"].data[...] = x
    solver.net.blobs["label"].data[...] = [0, 1, 0, 1]
solver.add_callback(feed, lambda: None)
solver.solve()
solver.share_weights(net)
print("loss after", float(net.forward()["loss"]))
print("iter", solver.iter, "argv", sys.argv[1:], "name", __name__)
print("io", caffe.io.__name__, "pb2", caffe_pb2.__name__, "layers", len(caffe.layer_type_list()))
param = caffe_pb2.NetParameter()
param.name = "x"
print("TRAIN", caffe.TRAIN, caffe_pb2.TRAIN)
'''


def run_python(args, cwd, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GLOG_minloglevel")}
    env["PYTHONPATH"] = ROOT                # sppcaffe, installed or not
    env.update(env_extra or {})
    return subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    (tmp_path / "train.py").write_text(PYCAFFE_SCRIPT)
    return tmp_path


def test_a_pycaffe_script_runs_through_the_runner(workdir):
    result = run_python(["-m", "sppcaffe.as_caffe", "train.py", "net.prototxt",
                         "solver.prototxt"], workdir)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines()
                 if not line.startswith("loss "))
    losses = dict(line.rsplit(" ", 1) for line in result.stdout.splitlines()
                  if line.startswith("loss "))
    assert float(losses["loss after"]) < 0.5 * float(losses["loss before"])
    assert lines["iter"] == "5 argv ['net.prototxt', 'solver.prototxt'] name __main__"
    assert lines["io"].startswith("sppcaffe.io pb2 sppcaffe.proto.caffe_pb2 layers ")
    assert lines["TRAIN"] == "0 0"
    # pycaffe shows glog's lines on stderr; so does the runner, in glog's format.
    assert any(line.startswith("I") and "] Iteration 5, loss = " in line
               for line in result.stderr.splitlines()), result.stderr


def test_import_line_opt_in(workdir):
    (workdir / "notebook.py").write_text(
        "import sppcaffe.as_caffe  # noqa\n"
        "import caffe\nimport caffe.draw\nfrom caffe import params as P\n"
        "print(caffe.draw.__name__, caffe.__name__, P.Pooling.MAX)\n")
    result = run_python(["notebook.py"], workdir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["sppcaffe.draw", "caffe", "0"]


def test_runner_exit_status_glog_minloglevel_and_missing_scripts(workdir):
    (workdir / "fails.py").write_text(
        "import logging, os, sys\nos.environ['GLOG_minloglevel'] = '1'\nimport caffe\n"
        "caffe.log('hidden')\nlogging.getLogger('sppcaffe').warning('warned')\nsys.exit(3)\n")
    result = run_python(["-m", "sppcaffe.as_caffe", "fails.py"], workdir)
    assert result.returncode == 3
    assert "] warned" in result.stderr and "hidden" not in result.stderr
    missing = run_python(["-m", "sppcaffe.as_caffe", "nope.py"], workdir)
    assert missing.returncode == 2
    assert "python -m sppcaffe.as_caffe: error: no script 'nope.py'" in missing.stderr


def fake_real_caffe(folder):
    (folder / "caffe").mkdir(parents=True)
    (folder / "caffe" / "__init__.py").write_text("REAL = True\n")


@pytest.mark.parametrize("where", ["pythonpath", "beside_script"])
def test_a_real_caffe_is_never_shadowed(workdir, where):
    scripts = workdir / "scripts"
    scripts.mkdir()
    (scripts / "train.py").write_text("open('ran', 'w').close()\nimport caffe\n")
    real = workdir / "real" if where == "pythonpath" else scripts
    fake_real_caffe(real)
    env = {"PYTHONPATH": f"{real}{os.pathsep}{ROOT}"} if where == "pythonpath" else None
    result = run_python(["-m", "sppcaffe.as_caffe", "scripts/train.py"], workdir, env)
    assert result.returncode == 1
    assert ("python -m sppcaffe.as_caffe: error: a real Caffe is importable as 'caffe' "
            f"({real / 'caffe' / '__init__.py'}); sppcaffe does not shadow it") in result.stderr
    assert not (workdir / "ran").exists()


def test_the_import_opt_in_refuses_and_leaves_the_real_caffe(workdir):
    fake_real_caffe(workdir / "real")
    (workdir / "script.py").write_text(textwrap.dedent("""
        try:
            import sppcaffe.as_caffe
        except ImportError as err:
            print(type(err).__name__)
        import caffe
        print(caffe.REAL)
    """))
    result = run_python(["script.py"], workdir,
                        {"PYTHONPATH": f"{workdir / 'real'}{os.pathsep}{ROOT}"})
    assert result.stdout.split() == ["RealCaffeInstalled", "True"], result.stderr


# ---- in process ----------------------------------------------------------------
@pytest.fixture
def fresh_modules():
    """No `caffe` module during the test; sys.modules as before after it."""
    saved = dict(sys.modules)
    for name in [n for n in sys.modules if n == "caffe" or n.startswith("caffe.")]:
        del sys.modules[name]
    yield
    for name in list(sys.modules):
        if name not in saved:
            del sys.modules[name]
    sys.modules.update(saved)


def test_install_as_caffe_registers_pycaffes_submodules(fresh_modules):
    module = sppcaffe.install_as_caffe()
    import caffe
    import caffe.classifier
    import caffe.detector
    import caffe.io
    import caffe.net_spec
    from caffe.proto import caffe_pb2
    assert caffe is module and getattr(caffe, pycaffe_compat.STANDIN_FLAG)
    assert caffe.io is sppcaffe.io and caffe_pb2 is sppcaffe.proto.caffe_pb2
    assert caffe.net_spec is sppcaffe.net_spec and caffe.classifier is sppcaffe.classifier
    assert caffe.Net is sppcaffe.Net and caffe.get_solver is sppcaffe.get_solver
    assert caffe.Layer is pycaffe_compat.Layer          # the base of Python layers
    assert caffe.layer_type_list() == sppcaffe.layer_type_list()
    with pytest.raises(AttributeError, match="stand-in module 'caffe' has no attribute 'Nett'"):
        caffe.Nett
    assert sppcaffe.install_as_caffe() is module        # again: the same module


def test_install_as_caffe_refuses_an_imported_real_caffe(fresh_modules):
    real = types.ModuleType("caffe")
    real.__file__ = "/opt/caffe/python/caffe/__init__.py"
    sys.modules["caffe"] = real
    with pytest.raises(pycaffe_compat.RealCaffeInstalled,
                       match="importable as 'caffe' \\(/opt/caffe/python/caffe/__init__.py\\)"):
        sppcaffe.install_as_caffe()
    assert sys.modules["caffe"] is real and "caffe.io" not in sys.modules


def test_a_bare_caffe_folder_does_not_stop_the_opt_in(tmp_path, monkeypatch, fresh_modules):
    (tmp_path / "caffe").mkdir()            # a source checkout's folder: no __init__.py
    monkeypatch.syspath_prepend(str(tmp_path))
    assert pycaffe_compat.real_caffe_location() is None
    assert getattr(sppcaffe.install_as_caffe(), pycaffe_compat.STANDIN_FLAG)
