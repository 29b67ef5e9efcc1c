"""Window features for detection (SPP mode and R-CNN mode), the per-image
feature cache and its contract, the detection prototxts, and the truncated
SVD of fully connected layers.

A tiny conv net (stride 4) with random weights stands in for ZF-5, and a
4-image synthetic VOC set (80-120 pixels a side) for VOC."""
import os

import cv2
import numpy as np
import pytest

import sppcaffe
from sppcaffe import io
from sppcaffe.detection import cache, features, mapping, proposals, svd
from sppcaffe.detection.synthetic import SYNTHETIC_CLASSES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "models", "zf5_spp")

TRUNK = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1
                            weight_filler { type: "gaussian" std: 0.2 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv5" type: "Convolution" bottom: "pool1" top: "conv5"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.2 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu5" type: "ReLU" bottom: "conv5" top: "conv5" }
"""
# The SPP-mode net: conv maps of any image (stride 4, 6 channels).
TINY_CONV = """name: "tiny conv"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }
""" + TRUNK
# The R-CNN-mode net: the same trunk on 32 x 32 crops, then a pyramid and a classifier.
TINY_FULL = """name: "tiny full"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }
""" + TRUNK + """
layer { name: "spp" type: "SPP" bottom: "conv5" top: "spp"
        spp_param { pool: MAX method: ADAPTIVE levels: 2 levels: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "spp" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
"""
LEVELS = (2, 1)
STRIDE = 4
MEAN = (100.0, 110.0, 120.0)


def tiny_net(tmp_path, text=TINY_CONV, name="tiny.prototxt", seed=3):
    """(prototxt path, Net with seeded random weights)."""
    path = tmp_path / name
    path.write_text(text)
    sppcaffe.set_random_seed(seed)
    return str(path), sppcaffe.Net(str(path), sppcaffe.TEST)


@pytest.fixture
def net(tmp_path):
    return tiny_net(tmp_path)[1]


def some_boxes(height, width, count=40, seed=0):
    """1-based boxes inside the image, a few of them repeated."""
    rng = np.random.default_rng(seed)
    x = np.sort(rng.integers(1, width + 1, (count, 2)), axis=1)
    y = np.sort(rng.integers(1, height + 1, (count, 2)), axis=1)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1).astype(np.float64)
    return np.concatenate([boxes, boxes[:5], [[1, 1, width, height]]])


# ---------------------------------------------------------------------------
# SPP mode
# ---------------------------------------------------------------------------
def reference_spp(net, image, box, scale):
    """The feature of one 1-based box at one scale, computed from the
    paper's formulas with plain loops: resize, forward, cells
    [floor(x/S) + 1, ceil(x/S) - 1], adaptive bins, max."""
    height, width = image.shape[:2]
    shorter = min(height, width)
    size = mapping.resized_size((height, width), scale)
    resized = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    x = (resized.astype(np.float32) - np.float32(MEAN)).transpose(2, 0, 1)[None]
    conv = net.forward(data=x)["conv5"][0]
    _, map_h, map_w = conv.shape
    b = (np.asarray(box, np.float64) - 1) * scale / shorter
    first = [int(np.floor(b[0] / STRIDE)) + 1, int(np.floor(b[1] / STRIDE)) + 1]
    last = [int(np.ceil(b[2] / STRIDE)) - 1, int(np.ceil(b[3] / STRIDE)) - 1]
    for axis in range(2):
        if last[axis] < first[axis]:
            first[axis] = last[axis] = (first[axis] + last[axis]) // 2
    x1, x2 = np.clip([first[0], last[0]], 0, map_w - 1)
    y1, y2 = np.clip([first[1], last[1]], 0, map_h - 1)
    window = conv[:, y1:y2 + 1, x1:x2 + 1]
    out = []
    for n in LEVELS:
        h, w = window.shape[1:]
        level = np.empty((conv.shape[0], n, n), np.float32)
        for i in range(n):
            for j in range(n):
                rows = slice(int(np.floor(i * h / n)), int(np.ceil((i + 1) * h / n)))
                cols = slice(int(np.floor(j * w / n)), int(np.ceil((j + 1) * w / n)))
                level[:, i, j] = window[:, rows, cols].max(axis=(1, 2))
        out.append(level.reshape(-1))
    return np.concatenate(out)


def test_spp_features_match_the_paper_formulas(net, tiny_voc_set):
    image = tiny_voc_set.read_image(tiny_voc_set.image_ids[0])
    boxes = some_boxes(*image.shape[:2])
    extractor = features.SPPExtractor(net, scales=(96,), levels=LEVELS, mean=MEAN, blob="conv5")
    assert extractor.stride == STRIDE
    result = extractor(image, boxes)
    feat = result.feat
    assert feat.shape == (len(boxes), 6 * 5) and feat.dtype == np.float32
    np.testing.assert_array_equal(result.scale_index, 0)
    for k in (0, 7, 19, len(boxes) - 1):
        np.testing.assert_allclose(feat[k], reference_spp(net, image, boxes[k], 96), rtol=1e-5,
                                   atol=1e-6)
    # Repeated boxes are pooled once.
    assert result.num_unique < len(boxes)
    np.testing.assert_array_equal(feat[-6:-1], feat[:5])


@pytest.mark.parametrize("rule", [mapping.PAPER, mapping.RELEASED])
def test_multi_scale_runs_the_net_once_per_scale_and_picks_scales_by_rule(net, tiny_voc_set, rule,
                                                                         monkeypatch):
    image = tiny_voc_set.read_image(tiny_voc_set.image_ids[1])
    boxes = some_boxes(*image.shape[:2], count=60, seed=1)
    scales = (160, 320, 640)
    calls = []
    original = features.forward_to

    def counting(*args):
        calls.append(args[2].shape)
        return original(*args)
    monkeypatch.setattr(features, "forward_to", counting)
    extractor = features.SPPExtractor(net, scales=scales, levels=LEVELS, mean=MEAN,
                                      mapping_name=rule)
    result = extractor(image, boxes)
    assert len(calls) == len(scales)
    assert [min(shape[2:]) for shape in calls] == list(scales)
    expected = mapping.choose_scales(boxes, image.shape[:2], scales, rule, stride=STRIDE)
    np.testing.assert_array_equal(result.scale_index, expected)
    assert len(set(expected.tolist())) > 1          # the test exercises several scales
    if rule == mapping.PAPER:
        for k in np.flatnonzero(expected == 2)[:2]:
            np.testing.assert_allclose(result.feat[k], reference_spp(net, image, boxes[k], 640),
                                       rtol=1e-5, atol=1e-6)


def test_max_side_caps_the_resized_image_and_shares_equal_sizes(net, monkeypatch):
    image = np.random.default_rng(0).integers(0, 256, (50, 150, 3), dtype=np.uint8)
    extractor = features.SPPExtractor(net, scales=(60, 80, 100), levels=LEVELS, max_side=200)
    assert extractor.used_scales(image.shape[:2]) == [60, 66, 66]
    calls = []
    original = features.forward_to
    monkeypatch.setattr(features, "forward_to", lambda *a: calls.append(a[2].shape) or original(*a))
    maps = extractor.conv_maps(image)
    assert [m.scale for m in maps] == [60, 66, 66] and len(calls) == 2
    assert max(calls[1][2:]) <= 200


def test_spp_extractor_errors(net):
    with pytest.raises(ValueError, match="unknown mapping 'appendix'"):
        features.SPPExtractor(net, mapping_name="appendix")
    with pytest.raises(KeyError, match="no blob 'pool5'"):
        features.SPPExtractor(net, blob="pool5")
    with pytest.raises(ValueError, match="at least one positive scale"):
        features.SPPExtractor(net, scales=())


@pytest.mark.parametrize("mean_value, expected", [(None, [0, 0, 0]), (5, [5, 5, 5]),
                                                  ((1, 2, 3), [1, 2, 3])])
def test_load_mean_values(mean_value, expected):
    np.testing.assert_array_equal(features.load_mean(mean_value), expected)


def test_load_mean_file_is_averaged_per_channel(tmp_path):
    mean = np.stack([np.full((4, 5), v, np.float32) for v in (10, 20, 30)])[None]
    mean[0, 0, 0, 0] = 30                       # channel 0 averages to 11
    io.write_blobproto(mean, tmp_path / "mean.binaryproto")
    np.testing.assert_allclose(features.load_mean(mean_file=tmp_path / "mean.binaryproto"),
                               [11, 20, 30])
    with pytest.raises(ValueError, match="not both"):
        features.load_mean(1, tmp_path / "mean.binaryproto")
    with pytest.raises(ValueError, match="1 or 3 mean values"):
        features.load_mean((1, 2))


# ---------------------------------------------------------------------------
# R-CNN mode
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("box, source, offset, size", [
    # inside: grown by 224/192 about the centre, warped to the whole crop
    ([11, 21, 60, 70], [7, 17, 65, 75], [0, 0], [224, 224]),
    # top-left corner: the grown box starts at -3; 4 missing pixels -> 15 crop pixels
    ([1, 1, 50, 50], [1, 1, 55, 55], [15, 15], [209, 209]),
    # bottom-right corner: the grown box ends at 105 of 100
    ([51, 51, 100, 100], [47, 47, 100, 100], [0, 0], [205, 205]),
])
def test_warp_geometry_follows_rcnn_im_crop(box, source, offset, size):
    g = features.warp_geometry([box], (100, 100), crop_size=224, padding=16)
    np.testing.assert_array_equal(g.source[0], source)
    np.testing.assert_array_equal(g.offset[0], offset)
    np.testing.assert_array_equal(g.size[0], size)


def test_warp_geometry_without_padding_reads_the_box_itself():
    g = features.warp_geometry([[11, 21, 60, 70]], (100, 100), crop_size=224, padding=0)
    np.testing.assert_array_equal(g.source[0], [11, 21, 60, 70])
    np.testing.assert_array_equal(g.offset[0], [0, 0])
    np.testing.assert_array_equal(g.size[0], [224, 224])


def test_matlab_round_takes_halves_away_from_zero():
    np.testing.assert_array_equal(features.matlab_round([-2.5, -1.5, -0.4, 0.5, 1.5, 2.5]),
                                  [-3, -2, 0, 1, 2, 3])


def test_warp_windows_places_the_mean_subtracted_crop():
    image = np.full((100, 100, 3), 200, np.uint8)
    crops = features.warp_windows(image, [[1, 1, 50, 50], [11, 21, 60, 70]], mean=(100, 50, 0))
    assert crops.shape == (2, 3, 224, 224) and crops.dtype == np.float32
    # Outside the image: zero (the mean); inside: pixel minus mean, per channel.
    assert (crops[0, :, :15, :] == 0).all() and (crops[0, :, :, :15] == 0).all()
    np.testing.assert_array_equal(crops[0, :, 15:, 15:].reshape(3, -1).max(axis=1), [100, 150, 200])
    np.testing.assert_array_equal(crops[0, :, 15:, 15:].reshape(3, -1).min(axis=1), [100, 150, 200])
    np.testing.assert_array_equal(crops[1, 0], 100)


def test_warp_windows_keeps_orientation():
    columns = np.tile(np.arange(100, dtype=np.uint8)[None, :, None], (100, 1, 3))  # value = x - 1
    rows = np.ascontiguousarray(columns.transpose(1, 0, 2))                   # value = y - 1
    for image, axis in ((columns, 1), (rows, 0)):
        crop = features.warp_windows(image, [[11, 21, 60, 70]], mean=0)[0, 0]
        line = crop[100] if axis == 1 else crop[:, 100]
        first, last = (6, 64) if axis == 1 else (16, 74)     # source [7..65] x [17..75]
        assert line[0] == first and abs(line[-1] - last) < 0.5
        assert (np.diff(line) >= 0).all()


def test_rcnn_extractor_batches_give_the_same_features(tmp_path, tiny_voc_set):
    _, net = tiny_net(tmp_path, TINY_FULL, "full.prototxt")
    image = tiny_voc_set.read_image(tiny_voc_set.image_ids[0])
    boxes = some_boxes(*image.shape[:2], count=7)
    one = features.RCNNExtractor(net, blob="spp", mean=MEAN, padding=4, batch_size=100)
    small = features.RCNNExtractor(net, blob="spp", mean=MEAN, padding=4, batch_size=3)
    a, b = one(image, boxes), small(image, boxes)
    assert one.crop_size == 32 and a.feat.shape == (len(boxes), 6 * 5)
    np.testing.assert_allclose(a.feat, b.feat, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.scale_index, 0)
    # Each row is the net's output on that window's warped crop.
    crop = features.warp_windows(image, boxes[3:4], MEAN, crop_size=32, padding=4)
    np.testing.assert_allclose(a.feat[3], net.forward(data=crop, end="spp")["spp"][0],
                               rtol=1e-5, atol=1e-6)
    fc = features.RCNNExtractor(net, blob="fc", mean=MEAN, padding=4)(image, boxes)
    assert fc.feat.shape == (len(boxes), 5)


# ---------------------------------------------------------------------------
# The cache contract
# ---------------------------------------------------------------------------
def test_class_overlaps_takes_the_maximum_per_class():
    gt = [[1, 1, 10, 10], [21, 1, 30, 10], [1, 21, 10, 30]]
    classes = [2, 2, 1]
    boxes = [[1, 1, 10, 10], [21, 1, 30, 10], [1, 1, 10, 25], [1, 1, 25, 10], [41, 41, 50, 50],
             [1, 21, 10, 30]]
    out = cache.class_overlaps(boxes, gt, classes, num_classes=3)
    assert out.shape == (6, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, [[0, 0, 1, 0], [0, 0, 1, 0],
                                     [0, 50 / 300, 100 / 250, 0],   # two classes
                                     [0, 0, 100 / 250, 0],          # the better of two objects
                                     [0, 0, 0, 0], [0, 1, 0, 0]], rtol=1e-6)
    with pytest.raises(ValueError, match=r"1..3"):
        cache.class_overlaps(boxes, gt, [2, 2, 4], num_classes=3)


def test_image_rows_puts_ground_truth_first():
    rows = cache.image_rows([[1, 1, 10, 10]], [3], [True], [[1, 1, 10, 10], [5, 5, 20, 20]], 4)
    np.testing.assert_array_equal(rows["gt"], [True, False, False])
    np.testing.assert_array_equal(rows["gt_classes"], [3, 0, 0])
    np.testing.assert_array_equal(rows["difficult_gt"], [True, False, False])
    np.testing.assert_allclose(rows["overlaps"][:, 3], [1, 1, 36 / 320])
    with pytest.raises(ValueError, match="one of each per box"):
        cache.image_rows([[1, 1, 10, 10]], [3, 1], [True], [], 4)


def _run(tiny_voc_set, net, out, source, **kwargs):
    extractor = features.SPPExtractor(net, scales=(96,), levels=LEVELS, mean=MEAN)
    meta = dict(extractor.describe(), classes=list(SYNTHETIC_CLASSES))
    return features.cache_features(tiny_voc_set, source, extractor, out, meta, progress=False,
                                   **kwargs), extractor


@pytest.fixture
def proposal_dir(tmp_path, tiny_voc_set):
    """Precomputed proposals (random boxes) for every image, as .npy files."""
    folder = tmp_path / "props"
    folder.mkdir()
    for k, image_id in enumerate(tiny_voc_set.image_ids):
        ann = tiny_voc_set.annotation(image_id)
        np.save(folder / f"{image_id}.npy",
                some_boxes(ann.height, ann.width, count=30, seed=k).astype(np.float32))
    return folder


def test_cache_holds_the_contract(tmp_path, tiny_voc_set, net, proposal_dir):
    out = tmp_path / "cache"
    source = proposals.ProposalSource(proposal_dir, compute=False)
    (computed, skipped), extractor = _run(tiny_voc_set, net, out, source)
    assert (computed, skipped) == (len(tiny_voc_set), 0)
    assert cache.image_ids(out) == sorted(tiny_voc_set.image_ids)
    assert sorted(os.listdir(out)) == sorted([f"{i}.npz" for i in tiny_voc_set.image_ids] +
                                             ["meta.json"])
    assert cache.meta(out)["levels"] == list(LEVELS)
    some_difficult = False
    for image_id in tiny_voc_set.image_ids:
        record = cache.load(out, image_id)
        assert sorted(record) == sorted(cache.FIELDS)
        gt_boxes, labels, difficult = tiny_voc_set.ground_truth(image_id)
        props = proposals.load_boxes(proposal_dir / f"{image_id}.npy")
        g, r = len(gt_boxes), len(gt_boxes) + len(props)
        shapes = {"boxes": (r, 4), "gt": (r,), "gt_classes": (r,), "overlaps": (r, 5),
                  "feat": (r, 30), "scale_index": (r,), "difficult_gt": (r,)}
        for name, (dtype, _) in cache.FIELDS.items():
            assert record[name].dtype == dtype and record[name].shape == shapes[name], name
        np.testing.assert_array_equal(record["boxes"], np.concatenate([gt_boxes, props]))
        np.testing.assert_array_equal(record["gt"], np.arange(r) < g)
        np.testing.assert_array_equal(record["gt_classes"][:g], labels + 1)
        np.testing.assert_array_equal(record["gt_classes"][g:], 0)
        np.testing.assert_array_equal(record["difficult_gt"][:g], difficult)
        assert not record["difficult_gt"][g:].any()
        some_difficult |= bool(difficult.any())
        np.testing.assert_array_equal(record["overlaps"][:, 0], 0)
        np.testing.assert_allclose(record["overlaps"][np.arange(g), labels + 1], 1.0)
        assert record["overlaps"].max() <= 1.0
        np.testing.assert_allclose(record["feat"], extractor(tiny_voc_set.read_image(image_id),
                                                             record["boxes"]).feat)
    assert some_difficult          # the tiny set has difficult objects: the flag was exercised


def test_resuming_skips_complete_files_and_redoes_broken_ones(tmp_path, tiny_voc_set, net,
                                                             proposal_dir):
    out = tmp_path / "cache"
    source = proposals.ProposalSource(proposal_dir, compute=False)
    _run(tiny_voc_set, net, out, source)
    first, second = tiny_voc_set.image_ids[:2]
    stamp = os.stat(cache.image_path(out, first)).st_mtime_ns
    assert _run(tiny_voc_set, net, out, source)[0] == (0, len(tiny_voc_set))
    assert os.stat(cache.image_path(out, first)).st_mtime_ns == stamp
    with open(cache.image_path(out, first), "r+b") as f:      # a corrupt file
        f.write(b"not a zip file")
    raw = open(cache.image_path(out, second), "rb").read()    # a truncated one
    open(cache.image_path(out, second), "wb").write(raw[:len(raw) // 2])
    assert not cache.is_complete(out, first) and not cache.is_complete(out, second)
    with pytest.raises(cache.CacheError, match="not a readable .npz") as info:
        cache.load(out, first)
    assert cache.image_path(out, first) in str(info.value)
    assert _run(tiny_voc_set, net, out, source)[0] == (2, len(tiny_voc_set) - 2)
    assert cache.is_complete(out, first) and cache.is_complete(out, second)


def test_a_failed_write_leaves_no_file(tmp_path, tiny_voc_set, net, proposal_dir, monkeypatch):
    out = tmp_path / "cache"
    source = proposals.ProposalSource(proposal_dir, compute=False)

    def interrupted(f, arrays, compress):
        f.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt
    monkeypatch.setattr(cache, "_write_npz", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_voc_set, net, out, source)
    assert os.listdir(out) == ["meta.json"]


def test_resuming_with_other_settings_is_refused(tmp_path, tiny_voc_set, net, proposal_dir):
    out = tmp_path / "cache"
    source = proposals.ProposalSource(proposal_dir, compute=False)
    _run(tiny_voc_set, net, out, source)
    extractor = features.SPPExtractor(net, scales=(64, 96), levels=LEVELS, mean=MEAN)
    meta = dict(extractor.describe(), classes=list(SYNTHETIC_CLASSES))
    with pytest.raises(cache.CacheError, match=r"scales: cache has \[96\], now \[64, 96\]"):
        features.cache_features(tiny_voc_set, source, extractor, out, meta, progress=False)


def test_cache_errors_name_the_path(tmp_path):
    with pytest.raises(cache.CacheError, match="does not exist"):
        cache.load(tmp_path, "nothing")
    with pytest.raises(cache.CacheError, match="not a directory"):
        cache.image_ids(tmp_path / "nowhere")
    with pytest.raises(cache.CacheError, match="meta.json does not exist"):
        cache.meta(tmp_path)
    record = cache.image_rows([[1, 1, 5, 5]], [1], [False], [[2, 2, 6, 6]], 2)
    with pytest.raises(cache.CacheError, match=r"fields \['feat', 'scale_index'\] missing"):
        cache.save(tmp_path, "x", record)
    record.update(feat=np.zeros((3, 4)), scale_index=np.zeros(2))
    with pytest.raises(cache.CacheError, match="'feat' is float32 \\(3, 4\\)"):
        cache.save(tmp_path, "x", record)
    assert os.listdir(tmp_path) == []


def test_image_ids_ignore_temporary_files(tmp_path):
    record = cache.image_rows([[1, 1, 5, 5]], [1], [False], [[2, 2, 6, 6]], 2)
    record.update(feat=np.ones((2, 3)), scale_index=np.zeros(2))
    cache.save(tmp_path, "a", record, compress=True)
    (tmp_path / "b.npz.x1y2.tmp").write_bytes(b"partial")
    assert cache.image_ids(tmp_path) == ["a"]
    assert cache.is_complete(tmp_path, "a") and not cache.is_complete(tmp_path, "b")
    np.testing.assert_array_equal(cache.load(tmp_path, "a")["feat"], np.ones((2, 3)))


# ---------------------------------------------------------------------------
# The detection prototxts
# ---------------------------------------------------------------------------
def _layers(path):
    return {lp.name: lp for lp in io.read_net(path).layer}


def test_detection_nets_keep_the_deploy_layers():
    deploy = _layers(os.path.join(MODELS, "deploy.prototxt"))
    conv = _layers(os.path.join(MODELS, "detect_conv5.prototxt"))
    fc = _layers(os.path.join(MODELS, "detect_fc.prototxt"))
    assert list(conv) == ["data", "conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2",
                          "pool2", "conv3", "relu3", "conv4", "relu4", "conv5", "relu5"]
    for name in list(conv)[1:]:
        assert conv[name] == deploy[name], name
    assert list(fc) == ["spp", "fc6", "relu_fc6", "fc7", "relu_fc7"]
    for name in list(fc)[1:]:
        assert fc[name] == deploy[name], name
    assert deploy["conv1"].bottom == ["data"] and conv["data"].type == "Input"


def test_detection_nets_build_with_the_paper_sizes():
    conv = sppcaffe.Net(os.path.join(MODELS, "detect_conv5.prototxt"), sppcaffe.TEST)
    assert conv.outputs == ["conv5"] and conv.blobs["conv5"].shape == (1, 256, 13, 13)
    assert features.feature_stride(conv, "conv5") == mapping.ZF5_STRIDE
    fc = sppcaffe.Net(os.path.join(MODELS, "detect_fc.prototxt"), sppcaffe.TEST)
    assert fc.inputs == ["spp"] and fc.blobs["spp"].shape == (1, 12800)
    assert fc.outputs == ["fc7"] and fc.blobs["fc7"].shape == (1, 4096)


# ---------------------------------------------------------------------------
# Truncated SVD
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(12, 30), (30, 12)])
def test_truncated_svd_is_the_best_low_rank_approximation(shape):
    weight = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    left, right = svd.truncated_svd(weight, 5)
    assert left.shape == (5, shape[1]) and right.shape == (shape[0], 5)
    u, s, vt = np.linalg.svd(weight.astype(np.float64))
    np.testing.assert_allclose(right @ left, (u[:, :5] * s[:5]) @ vt[:5], atol=1e-5)
    full_left, full_right = svd.truncated_svd(weight, min(shape))
    np.testing.assert_allclose(full_right @ full_left, weight, atol=1e-5)
    with pytest.raises(ValueError, match="rank must lie in 1..12"):
        svd.truncated_svd(weight, 13)


FC_NET = """name: "fcs"
layer { name: "spp" type: "Input" top: "spp" input_param { shape { dim: 2 dim: 20 } } }
layer { name: "fc6" type: "InnerProduct" bottom: "spp" top: "fc6"
        inner_product_param { num_output: 16 weight_filler { type: "gaussian" std: 0.3 }
                              bias_filler { type: "constant" value: 0.5 } } }
layer { name: "relu_fc6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
        inner_product_param { num_output: 8 weight_filler { type: "gaussian" std: 0.3 } } }
"""


def test_compress_fc_replaces_layers_by_two_and_keeps_the_outputs(tmp_path):
    path, net = tiny_net(tmp_path, FC_NET, "fc.prototxt")
    param = io.read_net(path)
    x = np.random.default_rng(1).standard_normal((4, 20)).astype(np.float32)
    expected = net.forward(spp=x)["fc7"].copy()
    definition, weights = svd.compress_fc(param, net, {"fc6": 16})
    names = [lp.name for lp in definition.layer]
    assert names == ["spp", "fc6_L", "fc6_U", "relu_fc6", "fc7"]
    low, up = definition.layer[1], definition.layer[2]
    assert (list(low.bottom), list(low.top), list(up.bottom), list(up.top)) == \
        (["spp"], ["fc6_L"], ["fc6_L"], ["fc6"])
    assert not low.inner_product_param.bias_term and low.inner_product_param.num_output == 16
    assert not any(len(lp.blobs) for lp in definition.layer)
    compressed = sppcaffe.Net(definition, sppcaffe.TEST, weights=weights)
    np.testing.assert_allclose(compressed.forward(spp=x)["fc7"], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(compressed.params["fc6_U"][1].data, 0.5)
    # Lower ranks approximate, and get closer as the rank grows.
    errors = []
    for rank in (2, 8):
        d, w = svd.compress_fc(param, net, {"fc6": rank, "fc7": min(rank, 8)})
        out = sppcaffe.Net(d, sppcaffe.TEST, weights=w).forward(spp=x)["fc7"]
        errors.append(np.abs(out - expected).max())
    assert errors[1] < errors[0]
    weights_path = str(tmp_path / "fc.caffemodel")
    net.save(weights_path)
    proto_out, weights_out = svd.compress_files(path, weights_path, {"fc6": 16},
                                                str(tmp_path / "fc_svd"))
    from_files = sppcaffe.Net(proto_out, sppcaffe.TEST, weights=weights_out)
    np.testing.assert_allclose(from_files.forward(spp=x)["fc7"], expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="no layer 'fc8'"):
        svd.compress_fc(param, net, {"fc8": 2})
    with pytest.raises(ValueError, match="is a ReLU"):
        svd.compress_fc(param, net, {"relu_fc6": 2})
    assert svd.multiply_adds(4096, 12800) == 52428800
    assert svd.multiply_adds(4096, 12800, 1024) == 1024 * (4096 + 12800)
