"""Caffe's convert_imageset: images listed in a file -> an LMDB of Datums.

    convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME

LISTFILE has one `path label` line per image (the label after the last
space); each image is ROOTFOLDER + path (concatenated, as Caffe: end
ROOTFOLDER with '/').  Records are keyed `%08d_<path>` by line number,
written in transactions of 1000 with Caffe's `Processed N files.` lines,
into a temporary directory renamed to DB_NAME at the end.  Images that
cannot be read are reported and skipped, as in Caffe.

Flags take Caffe's gflags spellings: `-resize_width=256`,
`--resize_width 256`, `--gray`, `-gray=false`, `--nogray`.
"""
import argparse
import sys

import numpy as np

from ..data.datum import read_image_to_datum
from ..data.db import LMDB, LMDBWriter, TRANSACTION_SIZE, backend_name
from ..data.errors import DataError
from ..data.image_list import read_image_list

PROG = "convert_imageset"
BOOL_FLAGS = ("gray", "shuffle", "check_size", "encoded")
VALUE_FLAGS = ("backend", "resize_width", "resize_height", "encode_type")
_TRUE, _FALSE = {"true", "t", "yes", "y", "1"}, {"false", "f", "no", "n", "0"}


def gflags_argv(argv, bool_flags, value_flags):
    """Rewrite gflags spellings (one or two dashes, `=value`, `--noFLAG`,
    `--FLAG=true|false`) into the `--FLAG`/`--noFLAG`/`--FLAG=value` forms
    argparse understands; anything else is left for argparse to judge."""
    out, args = [], iter(argv)
    for arg in args:
        if arg == "--":
            out.append(arg)
            out.extend(args)
            break
        if not arg.startswith("-") or arg == "-":
            out.append(arg)
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if name in bool_flags:
            if eq and value.lower() not in _TRUE | _FALSE:
                raise argparse.ArgumentTypeError(
                    f"flag --{name} takes true or false, got '{value}'")
            out.append(f"--{name}" if not eq or value.lower() in _TRUE else f"--no{name}")
        elif not eq and name.startswith("no") and name[2:] in bool_flags:
            out.append(f"--{name}")
        elif name in value_flags:
            out.append(f"--{name}={value}" if eq else f"--{name}")
        else:
            out.append(arg)
    return out


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, allow_abbrev=False,
        usage="%(prog)s [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME",
        description="Convert a set of images to the lmdb format used as input for Caffe "
                    "(Datum records keyed %08d_<path>).")
    parser.add_argument("root_folder", metavar="ROOTFOLDER/",
                        help="prefix of every image path (concatenated, so end it with '/')")
    parser.add_argument("list_file", metavar="LISTFILE", help="lines of 'path label'")
    parser.add_argument("db_name", metavar="DB_NAME", help="the database to create")
    flags = (("gray", "treat images as grayscale ones"),
             ("shuffle", "randomly shuffle the order of images and their labels"),
             ("check_size", "check that all the datums have the same size"),
             ("encoded", "store the encoded image in the datum"))
    for name, text in flags:
        parser.add_argument(f"--{name}", action="store_true", help=text)
        parser.add_argument(f"--no{name}", dest=name, action="store_false",
                            help=argparse.SUPPRESS)
    parser.add_argument("--backend", default=LMDB, help="the backend for storing the result "
                        "(lmdb; leveldb is not supported)")
    parser.add_argument("--resize_width", type=int, default=0,
                        help="width images are resized to")
    parser.add_argument("--resize_height", type=int, default=0,
                        help="height images are resized to")
    parser.add_argument("--encode_type", default="",
                        help="what type to encode the image as ('png', 'jpg', ...); "
                             "implies --encoded")
    return parser


def convert(args, log):
    """Write the database; returns the number of images stored."""
    if backend_name(args.backend) != LMDB:
        raise DataError(f"backend '{args.backend}' is not supported; sppcaffe writes lmdb")
    with LMDBWriter(args.db_name) as writer:
        count = _write_images(writer, args, log)
    return count


def _write_images(writer, args, log):
    entries = read_image_list(args.list_file)
    if not entries:
        raise DataError(f"'{args.list_file}' lists no images")
    if args.shuffle:
        log("Shuffling data")
        entries = [entries[i] for i in np.random.default_rng().permutation(len(entries))]
    log(f"A total of {len(entries)} images.")
    encoding = args.encode_type.lower()
    if encoding and not args.encoded:
        log("encode_type specified, assuming encoded=true.")
    height, width = max(0, args.resize_height), max(0, args.resize_width)
    count, first_shape = 0, None
    for line_id, (image, label, line) in enumerate(entries):
        path = args.root_folder + image
        kind = encoding
        if args.encoded and not kind:      # as Caffe: guess from the file name
            kind = image.rpartition(".")[2].lower() if "." in image else ""
            if not kind:
                warn(f"failed to guess the encoding of '{image}' (line {line} of "
                     f"'{args.list_file}'); skipped (use --encode_type)")
                continue
        read = read_image_to_datum(path, label, height, width, not args.gray, kind)
        if read is None:
            warn(f"could not open or find file '{path}' (line {line} of "
                 f"'{args.list_file}'); skipped")
            continue
        datum, shape = read
        if args.check_size:
            first_shape = first_shape or shape
            if shape != first_shape:
                raise DataError(f"--check_size: '{path}' is {'x'.join(map(str, shape))} "
                                f"(channels x height x width), the first image was "
                                f"{'x'.join(map(str, first_shape))}")
        writer.put(f"{line_id:08d}_{image}", datum.SerializeToString())
        count += 1
        if count % TRANSACTION_SIZE == 0:
            writer.commit()
            log(f"Processed {count} files.")
    if count == 0:
        raise DataError(f"none of the images listed in '{args.list_file}' could be read; "
                        "no database written")
    writer.commit()
    if count % TRANSACTION_SIZE:
        log(f"Processed {count} files.")
    return count


def warn(message):
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(gflags_argv(argv, BOOL_FLAGS, VALUE_FLAGS))
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    try:
        convert(args, lambda message: print(message, flush=True))
    except (DataError, OSError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
