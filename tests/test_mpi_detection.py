"""The detection tools over MPI (sppcaffe/parallel/detection.py): real
`mpiexec -n 2` runs against one process on a tiny generated VOC set.

- extract_features spp: the cache of 2 ranks is the cache of 1, file for
  file and byte for byte, also when a partial cache of another run (1
  rank) is resumed by 2 ranks;
- extract_features in Caffe's form: the same databases, record for record;
- train_svms with the classes split over 2 ranks: the same SVMs;
- test_detection with the images split over 2 ranks: the same APs.

Skipped, saying why, where mpi4py or mpiexec is missing."""
import json
import os

import numpy as np
import pytest

from sppcaffe.data import LMDBWriter, array_to_datum
from sppcaffe.detection.svm import SVMModel
from sppcaffe.detection.synthetic import make_synthetic_voc
from test_extract_features import read_db, saved_net
from test_features import MEAN, TINY_CONV
from test_mpi_training import ROOT, mpi_ready, run

pytestmark = pytest.mark.skipif(mpi_ready() is not None, reason=str(mpi_ready()))
TOOLS = os.path.join(ROOT, "tools")


def tool(name):
    return os.path.join(TOOLS, name)


def ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def files(folder):
    """{relative path: bytes} of every file under `folder`; meta.json's
    record of the proposal folder (inside `folder`) made relative."""
    out = {}
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    out["meta.json"] = out["meta.json"].replace(os.fsencode(folder), b"OUT")
    return out


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_synthetic_voc(tmp_path_factory.mktemp("mpi_voc") / "voc", num_images=16,
                              size_range=(80, 120))


@pytest.fixture(scope="module")
def conv_net(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mpi_net")
    proto, weights, _ = saved_net(folder, TINY_CONV, "conv")
    return proto, weights


def extract(ranks, voc, conv_net, out, split, *extra):
    proto, weights = conv_net
    return ok(run(ranks, tool("extract_features"), "spp", "--dataset", voc, "--split", split,
                  "--net", proto, "--weights", weights, "--out", out, "--scales", "96",
                  "--levels", "2,1", "--max-boxes", "40", "--no-progress",
                  "--mean-value", ",".join(map(str, MEAN)), *extra))


@pytest.fixture(scope="module")
def caches(tmp_path_factory, voc, conv_net):
    """The trainval and test caches made by one process."""
    folder = tmp_path_factory.mktemp("mpi_caches")
    for split in ("trainval", "test"):
        extract(None, voc, conv_net, folder / split, split)
    return folder


def test_two_rank_feature_cache_is_the_one_rank_cache_byte_for_byte(tmp_path, voc, conv_net,
                                                                     caches):
    one = files(caches / "trainval")
    assert sum(name.endswith(".npz") for name in one) >= 4
    extract(2, voc, conv_net, tmp_path / "two", "trainval")
    assert files(tmp_path / "two") == one
    # A run stopped after 3 images (here: --limit) is finished by 2 ranks.
    extract(None, voc, conv_net, tmp_path / "resumed", "trainval", "--limit", "3")
    result = extract(2, voc, conv_net, tmp_path / "resumed", "trainval")
    assert "3 of " in result.stderr and "images already cached" in result.stderr
    assert files(tmp_path / "resumed") == one


NET_WITH_DATA = """name: "features from a database"
layer { name: "data" type: "Data" top: "data" top: "label"
        transform_param { scale: 0.01 }
        data_param { source: "%s" backend: LMDB batch_size: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
"""


def test_caffe_form_two_ranks_write_the_one_process_databases(tmp_path):
    rng = np.random.default_rng(1)
    with LMDBWriter(str(tmp_path / "images")) as db:
        for i in range(9):
            image = rng.integers(0, 256, (2, 3, 3), dtype=np.uint8)
            db.put(f"{i:08d}", array_to_datum(image, i % 3).SerializeToString())
    proto, weights, _ = saved_net(tmp_path, NET_WITH_DATA % (tmp_path / "images"), "data_net")
    for ranks, name in ((None, "one"), (2, "two")):
        # 5 batches of 2 from 9 records: the last one wraps to the first record.
        ok(run(ranks, tool("extract_features"), weights, proto, "ip,label",
               f"{tmp_path / name}_ip,{tmp_path / name}_label", 5, "lmdb"))
    for blob in ("ip", "label"):
        one, two = read_db(tmp_path / f"one_{blob}"), read_db(tmp_path / f"two_{blob}")
        assert len(one) == 10
        assert [(k, d.SerializeToString()) for k, d in one] == \
               [(k, d.SerializeToString()) for k, d in two]


def test_svms_and_detection_over_two_ranks_equal_one_process(tmp_path, caches):
    svms = {}
    for ranks, name in ((None, "one"), (2, "two")):
        path = tmp_path / f"svms_{name}.npz"
        ok(run(ranks, tool("train_svms"), "--cache", caches / "trainval", "--output", path,
               "--set", "features.layer=pool5", "--set", "svm.C=0.01"))
        svms[name] = SVMModel.load(path)
    np.testing.assert_array_equal(svms["one"].W, svms["two"].W)
    np.testing.assert_array_equal(svms["one"].b, svms["two"].b)
    assert np.abs(svms["one"].W).sum(axis=0).min() > 0       # every class trained
    results = {}
    for ranks, name in ((None, "one"), (2, "two")):
        path = tmp_path / f"results_{name}.json"
        out = ok(run(ranks, tool("test_detection"), "--cache", caches / "test", "--svms",
                     tmp_path / "svms_one.npz", "--results", path)).stdout
        assert out.count("mAP (") == 1           # rank 0 alone prints the table
        results[name] = json.loads(path.read_text())
        del results[name]["seconds_per_image"]
    assert results["one"] == results["two"]
    assert set(results["one"]) == {"svm"}
