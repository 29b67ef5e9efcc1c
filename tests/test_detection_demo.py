"""The detection walkthrough (tools/detection_demo) and the tools it shares
its pieces with (tools/train_svms, tools/test_detection), on a reduced
generated set; the full demo is marked slow."""
import json
import os

import numpy as np
import pytest

from sppcaffe.cli import detection_demo, test_detection, test_net, train_svms
from sppcaffe.detection.bbox_regression import BBoxRegressor
from sppcaffe.detection.svm import SVMModel

SMALL = ["--images", "16", "--max-boxes", "100", "--finetune-iterations", "20",
         "--rcnn-images", "1", "--scales", "400", "--pictures", "2"]


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    return workdir, detection_demo.main(["--workdir", str(workdir)] + SMALL)


def test_reduced_demo_runs_end_to_end(small_demo, capsys):
    workdir, status = small_demo
    assert status == 0
    results = json.loads((workdir / "results.json").read_text())
    assert results["images"] == {"trainval": 12, "test": 4}
    assert set(results["mAP"]) == {"pool5", "pool5 bb", "ftfc7", "ftfc7 bb", "random"}
    for run in results["mAP"].values():
        assert set(run) == {"voc07", "area"}
    assert results["rcnn_mode"]["seconds_per_image"]["rcnn"] > 0
    test_ids = sorted(i[:-4] for i in os.listdir(workdir / "cache" / "test") if i.endswith(".npz"))
    assert sorted(os.listdir(workdir / "pictures")) == [f"{i}.png" for i in test_ids[:2]]
    for name in ("svms_pool5.npz", "svms_ftfc7.npz", "bbox_reg.npz", "fc_finetuned.caffemodel",
                 "trunk.caffemodel"):
        assert (workdir / name).exists()
    model = SVMModel.load(workdir / "svms_ftfc7.npz")
    assert model.feature_layer == "fc7" and model.W.shape == (512, 4)
    assert model.fc_weights == str(workdir / "fc_finetuned.caffemodel")


def test_rerun_reuses_the_work_directory(small_demo, capsys):
    workdir, _ = small_demo
    stamp = os.path.getmtime(workdir / "cache" / "test" / "meta.json")
    assert detection_demo.main(["--workdir", str(workdir)] + SMALL + ["--rcnn-images", "0"]) == 0
    out = capsys.readouterr().out
    assert "mAP (VOC07 11-point) on 4 test images" in out
    assert os.path.getmtime(workdir / "cache" / "test" / "meta.json") == stamp


def test_train_and_test_tools_on_the_demo_cache(small_demo, tmp_path, capsys):
    workdir, _ = small_demo
    svms, bbox = tmp_path / "svms.npz", tmp_path / "bbox.npz"
    status = train_svms.main(["--cache", str(workdir / "cache" / "trainval"),
                              "--output", str(svms), "--set", "features.layer=pool5",
                              "--set", "svm.C=0.01", "--bbox-reg", str(bbox),
                              "--cls-score", str(tmp_path / "cls.caffemodel")])
    assert status == 0
    model = SVMModel.load(svms)
    assert model.feature_layer == "pool5" and model.W.shape == (1344, 4)
    assert BBoxRegressor.load(bbox).beta.shape == (4, 1345, 4)
    assert (tmp_path / "cls.caffemodel").stat().st_size > 1344 * 4 * 4
    capsys.readouterr()
    status = test_detection.main(["--cache", str(workdir / "cache" / "test"), "--svms", str(svms),
                                  "--bbox-reg", str(bbox), "--random-baseline", "--year", "2010",
                                  "--pictures", str(tmp_path / "pictures"),
                                  "--results", str(tmp_path / "results.json")])
    assert status == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["class", "svm", "bb", "11pt", "svm"]
    assert any(line.startswith("mAP") for line in lines)
    assert "VOC2010+ area AP, VOC2010 devkit) over 4 images: svm bb" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"svm bb", "random", "seconds_per_image"}
    assert len(os.listdir(tmp_path / "pictures")) == 4


def test_tools_report_bad_settings(small_demo, tmp_path, capsys):
    workdir, _ = small_demo
    config = tmp_path / "bad.yml"
    config.write_text("svm:\n  C: 0.01\n  hard_treshold: -1\n")
    status = train_svms.main(["--cache", str(workdir / "cache" / "trainval"),
                              "--output", str(tmp_path / "s.npz"), "--config", str(config)])
    err = capsys.readouterr().err
    assert status == 1
    assert "unknown key 'hard_treshold' in section 'svm'" in err
    assert "did you mean 'hard_threshold'" in err and "evict_threshold" in err
    # The default fine-tuning net is ZF-5's (12800 features); the demo cache has 1344.
    status = train_svms.main(["--cache", str(workdir / "cache" / "trainval"),
                              "--output", str(tmp_path / "s.npz"),
                              "--finetune", str(tmp_path / "ft.caffemodel"),
                              "--set", "finetune.max_iter=1"])
    err = capsys.readouterr().err
    assert status == 1 and "takes 12800 features per window" in err and "has 1344" in err
    status = test_detection.main(["--cache", str(tmp_path / "nothing"),
                                  "--svms", str(workdir / "svms_pool5.npz")])
    assert status == 1 and "not a feature cache" in capsys.readouterr().err


SHIPPED_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "detection_voc2007.yml")


def test_net_detection_mode_runs_test_detection(small_demo, tmp_path, capsys):
    """tools/test_net --detection CONFIG takes test_detection's options and
    prints and writes exactly what test_detection does."""
    workdir, _ = small_demo
    common = ["--cache", str(workdir / "cache" / "test"), "--svms",
              str(workdir / "svms_ftfc7.npz"), "--bbox-reg", str(workdir / "bbox_reg.npz")]
    capsys.readouterr()
    assert test_detection.main(common + ["--config", SHIPPED_CONFIG,
                                         "--results", str(tmp_path / "direct.json")]) == 0
    direct = capsys.readouterr().out
    assert test_net.main(["--detection", SHIPPED_CONFIG] + common +
                         ["--results", str(tmp_path / "via_test_net.json")]) == 0
    assert capsys.readouterr().out == direct
    assert "mAP (VOC07 11-point AP, VOC2007 devkit) over 4 images: svm bb" in direct
    results = [json.loads((tmp_path / f"{name}.json").read_text())
               for name in ("direct", "via_test_net")]
    for r in results:
        r.pop("seconds_per_image")
    assert results[0] == results[1]
    # --detection=FILE and anywhere on the line; errors under test_net's name.
    assert test_net.main(common + [f"--detection={SHIPPED_CONFIG}", "--year", "2010"]) == 0
    assert "VOC2010+ area AP" in capsys.readouterr().out
    assert test_net.main(["--detection", SHIPPED_CONFIG, "--cache", str(tmp_path),
                          "--svms", str(workdir / "svms_ftfc7.npz")]) == 1
    assert capsys.readouterr().err.startswith("test_net: error:")
    assert test_net.main(["--detection", "--cache", str(tmp_path)]) == 2
    assert "--detection needs the detection settings file" in capsys.readouterr().err
    assert test_net.main(["--detection", SHIPPED_CONFIG, "--config", SHIPPED_CONFIG]) == 2


def test_net_help_shows_detection_mode(capsys):
    with pytest.raises(SystemExit) as info:
        test_net.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--detection CONFIG.yml" in out and "test_net --detection configs/" in out
    with pytest.raises(SystemExit):
        test_net.main(["--detection", SHIPPED_CONFIG, "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: test_net --detection CONFIG") and "--svms" in out
    assert "--config" not in out        # the file is --detection's value


def test_svd_of_fc_layers_at_test_time(small_demo, tmp_path, capsys):
    """test.svd_fc6_rank / svd_fc7_rank: at full rank (the demo's fc6 and fc7
    are 512 wide) the factorized net scores as the exact one; at rank 8 it
    still detects, differently."""
    workdir, _ = small_demo
    common = ["--cache", str(workdir / "cache" / "test"), "--svms",
              str(workdir / "svms_ftfc7.npz")]
    maps = {}
    for label, ranks in (("exact", []), ("full", [512, 512]), ("low", [8, 8])):
        settings = [f"--set=test.svd_fc{layer}_rank={rank}" for layer, rank in zip((6, 7), ranks)]
        out = tmp_path / f"{label}.json"
        assert test_detection.main(common + settings + ["--results", str(out)]) == 0
        results = json.loads(out.read_text())
        name = "svm svd" if ranks else "svm"
        assert set(results) == {name, "seconds_per_image"}
        maps[label] = results[name]["voc07"]["mAP"]
    assert maps["full"] == pytest.approx(maps["exact"], abs=1e-6)
    assert maps["low"] != pytest.approx(maps["exact"], abs=1e-6)
    capsys.readouterr()
    assert test_detection.main(common + ["--set", "test.svd_fc6_rank=600"]) == 1
    assert "layer 'fc6': rank must lie in 1..512" in capsys.readouterr().err


@pytest.mark.slow
def test_full_demo_far_above_random(tmp_path, capsys):
    assert detection_demo.main(["--workdir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    best = max(v["voc07"] for k, v in results["mAP"].items() if k != "random")
    assert best > 0.5
    assert results["mAP"]["random"]["voc07"] < 0.05
    assert np.isfinite(results["rcnn_mode"]["seconds_per_image"]["rcnn"])
