"""Caffe's compute_image_mean: the mean image of a database of Datums.

    compute_image_mean [FLAGS] INPUT_DB [OUTPUT_FILE]

Writes a 1 x C x H x W BlobProto (legacy num/channels/height/width, as
Caffe) to OUTPUT_FILE through a temporary file, and prints the mean of
every channel as Caffe does (`mean_value channel [c]:v`), ready for
transform_param's mean_value.  Sums are float32 in record order like
Caffe's, so the file holds Caffe's numbers.
"""
import argparse
import sys

import numpy as np

from .. import io
from ..data.datum import datum_to_array, parse_datum
from ..data.db import LMDB, iterate_db
from ..data.errors import DataError
from ..io.atomic import write_problem
from .convert_imageset import gflags_argv

PROG = "compute_image_mean"
REPORT_EVERY = 10000


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, allow_abbrev=False,
        usage="%(prog)s [FLAGS] INPUT_DB [OUTPUT_FILE]",
        description="Compute the mean image of a set of images given by an lmdb.")
    parser.add_argument("input_db", metavar="INPUT_DB")
    parser.add_argument("output_file", metavar="OUTPUT_FILE", nargs="?",
                        help="where to write the mean as a binaryproto")
    parser.add_argument("--backend", default=LMDB,
                        help="the backend containing the images (lmdb)")
    return parser


def image_mean(path, backend, log):
    """The C x H x W float32 mean of every Datum of the database."""
    total, count = None, 0
    log("Starting iteration")
    for key, value in iterate_db(path, backend):
        where = f"datum '{key.decode(errors='replace')}' of '{path}'"
        pixels = datum_to_array(parse_datum(value, where), "native", where)
        if total is None:
            total = np.zeros(pixels.shape, np.float32)
        elif pixels.shape != total.shape:
            raise DataError(f"{where} is {'x'.join(map(str, pixels.shape))}, the first datum "
                            f"was {'x'.join(map(str, total.shape))}; a mean needs one size")
        np.add(total, pixels, out=total, dtype=np.float32)
        count += 1
        if count % REPORT_EVERY == 0:
            log(f"Processed {count} files.")
    if count == 0:
        raise DataError(f"database '{path}' is empty")
    if count % REPORT_EVERY:
        log(f"Processed {count} files.")
    return total / np.float32(count)


def mean_blob(mean):
    """A BlobProto of a C x H x W mean with Caffe's legacy 1 x C x H x W dims."""
    blob = io.array_to_blob(mean)
    blob.ClearField("shape")
    blob.num, (blob.channels, blob.height, blob.width) = 1, mean.shape
    return blob


def channel_means(mean):
    """Per-channel means summed in float32 in order, as Caffe prints them."""
    planes = mean.reshape(mean.shape[0], -1)
    return np.cumsum(planes, axis=1, dtype=np.float32)[:, -1] / np.float32(planes.shape[1])


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(gflags_argv(argv, (), ("backend",)))

    def log(message):
        print(message, flush=True)

    try:
        problem = args.output_file and write_problem(args.output_file)
        if problem:         # known now, not after reading the whole database
            raise OSError(f"cannot write '{args.output_file}': {problem}")
        mean = image_mean(args.input_db, args.backend, log)
        if args.output_file:
            log(f"Write to {args.output_file}")
            io.write_binary(mean_blob(mean), args.output_file)
    except (DataError, OSError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    log(f"Number of channels: {mean.shape[0]}")
    for c, value in enumerate(channel_means(mean)):
        log(f"mean_value channel [{c}]:{value:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
