"""SIGKILL at random moments during each writer of sppcaffe (training
snapshots, the detection feature cache, an LMDB database): afterwards every
file on disk loads, and running again resumes (or redoes) the work to the
end.  The moments are random (from the moment the writer has started
writing); a failure prints the seed that repeats them (SPPCAFFE_KILL_SEED)."""
import glob
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

import sppcaffe
from sppcaffe.data import DatumReader, datum_to_array, iterate_db, parse_datum
from sppcaffe.detection import cache, voc
from sppcaffe.detection.synthetic import SYNTHETIC_CLASSES, make_synthetic_voc
from test_extract_features import saved_net, spp_args
from test_features import TINY_CONV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")


@pytest.fixture
def kill_rng():
    """(random.Random, its seed) for the kill moments."""
    seed = int(os.environ.get("SPPCAFFE_KILL_SEED") or random.randrange(1 << 32))
    print(f"SPPCAFFE_KILL_SEED={seed}")         # shown by pytest when the test fails
    return random.Random(seed), seed


def run_and_kill(argv, started, delay, log_path, timeout=120):
    """Run tool `argv`, wait until `started()` says it is writing, wait
    `delay` seconds more and SIGKILL it; whether the kill came before the
    tool had finished."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable] + argv, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + timeout
        while not started() and process.poll() is None:
            assert time.monotonic() < deadline, f"{argv[0]} did not start writing"
            time.sleep(0.01)
        time.sleep(delay)
        interrupted = process.poll() is None
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    return interrupted


def run_to_end(argv, log_path, timeout=300):
    with open(log_path, "ab") as log:
        result = subprocess.run([sys.executable] + argv, stdout=log, stderr=log, timeout=timeout)
    return result.returncode


def log_tail(path):
    with open(path, "rb") as f:
        return f.read()[-2000:].decode(errors="replace")


# ---------------------------------------------------------------------------
# Snapshots (train_net)
# ---------------------------------------------------------------------------
# Big enough that a snapshot takes a while to write (an 8 MB model and state).
BIG_NET = """name: "big"
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 2 dim: 1024 } shape { dim: 2 }
                           data_filler { type: "gaussian" } data_filler { type: "constant" } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 1024 weight_filler { type: "xavier" } } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" }
layer { name: "out" type: "InnerProduct" bottom: "fc" top: "out"
        inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "out" bottom: "label" top: "loss" }
"""
BIG_SOLVER = """net: "{net}"
base_lr: 0.001
momentum: 0.9
lr_policy: "fixed"
max_iter: 100000
snapshot: 1
snapshot_prefix: "{prefix}"
display: 0
random_seed: 5
"""


def snapshot_iterations(folder, extension):
    return sorted(int(m.group(1)) for name in os.listdir(folder)
                  if (m := re.fullmatch(r"big_iter_(\d+)\." + extension, name)))


def check_snapshots_load(solver_path, folder):
    """Every snapshot file in `folder` loads: each caffemodel into the net,
    each state (with its weights file and .rng sidecar) into a solver."""
    solver = sppcaffe.get_solver(solver_path)
    for model in glob.glob(os.path.join(folder, "*.caffemodel")):
        solver.net.copy_from(model)
    for state in glob.glob(os.path.join(folder, "*.solverstate")):
        solver.restore(state)
        assert f"big_iter_{solver.iter}.solverstate" == os.path.basename(state)
    solver.net.close()


def test_snapshots_survive_sigkill_and_training_resumes(tmp_path, kill_rng):
    rng, seed = kill_rng
    folder = tmp_path / "snapshots"
    folder.mkdir()
    (tmp_path / "big.prototxt").write_text(BIG_NET)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(BIG_SOLVER.format(net=tmp_path / "big.prototxt", prefix=folder / "big"))
    log = tmp_path / "train.log"
    base = [os.path.join(TOOLS, "train_net"), "--solver", str(solver), "--no-plot",
            "--no-progress", "--threads", "1"]
    resume = []
    for round_ in range(2):
        before = len(os.listdir(folder))
        interrupted = run_and_kill(base + resume, lambda: len(os.listdir(folder)) > before,
                                   rng.uniform(0, 0.5), log)
        assert interrupted, f"SPPCAFFE_KILL_SEED={seed}: training ended before the kill"
        check_snapshots_load(str(solver), str(folder))
        latest = snapshot_iterations(folder, "solverstate")[-1]
        resume = ["--snapshot", str(folder / f"big_iter_{latest}.solverstate")]
    # The last run resumes from the latest state to an end of its own.
    end = latest + 2
    assert run_to_end(base + resume + ["--iters", str(end)], log) == 0, log_tail(log)
    assert snapshot_iterations(folder, "solverstate")[-1] == end
    check_snapshots_load(str(solver), str(folder))
    # Temporary files of the killed writes were removed when training started again.
    assert not glob.glob(str(folder / "*.tmp")), f"SPPCAFFE_KILL_SEED={seed}"


# ---------------------------------------------------------------------------
# The feature cache (extract_features spp)
# ---------------------------------------------------------------------------
def test_feature_cache_survives_sigkill_and_extraction_resumes(tmp_path, kill_rng):
    rng, seed = kill_rng
    root = make_synthetic_voc(tmp_path / "voc", num_images=12, size_range=(120, 160))
    trainval = voc.VOCDataset(root, "trainval", SYNTHETIC_CLASSES).image_ids
    proto, weights, _ = saved_net(tmp_path, TINY_CONV, "conv")
    out = tmp_path / "cache"
    log = tmp_path / "extract.log"
    argv = [os.path.join(TOOLS, "extract_features")] + \
        spp_args(root, proto, weights, out, "--scales", "300")

    def cached_count():
        """Images in the cache; -1 before the cache is started."""
        return len(cache.image_ids(out)) if os.path.exists(out / cache.META_FILE) else -1

    for _ in range(2):
        # Killed at a random point of what is left to extract.
        done = max(cached_count(), 0)
        target = done + rng.randrange(max(1, (len(trainval) - done) // 2))
        interrupted = run_and_kill(argv, lambda: cached_count() >= target, rng.uniform(0, 0.2),
                                   log)
        assert interrupted, f"SPPCAFFE_KILL_SEED={seed}: extraction ended before the kill"
        cache.meta(out)
        for image_id in cache.image_ids(out):
            assert cache.is_complete(out, image_id), f"SPPCAFFE_KILL_SEED={seed}: {image_id}"
            cache.load(out, image_id)
    assert run_to_end(argv, log) == 0, log_tail(log)
    assert cache.image_ids(out) == sorted(trainval)
    for image_id in trainval:
        cache.load(out, image_id)
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


# ---------------------------------------------------------------------------
# LMDB (convert_imageset)
# ---------------------------------------------------------------------------
def check_database(path, count):
    """The database at `path` holds `count` readable Datums."""
    records = list(iterate_db(path))
    assert len(records) == count
    for key, value in records:
        datum_to_array(parse_datum(value, key), where=key)
    reader = DatumReader(path)
    reader.close()


def test_lmdb_writer_survives_sigkill_and_converting_again_works(tmp_path, kill_rng):
    rng, seed = kill_rng
    images = tmp_path / "images"
    images.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    count = 8000
    for i in range(3):
        cv2.imwrite(str(images / f"{i}.png"), np.roll(pixels, i))
    (tmp_path / "list.txt").write_text("".join(f"{i % 3}.png {i % 5}\n" for i in range(count)))
    db = tmp_path / "db"
    argv = [os.path.join(TOOLS, "convert_imageset"), f"{images}/", str(tmp_path / "list.txt"),
            str(db)]
    for round_ in range(2):
        # Killed during a random transaction (1000 records each, logged when committed).
        log = tmp_path / f"convert{round_}.log"
        committed = f"Processed {1000 * rng.randrange(1, count // 1000)} files."
        interrupted = run_and_kill(argv, lambda: log.exists() and committed in log.read_text(),
                                   rng.uniform(0, 0.03), log)
        assert interrupted, f"SPPCAFFE_KILL_SEED={seed}: the conversion ended before the kill"
        # Under the database's name there is nothing, or (killed after the rename) all of it.
        if db.exists():
            check_database(str(db), count)
            shutil.rmtree(db)
    assert run_to_end(argv, tmp_path / "convert.log") == 0, log_tail(tmp_path / "convert.log")
    check_database(str(db), count)
    # The killed runs' temporary databases were removed by the run that completed.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("db")) == ["db"]
