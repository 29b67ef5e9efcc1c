"""sppcaffe.io's pycaffe functions (caffe.io): images, Transformer and the
BlobProto / Datum conversions, against the arrays the real pycaffe made
(tests/golden/pycaffe/io, spec.txt says how)."""
import os

import cv2
import numpy as np
import pytest

from sppcaffe import io
from sppcaffe.proto import caffe_pb2

from golden_util import assert_close

IO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "pycaffe", "io")
TOL = 1e-4


@pytest.fixture(scope="module")
def expected():
    with np.load(os.path.join(IO_DIR, "expected.npz")) as f:
        return {k: f[k] for k in f.files}


def golden(name):
    return os.path.join(IO_DIR, name)


def golden_transformer():
    t = io.Transformer({"data": (1, 3, 10, 8)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([104, 117, 123]))
    t.set_input_scale("data", 0.017)
    return t


def test_load_image(expected):
    colour = io.load_image(golden("color.png"))
    assert colour.dtype == np.float32 and colour.shape == (17, 12, 3)
    assert_close(colour, expected["load_color"], TOL, "load_image(color.png)")
    grey_as_colour = io.load_image(golden("gray.png"))
    assert grey_as_colour.shape == (17, 12, 3)
    assert_close(grey_as_colour, expected["load_gray_as_color"], TOL, "load_image(gray.png)")
    grey = io.load_image(golden("gray.png"), color=False)
    assert grey.shape == (17, 12, 1)
    assert_close(grey, expected["load_gray"], TOL, "load_image(gray.png, color=False)")


def test_resize_and_oversample(expected):
    colour = io.load_image(golden("color.png"))
    resized = io.resize_image(colour, (8, 10))
    assert resized.shape == (8, 10, 3) and resized.dtype == np.float32
    assert_close(resized, expected["resize"], TOL, "resize_image")
    assert_close(io.resize_image(colour, (8, 10), interp_order=0), expected["resize_interp0"],
                 TOL, "resize_image(interp_order=0)")
    crops = io.oversample([colour, colour[::-1]], (6, 6))
    assert crops.shape == (20, 6, 6, 3)
    assert_close(crops, expected["oversample"], TOL, "oversample")


def test_transformer(expected):
    t = golden_transformer()
    colour = io.load_image(golden("color.png"))
    before = colour.copy()
    pre = t.preprocess("data", colour)
    assert pre.shape == (3, 10, 8) and pre.dtype == np.float32
    assert_close(pre, expected["preprocess"], TOL, "Transformer.preprocess")
    assert_close(t.deprocess("data", pre), expected["deprocess"], TOL, "Transformer.deprocess")
    np.testing.assert_array_equal(colour, before)        # the caller's image is left alone


def test_blobproto_exact(expected):
    with open(golden("blobproto.bin"), "rb") as f:
        serialized = f.read()
    assert io.array_to_blobproto(expected["blobproto_input"]).SerializeToString() == serialized
    ours = io.blobproto_to_array(caffe_pb2.BlobProto.FromString(serialized))
    assert ours.dtype == np.float64
    np.testing.assert_array_equal(ours, expected["blobproto_roundtrip"])


def test_datum_exact(expected):
    with open(golden("datum.bin"), "rb") as f:
        serialized = f.read()
    datum = caffe_pb2.Datum.FromString(serialized)
    ours = io.datum_to_array(datum)
    assert ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, expected["datum_array"])
    assert io.array_to_datum(ours, label=datum.label).SerializeToString() == serialized


def test_blobproto_diff_legacy_shape_and_vector():
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    blob = io.array_to_blobproto(arr, diff=-arr)
    assert list(blob.shape.dim) == [2, 3, 4]
    np.testing.assert_array_equal(io.blobproto_to_array(blob, return_diff=True), -arr)
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=3, width=4, data=arr.ravel().tolist())
    assert io.blobproto_to_array(legacy).shape == (1, 2, 3, 4)
    arrays = [arr, np.ones((1, 5))]
    back = io.blobprotovector_str_to_arraylist(io.arraylist_to_blobprotovector_str(arrays))
    assert [a.shape for a in back] == [(2, 3, 4), (1, 5)]
    np.testing.assert_array_equal(back[0], arr)
    assert io.arraylist_to_blobprotovecor_str is io.arraylist_to_blobprotovector_str
    assert io.caffe_pb2.BlobProto is caffe_pb2.BlobProto      # scripts use caffe.io.caffe_pb2


def test_float_datum_and_label():
    arr = np.linspace(-1, 1, 12).reshape(1, 3, 4)
    datum = io.array_to_datum(arr)
    assert not datum.HasField("label") and not datum.data       # pycaffe: no label unless given
    back = io.datum_to_array(datum)
    assert back.dtype == np.float64
    np.testing.assert_array_equal(back, arr.astype(np.float32))
    with pytest.raises(ValueError, match="channels, height, width"):
        io.array_to_datum(np.zeros((2, 2)))


def test_load_image_alpha_and_16_bit(tmp_path):
    rng = np.random.default_rng(0)
    bgra = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    rgb = io.load_image(tmp_path / "rgba.png")
    np.testing.assert_allclose(rgb, bgra[:, :, 2::-1] / 255.0, atol=1e-7)   # alpha dropped
    grey16 = rng.integers(0, 65536, (4, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), grey16)
    np.testing.assert_allclose(io.load_image(tmp_path / "g16.png", color=False)[:, :, 0],
                               grey16 / 65535.0, atol=1e-7)
    # colour to grey as scikit-image's rgb2gray (0.2125 R + 0.7154 G + 0.0721 B)
    bgr = bgra[:, :, :3]
    cv2.imwrite(str(tmp_path / "rgb.png"), bgr)
    weights = np.array([0.0721, 0.7154, 0.2125])
    np.testing.assert_allclose(io.load_image(tmp_path / "rgb.png", color=False)[:, :, 0],
                               (bgr / 255.0) @ weights, atol=1e-6)


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        io.load_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="junk.png"):
        io.load_image(tmp_path / "junk.png")


def test_resize_constant_and_many_channels():
    constant = np.full((4, 4, 3), 0.25, np.float32)
    np.testing.assert_array_equal(io.resize_image(constant, (2, 6)), np.full((2, 6, 3), 0.25))
    five = np.random.default_rng(1).random((4, 6, 5))
    out = io.resize_image(five, (8, 12), interp_order=0)       # scipy's zoom branch
    assert out.shape == (8, 12, 5)
    np.testing.assert_array_equal(out[::2, ::2], five.astype(np.float32))


def test_transformer_means():
    shape = (1, 3, 4, 6)
    image = np.random.default_rng(2).random((4, 6, 3)).astype(np.float32)
    pixel_mean = np.random.default_rng(3).random((3, 4, 6)) * 100
    t = io.Transformer({"data": shape})
    t.set_transpose("data", (2, 0, 1))
    t.set_mean("data", pixel_mean)
    np.testing.assert_allclose(t.preprocess("data", image),
                               image.transpose(2, 0, 1) - pixel_mean, rtol=1e-5)
    # A per-pixel mean of another size is resized to the input's (pycaffe:
    # scaled to [0, 1], resized, scaled back).
    t.set_mean("data", np.repeat(np.repeat(pixel_mean, 2, axis=1), 2, axis=2))
    assert t.mean["data"].shape == (3, 4, 6)
    low, high = pixel_mean.min(), pixel_mean.max()
    assert low - 1e-3 <= t.mean["data"].min() and t.mean["data"].max() <= high + 1e-3
    # deprocess undoes preprocess (channel swap and transpose included).
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255.0)
    t.set_mean("data", np.array([10.0, 20.0, 30.0]))
    t.set_input_scale("data", 0.5)
    np.testing.assert_allclose(t.deprocess("data", t.preprocess("data", image)), image,
                               atol=1e-5)


def test_transformer_errors():
    t = io.Transformer({"data": (1, 3, 4, 4)})
    with pytest.raises(ValueError, match="'label' is not one of the net inputs"):
        t.set_raw_scale("label", 255)
    with pytest.raises(ValueError, match="needs 3 axes"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(ValueError, match="one entry per input channel"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(ValueError, match="2 channels, the input has 3"):
        t.set_mean("data", np.zeros(2))
    with pytest.raises(ValueError, match="mean for 'data' must be"):
        t.set_mean("data", np.zeros((1, 3, 4, 4)))
