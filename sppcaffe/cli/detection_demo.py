"""detection_demo: SPP-net object detection end to end on the generated
VOC-format set (sppcaffe.detection.synthetic), no download, in a few
minutes on two cores.

    tools/detection_demo [--workdir work/detection_demo] [--images 120]

Steps (each folder is kept in the work directory and reused by a rerun):
1. data/        the synthetic set: 4 classes (cat, coin, digit, face) pasted
                on photographs, VOC layout, splits trainval (75 %) / test.
2. proposals/   selective search (R-CNN's fast mode) per image, run on the
                image shrunk to --search-side pixels (speed), at most
                --max-boxes boxes.
3. trunk.caffemodel
                the convolutional trunk (models/detection/demo/trunk.prototxt,
                5 conv layers, stride 16, conv5 of 64 maps).  There are no
                ImageNet weights here, so its filters are random (He
                initialization, seeded), with conv1 scaled once so that the
                pooled features of the training images have a mean norm
                of 20.  (--trunk-weights uses trained ones instead.)
4. cache/       SPP features: the trunk runs ONCE per image and scale
                (--scales, default one: shorter side 800, about twice the
                images' 300-500, as SPP-net's 688 is for VOC's ~375),
                and every window is pooled from its conv5 map by a 4x4, 2x2,
                1x1 pyramid (1344 numbers).
5. training on trainval: SVMs on the pooled features ("pool5"); fc6-fc8
   fine-tuned on the cached features (solvers/detection_demo_finetune.
   prototxt) and SVMs on the fine-tuned fc7 ("ftfc7"); box regressors.
6. test: every proposal of every test image scored, box regression, NMS
   0.3, VOC AP (11-point and area, difficult objects ignored), against
   uniformly random scores on the same windows; pictures/ with the
   detections of a few test images.  With --set test.svd_fc6_rank=K
   (and/or svd_fc7_rank) the fine-tuned fc7 SVMs are also tested on fc6/fc7
   factorized by truncated SVD ("ftfc7 svd" runs): the mAP it costs.
7. R-CNN mode on --rcnn-images test images: the same trunk run on every
   window warped to --rcnn-crop pixels, scored by the same SVMs; the time
   per image of both modes.

With --gpu ID every net (trunk, fine-tuning, fc layers) runs on that GPU;
selective search, the SVMs and box regression stay on the CPU.

The numbers are written to results.json.
"""
import argparse
import json
import logging
import os
import shutil
import sys
import time

import numpy as np

from .. import Net, TEST, set_random_seed
from ..detection import (bbox_regression, cache, detect, features, finetune, proposals, svm,
                         synthetic, voc)
from ..detection.config import load_config
from ..io.atomic import atomic_write
from . import add_gpu_argument, device_for
from .progress import run_main
from .train_svms import CachedSet

PROG = "detection_demo"
log = logging.getLogger("sppcaffe")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRUNK = os.path.join(ROOT, "models", "detection", "demo", "trunk.prototxt")
SOLVER = os.path.join(ROOT, "solvers", "detection_demo_finetune.prototxt")
MEAN = (104.0, 117.0, 123.0)     # BGR, subtracted from the pixels (BVLC's ImageNet mean)
TARGET_NORM = 20.0               # the calibrated trunk's mean pooled-feature norm
PICTURE_RUN = "ftfc7 bb"
SPLITS = ("trainval", "test")


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="SPP-net detection walkthrough on a generated VOC-format set: proposals, "
                    "SPP features, SVMs (with and without fine-tuning), box regression, VOC "
                    "AP against random scoring, pictures, and R-CNN mode's time.",
        epilog="Everything is kept in the work directory; a rerun reuses what is complete.")
    parser.add_argument("--workdir", default="work/detection_demo",
                        help="where data, caches and results go (default: %(default)s)")
    parser.add_argument("--images", type=int, default=120,
                        help="images in the generated set (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="data and trunk seed (default: 0)")
    parser.add_argument("--scales", type=_scales, default=(800,), metavar="S[,S...]",
                        help="shorter image sides of the conv maps; each window is pooled at "
                             "the scale where its area is closest to 224x224 (default: 800)")
    parser.add_argument("--search-side", type=int, default=200,
                        help="selective search on images shrunk to this longer side "
                             "(default: %(default)s)")
    parser.add_argument("--max-boxes", type=int, default=500,
                        help="proposals kept per image (default: %(default)s)")
    parser.add_argument("--finetune-iterations", type=int,
                        help="fine-tuning mini-batches (default: the demo solver's 800)")
    parser.add_argument("--trunk-weights", help="a trained trunk .caffemodel instead of the "
                                                "calibrated random filters")
    parser.add_argument("--rcnn-images", type=int, default=2,
                        help="test images run in R-CNN mode for the time comparison (0: "
                             "skip; default: %(default)s)")
    parser.add_argument("--rcnn-crop", type=int, default=112,
                        help="R-CNN mode's warped window size (default: %(default)s)")
    parser.add_argument("--pictures", type=int, default=8,
                        help="test images drawn with their detections (default: %(default)s)")
    parser.add_argument("--config", help="detection settings YAML (see tools/train_svms)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one detection setting (repeatable)")
    parser.add_argument("--verbose", action="store_true", help="log every training step")
    add_gpu_argument(parser)
    return parser


def _scales(text):
    try:
        scales = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of whole numbers") from None
    if not scales or min(scales) < 32:
        raise argparse.ArgumentTypeError(f"'{text}': scales must be at least 32 pixels")
    return scales


class Stages:
    """Wall-clock seconds per step, printed as each step ends."""

    def __init__(self):
        self.seconds = {}

    def run(self, name, function, *args, **kwargs):
        started = time.perf_counter()
        result = function(*args, **kwargs)
        self.seconds[name] = time.perf_counter() - started
        print(f"[{self.seconds[name]:6.1f} s] {name}", flush=True)
        return result


# ---- 1-3: data, proposals, trunk -------------------------------------------------

def make_data(workdir, num_images, seed):
    """The synthetic set in workdir/data, reused when it was made with the
    same image count and seed; otherwise made anew, and everything computed
    from the old one (proposals, trunk, caches) removed."""
    root = os.path.join(workdir, "data")
    described = os.path.join(root, "synthetic.json")
    if os.path.exists(described):
        with open(described, encoding="utf-8") as f:
            made = json.load(f)
        if (made.get("num_images"), made.get("seed")) == (num_images, seed):
            return root
    for stale in ("proposals", "cache", "trunk.caffemodel"):
        path = os.path.join(workdir, stale)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    return synthetic.make_synthetic_voc(root, num_images, seed, overwrite=True)


def trunk_levels(net):
    """The pyramid levels of the trunk's SPP layer (the features' layout)."""
    return tuple(int(n) for n in net.layer_dict["spp"].levels)


def calibrate_trunk(net, extractor, dataset, count=8):
    """Scale conv1's random filters so that the pooled features of the whole
    image and its quarters have a mean norm of TARGET_NORM: with zero biases
    and ReLUs the trunk is positively homogeneous, so every feature scales by
    the same factor, and the fc layers' fillers then see inputs of a sane size."""
    norms = []
    for image_id in dataset.image_ids[:count]:
        image = dataset.read_image(image_id)
        h, w = image.shape[:2]
        boxes = np.array([[1, 1, w, h], [1, 1, w // 2, h // 2], [w // 2, h // 2, w, h]])
        norms.append(np.linalg.norm(extractor(image, boxes).feat, axis=1).mean())
    factor = TARGET_NORM / float(np.mean(norms))
    net.params["conv1"][0].data[...] *= np.float32(factor)
    return factor


def make_trunk(workdir, dataset, args):
    """(net, extractor, weights path): the trunk with calibrated random
    filters (saved as trunk.caffemodel) or the given weights."""
    set_random_seed(args.seed)
    net = Net(TRUNK, TEST, weights=args.trunk_weights)
    extractor = features.SPPExtractor(net, scales=args.scales, levels=trunk_levels(net),
                                      blob="conv5", mean=MEAN)
    if args.trunk_weights:
        return net, extractor, os.path.abspath(args.trunk_weights)
    path = os.path.join(workdir, "trunk.caffemodel")
    if os.path.exists(path):
        net.copy_from(path)
    else:
        factor = calibrate_trunk(net, extractor, dataset)
        log.info("random trunk: conv1 scaled by %.4g", factor)
        net.save(path)
    return net, extractor, path


# ---- 4: features ----------------------------------------------------------------------

def extract(workdir, root, classes, source, extractor, trunk_weights):
    caches = {}
    for split in SPLITS:
        dataset = voc.VOCDataset(root, split, classes)
        out = os.path.join(workdir, "cache", split)
        meta = dict(extractor.describe(), net=TRUNK, weights=trunk_weights, dataset=root,
                    split=split, classes=list(classes), num_classes=len(classes),
                    feature_dim=int(extractor.net.blobs["spp"].shape[1]),
                    proposals=source.describe())
        try:
            features.cache_features(dataset, source, extractor, out, meta, progress=False)
        except cache.CacheError:
            # Made with other settings (scale, proposals, trunk): start again.
            shutil.rmtree(out)
            features.cache_features(dataset, source, extractor, out, meta, progress=False)
        caches[split] = CachedSet(out)
    return caches


# ---- 5: training ------------------------------------------------------------------------

def train_svms_on(train, transform, config, fc_net=None, fc_weights=None):
    model, _ = svm.train_model(train.load, train.image_ids, train.classes, transform,
                               config.features, config.svm, fc_net, fc_weights)
    return model


def finetune_fc(workdir, train, config):
    solver = finetune.finetune(train.load, train.image_ids, len(train.classes), config.finetune,
                               solver_path=SOLVER)
    path = os.path.join(workdir, "fc_finetuned.caffemodel")
    solver.net.save(path)
    log.info("fine-tuning: smoothed loss %.3f after %d iterations", solver.smoothed_loss,
             solver.iter)
    return path, float(solver.smoothed_loss)


# ---- 6: test ------------------------------------------------------------------------------

def test_runs(test, models, regressor, config, annotations):
    """Per run: {metric: Evaluation}, the detections per image and per class,
    and the seconds per image.  `models`: {run name: (SVMModel, its
    FeatureTransform)}."""
    sizes = detect.image_sizes(annotations)
    evaluations, detections, by_class_runs, seconds = {}, {}, {}, {}
    for name, (model, transform) in models.items():
        scorer = detect.SVMScorer(model, transform)
        for suffix, reg in (("", None), (" bb", regressor)):
            by_class, per_image, spent = detect.detect_all(
                test.load, test.image_ids, test.classes, scorer, config.test, reg, sizes)
            evaluations[name + suffix] = detect.evaluate_both(by_class, annotations, test.classes)
            detections[name + suffix] = per_image
            by_class_runs[name + suffix] = by_class
            seconds[name + suffix] = spent
    random_scores = detect.RandomScorer(len(test.classes), seed=0)
    by_class, _, _ = detect.detect_all(test.load, test.image_ids, test.classes, random_scores,
                                       config.test)
    evaluations["random"] = detect.evaluate_both(by_class, annotations, test.classes)
    return evaluations, detections, by_class_runs, seconds


# ---- 7: R-CNN mode -------------------------------------------------------------------------

def rcnn_mode(test, dataset, spp_extractor, model, regressor, config, annotations, args):
    """Time per image of SPP and R-CNN features on the first test images and
    the mAP of each mode there, with the same SVMs and regressors."""
    rcnn = features.RCNNExtractor(spp_extractor.net, blob="spp", mean=MEAN,
                                  padding=round(16 * args.rcnn_crop / 224),
                                  crop_size=args.rcnn_crop)
    ids = test.image_ids[:args.rcnn_images]
    timings = {"spp": [], "rcnn": []}
    entries = {"spp": {}, "rcnn": {}}
    for image_id in ids:
        image = dataset.read_image(image_id)
        entry = test.load(image_id)
        for mode, extractor in (("spp", spp_extractor), ("rcnn", rcnn)):
            started = time.perf_counter()
            result = extractor(image, entry["boxes"])
            features.synchronize()
            timings[mode].append(time.perf_counter() - started)
            # Scored from where the features are (the device in GPU mode).
            entries[mode][image_id] = dict(entry, feat=result)
    chosen = {i: annotations[i] for i in ids}
    sizes = detect.image_sizes(chosen)
    scorer = detect.SVMScorer(model, model.transform())
    maps = {}
    for mode in entries:
        by_class, _, _ = detect.detect_all(entries[mode].__getitem__, ids, test.classes, scorer,
                                           config.test, regressor, sizes)
        maps[mode] = detect.evaluate_both(by_class, chosen, test.classes)
    windows = float(np.mean([len(test.load(i)["boxes"]) for i in ids]))    # GT rows too
    return {mode: float(np.mean(t)) for mode, t in timings.items()}, maps, windows


# ---- the walkthrough ------------------------------------------------------------------------

def run(args):
    """The --gpu device (if any) for the walkthrough, and CPU mode again
    after it, so that a caller in the same process finds the mode as it was."""
    with device_for(args.gpu):
        return walkthrough(args)


def walkthrough(args):
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    config = load_config(args.config, args.set)
    if args.finetune_iterations:
        config = load_config(args.config, args.set +
                             [f"finetune.max_iter={args.finetune_iterations}",
                              f"finetune.stepsize={max(1, args.finetune_iterations * 3 // 4)}"])
    stages = Stages()
    classes = synthetic.SYNTHETIC_CLASSES
    root = stages.run("1. synthetic VOC-format set", make_data, workdir, args.images, args.seed)
    # One folder per search setting: boxes of other settings are not mixed in.
    source = proposals.ProposalSource(os.path.join(workdir, "proposals",
                                                   f"side{args.search_side}_max{args.max_boxes}"),
                                      max_boxes=args.max_boxes,
                                      max_image_side=args.search_side)
    trainval = voc.VOCDataset(root, "trainval", classes)
    testset = voc.VOCDataset(root, "test", classes)
    print(f"    {len(trainval)} trainval and {len(testset)} test images, classes "
          f"{', '.join(classes)}")
    net, extractor, trunk_weights = stages.run("2. conv trunk", make_trunk, workdir, trainval,
                                               args)
    caches = stages.run("3. proposals + SPP features (trainval, test)", extract, workdir, root,
                        classes, source, extractor, trunk_weights)
    train, test = caches["trainval"], caches["test"]
    windows = np.mean([len(detect.proposal_rows(test.load(i))) for i in test.image_ids])
    print(f"    {windows:.0f} windows per test image, {train.feature_dim} features each")

    pool5 = stages.run("4. SVMs on pool5 (hard-negative mining)", train_svms_on, train,
                       svm.FeatureTransform("pool5"), config)
    fc_weights, loss = stages.run("5. fine-tuning fc6-fc8 on cached features", finetune_fc,
                                  workdir, train, config)
    fc_net = finetune.solver_net_path(SOLVER)
    ftfc7 = stages.run("6. SVMs on fine-tuned fc7", train_svms_on, train,
                       svm.FeatureTransform.from_files("fc7", fc_net, fc_weights), config,
                       fc_net, fc_weights)
    regressor = stages.run("7. box regression (ridge on pool5)",
                           bbox_regression.train_regressor, train.load, train.image_ids,
                           train.classes, config.bbox_regression)
    for name, model in (("svms_pool5.npz", pool5), ("svms_ftfc7.npz", ftfc7)):
        model.save(os.path.join(workdir, name))
    regressor.save(os.path.join(workdir, "bbox_reg.npz"))

    annotations = {i: testset.annotation(i) for i in test.image_ids}
    runs = {"pool5": (pool5, pool5.transform()), "ftfc7": (ftfc7, ftfc7.transform())}
    if config.test.svd_ranks:
        # The same SVMs on fc6/fc7 factorized by truncated SVD (test-time only).
        runs["ftfc7 svd"] = (ftfc7, ftfc7.transform(svd_ranks=config.test.svd_ranks))
    evaluations, detections, by_class, seconds = stages.run(
        "8. detection on the test images", test_runs, test, runs, regressor, config, annotations)
    print()
    print(detect.ap_table(evaluations))
    pictures = os.path.join(workdir, "pictures")
    shutil.rmtree(pictures, ignore_errors=True)
    chosen = test.image_ids[:args.pictures]
    thresholds = detect.precision_thresholds(by_class[PICTURE_RUN],
                                             evaluations[PICTURE_RUN]["voc07"],
                                             config.test.picture_precision)
    detect.write_pictures(pictures, detections[PICTURE_RUN], testset.read_image, classes,
                          thresholds, config.test.picture_max, chosen)
    print(f"\n{len(chosen)} pictures of '{PICTURE_RUN}' detections in {pictures} (each class "
          f"down to its {100 * config.test.picture_precision:.0f} % precision point)")

    results = {"images": {"trainval": len(train.image_ids), "test": len(test.image_ids)},
               "windows_per_test_image": float(windows), "finetune_loss": loss,
               "mAP": {run: {m: e.mean_ap for m, e in by_metric.items()}
                       for run, by_metric in evaluations.items()},
               "AP": {run: {m: e.ap_by_class() for m, e in by_metric.items()}
                      for run, by_metric in evaluations.items()},
               "detect_seconds_per_image": seconds}
    if args.rcnn_images > 0:
        timing, maps, rcnn_windows = stages.run(
            f"9. R-CNN mode vs SPP on {args.rcnn_images} test images", rcnn_mode, test, testset,
            extractor, ftfc7, regressor, config, annotations, args)
        print(f"    features per image ({rcnn_windows:.0f} windows): SPP {timing['spp']:.2f} s, "
              f"R-CNN ({args.rcnn_crop}x{args.rcnn_crop} crops) {timing['rcnn']:.2f} s: SPP is "
              f"{timing['rcnn'] / timing['spp']:.1f}x faster")
        print(f"    ftfc7 bb mAP on those images (11-point): SPP "
              f"{detect.percent(maps['spp']['voc07'].mean_ap)}%, R-CNN "
              f"{detect.percent(maps['rcnn']['voc07'].mean_ap)}%")
        results["rcnn_mode"] = {"images": args.rcnn_images, "crop": args.rcnn_crop,
                                "seconds_per_image": timing,
                                "mAP_voc07": {m: v["voc07"].mean_ap for m, v in maps.items()}}
    results["stage_seconds"] = stages.seconds
    with atomic_write(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    best = max((r for r in evaluations if r != "random"),
               key=lambda r: evaluations[r]["voc07"].mean_ap)
    print(f"\nmAP (VOC07 11-point) on {len(test.image_ids)} test images: "
          f"{best} {detect.percent(evaluations[best]['voc07'].mean_ap)}% "
          f"(area AP {detect.percent(evaluations[best]['area'].mean_ap)}%); random scoring "
          f"{detect.percent(evaluations['random']['voc07'].mean_ap)}%.  Total "
          f"{sum(stages.seconds.values()):.0f} s; results in {workdir}/results.json")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.images < 8:
        print(f"{PROG}: error: give at least 8 images", file=sys.stderr)
        return 2
    return run_main(PROG, run, args,
                    interrupted="interrupted (finished steps are kept in the work directory)",
                    level=logging.INFO if args.verbose else logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
