#!/usr/bin/env python3
"""Write the SPP-net model prototxts of Table 1 (He et al., TPAMI 2015).

Eight nets share most of their layers (four conv trunks, each with an SPP
head or the no-SPP pool5 baseline), so they are generated from one
description to keep them consistent; every file says so in its header.
Edit this script, then run it from anywhere:

    python3 models/generate.py            # rewrite models/*/{train_val,deploy}.prototxt
    python3 models/generate.py --check    # exit 1 if a file is out of date

The comments written into the prototxts give the source of each choice and
the feature-map size at a 224x224 input, computed here with Caffe's own
output-size arithmetic.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
INPUT_SIZE = 224
NUM_CLASSES = 1000
SPP_LEVELS = (6, 3, 2, 1)          # the paper's 4-level pyramid, 50 bins per channel

# LRN variants.  ZF-5's is the one of the reference fixture
# shared/golden/zf5_spp_small (normalization inside each map, Zeiler & Fergus);
# Convnet*-5 is AlexNet's (across 5 neighbouring maps).
LRN_WITHIN = ("local_size: 3", "alpha: 0.00005", "beta: 0.75", "norm_region: WITHIN_CHANNEL")
LRN_ACROSS = ("local_size: 5", "alpha: 0.0001", "beta: 0.75", "norm_region: ACROSS_CHANNELS")


def conv_out(size, kernel, stride, pad):
    return (size + 2 * pad - kernel) // stride + 1


def pool_out(size, kernel, stride, pad=0, floor=False):
    """Caffe's PoolingLayer::Reshape (ceil by default, last window must
    start inside the image when padded)."""
    span = size + 2 * pad - kernel
    out = (span // stride if floor else -(-span // stride)) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


class NetWriter:
    """Accumulates prototxt layers while tracking the current top blob, its
    channel count and its spatial size at a 224x224 input."""

    def __init__(self, deploy):
        self.deploy = deploy
        self.blocks = []
        self.top, self.channels, self.size = "data", 3, INPUT_SIZE

    def add(self, comment, name, type_, bottom, top, body=(), extra=()):
        lines = [f"# {c}" for c in ([comment] if isinstance(comment, str) else comment or [])]
        lines += ["layer {", f'  name: "{name}"', f'  type: "{type_}"']
        lines += [f'  bottom: "{b}"' for b in ([bottom] if isinstance(bottom, str) else bottom)]
        lines += [f'  top: "{top}"']
        lines += [f"  {e}" for e in extra]
        lines += [f"  {b}" for b in body]
        lines.append("}")
        self.blocks.append("\n".join(lines))
        self.top = top

    def learnable(self, bias):
        """param specs and fillers for a conv/fc layer (train_val only: a
        deploy net gets its weights from a .caffemodel).  Gaussian std 0.01
        and biases 0 or 1 as in Krizhevsky et al. (AlexNet), which the
        paper's nets follow; lr 1/2 and no decay on biases, as Caffe's
        reference ImageNet models."""
        if self.deploy:
            return (), ()
        params = ("param { lr_mult: 1 decay_mult: 1 }  # weights",
                  "param { lr_mult: 2 decay_mult: 0 }  # biases")
        fillers = ('  weight_filler { type: "gaussian" std: 0.01 }',
                   f'  bias_filler {{ type: "constant" value: {bias} }}')
        return params, fillers

    # ---- layers ---------------------------------------------------------
    def conv(self, n, num_output, kernel, stride=1, pad=0, bias=0, why=""):
        name = f"conv{n}"
        self.size = conv_out(self.size, kernel, stride, pad)
        self.channels = num_output
        params, fillers = self.learnable(bias)
        geometry = [f"kernel_size: {kernel}"]
        geometry += [f"stride: {stride}"] if stride != 1 else []
        geometry += [f"pad: {pad}"] if pad else []
        body = ["convolution_param {", f"  num_output: {num_output}",
                *[f"  {g}" for g in geometry], *fillers, "}"]
        comment = (f"{name}: {num_output} x {kernel}x{kernel}, stride {stride}, pad {pad} -> "
                   f"{self.size}x{self.size}{why}")
        self.add(comment, name, "Convolution", self.top, name, body, params)
        self.relu(f"relu{n}")

    def relu(self, name):
        self.add(None, name, "ReLU", self.top, self.top)

    def lrn(self, n, params, why):
        self.add(f"norm{n}: {why}", f"norm{n}", "LRN", self.top, f"norm{n}",
                 ["lrn_param { " + " ".join(params) + " }"])

    def pool(self, name, kernel, stride, floor=False, why="", tail=""):
        self.size = pool_out(self.size, kernel, stride, floor=floor)
        fields = ["pool: MAX", f"kernel_size: {kernel}", f"stride: {stride}"]
        fields += ["round_mode: FLOOR"] if floor else []
        rounding = ", floor rounding" if floor else ""
        comment = (f"{name}: max {kernel}x{kernel}, stride {stride}{rounding} -> "
                   f"{self.size}x{self.size}{tail}{why}")
        self.add(comment, name, "Pooling", self.top, name,
                 ["pooling_param { " + " ".join(fields) + " }"])

    def spp(self):
        dims = self.channels * sum(n * n for n in SPP_LEVELS)
        method = "ADAPTIVE" if self.deploy else "PAPER"
        pyramid = ", ".join(f"{n}x{n}" for n in SPP_LEVELS)
        a = self.size
        comment = [
            "spp: the spatial pyramid pooling layer (Sec. 2.2) replacing pool5: max over",
            f"{pyramid} bins of each of the {self.channels} conv maps -> "
            f"{self.channels} x {sum(n * n for n in SPP_LEVELS)} = {dims}-d, whatever the input size.",
        ]
        if self.deploy:
            comment += [
                "method ADAPTIVE: bin i of n spans [floor(i*a/n), ceil((i+1)*a/n)) along a side of length a,",
                "so every cell is pooled for any input size.  At 224 it gives exactly the PAPER bins the",
                "train_val net was trained with, so trained weights carry over unchanged.  Use",
                "method: PAPER to reproduce the paper's testing windows (ceil(a/n), stride floor(a/n))",
                "or CAFFE for BVLC's SPPLayer geometry.",
            ]
        else:
            comment += [
                f"method PAPER: the window ceil(a/n), stride floor(a/n) of Sec. 2.3, here on {a}x{a} maps",
                "(single-size training at 224), where every level tiles the map exactly.  For",
                "multi-size training (180/224) or other input sizes use method: ADAPTIVE, which",
                "covers every cell for any size (and equals PAPER at 224).",
            ]
        levels = " ".join(f"levels: {n}" for n in SPP_LEVELS)
        self.add(comment, "spp", "SPP", self.top, "spp",
                 [f"spp_param {{ pool: MAX method: {method} {levels} }}"])
        self.size, self.channels = 1, dims

    def pool5(self, kernel, stride, why):
        out = pool_out(self.size, kernel, stride)
        dims = self.channels * out * out
        self.pool("pool5", kernel, stride, why=why, tail=f", {self.channels} x {out * out} = {dims}-d")
        self.channels, self.size = dims, 1

    def fc(self, n, num_output, bias, dropout=True):
        name = f"fc{n}"
        params, fillers = self.learnable(bias)
        comment = f"{name}: {self.channels} -> {num_output}"
        self.add(comment, name, "InnerProduct", self.top, name,
                 ["inner_product_param {", f"  num_output: {num_output}", *fillers, "}"], params)
        self.channels = num_output
        if dropout:
            # relu_fc6 rather than relu6: Overfeat-7 has a conv6 with its own relu6.
            self.relu(f"relu_fc{n}")
            self.add(None, f"drop_fc{n}", "Dropout", name, name,
                     ["dropout_param { dropout_ratio: 0.5 }"])


# ---------------------------------------------------------------------------
# Trunks (conv1 .. conv5/conv7) from Table 1
# ---------------------------------------------------------------------------
def zf5(w):
    w.conv(1, 96, 7, stride=2, pad=1, why=" (ZF-5, Table 1)")
    w.lrn(1, LRN_WITHIN, "within-channel LRN, as the reference fixture golden/zf5_spp_small")
    w.pool("pool1", 3, 2, why=" (Table 1)")
    w.conv(2, 256, 5, stride=2, bias=1)
    w.lrn(2, LRN_WITHIN, "as norm1")
    w.pool("pool2", 3, 2, why=" (Table 1)")
    w.conv(3, 384, 3, pad=1)
    w.conv(4, 384, 3, pad=1, bias=1)
    w.conv(5, 256, 3, pad=1, bias=1)


def convnet5(w):
    w.conv(1, 96, 11, stride=4, pad=2, why=" (Convnet*-5, Table 1: AlexNet's conv1, pad 2 for 55x55)")
    w.lrn(1, LRN_ACROSS, "AlexNet's LRN")
    w.conv(2, 256, 5, pad=2, bias=1)
    w.lrn(2, LRN_ACROSS, "AlexNet's LRN")
    # Sec. 3.1.1: "we put the two pooling layers after conv2 and conv3
    # (instead of after conv1 and conv2)", so the maps match ZF-5's sizes.
    w.pool("pool2", 3, 2, why=" (Table 1; pooling moved after conv2)")
    w.conv(3, 384, 3, pad=1)
    w.pool("pool3", 3, 2, why=" (Table 1; pooling moved after conv3)")
    w.conv(4, 384, 3, pad=1, bias=1)
    w.conv(5, 256, 3, pad=1, bias=1)


def overfeat(depth):
    def trunk(w):
        w.conv(1, 96, 7, stride=2, why=f" (Overfeat-{depth}, Table 1)")
        # FLOOR rounding: Caffe's default ceil would give 37x37, Table 1 has 36x36.
        w.pool("pool1", 3, 3, floor=True, why=" (Table 1)")
        w.lrn(1, LRN_WITHIN, "LRN after the first stage (Table 1); parameters as ZF-5's")
        w.conv(2, 256, 5, pad=2, bias=1)
        w.pool("pool2", 2, 2, why=" (Table 1)")
        w.conv(3, 512, 3, pad=1)
        for n in range(4, depth + 1):
            w.conv(n, 512, 3, pad=1, bias=1)
    return trunk


# name: (title, trunk, spp?, pool5 kernel/stride for the baseline)
MODELS = {
    "zf5_spp": ("ZF-5 SPP", zf5, True, None),
    "zf5": ("ZF-5 (no SPP)", zf5, False, (3, 2)),
    "convnet5_spp": ("Convnet*-5 SPP", convnet5, True, None),
    "convnet5": ("Convnet*-5 (no SPP)", convnet5, False, (3, 2)),
    "overfeat5_spp": ("Overfeat-5 SPP", overfeat(5), True, None),
    "overfeat5": ("Overfeat-5 (no SPP)", overfeat(5), False, (3, 3)),
    "overfeat7_spp": ("Overfeat-7 SPP", overfeat(7), True, None),
    "overfeat7": ("Overfeat-7 (no SPP)", overfeat(7), False, (3, 3)),
}


def data_layers(w):
    """ImageNet LMDBs as BVLC's reference models read them, with the
    paper's 224x224 crops (single-size training, Sec. 2.3) and mini-batches
    of 128."""
    for phase, source, batch, mirror in (("TRAIN", "ilsvrc12_train_lmdb", 128, "true"),
                                         ("TEST", "ilsvrc12_val_lmdb", 50, "false")):
        w.blocks.append("\n".join([
            "layer {", '  name: "data"', '  type: "Data"', '  top: "data"', '  top: "label"',
            f"  include {{ phase: {phase} }}",
            "  transform_param {",
            f"    mirror: {mirror}",
            f"    crop_size: {INPUT_SIZE}",
            '    mean_file: "data/ilsvrc12/imagenet_mean.binaryproto"',
            "  }",
            "  data_param {",
            f'    source: "examples/imagenet/{source}"',
            f"    batch_size: {batch}",
            "    backend: LMDB",
            "  }",
            "}"]))


def output_layers(w):
    if w.deploy:
        w.add(None, "prob", "Softmax", "fc8", "prob")
        return
    w.add("top-1 and top-5 accuracy on the validation set", "accuracy", "Accuracy",
          ["fc8", "label"], "accuracy", extra=["include { phase: TEST }"])
    w.add(None, "accuracy_top5", "Accuracy", ["fc8", "label"], "accuracy_top5",
          ["accuracy_param { top_k: 5 }"], extra=["include { phase: TEST }"])
    w.add(None, "loss", "SoftmaxWithLoss", ["fc8", "label"], "loss")


def render(model, deploy):
    title, trunk, with_spp, pool5 = MODELS[model]
    w = NetWriter(deploy)
    kind = "deploy" if deploy else "train_val"
    header = [f"# {title}: SPP-net paper (He, Zhang, Ren, Sun, TPAMI 2015), Table 1.",
              f"# Written by models/generate.py ({kind}) from one description of Table 1. Copy and edit it"
              "\n# freely (e.g. the spp layer's method and levels); the shipped copy is kept in step by the script.",
              f'name: "{title}"']
    if deploy:
        header += [f"# One {INPUT_SIZE}x{INPUT_SIZE} image; the net reshapes itself to any input size"
                   + (" (the SPP output stays the same length)." if with_spp else "."),
                   "layer {", '  name: "data"', '  type: "Input"', '  top: "data"',
                   f"  input_param {{ shape {{ dim: 1 dim: 3 dim: {INPUT_SIZE} dim: {INPUT_SIZE} }} }}",
                   "}"]
    else:
        data_layers(w)
    trunk(w)
    if with_spp:
        w.spp()
    else:
        w.pool5(*pool5, why=" (no-SPP baseline: 6x6 only at 224)")
    w.fc(6, 4096, bias=1)
    w.fc(7, 4096, bias=1)
    w.fc(8, NUM_CLASSES, bias=0, dropout=False)
    output_layers(w)
    return "\n".join(header + w.blocks) + "\n"


def outputs():
    for model in MODELS:
        for deploy in (False, True):
            name = "deploy.prototxt" if deploy else "train_val.prototxt"
            yield os.path.join(HERE, model, name), render(model, deploy)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="only compare the files with what would be written; exit 1 if they differ")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs():
        try:
            with open(path, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current == text:
            continue
        stale.append(os.path.relpath(path))
        if not args.check:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    if args.check and stale:
        print("out of date (run python3 models/generate.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    for path in stale:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
