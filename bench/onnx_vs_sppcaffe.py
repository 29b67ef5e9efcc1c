#!/usr/bin/env python3
"""Forward time of an exported net: ONNX Runtime vs sppcaffe, on the CPU.

Nets: ZF-5 SPP (models/zf5_spp/deploy.prototxt, 224x224) and ResNet-50
(tests/caffe_models/community/resnet/ResNet-50-deploy.prototxt, 224x224),
with random weights (ResNet-50: zoo_fill.py's), exported by
sppcaffe.onnx.export.  Before timing, the driver checks that ONNX Runtime's
output equals sppcaffe's (relative error printed).

Every (framework, net, batch) runs in its own subprocess, so that neither
library's thread pool or caches affect the other; both get the same thread
count (OpenBLAS through OPENBLAS_NUM_THREADS/OMP_NUM_THREADS for sppcaffe,
intra_op_num_threads for ONNX Runtime, whose default optimizations are on).
Times: median of --runs forward passes after --warmup, best of --rounds
rounds alternating the frameworks (the shared machine has bursts of load).

    pip install onnx onnxruntime      # or pip install -e '.[onnx]'
    python3 bench/onnx_vs_sppcaffe.py [--runs 10] [--threads 2] [--batches 1 8]
"""
import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from zf5_spp_vs_torch import median_ms  # noqa: E402  (one timing loop for the benches)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

COMMUNITY = os.path.join(ROOT, "tests", "caffe_models", "community")
NETS = {
    "zf5_spp": os.path.join(ROOT, "models", "zf5_spp", "deploy.prototxt"),
    "resnet50": os.path.join(COMMUNITY, "resnet", "ResNet-50-deploy.prototxt"),
}
FRAMEWORKS = ("sppcaffe", "onnxruntime")


def build_net(name, batch):
    """The sppcaffe net at `batch` x 3 x 224 x 224 with its seeded weights."""
    import sppcaffe
    net = sppcaffe.Net(NETS[name], sppcaffe.TEST)
    if name == "resnet50":
        spec = importlib.util.spec_from_file_location("zoo_fill",
                                                      os.path.join(COMMUNITY, "zoo_fill.py"))
        zoo_fill = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(zoo_fill)
        zoo_fill.fill_params(net, 7)
    else:
        rng = np.random.default_rng(0)
        for blobs in net.params.values():
            for i, blob in enumerate(blobs):
                fan_in = int(np.prod(blob.shape[1:])) if blob.data.ndim > 1 else 1
                bound = np.sqrt(3.0 / fan_in) if i == 0 else 0.05
                blob.data[...] = (rng.random(blob.shape, dtype=np.float32) * 2 - 1) * bound
    net.blobs["data"].reshape(batch, 3, 224, 224)
    net.reshape()
    return net


def images(batch):
    return np.random.default_rng(1).standard_normal((batch, 3, 224, 224), dtype=np.float32)


# ---- worker: one framework, one net, one batch ------------------------------------

def worker(args):
    x = images(args.batch)
    if args.framework == "sppcaffe":
        net = build_net(args.net, args.batch)
        net.blobs["data"].data[...] = x

        def step():
            net.forward()
    else:
        import onnxruntime
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(args.model, options,
                                               providers=["CPUExecutionProvider"])

        def step():
            session.run(None, {"data": x})
    print(json.dumps({"ms": median_ms(step, args.warmup, args.runs)[0]}))


def run_worker(args, framework, net, batch, model):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads),
               OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, "--net", net,
           "--batch", str(batch), "--model", model, "--runs", str(args.runs),
           "--warmup", str(args.warmup), "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["ms"]


# ---- driver -------------------------------------------------------------------------

def export_and_check(name, batch, path):
    from sppcaffe.onnx import export
    from sppcaffe.onnx.verify import compare
    net = build_net(name, batch)
    scores = net.bottom_vecs[-1][0].name        # the logits under the softmax
    model = export(net, path, dynamic_batch=True, outputs=list(net.outputs) + [scores])
    errors = compare(net, model, {"data": images(batch)})
    return max(errors.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--net", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.framework = args.worker
        worker(args)
        return
    import onnxruntime
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{args.threads} threads; onnxruntime {onnxruntime.__version__}, numpy {np.__version__}")
    print("| net | batch | sppcaffe ms | ONNX Runtime ms | sppcaffe / ORT | max rel. error |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.nets:
            model = os.path.join(tmp, f"{name}.onnx")
            error = export_and_check(name, min(args.batches), model)
            for batch in args.batches:
                best = {f: float("inf") for f in FRAMEWORKS}
                for _ in range(args.rounds):
                    for framework in FRAMEWORKS:
                        best[framework] = min(best[framework],
                                              run_worker(args, framework, name, batch, model))
                ours, ort = best["sppcaffe"], best["onnxruntime"]
                print(f"| {name} | {batch} | {ours:.1f} | {ort:.1f} | {ours / ort:.2f} | "
                      f"{error:.1e} |", flush=True)


if __name__ == "__main__":
    main()
