#!/usr/bin/env python3
"""Per-image SPP-net detection cost on the GPU, against the paper's GTX
Titan figures (Table 10: 0.053 s conv + 0.089 s fc at one scale).

The case is bench/detection_vs_rcnn.py's, whose helpers it imports: one
500 x 375 photograph, --windows (2,000) selective search boxes (topped up
with random ones), ZF-5 SPP (models/zf5_spp: detect_conv5.prototxt,
detect_fc.prototxt, deploy.prototxt) with random He-scaled weights.
Everything runs in GPU mode, the way tools/extract_features and
tools/test_detection run it with --gpu:

- conv: resize and mean on the host, upload, conv1..relu5 once per scale
  (688, or the five 480..1200), a device copy of each conv5 map
  (SPPExtractor.conv_maps);
- pool: the scale per window, the window -> conv5 cells mapping and the
  distinct windows on the host, then the pooling kernel writing every
  distinct window's 12,800 features into one device Blob
  (SPPExtractor.pool);
- fc: fc6 + fc7 on the distinct windows, fed from that Blob on the device
  in one batch (FeatureTransform.outputs); "fc + to host" adds the copy of
  fc7 to the host, where the SVMs score;
- R-CNN (unless --no-rcnn): each window warped on the host and
  deploy.prototxt run up to fc7 in batches of --batch, on --rcnn-windows of
  the windows, scaled to all of them.

Each stage: best and median of --runs runs after one warm-up run, each
run ended by the device's synchronize().

    python3 bench/gpu_detection.py [--runs 5] [--windows 2000] [--rcnn-windows 256] [--no-rcnn]
    SPPCAFFE_GPU=host python3 bench/gpu_detection.py --windows 50 --runs 1   # smoke run, no GPU
"""
import argparse
import os
import sys
import time
from unittest import mock

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "bench")):
    if path not in sys.path:
        sys.path.insert(0, path)

import sppcaffe  # noqa: E402
from sppcaffe import backends  # noqa: E402
from sppcaffe.detection import features, mapping, proposals  # noqa: E402
from sppcaffe.detection.svm import FeatureTransform  # noqa: E402
from detection_vs_rcnn import (MEAN, MODELS, best_of, random_weights,  # noqa: E402
                               voc_sized_image, windows_for)

# SPP-net (TPAMI), Table 10: ZF-5, one scale, GTX Titan, 2,000 windows.
PAPER_CONV_S = 0.053
PAPER_FC_S = 0.089


# detection_vs_rcnn's selective-search boxes of its image, saved for
# machines whose OpenCV lacks contrib's ximgproc (the GPU machines'
# opencv-python-headless); made with windows_for(voc_sized_image(), 2000).
SAVED_BOXES = os.path.join(ROOT, "bench", "data", "astronaut_boxes.npy")


def bench_windows(image, count):
    """detection_vs_rcnn's windows: (boxes, number from selective search).
    Without ximgproc, the saved selective-search boxes of the same image."""
    try:
        return windows_for(image, count)[:2]
    except AttributeError as err:
        print(f"no selective search here ({err}): its boxes saved in {SAVED_BOXES}")
        saved = np.load(SAVED_BOXES)
        with mock.patch.object(proposals, "selective_search", return_value=saved[:count]):
            return windows_for(image, count)[:2]


def synchronized(function):
    """`function` made to return only once the device has finished it."""
    device = backends.current_device()

    def run():
        result = function()
        device.synchronize()
        return result
    return run


def fc_outputs(transform, device_rows):
    for _ in transform.outputs(device_rows):
        pass


def spp_case(args, conv_net, fc_net, image, boxes, scales):
    """{stage: (best s, median s)}, distinct windows, windows per scale."""
    extractor = features.SPPExtractor(conv_net, scales=scales, mean=MEAN)
    fc = FeatureTransform("fc7", fc_net, batch_size=max(1, len(boxes)))
    times = {}
    conv_s, conv_med, maps = best_of(args.runs, synchronized(lambda: extractor.conv_maps(image)))
    times["conv"] = conv_s, conv_med
    pool_s, pool_med, result = best_of(
        args.runs, synchronized(lambda: extractor.pool(maps, image.shape[:2], boxes)))
    times["pool"] = pool_s, pool_med
    times["fc"] = best_of(args.runs, synchronized(lambda: fc_outputs(fc, result.device)))[:2]
    times["fc + to host"] = best_of(args.runs, synchronized(lambda: fc.raw(result.device)))[:2]
    per_scale = np.bincount(result.scale_index, minlength=len(scales)).tolist()
    return times, result.num_unique, per_scale


def rcnn_case(args, full_net, image, boxes):
    """(seconds for all windows, windows timed, warp seconds for all windows)."""
    count = min(args.rcnn_windows, len(boxes))
    subset = boxes[:count]
    rcnn = features.RCNNExtractor(full_net, blob="fc7", mean=MEAN, batch_size=args.batch)
    total = best_of(args.runs, synchronized(lambda: rcnn(image, subset)))[0]
    warp = best_of(args.runs, lambda: features.warp_windows(image, subset, MEAN))[0]
    scale = len(boxes) / count
    return total * scale, count, warp * scale


def ratio(seconds, paper):
    return f"{seconds / paper:.2f}x"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--rcnn-windows", type=int, default=256,
                        help="R-CNN mode is timed on this many windows and scaled")
    parser.add_argument("--batch", type=int, default=64, help="R-CNN windows per forward pass")
    parser.add_argument("--no-rcnn", action="store_true", help="skip R-CNN mode")
    parser.add_argument("--device", type=int, default=0, help="CUDA ordinal")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.windows < 1 or args.rcnn_windows < 1:
        parser.error("--runs, --windows and --rcnn-windows must be at least 1")
    try:
        sppcaffe.set_device(args.device)
        sppcaffe.set_mode_gpu()
    except backends.GPUUnavailable as err:
        print(f"gpu_detection: {err}", file=sys.stderr)
        return 1
    device = backends.current_device()

    image = voc_sized_image()
    boxes, found = bench_windows(image, args.windows)
    conv_net = sppcaffe.Net(os.path.join(MODELS, "detect_conv5.prototxt"), sppcaffe.TEST)
    fc_net = sppcaffe.Net(os.path.join(MODELS, "detect_fc.prototxt"), sppcaffe.TEST)
    for net in (conv_net, fc_net):
        random_weights(net)
    print(f"SPP-net detection per image on {device.name}: image {image.shape[1]}x"
          f"{image.shape[0]}, {len(boxes)} windows ({found} from selective search), ZF-5 with "
          f"random weights, float32; best (median) of {args.runs} synchronized runs")

    cases = {}
    for label, scales in (("1 scale (688)", (688,)), ("5 scales", mapping.PAPER_SCALES)):
        cases[label] = spp_case(args, conv_net, fc_net, image, boxes, scales)

    print()
    print("| stage | " + " | ".join(f"{label} s" for label in cases)
          + " | paper, GTX Titan, 1 scale s | 1 scale / paper |")
    print("|---|" + "---|" * len(cases) + "---|---|")
    paper = {"conv": PAPER_CONV_S, "fc": PAPER_FC_S}
    for stage in ("conv", "pool", "fc", "fc + to host"):
        cells = [f"{times[stage][0]:.4f} ({times[stage][1]:.4f})"
                 for times, _, _ in cases.values()]
        reference = paper.get(stage)
        first = cases["1 scale (688)"][0][stage][0]
        print(f"| {stage} | " + " | ".join(cells) + " | "
              + (f"{reference:.3f} | {ratio(first, reference)} |" if reference else "- | - |"))
    totals = {label: sum(times[s][0] for s in ("conv", "pool", "fc"))
              for label, (times, _, _) in cases.items()}
    paper_total = PAPER_CONV_S + PAPER_FC_S
    print("| total (conv + pool + fc) | " + " | ".join(f"{t:.4f}" for t in totals.values())
          + f" | {paper_total:.3f} | {ratio(totals['1 scale (688)'], paper_total)} |")
    print()
    for label, (_, unique, per_scale) in cases.items():
        print(f"{label}: {unique} distinct windows pooled and scored, windows per scale "
              f"{per_scale}")
    print("The paper's fc figure is for all 2,000 windows; here fc runs on the distinct ones "
          "only.")

    if not args.no_rcnn:
        full_net = sppcaffe.Net(os.path.join(MODELS, "deploy.prototxt"), sppcaffe.TEST)
        full_net.copy_from(conv_net.to_proto())        # the same net both ways
        full_net.copy_from(fc_net.to_proto())
        rcnn_s, count, warp_s = rcnn_case(args, full_net, image, boxes)
        print(f"R-CNN way (warp on the host + whole net to fc7, batches of {args.batch}; "
              f"{count} windows timed, scaled to {len(boxes)}): {rcnn_s:.3f} s per image, of "
              f"which warping {warp_s:.3f} s")
        for label, total in totals.items():
            print(f"  R-CNN / SPP {label}: {rcnn_s / total:.1f}x")
    backends.set_mode_cpu()
    return 0


if __name__ == "__main__":
    start = time.perf_counter()
    status = main()
    print(f"({time.perf_counter() - start:.0f} s in all)")
    sys.exit(status)
