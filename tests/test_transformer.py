"""DataTransformer (Caffe's data_transformer.cpp) and the multi-size
schedule: values checked against crops, flips and means computed by hand."""
import cv2
import numpy as np
import pytest
from google.protobuf import text_format

import sppcaffe
from sppcaffe.data.multi_size import SizeSchedule
from sppcaffe.data.transformer import DataTransformer
from sppcaffe.proto import caffe_pb2

TRAIN, TEST = sppcaffe.TRAIN, sppcaffe.TEST


def make(text, phase=TEST, seed=0):
    param = text_format.Parse(text, caffe_pb2.TransformationParameter())
    return DataTransformer(param, phase, np.random.default_rng(seed), "layer 'data' (Data)")


def image(c=3, h=5, w=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (c, h, w), dtype=np.uint8)


def write_mean(tmp_path, mean):
    path = str(tmp_path / "mean.binaryproto")
    sppcaffe.io.write_blobproto(mean[np.newaxis].astype(np.float32), path)
    return path


def windows(x, crop):
    """Every crop x crop window of x and its mirror image."""
    _, h, w = x.shape
    return [x[:, i:i + crop, j:j + crop][..., ::f] for i in range(h - crop + 1)
            for j in range(w - crop + 1) for f in (1, -1)]


def test_no_parameters_gives_the_pixels_as_float():
    x = image()
    out = make("").transform([x])
    assert out.dtype == np.float32 and out.shape == (1, 3, 5, 7)
    np.testing.assert_array_equal(out[0], x)


@pytest.mark.parametrize("means", [[10.0], [10.0, 20.5, 30.0]])
def test_mean_value_then_scale(means):
    x = image()
    text = "scale: 0.5 " + " ".join(f"mean_value: {m}" for m in means)
    out = make(text).transform([x])
    expected = (x.astype(np.float32) - np.float32(means)[:, None, None]) * np.float32(0.5)
    np.testing.assert_array_equal(out[0], expected)


def test_test_phase_crops_the_centre_with_caffes_offsets():
    x = image(h=6, w=9)
    out = make("crop_size: 3").transform([x])
    # Caffe: h_off = (6 - 3) / 2 = 1, w_off = (9 - 3) / 2 = 3
    np.testing.assert_array_equal(out[0], x[:, 1:4, 3:6])


def test_train_phase_crops_at_random_offsets_within_the_image():
    x = image(h=6, w=9)
    t = make("crop_size: 3", TRAIN)
    seen = set()
    for _ in range(60):
        out = t.transform([x])[0]
        matches = [(i, j) for i in range(4) for j in range(7)
                   if np.array_equal(out, x[:, i:i + 3, j:j + 3])]
        assert matches, "a TRAIN crop must be a window of the image"
        seen.add(matches[0])
    assert len(seen) > 10


@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_mirror_flips_at_random_in_both_phases_as_caffe(phase):
    x = image(h=4, w=4)
    t = make("mirror: true", phase)
    outs = [t.transform([x])[0] for _ in range(40)]
    flipped = [np.array_equal(o, x[..., ::-1]) for o in outs]
    assert all(f or np.array_equal(o, x) for f, o in zip(flipped, outs))
    assert 5 < sum(flipped) < 35


def test_mean_file_is_subtracted_at_the_crop_offsets_before_mirroring(tmp_path):
    x = image(h=6, w=8)
    mean = np.random.default_rng(1).uniform(0, 255, x.shape).astype(np.float32)
    t = make(f'crop_size: 4 mirror: true scale: 0.25 mean_file: "{write_mean(tmp_path, mean)}"',
             TRAIN)
    # Caffe's order on the whole image: (x - mean) * scale, then crop, then mirror.
    full = (x.astype(np.float32) - mean) * np.float32(0.25)
    candidates = windows(full, 4)
    for _ in range(20):
        out = t.transform([x])[0]
        assert any(np.array_equal(out, c) for c in candidates)


def test_mean_file_centre_crop_by_hand(tmp_path):
    x = image(h=5, w=5)
    mean = np.arange(75, dtype=np.float32).reshape(3, 5, 5)
    out = make(f'crop_size: 3 mean_file: "{write_mean(tmp_path, mean)}"').transform([x])[0]
    np.testing.assert_array_equal(out, x[:, 1:4, 1:4] - mean[:, 1:4, 1:4])


def test_constant_mean_file_equals_mean_value(tmp_path):
    x = image(h=6, w=6)
    means = [104.0, 117.0, 123.0]
    mean = np.broadcast_to(np.float32(means)[:, None, None], x.shape).copy()
    a = make(f'crop_size: 4 mirror: true mean_file: "{write_mean(tmp_path, mean)}"', TRAIN, seed=3)
    b = make("crop_size: 4 mirror: true " + " ".join(f"mean_value: {m}" for m in means),
             TRAIN, seed=3)
    for _ in range(5):
        np.testing.assert_array_equal(a.transform([x, x]), b.transform([x, x]))


def test_float_items_and_batches_of_different_sizes_with_crop():
    small = image(h=4, w=4).astype(np.float32) / 3
    large = image(h=9, w=6, seed=2)
    out = make("crop_size: 4").transform([small, large])
    np.testing.assert_array_equal(out[0], small)
    np.testing.assert_array_equal(out[1], large[:, 2:6, 1:5])


def test_mean_value_count_must_be_one_or_channels():
    with pytest.raises(sppcaffe.LayerError, match="1 mean_value or as many as channels"):
        make("mean_value: 1 mean_value: 2").transform([image()])


def test_mean_file_and_mean_value_are_exclusive(tmp_path):
    path = write_mean(tmp_path, np.zeros((3, 5, 7), np.float32))
    with pytest.raises(sppcaffe.LayerError, match="mean_file and mean_value"):
        make(f'mean_file: "{path}" mean_value: 1')


def test_mean_file_of_another_size_is_an_error_naming_it(tmp_path):
    path = write_mean(tmp_path, np.zeros((3, 4, 4), np.float32))
    with pytest.raises(sppcaffe.LayerError, match="mean.binaryproto.*3x4x4.*3x5x7"):
        make(f'crop_size: 3 mean_file: "{path}"').transform([image()], names=["a.png"])


def test_missing_mean_file_names_it(tmp_path):
    with pytest.raises(sppcaffe.LayerError, match="layer 'data'.*nowhere.binaryproto"):
        make(f'mean_file: "{tmp_path}/nowhere.binaryproto"')


def test_images_smaller_than_the_crop_are_an_error():
    with pytest.raises(sppcaffe.LayerError, match="'tiny.png' is 5x7.*crop_size 6"):
        make("crop_size: 6").transform([image()], names=["tiny.png"])


def test_items_of_different_sizes_without_crop_name_both():
    with pytest.raises(sppcaffe.LayerError, match="'a.png' is 3x5x7.*'b.png' is 3x6x7"):
        make("").transform([image(), image(h=6)], names=["a.png", "b.png"])


def test_force_color_and_force_gray_are_exclusive():
    with pytest.raises(sppcaffe.LayerError, match="force_color and force_gray"):
        make("force_color: true force_gray: true")


def test_same_seed_same_draws():
    x = image(h=8, w=8)
    a = make("crop_size: 5 mirror: true", TRAIN, seed=7)
    b = make("crop_size: 5 mirror: true", TRAIN, seed=7)
    for _ in range(5):
        np.testing.assert_array_equal(a.transform([x] * 4), b.transform([x] * 4))


# ---------------------------------------------------------------------------
# Multi-size
# ---------------------------------------------------------------------------
def test_alternate_sizes_cycle_over_epochs():
    t = make("crop_size: 6 multi_size: 6 multi_size: 4")
    assert [t.size(e) for e in range(5)] == [6, 4, 6, 4, 6]
    assert t.output_shape((3, 8, 8), epoch=0) == (3, 6, 6)
    assert t.output_shape((3, 8, 8), epoch=1) == (3, 4, 4)


def test_multi_size_resizes_the_crop_plane_by_plane():
    x = image(h=8, w=8)
    t = make("crop_size: 6 mean_value: 100 scale: 0.5 multi_size: 6 multi_size: 4")
    same = t.transform([x], epoch=0)[0]
    crop = (x[:, 1:7, 1:7].astype(np.float32) - 100) * np.float32(0.5)
    np.testing.assert_array_equal(same, crop)
    small = t.transform([x], epoch=1)[0]
    assert small.shape == (3, 4, 4)
    expected = np.stack([cv2.resize(plane, (4, 4), interpolation=cv2.INTER_LINEAR)
                         for plane in crop])
    np.testing.assert_array_equal(small, expected)


def test_multi_size_without_crop_resizes_the_whole_image():
    out = make("multi_size: 3").transform([image(h=5, w=7)])
    assert out.shape == (1, 3, 3, 3)


def test_random_range_draws_within_bounds_once_per_epoch():
    sizes = SizeSchedule([180, 224], caffe_pb2.TransformationParameter.RANDOM_RANGE,
                         np.random.default_rng(0))
    drawn = [sizes.size(e) for e in range(300)]
    assert min(drawn) == 180 and max(drawn) == 224
    assert [sizes.size(e) for e in range(300)] == drawn       # fixed once drawn
    again = SizeSchedule([180, 224], caffe_pb2.TransformationParameter.RANDOM_RANGE,
                         np.random.default_rng(0))
    assert [again.size(e) for e in range(300)] == drawn


@pytest.mark.parametrize("sizes, message", [
    ("multi_size: 100", "exactly 2"),
    ("multi_size: 100 multi_size: 120 multi_size: 140", "exactly 2"),
    ("multi_size: 200 multi_size: 100", "low <= high"),
])
def test_random_range_errors(sizes, message):
    with pytest.raises(sppcaffe.LayerError, match=message):
        make(f"{sizes} multi_size_mode: RANDOM_RANGE")
