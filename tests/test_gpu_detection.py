"""The detection pipeline in GPU mode, on the host build of the kernels:
SPP and R-CNN features, fc scoring and detection equal to CPU mode; the
features stay on the device until read; the tools' GPU forms
(`extract_features ... GPU`, `--gpu 0`) write what the CPU writes; and
without PyCUDA `--gpu 0` is one clear line.

The tiny nets and the 4-image synthetic VOC set are test_features.py's."""
import json
import os
import sys

import numpy as np
import pytest

from gpu_check import CountingDevice, on_device
from test_extract_features import DUMMY_NET, read_db, saved_net, spp_args
from test_features import LEVELS, MEAN, TINY_CONV, TINY_FULL, some_boxes, tiny_net
from sppcaffe import backends
from sppcaffe.blob import Blob
from sppcaffe.cli import detection_demo, extract_features, test_detection, test_net
from sppcaffe.detection import cache, detect, features, mapping, window_pool
from sppcaffe.detection.bbox_regression import BBoxRegressor
from sppcaffe.detection.cache import image_rows
from sppcaffe.detection.config import DetectConfig
from sppcaffe.detection.svm import FeatureTransform, SVMModel
from sppcaffe.detection.synthetic import SYNTHETIC_CLASSES

# fc6/fc7 over the tiny conv net's pooled features (6 channels x (4 + 1) bins).
FC_NET = """name: "tiny fc"
layer { name: "spp" type: "Input" top: "spp" input_param { shape { dim: 1 dim: 30 } } }
layer { name: "fc6" type: "InnerProduct" bottom: "spp" top: "fc6"
        inner_product_param { num_output: 16 weight_filler { type: "gaussian" std: 0.3 }
                              bias_filler { type: "constant" value: 0.2 } } }
layer { name: "relu_fc6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
        inner_product_param { num_output: 8 weight_filler { type: "gaussian" std: 0.3 }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu_fc7" type: "ReLU" bottom: "fc7" top: "fc7" }
"""
RTOL, ATOL = 1e-5, 1e-5


def gpu_mode_of(function, *args):
    """function(*args) in GPU mode on a fresh host device."""
    with on_device(CountingDevice()):
        return function(*args)


def image_and_boxes(dataset, k=1, count=60):
    image = dataset.read_image(dataset.image_ids[k])
    return image, some_boxes(*image.shape[:2], count=count, seed=k)


def assert_same_features(got, expected):
    assert got.device is not None and expected.device is None
    np.testing.assert_array_equal(got.inverse, expected.inverse)
    np.testing.assert_array_equal(got.scale_index, expected.scale_index)
    assert got.num_unique == expected.num_unique
    np.testing.assert_allclose(got.unique_feat, expected.unique_feat, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got.feat, expected.feat, rtol=RTOL, atol=ATOL)


# ---- features ------------------------------------------------------------------

@pytest.mark.parametrize("scales", [(96,), (160, 480)], ids=["1 scale", "2 scales"])
@pytest.mark.parametrize("pool", window_pool.POOLS)
@pytest.mark.parametrize("rule", [mapping.PAPER, mapping.RELEASED])
def test_spp_features_on_the_device_equal_the_cpus(tmp_path, tiny_voc_set, scales, pool,
                                                   rule):
    _, net = tiny_net(tmp_path)
    image, boxes = image_and_boxes(tiny_voc_set)
    extractor = features.SPPExtractor(net, scales=scales, levels=LEVELS, pool=pool, mean=MEAN,
                                      mapping_name=rule)
    expected = extractor(image, boxes)
    got = gpu_mode_of(extractor, image, boxes)
    assert_same_features(got, expected)
    assert len(np.unique(expected.scale_index)) == len(scales)   # every scale pools windows
    assert got.num_unique < len(boxes)                           # duplicates pooled once
    assert not got.unique_feat.flags.writeable


def test_conv_maps_are_device_copies_that_outlive_the_next_scale(tmp_path, tiny_voc_set):
    _, net = tiny_net(tmp_path)
    image, _ = image_and_boxes(tiny_voc_set)
    extractor = features.SPPExtractor(net, scales=(96, 160), levels=LEVELS, mean=MEAN)
    expected = extractor.conv_maps(image)
    with on_device(CountingDevice()):
        maps = extractor.conv_maps(image)
        assert all(isinstance(m.data, Blob) for m in maps)
        assert [m.data.shape for m in maps] == [e.data.shape for e in expected]
        for m, e in zip(maps, expected):
            np.testing.assert_allclose(m.data.cpu_data, e.data, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("conv_on_gpu", [True, False])
def test_maps_of_one_mode_are_pooled_in_the_other(tmp_path, tiny_voc_set, conv_on_gpu):
    _, net = tiny_net(tmp_path)
    image, boxes = image_and_boxes(tiny_voc_set, count=20)
    extractor = features.SPPExtractor(net, scales=(96,), levels=LEVELS, mean=MEAN)
    expected = extractor(image, boxes)
    with on_device(CountingDevice()):
        if conv_on_gpu:
            maps = extractor.conv_maps(image)
            backends.set_mode_cpu()
        else:
            backends.set_mode_cpu()
            maps = extractor.conv_maps(image)
            backends.set_mode_gpu()
        got = extractor.pool(maps, image.shape[:2], boxes)
    np.testing.assert_allclose(got.feat, expected.feat, rtol=RTOL, atol=ATOL)
    assert (got.device is None) == conv_on_gpu


def test_no_boxes_give_an_empty_device_store(tmp_path, tiny_voc_set):
    _, net = tiny_net(tmp_path)
    image, _ = image_and_boxes(tiny_voc_set)
    extractor = features.SPPExtractor(net, scales=(96,), levels=LEVELS, mean=MEAN)
    got = gpu_mode_of(extractor, image, np.zeros((0, 4)))
    assert got.unique_feat.shape == (0, 30) and got.feat.shape == (0, 30)
    assert got.num_unique == 0 and len(got.scale_index) == 0


@pytest.mark.parametrize("batch_size", [3, 100])
def test_rcnn_features_on_the_device_equal_the_cpus(tmp_path, tiny_voc_set, batch_size):
    _, net = tiny_net(tmp_path, TINY_FULL, "full.prototxt")
    image, boxes = image_and_boxes(tiny_voc_set, count=6)
    extractor = features.RCNNExtractor(net, blob="spp", mean=MEAN, padding=4,
                                       batch_size=batch_size)
    assert_same_features(gpu_mode_of(extractor, image, boxes), extractor(image, boxes))


# ---- scoring: fc6/fc7 fed on the device ----------------------------------------------

@pytest.fixture
def detector(tmp_path, tiny_voc_set):
    """(SPP extractor, SVMs on fc7, their transform, an entry maker)."""
    _, conv = tiny_net(tmp_path)
    _, fc = tiny_net(tmp_path, FC_NET, "fc.prototxt", seed=5)
    extractor = features.SPPExtractor(conv, scales=(96, 160), levels=LEVELS, mean=MEAN)
    rng = np.random.default_rng(7)
    model = SVMModel(["a", "b", "c"], rng.standard_normal((8, 3)).astype(np.float32),
                     rng.standard_normal(3).astype(np.float32), "fc7", 0.5)
    # batch_size 7: several passes, each copied from an offset of the device rows.
    transform = FeatureTransform("fc7", fc, scale=0.5, batch_size=7)

    def entry(image, boxes, feat):
        record = image_rows(boxes[:2], [1, 2], [False, False], boxes[2:], 3)
        record["feat"] = feat
        return record
    return extractor, model, transform, entry


def test_fc_scores_of_device_features_equal_the_cpus(detector, tiny_voc_set):
    extractor, model, transform, entry = detector
    image, boxes = image_and_boxes(tiny_voc_set)
    cached = entry(image, boxes, extractor(image, boxes).feat)     # what a cache holds
    rows = detect.proposal_rows(cached)
    expected = detect.SVMScorer(model, transform)(cached, rows)
    with on_device(CountingDevice()):
        result = extractor(image, boxes)
        got = detect.SVMScorer(model, transform)(entry(image, boxes, result), rows)
        assert result.device is not None
    assert got.shape == (len(rows), 3)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_device_features_scored_back_in_cpu_mode(detector, tiny_voc_set):
    extractor, model, transform, entry = detector
    image, boxes = image_and_boxes(tiny_voc_set, count=20)
    expected = detect.SVMScorer(model, transform)(entry(image, boxes, extractor(image, boxes)),
                                                  np.arange(2, len(boxes)))
    with on_device(CountingDevice()):
        result = extractor(image, boxes)
    got = detect.SVMScorer(model, transform)(entry(image, boxes, result), np.arange(2, len(boxes)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_detect_image_on_device_features_equals_cpu(detector, tiny_voc_set):
    extractor, model, transform, entry = detector
    image, boxes = image_and_boxes(tiny_voc_set)
    rng = np.random.default_rng(8)
    regressor = BBoxRegressor(["a", "b", "c"], rng.normal(0, 0.01, (3, 31, 4)).astype(np.float32),
                              np.zeros((3, 4)), np.tile(np.eye(4), (3, 1, 1)), 1.0,
                              np.ones(3, bool))
    hw = image.shape[:2]
    scorer = detect.SVMScorer(model, transform)
    expected = detect.detect_image(entry(image, boxes, extractor(image, boxes).feat), scorer,
                                   DetectConfig(), regressor, hw)
    with on_device(CountingDevice()):
        got = detect.detect_image(entry(image, boxes, extractor(image, boxes)), scorer,
                                  DetectConfig(), regressor, hw)
    assert sum(len(s) for s in got.scores) > 3
    for k in range(3):
        np.testing.assert_allclose(got.scores[k], expected.scores[k], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got.boxes[k], expected.boxes[k], rtol=1e-4, atol=1e-3)


class SizeCountingDevice(CountingDevice):
    """Also the size of every upload."""

    def __init__(self):
        super().__init__()
        self.upload_sizes = []

    def upload(self, ptr, array):
        self.upload_sizes.append(np.asarray(array).nbytes)
        super().upload(ptr, array)


def test_pooling_and_fc_copy_nothing_to_the_host_until_read(detector, tiny_voc_set):
    extractor, model, transform, _ = detector
    image, boxes = image_and_boxes(tiny_voc_set)
    with on_device(SizeCountingDevice()) as device:
        extractor(image, boxes)                     # kernels built, weights uploaded
        list(transform.outputs(extractor(image, boxes).device))
        maps = extractor.conv_maps(image)
        device.downloads, device.upload_sizes = 0, []
        result = extractor.pool(maps, image.shape[:2], boxes)
        passes = list(transform.outputs(result.device))
        assert len(passes) == -(-result.num_unique // 7) > 1
        assert device.downloads == 0
        # Only the windows' bin tables went up, never feature rows.
        row_bytes = 4 * result.device.shape[1]
        assert device.upload_sizes and max(device.upload_sizes) < row_bytes * result.num_unique
        scores = detect.SVMScorer(model, transform)({"feat": result}, np.arange(len(boxes)))
        assert device.downloads == len(passes)      # the fc7 rows of each pass, once
        assert scores.shape == (len(boxes), 3)
        result.feat
        assert device.downloads == len(passes) + 1   # the pooled rows, when read


# ---- tools ------------------------------------------------------------------------------

@pytest.fixture
def host_gpu(monkeypatch):
    """`--gpu 0` and GPU mode open the host build of the kernels."""
    monkeypatch.setenv("SPPCAFFE_GPU", "host")
    backends.use_device(None)
    yield
    backends.set_mode_cpu()
    backends.use_device(None)


@pytest.fixture
def no_pycuda(monkeypatch):
    """A machine without PyCUDA, whatever this one has."""
    monkeypatch.delenv("SPPCAFFE_GPU", raising=False)
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    backends.use_device(None)
    yield
    backends.use_device(None)


def test_caffe_form_on_the_gpu_writes_the_cpus_database(tmp_path, host_gpu, capsys):
    proto, weights, _ = saved_net(tmp_path, DUMMY_NET, "dummy")
    common = [weights, proto, "ip,conv"]
    assert extract_features.main(common + [f"{tmp_path / 'c1'},{tmp_path / 'c2'}", "2",
                                           "lmdb", "CPU"]) == 0
    assert extract_features.main(common + [f"{tmp_path / 'g1'},{tmp_path / 'g2'}", "2",
                                           "lmdb", "GPU", "0"]) == 0
    assert not backends.gpu_mode()                  # the mode is left as it was
    err = capsys.readouterr().err
    assert "Using GPU" in err and "Using Device_id=0" in err and "Use GPU with device ID 0" in err
    for cpu_db, gpu_db in (("c1", "g1"), ("c2", "g2")):
        cpu, gpu = read_db(tmp_path / cpu_db), read_db(tmp_path / gpu_db)
        assert [key for key, _ in gpu] == [key for key, _ in cpu] and len(cpu) == 6
        for (_, c), (_, g) in zip(cpu, gpu):
            assert (g.channels, g.height, g.width) == (c.channels, c.height, c.width)
            np.testing.assert_allclose(g.float_data, c.float_data, rtol=RTOL, atol=ATOL)


def _same_caches(cpu_dir, gpu_dir):
    ids = cache.image_ids(cpu_dir)
    assert ids and cache.image_ids(gpu_dir) == ids
    for image_id in ids:
        cpu, gpu = cache.load(cpu_dir, image_id), cache.load(gpu_dir, image_id)
        for name in cache.FIELDS:
            if name == "feat":
                np.testing.assert_allclose(gpu[name], cpu[name], rtol=RTOL, atol=ATOL)
            else:
                np.testing.assert_array_equal(gpu[name], cpu[name], err_msg=name)
    meta_cpu, meta_gpu = cache.meta(cpu_dir), cache.meta(gpu_dir)
    meta_cpu.pop("proposals"), meta_gpu.pop("proposals")
    assert meta_gpu == meta_cpu


def test_spp_and_rcnn_subcommands_on_the_gpu_write_the_cpus_cache(tmp_path, tiny_voc, host_gpu):
    conv, conv_weights, _ = saved_net(tmp_path, TINY_CONV, "conv")
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    assert extract_features.main(spp_args(tiny_voc, conv, conv_weights, cpu, "--max-boxes", "40",
                                          "--scales", "96,160")) == 0
    searched = ["--proposals", str(cpu / "proposals"), "--no-search"]
    assert extract_features.main(spp_args(tiny_voc, conv, conv_weights, gpu, "--scales",
                                          "96,160", "--gpu", "0", *searched)) == 0
    assert not backends.gpu_mode()
    _same_caches(cpu, gpu)
    full, full_weights, _ = saved_net(tmp_path, TINY_FULL, "full")
    rcnn = ["rcnn", "--dataset", str(tiny_voc), "--net", full, "--weights", full_weights,
            "--mean-value", "100", "--padding", "4", "--batch-size", "16", "--no-progress",
            "--limit", "2", *searched]
    assert extract_features.main(rcnn + ["--out", str(tmp_path / "rcnn_cpu")]) == 0
    assert extract_features.main(rcnn + ["--out", str(tmp_path / "rcnn_gpu"), "--gpu", "0"]) == 0
    _same_caches(tmp_path / "rcnn_cpu", tmp_path / "rcnn_gpu")


@pytest.mark.parametrize("tool, argv", [
    (extract_features.main, ["w", "n", "b", "d", "1", "lmdb", "GPU"]),
    (extract_features.main, ["spp", "--dataset", "d", "--weights", "w", "--out", "o",
                             "--gpu", "0"]),
    (extract_features.main, ["rcnn", "--dataset", "d", "--weights", "w", "--out", "o",
                             "--gpu", "0"]),
    (test_detection.main, ["--cache", "c", "--svms", "s", "--gpu", "0"]),
    (test_net.main, ["--detection", "configs/detection_voc2007.yml", "--cache", "c",
                     "--svms", "s", "--gpu", "0"]),
    (detection_demo.main, ["--workdir", "{tmp}/demo", "--gpu", "0"]),
])
def test_gpu_without_pycuda_is_one_clear_line(tmp_path, capsys, no_pycuda, tool, argv):
    assert tool([a.format(tmp=tmp_path) for a in argv]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in err
    assert "0: GPU mode needs PyCUDA" in lines[0]
    assert not backends.gpu_mode()
    assert not (tmp_path / "demo").exists()          # nothing done before the check


@pytest.mark.parametrize("argv, message", [
    (["GPU", "one"], "DEVICE_ID must be a GPU id such as 0, got 'one'"),
    (["GPU", "-1"], "DEVICE_ID must be >= 0"),
])
def test_caffe_form_device_id_errors(tmp_path, capsys, argv, message):
    proto, weights, _ = saved_net(tmp_path, DUMMY_NET, "dummy")
    assert extract_features.main([weights, proto, "ip", str(tmp_path / "db"), "1", "lmdb",
                                  *argv]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "db").exists()


def test_test_detection_on_the_gpu_equals_the_cpu(tmp_path, tiny_voc, host_gpu):
    """SVMs on fc7 of a small cache: the APs of test_detection and of
    test_net --detection with --gpu 0 are the CPU's."""
    conv, conv_weights, _ = saved_net(tmp_path, TINY_CONV, "conv")
    cache_dir = tmp_path / "cache"
    assert extract_features.main(
        ["spp", "--dataset", str(tiny_voc), "--split", "trainval", "--net", conv,
         "--weights", conv_weights, "--out", str(cache_dir), "--scales", "96",
         "--levels", "2,1", "--mean-value", ",".join(map(str, MEAN)), "--no-progress",
         "--max-boxes", "40"]) == 0
    fc_path, fc = tiny_net(tmp_path, FC_NET, "fc.prototxt", seed=5)
    fc_weights = str(tmp_path / "fc.caffemodel")
    fc.save(fc_weights)
    rng = np.random.default_rng(9)
    svms = tmp_path / "svms.npz"
    SVMModel(list(SYNTHETIC_CLASSES), rng.standard_normal((8, 4)).astype(np.float32),
             rng.standard_normal(4).astype(np.float32), "fc7", 0.5, fc_path, fc_weights).save(svms)
    common = ["--cache", str(cache_dir), "--svms", str(svms), "--dataset", str(tiny_voc),
              "--split", "trainval"]
    results = {}
    for name, tool, extra in (
            ("cpu", test_detection.main, []),
            ("gpu", test_detection.main, ["--gpu", "0"]),
            ("test_net", test_net.main, ["--detection", os.path.join(
                os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                "detection_voc2007.yml"), "--gpu", "0"])):
        out = tmp_path / f"{name}.json"
        assert tool(common + extra + ["--results", str(out)]) == 0
        assert not backends.gpu_mode()
        results[name] = json.loads(out.read_text())
        results[name].pop("seconds_per_image")
    expected = flat(results["cpu"])
    assert len(expected) > 8 and np.isfinite(list(expected.values())).sum() > 4
    for name in ("gpu", "test_net"):
        assert flat(results[name]) == pytest.approx(expected, abs=1e-6, nan_ok=True), name


def flat(tree, prefix=""):
    """{"a/b/c": number} of nested dicts."""
    if not isinstance(tree, dict):
        return {prefix: float(np.nan if tree is None else tree)}
    return {key: value for k, v in tree.items() for key, value in flat(v, f"{prefix}/{k}").items()}


def test_detection_demo_on_the_gpu(tmp_path, host_gpu):
    """The whole walkthrough with --gpu 0 (reduced): the pool5 SVMs see the
    CPU's features and score as on the CPU; fine-tuning runs on the device
    (its Dropout draws other random numbers than the CPU's, so ftfc7 is
    only checked to run)."""
    small = ["--images", "8", "--max-boxes", "40", "--finetune-iterations", "5",
             "--rcnn-images", "1", "--scales", "200", "--pictures", "1"]
    results = {}
    for name, extra in (("cpu", []), ("gpu", ["--gpu", "0"])):
        assert detection_demo.main(["--workdir", str(tmp_path / name)] + small + extra) == 0
        assert not backends.gpu_mode()
        results[name] = json.loads((tmp_path / name / "results.json").read_text())
    cpu, gpu = (flat(results[name]["mAP"]) for name in ("cpu", "gpu"))
    assert set(gpu) == set(cpu)
    for key in cpu:
        if key.startswith(("/pool5", "/random")):
            assert gpu[key] == pytest.approx(cpu[key], abs=1e-3, nan_ok=True), key
    assert results["gpu"]["rcnn_mode"]["seconds_per_image"]["rcnn"] > 0


@pytest.mark.slow
def test_gpu_detection_bench_smoke_run():
    """bench/gpu_detection.py's smoke run on the host build (about 40 s)."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, os.path.join(root, "bench", "gpu_detection.py"),
                           "--windows", "50", "--runs", "1"], capture_output=True, text=True,
                          env=dict(os.environ, SPPCAFFE_GPU="host"), timeout=600)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for line in ("| conv |", "| pool |", "| fc |", "| total (conv + pool + fc) |", "R-CNN / SPP"):
        assert line in out, line
    assert "0.053 |" in out and "0.089 |" in out
