"""The per-image feature cache of SPP-net detection: what feature
extraction writes and SVM training, fine-tuning and testing read.

One file per image, ``<cache_dir>/<image_id>.npz``, with R rows (the
image's ground-truth boxes first, then its proposals):

=============== ========== ==============================================
``boxes``       (R, 4) f4  x1 y1 x2 y2, pixel-inclusive, in the image's
                           own 1-based VOC coordinates
``gt``          (R,) bool  True for ground-truth rows
``gt_classes``  (R,) i4    class 1..K of ground-truth rows, 0 for proposals
``overlaps``    (R, K+1)   column k >= 1: the row's largest IoU with a
                f4         ground-truth box of class k; column 0 is zeros
``feat``        (R, D) f4  the row's pooled feature (D = C * sum n^2 for
                           SPP; the chosen blob in R-CNN mode)
``scale_index`` (R,) i2    index into meta's ``scales`` of the scale the
                           row was pooled at (0 in R-CNN mode)
``difficult_gt``(R,) bool  True for ground-truth rows marked difficult
=============== ========== ==============================================

``overlaps`` counts every ground-truth box, difficult ones included (as
R-CNN's roidb does); a trainer that leaves difficult objects out can
recompute it with ``class_overlaps`` from the rows ``gt & ~difficult_gt``.

Plus ``<cache_dir>/meta.json``: how the features were made (net, weights,
scales, levels, mapping, scale rule, class names, feature dimension, ...).

Every file is written under a temporary name and renamed into place, so
a killed run leaves either a whole file or none: an ``.npz`` that exists
is complete, and extraction resumes by skipping those.
"""
import json
import os
import re
import zipfile

import numpy as np

from ..io.atomic import atomic_write, remove_stale_temps
from .boxes import as_boxes, pairwise_iou

META_FILE = "meta.json"
SUFFIX = ".npz"
# name -> (dtype, number of dimensions)
FIELDS = {
    "boxes": (np.float32, 2),
    "gt": (np.bool_, 1),
    "gt_classes": (np.int32, 1),
    "overlaps": (np.float32, 2),
    "feat": (np.float32, 2),
    "scale_index": (np.int16, 1),
    "difficult_gt": (np.bool_, 1),
}


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


class CacheError(ValueError):
    """A cache file or folder that does not hold what the contract says;
    the message names the path."""


def image_path(cache_dir, image_id):
    return os.path.join(os.fspath(cache_dir), f"{image_id}{SUFFIX}")


# ---------------------------------------------------------------------------
# Ground truth and proposals -> the rows of one image
# ---------------------------------------------------------------------------
def class_overlaps(boxes, gt_boxes, gt_classes, num_classes):
    """(R, K + 1) float32: column k the largest IoU of each box with a
    ground-truth box of class k (1..K); 0 where there is none."""
    boxes, gt_boxes = as_boxes(boxes), as_boxes(gt_boxes, "gt_boxes")
    gt_classes = np.asarray(gt_classes, np.int64).reshape(-1)
    if len(gt_classes) != len(gt_boxes):
        raise ValueError(f"{len(gt_boxes)} ground-truth boxes but {len(gt_classes)} classes")
    if len(gt_classes) and (gt_classes.min() < 1 or gt_classes.max() > num_classes):
        raise ValueError(f"ground-truth classes must lie in 1..{num_classes}, "
                         f"got {sorted(set(gt_classes.tolist()))}")
    out = np.zeros((len(boxes), num_classes + 1), np.float32)
    if len(boxes) and len(gt_boxes):
        iou = pairwise_iou(boxes, gt_boxes).astype(np.float32)
        # A maximum per class, over that class's ground-truth columns at once.
        np.maximum.at(out.T, gt_classes, iou.T)
    return out


def image_rows(gt_boxes, gt_classes, difficult, proposals, num_classes):
    """Every field of the contract but ``feat`` and ``scale_index``, for
    one image: ground-truth rows first, then the proposals."""
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    proposals = as_boxes(proposals, "proposals")
    gt_classes = np.asarray(gt_classes, np.int32).reshape(-1)
    difficult = np.asarray(difficult, bool).reshape(-1)
    if not len(gt_boxes) == len(gt_classes) == len(difficult):
        raise ValueError(f"{len(gt_boxes)} ground-truth boxes, {len(gt_classes)} classes and "
                         f"{len(difficult)} difficult flags: give one of each per box")
    boxes = np.concatenate([gt_boxes, proposals])
    is_gt = np.arange(len(boxes)) < len(gt_boxes)
    return {
        "boxes": boxes.astype(np.float32),
        "gt": is_gt,
        "gt_classes": np.concatenate([gt_classes, np.zeros(len(proposals), np.int32)]),
        "overlaps": class_overlaps(boxes, gt_boxes, gt_classes, num_classes),
        "difficult_gt": np.concatenate([difficult, np.zeros(len(proposals), bool)]),
    }


# ---------------------------------------------------------------------------
# One image's file
# ---------------------------------------------------------------------------
def check_record(record, where="record"):
    """Raise CacheError unless `record` holds exactly the contract's arrays,
    of its dtypes and of consistent shapes."""
    missing = sorted(set(FIELDS) - set(record))
    extra = sorted(set(record) - set(FIELDS))
    if missing or extra:
        raise CacheError(f"{where}: fields {missing} missing, {extra} unexpected "
                         f"(expected {sorted(FIELDS)})")
    rows = len(record["boxes"])
    for name, (dtype, ndim) in FIELDS.items():
        array = record[name]
        if array.dtype != dtype or array.ndim != ndim or len(array) != rows:
            raise CacheError(f"{where}: '{name}' is {array.dtype} {array.shape}, expected "
                             f"{np.dtype(dtype)} with {ndim} dimension(s) and {rows} rows")
    if record["boxes"].shape[1] != 4:
        raise CacheError(f"{where}: 'boxes' has shape {record['boxes'].shape}, expected (R, 4)")


def save(cache_dir, image_id, record, compress=False):
    """Write one image's record (the contract's arrays, checked and cast
    from close dtypes) as ``<cache_dir>/<image_id>.npz``, atomically."""
    path = image_path(cache_dir, image_id)
    record = dict(record)
    for name, (dtype, _) in FIELDS.items():
        if name in record:
            record[name] = np.ascontiguousarray(record[name], dtype)
    check_record(record, path)
    with atomic_write(path, "wb") as f:
        _write_npz(f, record, compress)
    return path


# np.savez stamps every member with the time of writing; a fixed stamp makes
# a record's file the same bytes whenever and by whichever rank it is written.
_STAMP = (1980, 1, 1, 0, 0, 0)


def _write_npz(f, arrays, compress):
    """np.savez's layout (one NumPy .npy member per array), deterministic."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(f, "w", compression=method, allowZip64=True) as archive:
        for name, array in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=_STAMP)
            member.compress_type = method
            with archive.open(member, "w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.asanyarray(array), allow_pickle=False)


def load(cache_dir, image_id):
    """One image's record: {field: array}; CacheError naming the file if it
    is missing, unreadable or breaks the contract."""
    path = image_path(cache_dir, image_id)
    try:
        with np.load(path, allow_pickle=False) as data:
            record = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise CacheError(f"no cached features for image '{image_id}': {path} does not exist") \
            from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise CacheError(f"{path}: not a readable .npz file ({err})") from None
    check_record(record, path)
    return record


def is_complete(cache_dir, image_id):
    """Whether the image's file exists and holds every field with consistent
    shapes.  Reads only the array headers (not the features), so checking
    a whole split for resuming is cheap."""
    path = image_path(cache_dir, image_id)
    try:
        with zipfile.ZipFile(path) as archive:
            shapes = {}
            for info in archive.infolist():
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version not in _HEADER_READERS:
                        return False
                    shape, _, dtype = _HEADER_READERS[version](member)
                shapes[name] = (shape, dtype)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError):
        return False
    if set(shapes) != set(FIELDS):
        return False
    rows = {shape[0] if shape else None for shape, _ in shapes.values()}
    return len(rows) == 1 and all(
        dtype == np.dtype(FIELDS[name][0]) and len(shape) == FIELDS[name][1]
        for name, (shape, dtype) in shapes.items())


def remove_temporaries(folder, suffix=SUFFIX):
    """Delete the temporary files (``<name><suffix>.<random>.tmp``) that a
    killed run left in `folder`; their number.  Only for a folder no other
    run is writing to at the same time."""
    return len(remove_stale_temps(folder, ".+" + re.escape(suffix)))


def image_ids(cache_dir):
    """Ids of the images whose files are in the cache, sorted.  (Temporary
    files of a write in progress end in '.tmp' and are not listed.)"""
    cache_dir = os.fspath(cache_dir)
    if not os.path.isdir(cache_dir):
        raise CacheError(f"no feature cache at {cache_dir}: not a directory")
    return sorted(name[:-len(SUFFIX)] for name in os.listdir(cache_dir)
                  if name.endswith(SUFFIX))


# ---------------------------------------------------------------------------
# meta.json
# ---------------------------------------------------------------------------
def meta(cache_dir):
    """The cache's meta.json as a dict."""
    path = os.path.join(os.fspath(cache_dir), META_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CacheError(f"{path} does not exist: not a feature cache (or not started)") \
            from None
    except json.JSONDecodeError as err:
        raise CacheError(f"{path}: not valid JSON ({err})") from None


def write_meta(cache_dir, values):
    path = os.path.join(os.fspath(cache_dir), META_FILE)
    with atomic_write(path, "w") as f:
        json.dump(values, f, indent=1, sort_keys=True)
        f.write("\n")
    return path


def start(cache_dir, values):
    """Create the cache folder and its meta.json, or check that an existing
    cache was made with the same `values` (resuming with other settings
    would mix incompatible features): CacheError naming what differs."""
    cache_dir = os.fspath(cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    values = json.loads(json.dumps(values))         # tuples -> lists, as stored
    if not os.path.exists(os.path.join(cache_dir, META_FILE)):
        write_meta(cache_dir, values)
        return values
    existing = meta(cache_dir)
    differ = sorted(k for k in set(existing) | set(values) if existing.get(k) != values.get(k))
    if differ:
        details = "; ".join(f"{k}: cache has {existing.get(k)!r}, now {values.get(k)!r}"
                            for k in differ)
        raise CacheError(f"{os.path.join(cache_dir, META_FILE)}: the cache was made with other "
                         f"settings ({details}); use another output folder or remove this one")
    return existing
