#!/usr/bin/env python3
"""ZF-5 SPP on the GPU: sppcaffe's PyCUDA backend against PyTorch + cuDNN.

Case (issue 5): a training pass -- forward + backward, batch 64 at 224 x
224, random images and labels -- of models/zf5_spp/train_val.prototxt's
TRAIN net, and of the same computation in torch (bench/zf5_spp_vs_torch.py's
model, checked against sppcaffe there), on the same GPU in one run.  Both in
float32: torch's TF32 shortcuts are switched off so the two do the same
arithmetic (--tf32 leaves torch its defaults, for the record).  Times are
medians of --runs synchronized steps after --warmup steps.

Also timed: the SGD update of the 58 M parameters (sppcaffe's solver
kernels; torch.optim.SGD with momentum and weight decay).

    python3 bench/gpu_vs_torch.py [--batch 64] [--runs 20]
    SPPCAFFE_GPU=host python3 bench/gpu_vs_torch.py --batch 2 --runs 1 --no-torch   # smoke run, no GPU
"""
import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "bench")):
    if path not in sys.path:
        sys.path.insert(0, path)

import zf5_spp_vs_torch as zf5  # noqa: E402


def timed(step, synchronize, warmup, runs):
    for _ in range(warmup):
        step()
    synchronize()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def sppcaffe_case(args):
    """(device name, forward+backward ms, SGD update ms) on the GPU."""
    import sppcaffe
    from sppcaffe import backends, io
    from sppcaffe.proto import caffe_pb2
    sppcaffe.set_device(args.device)
    sppcaffe.set_mode_gpu()
    device = backends.current_device()
    param = caffe_pb2.SolverParameter(base_lr=0.01, momentum=0.9, weight_decay=5e-4,
                                      lr_policy="fixed", max_iter=10 ** 6, display=0,
                                      snapshot_after_train=False, random_seed=0, type="SGD")
    param.net_param.CopyFrom(io.read_net(zf5.TRAIN_VAL))
    solver = sppcaffe.get_solver(param, data_shapes={"data": (args.batch, 3, zf5.SIZE, zf5.SIZE),
                                                     "label": (args.batch,)})
    net = solver.net
    images, labels = zf5.random_batch(args.batch)
    net.blobs["data"].data[...] = images
    net.blobs["label"].data[...] = labels

    def step():
        net.forward_from_to()
        net.backward_from_to()
    fwd_bwd = timed(step, device.synchronize, args.warmup, args.runs)
    update = timed(solver.apply_update, device.synchronize, args.warmup, args.runs)
    return device.name, fwd_bwd, update


def torch_case(args):
    import torch
    import torch.nn.functional as F
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    device = torch.device(f"cuda:{args.device}")
    model = zf5.torch_model().train().to(device)
    images, labels = zf5.random_batch(args.batch)
    x, y = torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device)

    def step():
        F.cross_entropy(model(x), y).backward()
    fwd_bwd = timed(step, torch.cuda.synchronize, args.warmup, args.runs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    update = timed(optimizer.step, torch.cuda.synchronize, args.warmup, args.runs)
    return torch.cuda.get_device_name(device), fwd_bwd, update


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", type=int, default=0)
    parser.add_argument("--tf32", action="store_true", help="leave torch's TF32 on (its default)")
    parser.add_argument("--no-torch", action="store_true", help="sppcaffe only (smoke runs)")
    args = parser.parse_args(argv)
    name, ours, ours_update = sppcaffe_case(args)
    print(f"ZF-5 SPP forward+backward, batch {args.batch} at {zf5.SIZE}, float32, on {name}")
    print(f"  sppcaffe (PyCUDA + cuBLAS): {ours:9.1f} ms")
    print(f"  sppcaffe SGD update:        {ours_update:9.2f} ms")
    if not args.no_torch:
        torch_name, theirs, theirs_update = torch_case(args)
        print(f"  PyTorch (cuDNN{', TF32' if args.tf32 else ''}):        {theirs:9.1f} ms  "
              f"on {torch_name}")
        print(f"  torch SGD update:           {theirs_update:9.2f} ms")
        print(f"  ratio sppcaffe / torch: forward+backward {ours / theirs:.2f} (target <= 1.5)"
              f", update {ours_update / theirs_update:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
