"""A small detection dataset in Pascal VOC's layout, made without a download
from images shipped inside installed wheels, for demos and tests.

Objects of four classes are pasted at known boxes onto real photographs:

- ``cat``:   the head of skimage's ``chelsea``, re-cropped, flipped and
             re-lit per object (one source, so the easiest class);
- ``coin``:  the 24 ancient coins of skimage's ``coins``, with an elliptic
             mask;
- ``digit``: sklearn's 1,797 handwritten digits, inked on a paper tile;
- ``face``:  the 100 faces of skimage's ``lfw_subset``.

Backgrounds are random crops of sklearn's sample images (china, flower) and
skimage photographs containing none of those objects.  Each image holds 1-4
objects of varied size and aspect, overlapping little; objects partly
outside the image are clipped and marked truncated; objects whose shorter
side is under 32 pixels are marked difficult (VOC marks small, hard
objects so).  Everything follows from the seed.
"""
import json
import os
import shutil
import tempfile

import numpy as np

from .boxes import pairwise_iou
from .voc import Annotation, VOCObject, annotation_xml

SYNTHETIC_CLASSES = ("cat", "coin", "digit", "face")
SPLITS = {"train": 0.5, "val": 0.25, "test": 0.25}
DIFFICULT_BELOW = 32             # pixels, the shorter side of the object's box
_OBJECT_SIDES = (24, 200)        # the longer side, drawn log-uniformly
_MAX_IOU = 0.1                   # between two objects of an image
_JPEG_QUALITY = 90

# The coins of skimage.data.coins(), rows (y0, x0, y1, x1) exclusive: found
# by a 61-pixel white top-hat and Otsu's threshold, listed here so that the
# dataset does not depend on segmentation code across library versions.
_COIN_BOXES = (
    (16, 306, 72, 364), (31, 133, 74, 178), (31, 194, 72, 239), (39, 23, 73, 61),
    (39, 259, 71, 296), (40, 82, 73, 120), (96, 246, 144, 297), (104, 25, 145, 67),
    (105, 186, 145, 227), (105, 317, 145, 357), (108, 84, 145, 122), (110, 133, 145, 174),
    (156, 315, 217, 380), (170, 188, 217, 237), (172, 251, 217, 298), (174, 80, 217, 125),
    (179, 25, 216, 63), (179, 134, 217, 175), (233, 19, 288, 75), (236, 144, 287, 201),
    (240, 219, 288, 270), (240, 276, 288, 327), (245, 92, 287, 136), (248, 335, 289, 381))
_CAT_HEAD = (0, 30, 300, 400)    # (y0, x0, y1, x1) of chelsea()


def _rgb(image):
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(image * 255 if image.max() <= 1 else image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return image[:, :, :3]


class _Sources:
    """The shipped images, loaded once."""

    def __init__(self):
        import skimage.data as data
        from sklearn.datasets import load_digits, load_sample_images

        samples = load_sample_images().images
        self.backgrounds = [_rgb(a) for a in samples] + [
            _rgb(data.coffee()), _rgb(data.rocket()), _rgb(data.hubble_deep_field()),
            _rgb(data.immunohistochemistry()), _rgb(data.retina()), _rgb(data.brick()),
            _rgb(data.grass()), _rgb(data.gravel()), _rgb(data.moon())]
        self.cat = _rgb(data.chelsea())
        self.coins = _rgb(data.coins())
        self.digits = load_digits().images / 16.0          # (1797, 8, 8) in [0, 1]
        self.faces = data.lfw_subset()[:100]                 # the first 100 are faces


def _resize(image, width, height):
    import cv2
    return cv2.resize(image, (int(width), int(height)), interpolation=cv2.INTER_AREA
                      if width < image.shape[1] else cv2.INTER_LINEAR)


def _relight(patch, rng):
    gain, bias = rng.uniform(0.75, 1.25), rng.uniform(-20, 20)
    return np.clip(patch.astype(np.float32) * gain + bias, 0, 255)


def _object_patch(cls, sources, width, height, rng):
    """(RGB float patch, alpha in [0, 1]) of one object, `width` x `height`."""
    alpha = np.ones((height, width), np.float32)
    if cls == "cat":
        y0, x0, y1, x1 = _CAT_HEAD
        dy, dx = (y1 - y0) // 10, (x1 - x0) // 10
        crop = sources.cat[y0 + rng.integers(0, dy + 1):y1 - rng.integers(0, dy + 1),
                           x0 + rng.integers(0, dx + 1):x1 - rng.integers(0, dx + 1)]
        patch = _resize(crop, width, height)
    elif cls == "coin":
        y0, x0, y1, x1 = _COIN_BOXES[rng.integers(len(_COIN_BOXES))]
        patch = _resize(sources.coins[y0:y1, x0:x1], width, height)
        yy, xx = np.mgrid[0:height, 0:width]
        r = ((yy + 0.5) / (height / 2) - 1) ** 2 + ((xx + 0.5) / (width / 2) - 1) ** 2
        alpha = np.clip((1.0 - r) * max(width, height) / 4, 0, 1).astype(np.float32)
    elif cls == "digit":
        ink = _resize(sources.digits[rng.integers(len(sources.digits))].astype(np.float32),
                      width, height)[:, :, None]
        paper = rng.uniform(190, 255, 3)
        pen = rng.uniform(0, 90, 3)
        patch = paper * (1 - ink) + pen * ink
    elif cls == "face":
        face = (sources.faces[rng.integers(len(sources.faces))] * 255).astype(np.float32)
        patch = np.repeat(_resize(face, width, height)[:, :, None], 3, axis=2)
    else:
        raise ValueError(f"unknown synthetic class {cls!r} (known: {SYNTHETIC_CLASSES})")
    if rng.random() < 0.5:
        patch, alpha = patch[:, ::-1], alpha[:, ::-1]
    return _relight(patch, rng), alpha


def _background(sources, rng, size_range):
    height, width = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
    source = sources.backgrounds[rng.integers(len(sources.backgrounds))]
    sh, sw = source.shape[:2]
    scale = min(sh / height, sw / width) * rng.uniform(0.5, 1.0)
    ch, cw = max(1, int(height * scale)), max(1, int(width * scale))
    y, x = rng.integers(0, sh - ch + 1), rng.integers(0, sw - cw + 1)
    return _resize(source[y:y + ch, x:x + cw], width, height).astype(np.float32)


def _place(image, placed, rng):
    """A box (x0, y0, x1, y1), exclusive, for a new object, or None: log-uniform
    size, aspect 0.7-1.4, up to 40% outside the image 15% of the time, IoU
    with every placed object at most _MAX_IOU."""
    height, width = image.shape[:2]
    for _ in range(30):
        side = np.exp(rng.uniform(*np.log(_OBJECT_SIDES)))
        side = min(side, 0.8 * min(height, width))
        aspect = rng.uniform(0.7, 1.4)                    # width / height
        w, h = (side, side / aspect) if aspect >= 1 else (side * aspect, side)
        w, h = max(8, int(round(w))), max(8, int(round(h)))
        outside = 0.4 if rng.random() < 0.15 else 0.0
        x0 = int(rng.integers(-int(outside * w), width - w + int(outside * w) + 1))
        y0 = int(rng.integers(-int(outside * h), height - h + int(outside * h) + 1))
        box = np.array([[x0, y0, x0 + w - 1, y0 + h - 1]], np.float64)
        if not placed or pairwise_iou(box, np.array(placed)).max() <= _MAX_IOU:
            return x0, y0, x0 + w, y0 + h
    return None


def _paste(image, patch, alpha, box):
    """Blend the patch into the image at `box`, clipped; the visible box."""
    x0, y0, x1, y1 = box
    height, width = image.shape[:2]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    part = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
    a = alpha[part][:, :, None]
    region = image[cy0:cy1, cx0:cx1]
    region[...] = region * (1 - a) + patch[part] * a
    return cx0, cy0, cx1, cy1


def _make_image(image_id, sources, rng, size_range):
    image = _background(sources, rng, size_range)
    objects, placed = [], []
    for _ in range(int(rng.integers(1, 5))):
        cls = SYNTHETIC_CLASSES[rng.integers(len(SYNTHETIC_CLASSES))]
        box = _place(image, placed, rng)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        patch, alpha = _object_patch(cls, sources, x1 - x0, y1 - y0, rng)
        cx0, cy0, cx1, cy1 = _paste(image, patch, alpha, box)
        placed.append([x0, y0, x1 - 1, y1 - 1])
        truncated = (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1)
        difficult = min(cx1 - cx0, cy1 - cy0) < DIFFICULT_BELOW
        # VOC boxes: 1-based, inclusive.
        objects.append(VOCObject(cls, (cx0 + 1, cy0 + 1, cx1, cy1), difficult, truncated))
    pixels = np.clip(np.round(image), 0, 255).astype(np.uint8)
    height, width = pixels.shape[:2]
    return pixels, Annotation(image_id, image_id + ".jpg", width, height, 3, tuple(objects))


def _split(image_ids, rng):
    order = rng.permutation(len(image_ids))
    counts = np.floor(np.cumsum([SPLITS[s] for s in SPLITS]) * len(image_ids) + 0.5).astype(int)
    starts = np.concatenate([[0], counts[:-1]])
    splits = {name: sorted(image_ids[k] for k in order[a:b])
              for name, a, b in zip(SPLITS, starts, counts)}
    splits["trainval"] = sorted(splits["train"] + splits["val"])
    return splits


def _write_dataset(directory, num_images, seed, size_range):
    import cv2
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(directory, sub))
    rng = np.random.default_rng(seed)
    sources = _Sources()
    image_ids = [f"{k + 1:06d}" for k in range(num_images)]
    for image_id in image_ids:
        pixels, annotation = _make_image(image_id, sources, rng, size_range)
        ok, jpeg = cv2.imencode(".jpg", pixels[:, :, ::-1],       # RGB -> OpenCV's BGR
                                [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode image {image_id}")
        with open(os.path.join(directory, "JPEGImages", image_id + ".jpg"), "wb") as f:
            f.write(jpeg.tobytes())
        with open(os.path.join(directory, "Annotations", image_id + ".xml"), "w") as f:
            f.write(annotation_xml(annotation, folder="synthetic"))
    for name, ids in _split(image_ids, rng).items():
        with open(os.path.join(directory, "ImageSets", "Main", name + ".txt"), "w") as f:
            f.write("".join(i + "\n" for i in ids))
    with open(os.path.join(directory, "synthetic.json"), "w") as f:
        json.dump({"classes": SYNTHETIC_CLASSES, "num_images": num_images, "seed": seed,
                   "size_range": list(size_range)}, f, indent=1)


def make_synthetic_voc(root, num_images=120, seed=0, size_range=(300, 500), overwrite=False):
    """Write the dataset to `root` (VOC layout; splits train, val, trainval,
    test) and return `root`.  It is built in a temporary folder beside
    `root` and renamed into place, so `root` is either complete or absent.
    An existing `root` is an error unless `overwrite`."""
    root = os.path.abspath(os.fspath(root))
    if num_images < 4:
        raise ValueError(f"give at least 4 images (one per split), got {num_images}")
    if not 0 < size_range[0] <= size_range[1]:
        raise ValueError(f"size_range must be (low, high) with 0 < low <= high, got {size_range}")
    if os.path.exists(root) and not overwrite:
        raise FileExistsError(f"{root} exists (pass overwrite=True to replace it)")
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    building = tempfile.mkdtemp(prefix=os.path.basename(root) + ".", suffix=".tmp", dir=parent)
    try:
        _write_dataset(os.path.join(building, "dataset"), num_images, seed, size_range)
        if os.path.exists(root):
            os.rename(root, os.path.join(building, "replaced"))    # removed below
        os.rename(os.path.join(building, "dataset"), root)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return root
