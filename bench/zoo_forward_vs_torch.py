#!/usr/bin/env python3
"""Model-zoo deploy nets, forward on the CPU: sppcaffe vs PyTorch.

Nets: ResNet-50 (BatchNorm + Scale after every convolution) and MobileNet v1
(depthwise convolutions), their real community prototxts
(tests/caffe_models/community), 224x224, with zoo_fill.py's deterministic
parameters.  The PyTorch side is built from the same prototxt by a small
translator (torch.nn.functional per Caffe layer) and gets the same weights;
before any timing, its outputs are checked against sppcaffe's.

sppcaffe runs twice: as it comes (TEST nets fold BatchNorm + Scale into the
convolution before them, see sppcaffe/fusion.py) and with that folding off
(``fold_batchnorm=False``), so the lever's share is visible.

Every (framework, case) runs in its own subprocess with the same thread
count (OpenBLAS via OPENBLAS_NUM_THREADS/OMP_NUM_THREADS, torch via
torch.set_num_threads); times are the median of --runs runs after --warmup,
best of --rounds rounds.  A run during which other processes took more than
a tenth of a CPU (/proc/stat against the worker's own CPU time) is dropped
and repeated: on a shared 2-core machine one busy neighbour slows a
2-thread GEMM several-fold.

    pip install torch==2.13.0        # benchmark-only dependency
    python3 bench/zoo_forward_vs_torch.py [--nets resnet50 mobilenet] [--batches 8 1]
"""
import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
COMMUNITY = os.path.join(ROOT, "tests", "caffe_models", "community")
NETS = {"resnet50": "resnet/ResNet-50-deploy.prototxt",
        "mobilenet": "mobilenet/mobilenet_deploy.prototxt"}
VARIANTS = ("sppcaffe", "sppcaffe-nofold", "torch")


# ---------------------------------------------------------------------------
# sppcaffe
# ---------------------------------------------------------------------------
def sppcaffe_net(name, batch, fold=True):
    import importlib.util

    import sppcaffe
    spec = importlib.util.spec_from_file_location("zoo_fill", os.path.join(COMMUNITY, "zoo_fill.py"))
    zoo_fill = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo_fill)
    net = sppcaffe.Net(os.path.join(COMMUNITY, NETS[name]), sppcaffe.TEST, fold_batchnorm=fold)
    zoo_fill.fill_params(net, 7)
    rng = np.random.default_rng(7)
    for blob in net.inputs:
        shape = (batch,) + net.blobs[blob].shape[1:]
        net.blobs[blob].reshape(*shape)
        net.blobs[blob].data[...] = rng.standard_normal(shape, dtype=np.float32)
    net.reshape()
    return net


# ---------------------------------------------------------------------------
# PyTorch: the same prototxt, layer by layer
# ---------------------------------------------------------------------------
def _pair(p, field, default):
    """Caffe's kernel/stride/pad as (h, w) from the repeated or _h/_w fields."""
    h, w = getattr(p, field + "_h", 0), getattr(p, field + "_w", 0)
    if h or w:
        return int(h), int(w)
    values = getattr(p, field + "_size" if field == "kernel" else field)
    # Pooling's fields are scalars (0: unset), Convolution's are repeated.
    values = [values] if isinstance(values, int) and values else \
        [] if isinstance(values, int) else list(values)
    if not values:
        return default, default
    return int(values[0]), int(values[-1])


def _caffe_pool_size(size, kernel, stride, pad):
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1            # the last window must start inside the image
    return out


def torch_runner(net):
    """A function of the input tensor computing every layer of `net` (an
    sppcaffe TEST net) with torch.nn.functional, from copies of its weights."""
    import torch
    import torch.nn.functional as F

    steps = []
    for layer, bottoms, tops in zip(net.layers, net._bottom_names, net._top_names):
        lp, kind = layer.param, layer.param.type
        weights = [torch.from_numpy(b.data.copy()) for b in layer.blobs]
        if kind == "Input" or kind == "Split" or kind == "Dropout":
            fn = None if kind == "Input" else (lambda xs: xs[0])
        elif kind == "Convolution":
            p = lp.convolution_param
            stride, pad = _pair(p, "stride", 1), _pair(p, "pad", 0)
            dilation = int(p.dilation[0]) if len(p.dilation) else 1
            bias = weights[1] if p.bias_term else None
            fn = (lambda w, b, s, pd, d, g: lambda xs: F.conv2d(xs[0], w, b, s, pd, d, g))(
                weights[0], bias, stride, pad, dilation, p.group)
        elif kind == "BatchNorm":
            factor = float(layer.blobs[2].data[0])
            factor = 0.0 if factor == 0 else 1.0 / factor
            mean, var = weights[0] * factor, weights[1] * factor
            eps = lp.batch_norm_param.eps
            fn = (lambda m, v, e: lambda xs: F.batch_norm(xs[0], m, v, training=False, eps=e))(
                mean, var, eps)
        elif kind == "Scale":
            gamma = weights[0].reshape(1, -1, 1, 1)
            beta = weights[1].reshape(1, -1, 1, 1) if len(weights) > 1 else None
            fn = (lambda g, b: lambda xs: xs[0] * g + b if b is not None else xs[0] * g)(gamma, beta)
        elif kind == "ReLU":
            slope = lp.relu_param.negative_slope
            fn = (lambda s: lambda xs: F.leaky_relu(xs[0], s) if s else F.relu(xs[0]))(slope)
        elif kind == "Pooling":
            fn = _torch_pooling(lp.pooling_param, net.blobs[bottoms[0]].shape, F)
        elif kind == "Eltwise":
            p = lp.eltwise_param
            coeffs = list(p.coeff) or [1.0] * len(bottoms)
            if p.operation == 1:            # SUM
                fn = (lambda c: lambda xs: sum(ci * x if ci != 1 else x for ci, x in zip(c, xs)))(
                    coeffs)
            elif p.operation == 0:          # PROD
                fn = lambda xs: math.prod(xs)                                  # noqa: E731
            else:
                fn = lambda xs: torch.stack(xs).amax(0)                       # noqa: E731
        elif kind == "InnerProduct":
            axis = lp.inner_product_param.axis
            bias = weights[1] if lp.inner_product_param.bias_term else None
            fn = (lambda w, b, a: lambda xs: F.linear(xs[0].flatten(a), w, b))(
                weights[0], bias, axis)
        elif kind == "Softmax":
            fn = (lambda a: lambda xs: F.softmax(xs[0], a))(lp.softmax_param.axis)
        elif kind == "Concat":
            fn = (lambda a: lambda xs: torch.cat(xs, a))(lp.concat_param.axis)
        else:
            raise SystemExit(f"the torch translator has no '{kind}' (layer '{lp.name}')")
        steps.append((fn, list(bottoms), list(tops)))

    def run(inputs):
        blobs = dict(inputs)
        for fn, bottoms, tops in steps:
            if fn is None:
                continue
            out = fn([blobs[b] for b in bottoms])
            for top in tops:        # several only for Split: copies of one blob
                blobs[top] = out
        return blobs
    return run


def _torch_pooling(p, shape, F):
    if p.global_pooling:
        kernel, stride, pad = (shape[2], shape[3]), (1, 1), (0, 0)
    else:
        kernel, stride, pad = _pair(p, "kernel", 1), _pair(p, "stride", 1), _pair(p, "pad", 0)
    out = [_caffe_pool_size(shape[2 + i], kernel[i], stride[i], pad[i]) for i in range(2)]
    # Caffe's output size is torch's ceil mode (with the same last-window
    # rule); checked against sppcaffe's shape below.
    if p.pool == 0:
        def fn(xs):
            y = F.max_pool2d(xs[0], kernel, stride, pad, ceil_mode=True)
            assert list(y.shape[2:]) == out
            return y
    else:
        def fn(xs):
            y = F.avg_pool2d(xs[0], kernel, stride, pad, ceil_mode=True, count_include_pad=True)
            assert list(y.shape[2:]) == out
            return y
    return fn


def torch_step(name, batch):
    import torch
    net = sppcaffe_net(name, batch)
    run = torch_runner(net)
    inputs = {b: torch.from_numpy(net.blobs[b].data.copy()) for b in net.inputs}

    def step():
        with torch.no_grad():
            run(inputs)
    return step


def check(name, batch=2):
    """Relative error of torch's outputs (and a few inner blobs) against sppcaffe's."""
    import torch
    errors = {}
    for fold in (True, False):
        net = sppcaffe_net(name, batch, fold)
        run = torch_runner(net)
        with torch.no_grad():
            ours = run({b: torch.from_numpy(net.blobs[b].data.copy()) for b in net.inputs})
        net.forward()
        names = list(net.outputs) + [n for n in list(net.blobs)[len(net.blobs) // 2::17]
                                     if n in ours][:3]
        for blob in names:
            a, b = net.blobs[blob].data.ravel(), ours[blob].numpy().ravel()
            key = f"{blob}{'' if fold else ' (no fold)'}"
            errors[key] = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
    return errors


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------
def _busy_seconds():
    """CPU seconds every process of the machine has run (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]                    # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds():
    t = os.times()
    return t.user + t.system


def median_ms(step, warmup, runs, max_foreign=0.1):
    """Median of `runs` timed runs during which other processes used at most
    `max_foreign` of a CPU (plus one clock tick); noisier runs are dropped
    and repeated, up to 5x `runs` tries (then the quietest are kept).
    Returns (median ms, runs dropped)."""
    for _ in range(warmup):
        step()
    quiet, noisy = [], []
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    for _ in range(5 * runs):
        busy, own = _busy_seconds(), _own_seconds()
        start = time.perf_counter()
        step()
        wall = time.perf_counter() - start
        foreign = (_busy_seconds() - busy) - (_own_seconds() - own)
        (quiet if foreign <= max_foreign * wall + tick else noisy).append((foreign, wall * 1e3))
        if len(quiet) == runs:
            break
    kept = quiet + sorted(noisy)[:max(0, runs - len(quiet))]
    return statistics.median(ms for _, ms in kept), len(noisy)


def worker(args):
    variant, name, batch = args.worker[0], args.worker[1], int(args.worker[2])
    if variant == "check":
        print(json.dumps({"errors": check(name, batch)}))
        return
    if variant == "torch":
        import torch
        torch.set_num_threads(args.threads)
        step = torch_step(name, batch)
    else:
        step = sppcaffe_net(name, batch, fold=variant == "sppcaffe").forward
    ms, dropped = median_ms(step, args.warmup, args.runs)
    print(json.dumps({"median_ms": ms, "dropped": dropped}))


def spawn(args, *extra):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    # What `import sppcaffe` sets, but OpenBLAS reads it when NumPy loads,
    # which this script does first: idle BLAS threads stop spinning and
    # leave the cores to sppcaffe's own threads.
    env.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(args.threads),
           "--runs", str(args.runs), "--warmup", str(args.warmup), "--worker", *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"worker {' '.join(extra)} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 1])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import torch
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} "
          f"threads each; numpy {np.__version__}, torch {torch.__version__}; load average "
          f"{os.getloadavg()[0]:.2f}")
    for name in args.nets:
        errors = spawn(args, "check", name, "2")["errors"]
        print(f"{name}: torch vs sppcaffe, relative error: "
              + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
        if max(errors.values()) > 1e-4:
            sys.exit("the two nets disagree: timings would not compare the same computation")
    best = {}
    for r in range(args.rounds):
        for name in args.nets:
            for batch in args.batches:
                for variant in VARIANTS:
                    result = spawn(args, variant, name, str(batch))
                    ms = result["median_ms"]
                    print(f"round {r + 1}: {name} batch {batch} {variant}: {ms:.1f} ms "
                          f"({result['dropped']} noisy runs dropped)", file=sys.stderr, flush=True)
                    key = name, batch, variant
                    best[key] = min(best.get(key, ms), ms)
    print(f"load average after: {os.getloadavg()[0]:.2f}; best of {args.rounds} rounds, each the "
          f"median of {args.runs} runs after {args.warmup} warm-up")
    print("| net, batch | sppcaffe ms | sppcaffe, no folding ms | torch ms | ratio sppcaffe/torch "
          "| ratio without folding |")
    print("|---|---|---|---|---|---|")
    for name in args.nets:
        for batch in args.batches:
            ours, nofold, theirs = (best[name, batch, v] for v in VARIANTS)
            print(f"| {name}, {batch} | {ours:.0f} | {nofold:.0f} | {theirs:.0f} | "
                  f"{ours / theirs:.2f} | {nofold / theirs:.2f} |")


if __name__ == "__main__":
    main()
