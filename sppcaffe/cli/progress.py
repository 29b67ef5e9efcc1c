"""What a training run shows and leaves behind: Caffe-style log lines on
stderr, a progress bar, and the loss/accuracy curves as a CSV file and a
PNG plot (drawn by curve_plot.py).

The log lines carry glog's prefix (`I1121 20:31:45.123456 12345
solver.py:312] Iteration 100, loss = 0.5`), so tools written for Caffe
logs (parse_log.py, plot_training_log.py) read them.  The bar and the
curves are solver listeners (`solver.add_listener`), fed the numbers the
solver logs.
"""
import csv
import logging
import os
import sys
import threading
import time

import numpy as np
from tqdm import tqdm

from ..io.atomic import atomic_write
from . import curve_plot

LOGGER_NAMES = ("sppcaffe", "py.warnings")
LEVEL_LETTERS = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W",
                 logging.ERROR: "E", logging.CRITICAL: "F"}
CSV_COLUMNS = ("iteration", "seconds", "phase", "net", "output", "value")


# ---------------------------------------------------------------------------
# Log lines
# ---------------------------------------------------------------------------
class CaffeLogFormatter(logging.Formatter):
    """glog's line prefix: level letter, month and day, time to the
    microsecond, thread id, source file:line, then the message.  Handlers
    format in the thread that logs, so the OS thread id is the logger's,
    as glog prints it."""

    def format(self, record):
        stamp = time.localtime(record.created)
        micros = int((record.created % 1) * 1e6)
        letter = LEVEL_LETTERS.get(record.levelno, "I")
        thread = threading.get_native_id()
        prefix = (f"{letter}{stamp.tm_mon:02d}{stamp.tm_mday:02d} "
                  f"{stamp.tm_hour:02d}:{stamp.tm_min:02d}:{stamp.tm_sec:02d}.{micros:06d} "
                  f"{thread % 100000:5d} {record.filename}:{record.lineno}] ")
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return prefix + message


class ConsoleHandler(logging.Handler):
    """Writes through tqdm so that log lines scroll above a progress bar
    instead of breaking it (a plain write when no bar is shown)."""

    def __init__(self, stream=None):
        super().__init__()
        self.stream = stream

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=self.stream or sys.stderr)
        except Exception:       # logging must never stop training
            self.handleError(record)


def configure_logging(stream=None, level=logging.INFO, record_filter=None):
    """Send the framework's log records (and Python warnings, such as the
    SPP layer's) to `stream` (default: stderr at the time of writing) in
    Caffe's format; `record_filter` (a logging filter) may drop some.
    Returns a function that undoes it."""
    handler = ConsoleHandler(stream)
    handler.setFormatter(CaffeLogFormatter())
    if record_filter is not None:
        handler.addFilter(record_filter)
    logging.captureWarnings(True)
    saved = []
    for name in LOGGER_NAMES:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False        # not twice through a root handler

    def undo():
        for logger, old_level, old_propagate in saved:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
            logger.propagate = old_propagate
        logging.captureWarnings(False)
    return undo


# ---------------------------------------------------------------------------
# Progress bar
# ---------------------------------------------------------------------------
class ProgressBar:
    """A tqdm bar over the solver's iterations to max_iter, with the last
    displayed loss and test scores; off when `enabled` is False (not a
    terminal, or --no-progress)."""

    def __init__(self, solver, enabled, stream=None):
        self.solver = solver
        self.bar = tqdm(total=solver.param.max_iter, initial=solver.iter, unit="iter",
                        file=stream or sys.stderr, disable=not enabled, dynamic_ncols=True,
                        desc=solver.net.name or "train")
        self.postfix = {}
        solver.add_callback(self._noop, self._iteration_done)
        solver.add_listener(self)

    @staticmethod
    def _noop():
        pass

    def _iteration_done(self):
        # Called before the update of iteration `solver.iter`; the bar
        # counts it as done.  Absolute, so a restored solver starts right.
        self.bar.update(self.solver.iter + 1 - self.bar.n)

    def on_display(self, solver, smoothed_loss, outputs, lr):
        self.postfix["loss"] = f"{float(smoothed_loss):.4g}"
        self.postfix["lr"] = f"{float(lr):.3g}"
        self.bar.set_postfix(self.postfix, refresh=False)

    def on_test(self, solver, net_index, scores):
        losses = loss_outputs(solver.test_nets[net_index])
        for name, value in scores:
            if name not in losses:
                self.postfix[f"test {name}"] = f"{value:.4g}"
        self.bar.set_postfix(self.postfix)

    def close(self):
        self.bar.close()


def loss_outputs(net):
    """Names of the net's outputs that are losses (nonzero loss weight)."""
    weights = net.blob_loss_weights
    return {name for name in net.outputs if weights[name]}


# ---------------------------------------------------------------------------
# Curves: CSV and plot
# ---------------------------------------------------------------------------
class TrainingCurves:
    """Records what the solver displays and tests, as rows of
    (iteration, seconds, phase, net, output, value):

    - phase "train": `smoothed_loss` (the log's "Iteration N, loss = X"),
      `lr`, and each train net output (the log's "Train net output #k");
    - phase "test", net i: each test net output's mean over test_iter
      ("Test net output #k").

    An output blob with several elements gives names `name#0`, `name#1`, ...
    """

    def __init__(self):
        self.rows = []
        self.test_losses = {}           # net index -> names of loss outputs
        self.start = time.perf_counter()
        self.seconds_offset = 0.0

    def _add(self, solver, phase, net, output, value):
        seconds = self.seconds_offset + time.perf_counter() - self.start
        # float32, as the solver computes them: the CSV then shows 0.1, not 0.100000001.
        self.rows.append((int(solver.iter), round(seconds, 3), phase, net, output,
                          np.float32(value)))

    def on_display(self, solver, smoothed_loss, outputs, lr):
        self._add(solver, "train", 0, "smoothed_loss", smoothed_loss)
        self._add(solver, "train", 0, "lr", lr)
        for name, value in element_names(outputs):
            self._add(solver, "train", 0, name, value)

    def on_test(self, solver, net_index, scores):
        self.test_losses.setdefault(net_index, loss_outputs(solver.test_nets[net_index]))
        for name, value in element_names(scores):
            self._add(solver, "test", net_index, name, value)

    # -- files ---------------------------------------------------------
    def keep_earlier(self, csv_path, up_to_iteration):
        """On resuming: start from the rows of an earlier run's CSV up to the
        restored iteration, so the files cover the whole training."""
        try:
            with open(csv_path, newline="") as f:
                earlier = [row for row in csv.DictReader(f)
                           if int(row["iteration"]) <= up_to_iteration]
        except (OSError, KeyError, ValueError):
            return 0
        self.rows[:0] = [(int(r["iteration"]), float(r["seconds"]), r["phase"], int(r["net"]),
                          r["output"], np.float32(r["value"])) for r in earlier]
        if earlier:
            self.seconds_offset = max(float(r["seconds"]) for r in earlier)
        return len(earlier)

    def write_csv(self, path):
        with atomic_write(path, "w") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            writer.writerows(self.rows)

    def series(self, phase, net=None):
        """{output: ([iterations], [values])} of one phase (and test net)."""
        return curve_plot.series(self.rows, phase, net)

    def write_plot(self, path, title="", plotter=None):
        """Training loss (and test losses) against iterations on top, the
        other test outputs (accuracy) below; drawn by `plotter` (a
        curve_plot.PlotProcess started with the training) when it can."""
        png = plotter.render(self.rows, self.test_losses, title) if plotter else None
        if png is None:
            png = curve_plot.render(self.rows, self.test_losses, title)
        with atomic_write(path, "wb") as f:
            f.write(png)

    def write(self, prefix, title="", plotter=None):
        """`<prefix>_training.csv` and `<prefix>_training.png`; their paths."""
        csv_path, png_path = curve_paths(prefix)
        folder = os.path.dirname(os.path.abspath(csv_path))
        os.makedirs(folder, exist_ok=True)
        self.write_csv(csv_path)
        self.write_plot(png_path, title, plotter)
        return csv_path, png_path


def curve_paths(prefix):
    return f"{prefix}_training.csv", f"{prefix}_training.png"


def element_names(pairs):
    """(name, value) pairs of Caffe's output order, with `#k` added to the
    names of outputs that have several elements."""
    pairs = list(pairs.items()) if isinstance(pairs, dict) else list(pairs)
    counts = {}
    for name, _ in pairs:
        counts[name] = counts.get(name, 0) + 1
    seen = {}
    named = []
    for name, value in pairs:
        if counts[name] > 1:
            index = seen.get(name, 0)
            seen[name] = index + 1
            name = f"{name}#{index}"
        named.append((name, value))
    return named


def _any_user_error(err):
    return isinstance(err, (OSError, ValueError))


def run_main(prog, run, args, interrupted="interrupted", level=None, is_user_error=_any_user_error):
    """Run a tool's `run(args)` with Caffe-style logging: errors that
    `is_user_error` accepts (default: OSError, ValueError and their kin)
    become one message and exit code 1, Ctrl-C exit code 130; no traceback
    either way."""
    restore_logging = configure_logging() if level is None else configure_logging(level=level)
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130
    except Exception as err:
        if not is_user_error(err):
            raise
        text = "\n".join([str(err)] + list(getattr(err, "__notes__", [])))
        print(f"{prog}: error: {text}", file=sys.stderr)
        return 1
    finally:
        restore_logging()
