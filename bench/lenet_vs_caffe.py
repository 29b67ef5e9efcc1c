#!/usr/bin/env python3
"""BVLC's LeNet/MNIST example, trained end to end: sppcaffe's wall time
against `caffe train` (the reference BVLC Caffe) and against PyTorch.

The example as Caffe ships it (tests/caffe_models/examples_mnist_lenet_*:
LeNet, Data layers over LMDBs, batch 64, SGD with momentum, the "inv" lr
policy), for --iters iterations (default 400) and two test passes (at
iteration 0 and at the end: test_iter 100 x batch 100), the final snapshot
included.  Only the paths, max_iter, test_interval (= max_iter, so that
the second test pass runs at the end) and solver_mode (CPU) are changed.

MNIST cannot be downloaded here, so the LMDBs are MNIST-shaped: 60,000
training and 10,000 test images, 28x28 grey, each a scikit-learn digit
(8x8, shipped in its wheel) upscaled to 20x20 and placed at a random
offset in the 28x28 frame, as MNIST's digits are (written once under
bench/out/lenet/data, with .npy copies for the PyTorch loop).

- sppcaffe: `tools/train_net --solver S` (its curves CSV/PNG included);
- Caffe: `caffe train --solver S` of the reference Caffe installed by
  ../shared/refcaffe/install.sh (skipped, with a note, when not installed);
- PyTorch: the same net, initialization (Xavier), solver (momentum, weight
  decay, lr multipliers, inv policy) and data order in a plain loop, the
  images read from the .npy copies, the final weights saved.

Each is a fresh process timed from start to exit (imports included); every
round runs each framework once, alternating, and the best round counts
(this 2-core machine is shared).  With --competitor (the default: both)
the same runs are repeated beside a CPU-bound `python -c "while True:
pass"` process.  Threads: every framework gets --threads (default: all
cores): torch.set_num_threads, OPENBLAS_NUM_THREADS for Caffe's OpenBLAS,
sppcaffe's own (sppcaffe/threads.py).

    python3 bench/lenet_vs_caffe.py [--rounds 3] [--iters 400] [--quiet-only]
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
from competing_load import competing_process, load_averages  # noqa: E402

OUT = os.path.join(BENCH, "out", "lenet")
DATA = os.path.join(OUT, "data")
NET = os.path.join(ROOT, "tests", "caffe_models", "examples_mnist_lenet_train_test.prototxt")
SOLVER = os.path.join(ROOT, "tests", "caffe_models", "examples_mnist_lenet_solver.prototxt")
TRAIN_IMAGES, TEST_IMAGES = 60_000, 10_000
DATA_VERSION = "sklearn-digits-20px-v1"
CAFFE_ENV = "/opt/refcaffe/env.sh"
FRAMEWORKS = ("sppcaffe", "caffe", "torch")


# ---------------------------------------------------------------------------
# MNIST-shaped data
# ---------------------------------------------------------------------------
def digit_images(count, rng):
    """`count` 28x28 uint8 images and labels: scikit-learn's 8x8 digits
    upscaled to 20x20 (MNIST's digit box) at a random place in the frame."""
    import cv2
    from sklearn.datasets import load_digits
    digits = load_digits()
    boxes = [cv2.resize(d.astype(np.float32) / 16, (20, 20), interpolation=cv2.INTER_LINEAR)
             for d in digits.images]
    picks = rng.integers(0, len(boxes), count)
    offsets = rng.integers(2, 7, (count, 2))
    images = np.zeros((count, 1, 28, 28), np.uint8)
    for i, (k, (y, x)) in enumerate(zip(picks, offsets)):
        images[i, 0, y:y + 20, x:x + 20] = np.clip(boxes[k] * 255, 0, 255).astype(np.uint8)
    return images, digits.target[picks].astype(np.int64)


def make_data():
    """The LMDBs and .npy copies under bench/out/lenet/data (made once)."""
    stamp = os.path.join(DATA, "VERSION")
    if os.path.isfile(stamp) and open(stamp).read() == DATA_VERSION:
        return
    sys.path.insert(0, ROOT)
    from sppcaffe.data.datum import array_to_datum
    from sppcaffe.data.db import LMDBWriter
    shutil.rmtree(DATA, ignore_errors=True)
    os.makedirs(DATA)
    rng = np.random.default_rng(0)
    for split, count in (("train", TRAIN_IMAGES), ("test", TEST_IMAGES)):
        images, labels = digit_images(count, rng)
        np.save(os.path.join(DATA, f"{split}_images.npy"), images)
        np.save(os.path.join(DATA, f"{split}_labels.npy"), labels)
        with LMDBWriter(os.path.join(DATA, f"mnist_{split}_lmdb")) as db:
            for i, (image, label) in enumerate(zip(images, labels)):
                db.put(f"{i:08d}", array_to_datum(image, label).SerializeToString())
                if i % 10_000 == 9_999:
                    db.commit()
    with open(stamp, "w") as f:
        f.write(DATA_VERSION)


def write_solver(run_dir, iters):
    """BVLC's LeNet net and solver with this bench's paths, max_iter and CPU."""
    os.makedirs(run_dir, exist_ok=True)
    net = open(NET).read().replace("examples/mnist/mnist_", os.path.join(DATA, "mnist_"))
    net_path = os.path.join(run_dir, "lenet_train_test.prototxt")
    with open(net_path, "w") as f:
        f.write(net)
    solver = open(SOLVER).read()
    solver = solver.replace('"examples/mnist/lenet_train_test.prototxt"', f'"{net_path}"')
    solver = solver.replace('"examples/mnist/lenet"', f'"{os.path.join(run_dir, "lenet")}"')
    solver = re.sub(r"max_iter: \d+", f"max_iter: {iters}", solver)
    # Tests at iteration 0 and after the last (Caffe tests at the end only
    # when max_iter is a multiple of test_interval).
    solver = re.sub(r"test_interval: \d+", f"test_interval: {iters}", solver)
    solver = solver.replace("solver_mode: GPU", "solver_mode: CPU")
    path = os.path.join(run_dir, "lenet_solver.prototxt")
    with open(path, "w") as f:
        f.write(solver)
    return path


# ---------------------------------------------------------------------------
# PyTorch: the same training in a plain loop (run as its own process)
# ---------------------------------------------------------------------------
def torch_train(iters, threads, run_dir):
    """LeNet as BVLC's prototxt, trained as its solver; prints the last
    test accuracy as JSON."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    train_x = np.load(os.path.join(DATA, "train_images.npy"))
    train_y = torch.from_numpy(np.load(os.path.join(DATA, "train_labels.npy")))
    test_x = np.load(os.path.join(DATA, "test_images.npy"))
    test_y = torch.from_numpy(np.load(os.path.join(DATA, "test_labels.npy")))

    def xavier(*shape):                # Caffe's xavier: U(-a, a), a = sqrt(3 / fan_in)
        fan_in = int(np.prod(shape[1:]))
        bound = (3.0 / fan_in) ** 0.5
        return torch.empty(*shape).uniform_(-bound, bound).requires_grad_()

    weights = [xavier(20, 1, 5, 5), xavier(50, 20, 5, 5), xavier(500, 800), xavier(10, 500)]
    biases = [torch.zeros(n, requires_grad=True) for n in (20, 50, 500, 10)]

    def forward(x):
        x = F.max_pool2d(F.conv2d(x, weights[0], biases[0]), 2, 2)
        x = F.max_pool2d(F.conv2d(x, weights[1], biases[1]), 2, 2)
        x = F.relu(F.linear(x.flatten(1), weights[2], biases[2]))
        return F.linear(x, weights[3], biases[3])

    base_lr, momentum, decay, gamma, power = 0.01, 0.9, 0.0005, 1e-4, 0.75
    optimizer = torch.optim.SGD([{"params": weights, "lr_mult": 1},
                                 {"params": biases, "lr_mult": 2}],
                                lr=base_lr, momentum=momentum, weight_decay=decay)
    cursor = {"train": 0, "test": 0}

    def batch(split, images, labels, size):
        lo = cursor[split]
        idx = np.arange(lo, lo + size) % len(images)
        cursor[split] = (lo + size) % len(images)
        x = torch.from_numpy(images[idx].astype(np.float32)) * 0.00390625
        return x, labels[idx]

    def test():
        correct = 0
        with torch.no_grad():
            for _ in range(100):
                x, y = batch("test", test_x, test_y, 100)
                correct += int((forward(x).argmax(1) == y).sum())
        return correct / 10_000

    accuracy = test()
    for it in range(iters):
        lr = base_lr * (1 + gamma * it) ** -power
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        x, y = batch("train", train_x, train_y, 64)
        loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    accuracy = test()
    torch.save(weights + biases, os.path.join(run_dir, "lenet_torch.pt"))
    print(json.dumps({"accuracy": accuracy}))


# ---------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------
def caffe_available(env_file):
    return os.path.isfile(env_file)


def command(framework, args, run_dir):
    solver = write_solver(run_dir, args.iters)
    if framework == "sppcaffe":
        return [sys.executable, os.path.join(ROOT, "tools", "train_net"), "--solver", solver]
    if framework == "caffe":
        return ["bash", "-c", f'. "{args.caffe_env}" && export GLOG_minloglevel=0 && '
                f'exec caffe train --solver "{solver}"']
    return [sys.executable, os.path.abspath(__file__), "--torch-worker", run_dir,
            "--iters", str(args.iters), "--threads", str(args.threads)]


def last_accuracy(framework, text):
    if framework == "torch":
        return json.loads(text.strip().splitlines()[-1])["accuracy"]
    found = re.findall(r"Test net output #\d+: accuracy = ([0-9.]+)", text)
    return float(found[-1]) if found else float("nan")


def bench_environment(threads):
    """The frameworks' environment: the thread counts, and Python's bytecode
    cache on, as on an installed package (PYTHONDONTWRITEBYTECODE, set in
    some sandboxes, would make every run recompile sppcaffe's sources, 0.2 s;
    PyTorch's wheel ships its bytecode, so it would not pay it)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_once(framework, args, busy):
    run_dir = os.path.join(OUT, f"run_{framework}")
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = command(framework, args, run_dir)
    env = bench_environment(args.threads)
    before = load_averages()
    with competing_process(busy):
        start = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{framework} failed ({' '.join(cmd)}):\n{result.stderr[-3000:]}")
    text = result.stdout if framework == "torch" else result.stderr
    return {"seconds": seconds, "accuracy": last_accuracy(framework, text),
            "load_before": before, "load_after": load_averages()}


def measure(args, frameworks, busy):
    runs = {f: [] for f in frameworks}
    for r in range(args.rounds):
        for framework in frameworks:
            result = run_once(framework, args, busy)
            runs[framework].append(result)
            print(f"{'shared' if busy else 'quiet'} round {r + 1}/{args.rounds}: {framework} "
                  f"{result['seconds']:.2f} s, test accuracy {result['accuracy']:.4f} "
                  f"(load {result['load_before']} -> {result['load_after']})",
                  file=sys.stderr, flush=True)
    return runs


def report(all_runs, frameworks):
    print("| cores | framework | best s | median s | best / caffe best | best / torch best "
          "| final test accuracy | load averages (1, 5, 15 min) around the best run |")
    print("|---|---|---|---|---|---|---|---|")
    for label, runs in all_runs.items():
        best = {f: min(runs[f], key=lambda r: r["seconds"]) for f in frameworks}
        for f in frameworks:
            b = best[f]
            ratio = {o: (f"{b['seconds'] / best[o]['seconds']:.2f}" if o in best else "-")
                     for o in ("caffe", "torch")}
            print(f"| {label} | {f} | {b['seconds']:.2f} | "
                  f"{statistics.median(r['seconds'] for r in runs[f]):.2f} | {ratio['caffe']} | "
                  f"{ratio['torch']} | {b['accuracy']:.4f} | {b['load_before']} -> "
                  f"{b['load_after']} |")
    # Within a round the frameworks run seconds apart, so their ratio is
    # less exposed to this machine's drift than the ratio of bests, whose
    # runs may be minutes apart.
    for label, runs in all_runs.items():
        for other in ("caffe", "torch"):
            if "sppcaffe" in runs and other in runs:
                ratios = [a["seconds"] / b["seconds"] for a, b in zip(runs["sppcaffe"], runs[other])]
                print(f"{label}: sppcaffe / {other} round by round "
                      f"{' '.join(f'{r:.2f}' for r in ratios)}, median "
                      f"{statistics.median(ratios):.2f}")
    if len(all_runs) == 2:
        quiet, shared = all_runs.values()
        print("\nshared / quiet (best runs): " + ", ".join(
            f"{f} {min(r['seconds'] for r in shared[f]) / min(r['seconds'] for r in quiet[f]):.2f}x"
            for f in frameworks))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="threads for every framework (default: this machine's cores)")
    parser.add_argument("--caffe-env", default=CAFFE_ENV,
                        help="the reference Caffe's env.sh (../shared/refcaffe/install.sh)")
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quiet-only", action="store_true", help="no competing process runs")
    which.add_argument("--shared-only", action="store_true", help="only the competing-process runs")
    parser.add_argument("--torch-worker", metavar="RUN_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_worker:
        return torch_train(args.iters, args.threads, args.torch_worker)

    frameworks = list(args.frameworks)
    if "caffe" in frameworks and not caffe_available(args.caffe_env):
        print(f"note: the reference Caffe is not installed ({args.caffe_env} missing; "
              "bash ../shared/refcaffe/install.sh sets it up): Caffe left out")
        frameworks.remove("caffe")
    make_data()
    # sppcaffe's compiled loops are built once per machine and its bytecode
    # once per install (both cached): not costs of the timed runs, as
    # Caffe's build is not.
    subprocess.run([sys.executable, "-c", "import sppcaffe.cli.train_net, sppcaffe.solvers; "
                    "from sppcaffe.backends import native; native.library()"],
                   check=True, env=bench_environment(args.threads), cwd=ROOT)
    import platform
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{args.threads} threads each; Python {platform.python_version()}, numpy "
          f"{np.__version__}; {args.iters} iterations + 2 test passes; best of {args.rounds} "
          f"rounds; load averages before: {load_averages()}")
    all_runs = {}
    if not args.shared_only:
        all_runs["quiet"] = measure(args, frameworks, busy=False)
    if not args.quiet_only:
        all_runs["shared with a busy process"] = measure(args, frameworks, busy=True)
    report(all_runs, frameworks)
    print(f"load averages after: {load_averages()}")


if __name__ == "__main__":
    main()
