"""pycaffe's python/detect.py: score image windows with a deploy net
(R-CNN style: each window warped to the input size) and save them.

    detect windows.csv out.csv --crop_mode list --model_def net.prototxt --pretrained_model w
    detect images.txt out.h5 --model_def net.prototxt --pretrained_model w  # selective search

Input: a .txt list of image files (selective search finds the windows), or
a .csv with a header naming the columns filename, xmin, ymin, xmax, ymax
(pycaffe windows: 0-based, maxima exclusive) for --crop_mode list.

Output, by extension: .csv, one row per window: filename, ymin, xmin,
ymax, xmax, class0 ... class(C-1) (what pycaffe's csv branch meant to
write); anything else (.h5): HDF5 with a group "df" holding one dataset
per column: filename (strings), ymin, xmin, ymax, xmax (ints) and
prediction (windows x C).  pycaffe wrote its .h5 with pandas/PyTables
(``pd.read_hdf(f, "df")``), which sppcaffe does not depend on; read this
one with h5py: ``h5py.File(f)["df/prediction"][:]``.
"""
import argparse
import csv
import sys
import time

import h5py
import numpy as np

from ..detector import Detector
from ..io.atomic import atomic_write
from . import CliError, require_writable
from .classify import (CAFFE_MEAN, add_model_arguments, add_scale_arguments, channel_swap_of,
                       existing_file, load_mean, run_with_device)

PROG = "detect"
CROP_MODES = ["list", "selective_search"]
COORD_COLS = ["ymin", "xmin", "ymax", "xmax"]


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, description="Windowed detection with a Caffe deploy net (pycaffe's detect.py).")
    parser.add_argument("input_file",
                        help="Input txt/csv filename. If .txt, must be list of filenames. If .csv, "
                             "must be comma-separated file with header "
                             "'filename, xmin, ymin, xmax, ymax'")
    parser.add_argument("output_file", help="Output h5/csv filename. Format depends on extension.")
    add_model_arguments(parser)
    parser.add_argument("--crop_mode", default="selective_search", choices=CROP_MODES,
                        help="How to generate windows for detection (default: %(default)s).")
    parser.add_argument("--mean_file", default=CAFFE_MEAN,
                        help="Data set image mean of H x W x K dimensions (numpy array, or "
                             ".binaryproto); per-pixel means are averaged to one value per "
                             "channel. Set to '' for no mean subtraction (default: %(default)s).")
    add_scale_arguments(parser)
    parser.add_argument("--context_pad", type=int, default=16,
                        help="Amount of surrounding context to collect in input window "
                             "(default: %(default)s).")
    return parser


def read_image_list(path):
    with open(existing_file(path, "input file")) as f:
        return [line.strip() for line in f if line.strip()]


def read_windows_csv(path):
    """(filename, windows) per image, images in first-appearance order;
    windows as int (N, 4) ymin xmin ymax xmax."""
    with open(existing_file(path, "input file"), newline="") as f:
        reader = csv.reader(f)
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in ["filename", "xmin", "ymin", "xmax", "ymax"]
                   if name not in header]
        if missing:
            raise CliError(f"{path}: the header must name filename, xmin, ymin, xmax, ymax; "
                           f"missing {', '.join(missing)}")
        columns = [header.index(name) for name in COORD_COLS]
        windows = {}
        for line_no, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            try:
                fname = row[header.index("filename")].strip()
                window = [int(float(row[c])) for c in columns]
            except (IndexError, ValueError):
                raise CliError(f"{path}:{line_no}: expected a filename and four numbers, "
                               f"got {','.join(row)}") from None
            windows.setdefault(fname, []).append(window)
    return [(fname, np.array(rows, dtype=int)) for fname, rows in windows.items()]


def load_detector(args):
    mean = None
    if args.mean_file:
        mean = load_mean(args.mean_file)
        if mean.ndim == 3 and mean.shape[1:] != (1, 1):
            mean = mean.mean(1).mean(1)
    return Detector(existing_file(args.model_def, "--model_def"),
                    existing_file(args.pretrained_model, "--pretrained_model"),
                    mean=mean, input_scale=args.input_scale, raw_scale=args.raw_scale,
                    channel_swap=channel_swap_of(args), context_pad=args.context_pad)


def write_csv(detections, path):
    classes = np.asarray(detections[0]["prediction"]).size if detections else 0
    with atomic_write(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["filename"] + COORD_COLS + [f"class{c}" for c in range(classes)])
        for det in detections:
            writer.writerow([det["filename"]] + [int(v) for v in det["window"]]
                            + [repr(float(v)) for v in np.ravel(det["prediction"])])


def write_h5(detections, path):
    windows = np.array([np.asarray(d["window"]).astype(int) for d in detections]).reshape(-1, 4)
    with h5py.File(path, "w") as f:
        group = f.create_group("df")
        group.create_dataset("filename", data=[d["filename"] for d in detections],
                             dtype=h5py.string_dtype())
        for index, name in enumerate(COORD_COLS):
            group.create_dataset(name, data=windows[:, index])
        group.create_dataset("prediction",
                             data=np.array([np.ravel(d["prediction"]) for d in detections],
                                           dtype=np.float32))


def read_inputs(args):
    """The image list (.txt) or the windows per image (.csv)."""
    name = args.input_file.lower()
    if name.endswith("txt"):
        if args.crop_mode == "list":
            raise CliError("--crop_mode list needs a .csv input naming the windows "
                           "(filename, xmin, ymin, xmax, ymax)")
        return read_image_list(args.input_file)
    if name.endswith("csv"):
        return read_windows_csv(args.input_file)
    raise CliError(f"unknown input file type '{args.input_file}': not in txt or csv")


def detect(args):
    start = time.time()
    require_writable(args.output_file, "the output")
    print("Loading input...")
    inputs = read_inputs(args)
    detector = load_detector(args)
    print("GPU mode" if args.gpu else "CPU mode")

    if args.crop_mode == "list":
        detections = detector.detect_windows(inputs)
    else:
        fnames = [item if isinstance(item, str) else item[0] for item in inputs]
        detections = detector.detect_selective_search(fnames)
    print(f"Processed {len(detections)} windows in {time.time() - start:.3f} s.")

    start = time.time()
    if args.output_file.lower().endswith("csv"):
        write_csv(detections, args.output_file)
    else:
        write_h5(detections, args.output_file)
    print(f"Saved to {args.output_file} in {time.time() - start:.3f} s.")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_with_device(PROG, detect, args)


if __name__ == "__main__":
    sys.exit(main())
