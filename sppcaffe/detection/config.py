"""The detection pipeline's settings (SVMs, fine-tuning, box regression,
testing) as one YAML file.

    svm:
      C: 0.001
      pos_loss_weight: 2
    features:
      layer: fc7
    test:
      nms: 0.3

Every section and key is optional (the defaults are R-CNN's and SPP-net's
values, listed below); an unknown section or key is an error naming the file
and listing the allowed ones, so a misspelt key never silently falls back
to a default.  Values are checked against each key's type and range.
``--set section.key=value`` flags (parsed as YAML values) override the file.
"""
import dataclasses
import difflib
import math
import typing
from typing import Optional

import yaml

from ..io.yaml_file import read_yaml

FEATURE_LAYERS = ("pool5", "fc6", "fc7")


class DetectionConfigError(ValueError):
    """A bad setting; the message names its origin (file or --set) and key."""


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    # What the SVMs see: the cached pooled conv5 features ("pool5", the
    # SPP layer's output) or fc6/fc7 computed from them by the fc net.
    layer: str = "fc7"
    # R-CNN scales every feature by one factor so that their mean L2 norm
    # is this value (rcnn_feature_stats / rcnn_scale_features: 20).
    target_norm: float = 20.0
    # The mean norm is estimated from this many random training images and
    # windows per image (R-CNN: 200 and 200).
    norm_images: int = 200
    norm_windows: int = 200
    # Windows per forward pass of the fc net (memory, not results).
    batch_size: int = 1024

    def check(self, where):
        _choice(where, "layer", self.layer, FEATURE_LAYERS)
        _positive(where, "target_norm", self.target_norm)
        for name in ("norm_images", "norm_windows", "batch_size"):
            _positive(where, name, getattr(self, name))


@dataclasses.dataclass(frozen=True)
class SVMConfig:
    # liblinear's L2-regularized L1-loss SVM (rcnn_train.m: -s 3): C, the
    # bias multiplier B (the constant feature appended to every window,
    # whose weight is regularized like the others) and the weight of the
    # positives' loss (-w1).
    C: float = 0.001
    bias_multiplier: float = 10.0
    pos_loss_weight: float = 2.0
    # Negatives: windows whose IoU with every object of the class is below this.
    negative_iou: float = 0.3
    # SPP-net Sec. 4.1: "any negative sample is removed if it overlaps another
    # negative sample by more than 70%".  Applied per image and class to the
    # negatives above, greedily in window order (a negative is dropped when
    # its IoU with an earlier negative that was kept exceeds this), before
    # hard-negative mining picks among them.  null: keep every negative
    # (R-CNN, and SPP-net's released code).
    negative_overlap_dedup: Optional[float] = 0.7
    # Hard-negative mining (rcnn_train.m): after the first image, a negative
    # is added to a class's cache when it scores above hard_threshold; after
    # each retraining those scoring below evict_threshold leave the cache;
    # the SVM is retrained once more than retrain_limit negatives were
    # added, and after the last image of the last epoch.
    hard_threshold: float = -1.0001
    evict_threshold: float = -1.2
    retrain_limit: int = 2000
    hard_epochs: int = 1
    # Ground-truth boxes of objects marked difficult count as positives
    # (R-CNN keeps them).
    use_difficult: bool = True
    # liblinear's stopping tolerance (R-CNN passes none, so liblinear's
    # default 0.1 for its dual solvers) and iteration cap (LinearSVC's tol
    # and max_iter).
    tol: float = 0.1
    max_iter: int = 10000

    def check(self, where):
        for name in ("C", "bias_multiplier", "pos_loss_weight", "tol"):
            _positive(where, name, getattr(self, name))
        _fraction(where, "negative_iou", self.negative_iou)
        if self.negative_overlap_dedup is not None:
            _fraction(where, "negative_overlap_dedup", self.negative_overlap_dedup)
        if self.evict_threshold > self.hard_threshold:
            raise DetectionConfigError(
                f"{where}: evict_threshold ({self.evict_threshold}) must not exceed "
                f"hard_threshold ({self.hard_threshold}): a negative just added would be evicted")
        for name in ("retrain_limit", "hard_epochs", "max_iter"):
            _positive(where, name, getattr(self, name))


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    # The solver of the fc6-fc8 net (Input blobs "spp" and "label").
    solver: str = "solvers/detection_finetune.prototxt"
    # Mini-batches of batch_size windows, fg_fraction of them foreground
    # (IoU >= fg_iou with an object, labelled by its class) and the rest
    # background (IoU in [bg_iou_low, bg_iou_high), label 0): SPP-net Sec. 4.1.
    batch_size: int = 128
    fg_fraction: float = 0.25
    fg_iou: float = 0.5
    bg_iou_low: float = 0.1
    bg_iou_high: float = 0.5
    # The windows are drawn once and their features kept in memory: every
    # foreground and background window up to these counts (random subsets
    # beyond them).
    max_fg_windows: int = 20000
    max_bg_windows: int = 60000
    # Overrides of the solver file (null: as the file says).
    max_iter: Optional[int] = None
    stepsize: Optional[int] = None
    base_lr: Optional[float] = None
    seed: int = 0

    def check(self, where):
        for name in ("batch_size", "max_fg_windows", "max_bg_windows"):
            _positive(where, name, getattr(self, name))
        _fraction(where, "fg_fraction", self.fg_fraction)
        for name in ("fg_iou", "bg_iou_low", "bg_iou_high"):
            _fraction(where, name, getattr(self, name))
        if not self.bg_iou_low < self.bg_iou_high <= self.fg_iou:
            raise DetectionConfigError(
                f"{where}: need bg_iou_low < bg_iou_high <= fg_iou, got {self.bg_iou_low}, "
                f"{self.bg_iou_high}, {self.fg_iou}")
        for name in ("max_iter", "stepsize", "base_lr"):
            if getattr(self, name) is not None:
                _positive(where, name, getattr(self, name))


@dataclasses.dataclass(frozen=True)
class BBoxRegressionConfig:
    # Ridge regression from the pooled conv5 features of windows whose IoU
    # with an object is at least min_iou (SPP-net: 0.5; R-CNN: 0.6) to the
    # box deltas; lambda is the ridge weight (R-CNN: 1000), features scaled
    # to target_norm like the SVMs'.
    min_iou: float = 0.5
    lambda_: float = dataclasses.field(default=1000.0, metadata={"key": "lambda"})
    target_norm: float = 20.0

    def check(self, where):
        _fraction(where, "min_iou", self.min_iou)
        _positive(where, "lambda", self.lambda_)
        _positive(where, "target_norm", self.target_norm)


@dataclasses.dataclass(frozen=True)
class DetectConfig:
    # Per class and image: windows scoring above score_threshold, box
    # regression (if given), NMS (a box is dropped when its IoU with a
    # better one exceeds nms; equal scores: the lower index wins), then the
    # best max_per_image.
    nms: float = 0.3
    score_threshold: float = -math.inf
    max_per_image: int = 100
    # Pictures show, per class, the detections down to the deepest rank
    # where the class's precision on the evaluated images is still
    # picture_precision (0: no such limit), at most picture_max per image.
    picture_precision: float = 0.5
    picture_max: int = 10
    # Truncated SVD of the fc net at test time (Fast R-CNN Sec. 3.1): fc6
    # and fc7 replaced by rank-k factorizations (sppcaffe.detection.svd),
    # fewer multiply-adds per window, SVMs trained on the exact layers.
    # null: the exact layer.  Used when the SVMs read fc6/fc7.
    svd_fc6_rank: Optional[int] = None
    svd_fc7_rank: Optional[int] = None

    def check(self, where):
        _fraction(where, "nms", self.nms)
        _positive(where, "max_per_image", self.max_per_image)
        _fraction(where, "picture_precision", self.picture_precision)
        _positive(where, "picture_max", self.picture_max)
        for name in ("svd_fc6_rank", "svd_fc7_rank"):
            if getattr(self, name) is not None:
                _positive(where, name, getattr(self, name))

    @property
    def svd_ranks(self):
        """{layer: rank} of the layers to factorize (empty: none)."""
        ranks = {"fc6": self.svd_fc6_rank, "fc7": self.svd_fc7_rank}
        return {name: rank for name, rank in ranks.items() if rank is not None}


SECTIONS = {"features": FeatureConfig, "svm": SVMConfig, "finetune": FinetuneConfig,
            "bbox_regression": BBoxRegressionConfig, "test": DetectConfig}


@dataclasses.dataclass(frozen=True)
class DetectionConfig:
    features: FeatureConfig = dataclasses.field(default_factory=FeatureConfig)
    svm: SVMConfig = dataclasses.field(default_factory=SVMConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    bbox_regression: BBoxRegressionConfig = dataclasses.field(
        default_factory=BBoxRegressionConfig)
    test: DetectConfig = dataclasses.field(default_factory=DetectConfig)

    def to_dict(self):
        """The settings as YAML keys (what `load_config` reads back)."""
        return {name: {_yaml_key(f): getattr(getattr(self, name), f.name)
                       for f in dataclasses.fields(cls)}
                for name, cls in SECTIONS.items()}


# ---- checks -----------------------------------------------------------------

def _positive(where, name, value):
    if not value > 0:
        raise DetectionConfigError(f"{where}: {name} must be positive, got {value}")


def _fraction(where, name, value):
    if not 0 <= value <= 1:
        raise DetectionConfigError(f"{where}: {name} must lie in [0, 1], got {value}")


def _choice(where, name, value, allowed):
    if value not in allowed:
        raise DetectionConfigError(f"{where}: {name} must be one of {', '.join(allowed)}, "
                                   f"got {value!r}")


# ---- reading -------------------------------------------------------------------

def _yaml_key(field):
    return field.metadata.get("key", field.name)


def _unknown(origin, what, allowed):
    """An error for the unknown `what` ("key 'Cx' in section 'svm'")."""
    name = what.split("'")[1]
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return DetectionConfigError(f"{origin}: unknown {what} (allowed: "
                                f"{', '.join(allowed)}){hint}")


def _field_type(annotation):
    """(type, optional) of a field annotation such as ``Optional[int]``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if args:
        return args[0], True
    return annotation, False


def _convert(origin, key, value, annotation):
    """`value` (from YAML) as the type of the field `key`."""
    kind, optional = _field_type(annotation)
    if value is None:
        if optional:
            return None
        raise DetectionConfigError(f"{origin}: {key} needs a value")
    if kind is bool:
        if not isinstance(value, bool):
            raise DetectionConfigError(f"{origin}: {key} expects true or false, got {value!r}")
        return value
    if kind in (int, float):
        number = value
        if isinstance(value, str):       # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                number = None
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise DetectionConfigError(f"{origin}: {key} expects a number, got {value!r}")
        if kind is int:
            if not math.isfinite(number) or number != int(number):
                raise DetectionConfigError(f"{origin}: {key} expects an integer, got {value!r}")
            return int(number)
        return float(number)
    if not isinstance(value, str):
        raise DetectionConfigError(f"{origin}: {key} expects a string, got {value!r}")
    return value


def _section(origin, name, cls, values, base):
    if not isinstance(values, dict):
        raise DetectionConfigError(f"{origin}: section '{name}' must be a mapping of keys to "
                                   f"values, got {values!r}")
    fields = {_yaml_key(f): f for f in dataclasses.fields(cls)}
    changes = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown(origin, f"key '{key}' in section '{name}'", list(fields))
        field = fields[key]
        changes[field.name] = _convert(origin, f"{name}.{key}", value, field.type)
    section = dataclasses.replace(base, **changes)
    section.check(f"{origin} [{name}]")
    return section


def apply_mapping(config, mapping, origin):
    """`config` with the sections of `mapping` ({section: {key: value}}) applied."""
    if mapping is None:
        return config
    if not isinstance(mapping, dict):
        raise DetectionConfigError(f"{origin}: expected a mapping of sections "
                                   f"({', '.join(SECTIONS)}), got {type(mapping).__name__}")
    changes = {}
    for name, values in mapping.items():
        if name not in SECTIONS:
            raise _unknown(origin, f"section '{name}'", list(SECTIONS))
        changes[name] = _section(origin, name, SECTIONS[name], values or {},
                                 getattr(config, name))
    return dataclasses.replace(config, **changes)


def parse_setting(text):
    """`section.key=value` -> {section: {key: value}} (the value read as YAML)."""
    key, sep, raw = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not section or not name:
        raise DetectionConfigError(f"--set '{text}': expected SECTION.KEY=VALUE "
                                   "(e.g. --set svm.C=0.01)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise DetectionConfigError(f"--set {key}: the value '{raw}' is not valid YAML: "
                                   f"{err}") from None
    return {section: {name: value}}


def load_config(path=None, settings=()):
    """The DetectionConfig of YAML file `path` (None: the defaults), then
    each `--set` text of `settings` applied in order."""
    config = DetectionConfig()
    if path is not None:
        content = read_yaml(path, DetectionConfigError)
        config = apply_mapping(config, content, str(path))
    for text in settings:
        config = apply_mapping(config, parse_setting(text), "--set")
    return config


def dump_config(config):
    """YAML text of `config` (every key, so a run's settings can be kept)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


__all__ = ["BBoxRegressionConfig", "DetectionConfig", "DetectionConfigError", "FeatureConfig",
           "FinetuneConfig", "SVMConfig", "DetectConfig", "FEATURE_LAYERS", "dump_config",
           "load_config", "parse_setting"]
