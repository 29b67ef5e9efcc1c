#!/usr/bin/env python3
"""The per-layer cost floor: microseconds per layer per pass that sppcaffe
spends around a layer whose arithmetic is next to nothing.

Nets of --layers tiny layers in a chain on a 1x4 blob (force_backward, so
every layer runs backward too):

- ReLU: each layer its own top blob;
- ReLU in place: every layer reads and writes the same blob;
- InnerProduct: 4 -> 4 fully connected layers (a 4x4 weight, a bias);
- ReLU + Split: each ReLU's top read by two layers, so the net inserts a
  Split layer per ReLU (counted as layers).

Time per pass = best of --rounds rounds of --runs forward_from_to() (or
backward_from_to()) calls, divided by the number of layers.  For scale,
the same number of bare `np.maximum(x, 0, out=y)` calls on the same
blob is timed too: what a Python loop over the layers cannot go below.

    python3 bench/layer_overhead.py [--layers 200] [--runs 50] [--rounds 5]
"""
import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import sppcaffe  # noqa: E402
from competing_load import load_averages  # noqa: E402
from sppcaffe.io import parse_net_text  # noqa: E402

WIDTH = 4


def chain(kind, count):
    """The prototxt of an Input and `count` layers of `kind`."""
    lines = ['name: "tiny_layers" force_backward: true',
             f'layer {{ name: "data" type: "Input" top: "b0" '
             f'input_param {{ shape {{ dim: 1 dim: {WIDTH} }} }} }}']
    for i in range(count):
        bottom, top = f"b{i}", f"b{i + 1}"
        if kind == "ReLU":
            lines.append(f'layer {{ name: "l{i}" type: "ReLU" bottom: "{bottom}" top: "{top}" }}')
        elif kind == "ReLU in place":
            lines.append(f'layer {{ name: "l{i}" type: "ReLU" bottom: "b0" top: "b0" }}')
        elif kind == "InnerProduct":
            lines.append(f'layer {{ name: "l{i}" type: "InnerProduct" bottom: "{bottom}" '
                         f'top: "{top}" inner_product_param {{ num_output: {WIDTH} '
                         f'weight_filler {{ type: "gaussian" std: 0.5 }} }} }}')
        elif kind == "ReLU + Split":
            # Each top feeds the next ReLU and a side ReLU: the net splits it.
            lines.append(f'layer {{ name: "l{i}" type: "ReLU" bottom: "{bottom}" top: "{top}" }}')
            if i + 1 < count:
                lines.append(f'layer {{ name: "side{i}" type: "ReLU" bottom: "{top}" '
                             f'top: "side{i}" }}')
        else:
            raise ValueError(kind)
    return "\n".join(lines)


KINDS = ("ReLU", "ReLU in place", "InnerProduct", "ReLU + Split")


def best_per_call(fn, runs, rounds):
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(runs):
            fn()
        best = min(best, (time.perf_counter() - start) / runs)
    return best


def measure(kind, count, runs, rounds):
    net = sppcaffe.Net(parse_net_text(chain(kind, count)), sppcaffe.TRAIN)
    net.blobs["b0"].data[...] = 1
    for _ in range(3):
        net.forward_from_to()
        net.backward_from_to()
    layers = len(net.layers) - 1            # the Input layer is not counted
    forward = best_per_call(net.forward_from_to, runs, rounds) / layers
    backward = best_per_call(net.backward_from_to, runs, rounds) / layers
    return layers, forward * 1e6, backward * 1e6


def bare_numpy(count, runs, rounds):
    x = np.ones((1, WIDTH), np.float32)
    y = np.empty_like(x)

    def loop():
        for _ in range(count):
            np.maximum(x, 0, out=y)
    return best_per_call(loop, runs, rounds) / count * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=200)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}, numpy {np.__version__}; {args.layers} layers per "
          f"net, best of {args.rounds} rounds of {args.runs} passes; load averages before: "
          f"{load_averages()}")
    print("| net | layers | forward µs/layer | backward µs/layer |")
    print("|---|---|---|---|")
    for kind in KINDS:
        layers, forward, backward = measure(kind, args.layers, args.runs, args.rounds)
        print(f"| {kind} | {layers} | {forward:.2f} | {backward:.2f} |")
    print(f"| bare np.maximum(x, 0, out=y), for scale | {args.layers} | "
          f"{bare_numpy(args.layers, args.runs, args.rounds):.2f} | - |")
    print(f"load averages after: {load_averages()}")


if __name__ == "__main__":
    main()
