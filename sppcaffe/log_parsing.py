"""Training logs read back into tables, as Caffe's tools/extra/parse_log.py
reads them: from the log of `caffe train` or of sppcaffe's tools (both
write glog's lines), one table of the training outputs and one of the test
outputs.

A row of the training table holds an iteration's "Train net output #k:
NAME = VALUE" lines, a row of the test table a test pass's "Test net
output #k: NAME = VALUE" lines.  Columns: NumIters, Seconds (since the
"Solving ..." line), LearningRate (the last "lr = X" logged before the
row's outputs, so the first row takes the second row's, as Caffe's parser
does), then one column per output name in the log's order (loss, accuracy,
...).

Lines carry glog's prefix, `I1203 10:00:00.123456  1234 solver.cpp:218]`,
or since glog 0.7 the same with the year, `I20251203 10:00:00.123456 ...`
(Caffe's parse_log.py cannot read those).  Without a year in the lines,
the log file's creation year is taken, and a month smaller than the one
before starts the next year, as Caffe does.  Lines without the prefix
(continuations of multi-line messages, a traceback) are skipped.

Beyond parse_log.py: values "nan" and "inf" are read (a diverged run's
outputs; Caffe's parser skips those lines), and a table with a single row
is kept (Caffe's drops it).
"""
import collections
import csv
import datetime
import os
import re

GLOG_PREFIX = re.compile(r"^[IWEF](\d{4})?(\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6})\s")
ITERATION = re.compile(r"Iteration (\d+)")
VALUE = r"([-+]?(?:nan|inf|[.\deE+-]+))"
TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = " + VALUE, re.IGNORECASE)
TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = " + VALUE, re.IGNORECASE)
LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)")
SOLVING = "Solving"
KEY_COLUMNS = ("NumIters", "Seconds", "LearningRate")


class LogClock:
    """Turns the glog timestamps of one log into datetimes, supplying the
    year where the lines have none."""

    def __init__(self, year):
        self.year = year
        self.last_month = None

    def time(self, line):
        """The datetime of a log line, or None for a line without glog's prefix."""
        match = GLOG_PREFIX.match(line)
        if not match:
            return None
        year, month, day, hour, minute, second, micros = match.groups()
        month = int(month)
        if year is not None:
            self.year = int(year)
        elif self.last_month is not None and month < self.last_month:
            self.year += 1          # December to January
        self.last_month = month
        try:
            return datetime.datetime(self.year, month, int(day), int(hour), int(minute),
                                     int(second), int(micros))
        except ValueError:          # not a date after all
            return None


def log_created_year(path):
    return datetime.datetime.fromtimestamp(os.path.getctime(path)).year


class TableBuilder:
    """Rows of one table (train or test), built as parse_log.py builds
    them: a row starts at an output line of a new iteration and is complete
    when it has as many columns as the first row."""

    def __init__(self, pattern):
        self.pattern = pattern
        self.rows = []
        self.row = None

    def feed(self, line, iteration, seconds, learning_rate):
        match = self.pattern.search(line)
        if match:
            if self.row is None or self.row["NumIters"] != iteration:
                if self.row is not None:
                    self.rows.append(self.row)
                self.row = collections.OrderedDict(
                    [("NumIters", iteration), ("Seconds", seconds),
                     ("LearningRate", learning_rate)])
            self.row[match.group(2)] = float(match.group(3))
        if self.row is not None and self.rows and len(self.row) == len(self.rows[0]):
            self.rows.append(self.row)
            self.row = None

    def finish(self):
        """The rows; a lone first row still waiting for a second is kept."""
        if self.row is not None and not self.rows:
            self.rows.append(self.row)
        self.row = None
        # The first rows come before the first "lr = " line: take the second's.
        if len(self.rows) > 1:
            self.rows[0]["LearningRate"] = self.rows[1]["LearningRate"]
        return self.rows


def parse_lines(lines, year):
    """(train rows, test rows) of a log's lines (see the module's doc)."""
    clock = LogClock(year)
    lines = iter(lines)
    start = None
    for line in lines:
        if SOLVING in line:
            start = clock.time(line)
            if start is not None:
                break
    if start is None:
        raise ValueError("no 'Solving ...' line with glog's prefix: not the log of a training "
                         "run (caffe train, tools/train_net)")
    train, test = TableBuilder(TRAIN_OUTPUT), TableBuilder(TEST_OUTPUT)
    iteration, learning_rate = -1, float("nan")
    for line in lines:
        match = ITERATION.search(line)
        if match:
            iteration = float(match.group(1))
        if iteration == -1:
            continue        # nothing is read before the first iteration
        when = clock.time(line)
        if when is None:
            continue
        seconds = (when - start).total_seconds()
        match = LEARNING_RATE.search(line)
        if match:
            learning_rate = float(match.group(1))
        train.feed(line, iteration, seconds, learning_rate)
        test.feed(line, iteration, seconds, learning_rate)
    return train.finish(), test.finish()


def parse_log(path):
    """parse_log.py's parse_log: (train rows, test rows) of a log file,
    each row an OrderedDict of column -> float."""
    with open(path, errors="replace") as f:
        try:
            return parse_lines(f, log_created_year(path))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None


def table_paths(log_path, output_dir):
    """parse_log.py's names: LOG.train and LOG.test in output_dir."""
    base = os.path.join(output_dir, os.path.basename(log_path))
    return base + ".train", base + ".test"


def write_table(path, rows, delimiter=","):
    """A CSV file of rows, or nothing for no rows.  The columns are the
    first row's (parse_log.py's), then any that only later rows have, such
    as the outputs of a second test net with other names (where
    parse_log.py fails); a row without a column leaves it empty."""
    if not rows:
        return False
    columns = list(dict.fromkeys(name for row in rows for name in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, delimiter=delimiter, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return True


def read_table(path, delimiter=","):
    """Rows of a table written by write_table (or by Caffe's parse_log.py),
    values as floats (an empty cell as nan)."""
    with open(path, newline="") as f:
        return [collections.OrderedDict((k, float(v) if v != "" else float("nan"))
                                        for k, v in row.items())
                for row in csv.DictReader(f, delimiter=delimiter)]
