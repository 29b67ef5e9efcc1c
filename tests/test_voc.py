"""VOC annotations and dataset layout; the synthetic VOC-format dataset."""
import os

import numpy as np
import pytest

from sppcaffe.detection import synthetic
from sppcaffe.detection.voc import (VOC_CLASSES, Annotation, VOCDataset, VOCFormatError,
                                    VOCObject, annotation_xml, parse_annotation, read_image_set)

# As the VOC2007 files look (000005.xml, shortened), plus an object without
# <difficult>/<truncated> and fractional coordinates as some VOC-style sets have.
SAMPLE_XML = """<annotation>
	<folder>VOC2007</folder>
	<filename>000005.jpg</filename>
	<source><database>The VOC2007 Database</database></source>
	<size><width>500</width><height>375</height><depth>3</depth></size>
	<segmented>0</segmented>
	<object>
		<name>chair</name><pose>Rear</pose><truncated>0</truncated><difficult>0</difficult>
		<bndbox><xmin>263</xmin><ymin>211</ymin><xmax>324</xmax><ymax>339</ymax></bndbox>
	</object>
	<object>
		<name>chair</name><pose>Unspecified</pose><truncated>1</truncated><difficult>1</difficult>
		<bndbox><xmin>5</xmin><ymin>244</ymin><xmax>67</xmax><ymax>374</ymax></bndbox>
	</object>
	<object>
		<name>person</name>
		<bndbox><xmin>10.5</xmin><ymin>20</ymin><xmax>30</xmax><ymax>40.25</ymax></bndbox>
	</object>
</annotation>
"""


def write_dataset(root, annotations, splits):
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for image_id, text in annotations.items():
        with open(os.path.join(root, "Annotations", image_id + ".xml"), "w") as f:
            f.write(text)
    for split, ids in splits.items():
        with open(os.path.join(root, "ImageSets", "Main", split + ".txt"), "w") as f:
            f.write("".join(line + "\n" for line in ids))


def test_parse_annotation(tmp_path):
    path = tmp_path / "000005.xml"
    path.write_text(SAMPLE_XML)
    ann = parse_annotation(str(path))
    assert (ann.image_id, ann.filename, ann.width, ann.height, ann.depth) == \
        ("000005", "000005.jpg", 500, 375, 3)
    assert ann.objects == (
        VOCObject("chair", (263.0, 211.0, 324.0, 339.0), False, False),
        VOCObject("chair", (5.0, 244.0, 67.0, 374.0), True, True),
        VOCObject("person", (10.5, 20.0, 30.0, 40.25), False, False),   # missing flags: 0
    )
    np.testing.assert_array_equal(ann.boxes({"person"}), [[10.5, 20, 30, 40.25]])
    assert ann.boxes().shape == (3, 4)


@pytest.mark.parametrize("edit, message", [
    (("<xmax>324</xmax>", "<xmax>200</xmax>"), "object 0 has an empty box"),
    (("<ymin>211</ymin>", "<ymin>abc</ymin>"), "<ymin> is 'abc'"),
    (("<size><width>500</width>", "<size>"), "has no <width>"),
    (("<name>person</name>", ""), "has no <name>"),
    (("</annotation>", ""), "not valid XML"),
])
def test_bad_annotations_name_the_file(tmp_path, edit, message):
    path = tmp_path / "bad.xml"
    path.write_text(SAMPLE_XML.replace(*edit))
    with pytest.raises(VOCFormatError, match=message) as info:
        parse_annotation(str(path))
    assert "bad.xml" in str(info.value)


def test_annotation_xml_round_trip(tmp_path):
    ann = Annotation("x1", "x1.jpg", 64, 48, 3, (VOCObject("dog", (1, 2, 30, 40), True, False),
                                                  VOCObject("cat", (3.5, 4, 5, 6), False, True)))
    path = tmp_path / "x1.xml"
    path.write_text(annotation_xml(ann))
    assert parse_annotation(str(path)) == ann


def test_dataset(tmp_path):
    other = SAMPLE_XML.replace("000005", "000007").replace("chair", "car")
    write_dataset(str(tmp_path), {"000005": SAMPLE_XML, "000007": other},
                  {"trainval": ["000005", "000007"], "chair_trainval": ["000005  1", "000007 -1"]})
    ds = VOCDataset(tmp_path, "trainval")
    assert len(ds) == 2 and ds.image_ids == ["000005", "000007"]
    boxes, labels, difficult = ds.ground_truth("000005")
    np.testing.assert_array_equal(boxes[0], [263, 211, 324, 339])
    assert [VOC_CLASSES[k] for k in labels] == ["chair", "chair", "person"]
    assert difficult.tolist() == [False, True, False]
    assert set(ds.annotations()) == {"000005", "000007"}
    assert ds.image_path("000007").endswith(os.path.join("JPEGImages", "000007.jpg"))
    # class files list "id label": the first column is the id
    assert read_image_set(os.path.join(tmp_path, "ImageSets", "Main", "chair_trainval.txt")) == \
        ["000005", "000007"]


def test_dataset_with_its_own_classes(tmp_path):
    write_dataset(str(tmp_path), {"a": SAMPLE_XML}, {"test": ["a"]})
    with pytest.raises(VOCFormatError, match="class 'chair' is not one of"):
        VOCDataset(tmp_path, "test", classes=("person",)).annotation("a")
    ds = VOCDataset(tmp_path, "test", classes=("person",), skip_unknown=True)
    boxes, labels, _ = ds.ground_truth("a")
    assert labels.tolist() == [0] and boxes.tolist() == [[10.5, 20, 30, 40.25]]


def test_missing_files_are_named(tmp_path):
    with pytest.raises(VOCFormatError, match="no image set file .*val.txt"):
        VOCDataset(tmp_path, "val")
    write_dataset(str(tmp_path), {}, {"val": ["zzz"]})
    with pytest.raises(VOCFormatError, match="'zzz' of val has no annotation"):
        VOCDataset(tmp_path, "val").annotation("zzz")
    with pytest.raises(ValueError, match="repeat"):
        VOCDataset(tmp_path, "val", classes=("a", "a"))


# ---- the synthetic dataset ------------------------------------------------------

def all_files(root):
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                found[os.path.relpath(os.path.join(folder, name), root)] = f.read()
    return found


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return synthetic.make_synthetic_voc(tmp_path_factory.mktemp("synth") / "voc", num_images=16,
                                        seed=3)


def test_synthetic_is_deterministic(synthetic_root, tmp_path):
    again = synthetic.make_synthetic_voc(tmp_path / "again", num_images=16, seed=3)
    assert all_files(again) == all_files(synthetic_root)
    other = synthetic.make_synthetic_voc(tmp_path / "other", num_images=16, seed=4)
    assert all_files(other) != all_files(synthetic_root)


def test_synthetic_is_a_valid_voc_dataset(synthetic_root):
    import cv2
    splits = {s: VOCDataset(synthetic_root, s, synthetic.SYNTHETIC_CLASSES)
              for s in ("train", "val", "trainval", "test")}
    train, val, test = (set(splits[s].image_ids) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (8, 4, 4)
    assert not (train & val or train & test or val & test)
    assert set(splits["trainval"].image_ids) == train | val
    ids = sorted(train | val | test)
    assert ids == [f"{k:06d}" for k in range(1, 17)]
    dataset = VOCDataset(synthetic_root, "test", synthetic.SYNTHETIC_CLASSES)
    names, difficult = set(), 0
    for image_id in ids:
        ann = dataset.annotation(image_id)
        image = cv2.imread(dataset.image_path(image_id))
        assert image.shape == (ann.height, ann.width, 3)
        assert 300 <= ann.height <= 500 and 300 <= ann.width <= 500
        assert 1 <= len(ann.objects) <= 4
        for obj in ann.objects:
            x1, y1, x2, y2 = obj.bbox
            assert 1 <= x1 <= x2 <= ann.width and 1 <= y1 <= y2 <= ann.height
            assert obj.difficult == (min(x2 - x1 + 1, y2 - y1 + 1) < synthetic.DIFFICULT_BELOW)
            names.add(obj.name)
            difficult += obj.difficult
    assert names == set(synthetic.SYNTHETIC_CLASSES)
    assert difficult > 0


def test_synthetic_objects_are_where_the_boxes_say(tmp_path):
    # Regenerate each image's background alone from the same generator state:
    # the objects changed most pixels inside their boxes and none outside.
    root = synthetic.make_synthetic_voc(tmp_path / "voc", num_images=6, seed=11)
    dataset = VOCDataset(root, "trainval", synthetic.SYNTHETIC_CLASSES)
    sources = synthetic._Sources()
    rng = np.random.default_rng(11)
    for image_id in [f"{k:06d}" for k in range(1, 7)]:
        state = rng.bit_generator.state
        background = synthetic._background(sources, rng, (300, 500))
        rng.bit_generator.state = state
        pixels, ann = synthetic._make_image(image_id, sources, rng, (300, 500))
        assert ann == dataset.annotation(image_id)
        background = np.clip(np.round(background), 0, 255)
        changed = np.abs(pixels.astype(float) - background).max(axis=2) > 0
        inside = np.zeros(changed.shape, bool)
        for obj in ann.objects:
            x1, y1, x2, y2 = (int(v) - 1 for v in obj.bbox)
            inside[y1:y2 + 1, x1:x2 + 1] = True
            assert changed[y1:y2 + 1, x1:x2 + 1].mean() > 0.5
        assert not changed[~inside].any()


def test_synthetic_refuses_to_overwrite(tmp_path):
    root = synthetic.make_synthetic_voc(tmp_path / "voc", num_images=4, seed=0)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        synthetic.make_synthetic_voc(root, num_images=4, seed=0)
    synthetic.make_synthetic_voc(root, num_images=5, seed=1, overwrite=True)
    assert len(os.listdir(os.path.join(root, "Annotations"))) == 5
    assert os.listdir(tmp_path) == ["voc"]                 # no temporary folder left
