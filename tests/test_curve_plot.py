"""The training curves' PNG (sppcaffe/cli/curve_plot.py): drawn by a helper
process started with the training, or in process when the helper fails."""
from sppcaffe.cli import curve_plot, progress

ROWS = [(0, 0.1, "train", 0, "smoothed_loss", 2.3), (0, 0.1, "train", 0, "lr", 0.01),
        (0, 0.1, "test", 0, "accuracy", 0.1), (0, 0.1, "test", 0, "loss", 2.3),
        (10, 0.5, "train", 0, "smoothed_loss", 1.1), (10, 0.6, "test", 0, "accuracy", 0.8),
        (10, 0.6, "test", 0, "loss", 0.9)]


def curves():
    c = progress.TrainingCurves()
    c.rows = list(ROWS)
    c.test_losses = {0: {"loss"}}
    return c


def test_the_helper_process_draws_the_png(tmp_path):
    plotter = curve_plot.PlotProcess()
    assert plotter.proc is not None and plotter.proc.poll() is None     # running, waiting
    path = tmp_path / "x_training.png"
    curves().write_plot(str(path), "title", plotter)
    assert path.read_bytes().startswith(curve_plot.PNG_SIGNATURE)
    assert plotter.proc is None                                          # done and reaped


def test_a_failed_helper_leaves_the_drawing_to_this_process(tmp_path):
    plotter = curve_plot.PlotProcess()
    plotter.proc.kill()
    plotter.proc.wait()
    assert plotter.render(ROWS, {0: {"loss"}}) is None
    path = tmp_path / "x_training.png"
    curves().write_plot(str(path), "", plotter)
    assert path.read_bytes().startswith(curve_plot.PNG_SIGNATURE)


def test_series_by_phase_and_net():
    train = curve_plot.series(ROWS, "train")
    assert train["smoothed_loss"] == ([0, 10], [2.3, 1.1])
    assert curve_plot.series(ROWS, "test", 0)["accuracy"] == ([0, 10], [0.1, 0.8])
    assert curve_plot.series(ROWS, "test", 1) == {}


def test_the_helper_yields_the_cores_to_the_training(tmp_path):
    """Its warm-up runs below the training's priority (nice + HELPER_NICE)."""
    import os
    import time
    plotter = curve_plot.PlotProcess()
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    deadline = time.monotonic() + 30
    while os.getpriority(os.PRIO_PROCESS, plotter.proc.pid) == mine:
        assert time.monotonic() < deadline, "the helper never lowered its priority"
        time.sleep(0.01)
    expected = min(19, mine + curve_plot.HELPER_NICE)
    assert os.getpriority(os.PRIO_PROCESS, plotter.proc.pid) == expected
    path = tmp_path / "x_training.png"
    curves().write_plot(str(path), "title", plotter)
    assert path.read_bytes().startswith(curve_plot.PNG_SIGNATURE)
