"""Region proposals: selective search computed once per image and cached,
or precomputed boxes (R-CNN's .mat files, per-image .npy/.npz files).

Every function here returns boxes as float32 (N, 4) rows ``x1 y1 x2 y2``,
pixel-inclusive, in 1-BASED image coordinates: VOC's convention, the one
of the ground truth they are compared with (see sppcaffe.detection.boxes).

Selective search ("fast" mode, SPP-net Sec. 4.1 and R-CNN) runs OpenCV
contrib's implementation (cv2.ximgproc.segmentation) with the settings of
R-CNN's selective_search_boxes.m in fast mode: the image in HSV and in
Lab, Felzenszwalb-Huttenlocher segmentations with k = 50 and 100 (minimum
segment size k, sigma 0.8), and two merging strategies (colour + texture
+ size + fill, and texture + size + fill).  Then, as R-CNN: boxes with a
side under 20 pixels are dropped (FilterBoxesWidth, minBoxWidth = 20) and
duplicates removed, keeping the ranked order (the rank is a random draw
times the hierarchy level, as in the paper).  ``max_boxes`` keeps the
best-ranked boxes.

Other modes: "opencv_fast" and "quality" are OpenCV's own presets
(switchToSelectiveSearchFast / ...Quality with their defaults).

Determinism: OpenCV ranks regions with C's rand(); we seed it (srand)
before each run so that an image always gets the same boxes in the same
order.  On a 2-core machine fast mode takes 0.5-2.5 s for a VOC-sized
image (300-500 pixels a side; median 0.8 s on the synthetic set) and gives
about 250-3,400 boxes after the filter (median ~1,900);
``max_image_side`` (default 500, VOC's largest side) shrinks larger images
before the search, which grows with the pixel count, and scales the boxes
back.
"""
import ctypes
import os

import numpy as np

from ..io.atomic import atomic_write
from .boxes import as_boxes

FAST, OPENCV_FAST, QUALITY = "fast", "opencv_fast", "quality"
MODES = (FAST, OPENCV_FAST, QUALITY)
MIN_SIDE = 20               # R-CNN's minBoxWidth
MAX_BOXES = 2000
MAX_IMAGE_SIDE = 500        # VOC images are at most 500 pixels a side
_RCNN_FAST_KS = (50, 100)   # R-CNN fast mode: k (and minimum segment size)
_RCNN_SIGMA = 0.8


class ProposalError(ValueError):
    """A proposal file that cannot be read or does not hold boxes; the
    message names the file."""


# ---------------------------------------------------------------------------
# Box lists
# ---------------------------------------------------------------------------
def rects_to_boxes(rects):
    """OpenCV rectangles (x, y, w, h), 0-based -> 1-based inclusive boxes."""
    rects = np.asarray(rects, np.float64).reshape(-1, 4)
    x, y, w, h = rects.T
    return np.stack([x + 1, y + 1, x + w, y + h], axis=1).astype(np.float32)


def unique_boxes(boxes):
    """The boxes without repeats, each kept at its first position."""
    boxes = as_boxes(boxes)
    if len(boxes) == 0:
        return np.zeros((0, 4), np.float32)
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)].astype(np.float32)


def drop_small(boxes, min_side=MIN_SIDE):
    """Boxes whose width and height are both at least `min_side` pixels."""
    boxes = as_boxes(boxes)
    keep = ((boxes[:, 2] - boxes[:, 0] + 1 >= min_side) &
            (boxes[:, 3] - boxes[:, 1] + 1 >= min_side))
    return boxes[keep].astype(np.float32)


# ---------------------------------------------------------------------------
# Selective search
# ---------------------------------------------------------------------------
def _seed_c_rand(seed):
    try:
        ctypes.CDLL(None).srand(ctypes.c_uint(seed))
    except (OSError, AttributeError):     # no C library to reach: order is then unseeded
        pass


def _segmentation(image, mode):
    import cv2
    seg = cv2.ximgproc.segmentation
    ss = seg.createSelectiveSearchSegmentation()
    if mode == FAST:
        ss.addImage(cv2.cvtColor(image, cv2.COLOR_BGR2HSV))
        ss.addImage(cv2.cvtColor(image, cv2.COLOR_BGR2Lab))
        for k in _RCNN_FAST_KS:
            ss.addGraphSegmentation(seg.createGraphSegmentation(_RCNN_SIGMA, k, k))
        ss.addStrategy(seg.createSelectiveSearchSegmentationStrategyMultiple(
            seg.createSelectiveSearchSegmentationStrategyColor(),
            seg.createSelectiveSearchSegmentationStrategyTexture(),
            seg.createSelectiveSearchSegmentationStrategySize(),
            seg.createSelectiveSearchSegmentationStrategyFill()))
        ss.addStrategy(seg.createSelectiveSearchSegmentationStrategyMultiple(
            seg.createSelectiveSearchSegmentationStrategyTexture(),
            seg.createSelectiveSearchSegmentationStrategySize(),
            seg.createSelectiveSearchSegmentationStrategyFill()))
    else:
        ss.setBaseImage(image)
        if mode == OPENCV_FAST:
            ss.switchToSelectiveSearchFast()
        else:
            ss.switchToSelectiveSearchQuality()
    return ss


def _as_bgr(image):
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"selective search needs a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"selective search needs an (H, W, 3) BGR image, got shape {image.shape}")
    return np.ascontiguousarray(image)


def selective_search(image, mode=FAST, max_boxes=MAX_BOXES, min_side=MIN_SIDE,
                     max_image_side=MAX_IMAGE_SIDE, seed=0):
    """Proposals for an (H, W, 3) uint8 BGR image (OpenCV's order): float32
    (N, 4) 1-based boxes, best-ranked first, at most `max_boxes` (None: all)."""
    import cv2
    if mode not in MODES:
        raise ValueError(f"unknown selective search mode {mode!r} (known: {', '.join(MODES)})")
    image = _as_bgr(image)
    height, width = image.shape[:2]
    factor = 1.0
    if max_image_side and max(height, width) > max_image_side:
        factor = max_image_side / max(height, width)
        image = cv2.resize(image, (max(1, round(width * factor)), max(1, round(height * factor))),
                           interpolation=cv2.INTER_AREA)
    ss = _segmentation(image, mode)
    _seed_c_rand(seed)
    rects = ss.process()
    boxes = rects_to_boxes(rects)
    if factor != 1.0:
        # Back to the original image's pixels, kept inside it.
        boxes[:, :2] = np.round((boxes[:, :2] - 1) / factor) + 1
        boxes[:, 2:] = np.round(boxes[:, 2:] / factor)
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 1, width)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 1, height)
    boxes = unique_boxes(drop_small(boxes, min_side))
    return boxes[:max_boxes] if max_boxes else boxes


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------
def save_boxes(path, boxes):
    """Write boxes as a float32 (N, 4) .npy file, atomically."""
    with atomic_write(path, "wb") as f:
        np.save(f, np.asarray(boxes, np.float32).reshape(-1, 4))


def load_boxes(path):
    """Boxes from a .npy file, or the `boxes` array of a .npz file: float32
    (N, 4), rows x1 y1 x2 y2 (1-based, inclusive)."""
    path = os.fspath(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ProposalError(f"no proposal file {path}") from None
    except (OSError, ValueError, EOFError) as err:
        raise ProposalError(f"{path}: not a readable .npy/.npz file ({err})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if "boxes" not in loaded.files:
                raise ProposalError(f"{path}: no 'boxes' array (it has {loaded.files})")
            loaded = loaded["boxes"]
    if loaded.ndim != 2 or loaded.shape[1] != 4:
        if loaded.size == 0:
            return np.zeros((0, 4), np.float32)
        raise ProposalError(f"{path}: boxes must have shape (N, 4) [x1 y1 x2 y2], "
                            f"got {loaded.shape}")
    return loaded.astype(np.float32)


def _mat_strings(cells):
    return [str(np.asarray(c).reshape(-1)[0]) if np.asarray(c).size else "" for c in cells]


def read_rcnn_mat(path):
    """R-CNN's selective_search_data file (e.g. voc_2007_trainval.mat):
    {image_id: float32 (N, 4) boxes, 1-based x1 y1 x2 y2}.

    The file holds `images`, a cell array of image ids, and `boxes`, a cell
    array with one (N, 4) double matrix per image, in the same order, whose
    rows are [y1 x1 y2 x2] (1-based, MATLAB's row-column order); they are
    reordered to x1 y1 x2 y2.  MATLAB v7.3 files (HDF5) are read too."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ProposalError(f"no proposal file {path}")
    import h5py
    if h5py.is_hdf5(path):             # MATLAB -v7.3
        images, boxes = _read_mat_v73(path)
    else:
        images, boxes = _read_mat_v5(path)
    if len(images) != len(boxes):
        raise ProposalError(f"{path}: {len(images)} images but {len(boxes)} box lists")
    out = {}
    for k, (image_id, b) in enumerate(zip(images, boxes)):
        b = np.asarray(b, np.float64)
        if b.size == 0:
            b = b.reshape(0, 4)
        if b.ndim != 2 or b.shape[1] != 4:
            raise ProposalError(f"{path}: boxes of image {k} ('{image_id}') have shape {b.shape}, "
                                "expected (N, 4) [y1 x1 y2 x2]")
        out[image_id] = b[:, [1, 0, 3, 2]].astype(np.float32)
    return out


def _read_mat_v5(path):
    import scipy.io
    try:
        mat = scipy.io.loadmat(path)
    except (ValueError, OSError, TypeError) as err:
        raise ProposalError(f"{path}: not a readable .mat file ({err})") from None
    for key in ("images", "boxes"):
        if key not in mat:
            raise ProposalError(f"{path}: no '{key}' variable (it has "
                                f"{sorted(k for k in mat if not k.startswith('__'))})")
    return _mat_strings(mat["images"].ravel()), list(mat["boxes"].ravel())


def _read_mat_v73(path):
    import h5py
    try:
        with h5py.File(path, "r") as f:
            for key in ("images", "boxes"):
                if key not in f:
                    raise ProposalError(f"{path}: no '{key}' variable (it has {sorted(f)})")
            # Cells are object references; MATLAB stores matrices transposed.
            images = ["".join(map(chr, f[ref][()].ravel())) for ref in f["images"][()].ravel()]
            boxes = [np.asarray(f[ref][()]).T for ref in f["boxes"][()].ravel()]
    except OSError as err:
        raise ProposalError(f"{path}: not a readable .mat file ({err})") from None
    return images, boxes


# ---------------------------------------------------------------------------
# Where an image's proposals come from
# ---------------------------------------------------------------------------
class ProposalSource:
    """An image's proposals, from (in this order of preference):

    - `mat_file`: an R-CNN selective_search_data .mat file (read once);
    - `directory`: ``<directory>/<image_id>.npy`` (or ``.npz`` with a
      `boxes` array), 1-based x1 y1 x2 y2;
    - selective search (`compute`), whose result is then saved to
      ``<directory>/<image_id>.npy`` (atomically), so each image is
      searched once.
    """

    def __init__(self, directory=None, mat_file=None, compute=True, mode=FAST,
                 max_boxes=MAX_BOXES, min_side=MIN_SIDE, max_image_side=MAX_IMAGE_SIDE):
        if directory is None and mat_file is None:
            raise ValueError("give a proposal directory or an R-CNN .mat file")
        if mode not in MODES:
            raise ValueError(f"unknown selective search mode {mode!r} (known: {', '.join(MODES)})")
        self.directory = None if directory is None else os.fspath(directory)
        self.mat_file = None if mat_file is None else os.fspath(mat_file)
        self.compute = compute
        self.options = dict(mode=mode, max_boxes=max_boxes, min_side=min_side,
                            max_image_side=max_image_side)
        self._mat = read_rcnn_mat(self.mat_file) if self.mat_file else None
        if self.directory and compute:
            os.makedirs(self.directory, exist_ok=True)

    def describe(self):
        """What the proposals are, for a cache's meta.json."""
        if self._mat is not None:
            return {"mat_file": os.path.abspath(self.mat_file)}
        return {"directory": os.path.abspath(self.directory),
                "selective_search": dict(self.options) if self.compute else None}

    def file(self, image_id):
        """The existing per-image file of `image_id`, or None."""
        if self.directory is None:
            return None
        for suffix in (".npy", ".npz"):
            path = os.path.join(self.directory, image_id + suffix)
            if os.path.exists(path):
                return path
        return None

    def boxes(self, image_id, image=None):
        """float32 (N, 4) proposals of `image_id`; `image` (BGR uint8, or a
        function returning it) is needed only when they must be computed."""
        if self._mat is not None:
            if image_id not in self._mat:
                raise ProposalError(f"{self.mat_file}: no proposals for image '{image_id}'")
            return self._mat[image_id]
        path = self.file(image_id)
        if path is not None:
            return load_boxes(path)
        if not self.compute:
            raise ProposalError(f"no proposals for image '{image_id}' in {self.directory} "
                                f"(expected {image_id}.npy or {image_id}.npz)")
        if image is None:
            raise ValueError(f"image '{image_id}' has no cached proposals: give the image "
                             "to compute them")
        boxes = selective_search(image() if callable(image) else image, **self.options)
        save_boxes(os.path.join(self.directory, image_id + ".npy"), boxes)
        return boxes
