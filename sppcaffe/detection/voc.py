"""Pascal VOC datasets in the devkit's layout, and any dataset laid out the
same way:

    root/Annotations/<id>.xml        one per image (objects, size)
    root/JPEGImages/<id>.jpg
    root/ImageSets/Main/<split>.txt  image ids, one per line (first column)

Boxes stay as the XML has them: 1-based, pixel-inclusive [xmin ymin xmax
ymax] (see sppcaffe.detection.boxes), the coordinates VOCevaldet compares.
"""
import os
import xml.etree.ElementTree as ET
from typing import NamedTuple, Tuple

import numpy as np

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")


class VOCObject(NamedTuple):
    name: str
    bbox: Tuple[float, float, float, float]   # xmin ymin xmax ymax, 1-based, inclusive
    difficult: bool = False
    truncated: bool = False


class Annotation(NamedTuple):
    image_id: str
    filename: str
    width: int
    height: int
    depth: int
    objects: Tuple[VOCObject, ...]

    def boxes(self, classes=None):
        """(N, 4) float boxes of the objects (of `classes` only, if given)."""
        chosen = [o.bbox for o in self.objects if classes is None or o.name in classes]
        return np.array(chosen, dtype=np.float64).reshape(-1, 4)


class VOCFormatError(ValueError):
    """An annotation or image set that does not follow the VOC layout."""


def _text(element, tag, path, default=None):
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if default is not None:
            return default
        raise VOCFormatError(f"{path}: <{element.tag}> has no <{tag}>")
    return child.text.strip()


def _number(element, tag, path, kind=float, default=None):
    text = _text(element, tag, path, None if default is None else str(default))
    try:
        return kind(float(text)) if kind is int else kind(text)
    except ValueError:
        raise VOCFormatError(f"{path}: <{tag}> is {text!r}, not a number") from None


def _flag(element, tag, path):
    return bool(_number(element, tag, path, int, default=0))


def parse_annotation(path, image_id=None):
    """Read one VOC XML annotation.  Missing <difficult>/<truncated> mean 0;
    a box with xmax < xmin or ymax < ymin is an error naming the file."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise VOCFormatError(f"{path}: not valid XML ({e})") from None
    size = root.find("size")
    if size is None:
        raise VOCFormatError(f"{path}: no <size>")
    objects = []
    for k, obj in enumerate(root.findall("object")):
        box = obj.find("bndbox")
        if box is None:
            raise VOCFormatError(f"{path}: object {k} has no <bndbox>")
        bbox = tuple(_number(box, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax"))
        if bbox[2] < bbox[0] or bbox[3] < bbox[1]:
            raise VOCFormatError(f"{path}: object {k} has an empty box {bbox}")
        objects.append(VOCObject(_text(obj, "name", path), bbox,
                                 _flag(obj, "difficult", path), _flag(obj, "truncated", path)))
    if image_id is None:
        image_id = os.path.splitext(os.path.basename(path))[0]
    return Annotation(image_id, _text(root, "filename", path, default=image_id + ".jpg"),
                      _number(size, "width", path, int), _number(size, "height", path, int),
                      _number(size, "depth", path, int, default=3), tuple(objects))


def read_image_set(path):
    """Image ids listed in an ImageSets file (the first column of each line)."""
    try:
        with open(path) as f:
            return [line.split()[0] for line in f if line.strip()]
    except FileNotFoundError:
        raise VOCFormatError(f"no image set file {path}") from None


class VOCDataset:
    """One split of a VOC-layout dataset.

    `classes` lists the object classes (default: VOC's 20); an object of
    another class is an error naming its file, unless `skip_unknown`."""

    def __init__(self, root, split, classes=VOC_CLASSES, skip_unknown=False):
        self.root = os.fspath(root)
        self.split = split
        self.classes = tuple(classes)
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"class names repeat: {self.classes}")
        self.class_index = {name: k for k, name in enumerate(self.classes)}
        self.skip_unknown = skip_unknown
        self.image_ids = read_image_set(
            os.path.join(self.root, "ImageSets", "Main", f"{split}.txt"))
        self._annotations = {}

    def __len__(self):
        return len(self.image_ids)

    def annotation_path(self, image_id):
        return os.path.join(self.root, "Annotations", f"{image_id}.xml")

    def image_path(self, image_id):
        return os.path.join(self.root, "JPEGImages", f"{image_id}.jpg")

    def annotation(self, image_id):
        """The image's Annotation (parsed once), objects of other classes
        dropped when skip_unknown."""
        if image_id not in self._annotations:
            path = self.annotation_path(image_id)
            if not os.path.exists(path):
                raise VOCFormatError(f"image '{image_id}' of {self.split} has no annotation {path}")
            ann = parse_annotation(path, image_id)
            unknown = [o.name for o in ann.objects if o.name not in self.class_index]
            if unknown and not self.skip_unknown:
                raise VOCFormatError(f"{path}: class {unknown[0]!r} is not one of {self.classes}")
            if unknown:
                ann = ann._replace(objects=tuple(o for o in ann.objects
                                                 if o.name in self.class_index))
            self._annotations[image_id] = ann
        return self._annotations[image_id]

    def annotations(self):
        """{image_id: Annotation} for the whole split (what evaluation takes)."""
        return {image_id: self.annotation(image_id) for image_id in self.image_ids}

    def ground_truth(self, image_id):
        """(boxes (N, 4) 1-based, labels (N,) class indices, difficult (N,) bool)."""
        objects = self.annotation(image_id).objects
        boxes = np.array([o.bbox for o in objects], dtype=np.float64).reshape(-1, 4)
        labels = np.array([self.class_index[o.name] for o in objects], dtype=np.int64)
        difficult = np.array([o.difficult for o in objects], dtype=bool)
        return boxes, labels, difficult

    def read_image(self, image_id):
        """The image as an (H, W, 3) uint8 BGR array (OpenCV's order, Caffe's)."""
        from ..data.image import read_image       # OpenCV, as Caffe reads images
        path = self.image_path(image_id)
        image = read_image(path)
        if image is None:
            raise VOCFormatError(f"cannot read image {path}")
        return image


def annotation_xml(annotation, folder="VOC"):
    """The VOC XML text of an Annotation (as the devkit's files lay it out)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = annotation.filename
    size = ET.SubElement(root, "size")
    for tag, value in (("width", annotation.width), ("height", annotation.height),
                       ("depth", annotation.depth)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in annotation.objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = obj.name
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = str(int(obj.truncated))
        ET.SubElement(node, "difficult").text = str(int(obj.difficult))
        box = ET.SubElement(node, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.bbox):
            ET.SubElement(box, tag).text = f"{value:g}"
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="unicode") + "\n"
