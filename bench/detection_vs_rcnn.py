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
  only), and fc with fc6/fc7 factorized by truncated SVD at each
  --svd-ranks pair (default: Fast R-CNN's ranks 1024 and 256);
- R-CNN: warp (crop with 16 pixels of context, resize to 224 x 224) and the
  full net up to fc7 in batches of --batch windows, on --rcnn-windows of
  them (a subset: all 2,000 would take minutes), extrapolated linearly to
  all windows, which is exact up to the last partial batch.

Times are the best of --runs runs (this 2-core machine is shared, and a
disturbed run can be several times slower) after one warm-up run; the load
average is printed before and after.

    python3 bench/detection_vs_rcnn.py [--runs 3] [--windows 2000] [--rcnn-windows 128]
        [--svd-ranks 1024,256 --svd-ranks 512,128 | --no-svd] [--no-rcnn]
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
SVD_RANKS = (1024, 256)      # fc6, fc7: Fast R-CNN's (VGG16) ranks


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


def rank_pair(text):
    try:
        fc6, fc7 = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': expected FC6_RANK,FC7_RANK") from None
    return fc6, fc7


def load_text():
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--rcnn-windows", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64, help="R-CNN windows per forward pass")
    parser.add_argument("--svd-ranks", type=rank_pair, action="append", metavar="FC6,FC7",
                        help="ranks of a truncated SVD of fc6 and fc7 to time (repeatable; "
                             "default: 1024,256)")
    parser.add_argument("--no-svd", action="store_true", help="skip the truncated SVD")
    parser.add_argument("--no-rcnn", action="store_true", help="skip R-CNN mode")
    args = parser.parse_args(argv)
    rank_pairs = [] if args.no_svd else (args.svd_ranks or [SVD_RANKS])
    print(load_text(), "(before)")

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
    svd_nets = {}
    for fc6_rank, fc7_rank in rank_pairs:
        start = time.perf_counter()
        definition, weights = svd.compress_fc(fc_param, fc_net, {"fc6": fc6_rank, "fc7": fc7_rank})
        svd_nets[fc6_rank, fc7_rank] = sppcaffe.Net(definition, sppcaffe.TEST, weights=weights)
        print(f"truncated SVD of fc6 (rank {fc6_rank}) and fc7 (rank {fc7_rank}): "
              f"{time.perf_counter() - start:.1f} s, once")

    rows, svd_rows = [], []
    for label, scales in (("SPP 1 scale (688)", (688,)),
                          ("SPP 5 scales", mapping.PAPER_SCALES)):
        extractor = features.SPPExtractor(conv_net, scales=scales, mean=MEAN)
        conv_s, conv_med, maps = best_of(args.runs, lambda: extractor.conv_maps(image))
        pool_s, pool_med, result = best_of(
            args.runs, lambda: extractor.pool(maps, image.shape[:2], boxes))
        fc_s, fc_med, _ = best_of(args.runs, lambda: fc_forward(fc_net, result.unique_feat))
        svd_times = {ranks: best_of(args.runs, lambda: fc_forward(net, result.unique_feat))[0]
                     for ranks, net in svd_nets.items()}
        svd_s = svd_times[rank_pairs[0]] if rank_pairs else float("nan")
        rows.append((label, conv_s, pool_s, fc_s, svd_s, result.num_unique,
                     np.bincount(result.scale_index, minlength=len(scales)).tolist()))
        svd_rows += [(label, ranks, seconds, conv_s + pool_s + seconds)
                     for ranks, seconds in svd_times.items()]

    rcnn_total = None
    if not args.no_rcnn:
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
    first = f" {rank_pairs[0][0]}/{rank_pairs[0][1]}" if rank_pairs else ""
    print(f"| mode | conv s | pool s | fc6+fc7 s (distinct windows) | total s | "
          f"fc with SVD{first} s | total with SVD s | distinct windows | windows per scale |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, conv_s, pool_s, fc_s, svd_s, unique, per_scale in rows:
        print(f"| {label} | {conv_s:.2f} | {pool_s:.2f} | {fc_s:.2f} | "
              f"{conv_s + pool_s + fc_s:.2f} | {svd_s:.2f} | {conv_s + pool_s + svd_s:.2f} | "
              f"{unique} | {per_scale} |")
    if rcnn_total is not None:
        print(f"| R-CNN ({warp_count} windows timed, x{scale:.2f}) | {rcnn_net:.1f} (whole net) | "
              f"{rcnn_warp:.2f} (warp) | (in the net) | {rcnn_total:.1f} | | | {len(boxes)} | |")
    if svd_rows:
        print()
        print("| mode | fc6/fc7 ranks | fc multiply-adds per window | fc s | total s |")
        print("|---|---|---|---|---|")
        exact = svd.multiply_adds(4096, 12800) + svd.multiply_adds(4096, 4096)
        for label, conv_s, pool_s, fc_s, *_ in rows:
            print(f"| {label} | exact | {exact / 1e6:.1f} M | {fc_s:.2f} | "
                  f"{conv_s + pool_s + fc_s:.2f} |")
            for row_label, (fc6_rank, fc7_rank), seconds, total in svd_rows:
                if row_label == label:
                    macs = (svd.multiply_adds(4096, 12800, fc6_rank) +
                            svd.multiply_adds(4096, 4096, fc7_rank))
                    print(f"| {label} | {fc6_rank}/{fc7_rank} | {macs / 1e6:.1f} M | "
                          f"{seconds:.2f} | {total:.2f} |")
    print()
    if rcnn_total is not None:
        for label, conv_s, pool_s, fc_s, svd_s, *_ in rows:
            features_s = conv_s + pool_s
            print(f"{label}: features (conv + pool) {features_s:.2f} s/image; R-CNN / SPP: "
                  f"{rcnn_total / (features_s + fc_s):.1f}x with fc, "
                  f"{(rcnn_total) / features_s:.1f}x against SPP's features alone"
                  + (f", {rcnn_total / (features_s + svd_s):.1f}x with SVD fc"
                     if rank_pairs else ""))
    print(load_text(), "(after)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
