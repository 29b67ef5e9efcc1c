"""test_detection: SPP-net detection on a feature cache, evaluated as the
Pascal VOC devkit does.

    test_detection --cache work/cache/test --svms work/svms.npz \\
        [--bbox-reg work/bbox_reg.npz] [--nms 0.3] [--pictures work/pictures] \\
        [--year 2007|2010] [--random-baseline]

Every proposal of every cached image is scored by the SVMs (ground-truth
rows skipped; fc6/fc7 factorized by truncated SVD when the config's
test.svd_fc6_rank / svd_fc7_rank say so), optionally moved by the box
regressors, suppressed per class by NMS (IoU > 0.3 with a better box;
equal scores: the lower window index wins), and the detections are
evaluated against the dataset's annotations (the cache's meta.json names
the dataset folder) with difficult objects ignored.  Prints the per-class
AP table with VOC2007's 11-point AP and VOC2010+'s area AP; --year chooses
which one the last line reports.  A cache made in R-CNN mode
(tools/extract_features rcnn) is tested the same way, with the same SVMs.
With --gpu ID the fc layers computing fc6/fc7 run on that GPU.
`tools/test_net --detection CONFIG ...` runs this tool.  Under `mpiexec
-n N` the images are split over the ranks and rank 0 evaluates
(sppcaffe/parallel/detection.py).
"""
import argparse
import json
import logging
import os
import sys

from .. import parallel
from ..detection import detect, voc
from ..detection.bbox_regression import BBoxRegressor
from ..detection.config import DetectionConfigError, load_config
from ..detection.evaluation import AREA, VOC07
from ..detection.svm import SVMModel
from ..io.atomic import atomic_write
from ..parallel import detection as parallel_detection
from .progress import run_main
from . import add_gpu_argument, device_for, require_writable, require_writable_folder
from .train_svms import CachedSet, CliError, add_config_arguments

PROG = "test_detection"
log = logging.getLogger("sppcaffe")
YEAR_METRIC = {2007: VOC07, 2010: AREA}


def build_parser(prog=PROG):
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Detect with trained SVMs on a feature cache and print the VOC AP of "
                    "every class (11-point and area) and the mAP.",
        epilog="Example:\n  %(prog)s --cache work/cache/test --svms work/svms.npz "
               "--bbox-reg work/bbox_reg.npz --pictures work/pictures")
    parser.add_argument("--cache", required=True, metavar="DIR", help="the test feature cache")
    parser.add_argument("--svms", required=True, metavar="SVMS.npz",
                        help="SVMs written by train_svms")
    parser.add_argument("--bbox-reg", metavar="BBOX.npz", help="box regressors (train_svms)")
    add_config_arguments(parser, config_flag=prog == PROG)
    parser.add_argument("--nms", type=float, help="NMS IoU threshold (default: test.nms, 0.3)")
    parser.add_argument("--year", type=int, choices=sorted(YEAR_METRIC), default=2007,
                        help="AP of the last line: 2007 = 11-point, 2010 = area (both are "
                             "printed in the table; default: %(default)s)")
    parser.add_argument("--dataset", metavar="ROOT",
                        help="VOC-layout folder with the annotations (default: meta.json's)")
    parser.add_argument("--split", default="test",
                        help="image set naming the images (default: %(default)s)")
    parser.add_argument("--fc-net", help="override the fc net recorded in the SVM file")
    parser.add_argument("--fc-weights", help="override the fc weights recorded in the SVM file")
    parser.add_argument("--pictures", metavar="DIR",
                        help="write a PNG per image with its detections, per class down to "
                             "the rank where precision falls below test.picture_precision")
    parser.add_argument("--pictures-limit", type=int, default=20, metavar="N",
                        help="pictures of the first N images only (default: %(default)s)")
    parser.add_argument("--random-baseline", action="store_true",
                        help="also evaluate uniformly random scores on the same windows")
    parser.add_argument("--results", metavar="FILE.json", help="write the APs as JSON")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N images")
    add_gpu_argument(parser)
    return parser


def dataset_for(data, args, classes):
    root = args.dataset or data.meta.get("dataset")
    if not root or not os.path.isdir(root):
        raise CliError(f"no dataset folder for the annotations ({root!r}): give --dataset ROOT")
    return voc.VOCDataset(root, data.meta.get("split", args.split), classes)


def results_json(evaluations, seconds):
    return {run: {metric: {"mAP": ev.mean_ap, "AP": ev.ap_by_class()}
                  for metric, ev in by_metric.items()}
            for run, by_metric in evaluations.items()} | {"seconds_per_image": seconds}


def run(args):
    """The --gpu device (if any) for the run, and CPU mode again after it,
    so that a caller in the same process finds the mode as it was."""
    with device_for(args.gpu):
        return detect_and_evaluate(args)


def detect_and_evaluate(args):
    # Several MPI ranks: the images split over them, rank 0 evaluates and
    # writes (parallel/detection.py).
    comm = parallel.world()
    root = comm is None or comm.is_root
    try:
        settings = list(args.set) + ([f"test.nms={args.nms}"] if args.nms is not None else [])
        config = load_config(args.config, settings)
    except DetectionConfigError as err:
        raise CliError(str(err)) from None
    if args.results and root:
        require_writable(args.results, "the results")
    if args.pictures and root:
        require_writable_folder(args.pictures, "the pictures")
    data = CachedSet(args.cache, limit=args.limit)
    model = SVMModel.load(args.svms)
    if list(model.classes) != list(data.classes):
        raise CliError(f"the SVMs of {args.svms} are for classes {model.classes}, the cache "
                       f"{args.cache} has {data.classes}")
    regressor = BBoxRegressor.load(args.bbox_reg) if args.bbox_reg else None
    dataset = dataset_for(data, args, model.classes)
    annotations = {i: dataset.annotation(i) for i in data.image_ids}
    ranks = config.test.svd_ranks
    if ranks and model.feature_layer == "pool5":
        log.warning("the SVMs of %s read pool5: no fc layer to factorize (test.svd_* ignored)",
                    args.svms)
        ranks = {}
    elif ranks:
        log.info("fc layers by truncated SVD: %s",
                 ", ".join(f"{name} rank {rank}" for name, rank in ranks.items()))
    transform = model.transform(config.features.batch_size, args.fc_net, args.fc_weights, ranks)
    scorer = detect.SVMScorer(model, transform)
    runs = {}
    if comm is None:
        detections, per_image, seconds = detect.detect_all(
            data.load, data.image_ids, model.classes, scorer, config.test, regressor,
            detect.image_sizes(annotations))
    else:
        detections, per_image, seconds = parallel_detection.detect_all(
            comm, data.load, data.image_ids, model.classes, scorer, config.test, regressor,
            detect.image_sizes(annotations))
        if not root:
            return 0
    name = "svm" + (" svd" if ranks else "") + (" bb" if regressor else "")
    runs[name] = detect.evaluate_both(detections, annotations, model.classes)
    log.info("%d images, %.3f s per image (scoring, regression, NMS)", len(data.image_ids),
             seconds)
    if args.random_baseline:
        random_detections, _, _ = detect.detect_all(
            data.load, data.image_ids, model.classes,
            detect.RandomScorer(len(model.classes)), config.test)
        runs["random"] = detect.evaluate_both(random_detections, annotations, model.classes)
    print(detect.ap_table(runs))
    metric = YEAR_METRIC[args.year]
    summary = ", ".join(f"{run} {detect.percent(r[metric].mean_ap)}%" for run, r in runs.items())
    print(f"mAP ({detect.METRIC_NAMES[metric]} AP, VOC{args.year} devkit) over "
          f"{len(data.image_ids)} images: {summary}")
    if args.pictures:
        chosen = data.image_ids[:args.pictures_limit]
        thresholds = detect.precision_thresholds(detections, runs[name][metric],
                                                 config.test.picture_precision)
        paths = detect.write_pictures(args.pictures, per_image, dataset.read_image,
                                      model.classes, thresholds, config.test.picture_max, chosen)
        log.info("%d pictures written to %s", len(paths), args.pictures)
    if args.results:
        with atomic_write(args.results, "w") as f:
            json.dump(results_json(runs, seconds), f, indent=1)
    return 0


@parallel.end_all_on_failure      # under mpiexec: a failing rank stops them all
def main(argv=None, prog=PROG):
    """`prog` names the command in messages (tools/test_net --detection
    runs this tool under its own name)."""
    return run_main(prog.split()[0], run, build_parser(prog).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
