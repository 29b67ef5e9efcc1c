#!/usr/bin/env python3
"""ZF-5 SPP training iterations per second: sppcaffe vs PyTorch on the CPU,
data layer and solver update included.

One training iteration, batch 8 at 224x224, on each side:

- sppcaffe: `solver.step(1)` of an SGD solver (momentum 0.9, weight decay
  0.0005, lr_mult/decay_mult of models/zf5_spp) over the TRAIN net of
  models/zf5_spp/train_val.prototxt whose Data layer reads an LMDB of 64
  random-content 256x256 images written here with sppcaffe.data, with the
  prototxt's transform: random 224 crop, random mirror, mean image
  subtracted (its prefetch thread on, as in training);
- PyTorch: the same net (bench/zf5_spp_vs_torch.py's torch_model), the same
  augmentation done in the loop on a uint8 tensor of the same 64 images
  (random crop offsets and mirror per image, mean subtracted), then
  forward, cross-entropy, zero_grad, backward and torch.optim.SGD with the
  same momentum, weight decay and per-parameter multipliers.

Each side also runs steps on a fixed input, alternating with the steps
above in the same process (sppcaffe: the Data layer's tops keep the last
batch; torch: the same tensor every step), so that a burst of load from
other processes hits both alike; the difference is the data layer's share
of the step.  Each framework runs in its own process with the same number
of threads; a case's time is the median of --runs steps after --warmup
steps, best of --rounds rounds (the frameworks alternate between rounds).

    pip install torch==2.13.0        # benchmark-only dependency
    python3 bench/train_vs_torch.py [--runs 8] [--threads 2]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
for path in (ROOT, BENCH):
    if path not in sys.path:
        sys.path.insert(0, path)

# The net's definition, the timing loop and the environment line are the
# forward/backward benchmark's, so the two benchmarks time the same thing.
from zf5_spp_vs_torch import (CLASSES, TRAIN_VAL, environment, median_ms,  # noqa: E402
                              peak_rss_mib, torch_model)

BATCH, CROP, STORED = 8, 224, 256
IMAGES = 64
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 0.0005
CASES = {"data": "data layer (LMDB, crop, mirror, mean)", "fixed": "fixed input"}
FRAMEWORKS = ("sppcaffe", "torch")


# ---------------------------------------------------------------------------
# The data set: 64 random-content 256x256 colour images and their mean
# ---------------------------------------------------------------------------
def random_images(seed=0):
    """uint8 N x 3 x 256 x 256 images (smooth random blobs, not white
    noise, so they compress and decode like pictures) and labels."""
    import cv2
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (IMAGES, 3, 16, 16), dtype=np.uint8)
    images = np.stack([cv2.resize(c.transpose(1, 2, 0), (STORED, STORED),
                                  interpolation=cv2.INTER_CUBIC).transpose(2, 0, 1)
                       for c in coarse])
    labels = rng.integers(0, CLASSES, IMAGES)
    return images, labels


def write_dataset(folder):
    """The LMDB and the mean image (1 x 3 x 256 x 256 binaryproto)."""
    from sppcaffe import io
    from sppcaffe.data import LMDBWriter, array_to_datum
    images, labels = random_images()
    db, mean = os.path.join(folder, "train_lmdb"), os.path.join(folder, "mean.binaryproto")
    with LMDBWriter(db) as writer:
        for i, (image, label) in enumerate(zip(images, labels)):
            writer.put(f"{i:08d}", array_to_datum(image, label).SerializeToString())
    io.write_blobproto(images.mean(axis=0, dtype=np.float64)[None].astype(np.float32), mean)
    return db, mean


# ---------------------------------------------------------------------------
# sppcaffe
# ---------------------------------------------------------------------------
def sppcaffe_solver(folder):
    """An SGD solver over the zf5_spp TRAIN net reading the bench's LMDB."""
    import sppcaffe
    from sppcaffe import io
    from sppcaffe.proto import caffe_pb2
    db, mean = write_dataset(folder)
    net = io.read_net(TRAIN_VAL)
    for lp in net.layer:
        if lp.type == "Data" and lp.include[0].phase == caffe_pb2.TRAIN:
            lp.data_param.source, lp.data_param.batch_size = db, BATCH
            lp.data_param.backend = caffe_pb2.DataParameter.LMDB
            lp.transform_param.mean_file = mean
    param = caffe_pb2.SolverParameter(base_lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                                      lr_policy="fixed", max_iter=10 ** 6, display=0,
                                      snapshot_after_train=False, random_seed=0, type="SGD")
    param.net_param.CopyFrom(net)
    return sppcaffe.get_solver(param)


def sppcaffe_steps(folder):
    """({case: one training iteration}, one batch prepared as the Data
    layer's prefetch thread does: read, parse, crop, mirror, mean)."""
    import sppcaffe
    from sppcaffe.data.db_batches import DBBatchReader
    solver = sppcaffe_solver(folder)
    data = next(layer for layer in solver.net.layers if layer.type == "Data")
    reader = DBBatchReader(data.param, sppcaffe.TRAIN, 2)

    def step(fixed):
        # A data layer marked as fed from Python leaves its tops alone: the
        # step then trains on the last batch again (the layer's own switch,
        # set when a net is built with data_shapes).
        data.fed_from_python = fixed
        solver.step(1)
    return {"data": lambda: step(False), "fixed": lambda: step(True)}, reader.next_batch


# ---------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------
def torch_steps():
    """({case: one training iteration}, one augmented batch)."""
    import torch
    import torch.nn.functional as F
    model = torch_model().train()
    # Caffe's multipliers of models/zf5_spp: weights lr x1 decay x1, biases lr x2 no decay.
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
    optimizer = torch.optim.SGD([{"params": weights, "lr": LR, "weight_decay": WEIGHT_DECAY},
                                 {"params": biases, "lr": 2 * LR, "weight_decay": 0.0}],
                                lr=LR, momentum=MOMENTUM)
    images, labels = random_images()
    images, labels = torch.from_numpy(images), torch.from_numpy(labels)
    mean = images.double().mean(0).float()
    generator = torch.Generator().manual_seed(0)
    position = [0]

    def augmented_batch():
        """As the Data layer: the next 8 records, each cropped at a random
        offset, mirrored with probability 1/2, mean subtracted."""
        index = (torch.arange(BATCH) + position[0]) % IMAGES
        position[0] = (position[0] + BATCH) % IMAGES
        offsets = torch.randint(0, STORED - CROP + 1, (BATCH, 2), generator=generator)
        flips = torch.rand(BATCH, generator=generator) < 0.5
        batch = torch.empty(BATCH, 3, CROP, CROP)
        for k, (i, (top, left), flip) in enumerate(zip(index.tolist(), offsets.tolist(),
                                                       flips.tolist())):
            window = (slice(None), slice(top, top + CROP), slice(left, left + CROP))
            crop = images[i][window].float() - mean[window]
            batch[k] = crop.flip(-1) if flip else crop
        return batch, labels[index]

    fixed = augmented_batch()

    def step(batch):
        x, y = batch
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return ({"data": lambda: step(augmented_batch()), "fixed": lambda: step(fixed)},
            augmented_batch)


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------
def paired_medians(steps, warmup, runs):
    """{case: (median ms, [ms])}, the cases' steps interleaved."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {case: [] for case in steps}
    for _ in range(runs):
        for case, step in steps.items():
            start = time.perf_counter()
            step()
            times[case].append((time.perf_counter() - start) * 1e3)
    return {case: (statistics.median(t), t) for case, t in times.items()}


def worker(args):
    """Both cases of one framework, and one batch prepared alone (first:
    after a step, torch's idle OpenMP threads still spin for a while and
    would be charged to it)."""
    def measure_cases(steps, batch):
        batch_ms = median_ms(batch, 2, 20)[0]
        cases = paired_medians(steps, args.warmup, args.runs)
        return {"cases": {case: {"median_ms": median, "times_ms": times}
                          for case, (median, times) in cases.items()},
                "batch_ms": batch_ms, "peak_rss_mib": peak_rss_mib()}

    if args.framework == "torch":
        import torch
        torch.set_num_threads(args.threads)
        result = measure_cases(*torch_steps())
    else:
        with tempfile.TemporaryDirectory(prefix="train_vs_torch.") as folder:
            result = measure_cases(*sppcaffe_steps(folder))
    print(json.dumps(result))


def spawn(args, framework):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(args.threads),
           "--runs", str(args.runs), "--warmup", str(args.warmup), "--worker", framework]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"worker {framework} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(args):
    """{framework: the round with the fastest data-layer step}; the
    frameworks alternate, so a burst of load hits a round, not one side."""
    best = {}
    for r in range(args.rounds):
        for framework in FRAMEWORKS:
            result = spawn(args, framework)
            cases = result["cases"]
            print(f"round {r + 1}/{args.rounds}: {framework}: "
                  + ", ".join(f"{case} {cases[case]['median_ms']:.0f} ms" for case in CASES),
                  file=sys.stderr, flush=True)
            if framework not in best or \
                    cases["data"]["median_ms"] < best[framework]["cases"]["data"]["median_ms"]:
                best[framework] = result
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8, help="timed steps per case (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=2,
                        help="repeat every measurement this often, keep the best median")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for both libraries (default: 2, this machine's cores)")
    parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.framework = args.worker
        return worker(args)

    print(environment(args.threads))
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    best = measure(args)
    print(f"load average after: {os.getloadavg()[0]:.2f}; best of {args.rounds} rounds, each the "
          f"median of {args.runs} steps of each case after {args.warmup} warm-up steps; batch "
          f"{BATCH}, {CROP}x{CROP} crops of {STORED}x{STORED} images")
    print("| training step | sppcaffe ms | torch ms | sppcaffe iter/s | torch iter/s "
          "| ratio (sppcaffe/torch time) |")
    print("|---|---|---|---|---|---|")
    for case, label in CASES.items():
        ours, theirs = (best[f]["cases"][case]["median_ms"] for f in FRAMEWORKS)
        print(f"| {label} | {ours:.0f} | {theirs:.0f} | {1e3 / ours:.2f} | {1e3 / theirs:.2f} "
              f"| {ours / theirs:.2f} |")
    for framework in FRAMEWORKS:
        result = best[framework]
        with_data, fixed = (result["cases"][case]["median_ms"] for case in CASES)
        print(f"{framework}: data layer share of the step {(with_data - fixed) / with_data:.0%} "
              f"({with_data - fixed:.0f} ms of {with_data:.0f} ms); one batch prepared alone: "
              f"{result['batch_ms']:.1f} ms; peak RSS {result['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
