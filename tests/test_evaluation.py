"""VOC detection AP (VOCevaldet.m / VOCap.m) on cases worked out by hand."""
import numpy as np
import pytest

from sppcaffe.detection.evaluation import (Detections, ap_area, ap_voc07, evaluate,
                                           evaluate_class, match_detections)
from sppcaffe.detection.voc import Annotation, VOCObject


def image(image_id, *objects):
    return Annotation(image_id, image_id + ".jpg", 200, 200, 3,
                      tuple(VOCObject(*o) for o in objects))


# Class "dog": 3 positives (G1, G3, G4); G2 is difficult.
ANNOTATIONS = {
    "img1": image("img1", ("dog", (1, 1, 10, 10)),                         # G1
                  ("dog", (21, 21, 30, 30), True)),                        # G2 difficult
    "img2": image("img2", ("dog", (1, 1, 10, 10)),                         # G3
                  ("dog", (41, 41, 50, 50)), ("cat", (100, 100, 150, 150))),  # G4
    "img3": image("img3", ("cat", (1, 1, 10, 10))),                        # no dog
}
# Detections, given out of order:                      cumulative after it
#   d1 0.9 img1 on G1           -> TP                  tp 1 fp 0: rec 1/3 prec 1
#   d2 0.8 img1 on G1 again     -> FP (duplicate)      tp 1 fp 1: rec 1/3 prec 1/2
#   d3 0.7 img1 on G2           -> ignored (difficult) tp 1 fp 1: rec 1/3 prec 1/2
#   d4 0.6 img3, no dog         -> FP                  tp 1 fp 2: rec 1/3 prec 1/3
#   d5 0.5 img2 on G4           -> TP                  tp 2 fp 2: rec 2/3 prec 1/2
#   d6 0.4 img2 [2,2,11,11]: IoU with G3 = 81/119 = 0.68 -> TP
#                                                      tp 3 fp 2: rec 1   prec 3/5
#   d7 0.3 img2 far away        -> FP                  tp 3 fp 3: rec 1   prec 1/2
DOG = Detections(
    ["img2", "img1", "img1", "img3", "img1", "img2", "img2"],
    np.array([0.5, 0.8, 0.9, 0.6, 0.7, 0.3, 0.4]),
    np.array([[41, 41, 50, 50], [1, 1, 10, 10], [1, 1, 10, 10], [1, 1, 10, 10],
              [21, 21, 30, 30], [100, 100, 110, 110], [2, 2, 11, 11]], float))


def test_matching_by_hand():
    truth = {k: (a.boxes({"dog"}), np.array([o.difficult for o in a.objects if o.name == "dog"]))
             for k, a in ANNOTATIONS.items()}
    order, tp, fp, positives = match_detections(DOG, truth)
    assert order.tolist() == [2, 1, 4, 3, 0, 6, 5]          # d1 .. d7
    assert tp.tolist() == [1, 0, 0, 0, 1, 1, 0]
    assert fp.tolist() == [0, 1, 0, 1, 0, 0, 1]              # d3: neither
    assert positives == 3


def test_ap_by_hand():
    # 11-point: t = 0, .1, .2, .3 -> best precision at recall >= t is 1 (d1, recall 1/3);
    # t = .4 ... 1 (7 points) -> best among d5, d6, d7 is 3/5.
    #   AP = (4 * 1 + 7 * 3/5) / 11 = 8.2 / 11
    result = evaluate_class("dog", DOG, ANNOTATIONS, "voc07")
    assert result.ap == pytest.approx(8.2 / 11, abs=1e-12)
    assert (result.num_positives, result.num_detections) == (3, 7)
    np.testing.assert_allclose(result.recall, [1 / 3, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(result.precision, [1, 1 / 2, 1 / 2, 1 / 3, 1 / 2, 3 / 5, 1 / 2])
    # Area: monotone envelope 1 up to recall 1/3, then 3/5 up to recall 1:
    #   AP = 1/3 * 1 + 1/3 * 3/5 + 1/3 * 3/5 = 1/3 + 2/5 = 11/15
    assert evaluate_class("dog", DOG, ANNOTATIONS, "area").ap == pytest.approx(11 / 15, abs=1e-12)


def single_class_case(positives, hits, misses=0):
    """`positives` dogs, one per image; `hits` detections on the first ones
    then `misses` far off, scores descending."""
    annotations = {f"i{k}": image(f"i{k}", ("dog", (1, 1, 10, 10))) for k in range(positives)}
    ids = [f"i{k}" for k in range(hits)] + ["i0"] * misses
    boxes = [[1, 1, 10, 10]] * hits + [[100, 100, 110, 110]] * misses
    scores = np.linspace(1, 0.1, hits + misses)
    return Detections(ids, scores, np.array(boxes, float)), annotations


def test_eleven_point_thresholds_are_matlabs():
    # recall 3/10 = 0.3 after three hits: MATLAB's 0:0.1:1 has t = 3*0.1 =
    # 0.30000000000000004 > 0.3, so only t = 0, .1, .2 see precision 1: AP = 3/11.
    detections, annotations = single_class_case(10, 3)
    assert evaluate_class("dog", detections, annotations).ap == pytest.approx(3 / 11, abs=1e-12)
    # recall 3/5 = 0.6: MATLAB's t = 1 - 4*0.1 = 0.6 exactly, reached: t = 0 ... 0.6,
    # 7 points (np.arange's 0.6000000000000001 would give 6/11).
    detections, annotations = single_class_case(5, 3)
    assert evaluate_class("dog", detections, annotations).ap == pytest.approx(7 / 11, abs=1e-12)
    # area: recall 0.6 at precision 1, nothing after: 0.6
    assert evaluate_class("dog", detections, annotations, "area").ap == pytest.approx(0.6)


def test_equal_scores_keep_their_given_order():
    # two detections of one dog with equal scores: the first given is the TP,
    # even though it overlaps less (the devkit's stable sort)
    annotations = {"a": image("a", ("dog", (1, 1, 10, 10)))}
    detections = Detections(["a", "a"], np.array([0.5, 0.5]),
                            np.array([[1, 1, 11, 11], [1, 1, 10, 10]], float))
    truth = {"a": (annotations["a"].boxes(), np.array([False]))}
    _, tp, fp, _ = match_detections(detections, truth)
    assert tp.tolist() == [1, 0] and fp.tolist() == [0, 1]


def test_only_the_best_overlap_counts():
    # IoU 0.68 with a plain dog but 1.0 with a difficult one: matched to the
    # difficult one, so ignored, and the plain dog stays undetected.
    annotations = {"a": image("a", ("dog", (2, 2, 11, 11)), ("dog", (1, 1, 10, 10), True))}
    detections = Detections(["a"], np.array([1.0]), np.array([[1, 1, 10, 10]], float))
    result = evaluate_class("dog", detections, annotations)
    assert result.num_positives == 1 and result.recall.tolist() == [0]
    assert np.isnan(result.precision[0]) and result.ap == 0
    # equal IoU with two objects: each detection picks the first listed, so the
    # second detection is a duplicate although the second object is free
    annotations = {"a": image("a", ("dog", (1, 1, 10, 10)), ("dog", (1, 1, 10, 10)))}
    truth = {"a": (annotations["a"].boxes(), np.array([False, False]))}
    _, tp, fp, _ = match_detections(Detections(["a", "a"], np.array([2.0, 1.0]),
                                               np.array([[1, 1, 10, 10]] * 2, float)), truth)
    assert tp.tolist() == [1, 0] and fp.tolist() == [0, 1]


def test_an_ignored_first_detection_leaves_precision_undefined():
    # d1 on a difficult dog (ignored), d2 on the plain one: precision [NaN, 1].
    annotations = {"a": image("a", ("dog", (1, 1, 10, 10), True), ("dog", (50, 50, 60, 60)))}
    detections = Detections(["a", "a"], np.array([0.9, 0.8]),
                            np.array([[1, 1, 10, 10], [50, 50, 60, 60]], float))
    for metric in ("voc07", "area"):
        assert evaluate_class("dog", detections, annotations, metric).ap == pytest.approx(1.0)


def test_overlap_threshold_is_inclusive():
    # [1,1,10,10] vs [1,1,10,20]: IoU 100/200 = 0.5 exactly -> TP at 0.5
    annotations = {"a": image("a", ("dog", (1, 1, 10, 20)))}
    detections = Detections(["a"], np.array([1.0]), np.array([[1, 1, 10, 10]], float))
    assert evaluate_class("dog", detections, annotations).ap == pytest.approx(1.0)
    assert evaluate_class("dog", detections, annotations, iou_threshold=0.51).ap == 0.0


def test_ap_functions_directly():
    assert ap_voc07([0.5, 1.0], [1.0, 0.5]) == pytest.approx((6 * 1 + 5 * 0.5) / 11)
    assert ap_area([0.5, 1.0], [1.0, 0.5]) == pytest.approx(0.5 * 1 + 0.5 * 0.5)
    assert ap_voc07([], []) == 0 and ap_area([], []) == 0


def test_evaluate_all_classes():
    cat = Detections(["img2", "img3"], np.array([0.9, 0.8]),
                     np.array([[100, 100, 150, 150], [1, 1, 10, 10]], float))
    result = evaluate({"dog": DOG, "cat": cat}, ANNOTATIONS, ["dog", "cat", "bird"])
    aps = result.ap_by_class()
    assert aps["dog"] == pytest.approx(8.2 / 11) and aps["cat"] == pytest.approx(1.0)
    assert np.isnan(aps["bird"])                       # no birds: left out of the mAP
    assert result.mean_ap == pytest.approx((8.2 / 11 + 1) / 2)
    table = result.table()
    assert "dog" in table and "bird" in table and f"{100 * result.mean_ap:6.2f}" in table
    # a class with objects but no detections scores 0
    assert evaluate({}, ANNOTATIONS, ["dog"]).mean_ap == 0.0


def test_bad_input():
    with pytest.raises(ValueError, match="image 'nowhere'"):
        evaluate_class("dog", Detections(["nowhere"], np.array([1.0]), np.array([[1, 1, 5, 5.0]])),
                       ANNOTATIONS)
    with pytest.raises(ValueError, match="must be as many"):
        evaluate_class("dog", Detections(["img1"], np.array([1.0, 2.0]), np.zeros((2, 4))),
                       ANNOTATIONS)
    with pytest.raises(ValueError, match="unknown AP metric"):
        evaluate_class("dog", DOG, ANNOTATIONS, "coco")
