"""The detection tools over N MPI ranks.

- Feature caching (`extract_features spp|rcnn`): the images still to
  compute are split over the ranks (rank r: every N-th from the r-th),
  each rank writes its images' cache files.  Every rank looks at its own
  view of the cache folder, and an image counts as done when any rank
  sees its complete file, so the folder may be shared (one file system)
  or one per machine (then gather the folders afterwards).  Files are
  written under a temporary name and renamed, the same bytes whoever
  writes them, so a killed job rerun with another N continues where it
  stopped and the result equals a one-process run file for file.
- Caffe's form (`extract_features WEIGHTS NET BLOBS DBS NUM_BATCHES lmdb`):
  the data layers read batch r, r + N, ... on rank r (sharding.py, in the
  TEST phase), rank 0 gathers the features and writes the databases in
  the one-process order.  Random transformations (mirror) differ from one
  process: every rank draws its own.
- SVM training (`train_svms`): the classes are split over the ranks (each
  class's SVM, with its hard-negative mining, is independent of the
  others); rank 0 gathers the columns.  Fine-tuning, box regression and
  the outputs are rank 0's; every rank reads the whole cache.
- Detection testing (`test_detection`, `test_net --detection`): the
  images are split over the ranks, each scores, regresses and suppresses
  its own (NMS is per image), rank 0 gathers the detections in the
  images' order and evaluates: the same AP as one process.
"""
import logging
import time

import numpy as np

from ..detection import cache, detect, features, svm
from ..proto import caffe_pb2
from .sharding import data_shard, split
from .training import root_first

log = logging.getLogger("sppcaffe")


# ---------------------------------------------------------------------------
# Feature caching
# ---------------------------------------------------------------------------
def _prepare_folder(cache_dir, meta, proposals):
    cache.start(cache_dir, meta)
    stale = cache.remove_temporaries(cache_dir)
    if getattr(proposals, "directory", None):
        stale += cache.remove_temporaries(proposals.directory, ".npy")
    if stale:
        log.info("removed %d temporary files of an interrupted run", stale)


def cache_features(comm, dataset, proposals, extractor, cache_dir, meta, image_ids,
                   compress=False):
    """features.cache_features over the ranks of `comm` (module docstring);
    (computed by all ranks, skipped) on every rank."""
    # Before any rank writes: meta.json checked (or written) and temporaries
    # of a killed run removed, rank 0 first (its folder may be everyone's).
    root_first(comm, _prepare_folder, cache_dir, meta, proposals)
    ids = list(image_ids)
    pending = set(features.pending_images(cache_dir, ids))
    # Done when any rank's view holds the file (per-machine folders).
    pending = set.intersection(*[set(p) for p in comm.allgather(sorted(pending))])
    todo = [i for i in ids if i in pending]
    skipped = len(ids) - len(todo)
    mine = split(todo, comm.rank, comm.size)
    if comm.is_root:
        log.info("%d of %d images already cached; %d to compute over %d ranks (%d here)",
                 skipped, len(ids), len(todo), comm.size, len(mine))
    started, rows = time.perf_counter(), 0
    for done, image_id in enumerate(mine, 1):
        rows += features.cache_image(dataset, image_id, proposals, extractor, cache_dir,
                                     compress)
        if comm.is_root and (done % 50 == 0 or done == len(mine)):
            log.info("rank 0: %d/%d images, %.2f s per image, %.0f windows per image", done,
                     len(mine), (time.perf_counter() - started) / done, rows / done)
    computed = sum(comm.allgather(len(mine)))
    return computed, skipped


# ---------------------------------------------------------------------------
# Caffe's extract_features
# ---------------------------------------------------------------------------
def batch_shard(comm):
    """The block in which a TEST-phase net's data layers, built under it,
    read rank comm.rank's batches."""
    return data_shard(comm.rank, comm.size, phases=(caffe_pb2.TEST,))


def forward_batches(comm, net, blob_names, num_batches):
    """The arrays of `blob_names` after each of `num_batches` forward
    passes, in order: on rank 0 every batch (rank r ran batches r, r + N,
    ...); nothing on the other ranks, which compute their share."""
    rounds = -(-num_batches // comm.size)
    for step in range(rounds):
        batch = step * comm.size + comm.rank
        arrays = None
        if batch < num_batches:
            net.forward_from_to()
            arrays = [np.array(net.blobs[name].cpu_data) for name in blob_names]
        gathered = comm.gather(arrays)
        if comm.is_root:
            for arrays in gathered:
                if arrays is not None:
                    yield arrays


# ---------------------------------------------------------------------------
# SVMs
# ---------------------------------------------------------------------------
def train_svm_model(comm, load, image_ids, classes, transform, features_config, svm_config,
                    fc_net=None, fc_weights=None, seed=0):
    """svm.train_model with the classes split over the ranks; on rank 0
    the model of every class (and the history in one-process order), None
    elsewhere."""
    mine = split(range(len(classes)), comm.rank, comm.size)
    log.info("SVMs of classes %s on this rank", ", ".join(classes[k] for k in mine) or "none")
    model, history = svm.train_model(load, image_ids, classes, transform, features_config,
                                     svm_config, fc_net, fc_weights, seed, train_classes=mine)
    parts = comm.gather((mine, model.W[:, mine], model.b[mine], history))
    if not comm.is_root:
        return None, None
    history = []
    for indices, W, b, part in parts:
        model.W[:, indices], model.b[indices] = W, b
        history += part
    order = {name: k for k, name in enumerate(classes)}
    history.sort(key=lambda h: (h["epoch"], h["image"], order[h["class"]]))
    return model, history


# ---------------------------------------------------------------------------
# Detection testing
# ---------------------------------------------------------------------------
def detect_all(comm, load, image_ids, classes, scorer, config, regressor=None,
               image_sizes=None):
    """detect.detect_all with the images split over the ranks: on rank 0
    ({class: Detections}, {image_id: ImageDetections} in `image_ids`'
    order, seconds per image of the whole job); (None, None, None)
    elsewhere."""
    started = time.perf_counter()
    mine = split(image_ids, comm.rank, comm.size)
    _, per_image, _ = detect.detect_all(load, mine, classes, scorer, config, regressor,
                                        image_sizes)
    parts = comm.gather(per_image)
    if not comm.is_root:
        return None, None, None
    merged = {}
    for part in parts:
        merged.update(part)
    per_image = {image_id: merged[image_id] for image_id in image_ids}
    seconds = (time.perf_counter() - started) / max(len(image_ids), 1)
    return detect.detections_by_class(per_image, classes), per_image, seconds
