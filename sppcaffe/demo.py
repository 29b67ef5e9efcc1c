"""A small 10-class image set for the SPP demo, made without a download.

The digits of scikit-learn's `load_digits()` (8x8 greyscale scans of
handwritten digits) are drawn, in colour, onto crops of real photographs
that ship inside the installed wheels (scikit-learn's sample images and
scikit-image's `skimage.data`).  Every image gets its own height and width,
and so its own aspect ratio, and the digit is stretched to fit it: a net
with a fixed-size fc input can only take these images after warping or
cropping them, while an SPP net takes each one as it is.

Layout of the written folder (the `ImageData` list-file format):

    train/00000.png ...   colour PNGs
    test/00000.png ...
    train.txt, test.txt   "train/00000.png 3" per line: path relative to the folder, label
    manifest.json         seed and counts; marks the folder as one this module may replace

Source digits are split per class before rendering, so no handwritten digit
of the test set was seen in training.  Everything is drawn from one
`numpy.random.Generator` seeded by `seed`, so a seed gives the same bytes.
"""
import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np

NUM_CLASSES = 10
MIN_SIDE, MAX_SIDE = 24, 64          # image height and width, pixels
MIN_ASPECT, MAX_ASPECT = 0.6, 1.6    # width / height
GLYPH_FILL = (0.55, 0.9)             # fraction of each side the digit spans
BACKGROUND_CONTRAST = 0.6            # photo contrast kept, so the digit stays the object
TEST_SOURCE_FRACTION = 0.25          # share of each class's scanned digits kept for test
DEFAULT_TRAIN_PER_CLASS = 600
DEFAULT_TEST_PER_CLASS = 50
MANIFEST = "manifest.json"
FORMAT_VERSION = 1

# Real photographs (RGB) shipped in the wheels; greyscale textures are used
# as colourless backgrounds.  Each name is a function of skimage.data.
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
                  "hubble_deep_field", "brick", "grass", "gravel", "camera")


class DemoDataError(RuntimeError):
    """The demo set cannot be written where asked."""


def background_photos():
    """The photographs to crop backgrounds from, as RGB uint8 arrays."""
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images)            # china.jpg, flower.jpg
    for name in SKIMAGE_PHOTOS:
        image = getattr(skdata, name)()
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        photos.append(np.ascontiguousarray(image[:, :, :3]))
    return photos


def load_digit_scans():
    """(images float32 N x 8 x 8 in [0, 1], labels int N) of load_digits()."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def split_sources(labels, rng):
    """Per class, a shuffled list of train and of test indices into the scans."""
    train, test = [], []
    for c in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = max(1, int(round(len(members) * TEST_SOURCE_FRACTION)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return train, test


def draw_size(rng):
    """(height, width), both in [MIN_SIDE, MAX_SIDE], width/height in
    [MIN_ASPECT, MAX_ASPECT] (log-uniform, so tall and wide are as likely)."""
    while True:
        height = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
        aspect = float(np.exp(rng.uniform(np.log(MIN_ASPECT), np.log(MAX_ASPECT))))
        width = int(round(height * aspect))
        if MIN_SIDE <= width <= MAX_SIDE:
            return height, width


def crop_background(photo, height, width, rng):
    """A random crop of `photo` with the target's aspect, resized to it, its
    contrast reduced around its mean."""
    ph, pw = photo.shape[:2]
    scale = rng.uniform(1.0, 5.0)          # photo pixels per output pixel
    ch = min(ph, max(height, int(round(height * scale))))
    cw = min(pw, int(round(ch * width / height)))
    ch = min(ch, int(round(cw * height / width)))
    top = int(rng.integers(0, ph - ch + 1))
    left = int(rng.integers(0, pw - cw + 1))
    crop = cv2.resize(photo[top:top + ch, left:left + cw], (width, height),
                      interpolation=cv2.INTER_AREA).astype(np.float32)
    mean = crop.mean(axis=(0, 1), keepdims=True)
    return mean + BACKGROUND_CONTRAST * (crop - mean)


def ink_colour(background_luma, rng):
    """An RGB colour far in brightness from the background under the digit:
    light ink on dark ground, dark ink on light ground, random hue."""
    hue = rng.uniform(0, 1, 3)
    colour = hue / max(hue.max(), 1e-6)
    if background_luma < 128:
        return 190 + 65 * colour            # light
    return 70 * colour                      # dark


def render(scan, photo, rng):
    """One demo image: `scan` (8x8 in [0, 1]) stretched over most of a
    random-size crop of `photo`, in a colour that stands out; RGB uint8."""
    height, width = draw_size(rng)
    image = crop_background(photo, height, width, rng)
    gh = max(8, int(round(height * rng.uniform(*GLYPH_FILL))))
    gw = max(8, int(round(width * rng.uniform(*GLYPH_FILL))))
    alpha = cv2.resize(scan, (gw, gh), interpolation=cv2.INTER_CUBIC)
    alpha = np.clip(alpha * 1.25, 0, 1)[:, :, None]       # solid strokes, soft edges
    top = int(rng.integers(0, height - gh + 1))
    left = int(rng.integers(0, width - gw + 1))
    region = image[top:top + gh, left:left + gw]
    luma = float((region.mean(axis=(0, 1)) * (0.299, 0.587, 0.114)).sum())
    region[...] = region * (1 - alpha) + ink_colour(luma, rng) * alpha
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_split(folder, name, sources, per_class, scans, labels, photos, rng):
    """Render `per_class` images of every class from the class's `sources`
    (cycled), in a shuffled order; write them and the list file."""
    plan = [(c, sources[c][i % len(sources[c])]) for c in range(NUM_CLASSES)
            for i in range(per_class)]
    order = rng.permutation(len(plan))
    os.makedirs(os.path.join(folder, name))
    lines = []
    for number, k in enumerate(order):
        label, index = plan[k]
        image = render(scans[index], photos[rng.integers(len(photos))], rng)
        relative = f"{name}/{number:05d}.png"
        # cv2 writes BGR: swap so that the file holds the RGB colours.
        if not cv2.imwrite(os.path.join(folder, relative), image[:, :, ::-1]):
            raise DemoDataError(f"could not write {os.path.join(folder, relative)}")
        lines.append(f"{relative} {label}\n")
    with open(os.path.join(folder, f"{name}.txt"), "w") as f:
        f.writelines(lines)
    return len(lines)


def is_demo_folder(path):
    return os.path.isfile(os.path.join(path, MANIFEST))


def make_demo_dataset(out="data/demo", seed=0, train_per_class=None, test_per_class=None):
    """Write the demo set to `out` and return its manifest (a dict).

    The set is built in a temporary folder next to `out` and renamed into
    place, so `out` never holds half a set.  An existing `out` is replaced
    only if it is an earlier demo set (it has a manifest.json); anything
    else there is an error, never deleted.
    """
    train_per_class = DEFAULT_TRAIN_PER_CLASS if train_per_class is None else train_per_class
    test_per_class = DEFAULT_TEST_PER_CLASS if test_per_class is None else test_per_class
    if train_per_class < 1 or test_per_class < 1:
        raise DemoDataError("need at least one image per class in each split")
    out = os.path.abspath(out)
    if os.path.exists(out) and not is_demo_folder(out) and \
            (not os.path.isdir(out) or os.listdir(out)):
        raise DemoDataError(f"'{out}' exists and is not a demo data set (no {MANIFEST}); "
                            f"remove it or choose another --out")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    rng = np.random.default_rng(seed)
    scans, labels = load_digit_scans()
    photos = background_photos()
    train_sources, test_sources = split_sources(labels, rng)

    work = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
    try:
        counts = {
            "train": write_split(work, "train", train_sources, train_per_class, scans, labels,
                                 photos, rng),
            "test": write_split(work, "test", test_sources, test_per_class, scans, labels,
                                photos, rng),
        }
        manifest = {"format": FORMAT_VERSION, "seed": seed, "classes": NUM_CLASSES,
                    "images": counts, "min_side": MIN_SIDE, "max_side": MAX_SIDE,
                    "aspect": [MIN_ASPECT, MAX_ASPECT],
                    "source": "sklearn load_digits() on crops of sklearn/skimage sample photos"}
        with open(os.path.join(work, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2)
        replace_folder(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


def replace_folder(new, target):
    """Put folder `new` at `target`, moving any old `target` aside first
    and deleting it only once the new one is in place."""
    old = None
    if os.path.exists(target):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old.",
                               dir=os.path.dirname(target))
        os.rmdir(old)
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:
            with contextlib.suppress(OSError):
                os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="make_demo_data",
        description="Write the demo image set of solvers/demo_spp.prototxt: digits drawn on "
                    "photographs, every image its own size and aspect ratio (no download).")
    parser.add_argument("--out", default="data/demo",
                        help="folder to write (default: %(default)s, where "
                             "models/demo_spp/train_val.prototxt reads it)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--train-per-class", type=int, default=DEFAULT_TRAIN_PER_CLASS,
                        help="training images per class (default: %(default)s)")
    parser.add_argument("--test-per-class", type=int, default=DEFAULT_TEST_PER_CLASS,
                        help="test images per class (default: %(default)s)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        manifest = make_demo_dataset(args.out, args.seed, args.train_per_class,
                                     args.test_per_class)
    except (DemoDataError, OSError) as err:
        print(f"make_demo_data: error: {err}", file=sys.stderr)
        return 1
    images = manifest["images"]
    print(f"Wrote {images['train']} training and {images['test']} test images "
          f"({NUM_CLASSES} classes, {MIN_SIDE}-{MAX_SIDE} pixels a side) to {args.out} "
          f"in {time.perf_counter() - start:.1f} s; lists: {os.path.join(args.out, 'train.txt')}, "
          f"{os.path.join(args.out, 'test.txt')}")
    return 0
