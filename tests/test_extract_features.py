"""tools/extract_features: Caffe's form (blobs -> LMDB of Datums, checked
record by record) and the detection subcommands `spp` and `rcnn` (the
cache they write, resuming, refusing mismatched settings)."""
import os
import re
import signal
import subprocess
import sys
import time

import lmdb
import numpy as np
import pytest

from sppcaffe.cli import extract_features as tool
from sppcaffe.data import LMDBWriter, array_to_datum
from sppcaffe.detection import cache, features, proposals, voc
from sppcaffe.detection.synthetic import SYNTHETIC_CLASSES, make_synthetic_voc
from sppcaffe.proto import caffe_pb2
from test_features import LEVELS, MEAN, TINY_CONV, TINY_FULL, tiny_net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DUMMY_NET = """name: "dummy features"
layer { name: "data" type: "DummyData" top: "data"
        dummy_data_param { shape { dim: 3 dim: 2 dim: 4 dim: 4 }
                           data_filler { type: "constant" value: 1.5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3
                            weight_filler { type: "gaussian" std: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 1 }
                              bias_filler { type: "constant" value: 0.25 } } }
"""


def read_db(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        records = [(key.decode(), bytes(value)) for key, value in txn.cursor()]
    env.close()
    out = []
    for key, value in records:
        datum = caffe_pb2.Datum()
        datum.ParseFromString(value)
        out.append((key, datum))
    return out


def saved_net(tmp_path, text, name):
    """(prototxt, caffemodel, Net with those weights)."""
    path, net = tiny_net(tmp_path, text, name + ".prototxt")
    weights = str(tmp_path / (name + ".caffemodel"))
    net.save(weights)
    return path, weights, net


# ---------------------------------------------------------------------------
# Caffe's form
# ---------------------------------------------------------------------------
def test_caffe_form_writes_one_datum_per_item_per_blob(tmp_path):
    proto, weights, net = saved_net(tmp_path, DUMMY_NET, "dummy")
    net.forward()
    expected = {"ip": net.blobs["ip"].data.copy(), "conv": net.blobs["conv"].data.copy()}
    dbs = [tmp_path / "ip_db", tmp_path / "conv_db"]
    rc = tool.main([weights, proto, "ip,conv", f"{dbs[0]},{dbs[1]}", "2", "lmdb", "CPU"])
    assert rc == 0
    for db, name, chw in ((dbs[0], "ip", (5, 1, 1)), (dbs[1], "conv", (2, 2, 2))):
        records = read_db(db)
        assert [key for key, _ in records] == [f"{k:010d}" for k in range(6)]   # 2 batches of 3
        for k, (_, datum) in enumerate(records):
            assert (datum.channels, datum.height, datum.width) == chw
            assert not datum.HasField("label") and not datum.HasField("encoded")
            assert datum.data == b""
            np.testing.assert_array_equal(np.array(datum.float_data, np.float32),
                                          expected[name][k % 3].ravel())
    assert sorted(os.listdir(tmp_path)) == sorted(["conv_db", "ip_db", "dummy.prototxt",
                                                   "dummy.caffemodel"])


def test_caffe_form_reads_the_nets_data_layer(tmp_path):
    """A Data layer over an LMDB: every item's features, cycling as Caffe."""
    source = tmp_path / "images"
    items = [np.full((1, 2, 2), 10 * k, np.uint8) for k in range(5)]
    with LMDBWriter(source) as writer:
        for k, item in enumerate(items):
            writer.put(f"{k:08d}", array_to_datum(item, label=k).SerializeToString())
    text = f"""name: "data features"
layer {{ name: "data" type: "Data" top: "data" top: "label"
        data_param {{ source: "{source}" backend: LMDB batch_size: 2 }}
        transform_param {{ scale: 0.5 }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param {{ num_output: 3 weight_filler {{ type: "gaussian" std: 1 }} }} }}
"""
    proto, weights, net = saved_net(tmp_path, text, "data")
    weight = net.params["ip"][0].data
    assert tool.main([weights, proto, "data,ip,label", f"{tmp_path / 'a'},{tmp_path / 'b'},"
                      f"{tmp_path / 'c'}", "3", "lmdb"]) == 0
    data, ip, label = (read_db(tmp_path / name) for name in "abc")
    assert len(data) == len(ip) == len(label) == 6
    for k in range(6):
        pixels = items[k % 5].astype(np.float32).ravel() * 0.5
        np.testing.assert_array_equal(data[k][1].float_data, pixels)
        assert (data[k][1].channels, data[k][1].height, data[k][1].width) == (1, 2, 2)
        np.testing.assert_allclose(ip[k][1].float_data, weight @ pixels, rtol=1e-5, atol=1e-6)
        assert list(label[k][1].float_data) == [k % 5]
        assert (label[k][1].channels, label[k][1].height, label[k][1].width) == (1, 1, 1)


@pytest.mark.parametrize("args, message", [
    (["ip", "{db}", "1", "leveldb"], "leveldb backend is not supported"),
    (["ip", "{db}", "1", "sqlite"], "unknown database type 'sqlite'"),
    (["ip,conv", "{db}", "1", "lmdb"], r"number of blob names \(2\) and dataset names \(1\)"),
    (["nope", "{db}", "1", "lmdb"], "Unknown feature blob name nope in the network"),
    (["ip", "{db}", "ten", "lmdb"], "NUM_BATCHES must be a whole number"),
    (["ip", "{db}", "1", "lmdb", "TPU"], "unknown mode 'TPU'"),
    # GPU: tests/test_gpu_detection.py (on the host build, and without PyCUDA)
])
def test_caffe_form_errors(tmp_path, capsys, args, message):
    proto, weights, _ = saved_net(tmp_path, DUMMY_NET, "dummy")
    db = tmp_path / "db"
    argv = [weights, proto] + [a.format(db=db) for a in args]
    assert tool.main(argv) == 1
    err = capsys.readouterr().err
    assert "extract_features: error:" in err and re.search(message, err)
    assert not db.exists()


def test_caffe_form_refuses_an_existing_database_and_missing_files(tmp_path, capsys):
    proto, weights, _ = saved_net(tmp_path, DUMMY_NET, "dummy")
    (tmp_path / "db").mkdir()
    assert tool.main([weights, proto, "ip", str(tmp_path / "db"), "1", "lmdb"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert tool.main([str(tmp_path / "no.caffemodel"), proto, "ip", str(tmp_path / "x"), "1",
                      "lmdb"]) == 1
    assert "cannot read weights" in capsys.readouterr().err


def test_usage(capsys):
    assert tool.main([]) == 1
    assert "usage: extract_features WEIGHTS NET" in capsys.readouterr().err
    assert tool.main(["w", "n", "b"]) == 1
    assert "NUM_BATCHES" in capsys.readouterr().err
    assert tool.main(["--help"]) == 0
    assert "spp" in capsys.readouterr().out


def test_legacy_shapes():
    assert tool.legacy_chw((7, 4096)) == (4096, 1, 1)
    assert tool.legacy_chw((7,)) == (1, 1, 1)
    assert tool.legacy_chw((7, 3, 5)) == (3, 5, 1)
    with pytest.raises(tool.CliError, match="at most 4 axes"):
        tool.legacy_chw((1, 2, 3, 4, 5))


# ---------------------------------------------------------------------------
# The detection subcommands
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory):
    return make_synthetic_voc(tmp_path_factory.mktemp("voc") / "tiny", num_images=4,
                              size_range=(80, 120))


def spp_args(root, proto, weights, out, *extra):
    return ["spp", "--dataset", str(root), "--split", "trainval", "--net", proto,
            "--weights", weights, "--out", str(out), "--scales", "96", "--levels", "2,1",
            "--mean-value", ",".join(map(str, MEAN)), "--no-progress", *extra]


def test_spp_subcommand_writes_the_cache_and_resumes(tmp_path, tiny_voc, capsys):
    proto, weights, net = saved_net(tmp_path, TINY_CONV, "conv")
    out = tmp_path / "cache"
    assert tool.main(spp_args(tiny_voc, proto, weights, out, "--max-boxes", "50")) == 0
    dataset = voc.VOCDataset(tiny_voc, "trainval", SYNTHETIC_CLASSES)
    assert cache.image_ids(out) == sorted(dataset.image_ids)
    assert sorted(os.listdir(out / "proposals")) == sorted(f"{i}.npy" for i in dataset.image_ids)
    meta = cache.meta(out)
    assert meta["classes"] == list(SYNTHETIC_CLASSES) and meta["num_classes"] == 4
    assert meta["feature_dim"] == 6 * 5 and meta["scales"] == [96]
    assert meta["levels"] == [2, 1] and meta["mapping"] == meta["scale_rule"] == "paper"
    assert meta["weights"] == os.path.abspath(weights) and meta["mode"] == "spp"
    assert meta["proposals"]["selective_search"]["max_boxes"] == 50
    image_id = dataset.image_ids[0]
    record = cache.load(out, image_id)
    gt_count = len(dataset.ground_truth(image_id)[0])
    searched = proposals.load_boxes(out / "proposals" / f"{image_id}.npy")
    assert 0 < len(searched) <= 50
    np.testing.assert_array_equal(record["boxes"][gt_count:], searched)
    extractor = features.SPPExtractor(net, scales=(96,), levels=LEVELS, mean=MEAN)
    np.testing.assert_allclose(record["feat"],
                               extractor(dataset.read_image(image_id), record["boxes"]).feat,
                               rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    # A second run computes nothing; a stale temporary file of a killed run (named as
    # atomic_write names it: 8 random characters) is removed.
    (out / f"{image_id}.npz.k1ll3d_0.tmp").write_bytes(b"partial")
    assert tool.main(spp_args(tiny_voc, proto, weights, out, "--max-boxes", "50")) == 0
    err = capsys.readouterr().err
    n = len(dataset)
    assert f"{n} of {n} images already cached" in err and "0 images computed" in err
    assert not (out / f"{image_id}.npz.k1ll3d_0.tmp").exists()
    # Other settings in the same folder are refused, naming what differs.
    assert tool.main(spp_args(tiny_voc, proto, weights, out, "--max-boxes", "50",
                              "--mapping", "released")) == 1
    err = capsys.readouterr().err
    assert "mapping: cache has 'paper', now 'released'" in err


def test_rcnn_subcommand_with_rcnn_mat_proposals(tmp_path, tiny_voc):
    import scipy.io
    proto, weights, net = saved_net(tmp_path, TINY_FULL, "full")
    dataset = voc.VOCDataset(tiny_voc, "trainval", SYNTHETIC_CLASSES)
    images = np.empty((1, len(dataset)), object)
    boxes = np.empty((1, len(dataset)), object)
    for k, image_id in enumerate(dataset.image_ids):
        images[0, k] = image_id
        boxes[0, k] = np.array([[1, 1, 30, 40], [5, 10, 60, 70]], np.float64)   # [y1 x1 y2 x2]
    mat = tmp_path / "ss.mat"
    scipy.io.savemat(mat, {"images": images, "boxes": boxes})
    out = tmp_path / "rcnn"
    argv = ["rcnn", "--dataset", str(tiny_voc), "--net", proto, "--weights", weights,
            "--out", str(out), "--mat", str(mat), "--mean-value", "100", "--padding", "4",
            "--batch-size", "3", "--no-progress", "--limit", "2"]
    assert tool.main(argv) == 0
    assert cache.image_ids(out) == dataset.image_ids[:2]
    meta = cache.meta(out)
    assert meta["mode"] == "rcnn" and meta["feature_dim"] == 30 and meta["blob"] == "spp"
    record = cache.load(out, dataset.image_ids[0])
    np.testing.assert_array_equal(record["boxes"][-2:], [[1, 1, 40, 30], [10, 5, 70, 60]])
    extractor = features.RCNNExtractor(net, "spp", mean=features.load_mean(100), padding=4)
    np.testing.assert_allclose(
        record["feat"], extractor(dataset.read_image(dataset.image_ids[0]), record["boxes"]).feat,
        rtol=1e-5, atol=1e-6)
    assert not (out / "proposals").exists()


@pytest.mark.parametrize("extra, message", [
    ([], "give the mean the net was trained with"),
    (["--mean-value", "1,2"], "give 1 or 3 mean values"),
    (["--mean-value", "0", "--split", "nosuch"], "no image set file"),
    (["--mean-value", "0", "--blob", "pool9"], "no blob 'pool9'"),
    (["--mean-value", "0", "--mat", "{tmp}/x.mat", "--proposals", "{tmp}"], "not both"),
])
def test_spp_subcommand_errors(tmp_path, tiny_voc, capsys, extra, message):
    proto, weights, _ = saved_net(tmp_path, TINY_CONV, "conv")
    argv = ["spp", "--dataset", str(tiny_voc), "--net", proto, "--weights", weights,
            "--out", str(tmp_path / "out"), "--no-progress"]
    argv += [e.format(tmp=tmp_path) for e in extra]
    assert tool.main(argv) == 1
    assert message in capsys.readouterr().err


def test_a_killed_run_leaves_only_complete_files_and_resumes(tmp_path):
    """SIGKILL in the middle of a run (a real process): every .npz left is
    complete, and the next run finishes the rest."""
    root = make_synthetic_voc(tmp_path / "voc", num_images=12, size_range=(150, 200))
    proto, weights, _ = saved_net(tmp_path, TINY_CONV, "conv")
    out = tmp_path / "cache"
    argv = [sys.executable, os.path.join(ROOT, "tools", "extract_features")] + \
        spp_args(root, proto, weights, out, "--scales", "400")
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and cache.image_ids(out)):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = cache.image_ids(out)
    assert 0 < len(done) < 9                        # killed in the middle of the split
    assert all(cache.is_complete(out, i) for i in done)
    for image_id in done:
        cache.load(out, image_id)
    rerun = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert rerun.returncode == 0
    assert len(cache.image_ids(out)) == 9           # the trainval split
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
