"""tools/classify and tools/detect: pycaffe's classify.py and detect.py
arguments, on a tiny generated net and images."""
import csv
import os
import subprocess
import sys

import cv2
import h5py
import numpy as np
import pytest

import sppcaffe
from sppcaffe.cli import classify, detect

from test_classifier import CLASSES, MEAN_BGR, write_image, write_tiny_net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def setup(tmp_path):
    model, weights = write_tiny_net(str(tmp_path))
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "b.jpg", 14, 12, seed=1)
    write_image(images / "a.jpg", 10, 16, seed=2)
    write_image(images / "c.png", 9, 9, seed=3)       # not a .jpg: left out by --ext jpg
    mean = tmp_path / "mean.npy"
    np.save(mean, MEAN_BGR[:, None, None] * np.ones((3, 20, 20)))
    return tmp_path, model, weights, str(mean)


def model_flags(model, weights, mean):
    return ["--model_def", model, "--pretrained_model", weights, "--mean_file", mean]


def test_classify_folder(setup, capsys):
    tmp, model, weights, mean = setup
    out = tmp / "scores.npy"
    rc = classify.main([str(tmp / "images"), str(out), "--images_dim", "10,10"]
                       + model_flags(model, weights, mean))
    assert rc == 0
    printed = capsys.readouterr().out
    assert "CPU mode" in printed and "Loading folder:" in printed
    assert "Classifying 2 inputs." in printed and f"Saving results into {out}" in printed
    scores = np.load(out)
    # Same as the Classifier, with pycaffe's defaults (raw_scale 255, BGR), files in name order.
    classifier = sppcaffe.Classifier(model, weights, image_dims=[10, 10], mean=np.load(mean),
                                     raw_scale=255.0, channel_swap=[2, 1, 0])
    inputs = [sppcaffe.io.load_image(tmp / "images" / name) for name in ("a.jpg", "b.jpg")]
    np.testing.assert_allclose(scores, classifier.predict(inputs), rtol=1e-5)
    assert scores.shape == (2, CLASSES)


def test_classify_single_image_npy_and_options(setup, capsys):
    tmp, model, weights, mean = setup
    image = str(tmp / "images" / "c.png")
    rc = classify.main([image, str(tmp / "one.npy"), "--center_only", "--mean_file", "",
                        "--model_def", model, "--pretrained_model", weights,
                        "--channel_swap", "0,1,2", "--raw_scale", "1", "--input_scale", "2"])
    assert rc == 0
    classifier = sppcaffe.Classifier(model, weights, image_dims=[256, 256], input_scale=2.0,
                                     raw_scale=1.0, channel_swap=[0, 1, 2])
    expected = classifier.predict([sppcaffe.io.load_image(image)], oversample=False)
    np.testing.assert_allclose(np.load(tmp / "one.npy"), expected, rtol=1e-5)

    stack = np.stack([sppcaffe.io.load_image(image)] * 3)
    np.save(tmp / "inputs.npy", stack)
    labels = tmp / "words.txt"
    labels.write_text("".join(f"n0{i} name{i}, alias\n" for i in range(CLASSES)))
    rc = classify.main([str(tmp / "inputs.npy"), str(tmp / "three.npy"), "--images_dim", "9,9",
                        "--print_results", "--labels_file", str(labels)]
                       + model_flags(model, weights, mean))
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Classifying 3 inputs." in printed
    scores = np.load(tmp / "three.npy")
    best = int(np.argmax(scores[0]))
    assert f"image 0: name{best} ({scores[0][best]:.5f})" in printed


def test_classify_errors(setup, capsys, monkeypatch):
    tmp, model, weights, mean = setup
    rc = classify.main([str(tmp / "images"), str(tmp / "x.npy"), "--model_def", "missing.prototxt",
                        "--pretrained_model", weights, "--mean_file", mean])
    assert rc == 1
    assert "classify: error: cannot read --model_def 'missing.prototxt': no such file" in \
        capsys.readouterr().err
    # Without --mean_file, pycaffe's default (a Caffe checkout's ImageNet mean) is looked for.
    monkeypatch.chdir(tmp)
    rc = classify.main([str(tmp / "images"), str(tmp / "x.npy"), "--model_def", model,
                        "--pretrained_model", weights])
    assert rc == 1
    assert "cannot read --mean_file 'python/caffe/imagenet/ilsvrc_2012_mean.npy': no such " \
        "file (--mean_file '' subtracts no mean)" in capsys.readouterr().err
    rc = classify.main([str(tmp / "images"), str(tmp / "x.npy"), "--ext", "bmp"]
                       + model_flags(model, weights, mean))
    assert rc == 1 and "has no *.bmp images" in capsys.readouterr().err
    assert not (tmp / "x.npy").exists()


def write_windows_csv(path, rows):
    with open(path, "w", newline="") as f:
        f.write("filename, xmin, ymin, xmax, ymax\n")
        for fname, xmin, ymin, xmax, ymax in rows:
            f.write(f"{fname},{xmin},{ymin},{xmax},{ymax}\n")


def test_detect_list_to_csv_and_h5(setup, capsys):
    tmp, model, weights, mean = setup
    a, b = str(tmp / "images" / "a.jpg"), str(tmp / "images" / "b.jpg")
    rows = [(a, 0, 0, 8, 8), (b, 2, 3, 10, 12), (a, 4, 1, 12, 9)]
    write_windows_csv(tmp / "windows.csv", rows)
    flags = ["--crop_mode", "list", "--context_pad", "2"] + model_flags(model, weights, mean)
    assert detect.main([str(tmp / "windows.csv"), str(tmp / "out.csv")] + flags) == 0
    printed = capsys.readouterr().out
    assert "Processed 3 windows in" in printed and f"Saved to {tmp / 'out.csv'}" in printed

    detector = sppcaffe.Detector(model, weights, mean=MEAN_BGR, raw_scale=255.0,
                                 channel_swap=[2, 1, 0], context_pad=2)
    expected = detector.detect_windows([(a, np.array([[0, 0, 8, 8], [1, 4, 9, 12]])),
                                        (b, np.array([[3, 2, 12, 10]]))])
    with open(tmp / "out.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["filename", "ymin", "xmin", "ymax", "xmax"] + \
        [f"class{c}" for c in range(CLASSES)]
    assert [row[:5] for row in table[1:]] == [
        [a, "0", "0", "8", "8"], [a, "1", "4", "9", "12"], [b, "3", "2", "12", "10"]]
    scores = np.array([[float(v) for v in row[5:]] for row in table[1:]])
    np.testing.assert_allclose(scores, [d["prediction"] for d in expected], rtol=1e-5)

    assert detect.main([str(tmp / "windows.csv"), str(tmp / "out.h5")] + flags) == 0
    with h5py.File(tmp / "out.h5", "r") as f:
        assert [name.decode() for name in f["df/filename"][:]] == [a, a, b]
        np.testing.assert_array_equal(f["df/ymin"][:], [0, 1, 3])
        np.testing.assert_array_equal(f["df/xmax"][:], [8, 12, 10])
        np.testing.assert_allclose(f["df/prediction"][:], scores, rtol=1e-5)


def test_detect_selective_search(setup, capsys):
    tmp, model, weights, mean = setup
    canvas = np.full((60, 80, 3), 200, np.uint8)
    canvas[10:40, 15:45] = (20, 40, 220)
    cv2.imwrite(str(tmp / "shapes.png"), canvas)
    (tmp / "list.txt").write_text(f"{tmp / 'shapes.png'}\n")
    assert detect.main([str(tmp / "list.txt"), str(tmp / "ss.csv"), "--context_pad", "1"]
                       + model_flags(model, weights, mean)) == 0
    with open(tmp / "ss.csv", newline="") as f:
        table = list(csv.reader(f))[1:]
    assert len(table) > 0
    assert {row[0] for row in table} == {str(tmp / "shapes.png")}
    for row in table:
        ymin, xmin, ymax, xmax = map(int, row[1:5])
        assert 0 <= ymin < ymax <= 60 and 0 <= xmin < xmax <= 80


def test_detect_errors(setup, capsys):
    tmp, model, weights, mean = setup
    (tmp / "list.txt").write_text("x.png\n")
    assert detect.main([str(tmp / "list.txt"), str(tmp / "o.csv"), "--crop_mode", "list"]
                       + model_flags(model, weights, mean)) == 1
    assert "--crop_mode list needs a .csv input" in capsys.readouterr().err
    (tmp / "bad.csv").write_text("filename,xmin,ymin\nx.png,1,2\n")
    assert detect.main([str(tmp / "bad.csv"), str(tmp / "o.csv"), "--crop_mode", "list"]
                       + model_flags(model, weights, mean)) == 1
    assert "missing xmax, ymax" in capsys.readouterr().err
    assert detect.main([str(tmp / "in.json"), str(tmp / "o.csv")]
                       + model_flags(model, weights, mean)) == 1
    assert "not in txt or csv" in capsys.readouterr().err
    # pycaffe's default context (16 pixels) does not fit the tiny net's 8-pixel input.
    assert detect.main([str(tmp / "list.txt"), str(tmp / "o.csv")]
                       + model_flags(model, weights, mean)) == 1
    assert "context_pad 16 leaves no room for the window in the net's 8-pixel input" in \
        capsys.readouterr().err


@pytest.mark.parametrize("tool", ["classify", "detect"])
def test_tools_run_from_checkout(setup, tool):
    tmp, model, weights, mean = setup
    if tool == "classify":
        args = [str(tmp / "images" / "a.jpg"), str(tmp / "t.npy")]
    else:
        write_windows_csv(tmp / "w.csv", [(str(tmp / "images" / "a.jpg"), 0, 0, 8, 8)])
        args = [str(tmp / "w.csv"), str(tmp / "t.csv"), "--crop_mode", "list", "--context_pad", "0"]
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", tool)] + args
                            + model_flags(model, weights, mean),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert ("Saving results into" if tool == "classify" else "Saved to") in result.stdout
