"""Fine-tuning the fc layers on cached features (sppcaffe.detection.finetune)."""
import os

import numpy as np
import pytest

import sppcaffe
from sppcaffe.detection.cache import image_rows
from sppcaffe.detection.config import FinetuneConfig
from sppcaffe.detection.finetune import (BatchSampler, prepare_net, finetune, select_windows,
                                         solver_net_path, window_labels)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_window_labels_by_iou_range():
    overlaps = np.array([[0, 0.0, 0.0],
                         [0, 0.09, 0.05],     # below bg_iou_low: unused
                         [0, 0.1, 0.0],       # background from 0.1
                         [0, 0.2, 0.49],      # still background below 0.5
                         [0, 0.5, 0.3],       # foreground, class 1 from 0.5
                         [0, 0.6, 0.9],       # the class of highest IoU
                         [0, 0.7, 0.7]])      # equal IoU: the first class
    np.testing.assert_array_equal(window_labels(overlaps), [-1, -1, 0, 0, 1, 2, 1])
    np.testing.assert_array_equal(window_labels(overlaps, 0.8, 0.0, 0.4),
                                  [0, 0, 0, -1, -1, 2, -1])
    with pytest.raises(ValueError, match="K\\+1"):
        window_labels(np.zeros((3, 1)))


def tiny_cache(num_images=6, dim=8, seed=0):
    """Images with two objects (classes 1, 2) and windows around them at
    every IoU; features: the one-hot label blurred by noise."""
    rng = np.random.default_rng(seed)
    entries = {}
    for i in range(num_images):
        gt = np.array([[20, 20, 99, 99], [150, 30, 229, 109]], np.float64)
        shifts = np.linspace(0, 90, 30)[:, None] * [1, 0, 1, 0]
        windows = np.concatenate([gt[0] + shifts, gt[1] + shifts])
        record = image_rows(gt, [1, 2], [False, False], windows, 2)
        labels = window_labels(record["overlaps"])
        feat = rng.standard_normal((len(labels), dim)) * 0.1
        feat[np.arange(len(labels)), np.clip(labels, 0, None)] += 1
        record["feat"] = feat.astype(np.float32)
        entries[f"{i:02d}"] = record
    return entries


def test_select_windows_keeps_ranges_and_caps():
    entries = tiny_cache()
    config = FinetuneConfig()
    features, labels = select_windows(entries.__getitem__, sorted(entries), config,
                                      np.random.default_rng(0))
    all_labels = np.concatenate([window_labels(e["overlaps"]) for e in entries.values()])
    assert (labels > 0).sum() == (all_labels > 0).sum()
    assert (labels == 0).sum() == (all_labels == 0).sum()
    # Features travel with their labels (the label's one-hot column is the largest).
    np.testing.assert_array_equal(np.argmax(features[:, :3], axis=1), labels)
    capped = FinetuneConfig(max_fg_windows=5, max_bg_windows=7)
    features, labels = select_windows(entries.__getitem__, sorted(entries), capped,
                                      np.random.default_rng(0))
    assert (labels > 0).sum() == 5 and (labels == 0).sum() == 7
    np.testing.assert_array_equal(np.argmax(features[:, :3], axis=1), labels)


def test_select_windows_needs_both_kinds():
    entries = tiny_cache()
    with pytest.raises(ValueError, match="foreground and background"):
        select_windows(entries.__getitem__, sorted(entries),
                       FinetuneConfig(fg_iou=1.0, bg_iou_low=0.99, bg_iou_high=1.0),
                       np.random.default_rng(0))


@pytest.mark.parametrize("batch_size, fraction", [(128, 0.25), (10, 0.25), (16, 0.5)])
def test_sampler_foreground_share(batch_size, fraction):
    labels = np.array([0] * 50 + [1] * 7 + [2] * 3)
    sampler = BatchSampler(labels, batch_size, fraction, np.random.default_rng(0))
    seen = []
    for _ in range(20):
        rows, batch_labels = sampler.next()
        assert len(rows) == batch_size
        np.testing.assert_array_equal(batch_labels, labels[rows])
        assert (batch_labels > 0).sum() == int(fraction * batch_size)
        seen.append(rows)
    seen = np.concatenate(seen)
    # Each list is walked in passes: every window appears before any repeats twice.
    counts = np.bincount(seen, minlength=len(labels))
    assert counts[labels > 0].max() - counts[labels > 0].min() <= 1
    assert counts[labels == 0].max() - counts[labels == 0].min() <= 1


def test_sampler_needs_windows():
    with pytest.raises(ValueError, match="no foreground window"):
        BatchSampler(np.zeros(5), 8, 0.25)


FC_NET = """
name: "tiny fc"
layer { name: "input" type: "Input" top: "spp" top: "label"
        input_param { shape { dim: 16 dim: 8 } shape { dim: 16 } } }
layer { name: "fc6" type: "InnerProduct" bottom: "spp" top: "fc6"
        inner_product_param { num_output: 16 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
        inner_product_param { num_output: 16 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "fc8_det" type: "InnerProduct" bottom: "fc7" top: "fc8_det"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8_det" bottom: "label" top: "loss" }
"""


@pytest.fixture
def solver_file(tmp_path):
    (tmp_path / "fc.prototxt").write_text(FC_NET)
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "fc.prototxt"\nbase_lr: 0.1\nlr_policy: "step"\ngamma: 0.1\n'
                    'stepsize: 150\nmax_iter: 200\nmomentum: 0.9\nrandom_seed: 1\n')
    return path


def classifier_accuracy(net, entries):
    correct = total = 0
    for e in entries.values():
        labels = window_labels(e["overlaps"])
        rows = labels >= 0
        out = net.forward(spp=e["feat"][rows], label=labels[rows])
        correct += (net.blobs["fc8_det"].data.argmax(axis=1) == labels[rows]).sum()
        total += rows.sum()
    return correct / total, float(out["loss"])


def test_finetune_learns_and_steps_learning_rate(solver_file, tmp_path):
    entries = tiny_cache()
    config = FinetuneConfig(batch_size=16, max_iter=160)
    solver = finetune(entries.__getitem__, sorted(entries), 2, config,
                      solver_path=str(solver_file))
    assert solver.iter == 160
    assert solver.lr == pytest.approx(0.01)          # stepped at 150 by gamma 0.1
    solver.net.save(str(tmp_path / "ft.caffemodel"))
    net = sppcaffe.Net(str(tmp_path / "fc.prototxt"), sppcaffe.TEST,
                       weights=str(tmp_path / "ft.caffemodel"))
    accuracy, _ = classifier_accuracy(net, tiny_cache(seed=1))
    assert accuracy > 0.95


def test_finetune_starts_from_weights(solver_file, tmp_path):
    sppcaffe.set_random_seed(5)
    start = sppcaffe.Net(str(tmp_path / "fc.prototxt"), sppcaffe.TEST)
    start.save(str(tmp_path / "start.caffemodel"))
    entries = tiny_cache()
    solver = finetune(entries.__getitem__, sorted(entries), 2,
                      FinetuneConfig(batch_size=16, max_iter=1, base_lr=1e-12),
                      weights=str(tmp_path / "start.caffemodel"), solver_path=str(solver_file))
    for name in ("fc6", "fc7"):
        np.testing.assert_allclose(solver.net.params[name][0].data,
                                   start.params[name][0].data, atol=1e-6)


def test_prepare_net_names_mismatches(solver_file, tmp_path):
    net = sppcaffe.Net(str(tmp_path / "fc.prototxt"), sppcaffe.TRAIN)
    with pytest.raises(ValueError, match="takes 8 features per window .* the cache has 9"):
        prepare_net(net, 4, 9, 2)
    with pytest.raises(ValueError, match="classifies into 3 classes; the cache has 4 object"):
        prepare_net(net, 4, 8, 4)
    prepare_net(net, 4, 8, 2)
    assert net.blobs["spp"].shape == (4, 8) and net.blobs["fc8_det"].shape == (4, 3)


def test_shipped_nets_and_solvers():
    for solver, dim, classes in (("solvers/detection_finetune.prototxt", 12800, 20),
                                 ("solvers/detection_demo_finetune.prototxt", 1344, 4)):
        path = os.path.join(ROOT, solver)
        net_path = solver_net_path(path)
        assert os.path.exists(os.path.join(ROOT, net_path)) or os.path.exists(net_path)
        param = sppcaffe.io.read_solver(path)
        assert param.lr_policy == "step" and param.gamma == pytest.approx(0.1)
    paper = sppcaffe.io.read_solver(os.path.join(ROOT, "solvers/detection_finetune.prototxt"))
    assert paper.base_lr == pytest.approx(1e-4)
    assert (paper.stepsize, paper.max_iter) == (250000, 300000)
