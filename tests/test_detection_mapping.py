"""Image windows -> feature-map cells (paper appendix and the released
code), the scale rule, and the resize arithmetic, checked on values worked
out by hand and against a box-at-a-time transcription of the released code."""
import math

import numpy as np
import pytest

from sppcaffe.detection import mapping

BIG_MAP = (100, 100)


# Paper, S = 16, 0-based pixels: left/top x' = floor(x/16) + 1, right/bottom
# x' = ceil(x/16) - 1 (cells whose centre 16 x' lies strictly inside the box).
@pytest.mark.parametrize("x, left, right", [
    (0, 1, -1),     # right -1 is clamped to 0 below
    (15, 1, 0),
    (16, 2, 0),
    (17, 2, 1),
    (31, 2, 1),
    (32, 3, 1),
])
def test_paper_edges_by_hand(x, left, right):
    cells = mapping.boxes_to_cells([[x, x, 5000, 5000]], BIG_MAP)
    assert cells[0].tolist() == [left, left, 99, 99]
    cells = mapping.boxes_to_cells([[-1000, -1000, x, x]], BIG_MAP)
    assert cells[0].tolist() == [0, 0, max(right, 0), max(right, 0)]


def test_paper_window_of_a_224_image_on_its_13x13_map():
    # left floor(0/16) + 1 = 1; right ceil(223/16) - 1 = 13, clamped to 12
    assert mapping.boxes_to_cells([[0, 0, 223, 223]], (13, 13))[0].tolist() == [1, 1, 12, 12]


def test_a_window_smaller_than_a_cell_collapses_to_the_middle():
    # x 17..20: left 2, right ceil(20/16) - 1 = 1 < left -> both (2 + 1) // 2 = 1
    # y 40..90: left 3, right ceil(90/16) - 1 = 5: kept
    assert mapping.boxes_to_cells([[17, 40, 20, 90]], BIG_MAP)[0].tolist() == [1, 3, 1, 5]


def test_windows_are_clamped_to_the_map_and_never_empty():
    rng = np.random.default_rng(0)
    for name in mapping.MAPPINGS:
        xy = rng.uniform(-100, 400, (500, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(0, 200, (500, 2))], axis=1)
        cells = mapping.boxes_to_cells(boxes, (14, 19), name)
        assert cells.dtype == np.int64
        assert (cells[:, 2] >= cells[:, 0]).all() and (cells[:, 3] >= cells[:, 1]).all()
        assert (cells >= 0).all()
        assert (cells[:, [0, 2]] <= 18).all() and (cells[:, [1, 3]] <= 13).all()


def test_per_box_map_sizes():
    boxes = [[0, 0, 1000, 1000], [0, 0, 1000, 1000]]
    cells = mapping.boxes_to_cells(boxes, [(10, 20), (30, 5)])
    assert cells.tolist() == [[1, 1, 19, 9], [1, 1, 4, 29]]


def released_reference(box, map_hw, stride=16, offset0=21.0, offset=6.5):
    """spm_pool_caffe_mex.cpp's box normalisation for one box given in
    1-based pixels of the resized image, transcribed line by line (C int
    division truncates); returns 0-based cells."""
    x0, y0, x1, y1 = box
    x0n = int(math.floor((x0 - offset0 + offset) / stride + 0.5) + 1)
    y0n = int(math.floor((y0 - offset0 + offset) / stride + 0.5) + 1)
    x1n = int(math.ceil((x1 - offset0 - offset) / stride - 0.5) + 1)
    y1n = int(math.ceil((y1 - offset0 - offset) / stride - 0.5) + 1)
    if x0n > x1n:
        x0n = int((x0n + x1n) / 2)            # C: truncation toward zero
        x1n = x0n
    if y0n > y1n:
        y0n = int((y0n + y1n) / 2)
        y1n = y0n
    h, w = map_hw
    top, bottom = min(h, max(1, y0n)), min(h, max(1, y1n))
    left, right = min(w, max(1, x0n)), min(w, max(1, x1n))
    return [left - 1, top - 1, right - 1, bottom - 1]


def test_released_mapping_by_hand():
    # full 224 image, 0-based [0, 223] -> 1-based b = 1 .. 224:
    #   left  floor((1 - 21 + 6.5)/16 + 0.5) + 1 = floor(-0.34) + 1 = 0 -> clamped to 1
    #   right ceil((224 - 21 - 6.5)/16 - 0.5) + 1 = ceil(11.78) + 1 = 13
    # i.e. 0-based cells 0 .. 12, the whole 13x13 map.
    assert mapping.boxes_to_cells([[0, 0, 223, 223]], (13, 13), "released")[0].tolist() == \
        [0, 0, 12, 12]
    # one pixel at 0-based 100 (b = 101): left floor(5.41 + 0.5) + 1 = 6,
    # right ceil(4.59 - 0.5) + 1 = 6: 1-based cell 6, 0-based 5
    assert mapping.boxes_to_cells([[100, 100, 100, 100]], BIG_MAP, "released")[0].tolist() == \
        [5, 5, 5, 5]


def test_released_mapping_matches_the_transcription():
    rng = np.random.default_rng(1)
    xy = rng.uniform(-50, 700, (2000, 2))
    sizes = rng.uniform(0, 300, (2000, 2)) ** rng.uniform(0.2, 1, (2000, 1))   # many small
    boxes = np.concatenate([xy, xy + sizes], axis=1)
    boxes[:500] = np.round(boxes[:500])        # whole pixels too
    cells = mapping.boxes_to_cells(boxes, (40, 45), "released")
    expected = [released_reference(b + 1, (40, 45)) for b in boxes]
    np.testing.assert_array_equal(cells, expected)


# Scale choice on a 375 x 500 image (shorter side 375), scales 480 576 688 864 1200.
# Paper: the scaled area closest to 224^2 = 50176.
#   100x100 box (area 10000): 10000 (s/375)^2 = 16384, 23593, 33659, 53084, 102400
#     -> 864 (|53084 - 50176| = 2908)
#   300x300 (90000): 147456 at 480 already -> 480
#   10x10 (100): 1024 at 1200 -> 1200
#   224x224 at s = 375 would be exact; 200x200 (40000): 65536, 94372, ... -> 480
# Released: the scale closest to round(208 * 375 / sqrt(area)):
#   100x100: 780 -> |688 - 780| = 92 < |874 - 780| = 94 -> 688 (paper: 864)
#   300x300: 260 -> 480;  10x10: 7800 -> 1200;  200x200: 390 -> 480
SCALE_BOXES = np.array([[1, 1, 100, 100], [1, 1, 300, 300], [1, 1, 10, 10], [1, 1, 200, 200]],
                       float)


def test_paper_scale_choice_by_hand():
    index = mapping.choose_scales(SCALE_BOXES, (375, 500), mapping.PAPER_SCALES)
    assert index.tolist() == [3, 0, 4, 0]


def test_released_scale_choice_by_hand():
    index = mapping.choose_scales(SCALE_BOXES, (375, 500), mapping.RELEASED_SCALES, "released")
    assert index.tolist() == [2, 0, 4, 0]


def test_scale_ties_go_to_the_first_scale():
    # released: a 208x208 box on a 400 x 500 image expects 208 * 400 / 208 = 400,
    # equally far from 350 and 450
    box = [[1, 1, 208, 208]]
    for scales in ([350, 450], [450, 350]):
        assert mapping.choose_scales(box, (400, 500), scales, "released").tolist() == [0]
    # paper: no two distinct scales tie exactly in floating point; a repeated one does
    assert mapping.choose_scales(box, (400, 500), [1200, 480, 480]).tolist() == [1]


def test_resized_size_keeps_the_shorter_side():
    assert mapping.resized_size((375, 500), 600) == (600, 800)
    assert mapping.resized_size((500, 375), 600) == (800, 600)
    assert mapping.resized_size((333, 500), 480) == (480, 721)     # 720.72 rounded
    assert mapping.resize_factor((375, 500), 750) == 2.0


def test_scale_boxes():
    box = [[1, 1, 100, 50]]
    # paper: 0-based pixels times s / 375 = 2
    np.testing.assert_allclose(mapping.scale_boxes(box, (375, 500), 750), [[0, 0, 198, 98]])
    # released: (B - 1) (s - 1) / (375 - 1), then 0-based
    np.testing.assert_allclose(mapping.scale_boxes(box, (375, 500), 750, "released"),
                               [[0, 0, 99 * 749 / 374, 49 * 749 / 374]])


@pytest.mark.parametrize("name", mapping.MAPPINGS)
def test_map_windows_combines_the_steps(name):
    rng = np.random.default_rng(2)
    xy = rng.uniform(1, 300, (200, 2))
    boxes = np.concatenate([xy, np.minimum(xy + rng.uniform(5, 300, (200, 2)), [500, 375])], axis=1)
    scales = mapping.PAPER_SCALES
    sizes = [(s // 16 + 1, s * 4 // 3 // 16 + 1) for s in scales]
    index, cells = mapping.map_windows(boxes, (375, 500), scales, sizes, name)
    np.testing.assert_array_equal(index, mapping.choose_scales(boxes, (375, 500), scales, name))
    for k, s in enumerate(scales):
        chosen = index == k
        expected = mapping.boxes_to_cells(
            mapping.scale_boxes(boxes[chosen], (375, 500), s, name), sizes[k], name)
        np.testing.assert_array_equal(cells[chosen], expected)
    # the scale rule can be chosen apart from the mapping
    other = mapping.RELEASED if name == mapping.PAPER else mapping.PAPER
    index2, _ = mapping.map_windows(boxes, (375, 500), scales, sizes, name, scale_rule=other)
    np.testing.assert_array_equal(index2, mapping.choose_scales(boxes, (375, 500), scales, other))


def test_unknown_names_are_errors():
    with pytest.raises(ValueError, match="unknown mapping 'fast'"):
        mapping.boxes_to_cells([[0, 0, 1, 1]], (5, 5), "fast")
    with pytest.raises(ValueError, match="unknown scale rule"):
        mapping.choose_scales([[0, 0, 1, 1]], (5, 5), [100], "nearest")
    with pytest.raises(ValueError, match="2 scales but 1 map sizes"):
        mapping.map_windows([[1, 1, 5, 5]], (5, 5), [100, 200], [(5, 5)])
