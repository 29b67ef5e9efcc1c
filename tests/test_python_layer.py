"""Python layers (type "Python") written for pycaffe: `import caffe` and
its stand-in, what the object is handed (param_str, phase, blobs), learnable
blobs trained by a solver and kept in caffemodels, a Python loss, data
layers, GPU mode, and errors naming the layer."""
import os
import sys
import textwrap

import numpy as np
import pytest
from google.protobuf import text_format

import sppcaffe
from sppcaffe import pycaffe_compat
from sppcaffe.layer import LayerError
from sppcaffe.proto import caffe_pb2

PYLAYERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "pylayers")
CASES = "pycaffe_layer_cases"


@pytest.fixture(autouse=True)
def pylayers_on_path(monkeypatch):
    monkeypatch.syspath_prepend(PYLAYERS)


def python_layer(name, cls, bottoms=(), tops=(), param_str=None, extra=""):
    text = f'layer {{ name: "{name}" type: "Python" '
    text += "".join(f'bottom: "{b}" ' for b in bottoms) + "".join(f'top: "{t}" ' for t in tops)
    text += f'python_param {{ module: "{CASES}" layer: "{cls}" '
    if param_str is not None:
        quote = '"' if "'" in param_str else "'"
        text += f"param_str: {quote}{param_str}{quote} "
    return text + "} " + extra + " }\n"


def inputs(**shapes):
    return "".join(f'layer {{ name: "{n}" type: "Input" top: "{n}" input_param {{ shape {{ '
                   + " ".join(f"dim: {d}" for d in s) + " } } }\n" for n, s in shapes.items())


def _parse(text):
    return text_format.Parse(text, caffe_pb2.NetParameter())


def build(text, phase=sppcaffe.TEST, **kwargs):
    return sppcaffe.Net(_parse(text), phase, **kwargs)


SCALE_NET = (inputs(data=(4, 3), target=(4, 3))
             + python_layer("scale", "ScaleByParam", ["data"], ["scaled"], '{"init": 0.5}')
             + 'layer { name: "loss" type: "EuclideanLoss" bottom: "scaled" bottom: "target" '
               'top: "loss" }\n')


# ---- `import caffe` -------------------------------------------------------------
def test_layer_modules_get_the_stand_in_caffe():
    net = build(SCALE_NET)
    caffe = sys.modules["caffe"]
    assert getattr(caffe, pycaffe_compat.STANDIN_FLAG)
    assert caffe.Layer is pycaffe_compat.Layer
    assert (caffe.TRAIN, caffe.TEST) == (sppcaffe.TRAIN, sppcaffe.TEST)
    assert caffe.Net is sppcaffe.Net and caffe.SGDSolver is sppcaffe.SGDSolver
    from caffe.proto import caffe_pb2 as proto          # as pycaffe code does
    assert proto is caffe_pb2
    assert isinstance(net.layer_dict["scale"].impl, sys.modules[CASES].ScaleByParam)


@pytest.fixture
def fresh_modules():
    """sys.modules as it was after the test, whatever it imported."""
    saved = dict(sys.modules)
    for name in [n for n in sys.modules if n == "caffe" or n.startswith("caffe.")]:
        del sys.modules[name]
    yield
    for name in list(sys.modules):
        if name not in saved:
            del sys.modules[name]
    sys.modules.update(saved)


def test_a_real_caffe_is_not_shadowed(tmp_path, monkeypatch, fresh_modules):
    # A "real" pycaffe on sys.path: its Layer is a class of its own.
    (tmp_path / "caffe").mkdir()
    (tmp_path / "caffe" / "__init__.py").write_text(
        "TRAIN, TEST = 0, 1\nclass Layer:\n    def __init__(self, param):\n        pass\n")
    (tmp_path / "real_caffe_layers.py").write_text(textwrap.dedent("""
        import caffe

        class Double(caffe.Layer):
            def setup(self, bottom, top):
                self.factor = 2.0

            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].data.shape)

            def forward(self, bottom, top):
                top[0].data[...] = self.factor * bottom[0].data
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert pycaffe_compat.real_caffe_available()
    net = build(inputs(data=(2, 3)) + 'layer { name: "d" type: "Python" bottom: "data" '
                'top: "y" python_param { module: "real_caffe_layers" layer: "Double" } }')
    caffe = sys.modules["caffe"]
    assert not getattr(caffe, pycaffe_compat.STANDIN_FLAG, False)
    assert caffe.__file__.startswith(str(tmp_path))
    out = net.forward(data=np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(out["y"], 2 * np.arange(6).reshape(2, 3))


def test_a_layer_written_against_sppcaffe_itself(tmp_path, monkeypatch, fresh_modules):
    # `import sppcaffe as caffe`: the class derives from sppcaffe's own
    # Layer base, and is run as a pycaffe layer all the same.
    (tmp_path / "sppcaffe_style_layers.py").write_text(textwrap.dedent("""
        import sppcaffe as caffe

        class Negate(caffe.Layer):
            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].data.shape)

            def forward(self, bottom, top):
                top[0].data[...] = -bottom[0].data
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    net = build(inputs(data=(3,)) + 'layer { name: "n" type: "Python" bottom: "data" top: "y" '
                'python_param { module: "sppcaffe_style_layers" layer: "Negate" } }')
    assert net.forward(data=[1, 2, 3])["y"].tolist() == [-1, -2, -3]


def test_a_bare_caffe_folder_is_not_a_caffe(tmp_path, monkeypatch, fresh_modules):
    (tmp_path / "caffe").mkdir()                  # a namespace package, e.g. a source tree
    monkeypatch.syspath_prepend(str(tmp_path))
    assert not pycaffe_compat.real_caffe_available()
    assert getattr(pycaffe_compat.install(), pycaffe_compat.STANDIN_FLAG)


# ---- what the object is handed ---------------------------------------------------
@pytest.mark.parametrize("phase", [sppcaffe.TRAIN, sppcaffe.TEST])
def test_phase_param_str_and_type(phase):
    net = build(inputs(data=(1,)) + python_layer("attrs", "Attributes", ["data"], ["phase"],
                                                 "'feat_stride': 16"), phase)
    seen = net.layer_dict["attrs"].seen
    assert seen == {"phase": phase, "param_str": "'feat_stride': 16",
                    "param_str_": "'feat_stride': 16", "type": "Python", "blobs": 0}
    assert net.forward()["phase"][0] == phase
    assert net.layer_dict["attrs"].type == "Python"


def test_net_layers_reach_the_python_object():
    net = build(python_layer("numbers", "CountingData", tops=["n"]))
    layer = net.layers[0]
    assert net.forward()["n"].tolist() == [0, 1, 2, 3]
    layer.reset(100)                              # a method of the user's class
    assert net.forward()["n"].tolist() == [100, 101, 102, 103]
    layer.next = 7                                # attributes are the object's, both ways
    assert layer.impl.next == 7 and net.forward()["n"].tolist() == [7, 8, 9, 10]


def test_chained_layers_forward_backward_and_reshape():
    # BVLC's test_python_layer: three "times ten" layers; here w = 10.
    text = ("force_backward: true\n" + inputs(data=(10, 9, 8))
            + "".join(python_layer(n, "ScaleByParam", [b], [n], '{"init": 10}')
                      for b, n in [("data", "one"), ("one", "two"), ("two", "three")]))
    net = build(text)
    out = net.forward(data=np.full((10, 9, 8), 8.0))
    assert (out["three"] == 8000).all()
    net.blobs["three"].diff[...] = 7
    net.backward()
    assert (net.blobs["data"].diff == 7000).all()
    net.blobs["data"].reshape(4, 4, 4, 4)
    net.forward()
    assert all(blob.shape == (4, 4, 4, 4) for blob in net.blobs.values())


# ---- learnable blobs ---------------------------------------------------------------
def test_learnable_blobs_are_net_params_and_trained_by_a_solver(tmp_path):
    solver_param = caffe_pb2.SolverParameter()
    solver_param.net_param.CopyFrom(_parse(SCALE_NET))
    solver_param.base_lr = 0.2
    solver_param.lr_policy = "fixed"
    solver_param.max_iter = 100
    solver_param.snapshot_prefix = str(tmp_path / "snap")
    solver = sppcaffe.SGDSolver(solver_param)
    net = solver.net
    assert len(net.learnable_params) == 1 and net.params["scale"][0] is net.learnable_params[0]
    assert net.params["scale"][0].data[0] == 0.5
    data = np.random.default_rng(0).uniform(-2, 2, (4, 3)).astype(np.float32)
    net.blobs["data"].data[...] = data
    net.blobs["target"].data[...] = 3 * data
    solver.step(60)
    assert net.params["scale"][0].data[0] == pytest.approx(3.0, abs=1e-3)

    # The blob is saved and loaded with the other parameters.
    path = str(tmp_path / "trained.caffemodel")
    net.save(path)
    loaded = build(SCALE_NET, weights=path)
    assert loaded.params["scale"][0].data[0] == net.params["scale"][0].data[0]


def test_lr_mult_zero_freezes_a_python_layers_blob():
    text = SCALE_NET.replace('python_param', 'param { lr_mult: 0 } python_param')
    net = build(text, sppcaffe.TRAIN)
    net.blobs["data"].data[...] = 1
    net.forward_backward()
    assert net.params["scale"][0].diff[0] == 0


def test_gradient_of_the_python_param():
    net = build("force_backward: true\n" + SCALE_NET)
    rng = np.random.default_rng(1)
    data, target = rng.standard_normal((2, 4, 3)).astype(np.float32)
    net.forward(data=data, target=target)
    net.clear_param_diffs()
    net.backward()
    w = 0.5
    expected = np.sum((w * data - target) * data) / 4
    assert net.params["scale"][0].diff[0] == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(net.blobs["data"].diff, w * (w * data - target) / 4, rtol=1e-5)


# ---- a Python loss -------------------------------------------------------------------
def test_python_loss_layer_matches_the_builtin_one():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 5, 3)).astype(np.float32)
    results = []
    for layer in (python_layer("loss", "EuclideanLoss", ["a", "b"], ["loss"],
                               extra="loss_weight: 2"),
                  'layer { name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "b" '
                  'top: "loss" loss_weight: 2 }'):
        net = build("force_backward: true\n" + inputs(a=(5, 3), b=(5, 3)) + layer)
        net.forward(a=a, b=b)
        loss = net.loss
        net.backward()
        results.append((loss, net.blobs["a"].diff.copy(), net.blobs["b"].diff.copy()))
        assert net.blob_loss_weights["loss"] == 2
    (py_loss, py_da, py_db), (loss, da, db) = results
    assert py_loss == pytest.approx(loss, rel=1e-6) and loss > 0
    np.testing.assert_allclose(py_da, da, rtol=1e-6)
    np.testing.assert_allclose(py_db, db, rtol=1e-6)


def test_python_layer_without_loss_weight_is_not_a_loss():
    net = build(inputs(a=(5, 3), b=(5, 3)) + python_layer("loss", "EuclideanLoss", ["a", "b"],
                                                          ["loss"]))
    assert net.blob_loss_weights["loss"] == 0


# ---- GPU mode --------------------------------------------------------------------
def test_gpu_mode_runs_the_host_code(gpu_device):
    text = ("force_backward: true\n" + inputs(data=(3, 4), target=(3, 2))
            + 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
              'inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }\n'
            + python_layer("scale", "ScaleByParam", ["ip"], ["scaled"], '{"init": 1.5}')
            + python_layer("loss", "EuclideanLoss", ["scaled", "target"], ["loss"],
                           extra="loss_weight: 1"))
    rng = np.random.default_rng(3)
    feed = {"data": rng.standard_normal((3, 4)), "target": rng.standard_normal((3, 2))}
    net = build(text, sppcaffe.TRAIN)
    weights = net.params["ip"][0].data.copy()
    results = []
    for gpu in (True, False):
        (sppcaffe.set_mode_gpu if gpu else sppcaffe.set_mode_cpu)()
        net.params["ip"][0].data[...] = weights
        net.forward(**feed)
        net.clear_param_diffs()
        net.backward()
        results.append([net.loss, net.blobs["data"].diff.copy(), net.params["ip"][0].diff.copy(),
                        net.params["scale"][0].diff.copy()])
    sppcaffe.set_mode_gpu()                      # the fixture ends in GPU mode
    for got, expected in zip(*results):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# ---- errors name the layer ----------------------------------------------------------
def _error(text):
    with pytest.raises(LayerError) as info:
        build(text)
    return str(info.value)


def test_missing_module_names_the_layer():
    message = _error(inputs(data=(1,)) + 'layer { name: "prop" type: "Python" bottom: "data" '
                     'top: "rois" python_param { module: "rpn.no_such_layer" layer: "L" } }')
    assert "layer 'prop' (Python)" in message
    assert "cannot import module 'rpn.no_such_layer'" in message


def test_missing_class_names_the_layer():
    message = _error(inputs(data=(1,)) + python_layer("p", "Absent", ["data"], ["y"]))
    assert "layer 'p' (Python)" in message and "has no class 'Absent'" in message
    message = _error(inputs(data=(1,)) + python_layer("p", "NOT_A_CLASS", ["data"], ["y"]))
    assert "is not a class" in message


def test_exception_in_setup_names_the_layer():
    with pytest.raises(LayerError) as info:
        build(inputs(data=(1,)) + python_layer("bad", "FailingSetup", ["data"], ["y"]))
    message = str(info.value)
    assert "layer 'bad' (Python)" in message and "FailingSetup.setup raised Exception" in message
    assert "needs exactly one bottom" in message
    assert isinstance(info.value.__cause__, Exception)


def test_exceptions_in_forward_and_missing_methods_name_the_layer():
    net = build(inputs(data=(2,)) + python_layer("nf", "NoForward", ["data"], ["y"]))
    with pytest.raises(LayerError, match=r"layer 'nf' \(Python\).*has no method 'forward'"):
        net.forward()
    net = build(inputs(data=(2,)) + python_layer("ff", "FailingForward", ["data"], ["y"]))
    with pytest.raises(LayerError, match=r"'ff'.*FailingForward.forward raised KeyError"):
        net.forward()


def test_module_failing_at_import_and_unset_fields():
    message = _error(inputs(data=(1,)) + 'layer { name: "p" type: "Python" bottom: "data" top: "y" '
                     'python_param { module: "pycaffe_broken_import" layer: "L" } }')
    assert "layer 'p' (Python)" in message and "RuntimeError: cannot start" in message
    message = _error(inputs(data=(1,)) + 'layer { name: "p" type: "Python" bottom: "data" '
                     'top: "y" python_param { layer: "L" } }')
    assert "python_param.module is not set" in message
