"""train_svms: SPP-net's detection training on a feature cache (Sec. 4.1):
optionally fine-tune fc6-fc8 on the cached pooled features, then train
one linear SVM per class with hard-negative mining (R-CNN's recipe), and
optionally the bounding-box regressors.

    train_svms --cache work/cache/trainval --output work/svms.npz \\
        [--config detection.yml] [--set svm.C=0.001 ...] \\
        [--weights zf5_spp.caffemodel] [--finetune work/fc_finetuned.caffemodel] \\
        [--bbox-reg work/bbox_reg.npz] [--cls-score work/cls_score.caffemodel]

The SVMs read `features.layer` of the config: pool5 (the cached features
themselves) or fc6/fc7, computed from them by the fc net (--fc-net, by
default the fine-tuning solver's net) with --weights, or with the
fine-tuned weights when --finetune is given.  Settings: see
sppcaffe/detection/config.py (unknown keys are errors).  Under `mpiexec
-n N` the classes' SVMs are split over the ranks (sppcaffe/parallel/
detection.py).
"""
import argparse
import logging
import os
import sys
import time

from .. import parallel
from ..detection import bbox_regression, cache, finetune, svm
from ..detection.config import DetectionConfigError, dump_config, load_config
from ..parallel import detection as parallel_detection
from .progress import run_main
from . import CliError, require_file, require_writable

PROG = "train_svms"
log = logging.getLogger("sppcaffe")
PRELOAD_LIMIT = 2 << 30      # caches smaller than this are read into memory once


class CachedSet:
    """A feature cache: its image ids, meta.json, class names and a
    `load(image_id)` that keeps every record in memory when the whole cache
    is under `preload_limit` bytes (training reads each image several times)."""

    def __init__(self, cache_dir, preload_limit=PRELOAD_LIMIT, limit=None):
        self.cache_dir = cache_dir
        try:
            self.meta = cache.meta(cache_dir)
            self.image_ids = cache.image_ids(cache_dir)
        except cache.CacheError as err:
            raise CliError(str(err)) from None
        if limit:
            self.image_ids = self.image_ids[:limit]
        if not self.image_ids:
            raise CliError(f"the feature cache {cache_dir} holds no image")
        self.classes = list(self.meta.get("classes") or [])
        if not self.classes:
            raise CliError(f"{os.path.join(cache_dir, cache.META_FILE)} lists no 'classes'")
        size = sum(os.path.getsize(cache.image_path(cache_dir, i)) for i in self.image_ids)
        self._memory = {} if size <= preload_limit else None

    def load(self, image_id):
        if self._memory is None:
            return cache.load(self.cache_dir, image_id)
        if image_id not in self._memory:
            self._memory[image_id] = cache.load(self.cache_dir, image_id)
        return self._memory[image_id]

    @property
    def feature_dim(self):
        return int(self.load(self.image_ids[0])["feat"].shape[1])


def add_config_arguments(parser, config_flag=True):
    """--config and --set; `config_flag` False leaves --config out of the
    help (tools/test_net --detection takes the file as its own value)."""
    parser.add_argument("--config", metavar="FILE.yml",
                        help="detection settings (YAML; sections features, svm, finetune, "
                             "bbox_regression, test)" if config_flag else argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one setting, e.g. --set svm.C=0.01 (repeatable)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train SPP-net's detection SVMs (one per class, hard-negative mining) on "
                    "a feature cache of tools/extract_features; optionally fine-tune the fc "
                    "layers first and train box regressors.",
        epilog="Example:\n  %(prog)s --cache work/cache/trainval --output work/svms.npz "
               "--set features.layer=pool5")
    parser.add_argument("--cache", required=True, metavar="DIR",
                        help="the training split's feature cache")
    parser.add_argument("--output", required=True, metavar="SVMS.npz",
                        help="where to write the SVMs (W, b, feature scale, classes)")
    add_config_arguments(parser)
    parser.add_argument("--fc-net", metavar="PROTOTXT",
                        help="net computing fc6/fc7 from the Input blob 'spp' (default: the net "
                             "of the fine-tuning solver)")
    parser.add_argument("--weights", metavar="CAFFEMODEL",
                        help="weights of fc6/fc7 (pre-trained; the start of fine-tuning)")
    parser.add_argument("--finetune", metavar="OUT.caffemodel",
                        help="fine-tune fc6-fc8 first (solver: --solver or finetune.solver) "
                             "and write the weights here; the SVMs then use them")
    parser.add_argument("--solver", metavar="PROTOTXT", help="the fine-tuning solver")
    parser.add_argument("--bbox-reg", metavar="OUT.npz",
                        help="also train the box regressors (pooled conv5 features)")
    parser.add_argument("--cls-score", metavar="OUT.caffemodel",
                        help="also write the SVMs as an InnerProduct layer 'cls_score'")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N images")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the feature-norm sample (default: 0)")
    return parser


def _check_file(path, what):
    if path is not None:
        require_file(path, what)


def run(args):
    # Several MPI ranks: the classes' SVMs split over them (parallel/detection.py);
    # rank 0 alone fine-tunes, trains the box regressors and writes the files.
    comm = parallel.world()
    root = comm is None or comm.is_root
    try:
        config = load_config(args.config, args.set)
    except DetectionConfigError as err:
        raise CliError(str(err)) from None
    _check_file(args.weights, "weights")
    _check_file(args.fc_net, "fc net")
    # Every output is written after minutes of work: check them all now.
    for path, what in ((args.output, "the SVMs"), (args.finetune, "the fine-tuned weights"),
                       (args.bbox_reg, "the box regressors"), (args.cls_score, "cls_score")):
        if path is not None and root:
            require_writable(path, what)
    solver_path = args.solver or config.finetune.solver
    data = CachedSet(args.cache, limit=args.limit)
    log.info("%d training images of %s, %d classes, %d features per window", len(data.image_ids),
             args.cache, len(data.classes), data.feature_dim)
    log.info("settings:\n%s", dump_config(config))
    fc_net, fc_weights = args.fc_net, args.weights
    timings = {}
    if args.finetune:
        _check_file(solver_path, "fine-tuning solver")
        started = time.perf_counter()
        if root:
            solver = finetune.finetune(data.load, data.image_ids, len(data.classes),
                                       config.finetune, weights=args.weights,
                                       solver_path=solver_path)
            solver.net.save(args.finetune)
            log.info("fine-tuned weights written to %s", args.finetune)
        if comm is not None:
            comm.barrier()      # the others read the fine-tuned weights (a shared folder)
        fc_weights = args.finetune
        timings["fine-tuning"] = time.perf_counter() - started
    if fc_net is None and config.features.layer != "pool5":
        fc_net = finetune.solver_net_path(solver_path)
    started = time.perf_counter()
    transform = svm.FeatureTransform.from_files(config.features.layer, fc_net, fc_weights,
                                                batch_size=config.features.batch_size)
    if comm is None:
        model, _ = svm.train_model(data.load, data.image_ids, data.classes, transform,
                                   config.features, config.svm, fc_net, fc_weights, args.seed)
    else:
        model, _ = parallel_detection.train_svm_model(
            comm, data.load, data.image_ids, data.classes, transform, config.features,
            config.svm, fc_net, fc_weights, args.seed)
        if not root:
            return 0
    model.save(args.output)
    timings["SVMs"] = time.perf_counter() - started
    log.info("SVMs written to %s", args.output)
    if args.cls_score:
        model.save_cls_score(args.cls_score)
        log.info("SVMs as layer 'cls_score' written to %s", args.cls_score)
    if args.bbox_reg:
        started = time.perf_counter()
        regressor = bbox_regression.train_regressor(data.load, data.image_ids, data.classes,
                                                    config.bbox_regression)
        regressor.save(args.bbox_reg)
        timings["box regression"] = time.perf_counter() - started
        log.info("box regressors written to %s", args.bbox_reg)
    for what, seconds in timings.items():
        log.info("%s: %.1f s", what, seconds)
    return 0


@parallel.end_all_on_failure      # under mpiexec: a failing rank stops them all
def main(argv=None):
    return run_main(PROG, run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
