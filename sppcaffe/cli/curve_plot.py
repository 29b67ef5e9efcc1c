"""The training curves' PNG: drawn from the rows progress.TrainingCurves
records, in this process or in a helper process started with the training.

Importing matplotlib and drawing the first figure costs 0.5-1.5 s (more on
a machine whose font cache is not built yet): paid at the end of every
training run, that is a tenth of a short run's wall time.  So train_net
starts `PlotProcess` when training starts: a separate Python process that
runs this file as a script, imports matplotlib and draws a throw-away
figure while the training runs, then waits for the rows on its stdin and
answers with the PNG's bytes on its stdout.  Only the drawing itself is
left at the end.  The parent writes the file (atomically), and draws in
process if the helper failed for any reason.

This module imports nothing from sppcaffe, so that the helper process does
not load the framework, and so that tools/train_net can load it by its path
and start the helper before it imports sppcaffe itself
(`PlotProcess.for_command_line`): the helper's imports then run on the core
that the launcher's leave idle rather than beside the first test pass.
"""
import io
import json
import os
import subprocess
import sys

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def series(rows, phase, net=None):
    """{output: ([iterations], [values])} of one phase (and test net) of
    rows (iteration, seconds, phase, net, output, value)."""
    out = {}
    for iteration, _, row_phase, row_net, output, value in rows:
        if row_phase == phase and (net is None or row_net == net):
            its, values = out.setdefault(output, ([], []))
            its.append(iteration)
            values.append(value)
    return out


def render(rows, test_losses, title=""):
    """The PNG bytes: training loss (and test losses) against iterations on
    top, the other test outputs (accuracy) below.  `test_losses` maps a
    test net index to the names of its loss outputs."""
    # The object API with the Agg canvas: no pyplot, no display needed,
    # and the process's matplotlib backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    test_nets = sorted({row[3] for row in rows if row[2] == "test"})
    scores = {}                     # (net, output) -> series, for the lower panel
    figure = Figure(figsize=(8, 7 if test_nets else 4), dpi=100)
    FigureCanvasAgg(figure)
    top = figure.add_subplot(2 if test_nets else 1, 1, 1)
    train = series(rows, "train")
    if "smoothed_loss" in train:
        top.plot(*train["smoothed_loss"], label="train loss (smoothed)", color="C0")
    colours = iter(f"C{k}" for k in range(1, 1000))     # C0 is the training loss's
    for net in test_nets:
        for output, (its, values) in series(rows, "test", net).items():
            base = output.split("#")[0]
            if base in test_losses.get(net, ()) or (net not in test_losses and "loss" in base):
                top.plot(its, values, "o-", label=f"test #{net} {output}", markersize=3,
                         color=next(colours))
            else:
                scores[net, output] = (its, values)
    top.set_xlabel("iteration")
    top.set_ylabel("loss")
    top.grid(True, alpha=0.3)
    top.legend(loc="upper right", fontsize="small")
    if title:
        top.set_title(title)
    if test_nets:
        bottom = figure.add_subplot(2, 1, 2, sharex=top)
        for (net, output), (its, values) in scores.items():
            bottom.plot(its, values, "o-", label=f"test #{net} {output}", markersize=3,
                        color=next(colours))
            last = values[-1]
            bottom.annotate(f"{last:.3g}", (its[-1], last), textcoords="offset points",
                            xytext=(4, 4), fontsize="small")
        values = [v for _, vs in scores.values() for v in vs]
        if values and 0 <= min(values) and max(values) <= 1:
            bottom.set_ylim(0, 1.02)
        bottom.set_xlabel("iteration")
        bottom.set_ylabel("test output")
        bottom.grid(True, alpha=0.3)
        if scores:
            bottom.legend(loc="lower right", fontsize="small")
    # Fixed margins, not tight_layout: it lays every tick label out once
    # more, half the drawing time.
    figure.subplots_adjust(left=0.12, right=0.97, bottom=0.07 if test_nets else 0.12,
                           top=0.94 if title else 0.97, hspace=0.28)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# ---------------------------------------------------------------------------
# The helper process
# ---------------------------------------------------------------------------
def _request(rows, test_losses, title):
    return json.dumps({"rows": [list(r[:5]) + [float(r[5])] for r in rows],
                       "test_losses": {str(k): sorted(v) for k, v in test_losses.items()},
                       "title": title})


# The helper's priority (nice value): its warm-up (~0.6 s of CPU) then runs
# mostly in the cycles the training leaves idle instead of taking them from
# it (LeNet's first test pass: 1.2 -> 1.05 s without any helper).  Not 19:
# the drawing at the end, which the training waits for, still gets ~10% of
# a core against a busy process at nice 0 (a fifth of a second of drawing
# then takes ~2 s instead of ~15).
HELPER_NICE = 10


def _serve():
    """The helper's side: get matplotlib ready, then one request, one PNG."""
    try:
        os.nice(HELPER_NICE)
    except OSError:
        pass
    render([(0, 0.0, "train", 0, "smoothed_loss", 1.0)], {}, "warm-up")
    request = json.loads(sys.stdin.read())
    rows = [tuple(r) for r in request["rows"]]
    test_losses = {int(k): set(v) for k, v in request["test_losses"].items()}
    sys.stdout.buffer.write(render(rows, test_losses, request["title"]))
    sys.stdout.buffer.flush()
    # The training waits for this process to end; the interpreter's own
    # clean-up after matplotlib takes ~0.15 s and nothing is left to do.
    os._exit(0)


# Where MPI launchers put a process's rank: sppcaffe.parallel.RANK_VARIABLES,
# which this module cannot import (see above).
_MPI_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


class PlotProcess:
    """The helper process (see the module's docstring).  `render` gives the
    PNG bytes, or None when the helper could not make them (the caller
    then draws in process)."""

    def __init__(self):
        self.proc = None
        try:
            # -P: the script's folder (sppcaffe/cli) is not put on sys.path,
            # where its modules could shadow others.  Its own session: a
            # Ctrl-C meant for the training does not end it.
            self.proc = subprocess.Popen([sys.executable, "-P", __file__], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
        except OSError:
            pass

    @classmethod
    def for_command_line(cls, argv):
        """The helper for train_net's command line `argv`, started before
        sppcaffe is imported (tools/train_net), or None where that run draws
        no curves (--no-plot, --help, an MPI rank other than 0)."""
        if {"--no-plot", "-h", "--help"} & set(argv):
            return None
        if any(os.environ.get(name, "0") != "0" for name in _MPI_RANK_VARIABLES):
            return None
        return cls()

    def render(self, rows, test_losses, title="", timeout=120):
        if self.proc is None:
            return None
        try:
            png, _ = self.proc.communicate(_request(rows, test_losses, title).encode(),
                                           timeout=timeout)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            png = b""
        self.close()
        return png if png.startswith(PNG_SIGNATURE) else None

    def close(self):
        """End the helper (training ended without curves to draw)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None


if __name__ == "__main__":
    _serve()
