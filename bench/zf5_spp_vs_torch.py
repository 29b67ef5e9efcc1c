#!/usr/bin/env python3
"""ZF-5 SPP (models/zf5_spp) training step: sppcaffe vs PyTorch on the CPU.

Cases: forward, and forward + backward, at batch 1 and 8, 224x224, random
images and labels.  The sppcaffe net is the TRAIN net of
models/zf5_spp/train_val.prototxt (Data layers given shapes, so they act as
inputs; SoftmaxWithLoss on top, Dropout active); the PyTorch net is the
same computation written with torch.nn.functional, checked against
sppcaffe's outputs and gradients before timing.

Every (framework, case) runs in its own subprocess, so that its peak
resident memory (ru_maxrss) is its own and neither library's thread pools
or caches affect the other.  Both use the same number of threads (numpy's
OpenBLAS through OPENBLAS_NUM_THREADS/OMP_NUM_THREADS, torch through
torch.set_num_threads).  Times are the median of --runs runs after
--warmup untimed runs, best of --rounds rounds (see measure()).

    pip install torch==2.13.0        # benchmark-only dependency
    python3 bench/zf5_spp_vs_torch.py [--runs 10] [--threads 2]
"""
import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

# sppcaffe and torch are imported inside the functions that use them, so
# that each worker process loads (and is charged the memory of) one only.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))     # competing_load

TRAIN_VAL = os.path.join(ROOT, "models", "zf5_spp", "train_val.prototxt")
DEPLOY = os.path.join(ROOT, "models", "zf5_spp", "deploy.prototxt")
SIZE = 224
CLASSES = 1000
SPP_LEVELS = (6, 3, 2, 1)
LRN = dict(size=3, alpha=5e-5, beta=0.75)       # ZF-5's within-channel LRN
# (name, out channels, kernel, stride, pad, initial bias) as models/zf5_spp.
CONVS = [("conv1", 96, 7, 2, 1, 0.0), ("conv2", 256, 5, 2, 0, 1.0), ("conv3", 384, 3, 1, 1, 0.0),
         ("conv4", 384, 3, 1, 1, 1.0), ("conv5", 256, 3, 1, 1, 1.0)]
FCS = [("fc6", 4096, 1.0), ("fc7", 4096, 1.0), ("fc8", CLASSES, 0.0)]
MODES = {"forward": "forward", "fwd+bwd": "forward + backward"}
FRAMEWORKS = ("sppcaffe", "torch")


def random_batch(batch, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, 3, SIZE, SIZE), dtype=np.float32)
    labels = rng.integers(0, CLASSES, batch)
    return images, labels


def peak_rss_mib():
    """This process's peak resident memory.  VmHWM, not ru_maxrss: Linux
    carries ru_maxrss over from the parent across fork and exec, so a
    worker would report at least the driver's own peak."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # KiB on Linux


def median_ms(step, warmup, runs):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), times


# ---------------------------------------------------------------------------
# sppcaffe
# ---------------------------------------------------------------------------
def sppcaffe_net(batch, phase_name="TRAIN"):
    import sppcaffe
    phase = getattr(sppcaffe, phase_name)
    sppcaffe.set_random_seed(0)
    net = sppcaffe.Net(TRAIN_VAL, phase,
                       data_shapes={"data": (batch, 3, SIZE, SIZE), "label": (batch,)})
    images, labels = random_batch(batch)
    net.blobs["data"].data[...] = images
    net.blobs["label"].data[...] = labels
    return net


def sppcaffe_step(batch, mode):
    net = sppcaffe_net(batch)
    if mode == "forward":
        return net.forward_from_to

    def step():
        net.forward_from_to()
        net.backward_from_to()
    return step


def macs_per_image():
    """Multiply-accumulates of the conv and fc layers for one 224x224 image,
    from the deploy net's blob shapes (weights stay unallocated zeros)."""
    import sppcaffe
    net = sppcaffe.Net(DEPLOY, sppcaffe.TEST)
    total = 0
    for layer, tops in zip(net.layers, net.top_vecs):
        if layer.param.type in ("Convolution", "InnerProduct"):
            # every output value is a dot product over one weight row
            total += tops[0].count * math.prod(layer.blobs[0].shape[1:])
    return total


# ---------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------
def torch_model():
    """ZF-5 SPP with torch.nn: the same layers, fillers and pooling windows."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class ZF5SPP(nn.Module):
        def __init__(self):
            super().__init__()
            channels = 3
            for name, out, kernel, stride, pad, bias in CONVS:
                conv = nn.Conv2d(channels, out, kernel, stride, pad)
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.constant_(conv.bias, bias)
                self.add_module(name, conv)
                channels = out
            features = channels * sum(n * n for n in SPP_LEVELS)
            for name, out, bias in FCS:
                fc = nn.Linear(features, out)
                nn.init.normal_(fc.weight, std=0.01)
                nn.init.constant_(fc.bias, bias)
                self.add_module(name, fc)
                features = out

        @staticmethod
        def lrn_within_channel(x):
            # Caffe's WITHIN_CHANNEL LRN: x / (1 + alpha * mean of x^2 over a
            # size x size window, zero padded, always divided by size^2)^beta.
            s = LRN["size"]
            mean_sq = F.avg_pool2d(x * x, s, stride=1, padding=s // 2, count_include_pad=True)
            return x * (1 + LRN["alpha"] * mean_sq).pow(-LRN["beta"])

        @staticmethod
        def spp(x):
            # The paper's windows (method PAPER): ceil(a/n), stride floor(a/n).
            a = x.shape[-1]
            return torch.cat([F.max_pool2d(x, math.ceil(a / n), a // n).flatten(1)
                              for n in SPP_LEVELS], dim=1)

        def forward(self, x):
            x = self.lrn_within_channel(F.relu(self.conv1(x)))
            x = F.max_pool2d(x, 3, 2, ceil_mode=True)
            x = self.lrn_within_channel(F.relu(self.conv2(x)))
            x = F.max_pool2d(x, 3, 2, ceil_mode=True)
            x = F.relu(self.conv3(x))
            x = F.relu(self.conv4(x))
            x = self.spp(F.relu(self.conv5(x)))
            x = F.dropout(F.relu(self.fc6(x)), 0.5, self.training)
            x = F.dropout(F.relu(self.fc7(x)), 0.5, self.training)
            return self.fc8(x)

    return ZF5SPP()


def torch_step(batch, mode):
    import torch
    import torch.nn.functional as F
    model = torch_model().train()
    images, labels = random_batch(batch)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    if mode == "forward":
        # torch's fastest forward: no autograd bookkeeping (sppcaffe always
        # keeps every activation, as Caffe does).
        def step():
            with torch.no_grad():
                F.cross_entropy(model(x), y)
        return step

    def step():
        # Gradients accumulate as sppcaffe's (and Caffe's) do between solver
        # updates: neither side clears them inside the timed step.
        F.cross_entropy(model(x), y).backward()
    return step


# ---------------------------------------------------------------------------
# Equivalence check: the torch net computes what the sppcaffe net does
# ---------------------------------------------------------------------------
def check_equivalence(batch=2):
    """Same weights and inputs, TEST phase (Dropout passes through): compare
    the SPP features, scores, loss and some parameter gradients."""
    import torch
    import torch.nn.functional as F
    net = sppcaffe_net(batch, "TEST")
    # He-scaled weights instead of the fillers' std 0.01 and biases of 1:
    # those make every conv5 value nearly 1, so max-pooling winners (and the
    # gradients routed to them) hinge on rounding, not on the computation.
    rng = np.random.default_rng(1)
    for weights, bias in net.params.values():
        fan_in = math.prod(weights.shape[1:])
        weights.data[...] = rng.standard_normal(weights.shape) * math.sqrt(2 / fan_in)
        bias.data[...] = rng.uniform(-0.1, 0.1, bias.shape)
    model = torch_model().eval()
    with torch.no_grad():
        for name, blobs in net.params.items():
            module = getattr(model, name)
            module.weight.copy_(torch.from_numpy(blobs[0].data))
            module.bias.copy_(torch.from_numpy(blobs[1].data))
    net.forward_from_to()
    net.backward_from_to()
    x = torch.from_numpy(net.blobs["data"].data.copy())
    y = torch.from_numpy(net.blobs["label"].data.astype(np.int64))
    features = {}
    model.conv5.register_forward_hook(lambda m, i, o: features.update(conv5=F.relu(o)))
    scores = model(x)
    loss = F.cross_entropy(scores, y)
    loss.backward()
    pairs = {
        "spp": (net.blobs["spp"].data, model.spp(features["conv5"])),
        "fc8": (net.blobs["fc8"].data, scores),
        "loss": (net.blobs["loss"].data, loss),
        "conv1 weight grad": (net.params["conv1"][0].diff, model.conv1.weight.grad),
        "fc6 weight grad": (net.params["fc6"][0].diff, model.fc6.weight.grad),
    }
    errors = {}
    for what, (ours, theirs) in pairs.items():
        ours, theirs = np.ravel(ours), np.ravel(theirs.detach().numpy())
        errors[what] = float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs), 1e-30))
    return errors


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------
def worker(args):
    """One measurement, in a fresh process; prints one JSON line."""
    if args.framework == "torch":
        import torch
        torch.set_num_threads(args.threads)
        step = torch_step(args.batch, args.mode)
    elif args.framework == "sppcaffe":
        step = sppcaffe_step(args.batch, args.mode)
    else:
        print(json.dumps({"errors": check_equivalence(args.batch)}))
        return
    median, times = median_ms(step, args.warmup, args.runs)
    print(json.dumps({"median_ms": median, "times_ms": times, "peak_rss_mib": peak_rss_mib()}))


def spawn(args, *extra):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(args.threads),
           "--runs", str(args.runs), "--warmup", str(args.warmup), *extra]
    from competing_load import competing_process
    with competing_process(getattr(args, "competitor", False) and extra[1] != "check"):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"worker {' '.join(extra)} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def environment(threads):
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} CPUs, {threads} threads each; Python "
            f"{platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}")


def measure(args):
    """{(framework, batch, mode): best result over the rounds}.  Each round
    runs every case once per framework, alternating, so a burst of load from
    other processes hits one round, not one framework; the best round's
    median is the least disturbed estimate."""
    best = {}
    for r in range(args.rounds):
        for batch in args.batches:
            for mode in MODES:
                for framework in FRAMEWORKS:
                    result = spawn(args, "--worker", framework, str(batch), mode)
                    print(f"round {r + 1}/{args.rounds}: {framework} batch {batch} {mode}: "
                          f"{result['median_ms']:.1f} ms", file=sys.stderr, flush=True)
                    key = framework, batch, mode
                    if key not in best or result["median_ms"] < best[key]["median_ms"]:
                        best[key] = result
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per case (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--rounds", type=int, default=3,
                        help="repeat every measurement this often, keep the best median")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for both libraries (default: 2, this machine's cores)")
    parser.add_argument("--competitor", action="store_true",
                        help="time every case beside a CPU-bound `python -c \"while True: "
                             "pass\"` process on the same cores (bench/competing_load.py)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip checking that both nets compute the same thing")
    parser.add_argument("--worker", nargs=3, metavar=("FRAMEWORK", "BATCH", "MODE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.framework, batch, args.mode = args.worker
        args.batch = int(batch)
        return worker(args)

    print(environment(args.threads))
    print(f"load average before: {os.getloadavg()[0]:.2f}"
          + ("; every case timed beside a busy process" if args.competitor else ""))
    if not args.no_check:
        errors = spawn(args, "--worker", "check", "2", "-")["errors"]
        print("check, relative error sppcaffe vs torch (TEST phase, same weights): "
              + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
        if max(errors.values()) > 1e-3:
            sys.exit("the two nets disagree: timings would not compare the same computation")
    macs = macs_per_image()
    print(f"conv+fc multiply-adds per image: {macs / 1e9:.3f} G "
          f"(FLOPs = 2 x MACs forward, 6 x MACs forward + backward)")
    best = measure(args)
    print(f"load average after: {os.getloadavg()[0]:.2f}; best of {args.rounds} rounds, "
          f"each the median of {args.runs} runs after {args.warmup} warm-up runs")
    header = ("| case | sppcaffe ms | torch ms | ratio (sppcaffe/torch) | sppcaffe peak RSS MiB "
              "| torch peak RSS MiB | sppcaffe GFLOP/s | torch GFLOP/s |")
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    for batch in args.batches:
        for mode, label in MODES.items():
            ours, theirs = best["sppcaffe", batch, mode], best["torch", batch, mode]
            flops = macs * batch * (2 if mode == "forward" else 6)
            gflops = [flops / (r["median_ms"] * 1e-3) / 1e9 for r in (ours, theirs)]
            print(f"| {label}, batch {batch} | {ours['median_ms']:.1f} | {theirs['median_ms']:.1f} "
                  f"| {ours['median_ms'] / theirs['median_ms']:.2f} | {ours['peak_rss_mib']:.0f} "
                  f"| {theirs['peak_rss_mib']:.0f} | {gflops[0]:.1f} | {gflops[1]:.1f} |")


if __name__ == "__main__":
    main()
