"""Boxes: pixel-inclusive areas and IoU worked out by hand, NMS (threshold,
tie rule), regression targets and their inverse."""
import numpy as np
import pytest

from sppcaffe.detection.boxes import (apply_deltas, box_areas, clip_boxes, nms, pairwise_iou,
                                      regression_targets, score_order)


def test_areas_count_both_end_pixels():
    # [x1 y1 x2 y2] covers x2 - x1 + 1 columns
    boxes = [[0, 0, 0, 0], [1, 1, 10, 20], [5, 5, 6, 5]]
    np.testing.assert_array_equal(box_areas(boxes), [1, 10 * 20, 2 * 1])


@pytest.mark.parametrize("a, b, expected", [
    ([0, 0, 9, 9], [0, 0, 9, 9], 1.0),
    ([0, 0, 9, 9], [5, 5, 14, 14], 25 / 175),       # 5x5 shared; 100 + 100 - 25
    ([0, 0, 9, 9], [9, 0, 18, 9], 10 / 190),        # one shared column of 10 pixels
    ([0, 0, 9, 9], [10, 0, 19, 9], 0.0),            # adjacent, no shared pixel
    ([0, 0, 9, 9], [2, 2, 3, 3], 4 / 100),          # inside: 2x2 / 10x10
    ([0, 0, 9, 9], [50, 50, 60, 60], 0.0),
])
def test_iou_by_hand(a, b, expected):
    assert pairwise_iou([a], [b])[0, 0] == pytest.approx(expected, rel=1e-12)
    assert pairwise_iou([b], [a])[0, 0] == pytest.approx(expected, rel=1e-12)


def test_iou_is_all_pairs():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (7, 2))
    a = np.concatenate([xy, xy + rng.uniform(0, 30, (7, 2))], axis=1)
    b = a[[3, 0, 5]] + 2.0
    iou = pairwise_iou(a, b)
    assert iou.shape == (7, 3)
    for i in range(7):
        for j in range(3):
            assert iou[i, j] == pairwise_iou(a[i:i + 1], b[j:j + 1])[0, 0]
    assert pairwise_iou(np.zeros((0, 4)), b).shape == (0, 3)


def test_bad_box_shape_is_an_error():
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        box_areas([[1, 2, 3]])


# NMS case (threshold 0.3):
#   0: A [0,0,9,9]    0.90
#   1: B [1,1,10,10]  0.80   IoU(D) = 6*9 / (200 - 54) = 0.37
#   2: C [20,20,29,29] 0.70  far from everything
#   3: D [5,0,14,9]   0.95   IoU(A) = 5*10 / (200 - 50) = 1/3
# D is kept first and suppresses A (1/3 > 0.3) and B (0.37); C survives.
NMS_BOXES = np.array([[0, 0, 9, 9], [1, 1, 10, 10], [20, 20, 29, 29], [5, 0, 14, 9]], float)
NMS_SCORES = np.array([0.9, 0.8, 0.7, 0.95])


def test_nms_by_hand():
    np.testing.assert_array_equal(nms(NMS_BOXES, NMS_SCORES, 0.3), [3, 2])


def test_nms_keeps_an_overlap_equal_to_the_threshold():
    # IoU(A, D) is exactly 1/3: kept at threshold 1/3 (nms.m keeps o <= overlap);
    # B's IoU with A is 81 / 119 = 0.68, so B goes.
    np.testing.assert_array_equal(nms(NMS_BOXES, NMS_SCORES, 1 / 3), [3, 0, 2])


def test_nms_threshold_one_keeps_all_and_zero_keeps_disjoint():
    np.testing.assert_array_equal(nms(NMS_BOXES, NMS_SCORES, 1.0), [3, 0, 1, 2])
    np.testing.assert_array_equal(nms(NMS_BOXES, NMS_SCORES, 0.0), [3, 2])


def test_nms_ties_keep_the_lower_index():
    boxes = np.array([[0, 0, 9, 9]] * 3 + [[30, 30, 39, 39]], float)
    scores = np.array([0.5, 0.5, 0.5, 0.5])
    # all equal: visited in index order; 0 suppresses its copies 1 and 2
    np.testing.assert_array_equal(nms(boxes, scores), [0, 3])
    np.testing.assert_array_equal(nms(boxes[::-1], scores), [0, 1])   # reversed: 3 -> 0 first
    np.testing.assert_array_equal(score_order([0.2, 0.7, 0.2, 0.7]), [1, 3, 0, 2])


def test_nms_edge_cases():
    assert nms(np.zeros((0, 4)), np.zeros(0)).tolist() == []
    with pytest.raises(ValueError, match="NaN"):
        nms(NMS_BOXES, [0.1, np.nan, 0.2, 0.3])
    with pytest.raises(ValueError, match="4 boxes but 3 scores"):
        nms(NMS_BOXES, [0.1, 0.2, 0.3])


def test_nms_matches_a_plain_loop():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 100, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (60, 2))], axis=1)
    scores = np.round(rng.uniform(0, 1, 60), 1)           # many ties
    order = sorted(range(60), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if all(pairwise_iou(boxes[i:i + 1], boxes[k:k + 1])[0, 0] <= 0.3 for k in keep):
            keep.append(i)
    np.testing.assert_array_equal(nms(boxes, scores), keep)


def test_regression_targets_by_hand():
    # proposal: w = h = 10, centre (5, 5); target: w 10, h 20, centre (10, 10)
    deltas = regression_targets([[0, 0, 9, 9]], [[5, 0, 14, 19]])
    np.testing.assert_allclose(deltas, [[0.5, 0.5, 0.0, np.log(2)]])


def test_apply_deltas_inverts_the_targets():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 300, (20, 2))
    proposals = np.concatenate([xy, xy + rng.uniform(0, 100, (20, 2))], axis=1)
    xy = rng.uniform(0, 300, (20, 2))
    targets = np.concatenate([xy, xy + rng.uniform(0, 100, (20, 2))], axis=1)
    deltas = regression_targets(proposals, targets)
    np.testing.assert_allclose(apply_deltas(proposals, deltas), targets, atol=1e-9)
    np.testing.assert_allclose(apply_deltas(proposals, np.zeros((20, 4))), proposals, atol=1e-9)


def test_clip_boxes():
    boxes = [[-5, 3, 700, 20], [1, -2, 3, 500]]
    np.testing.assert_array_equal(clip_boxes(boxes, 375, 500),
                                  [[0, 3, 499, 20], [1, 0, 3, 374]])
    np.testing.assert_array_equal(clip_boxes(boxes, 375, 500, first=1),
                                  [[1, 3, 500, 20], [1, 1, 3, 375]])
