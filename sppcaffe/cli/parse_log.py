"""`parse_log`: Caffe's tools/extra/parse_log.py -- a training log's two
tables as CSV files.

    parse_log LOG OUTPUT_DIR [--delimiter ,] [--verbose]

writes OUTPUT_DIR/LOG.train (NumIters, Seconds, LearningRate and the train
net's outputs, e.g. loss) and OUTPUT_DIR/LOG.test (the same with the test
nets' outputs, e.g. accuracy and loss), from the log of `caffe train`
(BVLC Caffe's or sppcaffe's) or of tools/train_net.  See
sppcaffe/log_parsing.py for how lines become rows.
"""
import argparse
import os
import sys

from .. import log_parsing
from . import CliError, progress, require_file

PROG = "parse_log"


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Parse a Caffe training log into two CSV files containing training and "
                    "testing information (LOG.train and LOG.test in OUTPUT_DIR).")
    parser.add_argument("logfile_path", help="path to log file")
    parser.add_argument("output_dir", help="directory in which to place output CSV files "
                                           "(created if missing)")
    parser.add_argument("--verbose", action="store_true",
                        help="print some extra info (e.g., output filenames)")
    parser.add_argument("--delimiter", default=",",
                        help="column delimiter in output files (default: '%(default)s')")
    return parser


def run(args):
    require_file(args.logfile_path, "log")
    if len(args.delimiter) != 1:
        raise CliError(f"--delimiter must be one character, got '{args.delimiter}'")
    train, test = log_parsing.parse_log(args.logfile_path)
    os.makedirs(args.output_dir, exist_ok=True)
    for path, rows, what in zip(log_parsing.table_paths(args.logfile_path, args.output_dir),
                                (train, test), ("Train", "Test")):
        if log_parsing.write_table(path, rows, args.delimiter):
            if args.verbose:
                print(f"Wrote {path}")
        else:
            print(f"Not writing {path}: the log has no '{what} net output' lines",
                  file=sys.stderr)
    return 0


def main(argv=None):
    return progress.run_main(PROG, run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
