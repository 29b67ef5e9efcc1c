"""extract_features: Caffe's feature extraction tool, and SPP-net's
per-image window features for detection.

Caffe's form (BVLC tools/extract_features.cpp), same positional arguments:

    extract_features WEIGHTS NET BLOB[,BLOB...] DB[,DB...] NUM_BATCHES lmdb [CPU|GPU] [DEVICE_ID]

builds NET in the TEST phase with WEIGHTS, runs NUM_BATCHES forward passes
over its data layers (on GPU DEVICE_ID, default 0, with GPU), and writes
one LMDB per blob: a Datum per item of the batch (channels/height/width:
the blob's legacy C, H, W; the values in float_data), keyed by a
zero-padded running index (`%010d`), committed every 1000 records.  Each
database is written under a temporary name and renamed when complete.
leveldb is refused with a message.

Detection forms (subcommands), one cache file per image (see
sppcaffe/detection/cache.py for the format):

    extract_features spp  --dataset ROOT --weights W --out DIR [options]
    extract_features rcnn --dataset ROOT --weights W --out DIR [options]

`spp` runs the conv net once per image and scale and pools every window
from conv5 (Sec. 4); `rcnn` warps every window to 224 x 224 and runs the
whole net on it (for comparison).  Proposals are read from --mat (R-CNN's
selective_search_data) or --proposals DIR, where selective search results
are computed and kept for images without them.  Both resume: images whose
cache file is complete are skipped, and every file is written under a
temporary name, so a killed run leaves no partial file.  With `--gpu ID`
both run on that GPU: conv maps, pooling and the features stay on the
device until an image's features are written.

Under `mpiexec -n N` every form is split over the ranks (Caffe's form:
batches; spp/rcnn: images, resumable with any N): sppcaffe/parallel/
detection.py.
"""
import argparse
import contextlib
import json
import logging
import os
import sys

import numpy as np

from .. import backends, parallel
from ..data.db import LMDBWriter, TRANSACTION_SIZE
from ..data.errors import DataError
from ..detection import features, mapping, proposals, voc, window_pool
from ..layer import LayerError
from ..net import TEST, Net
from ..parallel import detection as parallel_detection
from ..proto import caffe_pb2
from .progress import configure_logging
from . import CliError, add_gpu_argument, naming_file, require_file, select_device

PROG = "extract_features"
LEVELDB_UNAVAILABLE = ("the leveldb backend is not supported (no maintained LevelDB binding "
                       "for Python among sppcaffe's dependencies); use lmdb")
CAFFE_USAGE = (
    f"usage: {PROG} WEIGHTS NET BLOB[,BLOB...] DB[,DB...] NUM_BATCHES lmdb [CPU|GPU] "
    "[DEVICE_ID]\n"
    f"       {PROG} spp  --dataset ROOT --weights W --out DIR [options]   (see spp --help)\n"
    f"       {PROG} rcnn --dataset ROOT --weights W --out DIR [options]   (see rcnn --help)\n"
    "\n"
    "Caffe's form: runs NUM_BATCHES forward passes of NET (TEST phase, weights from WEIGHTS)\n"
    "and writes each named blob to its own new database, one Datum (float_data) per item,\n"
    "keyed %010d. Several blobs and databases are separated by commas, in the same order.\n"
    "GPU runs the net on the GPU DEVICE_ID (default 0).")
log = logging.getLogger("sppcaffe")
# The default nets, found from the checkout this module lives in.
MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "models", "zf5_spp")


# ---------------------------------------------------------------------------
# Caffe's form
# ---------------------------------------------------------------------------
def legacy_chw(shape):
    """Blob::channels(), height(), width() of a blob shape (1 for missing
    axes; more than 4 axes is Caffe's error)."""
    if len(shape) > 4:
        raise CliError(f"cannot store a blob of shape {tuple(shape)} as a Datum: Caffe's "
                       "legacy accessors allow at most 4 axes")
    padded = list(shape) + [1] * (4 - len(shape))
    return padded[1], padded[2], padded[3]


def feature_datum(values, chw):
    """The Datum Caffe's tool writes: channels, height, width and the values
    in float_data (no label, no data)."""
    datum = caffe_pb2.Datum(channels=chw[0], height=chw[1], width=chw[2])
    datum.float_data.extend(values.tolist())
    return datum


def _parse_device(argv):
    """The GPU id of Caffe's trailing `[CPU|GPU] [DEVICE_ID]`, or None for
    the CPU (a DEVICE_ID after CPU is ignored, as Caffe does)."""
    mode = argv[6] if len(argv) > 6 else "CPU"
    if mode == "CPU":
        return None
    if mode != "GPU":
        raise CliError(f"unknown mode '{mode}' (expected CPU or GPU)")
    text = argv[7] if len(argv) > 7 else "0"
    try:
        device_id = int(text)
    except ValueError:
        raise CliError(f"DEVICE_ID must be a GPU id such as 0, got '{text}'") from None
    if device_id < 0:
        raise CliError(f"DEVICE_ID must be >= 0, got {device_id}")
    return device_id


def _parse_caffe_args(argv):
    weights, net_path, blob_text, db_text, batches_text, db_type = argv[:6]
    blobs, dbs = blob_text.split(","), db_text.split(",")
    if len(blobs) != len(dbs):
        raise CliError(f"the number of blob names ({len(blobs)}) and dataset names "
                       f"({len(dbs)}) must be equal")
    try:
        num_batches = int(batches_text)
    except ValueError:
        raise CliError(f"NUM_BATCHES must be a whole number, got '{batches_text}'") from None
    if num_batches < 0:
        raise CliError(f"NUM_BATCHES must be >= 0, got {num_batches}")
    backend = db_type.lower()
    if backend == "leveldb":
        raise CliError(LEVELDB_UNAVAILABLE)
    if backend != "lmdb":
        raise CliError(f"unknown database type '{db_type}' (expected lmdb)")
    return weights, net_path, blobs, dbs, num_batches, _parse_device(argv)


def _load_net(net_path, weights):
    for path, what in ((net_path, "net"), (weights, "weights")):
        require_file(path, what)
    try:
        net = Net(net_path, TEST)
    except (LayerError, ValueError, OSError) as err:
        raise CliError(naming_file(net_path, err)) from None
    try:
        net.copy_from(weights)
    except (LayerError, ValueError, OSError) as err:
        raise CliError(naming_file(weights, err)) from None
    net.set_forward_only()
    return net


def _local_batches(net, blob_names, num_batches):
    """The arrays of `blob_names` after each of `num_batches` forward passes."""
    for _ in range(num_batches):
        net.forward_from_to()
        # cpu_data: in GPU mode one download, and no upload back.
        yield [net.blobs[name].cpu_data for name in blob_names]


def caffe_extract(argv):
    """Caffe's extract_features; the exit status."""
    weights, net_path, blobs, dbs, num_batches, device_id = _parse_caffe_args(argv)
    if device_id is None:
        log.info("Using CPU")
    else:
        log.info("Using GPU")
        log.info("Using Device_id=%d", device_id)
        # Under mpiexec: one GPU per local rank, from DEVICE_ID on.
        select_device(parallel.consecutive_gpus(device_id), flag="GPU")
    comm = parallel.world()         # several MPI ranks: rank r runs batches r, r + N, ...
    with contextlib.nullcontext() if comm is None else parallel_detection.batch_shard(comm):
        net = _load_net(net_path, weights)
    for name in blobs:
        if name not in net.blobs:
            raise CliError(f"Unknown feature blob name {name} in the network {net_path}")
    counts = [0] * len(blobs)
    with contextlib.ExitStack() as stack:
        writers = []
        for db in dbs if comm is None or comm.is_root else []:
            log.info("Opening dataset %s", db)
            try:
                writers.append(stack.enter_context(LMDBWriter(db)))
            except DataError as err:
                raise CliError(str(err)) from None
        log.info("Extracting Features")
        batches = (_local_batches(net, blobs, num_batches) if comm is None else
                   parallel_detection.forward_batches(comm, net, blobs, num_batches))
        for arrays in batches:
            for i, (name, writer, array) in enumerate(zip(blobs, writers, arrays)):
                chw = legacy_chw(array.shape)
                rows = array.reshape(array.shape[0] if array.shape else 1, -1)
                for row in rows:
                    writer.put(f"{counts[i]:010d}", feature_datum(row, chw).SerializeToString())
                    counts[i] += 1
                    if counts[i] % TRANSACTION_SIZE == 0:
                        writer.commit()
                        log.info("Extracted features of %d query images for feature blob %s",
                                 counts[i], name)
        for name, count in zip(blobs, counts):
            log.info("Extracted features of %d query images for feature blob %s", count, name)
    log.info("Successfully extracted the features!")
    return 0


# ---------------------------------------------------------------------------
# Detection forms
# ---------------------------------------------------------------------------
def _int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of "
                                         "whole numbers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"'{text}': give positive whole numbers")
    return values


def _float_list(text):
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of "
                                         "numbers") from None


def _add_common(parser):
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, metavar="ROOT",
                      help="a VOC-layout folder (Annotations/, JPEGImages/, ImageSets/Main/)")
    data.add_argument("--split", default="trainval",
                      help="image set of ImageSets/Main (default: %(default)s)")
    data.add_argument("--classes", help="comma-separated class names (default: the dataset's "
                      "synthetic.json classes if present, else VOC's 20)")
    data.add_argument("--limit", type=int, metavar="N", help="only the first N images")
    model = parser.add_argument_group("model")
    model.add_argument("--weights", required=True, help="the trained .caffemodel")
    model.add_argument("--mean-value", type=_float_list, metavar="B,G,R",
                       help="per-channel mean subtracted from the BGR pixels (e.g. "
                            "104,117,123 for BVLC's ImageNet mean; 0 for none)")
    model.add_argument("--mean-file", metavar="MEAN.binaryproto",
                       help="mean image; its per-channel average is subtracted")
    props = parser.add_argument_group("proposals")
    props.add_argument("--mat", metavar="FILE.mat",
                       help="R-CNN's selective_search_data file for the split")
    props.add_argument("--proposals", metavar="DIR",
                       help="per-image <id>.npy/.npz boxes (1-based x1 y1 x2 y2); selective "
                            "search results are computed and saved here for images that have "
                            "none (default: OUT/proposals)")
    props.add_argument("--no-search", action="store_true",
                       help="only read proposals; an image without them is an error")
    props.add_argument("--search-mode", choices=proposals.MODES, default=proposals.FAST,
                       help="selective search mode (default: %(default)s, R-CNN's)")
    props.add_argument("--max-boxes", type=int, default=proposals.MAX_BOXES,
                       help="best-ranked selective search boxes kept (default: %(default)s)")
    props.add_argument("--min-side", type=int, default=proposals.MIN_SIDE,
                       help="drop boxes with a side under this many pixels (default: "
                            "%(default)s, R-CNN's)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="DIR", help="the feature cache folder")
    out.add_argument("--compress", action="store_true",
                     help="write compressed .npz files (smaller, slower)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_gpu_argument(parser)


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, description="Window features for SPP-net detection, cached per image.",
        epilog="Caffe's form: " + CAFFE_USAGE.splitlines()[0].split(": ", 1)[1])
    commands = parser.add_subparsers(dest="command", required=True)
    spp = commands.add_parser(
        "spp", help="SPP-net: conv maps once per scale, windows pooled from conv5",
        description="SPP-net detection features (Sec. 4): the conv net runs once per image and "
                    "scale; every window is pooled from its scale's conv5 map by the spatial "
                    "pyramid, and the features are cached per image.")
    _add_common(spp)
    spp.add_argument("--net", default=os.path.join(MODELS, "detect_conv5.prototxt"),
                     help="conv net with one Input blob (default: "
                          "models/zf5_spp/detect_conv5.prototxt)")
    spp.add_argument("--blob", default="conv5", help="map to pool (default: %(default)s)")
    spp.add_argument("--scales", type=_int_list, default=[688], metavar="S[,S...]",
                     help="shorter sides: 688 (default) or 480,576,688,864,1200")
    spp.add_argument("--max-side", type=int, help="cap on the longer side of a resized image")
    spp.add_argument("--levels", type=_int_list, default=[6, 3, 2, 1], metavar="N[,N...]",
                     help="pyramid bins per side (default: 6,3,2,1)")
    spp.add_argument("--pool", choices=window_pool.POOLS, default=window_pool.MAX)
    spp.add_argument("--mapping", choices=mapping.MAPPINGS, default=mapping.PAPER,
                     help="window -> conv5 cells (default: %(default)s, the appendix)")
    spp.add_argument("--scale-rule", choices=mapping.MAPPINGS,
                     help="scale per window (default: the mapping's)")
    rcnn = commands.add_parser(
        "rcnn", help="R-CNN: every window warped to the input size, full net per window",
        description="R-CNN-style features: each window is cropped with context padding, "
                    "warped to the net's input size and run through the whole net.")
    _add_common(rcnn)
    rcnn.add_argument("--net", default=os.path.join(MODELS, "deploy.prototxt"),
                      help="whole net with one Input blob (default: "
                           "models/zf5_spp/deploy.prototxt)")
    rcnn.add_argument("--blob", default="spp",
                      help="feature to cache (default: %(default)s, SPP mode's kind)")
    rcnn.add_argument("--padding", type=int, default=16,
                      help="context pixels around the window in the crop (default: 16)")
    rcnn.add_argument("--batch-size", type=int, default=128,
                      help="windows per forward pass (default: %(default)s)")
    return parser


def dataset_classes(root, classes):
    """Class names: given, from the synthetic set's synthetic.json, or VOC's."""
    if classes:
        return tuple(c.strip() for c in classes.split(",") if c.strip())
    described = os.path.join(root, "synthetic.json")
    if os.path.isfile(described):
        with open(described, encoding="utf-8") as f:
            return tuple(json.load(f)["classes"])
    return voc.VOC_CLASSES


def _mean(args, channels):
    if args.mean_value is None and args.mean_file is None:
        raise CliError("give the mean the net was trained with: --mean-value B,G,R (e.g. "
                       "104,117,123 for BVLC's ImageNet mean, 0 for none) or --mean-file")
    if args.mean_file is not None:
        require_file(args.mean_file, "mean file")
    try:
        return features.load_mean(args.mean_value, args.mean_file, channels)
    except ValueError as err:
        raise CliError(str(err)) from None


def _extractor(args, net):
    channels = net.blobs[features.input_name(net)].shape[1]
    mean = _mean(args, channels)
    if args.command == "spp":
        return features.SPPExtractor(net, args.scales, args.levels, args.pool, args.mapping,
                                     args.scale_rule, mean, args.blob, args.max_side)
    return features.RCNNExtractor(net, args.blob, mean, args.padding, args.batch_size)


def _feature_dim(args, net, extractor):
    shape = net.blobs[args.blob].shape
    if args.command == "spp":
        return window_pool.output_length(extractor.levels, shape[1])
    return int(np.prod(shape[1:]))


def detection_extract(args):
    """The spp and rcnn subcommands; the exit status."""
    select_device(args.gpu)
    root = args.dataset
    if not os.path.isdir(root):
        raise CliError(f"dataset folder '{root}' does not exist")
    classes = dataset_classes(root, args.classes)
    dataset = voc.VOCDataset(root, args.split, classes)
    ids = dataset.image_ids[:args.limit] if args.limit else dataset.image_ids
    if args.mat is not None and args.proposals is not None:
        raise CliError("give --mat or --proposals, not both")
    proposal_dir = args.proposals
    if args.mat is None and proposal_dir is None:
        proposal_dir = os.path.join(args.out, "proposals")
    source = proposals.ProposalSource(proposal_dir, args.mat, compute=not args.no_search,
                                      mode=args.search_mode, max_boxes=args.max_boxes,
                                      min_side=args.min_side)
    net = _load_net(args.net, args.weights)
    try:
        extractor = _extractor(args, net)
    except (KeyError, ValueError) as err:
        raise CliError(f"{args.net}: {err}") from None
    meta = dict(extractor.describe(), net=os.path.abspath(args.net),
                weights=os.path.abspath(args.weights), dataset=os.path.abspath(root),
                classes=list(classes), num_classes=len(classes),
                feature_dim=_feature_dim(args, net, extractor), proposals=source.describe(),
                boxes="x1 y1 x2 y2, 1-based, pixel-inclusive (VOC)", format_version=1)
    log.info("%s features of %d images of %s/%s into %s%s", args.command.upper(), len(ids), root,
             args.split, args.out, "" if args.gpu is None else f" on GPU {args.gpu}")
    progress = not args.no_progress and sys.stderr.isatty()
    comm = parallel.world()         # several MPI ranks: the images split over them
    if comm is None:
        computed, skipped = features.cache_features(dataset, source, extractor, args.out, meta,
                                                    ids, progress=progress,
                                                    compress=args.compress)
    else:
        computed, skipped = parallel_detection.cache_features(
            comm, dataset, source, extractor, args.out, meta, ids, compress=args.compress)
    log.info("Done: %d images computed, %d already cached, in %s", computed, skipped, args.out)
    return 0


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------
# Errors about the user's files and flags, shown as one message (with the
# image it happened on): the package's own errors are ValueErrors.
USER_ERRORS = (CliError, OSError, ValueError)


@parallel.end_all_on_failure      # under mpiexec: a failing rank stops them all
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        if not argv:
            print(CAFFE_USAGE, file=sys.stderr)
            return 1
        print(CAFFE_USAGE)
        return 0
    restore_logging = configure_logging()
    try:
        if argv[0] in ("spp", "rcnn"):
            return detection_extract(build_parser().parse_args(argv))
        if len(argv) < 6:
            print(CAFFE_USAGE, file=sys.stderr)
            return 1
        return caffe_extract(argv)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (finished files are kept; run again to resume)",
              file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        notes = "".join(f"\n  {note}" for note in getattr(err, "__notes__", ()))
        print(f"{PROG}: error: {err}{notes}", file=sys.stderr)
        return 1
    finally:
        # A caller in the same process finds the mode as it was (CPU).
        backends.set_mode_cpu()
        restore_logging()


if __name__ == "__main__":
    sys.exit(main())
