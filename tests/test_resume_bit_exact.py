"""Resuming from a snapshot continues exactly as the uninterrupted run, on
real data pipelines: every data layer (ImageData with shuffle, Data/LMDB,
HDF5Data with shuffle, WindowData), multi-size epochs, prefetch threads
that have read ahead, Dropout, iter_size > 1 and test nets.  Every weight
and history value is compared bit for bit; the README's own demo solver
is run through tools/train_net, straight and resumed at half way."""
import json
import logging
import os
import re

import cv2
import h5py
import numpy as np
import pytest

import sppcaffe
from sppcaffe import io
from sppcaffe.data import LMDBWriter, array_to_datum
from sppcaffe.proto import caffe_pb2
from sppcaffe.random import generator_state
from sppcaffe.solvers import get_solver
from sppcaffe.solvers.resume_state import FORMAT
from test_demo import demo_checkout, train
from test_solvers import make_param

NUM_IMAGES = 7
CLASSES = 3


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny sources for every data layer: PNGs of varied sizes and their
    list, an LMDB of the same images, two HDF5 files, a window file."""
    folder = tmp_path_factory.mktemp("resume_data")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (int(rng.integers(9, 14)), int(rng.integers(9, 15)), 3),
                           dtype=np.uint8) for _ in range(NUM_IMAGES)]
    labels = [i % CLASSES for i in range(NUM_IMAGES)]
    with open(folder / "list.txt", "w") as f:
        for i, (image, label) in enumerate(zip(images, labels)):
            cv2.imwrite(str(folder / f"im{i}.png"), image)
            f.write(f"im{i}.png {label}\n")
    with LMDBWriter(str(folder / "lmdb")) as db:
        for i, (image, label) in enumerate(zip(images, labels)):
            db.put(f"{i:08d}", array_to_datum(image.transpose(2, 0, 1), label)
                   .SerializeToString())
    rows = rng.standard_normal((NUM_IMAGES, 3, 6, 6)).astype(np.float32)
    for name, part in (("a", slice(0, 4)), ("b", slice(4, None))):
        with h5py.File(folder / f"{name}.h5", "w") as f:
            f["data"] = rows[part]
            f["label"] = np.asarray(labels[part], np.float32)
    (folder / "h5.txt").write_text(f"{folder}/a.h5\n{folder}/b.h5\n")
    windows = "".join(
        f"# {i}\nim{i}.png\n3\n{images[i].shape[0]}\n{images[i].shape[1]}\n3\n"
        f"{1 + i % 2} 0.9 1 1 7 7\n2 0.8 0 2 8 8\n0 0.1 2 0 6 6\n" for i in range(3))
    (folder / "windows.txt").write_text(windows)
    return folder


# ---------------------------------------------------------------------------
# Nets and solvers
# ---------------------------------------------------------------------------
# Conv, SPP (any input size: multi-size epochs change it), Dropout, two fc.
TRUNK = """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "spp" type: "SPP" bottom: "conv" top: "spp"
        spp_param { pool: MAX method: ADAPTIVE levels: 2 levels: 1 } }
layer { name: "fc1" type: "InnerProduct" bottom: "spp" top: "fc1"
        inner_product_param { num_output: 8 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "drop" type: "Dropout" bottom: "fc1" top: "fc1" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc2" bottom: "label" top: "acc"
        include { phase: TEST } }
"""


def image_data(folder, phase, batch=2, shuffle=True, transform="crop_size: 8 mirror: true",
               data_param=""):
    shuffle = "shuffle: true" if shuffle and phase == "TRAIN" else ""
    return (f'layer {{ name: "data" type: "ImageData" top: "data" top: "label" '
            f"include {{ phase: {phase} }} transform_param {{ {transform} }} "
            f'image_data_param {{ source: "{folder}/list.txt" root_folder: "{folder}/" '
            f"batch_size: {batch} {shuffle} }} {data_param} }}")


def lmdb_data(folder, phase, transform="crop_size: 8 mirror: true", extra="rand_skip: 4"):
    extra = extra if phase == "TRAIN" else ""
    return (f'layer {{ name: "data" type: "Data" top: "data" top: "label" '
            f"include {{ phase: {phase} }} transform_param {{ {transform} }} "
            f'data_param {{ source: "{folder}/lmdb" backend: LMDB batch_size: 2 {extra} }} }}')


def hdf5_data(folder, phase):
    shuffle = "shuffle: true" if phase == "TRAIN" else ""
    return (f'layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" '
            f"include {{ phase: {phase} }} "
            f'hdf5_data_param {{ source: "{folder}/h5.txt" batch_size: 3 {shuffle} }} }}')


def window_data(folder, phase):
    return (f'layer {{ name: "data" type: "WindowData" top: "data" top: "label" '
            f"include {{ phase: {phase} }} transform_param {{ crop_size: 8 mirror: true }} "
            f'window_data_param {{ source: "{folder}/windows.txt" root_folder: "{folder}/" '
            f"batch_size: 4 fg_fraction: 0.5 context_pad: 1 }} }}")


ALTERNATE = "crop_size: 8 mirror: true multi_size: 8 multi_size: 6"
RANDOM_RANGE = "crop_size: 8 multi_size: 5 multi_size: 9 multi_size_mode: RANDOM_RANGE"

# name: (data layer text for a phase, solver fields)
CASES = {
    "ImageData shuffle, prefetch": (image_data, {}),
    "ImageData shuffle, prefetch 0, iter_size 3": (
        lambda f, p: image_data(f, p, data_param="data_param { prefetch: 0 }"),
        dict(iter_size=3)),
    "ImageData, prefetch 1": (
        lambda f, p: image_data(f, p, batch=3, data_param="data_param { prefetch: 1 }"), {}),
    "Data (LMDB), rand_skip": (lmdb_data, {}),
    "HDF5Data shuffle": (hdf5_data, {}),
    "WindowData": (window_data, {}),
    "multi-size ALTERNATE (ImageData)": (
        lambda f, p: image_data(f, p, transform=ALTERNATE), {}),
    "multi-size RANDOM_RANGE (Data)": (
        lambda f, p: lmdb_data(f, p, transform=RANDOM_RANGE), {}),
}


def net_text(folder, layer):
    return layer(folder, "TRAIN") + layer(folder, "TEST") + TRUNK


def new_solver(folder, layer, prefix, **fields):
    fields = {**dict(type="SGD", base_lr=0.05, momentum=0.9, weight_decay=0.001, iter_size=2,
                     lr_policy="step", stepsize=3, gamma=0.5, max_iter=6, snapshot=3,
                     snapshot_prefix=str(prefix), test_iter=[2], test_interval=2,
                     test_initialization=True), **fields}
    return get_solver(make_param(net_text(folder, layer), **fields))


class Scores:
    """A listener keeping the test scores by iteration."""

    def __init__(self):
        self.by_iter = {}

    def on_test(self, solver, net_index, scores):
        self.by_iter[(solver.iter, net_index)] = scores


def weights_and_history(solver):
    return ([p.data.copy() for p in solver.net.learnable_params]
            + [h.copy() for h in solver.history])


def assert_bit_equal(got, expected):
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert np.array_equal(g, e), (
            f"array {i} differs by up to {np.abs(g.astype(np.float64) - e).max()}")


def straight_and_resumed(folder, layer, tmp_path, steps=6, **fields):
    """Run 0 -> steps straight (snapshot at steps/2) and from that snapshot
    to `steps` in a new solver; returns both solvers and their scores."""
    half = steps // 2
    straight = new_solver(folder, layer, tmp_path / "straight" / "s", max_iter=steps,
                          snapshot=half, **fields)
    straight_scores = Scores()
    straight.add_listener(straight_scores)
    straight.step(steps)
    resumed = new_solver(folder, layer, tmp_path / "resumed" / "s", max_iter=steps,
                         snapshot=half, **fields)
    resumed_scores = Scores()
    resumed.add_listener(resumed_scores)
    resumed.restore(str(tmp_path / "straight" / f"s_iter_{half}.solverstate"))
    resumed.step(steps - half)
    return straight, resumed, straight_scores.by_iter, resumed_scores.by_iter


@pytest.fixture
def dirs(tmp_path):
    for name in ("straight", "resumed"):
        os.makedirs(tmp_path / name)
    return tmp_path


# ---------------------------------------------------------------------------
# Every data layer, straight vs. resumed
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_resumed_training_equals_the_uninterrupted_run(files, dirs, case):
    layer, fields = CASES[case]
    straight, resumed, straight_scores, resumed_scores = straight_and_resumed(
        files, layer, dirs, **fields)
    assert resumed.iter == straight.iter == 6
    assert_bit_equal(weights_and_history(resumed), weights_and_history(straight))
    # The test net's data position is restored too: the scores after the
    # snapshot are the uninterrupted run's.
    later = {key: value for key, value in straight_scores.items() if key[0] > 3}
    assert later and resumed_scores == later


def test_the_data_layers_really_move_between_the_halves(files, dirs):
    """The comparison above can fail: restoring weights and history alone
    (the sidecar removed) gives other weights, for every kind of layer."""
    for case in ("ImageData shuffle, prefetch", "Data (LMDB), rand_skip", "HDF5Data shuffle",
                 "WindowData"):
        layer, fields = CASES[case]
        work = dirs / case.split()[0]
        for name in ("straight", "resumed"):
            os.makedirs(work / name)
        straight = new_solver(files, layer, work / "straight" / "s", **fields)
        straight.step(6)
        # The framework generator (Dropout) restored, the data positions not:
        sidecar = work / "straight" / "s_iter_3.solverstate.rng"
        content = json.loads(sidecar.read_text())
        content["train_net"] = []
        sidecar.write_text(json.dumps(content))
        resumed = new_solver(files, layer, work / "resumed" / "s", **fields)
        resumed.restore(str(work / "straight" / "s_iter_3.solverstate"))
        resumed.step(3)
        got, expected = weights_and_history(resumed), weights_and_history(straight)
        assert not all(np.array_equal(g, e) for g, e in zip(got, expected)), case


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_resume_from_any_iteration_with_prefetch_read_ahead(files, dirs, steps):
    """Snapshots at 1, 2 and 5 of 2 x steps: the prefetch thread has read
    several batches ahead of each, and an epoch boundary falls between."""
    layer, _ = CASES["ImageData shuffle, prefetch"]
    straight, resumed, _, _ = straight_and_resumed(files, layer, dirs, steps=2 * steps)
    assert_bit_equal(weights_and_history(resumed), weights_and_history(straight))


def test_resume_in_gpu_mode(files, dirs, gpu_device):
    """The device's Dropout draws its seeds from the framework generator."""
    layer, _ = CASES["ImageData shuffle, prefetch"]
    straight, resumed, _, _ = straight_and_resumed(files, layer, dirs)
    assert_bit_equal(weights_and_history(resumed), weights_and_history(straight))


def test_solve_resumes_and_snapshots_the_same_files(files, dirs):
    """solve(resume_file) as train_net --snapshot runs it: the final
    weights file is byte for byte the uninterrupted run's."""
    layer, _ = CASES["multi-size ALTERNATE (ImageData)"]
    straight = new_solver(files, layer, dirs / "straight" / "s")
    straight.solve()
    resumed = new_solver(files, layer, dirs / "resumed" / "s")
    resumed.solve(str(dirs / "straight" / "s_iter_3.solverstate"))
    assert ((dirs / "resumed" / "s_iter_6.caffemodel").read_bytes()
            == (dirs / "straight" / "s_iter_6.caffemodel").read_bytes())


# ---------------------------------------------------------------------------
# A layer's position, taken while its prefetch thread reads ahead
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_a_restored_layer_delivers_the_batches_the_original_would(files, case):
    layer, _ = CASES[case]
    net_param = io.parse_text(layer(files, "TRAIN"), caffe_pb2.NetParameter())
    sppcaffe.set_random_seed(1)
    original = sppcaffe.Net(net_param, sppcaffe.TRAIN)
    for _ in range(5):
        original.forward()
    state = json.loads(json.dumps(original.layers[0].data_state()))   # as the sidecar keeps it
    sppcaffe.set_random_seed(2)                  # another seed: the state has all it needs
    copy = sppcaffe.Net(net_param, sppcaffe.TRAIN)
    copy.forward()
    copy.layers[0].restore_data_state(state)
    assert (copy.layers[0].epoch, copy.layers[0].current_size) == \
        (original.layers[0].epoch, original.layers[0].current_size)
    for _ in range(6):
        original.forward()
        copy.forward()
        for name in ("data", "label"):
            assert np.array_equal(copy.blobs[name].data, original.blobs[name].data)


# ---------------------------------------------------------------------------
# What cannot be restored is said
# ---------------------------------------------------------------------------
def test_a_missing_sidecar_is_a_warning_naming_what_will_differ(files, dirs, caplog):
    layer, _ = CASES["ImageData shuffle, prefetch"]
    straight = new_solver(files, layer, dirs / "straight" / "s")
    straight.step(3)
    state_path = dirs / "straight" / "s_iter_3.solverstate"
    os.unlink(f"{state_path}.rng")
    resumed = new_solver(files, layer, dirs / "resumed" / "s")
    caplog.set_level(logging.WARNING, logger="sppcaffe")
    resumed.restore(str(state_path))
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert f"no {state_path}.rng beside it" in warning
    assert "random generator (Dropout masks" in warning
    assert "layer 'data' (ImageData) of the train net" in warning
    assert "layer 'data' (ImageData) of the test net #0" in warning


def test_a_version_1_sidecar_restores_the_generator_and_warns(files, dirs, caplog):
    layer, _ = CASES["ImageData shuffle, prefetch"]
    straight = new_solver(files, layer, dirs / "straight" / "s")
    straight.step(3)
    sidecar = dirs / "straight" / "s_iter_3.solverstate.rng"
    content = json.loads(sidecar.read_text())
    assert content["format"] == FORMAT and content["version"] == 2
    sidecar.write_text(json.dumps(content["random"]))    # what sppcaffe wrote before
    resumed = new_solver(files, layer, dirs / "resumed" / "s")
    caplog.set_level(logging.WARNING, logger="sppcaffe")
    resumed.restore(str(dirs / "straight" / "s_iter_3.solverstate"))
    assert generator_state() == content["random"]
    assert "layer 'data' (ImageData) of the train net: a version 1 file has no data " \
           "positions" in caplog.text


def test_a_changed_source_is_a_warning_naming_the_layer(files, dirs, caplog, tmp_path):
    layer, _ = CASES["ImageData shuffle, prefetch"]
    straight = new_solver(files, layer, dirs / "straight" / "s")
    straight.step(3)
    # The same images, two of them gone from the list.
    shorter = tmp_path / "shorter"
    os.makedirs(shorter)
    lines = (files / "list.txt").read_text().splitlines()[:NUM_IMAGES - 2]
    (shorter / "list.txt").write_text("".join(f"{files}/{line}\n" for line in lines))

    def short_layer(folder, phase):
        return layer(folder, phase).replace(f'root_folder: "{folder}/"', 'root_folder: ""')

    resumed = new_solver(shorter, short_layer, dirs / "resumed" / "s")
    caplog.set_level(logging.WARNING, logger="sppcaffe")
    resumed.restore(str(dirs / "straight" / "s_iter_3.solverstate"))
    assert (f"layer 'data' (ImageData) of the train net: the image list '{files}/list.txt' "
            f"had {NUM_IMAGES} images, '{shorter}/list.txt' has {NUM_IMAGES - 2}") in caplog.text
    resumed.step(1)           # it trains on, from the start of the new list


def test_the_sidecar_format_is_documented_json(files, dirs):
    layer, _ = CASES["HDF5Data shuffle"]
    solver = new_solver(files, layer, dirs / "straight" / "s")
    solver.step(3)
    content = json.loads((dirs / "straight" / "s_iter_3.solverstate.rng").read_text())
    assert set(content) == {"format", "version", "random", "train_net", "test_nets"}
    (train_entry,) = content["train_net"]
    assert train_entry["layer"] == "data" and train_entry["type"] == "HDF5Data"
    reader = train_entry["reader"]
    assert {"rng", "file_order", "current_file", "row_order", "row", "epoch"} <= set(reader)
    # 3 iterations x iter_size 2 x batch 3 = 18 rows of 7: the third pass, at row 4 of it.
    assert reader["epoch"] == 2 and len(content["test_nets"]) == 1


# ---------------------------------------------------------------------------
# The README's claim on its own demo (tools/train_net, solvers/demo_spp.prototxt)
# ---------------------------------------------------------------------------
def logged_test_outputs(log):
    """{(iteration, output name): value} of the log's test lines."""
    found, iteration = {}, None
    for line in log.splitlines():
        match = re.search(r"Iteration (\d+), Testing net", line)
        if match:
            iteration = int(match.group(1))
        match = re.search(r"Test net output #\d+: (\w+) = (\S+)", line)
        if match:
            found[(iteration, match.group(1))] = match.group(2)
    return found


def run_demo_straight_and_resumed(tmp_path, steps, settings=(), timeout=600, **counts):
    workdir = demo_checkout(tmp_path, **counts)
    half = steps // 2
    common = ["--iters", str(steps), "--set", f"snapshot={half}", "--no-plot", *settings]
    straight = train(workdir, *common, timeout=timeout)
    assert straight.returncode == 0, straight.stderr[-3000:]
    resumed = train(workdir, *common, "--set", "snapshot_prefix=snapshots/resumed/demo_spp",
                    "--snapshot", f"snapshots/demo_spp/demo_spp_iter_{half}.solverstate",
                    timeout=timeout)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # (glog's prefix: W for a warning.)  Nothing was left out of the restore.
    assert not re.findall(r"^W\d{4} .*", resumed.stderr, re.M)
    snapshots = workdir / "snapshots"
    got = snapshots / "resumed" / f"demo_spp_iter_{steps}"
    expected = snapshots / "demo_spp" / f"demo_spp_iter_{steps}"
    weights = [io.read_binary(f"{path}.caffemodel", caffe_pb2.NetParameter())
               for path in (got, expected)]
    blobs = [[io.blob_to_array(b) for layer in w.layer for b in layer.blobs] for w in weights]
    assert len(blobs[0]) == 10
    assert_bit_equal(blobs[0], blobs[1])
    states = [io.read_binary(f"{path}.solverstate", caffe_pb2.SolverState())
              for path in (got, expected)]
    assert_bit_equal([io.blob_to_array(h) for h in states[0].history],
                     [io.blob_to_array(h) for h in states[1].history])
    return logged_test_outputs(straight.stderr), logged_test_outputs(resumed.stderr)


def test_demo_solver_resumed_at_half_way_equals_the_straight_run(tmp_path):
    """The shipped solver and net (ImageData + shuffle, iter_size 8,
    prefetch, test net) on a 20-image set: 6 iterations are 2.4 epochs;
    tests every 2 iterations, 3 test images each time."""
    straight, resumed = run_demo_straight_and_resumed(
        tmp_path, 6, ["--set", "test_interval=2", "--set", "test_iter=3"],
        train_per_class=2, test_per_class=1)
    later = {key: value for key, value in straight.items() if key[0] > 3}
    assert len(later) == 4 and {key: resumed[key] for key in later} == later


@pytest.mark.slow
def test_demo_as_shipped_resumed_at_iteration_20_equals_40_straight(tmp_path):
    """The issue's case: the default demo set and solver, 0 -> 40 straight
    against the iteration-20 snapshot resumed to 40."""
    run_demo_straight_and_resumed(tmp_path, 40, timeout=1800)
