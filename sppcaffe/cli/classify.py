"""pycaffe's python/classify.py: classify images with a deploy net and save
the class scores as a .npy array (one row per image).

    classify INPUT OUTPUT.npy --model_def deploy.prototxt --pretrained_model w.caffemodel

INPUT is an image file, a directory (its *.EXT images, in name order) or a
.npy array of H x W x K images.  The arguments, their defaults and the
printed lines are pycaffe's; model and mean defaults are the paths of a
Caffe checkout (run from its root, or give them).  sppcaffe adds: a mean
may also be a .binaryproto file (compute_image_mean's output), and
--print_results prints each image's top 5 classes (names from
--labels_file).
"""
import argparse
import glob
import os
import sys
import time

import numpy as np

from .. import io
from ..classifier import Classifier
from ..io.files import load_numpy, path_problem
from . import CliError, device_for, progress, require_file, require_writable

PROG = "classify"
CAFFE_MODEL = "models/bvlc_reference_caffenet/deploy.prototxt"
CAFFE_WEIGHTS = "models/bvlc_reference_caffenet/bvlc_reference_caffenet.caffemodel"
CAFFE_MEAN = "python/caffe/imagenet/ilsvrc_2012_mean.npy"
CAFFE_LABELS = "data/ilsvrc12/synset_words.txt"


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, description="Classify images with a Caffe deploy net (pycaffe's classify.py); "
                               "save the (images x classes) scores as .npy.")
    parser.add_argument("input_file", help="Input image, directory, or npy.")
    parser.add_argument("output_file", help="Output npy filename.")
    add_model_arguments(parser)
    parser.add_argument("--center_only", action="store_true",
                        help="Switch for prediction from center crop alone instead of "
                             "averaging predictions across crops (default).")
    parser.add_argument("--images_dim", default="256,256",
                        help="Canonical 'height,width' dimensions of input images "
                             "(default: %(default)s).")
    parser.add_argument("--mean_file", default=CAFFE_MEAN,
                        help="Data set image mean of [Channels x Height x Width] dimensions "
                             "(.npy, or .binaryproto). Set to '' for no mean subtraction "
                             "(default: %(default)s).")
    add_scale_arguments(parser)
    parser.add_argument("--ext", default="jpg",
                        help="Image file extension to take as input when a directory is given "
                             "as the input file (default: %(default)s).")
    parser.add_argument("--labels_file", default=CAFFE_LABELS,
                        help="Class names, one per line ('synset name, ...' as Caffe's "
                             "synset_words.txt), for --print_results (default: %(default)s).")
    parser.add_argument("--print_results", action="store_true",
                        help="Also print each image's top 5 classes.")
    return parser


def add_model_arguments(parser):
    """--model_def, --pretrained_model and --gpu, shared with detect."""
    parser.add_argument("--model_def", default=CAFFE_MODEL,
                        help="Model definition file (default: %(default)s).")
    parser.add_argument("--pretrained_model", default=CAFFE_WEIGHTS,
                        help="Trained model weights file (default: %(default)s).")
    parser.add_argument("--gpu", action="store_true",
                        help="Switch for gpu computation (GPU 0).")


def add_scale_arguments(parser):
    """--input_scale, --raw_scale and --channel_swap, shared with detect."""
    parser.add_argument("--input_scale", type=float,
                        help="Multiply input features by this scale to finish preprocessing.")
    parser.add_argument("--raw_scale", type=float, default=255.0,
                        help="Multiply raw input by this scale before preprocessing "
                             "(default: %(default)s).")
    parser.add_argument("--channel_swap", default="2,1,0",
                        help="Order to permute input channels. The default converts RGB -> BGR "
                             "since BGR is the Caffe default by way of OpenCV.")


def int_list(text, flag):
    """'2,1,0' -> [2, 1, 0]; a CliError naming `flag` otherwise."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise CliError(f"{flag} expects comma-separated integers such as 2,1,0, "
                       f"got '{text}'") from None


def existing_file(path, flag):
    require_file(path, flag)
    return path


def load_mean(path):
    """A mean file as an array: .npy as saved, .binaryproto as (K, H, W)."""
    problem = path_problem(path)
    if problem:
        raise CliError(f"cannot read --mean_file '{path}': {problem} "
                       "(--mean_file '' subtracts no mean)")
    if path.endswith(".binaryproto"):
        mean = io.read_blobproto(path)
        return mean[0] if mean.ndim == 4 and mean.shape[0] == 1 else mean
    mean = load_numpy(path, "--mean_file", CliError)
    if not isinstance(mean, np.ndarray):
        raise CliError(f"--mean_file '{path}' is an .npz archive, not a .npy array")
    return mean


def channel_swap_of(args):
    return int_list(args.channel_swap, "--channel_swap") if args.channel_swap else None


def load_inputs(path, ext):
    """Images from a .npy array, a directory's *.ext files or one image."""
    path = os.path.expanduser(path)
    if path.endswith("npy"):
        print(f"Loading file: {path}")
        return np.load(path)
    if os.path.isdir(path):
        print(f"Loading folder: {path}")
        files = sorted(glob.glob(os.path.join(glob.escape(path), "*." + ext)))
        if not files:
            raise CliError(f"folder '{path}' has no *.{ext} images (see --ext)")
        return [io.load_image(f) for f in files]
    print(f"Loading file: {path}")
    return [io.load_image(existing_file(path, "input image"))]


def read_labels(path):
    """Class names from a synset_words.txt-style file: the line's first
    word is dropped when it is a WordNet id (n01440764), then the first
    comma-separated name is kept."""
    with open(existing_file(path, "--labels_file")) as f:
        lines = [line.strip() for line in f if line.strip()]
    labels = []
    for line in lines:
        first, _, rest = line.partition(" ")
        name = rest if (first[:1] == "n" and first[1:].isdigit() and rest) else line
        labels.append(name.split(",")[0].strip())
    return labels


def print_top5(predictions, labels):
    for row, scores in enumerate(predictions):
        top = np.argsort(-scores)[:5]
        names = [labels[i] if i < len(labels) else str(i) for i in top]
        ranked = ", ".join(f"{name} ({scores[i]:.5f})" for name, i in zip(names, top))
        print(f"image {row}: {ranked}")


def classify(args):
    image_dims = int_list(args.images_dim, "--images_dim")
    if len(image_dims) != 2:
        raise CliError(f"--images_dim expects 'height,width', got '{args.images_dim}'")
    mean = load_mean(args.mean_file) if args.mean_file else None
    require_writable(args.output_file, "the output")
    print("GPU mode" if args.gpu else "CPU mode")
    classifier = Classifier(existing_file(args.model_def, "--model_def"),
                            existing_file(args.pretrained_model, "--pretrained_model"),
                            image_dims=image_dims, mean=mean, input_scale=args.input_scale,
                            raw_scale=args.raw_scale, channel_swap=channel_swap_of(args))

    inputs = load_inputs(args.input_file, args.ext)
    print(f"Classifying {len(inputs)} inputs.")
    start = time.time()
    predictions = classifier.predict(inputs, not args.center_only)
    print(f"Done in {time.time() - start:.2f} s.")
    if args.print_results:
        print_top5(predictions, read_labels(args.labels_file))

    print(f"Saving results into {args.output_file}")
    np.save(args.output_file, predictions)
    return 0


def run_with_device(prog, body, args):
    """`body(args)` as a tool, on GPU 0 with --gpu (pycaffe's flag takes no
    id), CPU mode again afterwards; user errors printed as `prog: error: ...`."""
    def run(args):
        with device_for("0" if args.gpu else None):
            return body(args)
    return progress.run_main(prog, run, args)


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_with_device(PROG, classify, args)


if __name__ == "__main__":
    sys.exit(main())
