"""Detection: scoring windows, NMS, regression, evaluation and pictures
(sppcaffe.detection.detect) on hand-made caches."""
import numpy as np
import pytest

from sppcaffe.detection.cache import image_rows
from sppcaffe.detection.config import DetectConfig
from sppcaffe.detection.detect import (RandomScorer, SVMScorer, ap_table, class_detections,
                                       detect_all, detect_image, draw_detections,
                                       evaluate_both, image_sizes, precision_thresholds,
                                       top_detections, write_pictures)
from sppcaffe.detection.evaluation import AREA, VOC07
from sppcaffe.detection.svm import FeatureTransform, SVMModel
from sppcaffe.detection.voc import Annotation, VOCObject

CLASSES = ("cat", "dog")


def test_nms_tie_keeps_lower_index_and_cap():
    boxes = np.array([[10, 10, 50, 50], [10, 10, 50, 50], [12, 12, 52, 52], [100, 100, 140, 140],
                      [200, 200, 240, 240]], np.float64)
    scores = np.array([0.5, 0.5, 0.4, 0.3, -2.0])
    kept_boxes, kept_scores = class_detections(boxes, scores, DetectConfig())
    # 0 and 1 tie: 0 (the lower index) is kept and suppresses 1 and 2 (IoU > 0.3).
    np.testing.assert_array_equal(kept_scores, [0.5, 0.3, -2.0])
    np.testing.assert_array_equal(kept_boxes, boxes[[0, 3, 4]])
    # A threshold, then the cap of 1 per image.
    _, s = class_detections(boxes, scores, DetectConfig(score_threshold=-1))
    np.testing.assert_array_equal(s, [0.5, 0.3])
    _, s = class_detections(boxes, scores, DetectConfig(max_per_image=1))
    np.testing.assert_array_equal(s, [0.5])
    # NMS at 0.95 keeps the shifted box (IoU 0.83) but not the exact duplicate.
    _, s = class_detections(boxes, scores, DetectConfig(nms=0.95))
    np.testing.assert_array_equal(s, [0.5, 0.4, 0.3, -2.0])


def tiny_set():
    """Two images: image a has a cat and a (difficult) dog, image b a dog.
    Proposals: the exact objects shifted by 2 pixels, and far-off windows."""
    objects = {"a": [("cat", (11, 11, 60, 60), False), ("dog", (101, 21, 160, 90), True)],
               "b": [("dog", (31, 41, 130, 120), False)]}
    annotations, entries = {}, {}
    for image_id, objs in objects.items():
        annotations[image_id] = Annotation(
            image_id, image_id + ".jpg", 200, 150, 3,
            tuple(VOCObject(n, b, d) for n, b, d in objs))
        gt = np.array([b for _, b, _ in objs], np.float64)
        near = gt + 2
        far = np.array([[170, 110, 195, 145], [1, 100, 40, 140]], np.float64)
        labels = [CLASSES.index(n) + 1 for n, _, _ in objs]
        record = image_rows(gt, labels, [d for _, _, d in objs], np.concatenate([near, far]), 2)
        record["feat"] = record["overlaps"][:, 1:].copy()      # features = IoU per class
        entries[image_id] = record
    return annotations, entries


def oracle(entry, rows):
    """Scores = IoU with the class's objects: the perfect ranking."""
    return entry["overlaps"][rows, 1:]


def test_detect_image_skips_ground_truth_rows():
    annotations, entries = tiny_set()
    seen = []

    def scorer(entry, rows):
        seen.append(rows)
        return oracle(entry, rows)

    found = detect_image(entries["a"], scorer, DetectConfig())
    np.testing.assert_array_equal(seen[0], [2, 3, 4, 5])
    # Best cat detection: the shifted cat box with its IoU as score.
    np.testing.assert_allclose(found.boxes[0][0], [13, 13, 62, 62])
    assert found.scores[0][0] == pytest.approx(entries["a"]["overlaps"][2, 1])


def test_oracle_scores_give_full_ap_and_random_less():
    annotations, entries = tiny_set()
    dets, per_image, _ = detect_all(entries.__getitem__, ["a", "b"], CLASSES, oracle,
                                    DetectConfig())
    results = evaluate_both(dets, annotations, CLASSES)
    # The difficult dog is ignored: one dog counts, found first.
    for metric in (VOC07, AREA):
        assert results[metric].mean_ap == pytest.approx(1.0)
        assert [c.num_positives for c in results[metric].classes] == [1, 1]
    random_dets, _, _ = detect_all(entries.__getitem__, ["a", "b"], CLASSES, RandomScorer(2, 3),
                                   DetectConfig())
    worse = evaluate_both(random_dets, annotations, CLASSES)
    assert worse[VOC07].mean_ap < 1.0
    table = ap_table({"svm": results, "random": worse})
    lines = table.splitlines()
    assert lines[0].split() == ["class", "svm", "11pt", "svm", "area", "random", "11pt",
                                "random", "area", "objects"]
    assert lines[1].startswith("cat") and lines[-1].startswith("mAP")
    assert "100.0" in lines[-1]


def test_svm_scorer_scores_transformed_features():
    _, entries = tiny_set()
    model = SVMModel(list(CLASSES), np.array([[2.0, 0], [0, 3.0]], np.float32),
                     np.array([-1, 0.5], np.float32), "pool5", 0.5)
    scorer = SVMScorer(model, FeatureTransform("pool5", scale=0.5))
    rows = np.array([2, 3])
    expected = 0.5 * entries["a"]["feat"][rows] @ model.W + model.b
    np.testing.assert_allclose(scorer(entries["a"], rows), expected, rtol=1e-6)


class ShiftBack:
    """A 'regressor' that moves every window back by 2 pixels onto its object."""

    def predict(self, boxes, pooled, class_index, image_hw=None, first=1):
        return np.asarray(boxes) - 2


def test_regression_applies_before_nms():
    annotations, entries = tiny_set()
    dets, _, _ = detect_all(entries.__getitem__, ["a", "b"], CLASSES, oracle, DetectConfig(),
                            regressor=ShiftBack(), image_sizes=image_sizes(annotations))
    np.testing.assert_allclose(dets["cat"].boxes[0], [11, 11, 60, 60])
    # Unregressed, the same windows stay 2 pixels off.
    plain, _, _ = detect_all(entries.__getitem__, ["a", "b"], CLASSES, oracle, DetectConfig())
    np.testing.assert_allclose(plain["cat"].boxes[0], [13, 13, 62, 62])
    assert image_sizes(annotations)["a"] == (150, 200)


def test_precision_thresholds():
    annotations, entries = tiny_set()
    dets, _, _ = detect_all(entries.__getitem__, ["a", "b"], CLASSES, oracle, DetectConfig())
    evaluation = evaluate_both(dets, annotations, CLASSES)[VOC07]
    # Cat: the best detection is the cat (precision 1), the next ones are false
    # (precision 1/2, 1/3, ...).
    cat_scores = np.sort(dets["cat"].scores)[::-1]
    assert cat_scores[0] > cat_scores[1]
    assert precision_thresholds(dets, evaluation, 0.6)[0] == cat_scores[0]
    assert precision_thresholds(dets, evaluation, 0.5)[0] == cat_scores[1]
    assert (precision_thresholds(dets, evaluation, 0) == -np.inf).all()
    # A class none of whose ranks reaches the precision draws nothing.
    dets["dog"] = dets["dog"]._replace(scores=-dets["dog"].scores)
    worst = evaluate_both(dets, annotations, CLASSES)[VOC07]
    assert precision_thresholds(dets, worst, 0.9)[1] == np.inf


def test_pictures_written(tmp_path):
    import cv2
    annotations, entries = tiny_set()
    _, per_image, _ = detect_all(entries.__getitem__, ["a", "b"], CLASSES, oracle, DetectConfig())
    found = top_detections(per_image["a"], 0.5, 10)
    assert [(k, round(s, 3)) for k, _, s in found] == [(1, 0.885), (0, 0.855)]
    assert [k for k, _, _ in top_detections(per_image["a"], [0.5, 0.9], 10)] == [0]
    assert len(top_detections(per_image["a"], -np.inf, 3)) == 3
    image = np.full((150, 200, 3), 128, np.uint8)
    drawn = draw_detections(image, found, CLASSES)
    assert drawn.shape == image.shape and (drawn != image).any()
    assert (image == 128).all()                      # the input is not drawn on
    assert (drawn[130:, :] == 128).all()             # nothing far below the boxes
    paths = write_pictures(tmp_path / "pictures", per_image, lambda i: image, CLASSES, 0.5)
    assert sorted(p.split("/")[-1] for p in paths) == ["a.png", "b.png"]
    again = cv2.imread(str(tmp_path / "pictures" / "a.png"))
    np.testing.assert_array_equal(again, drawn)


def test_pool5_transform_leaves_the_callers_rows_alone():
    """pool5 features are scaled into a new array: cached entries kept in
    memory are read again by later steps (training, regression)."""
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    kept = rows.copy()
    scaled = FeatureTransform("pool5", scale=0.5)(rows)
    np.testing.assert_array_equal(scaled, 0.5 * kept)
    np.testing.assert_array_equal(rows, kept)
    with pytest.raises(ValueError, match="no fc layers to run"):
        next(FeatureTransform("pool5").outputs(rows))
