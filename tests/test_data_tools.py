"""tools/convert_imageset and tools/compute_image_mean, run as a user
would (subprocesses) for the main paths and through main() for errors."""
import os
import subprocess
import sys

import cv2
import lmdb
import numpy as np
import pytest

import sppcaffe
from sppcaffe.cli import compute_image_mean, convert_imageset
from sppcaffe.cli.convert_imageset import BOOL_FLAGS, VALUE_FLAGS, gflags_argv
from sppcaffe.data import (DataError, LMDBWriter, array_to_datum, datum_to_array, iterate_db,
                           parse_datum)
from sppcaffe.proto import caffe_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool(*args, ok=True):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", args[0]),
                             *map(str, args[1:])], capture_output=True, text=True)
    assert (result.returncode == 0) == ok, result.stdout + result.stderr
    return result


def records(db):
    return [(key.decode(), parse_datum(value, key)) for key, value in iterate_db(db)]


@pytest.fixture()
def folder(tmp_path):
    """Four small PNGs (two sizes) and a list file naming them."""
    rng = np.random.default_rng(0)
    sizes = [(6, 8), (6, 8), (5, 7), (6, 8)]
    pixels = {}
    with open(tmp_path / "list.txt", "w") as f:
        for i, (h, w) in enumerate(sizes):
            name = f"im{i}.png"
            pixels[name] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            cv2.imwrite(str(tmp_path / name), pixels[name])
            f.write(f"{name} {i * 2}\n")
    return tmp_path, pixels


def test_convert_imageset_writes_caffes_keys_and_raw_datums(folder):
    path, pixels = folder
    out = tool("convert_imageset", f"{path}/", path / "list.txt", path / "db")
    assert "A total of 4 images." in out.stdout
    assert out.stdout.strip().endswith("Processed 4 files.")
    got = records(path / "db")
    assert [k for k, _ in got] == [f"{i:08d}_im{i}.png" for i in range(4)]
    for i, (key, datum) in enumerate(got):
        assert datum.label == 2 * i and not datum.encoded
        image = pixels[f"im{i}.png"]
        assert (datum.channels, datum.height, datum.width) == (3,) + image.shape[:2]
        np.testing.assert_array_equal(datum_to_array(datum), image.transpose(2, 0, 1))
    assert os.listdir(path / "db") and not [p for p in os.listdir(path) if p.endswith(".tmp")]


@pytest.mark.parametrize("flags", [["-resize_width=5", "-resize_height=4"],
                                   ["--resize_width", "5", "--resize_height", "4"],
                                   ["--resize_width=5", "-resize_height", "4"]])
def test_resize_flags_in_gflags_spellings(folder, flags):
    path, pixels = folder
    tool("convert_imageset", *flags, f"{path}/", path / "list.txt", path / "db")
    for i, (_, datum) in enumerate(records(path / "db")):
        expected = cv2.resize(pixels[f"im{i}.png"], (5, 4)).transpose(2, 0, 1)
        np.testing.assert_array_equal(datum_to_array(datum), expected)


def test_gray_images(folder):
    path, pixels = folder
    tool("convert_imageset", "--gray", f"{path}/", path / "list.txt", path / "db")
    _, datum = records(path / "db")[0]
    assert datum.channels == 1
    gray = cv2.imread(str(path / "im0.png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(datum_to_array(datum)[0], gray)


def test_encoded_keeps_the_png_bytes_and_encode_type_reencodes(folder):
    path, pixels = folder
    tool("convert_imageset", "--encoded", f"{path}/", path / "list.txt", path / "png_db")
    key, datum = records(path / "png_db")[0]
    assert datum.encoded and datum.data == (path / "im0.png").read_bytes()
    out = tool("convert_imageset", "-encode_type=jpg", f"{path}/", path / "list.txt",
               path / "jpg_db")
    assert "encode_type specified, assuming encoded=true." in out.stdout
    _, datum = records(path / "jpg_db")[0]
    assert datum.encoded and datum.data[:2] == b"\xff\xd8"          # a JPEG
    assert datum.data == cv2.imencode(".jpg", pixels["im0.png"])[1].tobytes()


def test_shuffle_keeps_every_image_with_sequential_keys(folder):
    path, _ = folder
    out = tool("convert_imageset", "--shuffle", f"{path}/", path / "list.txt", path / "db")
    assert "Shuffling data" in out.stdout
    keys = [k for k, _ in records(path / "db")]
    assert [k[:9] for k in keys] == [f"{i:08d}_" for i in range(4)]
    assert sorted(k[9:] for k in keys) == [f"im{i}.png" for i in range(4)]


def test_transactions_of_1000_report_progress(tmp_path):
    cv2.imwrite(str(tmp_path / "p.png"), np.zeros((1, 1, 3), np.uint8))
    (tmp_path / "list.txt").write_text("p.png 1\n" * 1001)
    out = tool("convert_imageset", f"{tmp_path}/", tmp_path / "list.txt", tmp_path / "db")
    assert out.stdout.splitlines()[-2:] == ["Processed 1000 files.", "Processed 1001 files."]
    assert len(records(tmp_path / "db")) == 1001


@pytest.mark.parametrize("flag", ["--check_size", "-check_size=true"])
def test_check_size_failure_names_the_image_and_leaves_no_database(folder, capsys, flag):
    path, _ = folder
    argv = [flag, f"{path}/", str(path / "list.txt"), str(path / "db")]
    assert convert_imageset.main(argv) == 1
    err = capsys.readouterr().err
    assert "im2.png' is 3x5x7" in err and "first image was 3x6x8" in err
    assert not [p for p in os.listdir(path) if p.startswith("db")]


def test_unreadable_images_are_skipped_with_a_warning(folder, capsys):
    path, _ = folder
    with open(path / "list.txt", "a") as f:
        f.write("missing.png 9\n")
    assert convert_imageset.main([f"{path}/", str(path / "list.txt"), str(path / "db")]) == 0
    captured = capsys.readouterr()
    assert "missing.png" in captured.err and "Processed 4 files." in captured.out
    assert len(records(path / "db")) == 4


@pytest.mark.parametrize("args, message", [
    (["{p}/", "{p}/nolist.txt", "{p}/db"], "nolist.txt"),
    (["{p}/", "{p}/list.txt", "{p}/im0.png"], "already exists"),
    (["--backend", "leveldb", "{p}/", "{p}/list.txt", "{p}/db"], "not supported"),
])
def test_convert_imageset_errors(folder, capsys, args, message):
    path, _ = folder
    assert convert_imageset.main([a.format(p=path) for a in args]) == 1
    assert message in capsys.readouterr().err


def test_lmdb_writer_removes_its_temporary_directory_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with LMDBWriter(tmp_path / "db") as writer:
            writer.put("a", b"1")
            writer.commit()
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []


def test_lmdb_writer_grows_the_map(tmp_path, monkeypatch):
    monkeypatch.setattr("sppcaffe.data.db._INITIAL_MAP_SIZE", 1 << 16)
    with LMDBWriter(tmp_path / "db") as writer:
        for i in range(40):
            writer.put(f"{i:08d}", bytes(4096))
    with lmdb.open(str(tmp_path / "db"), readonly=True, lock=False) as env:
        assert env.stat()["entries"] == 40


@pytest.mark.parametrize("argv, expected", [
    (["-gray", "-shuffle=false", "--encoded=true", "--nocheck_size"],
     ["--gray", "--noshuffle", "--encoded", "--nocheck_size"]),
    (["-resize_width=3", "--resize_height", "4", "root/"],
     ["--resize_width=3", "--resize_height", "4", "root/"]),
    (["-backend", "lmdb", "--", "-odd"], ["--backend", "lmdb", "--", "-odd"]),
])
def test_gflags_spellings(argv, expected):
    assert gflags_argv(argv, BOOL_FLAGS, VALUE_FLAGS) == expected


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_datum_round_trip(dtype):
    array = (np.arange(24).reshape(2, 3, 4) * 1.5).astype(dtype)
    datum = parse_datum(array_to_datum(array, 7).SerializeToString(), "test")
    assert datum.label == 7 and bool(datum.data) == (dtype == np.uint8)
    back = datum_to_array(datum)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, array)


def test_datum_of_the_wrong_size_is_an_error():
    datum = caffe_pb2.Datum(channels=3, height=2, width=2, data=bytes(11))
    with pytest.raises(DataError, match="holds 11 values but its shape 3x2x2 needs 12"):
        datum_to_array(datum, where="datum 'k'")
    with pytest.raises(DataError, match="cannot decode"):
        datum_to_array(caffe_pb2.Datum(encoded=True, data=b"not an image"))


# ---------------------------------------------------------------------------
# compute_image_mean
# ---------------------------------------------------------------------------
@pytest.fixture()
def same_size(folder):
    path, pixels = folder
    names = [n for n, p in pixels.items() if p.shape == (6, 8, 3)]
    (path / "same.txt").write_text("".join(f"{n} 0\n" for n in names))
    stack = np.stack([pixels[n].transpose(2, 0, 1) for n in names]).astype(np.float64)
    return path, stack.mean(axis=0)


@pytest.mark.parametrize("encoded", [False, True])
def test_compute_image_mean_matches_numpy(same_size, encoded):
    path, expected = same_size
    flags = ["--encoded"] if encoded else []
    tool("convert_imageset", *flags, f"{path}/", path / "same.txt", path / "db")
    out = tool("compute_image_mean", path / "db", path / "mean.binaryproto")
    blob = sppcaffe.io.read_binary(str(path / "mean.binaryproto"), caffe_pb2.BlobProto())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 6, 8)
    mean = sppcaffe.io.read_blobproto(str(path / "mean.binaryproto"))
    np.testing.assert_allclose(mean[0], expected, rtol=1e-6)
    lines = out.stdout.splitlines()
    assert "Number of channels: 3" in lines
    for c in range(3):
        line = next(x for x in lines if x.startswith(f"mean_value channel [{c}]:"))
        assert float(line.split(":")[1]) == pytest.approx(expected[c].mean(), rel=1e-5)


def test_compute_image_mean_without_output_file_only_prints(same_size):
    path, _ = same_size
    tool("convert_imageset", f"{path}/", path / "same.txt", path / "db")
    out = tool("compute_image_mean", "-backend=lmdb", path / "db")
    assert "mean_value channel [2]:" in out.stdout
    assert not os.path.exists(path / "mean.binaryproto")


def test_compute_image_mean_errors(folder, capsys):
    path, _ = folder
    assert compute_image_mean.main([str(path / "nodb")]) == 1
    assert "nodb" in capsys.readouterr().err
    convert_imageset.main([f"{path}/", str(path / "list.txt"), str(path / "db")])
    capsys.readouterr()
    assert compute_image_mean.main([str(path / "db")]) == 1          # two image sizes
    assert "a mean needs one size" in capsys.readouterr().err
    assert compute_image_mean.main(["--backend=leveldb", str(path / "db")]) == 1
    assert "LEVELDB" in capsys.readouterr().err
