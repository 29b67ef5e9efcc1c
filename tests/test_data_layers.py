"""Data, ImageData, HDF5Data and WindowData layers reading real files:
databases made with tools/convert_imageset from PNG images the tests
write, list files, .h5 files and an R-CNN window file."""
import gc
import logging
import os
import subprocess
import sys
import threading
import time

import cv2
import h5py
import numpy as np
import pytest
from google.protobuf import text_format

import sppcaffe
from sppcaffe.proto import caffe_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN, TEST = sppcaffe.TRAIN, sppcaffe.TEST
NUM_IMAGES = 5


def net_param(layer_text, extra=""):
    return text_format.Parse(f"layer {{ {layer_text} }}\n{extra}", caffe_pb2.NetParameter())


def build(layer_text, phase=TEST, seed=0, extra=""):
    sppcaffe.set_random_seed(seed)
    return sppcaffe.Net(net_param(layer_text, extra), phase)


def data_layer(source, batch=2, transform="", data_extra="", tops=("data", "label")):
    top_text = " ".join(f'top: "{t}"' for t in tops)
    return (f'name: "data" type: "Data" {top_text} '
            f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB {data_extra} }} '
            f"transform_param {{ {transform} }}")


def run_tool(*args):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", args[0]), *args[1:]],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result


def forward_batches(net, count, *blobs):
    out = []
    for _ in range(count):
        net.forward()
        out.append([net.blobs[b].data.copy() for b in blobs])
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """NUM_IMAGES 10x12 PNGs (BGR as OpenCV writes them), a list file and
    the LMDBs convert_imageset makes of them (raw and encoded)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (NUM_IMAGES, 10, 12, 3), dtype=np.uint8)
    with open(folder / "list.txt", "w") as f:
        for i, p in enumerate(pixels):
            cv2.imwrite(str(folder / f"im{i}.png"), p)
            f.write(f"im{i}.png {i + 10}\n")
    run_tool("convert_imageset", f"{folder}/", str(folder / "list.txt"), str(folder / "raw_lmdb"))
    run_tool("convert_imageset", "--encoded", f"{folder}/", str(folder / "list.txt"),
             str(folder / "encoded_lmdb"))
    chw = pixels.transpose(0, 3, 1, 2).astype(np.float32)
    return {"folder": folder, "chw": chw, "labels": np.arange(NUM_IMAGES) + 10.0,
            "raw": str(folder / "raw_lmdb"), "encoded": str(folder / "encoded_lmdb")}


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("db", ["raw", "encoded"])
def test_data_layer_reads_the_images_in_order_and_cycles(images, db):
    net = build(data_layer(images[db]))
    layer = net.layers[0]
    assert net.blobs["data"].shape == (2, 3, 10, 12)
    order = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    epochs = []
    for b in range(5):
        net.forward()
        idx = order[2 * b:2 * b + 2]
        np.testing.assert_array_equal(net.blobs["data"].data, images["chw"][idx])
        np.testing.assert_array_equal(net.blobs["label"].data, images["labels"][idx])
        epochs.append(layer.epoch)
    # A batch's epoch is that of its first item: batch 2 = items 4, 0.
    assert epochs == [0, 0, 0, 1, 1]
    assert layer.current_size is None
    layer.close()


@pytest.mark.parametrize("transform", ["", "mean_value: 100 scale: 0.5",
                                       "mean_value: 1 mean_value: 2 mean_value: 3",
                                       "mirror: true", "crop_size: 6 mirror: true"])
def test_raw_datums_as_one_array_give_the_per_datum_batches(images, monkeypatch, transform):
    """Raw datums of one shape are decoded and transformed as one array
    (fewer Python steps on the prefetch thread): the same batches, labels,
    epochs and random draws as one datum at a time."""
    from sppcaffe.data import db_batches
    raw_pixels = db_batches._raw_pixels
    runs, taken = [], []

    def counted(datums):
        result = raw_pixels(datums)
        taken.append(result is not None)
        return result
    for stacked in (True, False):
        monkeypatch.setattr(db_batches, "_raw_pixels",
                            counted if stacked else (lambda datums: None))
        net = build(data_layer(images["raw"], batch=3, transform=transform), phase=TRAIN, seed=4)
        runs.append([(d, l, net.layers[0].epoch)
                     for d, l in forward_batches(net, 4, "data", "label")])
        net.layers[0].close()
    assert taken and all(taken)
    for (d1, l1, e1), (d2, l2, e2) in zip(*runs):
        assert np.array_equal(d1, d2) and np.array_equal(l1, l2) and e1 == e2
    datums = [array_datum(images["chw"][i]) for i in range(2)]
    pixels, labels = raw_pixels(datums)
    assert np.array_equal(pixels, images["chw"][:2]) and pixels.dtype == np.uint8
    assert np.array_equal(labels, [3, 3]) and labels.dtype == np.float32
    odd = [datums[0], array_datum(images["chw"][0][:, :5])]
    assert raw_pixels(odd) is None                      # two shapes: one datum at a time


def array_datum(chw):
    from sppcaffe.data.datum import array_to_datum
    return array_to_datum(chw.astype(np.uint8), label=3)


def test_data_layer_centre_crop_and_mean_value(images):
    net = build(data_layer(images["raw"], batch=NUM_IMAGES,
                           transform="crop_size: 6 mean_value: 100 scale: 0.5"))
    net.forward()
    expected = (images["chw"][:, :, 2:8, 3:9] - 100) * np.float32(0.5)
    np.testing.assert_array_equal(net.blobs["data"].data, expected)


def test_data_layer_without_label_top(images):
    net = build(data_layer(images["raw"], tops=("data",)))
    net.forward()
    assert list(net.blobs) == ["data"]
    np.testing.assert_array_equal(net.blobs["data"].data, images["chw"][:2])


def test_data_layer_multi_size_switches_once_per_epoch(images, caplog):
    text = data_layer(images["raw"], batch=2,
                      transform="crop_size: 8 multi_size: 8 multi_size: 6 mirror: true")
    net = build(text, TRAIN)
    layer = net.layers[0]
    assert net.blobs["data"].shape == (2, 3, 8, 8)
    with caplog.at_level(logging.INFO, logger="sppcaffe"):
        seen = []
        for _ in range(8):
            net.forward()
            seen.append((layer.epoch, layer.current_size, net.blobs["data"].shape))
    # 5 items in batches of 2; a batch belongs to the epoch of its first item
    # (items 4, 0 -> epoch 0), and its size is that epoch's: never mixed.
    for epoch, size, shape in seen:
        assert size == (8 if epoch % 2 == 0 else 6)
        assert shape == (2, 3, size, size)
    assert [e for e, _, _ in seen] == [0, 0, 0, 1, 1, 2, 2, 2]
    messages = [r.getMessage() for r in caplog.records if "input size" in r.getMessage()]
    assert messages == ["Data layer 'data': epoch 0, input size 8x8",
                        "Data layer 'data': epoch 1, input size 6x6",
                        "Data layer 'data': epoch 2, input size 8x8"]


def test_rand_skip_starts_at_a_seeded_offset(images):
    text = data_layer(images["raw"], batch=1, data_extra="rand_skip: 5")
    firsts = {int(forward_batches(build(text, seed=s), 1, "label")[0][0][0]) - 10
              for s in range(12)}
    assert firsts <= set(range(5)) and len(firsts) > 1
    again = [forward_batches(build(text, seed=3), 2, "label") for _ in range(2)]
    np.testing.assert_array_equal(again[0], again[1])


def test_two_nets_read_one_database_at_once(images):
    a, b = build(data_layer(images["raw"])), build(data_layer(images["raw"], batch=3))
    for _ in range(4):
        a.forward()
        b.forward()
    np.testing.assert_array_equal(b.blobs["label"].data, images["labels"][[4, 0, 1]])
    a.layers[0].close()
    b.forward()
    np.testing.assert_array_equal(b.blobs["label"].data, images["labels"][[2, 3, 4]])


def test_missing_database_names_the_path_and_layer(tmp_path):
    with pytest.raises(sppcaffe.LayerError, match=r"layer 'data' \(Data\).*no_such_lmdb"):
        build(data_layer(str(tmp_path / "no_such_lmdb")))


def test_leveldb_backend_is_a_clear_error(images):
    text = (f'name: "data" type: "Data" top: "data" '
            f'data_param {{ source: "{images["raw"]}" batch_size: 1 }}')
    with pytest.raises(sppcaffe.LayerError, match="LEVELDB.*not supported.*backend: LMDB"):
        build(text)


def test_data_shapes_still_make_a_python_fed_input(images):
    net = sppcaffe.Net(net_param(data_layer("/nowhere/lmdb")), TEST,
                       data_shapes={"data": (4, 3, 8, 8), "label": (4,)})
    assert net.layers[0].fed_from_python
    net.blobs["data"].data[...] = 7
    net.forward()
    assert (net.blobs["data"].data == 7).all()


def test_prefetched_batches_equal_synchronous_ones_for_a_seed(images):
    transform = "crop_size: 6 mirror: true mean_value: 3"
    batches = {}
    for prefetch in (0, 1, 4):
        net = build(data_layer(images["raw"], batch=3, transform=transform,
                               data_extra=f"prefetch: {prefetch}"), TRAIN, seed=42)
        batches[prefetch] = forward_batches(net, 6, "data", "label")
        net.layers[0].close()
    for prefetch in (1, 4):
        for a, b in zip(batches[0], batches[prefetch]):
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
    other = build(data_layer(images["raw"], batch=3, transform=transform), TRAIN, seed=43)
    different = forward_batches(other, 6, "data")
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(batches[4], different))


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("sppcaffe-prefetch")]


def wait_for(condition, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_close_stops_the_thread_and_forward_then_fails(images):
    before = len(prefetch_threads())
    net = build(data_layer(images["raw"]))
    assert len(prefetch_threads()) == before + 1
    net.layers[0].close()
    assert wait_for(lambda: len(prefetch_threads()) == before)
    with pytest.raises(sppcaffe.LayerError, match="closed"):
        net.forward()


def test_a_collected_net_stops_its_thread(images):
    before = len(prefetch_threads())
    net = build(data_layer(images["raw"]))
    net.forward()
    del net
    gc.collect()
    assert wait_for(lambda: len(prefetch_threads()) == before)


def test_interpreter_exits_cleanly_with_a_running_prefetch_thread(images):
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import sppcaffe; "
            "from google.protobuf import text_format; from sppcaffe.proto import caffe_pb2; "
            "net = sppcaffe.Net(text_format.Parse(sys.argv[2], caffe_pb2.NetParameter()), "
            "sppcaffe.TRAIN); net.forward(); print('done')")
    text = f"layer {{ {data_layer(images['raw'], batch=1)} }}"
    result = subprocess.run([sys.executable, "-c", code, ROOT, text], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == "done", result.stderr
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr


# ---------------------------------------------------------------------------
# ImageData
# ---------------------------------------------------------------------------
def image_data_layer(source, batch=1, extra="", transform=""):
    return (f'name: "data" type: "ImageData" top: "data" top: "label" '
            f'image_data_param {{ source: "{source}" batch_size: {batch} {extra} }} '
            f"transform_param {{ {transform} }}")


@pytest.fixture()
def sized_images(tmp_path):
    """Images of three different sizes and their list file."""
    sizes = [(6, 8), (9, 5), (7, 7)]
    pixels = []
    with open(tmp_path / "list.txt", "w") as f:
        for i, (h, w) in enumerate(sizes):
            p = np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
            cv2.imwrite(str(tmp_path / f"img {i}.png"), p)      # a space in the name
            f.write(f"img {i}.png {i}\n")
            pixels.append(p.transpose(2, 0, 1))
    return tmp_path, pixels


def test_image_data_batch_1_keeps_every_image_size(sized_images):
    folder, pixels = sized_images
    net = build(image_data_layer(folder / "list.txt", extra=f'root_folder: "{folder}/"'))
    for i in [0, 1, 2, 0]:
        net.forward()
        np.testing.assert_array_equal(net.blobs["data"].data[0], pixels[i])
        assert net.blobs["label"].data[0] == i
    assert net.layers[0].epoch == 1


def test_image_data_resize_and_gray(sized_images):
    folder, _ = sized_images
    net = build(image_data_layer(folder / "list.txt", batch=3,
                                 extra=f'root_folder: "{folder}/" new_height: 4 new_width: 5 '
                                       "is_color: false"))
    net.forward()
    assert net.blobs["data"].shape == (3, 1, 4, 5)
    gray = cv2.resize(cv2.imread(str(folder / "img 1.png"), cv2.IMREAD_GRAYSCALE), (5, 4))
    np.testing.assert_array_equal(net.blobs["data"].data[1, 0], gray)


def test_image_data_shuffle_permutes_every_epoch(tmp_path):
    with open(tmp_path / "list.txt", "w") as f:
        for i in range(8):
            cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((2, 2, 3), i, np.uint8))
            f.write(f"{tmp_path}/{i}.png {i}\n")
    text = image_data_layer(tmp_path / "list.txt", batch=8, extra="shuffle: true")
    epochs = [b[0] for b in forward_batches(build(text, seed=5), 3, "label")]
    for labels in epochs:
        assert sorted(labels) == list(range(8))
    assert not np.array_equal(epochs[0], epochs[1]) or not np.array_equal(epochs[1], epochs[2])
    again = [b[0] for b in forward_batches(build(text, seed=5), 3, "label")]
    np.testing.assert_array_equal(epochs, again)


def test_image_data_batch_of_different_sizes_names_the_files(sized_images):
    folder, _ = sized_images
    net = build(image_data_layer(folder / "list.txt", batch=2,
                                 extra=f'root_folder: "{folder}/"'))
    with pytest.raises(sppcaffe.LayerError, match="img 0.png' is 3x6x8.*img 1.png' is 3x9x5"):
        net.forward()


def test_image_data_missing_list_and_image_are_named(tmp_path):
    with pytest.raises(sppcaffe.LayerError, match=r"\(ImageData\).*missing_list.txt"):
        build(image_data_layer(tmp_path / "missing_list.txt"))
    (tmp_path / "list.txt").write_text("gone.png 3\n")
    with pytest.raises(sppcaffe.LayerError, match=r"gone.png' \(line 1 of .*list.txt"):
        build(image_data_layer(tmp_path / "list.txt"))


def test_an_unreadable_image_fails_the_forward_that_needs_it(sized_images):
    folder, _ = sized_images
    os.remove(folder / "img 1.png")
    net = build(image_data_layer(folder / "list.txt", extra=f'root_folder: "{folder}/"'))
    net.forward()                                   # image 0, prepared in the background
    for _ in range(2):                              # and the error stays
        with pytest.raises(sppcaffe.LayerError, match=r"img 1.png' \(line 2 of"):
            net.forward()


# ---------------------------------------------------------------------------
# HDF5Data
# ---------------------------------------------------------------------------
def write_h5(path, data, label):
    with h5py.File(path, "w") as f:
        f["data"] = data
        f["label"] = label


@pytest.fixture()
def h5_files(tmp_path):
    data = np.arange(7 * 2 * 3, dtype=np.float32).reshape(7, 2, 3)
    label = np.arange(7, dtype=np.float64)
    write_h5(tmp_path / "a.h5", data[:4], label[:4])
    write_h5(tmp_path / "b.h5", data[4:], label[4:])
    (tmp_path / "files.txt").write_text(f"{tmp_path}/a.h5\n{tmp_path}/b.h5\n")
    return tmp_path / "files.txt", data, label


def hdf5_layer(source, batch=3, extra=""):
    return (f'name: "data" type: "HDF5Data" top: "data" top: "label" '
            f'hdf5_data_param {{ source: "{source}" batch_size: {batch} {extra} }}')


def test_hdf5_batches_run_across_files_and_wrap(h5_files):
    source, data, label = h5_files
    net = build(hdf5_layer(source))
    assert net.blobs["data"].shape == (3, 2, 3) and net.blobs["label"].shape == (3,)
    order = [0, 1, 2, 3, 4, 5, 6, 0, 1]
    for b in range(3):
        net.forward()
        np.testing.assert_array_equal(net.blobs["data"].data, data[order[3 * b:3 * b + 3]])
        np.testing.assert_array_equal(net.blobs["label"].data, label[order[3 * b:3 * b + 3]])
    assert net.layers[0].epoch == 0       # the batch of rows 6, 0, 1 starts in epoch 0
    net.forward()
    assert net.layers[0].epoch == 1


def test_hdf5_shuffle_covers_every_row_once_per_epoch(h5_files):
    source, _, label = h5_files
    net = build(hdf5_layer(source, batch=7, extra="shuffle: true"), seed=3)
    seen = [b[0] for b in forward_batches(net, 3, "label")]
    for rows in seen:
        assert sorted(rows) == list(label)
    assert any(not np.array_equal(rows, label) for rows in seen)


def test_hdf5_errors_name_the_files(h5_files, tmp_path):
    source, _, _ = h5_files
    with pytest.raises(sppcaffe.LayerError, match="no dataset named \\['extra'\\]"):
        build(f'name: "d" type: "HDF5Data" top: "data" top: "extra" '
              f'hdf5_data_param {{ source: "{source}" batch_size: 2 }}')
    (tmp_path / "bad.txt").write_text(f"{tmp_path}/missing.h5\n")
    with pytest.raises(sppcaffe.LayerError, match="missing.h5.*bad.txt"):
        build(hdf5_layer(tmp_path / "bad.txt"))
    with pytest.raises(sppcaffe.LayerError, match="nolist.txt"):
        build(hdf5_layer(tmp_path / "nolist.txt"))
    with pytest.raises(sppcaffe.LayerError, match="does not transform"):
        build(hdf5_layer(source) + " transform_param { scale: 2 }")


# ---------------------------------------------------------------------------
# WindowData
# ---------------------------------------------------------------------------
@pytest.fixture()
def window_file(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), pixels)
    text = ("# 0\na.png\n3\n20\n24\n3\n"
            "1 0.9 2 3 11 12\n"          # foreground, class 1
            "2 0.3 0 0 9 9\n"            # dropped: between the thresholds
            "5 0.1 0 0 9 9\n")           # background (class set to 0)
    (tmp_path / "windows.txt").write_text(text)
    return tmp_path, pixels.transpose(2, 0, 1).astype(np.float32)


def window_layer(folder, batch=4, extra="", transform="crop_size: 8"):
    return (f'name: "data" type: "WindowData" top: "data" top: "label" '
            f'window_data_param {{ source: "{folder}/windows.txt" root_folder: "{folder}/" '
            f"batch_size: {batch} fg_threshold: 0.5 bg_threshold: 0.2 {extra} }} "
            f"transform_param {{ {transform} }}")


def warp(pixels, x1, y1, x2, y2, size):
    hwc = np.ascontiguousarray(pixels.transpose(1, 2, 0)).astype(np.uint8)
    return cv2.resize(hwc[y1:y2 + 1, x1:x2 + 1], (size, size)).transpose(2, 0, 1)


def test_window_data_samples_background_then_foreground(window_file):
    folder, pixels = window_file
    net = build(window_layer(folder, extra="fg_fraction: 0.5",
                             transform="crop_size: 8 mean_value: 10"))
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, [0, 0, 1, 1])
    bg = warp(pixels, 0, 0, 9, 9, 8) - np.float32(10)
    fg = warp(pixels, 2, 3, 11, 12, 8) - np.float32(10)
    np.testing.assert_array_equal(net.blobs["data"].data, [bg, bg, fg, fg])


def test_window_data_context_pad_by_hand(window_file):
    folder, pixels = window_file
    net = build(window_layer(folder, batch=1, extra="fg_fraction: 0 context_pad: 2"))
    net.forward()
    # Box (0,0)-(9,9), crop 8, pad 2: scale 2 -> (-5,-5)-(15,15), 21 px wide; clipped
    # to (0,0)-(15,15), warped to round(16 * 8/21) = 6 px at offset round(5 * 8/21) = 2.
    out = net.blobs["data"].data[0]
    np.testing.assert_array_equal(out[:, 2:8, 2:8], warp(pixels, 0, 0, 15, 15, 6))
    assert not out[:, :2].any() and not out[:, :, :2].any()


def test_window_data_mirror_is_random_and_seeded(window_file):
    folder, pixels = window_file
    text = window_layer(folder, batch=8, extra="fg_fraction: 0.5",
                        transform="crop_size: 8 mirror: true")
    a = forward_batches(build(text, TRAIN, seed=1), 3, "data")
    b = forward_batches(build(text, TRAIN, seed=1), 3, "data")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x[0], y[0])
    bg = warp(pixels, 0, 0, 9, 9, 8)
    items = np.concatenate([x[0][:4] for x in a])          # the background windows
    flipped = [np.array_equal(item, bg[..., ::-1]) for item in items]
    assert all(f or np.array_equal(item, bg) for f, item in zip(flipped, items))
    assert 0 < sum(flipped) < len(items)


def test_window_data_errors(window_file, tmp_path):
    folder, _ = window_file
    with pytest.raises(sppcaffe.LayerError, match=r"\(WindowData\).*nofile.txt"):
        build(window_layer(folder).replace("windows.txt", "nofile.txt"))
    with pytest.raises(sppcaffe.LayerError, match="crop_size"):
        build(window_layer(folder, transform=""))
    os.remove(folder / "a.png")
    net = build(window_layer(folder))
    with pytest.raises(sppcaffe.LayerError, match="a.png"):
        net.forward()


# ---------------------------------------------------------------------------
# Training with the solver
# ---------------------------------------------------------------------------
def test_net_with_a_data_layer_trains_with_the_solver(images, tmp_path):
    solvers = pytest.importorskip("sppcaffe.solvers")
    net_text = (f"layer {{ {data_layer(images['raw'], batch=5, transform='scale: 0.0039')} }}\n"
                'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                '  inner_product_param { num_output: 15 weight_filler { type: "xavier" } } }\n'
                'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" '
                '  top: "loss" }\n')
    (tmp_path / "net.prototxt").write_text(net_text)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path}/net.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 30 '
        f'momentum: 0.9 display: 0 snapshot_prefix: "{tmp_path}/snap" random_seed: 1\n')
    solver = solvers.get_solver(str(tmp_path / "solver.prototxt"))
    solver.step(1)
    first = float(solver.net.blobs["loss"].data)
    solver.step(29)
    assert float(solver.net.blobs["loss"].data) < first / 2
