"""The demo: its image set (sppcaffe/demo.py, tools/make_demo_data) and a
training run of solvers/demo_spp.prototxt through tools/train_net."""
import collections
import csv
import filecmp
import os
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

import sppcaffe
from sppcaffe import demo
from sppcaffe.data import read_image_list

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
SMALL = dict(train_per_class=6, test_per_class=3)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    manifest = demo.make_demo_dataset(str(out), seed=0, **SMALL)
    return str(out), manifest


def list_images(folder, split):
    return [(os.path.join(folder, path), label)
            for path, label, _ in read_image_list(os.path.join(folder, f"{split}.txt"))]


def all_files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder)
                  for d, _, files in os.walk(folder) for f in files)


# ---------------------------------------------------------------------------
# The image set
# ---------------------------------------------------------------------------
def test_same_seed_same_bytes_other_seed_other_images(small_set, tmp_path):
    folder, _ = small_set
    again = tmp_path / "again"
    demo.make_demo_dataset(str(again), seed=0, **SMALL)
    files = all_files(folder)
    assert files == all_files(str(again))
    match, mismatch, errors = filecmp.cmpfiles(folder, str(again), files, shallow=False)
    assert not mismatch and not errors
    other = tmp_path / "other"
    demo.make_demo_dataset(str(other), seed=1, **SMALL)
    _, mismatch, _ = filecmp.cmpfiles(folder, str(other), files, shallow=False)
    assert len(mismatch) > len(files) // 2


def test_list_files_are_valid_and_balanced(small_set):
    folder, manifest = small_set
    for split, per_class in (("train", SMALL["train_per_class"]),
                             ("test", SMALL["test_per_class"])):
        entries = list_images(folder, split)
        assert len(entries) == manifest["images"][split] == per_class * demo.NUM_CLASSES
        counts = collections.Counter(label for _, label in entries)
        assert counts == {c: per_class for c in range(demo.NUM_CLASSES)}
        assert all(os.path.isfile(path) for path, _ in entries)
        assert len({path for path, _ in entries}) == len(entries)
        # Shuffled, not grouped by class: any prefix of the list is a fair sample.
        labels = [label for _, label in entries]
        assert labels != sorted(labels)


def test_images_vary_in_size_and_aspect(small_set):
    folder, _ = small_set
    shapes = []
    for path, _ in list_images(folder, "train") + list_images(folder, "test"):
        image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
        assert np.ptp(image.astype(int)[:, :, 0] - image[:, :, 2]) > 0    # in colour
        shapes.append(image.shape[:2])
    heights, widths = np.array(shapes).T
    assert heights.min() >= demo.MIN_SIDE and heights.max() <= demo.MAX_SIDE
    assert widths.min() >= demo.MIN_SIDE and widths.max() <= demo.MAX_SIDE
    aspects = widths / heights
    # width is height * aspect rounded, so the ratio may miss the range by half a pixel
    assert aspects.min() >= demo.MIN_ASPECT - 0.5 / demo.MIN_SIDE
    assert aspects.max() <= demo.MAX_ASPECT + 0.5 / demo.MIN_SIDE
    assert len(set(shapes)) > 0.8 * len(shapes)
    assert aspects.min() < 0.8 and aspects.max() > 1.25          # tall and wide ones


def test_draw_size_covers_the_ranges():
    rng = np.random.default_rng(3)
    sizes = np.array([demo.draw_size(rng) for _ in range(2000)])
    aspects = sizes[:, 1] / sizes[:, 0]
    assert sizes.min() == demo.MIN_SIDE and sizes.max() == demo.MAX_SIDE
    assert aspects.min() < 0.65 and aspects.max() > 1.5
    assert 0.35 < np.mean(aspects > 1) < 0.65                   # tall as likely as wide


def test_test_digits_are_not_training_digits():
    _, labels = demo.load_digit_scans()
    train, test = demo.split_sources(labels, np.random.default_rng(0))
    for c in range(demo.NUM_CLASSES):
        assert not set(train[c]) & set(test[c])
        assert (labels[train[c]] == c).all() and (labels[test[c]] == c).all()
        assert len(test[c]) == pytest.approx(demo.TEST_SOURCE_FRACTION * (labels == c).sum(),
                                             abs=1)


def test_replaces_a_demo_set_but_nothing_else(tmp_path):
    out = tmp_path / "demo"
    demo.make_demo_dataset(str(out), seed=0, train_per_class=1, test_per_class=1)
    (out / "stale.txt").write_text("from an older set")
    demo.make_demo_dataset(str(out), seed=0, train_per_class=2, test_per_class=1)
    assert not (out / "stale.txt").exists()
    assert len(list_images(str(out), "train")) == 20
    assert sorted(os.listdir(tmp_path)) == ["demo"]             # no temporaries left
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep")
    with pytest.raises(demo.DemoDataError, match="not a demo data set"):
        demo.make_demo_dataset(str(precious), seed=0, train_per_class=1, test_per_class=1)
    assert (precious / "notes.txt").read_text() == "keep"


def test_make_demo_data_tool(tmp_path):
    out = tmp_path / "data" / "demo"
    result = subprocess.run([sys.executable, os.path.join(TOOLS, "make_demo_data"), "--out",
                             str(out), "--seed", "2", "--train-per-class", "2",
                             "--test-per-class", "1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Wrote 20 training and 10 test images" in result.stdout
    assert demo.is_demo_folder(str(out))


# ---------------------------------------------------------------------------
# Training through tools/train_net
# ---------------------------------------------------------------------------
def demo_checkout(tmp_path, **counts):
    """A working directory laid out like the repository root, with a demo
    set, so that the solver's relative paths resolve as in the README."""
    os.makedirs(tmp_path / "models")
    shutil.copytree(os.path.join(ROOT, "models", "demo_spp"), tmp_path / "models" / "demo_spp")
    shutil.copytree(os.path.join(ROOT, "solvers"), tmp_path / "solvers")
    demo.make_demo_dataset(str(tmp_path / "data" / "demo"), seed=0, **counts)
    return tmp_path


def train(workdir, *args, timeout):
    return subprocess.run([sys.executable, os.path.join(TOOLS, "train_net"), "--solver",
                           "solvers/demo_spp.prototxt", *args], cwd=workdir,
                          capture_output=True, text=True, timeout=timeout)


def curves(workdir):
    with open(workdir / "snapshots" / "demo_spp" / "demo_spp_training.csv", newline="") as f:
        return list(csv.DictReader(f))


def keep_classes(folder, classes):
    """Cut both list files down to `classes`."""
    for split in ("train", "test"):
        path = os.path.join(folder, f"{split}.txt")
        lines = [line for line in open(path) if int(line.split()[-1]) in classes]
        with open(path, "w") as f:
            f.writelines(lines)


def test_short_training_runs_end_to_end(tmp_path):
    """60 iterations of the shipped solver and net.  Two of the ten classes
    only, so that so short a run surely lowers the loss (from ln 10 = 2.3,
    the untrained net's, towards ln 2 and below)."""
    workdir = demo_checkout(tmp_path, train_per_class=20, test_per_class=5)
    keep_classes(workdir / "data" / "demo", {0, 1})
    result = train(workdir, "--iters", "60", "--set", "display=10", "--set", "average_loss=10",
                   "--set", "test_iter=10", "--set", "test_interval=60", timeout=600)
    assert result.returncode == 0, result.stderr
    log = result.stderr
    # ImageData at batch 1: the data blob takes each image's own size.
    assert re.search(r"ImageData layer 'data': output data size: 1,3,\d+,\d+, 1", log)
    assert "BLAS threads: 1 for this small net" in log
    losses = [float(v) for v in re.findall(r"Iteration \d+ \(.*\), loss = ([0-9.e+-]+)", log)]
    assert len(losses) == 6
    assert losses[0] > 2.0 and losses[-1] < 1.5
    snapshots = workdir / "snapshots" / "demo_spp"
    assert (snapshots / "demo_spp_iter_60.caffemodel").is_file()
    assert (snapshots / "demo_spp_iter_60.solverstate").is_file()
    assert (snapshots / "demo_spp_training.png").stat().st_size > 1000
    rows = curves(workdir)
    assert {r["output"] for r in rows if r["phase"] == "test"} == {"accuracy", "loss"}
    assert [int(r["iteration"]) for r in rows if r["output"] == "accuracy"] == [0, 60]
    assert [int(r["iteration"]) for r in rows if r["output"] == "smoothed_loss"] == \
        list(range(0, 60, 10))


def test_deploy_net_matches_train_val():
    deploy = sppcaffe.Net(os.path.join(ROOT, "models", "demo_spp", "deploy.prototxt"),
                          sppcaffe.TEST)
    train_val = sppcaffe.Net(os.path.join(ROOT, "models", "demo_spp", "train_val.prototxt"),
                             sppcaffe.TEST, data_shapes={"data": (1, 3, 30, 30), "label": (1,)})
    assert {k: [b.shape for b in v] for k, v in deploy.params.items()} == \
        {k: [b.shape for b in v] for k, v in train_val.params.items()}
    for height, width in [(24, 64), (64, 38), (37, 37)]:
        probs = deploy.forward(data=np.zeros((1, 3, height, width), np.float32))["prob"]
        assert probs.shape == (1, demo.NUM_CLASSES)
        assert deploy.blobs["spp"].data.shape == (1, 32 * (16 + 4 + 1))


@pytest.mark.slow
def test_full_demo_reaches_high_accuracy(tmp_path):
    """The README's demo as shipped: the default image set and solver."""
    workdir = demo_checkout(tmp_path)
    result = train(workdir, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = [float(r["value"]) for r in curves(workdir) if r["output"] == "accuracy"]
    assert accuracy[0] == pytest.approx(0.1)
    assert accuracy[-1] >= 0.8
