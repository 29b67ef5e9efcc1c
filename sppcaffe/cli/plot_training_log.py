"""`plot_training_log`: Caffe's tools/extra/plot_training_log.py.example --
one chart of one or more training logs, as a PNG.

    plot_training_log CHART_TYPE OUT.png LOG [LOG ...]

The chart types are Caffe's, numbered as there:

    0: Test accuracy  vs. Iters          4: Train learning rate  vs. Iters
    1: Test accuracy  vs. Seconds        5: Train learning rate  vs. Seconds
    2: Test loss  vs. Iters              6: Train loss  vs. Iters
    3: Test loss  vs. Seconds            7: Train loss  vs. Seconds

The logs are read with parse_log's tables (sppcaffe/log_parsing.py), so
they may come from BVLC Caffe or from sppcaffe. "accuracy" and "loss" are
the test or train outputs of those names, or, where a net names them
otherwise, every output of that kind (acc, top-1, loss3/top-5 are
accuracies; loss3/loss3 a loss); each is a line, labelled with the log's
file name (less ".log"). "Train loss" is the train net's loss output at
each displayed iteration (parse_log.py's column), not the smoothed loss of
"Iteration N, loss = X" that the example read with parse_log.sh. Unlike
Caffe's script: nothing is written beside
the logs, a log need not end in .log, the colours and markers are fixed
rather than random, and no window opens.
"""
import argparse
import itertools
import os
import re
import sys

from .. import log_parsing
from . import CliError, progress, require_file

PROG = "plot_training_log"
SEPARATOR = "  vs. "
X_FIELDS = {"Iters": "NumIters", "Seconds": "Seconds"}
# y field -> (table, output word or column)
Y_FIELDS = {"Test accuracy": ("test", "accuracy"), "Test loss": ("test", "loss"),
            "Train learning rate": ("train", "LearningRate"), "Train loss": ("train", "loss")}
# Caffe's order: y fields sorted, each against the x fields sorted.
CHART_TYPES = [(y, x) for y in sorted(Y_FIELDS) for x in sorted(X_FIELDS)]
MARKERS = "os^vD*<>phx+"
LOG_SUFFIX = ".log"


def chart_description(chart_type):
    y, x = CHART_TYPES[chart_type]
    return f"{y}{SEPARATOR}{x}"


def chart_list():
    return "\n".join(f"    {i}: {chart_description(i)}" for i in range(len(CHART_TYPES)))


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Plot one chart of training logs (BVLC Caffe's or sppcaffe's) into a PNG, "
                    "as Caffe's plot_training_log.py.example.",
        epilog="Supported chart types:\n" + chart_list())
    parser.add_argument("chart_type", type=int,
                        help=f"the chart, 0-{len(CHART_TYPES) - 1} (the list below)")
    parser.add_argument("png", help="where to save the chart (.png)")
    parser.add_argument("logs", nargs="+", metavar="log", help="training logs; several "
                        "are drawn in one chart")
    return parser


def log_label(path):
    name = os.path.basename(path)
    return name[:-len(LOG_SUFFIX)] if name.endswith(LOG_SUFFIX) else name


def output_kind(name):
    """'accuracy' or 'loss' for an output name as nets write them
    (accuracy, acc, loss3/top-5, top_1; loss, loss3/loss3), else None."""
    name = name.lower()
    if "acc" in name or re.search(r"top[-_]?\d", name):
        return "accuracy"
    return "loss" if "loss" in name else None


def columns_for(rows, word):
    """The columns a y field plots: `word` itself where a column has that
    name, else every output column of that kind (see output_kind)."""
    names = list(dict.fromkeys(name for row in rows for name in row))
    if word in names:
        return [word]
    return [name for name in names
            if name not in log_parsing.KEY_COLUMNS and output_kind(name) == word]


def series(path, chart_type):
    """[(label, xs, ys)] of one log for the chart."""
    y_field, x_field = CHART_TYPES[chart_type]
    table, word = Y_FIELDS[y_field]
    train, test = log_parsing.parse_log(path)
    rows = test if table == "test" else train
    columns = columns_for(rows, word)
    if not columns:
        found = [n for n in dict.fromkeys(n for row in rows for n in row)
                 if n not in log_parsing.KEY_COLUMNS]
        raise CliError(f"{path}: no {table} output to plot as '{y_field}' (its {table} "
                       f"outputs: {', '.join(found) or 'none'})")
    label = log_label(path)
    x_column = X_FIELDS[x_field]
    out = []
    for column in columns:
        points = [(row[x_column], row[column]) for row in rows if column in row]
        name = label if len(columns) == 1 else f"{label} {column}"
        out.append((name, [p[0] for p in points], [p[1] for p in points]))
    return out


def legend_location(chart_type):
    y_field = CHART_TYPES[chart_type][0]
    return "upper right" if "loss" in y_field or "learning rate" in y_field else "lower right"


def plot_chart(chart_type, png_path, log_paths):
    # The object API with the Agg canvas: no display needed, and the
    # process's matplotlib backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    styles = zip(itertools.cycle(f"C{k}" for k in range(10)), itertools.cycle(MARKERS))
    for path in log_paths:
        for (label, xs, ys), (colour, marker) in zip(series(path, chart_type), styles):
            axes.plot(xs, ys, label=label, color=colour, marker=marker, linewidth=0.75,
                      markersize=4)
    y_field, x_field = CHART_TYPES[chart_type]
    axes.legend(loc=legend_location(chart_type), ncol=1)
    axes.set_title(chart_description(chart_type))
    axes.set_xlabel(x_field)
    axes.set_ylabel(y_field)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(png_path, format="png")


def run(args):
    if not 0 <= args.chart_type < len(CHART_TYPES):
        raise CliError(f"{args.chart_type} is not a valid chart type; supported chart types:\n"
                       + chart_list())
    if not args.png.lower().endswith(".png"):
        raise CliError(f"the chart's path must end with .png, got '{args.png}'")
    for path in args.logs:
        require_file(path, "log")
    plot_chart(args.chart_type, args.png, args.logs)
    print(f"Wrote {args.png}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:            # as Caffe's script: the help, with the chart types
        parser.print_help()
        return 0
    return progress.run_main(PROG, run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
