"""pycaffe's Net and Solver surface as scripts use it, checked against
pycaffe's behaviour (python/caffe/pycaffe.py, _caffe.cpp and its tests):
the name maps, the underscored C++ accessors, forward_all /
forward_backward_all, set_input_arrays' checks, HDF5 weights, share_with,
the layer hooks, the solver's calls, and the module-level functions."""
import collections
import logging
from importlib import metadata

import h5py
import numpy as np
import pytest

import sppcaffe
from sppcaffe import pycaffe_compat
from sppcaffe.io import parse_text
from sppcaffe.layer import LayerError
from sppcaffe.proto import caffe_pb2

# pycaffe's own test net (python/caffe/test/test_net.py), with 13 outputs.
PYCAFFE_TEST_NET = """
name: 'testnet' force_backward: true
layer { type: 'DummyData' name: 'data' top: 'data' top: 'label'
  dummy_data_param { num: 5 channels: 2 height: 3 width: 4
    num: 5 channels: 1 height: 1 width: 1
    data_filler { type: 'gaussian' std: 1 }
    data_filler { type: 'constant' } } }
layer { type: 'Convolution' name: 'conv' bottom: 'data' top: 'conv'
  convolution_param { num_output: 11 kernel_size: 2 pad: 3
    weight_filler { type: 'gaussian' std: 1 }
    bias_filler { type: 'constant' value: 2 } }
    param { decay_mult: 1 } param { decay_mult: 0 } }
layer { type: 'InnerProduct' name: 'ip' bottom: 'conv' top: 'ip'
  inner_product_param { num_output: 13
    weight_filler { type: 'gaussian' std: 2.5 }
    bias_filler { type: 'constant' value: -3 } } }
layer { type: 'SoftmaxWithLoss' name: 'loss' bottom: 'ip' bottom: 'label' top: 'loss' }
"""

# Batch 2; `ip` feeds two readers, so Caffe inserts a Split layer.
BATCHED_NET = """
name: 'batched' force_backward: true
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 4 weight_filler { type: 'gaussian' std: 1 }
                        bias_filler { type: 'gaussian' std: 1 } } }
layer { name: 'prob' type: 'Softmax' bottom: 'ip' top: 'prob' }
layer { name: 'twice' type: 'Power' bottom: 'ip' top: 'twice' power_param { scale: 2 } }
"""

MEMORY_NET = """
name: 'memory'
layer { name: 'mem' type: 'MemoryData' top: 'data' top: 'label'
  memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }
"""


def make_net(text, phase=sppcaffe.TEST, **kwargs):
    return sppcaffe.Net(parse_text(text, caffe_pb2.NetParameter()), phase, **kwargs)


@pytest.fixture
def net():
    sppcaffe.set_random_seed(3)
    net = make_net(PYCAFFE_TEST_NET, sppcaffe.TRAIN)
    net.blobs["label"].data[...] = np.random.default_rng(0).integers(13, size=(5, 1, 1, 1))
    return net


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------
# Name maps and the underscored accessors
# ---------------------------------------------------------------------------
def test_top_and_bottom_names_are_pycaffes_ordered_dicts(net):
    # The values pycaffe's test_net.py asserts for this net.
    assert net.top_names == collections.OrderedDict(
        [("data", ["data", "label"]), ("conv", ["conv"]), ("ip", ["ip"]), ("loss", ["loss"])])
    assert net.bottom_names == collections.OrderedDict(
        [("data", []), ("conv", ["data"]), ("ip", ["conv"]), ("loss", ["ip", "label"])])
    assert isinstance(net.top_names, collections.OrderedDict)
    assert net.inputs == [] and net.outputs == ["loss"]


def test_blob_and_layer_lists_as_the_cpp_net_gives_them(net):
    assert net._blob_names == ["data", "label", "conv", "ip", "loss"] == list(net.blobs)
    assert net._layer_names == ["data", "conv", "ip", "loss"]
    assert all(a is b for a, b in zip(net._blobs, net.blobs.values()))
    assert net._blob_loss_weights == [0, 0, 0, 0, 1]
    assert net.blob_loss_weights == collections.OrderedDict(
        [("data", 0), ("label", 0), ("conv", 0), ("ip", 0), ("loss", 1)])
    assert net._outputs == [4] and net._inputs == []
    assert net._top_ids(0) == [0, 1] and net._bottom_ids(3) == [3, 1]


def test_split_layers_and_ids_of_inputs_and_outputs():
    net = make_net(BATCHED_NET)
    split = "ip_ip_0_split"
    assert net._layer_names == ["data", "ip", split, "prob", "twice"]
    assert net.top_names[split] == [f"{split}_0", f"{split}_1"]
    assert net.bottom_names["prob"] == [f"{split}_0"]
    assert net._inputs == [0]
    # Outputs sorted by name (Caffe's std::set), as ids into the blob list.
    assert [net._blob_names[i] for i in net._outputs] == net.outputs == ["prob", "twice"]


def test_params_and_layer_dict_are_ordered_views_of_the_layers(net):
    assert isinstance(net.params, collections.OrderedDict)
    assert list(net.params) == ["conv", "ip"]
    assert net.params["conv"][0] is net.layer_dict["conv"].blobs[0]
    assert list(net.layer_dict) == net._layer_names


def test_layers_type_blobs_and_reshape():
    net = make_net("""
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } } }
layer { name: 'conv' type: 'Convolution' bottom: 'data' top: 'conv'
  convolution_param { num_output: 11 kernel_size: 2 } }
""")
    conv = net.layers[1]
    assert [layer.type for layer in net.layers] == ["Input", "Convolution"]
    assert [b.shape for b in conv.blobs] == [(11, 3, 2, 2), (11,)]
    net.blobs["data"].reshape(2, 3, 7, 7)
    conv.reshape([net.blobs["data"]], [net.blobs["conv"]])
    assert net.blobs["conv"].shape == (2, 11, 6, 6)


def test_stages_none_as_pycaffe_passes_it():
    net = sppcaffe.Net(parse_text(BATCHED_NET, caffe_pb2.NetParameter()), sppcaffe.TEST,
                       level=0, stages=None)
    assert net.param.state.stage == []


# ---------------------------------------------------------------------------
# forward_all / forward_backward_all
# ---------------------------------------------------------------------------
def test_forward_all_batches_pads_and_drops_the_padding():
    net = make_net(BATCHED_NET)
    w, b = (p.data.copy() for p in net.params["ip"])
    x = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    out = net.forward_all(blobs=["ip"], data=x)
    assert set(out) == {"prob", "twice", "ip"}
    np.testing.assert_allclose(out["ip"], x @ w.T + b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["prob"], softmax(x @ w.T + b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["twice"], 2 * out["ip"], rtol=1e-6)
    # Three batches of 2; the last one held item 4 and a row of zeros.
    np.testing.assert_array_equal(net.blobs["data"].data, [x[4], np.zeros(3)])
    # The results are copies, not views of the blobs.
    assert not np.shares_memory(out["prob"], net.blobs["prob"].data)


def test_forward_all_exact_multiple_and_bad_arguments():
    net = make_net(BATCHED_NET)
    x = np.ones((4, 3), np.float32)
    assert net.forward_all(data=x)["prob"].shape == (4, 4)
    with pytest.raises(ValueError, match="needs the arrays"):
        net.forward_all()
    with pytest.raises(ValueError, match="as many items each"):
        make_net(BATCHED_NET.replace("dim: 3 }", "dim: 3 } shape { dim: 2 dim: 1 }")
                 .replace("top: 'data' input", "top: 'data' top: 'extra' input")
                 ).forward_all(data=x, extra=np.ones((3, 1)))


def test_forward_all_refuses_outputs_without_one_row_per_item():
    # forward takes only input blobs (pycaffe's rule): the data as Input blobs.
    dummy = PYCAFFE_TEST_NET[PYCAFFE_TEST_NET.index("layer { type: 'DummyData'"):
                             PYCAFFE_TEST_NET.index("layer { type: 'Convolution'")]
    net = make_net(PYCAFFE_TEST_NET.replace(dummy, """
        layer { type: 'Input' name: 'data' top: 'data' top: 'label' input_param {
          shape { dim: 5 dim: 2 dim: 3 dim: 4 } shape { dim: 5 dim: 1 dim: 1 dim: 1 } } }
        """), sppcaffe.TRAIN)
    with pytest.raises(ValueError, match="blob 'loss' has shape \\(\\)"):
        net.forward_all(data=np.zeros((5, 2, 3, 4), np.float32),
                        label=np.zeros((5, 1, 1, 1), np.float32))


def test_forward_backward_all_feeds_inputs_and_output_diffs():
    net = make_net(BATCHED_NET)
    w, b = (p.data.copy() for p in net.params["ip"])
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 3)).astype(np.float32)
    g_prob = np.zeros((3, 4), np.float32)
    g_twice = rng.standard_normal((3, 4)).astype(np.float32)
    outs, diffs = net.forward_backward_all(data=x, prob=g_prob, twice=g_twice)
    assert set(outs) == {"prob", "twice"} and set(diffs) == {"data"}
    np.testing.assert_allclose(outs["twice"], 2 * (x @ w.T + b), rtol=1e-5, atol=1e-5)
    # d twice / d data = 2 W; the prob branch gets a zero diff.
    np.testing.assert_allclose(diffs["data"], 2 * g_twice @ w, rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyError, match="'nope'"):
        net.forward_backward_all(data=x, nope=x)


# ---------------------------------------------------------------------------
# set_input_arrays (pycaffe's checks)
# ---------------------------------------------------------------------------
def test_set_input_arrays_accepts_1d_or_4d_labels():
    net = make_net(MEMORY_NET)
    data = np.arange(24, dtype=np.float32).reshape(4, 1, 2, 3)
    net.set_input_arrays(data, np.array([0, 1, 2, 3], np.float32))
    net.forward()
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, data[2:])
    np.testing.assert_array_equal(net.blobs["label"].data, [2, 3])
    net.set_input_arrays(data, np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1) + 10)
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, [10, 11])


@pytest.mark.parametrize("data_shape,labels_shape,message", [
    ((4, 2, 2, 3), (4,), "data array has wrong number of channels: 2, the layer expects 1"),
    ((4, 1, 3, 3), (4,), "data array has wrong height"),
    ((4, 1, 2, 2), (4,), "data array has wrong width"),
    ((4, 6), (4,), "data array must be 4-d"),
    ((4, 1, 2, 3), (4, 2, 1, 1), "labels array has wrong number of channels"),
    ((4, 1, 2, 3), (2,), "data and labels must have the same first dimension"),
    ((3, 1, 2, 3), (3,), "first dimensions of input arrays must be a multiple of batch size"),
])
def test_set_input_arrays_checks_as_pycaffe(data_shape, labels_shape, message):
    net = make_net(MEMORY_NET)
    with pytest.raises(LayerError, match=f"layer 'mem'.*{message}"):
        net.set_input_arrays(np.zeros(data_shape, np.float32), np.zeros(labels_shape, np.float32))


def test_set_input_arrays_needs_a_memory_data_first_layer():
    net = make_net("layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 1 } } }\n"
                   + MEMORY_NET.replace("name: 'memory'", ""))
    with pytest.raises(LayerError, match="only be called if the first layer is a "
                                         "MemoryDataLayer \\(it is 'in', type Input\\)"):
        net.set_input_arrays(np.zeros((2, 1, 2, 3), np.float32), np.zeros(2, np.float32))


# ---------------------------------------------------------------------------
# Weights: save_hdf5 / load_hdf5, share_with
# ---------------------------------------------------------------------------
def test_save_hdf5_and_load_hdf5_whatever_the_extension(net, tmp_path):
    # pycaffe's test_save_hdf5 writes to a temporary name without ".h5".
    path = tmp_path / "weights.tmp"
    net.save_hdf5(str(path))
    assert h5py.is_hdf5(path)
    sppcaffe.set_random_seed(99)
    other = make_net(PYCAFFE_TEST_NET, sppcaffe.TRAIN)
    assert not np.array_equal(other.params["ip"][0].data, net.params["ip"][0].data)
    other.load_hdf5(str(path))
    for name in net.params:
        for mine, theirs in zip(net.params[name], other.params[name]):
            np.testing.assert_array_equal(mine.data, theirs.data)


def test_share_with_shares_data_not_diffs_and_skips_unknown_layers(net):
    other = make_net(PYCAFFE_TEST_NET.replace("name: 'conv' bottom", "name: 'conv2' bottom")
                     .replace("bottom: 'conv'", "bottom: 'conv2'")
                     .replace("top: 'conv'", "top: 'conv2'"), sppcaffe.TRAIN)
    other.share_with(net)
    net.params["ip"][0].data[...] = 0.5
    assert (other.params["ip"][0].data == 0.5).all()
    other.params["ip"][0].diff[...] = 7
    assert not (net.params["ip"][0].diff == 7).any()
    assert not np.shares_memory(other.params["conv2"][0].data, net.params["conv"][0].data)


def test_share_with_shape_mismatch_names_the_layer(net):
    other = make_net(PYCAFFE_TEST_NET.replace("num_output: 13", "num_output: 12"),
                     sppcaffe.TRAIN)
    with pytest.raises(LayerError, match="cannot share param 0 weights from layer 'ip'; shape "
                                         "mismatch.  Source param shape is \\(13, 792\\); "
                                         "target param shape is \\(12, 792\\)"):
        other.share_with(net)


# ---------------------------------------------------------------------------
# Hooks (before_forward & co.)
# ---------------------------------------------------------------------------
def test_hooks_run_around_every_layer_in_order(net):
    events = []
    for kind in ("before_forward", "after_forward", "before_backward", "after_backward"):
        getattr(net, kind)(lambda i, kind=kind: events.append((kind, i)))
    net.forward()
    assert events == [(k, i) for i in range(4) for k in ("before_forward", "after_forward")]
    events.clear()
    net.backward()
    # Every layer, the data layer (no backward) included, last to first.
    assert events == [(k, i) for i in (3, 2, 1, 0) for k in ("before_backward", "after_backward")]


def test_after_forward_sees_each_layers_output(net):
    seen = {}
    net.after_forward(lambda i: seen.setdefault(net._layer_names[i], {
        name: net.blobs[name].data.copy() for name in net.top_names[net._layer_names[i]]}))
    net.forward()
    for layer, tops in seen.items():
        for name, value in tops.items():
            np.testing.assert_array_equal(value, net.blobs[name].data)


def test_hooks_see_layers_unfolded():
    text = """
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
layer { name: 'conv' type: 'Convolution' bottom: 'data' top: 'conv'
  convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: 'gaussian' std: 1 } } }
layer { name: 'bn' type: 'BatchNorm' bottom: 'conv' top: 'conv' }
layer { name: 'scale' type: 'Scale' bottom: 'conv' top: 'conv' scale_param { bias_term: true } }
"""
    captured = []
    for fold in (True, False):
        sppcaffe.set_random_seed(5)
        net = make_net(text, fold_batchnorm=fold)
        assert bool(net._folds) == fold
        mean, var, factor = net.params["bn"]
        mean.data[...], var.data[...], factor.data[...] = [0.5, -1, 2], [4, 1, 0.25], 1
        net.params["scale"][0].data[...] = [2, 3, 4]
        net.params["scale"][1].data[...] = 1
        conv_after = []
        net.after_forward(lambda i: conv_after.append(net.blobs["conv"].data.copy()))
        net.forward(data=np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4))
        captured.append((conv_after, net.blobs["conv"].data.copy()))
    (folded_steps, folded_out), (plain_steps, plain_out) = captured
    assert len(folded_steps) == len(plain_steps) == 4
    for a, b in zip(folded_steps, plain_steps):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # The conv step saw the convolution's own output, before BatchNorm changed it.
    assert not np.allclose(folded_steps[1], folded_out)


def test_hooks_run_in_gpu_mode(net, gpu_device):
    order = []
    net.before_forward(order.append)
    net.after_backward(lambda i: order.append(-i - 1))
    net.forward_backward()
    assert order == [0, 1, 2, 3, -4, -3, -2, -1]


def test_a_hook_must_be_callable(net):
    with pytest.raises(TypeError, match="before_forward takes a callable"):
        net.before_forward(3)


def test_underscored_forward_and_backward_by_index(net):
    loss = net._forward(0, 3)
    assert loss == pytest.approx(float(net.blobs["loss"].data))
    net.blobs["ip"].diff[...] = 0
    net._backward(3, 3)
    assert np.abs(net.blobs["ip"].diff).sum() > 0


# ---------------------------------------------------------------------------
# Solver
# ---------------------------------------------------------------------------
SOLVER = """
net: "{net}"
base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005
lr_policy: "inv" gamma: 0.0001 power: 0.75
display: 0 max_iter: 3 snapshot_after_train: false
test_iter: 1 test_interval: 100 test_initialization: false
random_seed: 1
snapshot: 2 snapshot_prefix: "{prefix}"
"""


@pytest.fixture
def solver_file(tmp_path):
    (tmp_path / "net.prototxt").write_text(PYCAFFE_TEST_NET)
    path = tmp_path / "solver.prototxt"
    path.write_text(SOLVER.format(net=tmp_path / "net.prototxt", prefix=tmp_path / "model"))
    return path


def test_solver_surface_of_pycaffes_tests(solver_file, tmp_path):
    # pycaffe's test_solver.py: the solver's nets, solve(), and iter.
    solver = sppcaffe.SGDSolver(str(solver_file))
    assert isinstance(solver, sppcaffe.get_solver(str(solver_file)).__class__)
    assert solver.param.max_iter == 3 and solver.param.base_lr == pytest.approx(0.01)
    assert len(solver.test_nets) == 1 and solver.test_nets[0].phase == sppcaffe.TEST
    solver.solve()
    assert solver.iter == 3
    assert (tmp_path / "model_iter_2.caffemodel").exists()
    assert (tmp_path / "model_iter_2.solverstate").exists()


def test_apply_update_is_one_sgd_step_and_counts_it(solver_file):
    # pycaffe's test (BVLC/caffe#4342): zero weights, unit diffs, one update
    # at lr 0.01 with nothing in the history gives -0.01 everywhere.
    solver = sppcaffe.SGDSolver(str(solver_file))
    weights = solver.net.layers[1].blobs[0]
    weights.data[...] = 0
    weights.diff[...] = 1
    solver.apply_update()
    np.testing.assert_allclose(weights.data, -0.01, rtol=1e-6)
    assert solver.iter == 1


def test_solve_resumes_from_a_snapshot(solver_file, tmp_path):
    solver = sppcaffe.SGDSolver(str(solver_file))
    solver.step(2)
    trained = solver.net.params["ip"][0].data.copy()
    resumed = sppcaffe.SGDSolver(str(solver_file))
    resumed.restore(str(tmp_path / "model_iter_2.solverstate"))
    assert resumed.iter == 2
    np.testing.assert_array_equal(resumed.net.params["ip"][0].data, trained)
    again = sppcaffe.SGDSolver(str(solver_file))
    again.solve(str(tmp_path / "model_iter_2.solverstate"))
    assert again.iter == 3


def test_share_weights_and_callbacks(solver_file):
    solver = sppcaffe.get_solver(str(solver_file))
    deploy = make_net(PYCAFFE_TEST_NET, sppcaffe.TEST)
    solver.share_weights(deploy)
    calls = []
    solver.add_callback(lambda: calls.append("start"), lambda: calls.append("ready"))
    solver.step(1)
    assert calls == ["start", "ready"]
    np.testing.assert_array_equal(deploy.params["ip"][0].data, solver.net.params["ip"][0].data)


def test_solver_class_names():
    for name in ("SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
                 "AdaDeltaSolver", "AdamSolver"):
        assert issubclass(getattr(sppcaffe, name), sppcaffe.Solver)


# ---------------------------------------------------------------------------
# Module-level functions
# ---------------------------------------------------------------------------
def test_layer_type_list_is_sorted_as_caffes_registry():
    types = sppcaffe.layer_type_list()
    for name in ("Data", "Convolution", "InnerProduct"):       # pycaffe's test
        assert name in types
    assert types == sorted(types) and types.index("BNLL") < types.index("BatchNorm")
    assert set(types) == set(sppcaffe.LAYER_TYPES)


def test_set_random_seed_repeats_fillers():
    sppcaffe.set_random_seed(11)
    a = make_net(BATCHED_NET).params["ip"][0].data.copy()
    sppcaffe.set_random_seed(11)
    b = make_net(BATCHED_NET).params["ip"][0].data.copy()
    np.testing.assert_array_equal(a, b)


def test_version_is_the_installed_package_version():
    assert sppcaffe.__version__ == metadata.version("sppcaffe")


@pytest.fixture
def console_log():
    yield
    if pycaffe_compat._undo_console_log is not None:
        pycaffe_compat._undo_console_log()
        pycaffe_compat._undo_console_log = None


def test_init_log_and_log(console_log, capsys):
    sppcaffe.init_log(0, True)
    sppcaffe.log("Using devices [0]")
    line = capsys.readouterr().err.strip()
    assert line.startswith("I") and line.endswith("] Using devices [0]")
    # Without stderr, glog sends only ERROR and FATAL to the console.
    sppcaffe.init_log(0)
    sppcaffe.log("hidden")
    logging.getLogger("sppcaffe").error("shown")
    err = capsys.readouterr().err
    assert "hidden" not in err and err.startswith("E") and "] shown" in err


def test_glog_minloglevel_is_read_as_records_are_logged(console_log, capsys, monkeypatch):
    pycaffe_compat.log_like_pycaffe()
    monkeypatch.setenv("GLOG_minloglevel", "1")
    sppcaffe.log("info")
    logging.getLogger("sppcaffe").warning("warned")
    monkeypatch.delenv("GLOG_minloglevel")
    sppcaffe.log("info again")
    err = capsys.readouterr().err
    assert "] info\n" not in err and "] warned" in err and "] info again" in err
    with pytest.raises(ValueError, match="glog severity"):
        sppcaffe.init_log("loud")
