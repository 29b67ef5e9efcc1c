"""Region proposals: selective search on a real photograph, the per-image
proposal cache, and R-CNN's .mat files (written here in its layout)."""
import os

import cv2
import numpy as np
import pytest

from sppcaffe.detection import proposals
from sppcaffe.detection.proposals import ProposalError, ProposalSource


@pytest.fixture(scope="module")
def photo():
    """skimage's cat photograph, BGR, shrunk to 150 x 225 to keep the search fast."""
    import skimage.data
    rgb = skimage.data.chelsea()
    small = cv2.resize(rgb, (225, 150), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(small[:, :, ::-1])


@pytest.fixture(scope="module")
def photo_boxes(photo):
    return proposals.selective_search(photo, max_boxes=None)


def test_selective_search_boxes_lie_in_the_image_and_are_distinct(photo, photo_boxes):
    boxes = photo_boxes
    height, width = photo.shape[:2]
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert len(boxes) > 50
    np.testing.assert_array_equal(boxes, np.round(boxes))
    assert boxes[:, 0].min() >= 1 and boxes[:, 1].min() >= 1
    assert boxes[:, 2].max() <= width and boxes[:, 3].max() <= height
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert len(np.unique(boxes, axis=0)) == len(boxes)
    sides = np.minimum(boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1)
    assert sides.min() >= proposals.MIN_SIDE
    # The whole image is one of the regions of the hierarchy.
    assert [1, 1, width, height] in boxes.tolist()


def test_selective_search_is_repeatable_and_max_boxes_keeps_the_best_ranked(photo, photo_boxes):
    again = proposals.selective_search(photo, max_boxes=None)
    np.testing.assert_array_equal(again, photo_boxes)
    first = proposals.selective_search(photo, max_boxes=25)
    np.testing.assert_array_equal(first, photo_boxes[:25])


def test_selective_search_caps_the_image_side_and_maps_boxes_back(photo):
    big = cv2.resize(photo, (450, 300), interpolation=cv2.INTER_LINEAR)
    boxes = proposals.selective_search(big, max_image_side=225, max_boxes=None)
    assert len(boxes) > 20
    assert boxes[:, 2].max() <= 450 and boxes[:, 3].max() <= 300
    # The whole (shrunk) image maps back to the whole original image.
    assert [1, 1, 450, 300] in boxes.tolist()


@pytest.mark.parametrize("mode", [proposals.OPENCV_FAST])
def test_other_modes_run(photo, mode):
    boxes = proposals.selective_search(photo, mode=mode, max_boxes=100)
    assert 0 < len(boxes) <= 100


def test_selective_search_rejects_bad_input(photo):
    with pytest.raises(ValueError, match="unknown selective search mode"):
        proposals.selective_search(photo, mode="slow")
    with pytest.raises(ValueError, match="uint8"):
        proposals.selective_search(photo.astype(np.float32))


def test_rects_to_boxes_is_one_based_and_inclusive():
    np.testing.assert_array_equal(proposals.rects_to_boxes([[0, 0, 10, 5], [3, 4, 1, 1]]),
                                  [[1, 1, 10, 5], [4, 5, 4, 5]])


def test_unique_boxes_keeps_first_occurrences_in_order():
    boxes = [[5, 5, 9, 9], [1, 1, 4, 4], [5, 5, 9, 9], [2, 2, 3, 3], [1, 1, 4, 4]]
    np.testing.assert_array_equal(proposals.unique_boxes(boxes),
                                  [[5, 5, 9, 9], [1, 1, 4, 4], [2, 2, 3, 3]])


def test_drop_small_keeps_sides_of_exactly_min_side():
    boxes = [[1, 1, 20, 20], [1, 1, 19, 40], [1, 1, 40, 19], [5, 5, 30, 60]]
    np.testing.assert_array_equal(proposals.drop_small(boxes, 20),
                                  [[1, 1, 20, 20], [5, 5, 30, 60]])


# ---------------------------------------------------------------------------
# The per-image cache
# ---------------------------------------------------------------------------
def test_source_computes_once_caches_and_reloads(tmp_path, photo, photo_boxes, monkeypatch):
    source = ProposalSource(tmp_path / "props", max_boxes=None)
    boxes = source.boxes("cat", photo)
    np.testing.assert_array_equal(boxes, photo_boxes)
    assert sorted(os.listdir(tmp_path / "props")) == ["cat.npy"]      # no temporary file left

    def no_search(*args, **kwargs):
        raise AssertionError("cached proposals must not be searched again")
    monkeypatch.setattr(proposals, "selective_search", no_search)
    reloaded = ProposalSource(tmp_path / "props").boxes("cat", image=no_search)
    np.testing.assert_array_equal(reloaded, photo_boxes)
    assert reloaded.dtype == np.float32


def test_source_computes_lazily_from_an_image_function(tmp_path, photo, photo_boxes):
    calls = []

    def read():
        calls.append(1)
        return photo
    source = ProposalSource(tmp_path, max_boxes=None)
    np.testing.assert_array_equal(source.boxes("a", read), photo_boxes)
    source.boxes("a", read)
    assert calls == [1]


def test_source_reads_npz_files_and_refuses_to_search_when_told(tmp_path):
    np.savez(tmp_path / "x.npz", boxes=np.array([[1, 2, 30, 40]], np.float64))
    source = ProposalSource(tmp_path, compute=False)
    np.testing.assert_array_equal(source.boxes("x"), [[1, 2, 30, 40]])
    with pytest.raises(ProposalError, match="no proposals for image 'y'.*y.npy"):
        source.boxes("y")


@pytest.mark.parametrize("content, message", [
    (np.zeros((3, 5)), r"shape \(N, 4\)"),
    (None, "not a readable"),
])
def test_load_boxes_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.npy"
    if content is None:
        path.write_bytes(b"garbage")
    else:
        np.save(path, content)
    with pytest.raises(ProposalError, match=message) as info:
        proposals.load_boxes(path)
    assert str(path) in str(info.value)


def test_load_boxes_npz_without_boxes(tmp_path):
    np.savez(tmp_path / "b.npz", rois=np.zeros((2, 4)))
    with pytest.raises(ProposalError, match="no 'boxes' array"):
        proposals.load_boxes(tmp_path / "b.npz")


# ---------------------------------------------------------------------------
# R-CNN's .mat files
# ---------------------------------------------------------------------------
def _cells(items):
    cells = np.empty((1, len(items)), dtype=object)
    for k, item in enumerate(items):
        cells[0, k] = item
    return cells


RCNN_BOXES = {  # [y1 x1 y2 x2], 1-based, as selective_search_data stores them
    "000005": np.array([[10, 20, 100, 200], [1, 1, 375, 500]], np.float64),
    "000007": np.array([[5, 6, 7, 8]], np.float64),
    "000009": np.zeros((0, 4)),
}
EXPECTED = {"000005": [[20, 10, 200, 100], [1, 1, 500, 375]], "000007": [[6, 5, 8, 7]],
            "000009": np.zeros((0, 4))}


def test_read_rcnn_mat_v5(tmp_path):
    import scipy.io
    path = tmp_path / "voc_2007_test.mat"
    scipy.io.savemat(path, {"images": _cells(list(RCNN_BOXES)),
                            "boxes": _cells(list(RCNN_BOXES.values()))})
    boxes = proposals.read_rcnn_mat(path)
    assert list(boxes) == list(RCNN_BOXES)
    for image_id, expected in EXPECTED.items():
        assert boxes[image_id].dtype == np.float32
        np.testing.assert_array_equal(boxes[image_id], np.reshape(expected, (-1, 4)))
    source = ProposalSource(mat_file=path)
    np.testing.assert_array_equal(source.boxes("000007"), [[6, 5, 8, 7]])
    with pytest.raises(ProposalError, match="no proposals for image '000001'"):
        source.boxes("000001")


def test_read_rcnn_mat_v73(tmp_path):
    """MATLAB -v7.3 files are HDF5: cells are object references, matrices
    stored transposed, strings as uint16 characters."""
    import h5py
    path = tmp_path / "v73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        image_refs, box_refs = [], []
        for k, (image_id, b) in enumerate(RCNN_BOXES.items()):
            name = refs.create_dataset(f"i{k}", data=np.array([[ord(c)] for c in image_id],
                                                              np.uint16))
            data = refs.create_dataset(f"b{k}", data=b.T if b.size else np.zeros((4, 0)))
            image_refs.append(name.ref)
            box_refs.append(data.ref)
        f.create_dataset("images", data=np.array([image_refs], dtype=h5py.ref_dtype))
        f.create_dataset("boxes", data=np.array([box_refs], dtype=h5py.ref_dtype))
    with open(path, "r+b") as f:       # MATLAB's text header in the user block
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 "
                b"HDF5 schema 1.00 .")
    boxes = proposals.read_rcnn_mat(path)
    assert list(boxes) == list(RCNN_BOXES)
    for image_id, expected in EXPECTED.items():
        np.testing.assert_array_equal(boxes[image_id], np.reshape(expected, (-1, 4)))


def test_read_rcnn_mat_errors_name_the_file(tmp_path):
    import scipy.io
    path = tmp_path / "other.mat"
    scipy.io.savemat(path, {"rois": np.zeros((2, 4))})
    with pytest.raises(ProposalError, match="no 'images' variable") as info:
        proposals.read_rcnn_mat(path)
    assert str(path) in str(info.value)
    with pytest.raises(ProposalError, match="no proposal file"):
        proposals.read_rcnn_mat(tmp_path / "missing.mat")
    bad = tmp_path / "bad.mat"
    scipy.io.savemat(bad, {"images": _cells(["a"]), "boxes": _cells([np.zeros((2, 3))])})
    with pytest.raises(ProposalError, match=r"image 0 \('a'\) have shape \(2, 3\)"):
        proposals.read_rcnn_mat(bad)
