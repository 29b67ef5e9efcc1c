#!/usr/bin/env python3
"""Detection feature time per image: SPP-net (conv maps once per scale,
windows pooled from conv5) against R-CNN (every window warped to 224 x 224
through the whole net), the comparison of SPP-net's Table 10, on the CPU.

The image: skimage's `astronaut` photograph, cropped to 4:3 and resized
to 500 x 375 (a typical VOC size).  The windows: selective search "fast" on it (R-CNN's settings,
sppcaffe.detection.proposals), topped up with random boxes to --windows
(2,000) when the search gives fewer.  The net: ZF-5 SPP
(models/zf5_spp/detect_conv5.prototxt + detect_fc.prototxt for SPP mode,
deploy.prototxt for R-CNN mode) with RANDOM weights (He-scaled Gaussians):
timing does not depend on the values.

Measured, per image:
- SPP at 1 scale (688) and 5 scales (480 576 688 864 1200): conv (resize,
  mean, conv1..relu5 once per scale), pool (scale choice, window mapping,
  spatial pyramid pooling of the windows; windows landing on the same
  conv5 cells are pooled once), fc (fc6 + fc7 on the distinct windows
  only), and fc with fc6/fc7 factorized by truncated SVD (Fast R-CNN's
  ranks 1024 and 256);
- R-CNN: warp (crop with 16 pixels of context, resize to 224 x 224) and the
  full net up to fc7 in batches of --batch windows, on --rcnn-windows of
  them (a subset: all 2,000 would take minutes), extrapolated linearly to
  all windows, which is exact up to the last partial batch.

Times are the best of --runs runs (this 2-core machine is shared, and a
disturbed run can be several times slower) after one warm-up run.

    python3 bench/detection_vs_rcnn.py [--runs 3] [--windows 2000] [--rcnn-windows 128]
"""
import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import sppcaffe  # noqa: E402
from sppcaffe import io  # noqa: E402
from sppcaffe.detection import features, mapping, proposals, svd  # noqa: E402

MODELS = os.path.join(ROOT, "models", "zf5_spp")
MEAN = (104.0, 117.0, 123.0)
SVD_RANKS = {"fc6": 1024, "fc7": 256}     # Fast R-CNN's (VGG16) ranks


def voc_sized_image():
    """skimage's astronaut photograph, rows 64-447 (4:3) resized to 500 x
    375, BGR: selective search finds 2,075 boxes in it."""
    import cv2
    import skimage.data
    rgb = cv2.resize(skimage.data.astronaut()[64:448], (500, 375), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def windows_for(image, count, seed=0):
    """(boxes, number from selective search, search seconds)."""
    start = time.perf_counter()
    boxes = proposals.selective_search(image, max_boxes=count)
    seconds = time.perf_counter() - start
    found = len(boxes)
    if found < count:
        height, width = image.shape[:2]
        rng = np.random.default_rng(seed)
        x = np.sort(rng.integers(1, width + 1, (count - found, 2)), axis=1)
        y = np.sort(rng.integers(1, height + 1, (count - found, 2)), axis=1)
        extra = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1).astype(np.float32)
        boxes = np.concatenate([boxes, extra])
    return boxes, found, seconds


def random_weights(net, seed=0):
    rng = np.random.default_rng(seed)
    for blobs in net.params.values():
        weight = blobs[0].data
        weight[...] = rng.standard_normal(weight.shape, dtype=np.float32) * \
            np.float32(np.sqrt(2.0 / np.prod(weight.shape[1:])))
        for bias in blobs[1:]:
            bias.data[...] = 0.01


def best_of(runs, function):
    """(best seconds, median seconds, last result) after one warm-up call."""
    result = function()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), result


def fc_forward(net, unique_feat):
    net.blobs["spp"].reshape(unique_feat.shape)
    net.blobs["spp"].data[...] = unique_feat
    net.forward_from_to()
    return net.blobs["fc7"].data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--rcnn-windows", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64, help="R-CNN windows per forward pass")
    parser.add_argument("--no-svd", action="store_true", help="skip the truncated SVD (about "
                        "two minutes to factorize fc6 and fc7)")
    args = parser.parse_args(argv)

    image = voc_sized_image()
    boxes, found, search_s = windows_for(image, args.windows)
    topped = f", {len(boxes) - found} random" if found < len(boxes) else ""
    print(f"image {image.shape[1]}x{image.shape[0]}, {len(boxes)} windows ({found} from selective "
          f"search in {search_s:.2f} s{topped}); random weights; best of {args.runs} runs; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy "
          f"{np.__version__}")

    conv_net = sppcaffe.Net(os.path.join(MODELS, "detect_conv5.prototxt"), sppcaffe.TEST)
    fc_param = io.read_net(os.path.join(MODELS, "detect_fc.prototxt"))
    fc_net = sppcaffe.Net(fc_param, sppcaffe.TEST)
    full_net = sppcaffe.Net(os.path.join(MODELS, "deploy.prototxt"), sppcaffe.TEST)
    for net in (conv_net, fc_net):
        random_weights(net)
    full_net.copy_from(conv_net.to_proto())      # the same trained net, both ways
    full_net.copy_from(fc_net.to_proto())
    svd_net = None
    if not args.no_svd:
        start = time.perf_counter()
        definition, weights = svd.compress_fc(fc_param, fc_net, SVD_RANKS)
        svd_net = sppcaffe.Net(definition, sppcaffe.TEST, weights=weights)
        print(f"truncated SVD of fc6 (rank {SVD_RANKS['fc6']}) and fc7 (rank {SVD_RANKS['fc7']}): "
              f"{time.perf_counter() - start:.0f} s, once")

    rows = []
    for label, scales in (("SPP 1 scale (688)", (688,)),
                          ("SPP 5 scales", mapping.PAPER_SCALES)):
        extractor = features.SPPExtractor(conv_net, scales=scales, mean=MEAN)
        conv_s, conv_med, maps = best_of(args.runs, lambda: extractor.conv_maps(image))
        pool_s, pool_med, result = best_of(
            args.runs, lambda: extractor.pool(maps, image.shape[:2], boxes))
        fc_s, fc_med, _ = best_of(args.runs, lambda: fc_forward(fc_net, result.unique_feat))
        svd_s = best_of(args.runs, lambda: fc_forward(svd_net, result.unique_feat))[0] \
            if svd_net else float("nan")
        rows.append((label, conv_s, pool_s, fc_s, svd_s, result.num_unique,
                     np.bincount(result.scale_index, minlength=len(scales)).tolist()))

    warp_count = min(args.rcnn_windows, len(boxes))
    subset = boxes[:warp_count]
    rcnn = features.RCNNExtractor(full_net, blob="fc7", mean=MEAN, batch_size=args.batch)
    warp_s = best_of(args.runs, lambda: features.warp_windows(image, subset, MEAN))[0]
    total_subset_s = best_of(args.runs, lambda: rcnn(image, subset))[0]
    scale = len(boxes) / warp_count
    rcnn_warp = warp_s * scale
    rcnn_total = total_subset_s * scale
    rcnn_net = rcnn_total - rcnn_warp

    print()
    print("| mode | conv s | pool s | fc6+fc7 s (distinct windows) | total s | "
          "fc with SVD s | total with SVD s | distinct windows | windows per scale |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, conv_s, pool_s, fc_s, svd_s, unique, per_scale in rows:
        print(f"| {label} | {conv_s:.2f} | {pool_s:.2f} | {fc_s:.2f} | "
              f"{conv_s + pool_s + fc_s:.2f} | {svd_s:.2f} | {conv_s + pool_s + svd_s:.2f} | "
              f"{unique} | {per_scale} |")
    print(f"| R-CNN ({warp_count} windows timed, x{scale:.2f}) | {rcnn_net:.1f} (whole net) | "
          f"{rcnn_warp:.2f} (warp) | (in the net) | {rcnn_total:.1f} | | | {len(boxes)} | |")
    print()
    for label, conv_s, pool_s, fc_s, svd_s, *_ in rows:
        features_s = conv_s + pool_s
        print(f"{label}: features (conv + pool) {features_s:.2f} s/image; R-CNN / SPP: "
              f"{rcnn_total / (features_s + fc_s):.1f}x with fc, "
              f"{(rcnn_total) / features_s:.1f}x against SPP's features alone"
              + (f", {rcnn_total / (features_s + svd_s):.1f}x with SVD fc" if svd_net else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
