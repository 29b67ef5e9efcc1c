"""parse_log (Caffe's tools/extra/parse_log.py) and plot_training_log
(plot_training_log.py.example) on a real BVLC Caffe log, a hand-written log
in older glog's format, and sppcaffe's own log."""
import csv
import math
import os

import pytest

from sppcaffe import log_parsing
from sppcaffe.cli import caffe, parse_log, plot_training_log
from test_train_net import TINY_NET, TINY_SOLVER

LOGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "logs")
REAL = os.path.join(LOGS, "caffe_lenet_digits.log")
CLASSIC = os.path.join(LOGS, "caffe_classic_glog.log")
NAN = float("nan")


@pytest.fixture(autouse=True)
def no_glog_environment(monkeypatch):
    """caffe reads GLOG_minloglevel, GLOG_log_dir and GLOG_logtostderr, as
    Caffe does; a shell set up for the reference Caffe sets some."""
    for name in ("GLOG_minloglevel", "GLOG_log_dir", "GLOG_logtostderr"):
        monkeypatch.delenv(name, raising=False)


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-6)


def assert_rows(rows, expected):
    assert len(rows) == len(expected)
    for row, values in zip(rows, expected):
        assert list(row) == list(values), (list(row), list(values))
        assert all(same(row[k], v) for k, v in values.items()), (row, values)


# ---------------------------------------------------------------------------
# parse_log
# ---------------------------------------------------------------------------
def test_real_caffe_log(tmp_path, capsys):
    """BVLC Caffe's LeNet log (glog 0.7 prefixes, with the year)."""
    assert parse_log.main([REAL, str(tmp_path), "--verbose"]) == 0
    train_path = tmp_path / "caffe_lenet_digits.log.train"
    test_path = tmp_path / "caffe_lenet_digits.log.test"
    assert capsys.readouterr().out.split() == ["Wrote", str(train_path), "Wrote", str(test_path)]
    header, rows = read_csv(train_path)
    assert header == ["NumIters", "Seconds", "LearningRate", "loss"]
    assert [float(r[0]) for r in rows] == list(range(0, 1500, 100))
    # Solving at 20:00:18.062894; the first row takes the second row's lr.
    assert rows[0] == ["0.0", "0.294893", "0.01", "2.43885"]
    assert rows[2] == ["200.0", "10.599476", "0.00992565", "0.0496088"]
    header, rows = read_csv(test_path)
    assert header == ["NumIters", "Seconds", "LearningRate", "accuracy", "loss"]
    assert [r[0] for r in rows] == ["0.0", "500.0", "1000.0", "1500.0"]
    assert rows[-1] == ["1500.0", "53.871963", "0.00906403", "0.99", "0.0232308"]


def test_classic_glog_log():
    """Year-less prefixes across New Year, a multi-line message, a warning,
    a line without prefix, and a diverged loss."""
    train, test = log_parsing.parse_log(CLASSIC)
    assert_rows(train, [
        {"NumIters": 0, "Seconds": 5.20001, "LearningRate": 0.01, "loss": 6.93028},
        {"NumIters": 20, "Seconds": 14.40001, "LearningRate": 0.01, "loss": 6.88512},
        {"NumIters": 40, "Seconds": 28.75001, "LearningRate": 0.01, "loss": 6.81077},
        {"NumIters": 60, "Seconds": 38.00001, "LearningRate": 0.001, "loss": NAN}])
    assert_rows(test, [
        {"NumIters": 0, "Seconds": 4.75, "LearningRate": 0.01, "accuracy": 0.001,
         "loss": 6.91124},
        {"NumIters": 40, "Seconds": 28.3, "LearningRate": 0.01, "accuracy": 0.00452,
         "loss": 6.87735},
        {"NumIters": 60, "Seconds": 43.25, "LearningRate": 0.001, "accuracy": 0.001,
         "loss": 87.3365}])


def test_year_comes_from_the_lines_or_the_file():
    clock = log_parsing.LogClock(2015)
    assert clock.time("I1231 23:59:59.500000 1 a.cpp:1] x").year == 2015
    assert clock.time("I0101 00:00:00.000001 1 a.cpp:1] x").year == 2016
    assert clock.time("E20240229 12:00:00.000000 1 a.cpp:1] x").year == 2024
    assert clock.time("    @ 0x7f3a1c2b3d4e (unknown)") is None
    assert clock.time("I1399 00:00:00.000000 1 a.cpp:1] not a date") is None


def sppcaffe_log(tmp_path, capsys, *flags):
    net = tmp_path / "tiny.prototxt"
    net.write_text(TINY_NET)
    solver = tmp_path / "tiny_solver.prototxt"
    solver.write_text(TINY_SOLVER.format(net=net, prefix=tmp_path / "snapshots" / "tiny"))
    assert caffe.main(["train", f"--solver={solver}", "-no_plot", *flags]) == 0
    log = tmp_path / "tiny.log"
    log.write_text(capsys.readouterr().err)
    return log


def test_sppcaffe_log(tmp_path, capsys):
    log = sppcaffe_log(tmp_path, capsys)
    assert parse_log.main([str(log), str(tmp_path / "tables"), "--delimiter", ";"]) == 0
    train = log_parsing.read_table(tmp_path / "tables" / "tiny.log.train", ";")
    test = log_parsing.read_table(tmp_path / "tables" / "tiny.log.test", ";")
    # display: 5, max_iter: 20, test_interval: 10; lr fixed at 0.05.
    assert [r["NumIters"] for r in train] == [0, 5, 10, 15]
    assert [list(r) for r in train] == [["NumIters", "Seconds", "LearningRate", "loss"]] * 4
    assert [r["NumIters"] for r in test] == [0, 10, 20]
    assert list(test[0]) == ["NumIters", "Seconds", "LearningRate", "accuracy", "loss"]
    assert all(r["LearningRate"] == pytest.approx(0.05) for r in train + test)
    assert train[-1]["loss"] < train[0]["loss"]
    assert [r["Seconds"] for r in train] == sorted(r["Seconds"] for r in train)


def test_one_test_row_is_kept(tmp_path):
    """Caffe's parser drops a table's only row; this one keeps it."""
    log = tmp_path / "short.log"
    with open(CLASSIC) as f:
        log.write_text("".join(line for line in f if "I0101" not in line))
    train, test = log_parsing.parse_log(str(log))
    assert [r["NumIters"] for r in test] == [0]
    assert [r["NumIters"] for r in train] == [0, 20]


def test_tables_with_different_outputs_keep_every_column(tmp_path):
    rows = [{"NumIters": 0.0, "Seconds": 1.0, "LearningRate": 0.1, "accuracy": 0.5},
            {"NumIters": 0.0, "Seconds": 1.5, "LearningRate": 0.1, "top-5": 0.9}]
    path = tmp_path / "t.test"
    assert log_parsing.write_table(path, rows)
    header, lines = read_csv(path)
    assert header == ["NumIters", "Seconds", "LearningRate", "accuracy", "top-5"]
    assert lines == [["0.0", "1.0", "0.1", "0.5", ""], ["0.0", "1.5", "0.1", "", "0.9"]]


def test_a_log_without_training(tmp_path, capsys):
    log = tmp_path / "test_only.log"
    log.write_text("I1203 10:00:00.000000  1234 caffe.cpp:290] Batch 0, accuracy = 1\n")
    assert parse_log.main([str(log), str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("parse_log: error: ") and "no 'Solving ...' line" in err
    assert parse_log.main([str(tmp_path / "none.log"), str(tmp_path)]) == 1
    assert "cannot read log" in capsys.readouterr().err


def test_no_test_outputs_no_test_table(tmp_path, capsys):
    log = tmp_path / "train_only.log"
    with open(CLASSIC) as f:
        log.write_text("".join(line for line in f if "Test net output" not in line))
    assert parse_log.main([str(log), str(tmp_path)]) == 0
    assert (tmp_path / "train_only.log.train").exists()
    assert not (tmp_path / "train_only.log.test").exists()
    assert "no 'Test net output' lines" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# plot_training_log
# ---------------------------------------------------------------------------
def test_chart_types_are_caffes():
    assert [plot_training_log.chart_description(i) for i in range(8)] == [
        "Test accuracy  vs. Iters", "Test accuracy  vs. Seconds", "Test loss  vs. Iters",
        "Test loss  vs. Seconds", "Train learning rate  vs. Iters",
        "Train learning rate  vs. Seconds", "Train loss  vs. Iters", "Train loss  vs. Seconds"]


@pytest.mark.parametrize("chart_type, expected", [
    (0, [("caffe_lenet_digits", [0, 500, 1000, 1500], [0.0933333, 0.97, 0.993333, 0.99])]),
    (4, [("caffe_lenet_digits", list(range(0, 1500, 100)), None)]),
    (7, [("caffe_lenet_digits", None, None)]),
])
def test_series(chart_type, expected):
    series = plot_training_log.series(REAL, chart_type)
    assert [s[0] for s in series] == [e[0] for e in expected]
    for (label, xs, ys), (_, want_xs, want_ys) in zip(series, expected):
        assert len(xs) == len(ys) > 3
        if want_xs is not None:
            assert xs == want_xs
        if want_ys is not None:
            assert ys == pytest.approx(want_ys)
    if chart_type == 7:         # seconds rise, the loss falls
        xs, ys = series[0][1:]
        assert xs == sorted(xs) and ys[-1] < ys[0] / 100


def test_plot_several_logs(tmp_path, capsys):
    log = sppcaffe_log(tmp_path, capsys)
    png = tmp_path / "chart.png"
    assert plot_training_log.main(["6", str(png), REAL, str(log)]) == 0
    assert png.read_bytes().startswith(b"\x89PNG")
    assert f"Wrote {png}" in capsys.readouterr().out


def test_outputs_named_otherwise(tmp_path):
    log = tmp_path / "googlenet.log"
    with open(CLASSIC) as f:
        log.write_text(f.read().replace("output #0: accuracy", "output #0: loss3/top-1")
                       .replace("output #1: loss =", "output #1: loss3/loss3 ="))
    (_, xs, ys), = plot_training_log.series(str(log), 0)
    assert (xs, ys) == ([0, 40, 60], [0.001, 0.00452, 0.001])
    labels = [s[0] for s in plot_training_log.series(str(log), 2)]
    assert labels == ["googlenet"]


@pytest.mark.parametrize("argv, message", [
    (["8", "x.png", REAL], "8 is not a valid chart type"),
    (["0", "x.jpg", REAL], "must end with .png"),
    (["0", "x.png", "missing.log"], "cannot read log 'missing.log'"),
])
def test_plot_errors(tmp_path, capsys, argv, message):
    argv[1] = str(tmp_path / argv[1])
    assert plot_training_log.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("plot_training_log: error: ") and message in err


def test_plot_a_log_without_test_outputs(tmp_path, capsys):
    log = tmp_path / "train_only.log"
    with open(CLASSIC) as f:
        log.write_text("".join(line for line in f if "Test net output" not in line))
    assert plot_training_log.main(["0", str(tmp_path / "x.png"), str(log)]) == 1
    assert "no test output to plot as 'Test accuracy'" in capsys.readouterr().err


def test_plot_help_lists_the_chart_types(capsys):
    assert plot_training_log.main([]) == 0
    assert "7: Train loss  vs. Seconds" in capsys.readouterr().out
