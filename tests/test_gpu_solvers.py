"""The six solvers' updates on the device: the same training in CPU and
GPU mode gives the same weights and history; the update copies nothing
between host and device; snapshots and restores work in GPU mode; and the
BVLC Caffe trajectories (tests/golden/solver_*) hold on the device too."""
import logging

import numpy as np
import pytest

from sppcaffe import backends
from sppcaffe.solvers import get_solver
from test_solvers import golden_solver, golden_steps, make_param, run_golden

NET = """
name: "mlp"
layer { name: "data" type: "MemoryData" top: "data" top: "label"
        memory_data_param { batch_size: 4 channels: 5 height: 1 width: 1 } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "uniform" min: -0.2 max: 0.2 } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        param { lr_mult: 2 decay_mult: 0.5 } param { lr_mult: 1 decay_mult: 0 }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""
_rng = np.random.default_rng(5)
DATA = _rng.standard_normal((16, 5, 1, 1)).astype(np.float32)
LABELS = _rng.integers(0, 3, 16).astype(np.float32)

# Each rule with settings that exercise every term of its formula.
RULES = {
    "SGD": dict(base_lr=0.1, momentum=0.9),
    "Nesterov": dict(base_lr=0.1, momentum=0.9),
    "AdaGrad": dict(base_lr=0.1, delta=1e-4),
    "RMSProp": dict(base_lr=0.01, rms_decay=0.9, delta=1e-4),
    "AdaDelta": dict(base_lr=1.0, momentum=0.95, delta=1e-4),
    "Adam": dict(base_lr=0.01, momentum=0.9, momentum2=0.999, delta=1e-4),
}
# The shared parts of ApplyUpdate: decay, clipping, iter_size, lr policy.
VARIANTS = {
    "L2": dict(weight_decay=0.01, regularization_type="L2"),
    "L1+clip": dict(weight_decay=0.01, regularization_type="L1", clip_gradients=0.5),
    "iter_size": dict(weight_decay=0.005, iter_size=2, lr_policy="step", stepsize=2, gamma=0.5),
}
STEPS = 5


def new_solver(kind, **fields):
    solver = get_solver(make_param(NET, type=kind, **{**RULES[kind], **fields}))
    solver.net.set_input_arrays(DATA, LABELS)
    return solver


def trained(kind, steps=STEPS, **fields):
    solver = new_solver(kind, **fields)
    solver.step(steps)
    return solver


def state_of(solver):
    return [p.data.copy() for p in solver.net.learnable_params] + [h.copy() for h in solver.history]


def on_host(function, *args, **kwargs):
    """Run `function` in CPU mode from inside a GPU-mode test."""
    backends.set_mode_cpu()
    try:
        return function(*args, **kwargs)
    finally:
        backends.set_mode_gpu()


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("kind", list(RULES))
def test_device_training_matches_host(gpu_device, kind, variant):
    fields = VARIANTS[variant]
    expected = state_of(on_host(trained, kind, **fields))
    solver = trained(kind, **fields)
    got = state_of(solver)
    assert len(got) == len(expected) == 4 * solver.history_sets + 4
    for i, (g, e) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6, err_msg=f"{kind} {variant}: {i}")


def test_clipping_on_the_device_scales_to_the_threshold(gpu_device, caplog):
    caplog.set_level(logging.INFO, logger="sppcaffe")
    clip, lr = 1e-2, RULES["SGD"]["base_lr"]
    solver = new_solver("SGD", clip_gradients=clip)
    before = [p.data.copy() for p in solver.net.learnable_params]
    solver.step(1)
    assert any(m.startswith("Gradient clipping") for m in caplog.messages)
    # No decay and no history yet: each step is lr * lr_mult * the clipped gradient.
    steps = [(b - p.data) / (lr * mult) for b, p, mult in
             zip(before, solver.net.learnable_params, solver.net.params_lr)]
    norm = np.sqrt(sum((s.astype(np.float64) ** 2).sum() for s in steps))
    assert norm == pytest.approx(clip, rel=1e-3)


@pytest.mark.parametrize("kind", list(RULES))
def test_update_and_clearing_copy_nothing(counting_device, kind):
    device = counting_device
    solver = new_solver(kind, weight_decay=0.01, regularization_type="L1", clip_gradients=10.0,
                        iter_size=2)
    solver.step(1)
    for p in solver.net.learnable_params:      # a gradient written by device code
        device.upload(p.mutable_gpu_diff, np.full(p.count, 0.5, np.float32))
    device.uploads = device.downloads = 0
    solver.apply_update()
    solver.net.clear_param_diffs()
    assert (device.uploads, device.downloads) == (0, 0)
    assert not any(p.diff.any() for p in solver.net.learnable_params)


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
@pytest.mark.parametrize("kind", ["SGD", "AdaDelta", "Adam"])
def test_snapshot_and_restore_in_gpu_mode(gpu_device, tmp_path, kind, fmt):
    fields = dict(snapshot=3, snapshot_prefix=str(tmp_path / "snap"), snapshot_format=fmt,
                  weight_decay=0.01, lr_policy="multistep", stepvalue=[2, 4], gamma=0.5)
    straight = trained(kind, steps=6, **fields)
    expected = state_of(straight)
    resumed = new_solver(kind, **fields)
    suffix = ".solverstate.h5" if fmt == "HDF5" else ".solverstate"
    resumed.restore(str(tmp_path / f"snap_iter_3{suffix}"))
    assert resumed.iter == 3 and resumed.current_step == 1
    assert any(h.any() for h in resumed.history)
    # The MemoryData layer had consumed 3 batches of 4 by iteration 3.
    resumed.net.set_input_arrays(np.roll(DATA, -12, 0), np.roll(LABELS, -12))
    resumed.step(3)
    for g, e in zip(state_of(resumed), expected):
        np.testing.assert_array_equal(g, e)


def test_state_written_on_the_host_restores_on_the_device(gpu_device, tmp_path):
    fields = dict(snapshot=2, snapshot_prefix=str(tmp_path / "snap"))
    on_host(trained, "Adam", steps=2, **fields)
    straight = on_host(trained, "Adam", steps=4)
    resumed = new_solver("Adam")
    resumed.restore(str(tmp_path / "snap_iter_2.solverstate"))
    resumed.net.set_input_arrays(np.roll(DATA, -8, 0), np.roll(LABELS, -8))
    resumed.step(2)
    for g, e in zip(state_of(resumed), state_of(straight)):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adagrad", "rmsprop", "adadelta", "adam"])
def test_golden_trajectory_on_the_device(gpu_device, kind):
    case = f"solver_{kind}"
    solver = golden_solver(case)
    run_golden(solver, case, 0, golden_steps(case))


def test_snapshot_downloads_the_history_once_and_uploads_nothing(counting_device, tmp_path):
    device = counting_device
    solver = new_solver("Adam", snapshot_prefix=str(tmp_path / "snap"))
    solver.step(1)
    device.uploads = device.downloads = 0
    solver.snapshot()
    assert device.downloads <= len(solver.history_blobs) + 2 * len(solver.net.learnable_params)
    assert device.uploads == 0
    device.downloads = 0
    solver.snapshot()                       # the host copies are still current
    assert device.downloads == 0
