"""A competing CPU-bound process for the benchmarks' "shared cores" runs,
and the load-average line every figure is reported with.

Users train on machines that also run other things (a browser, a build,
another training run).  `competing_process()` starts one busy-looping
Python process for the duration of a `with` block, on the same cores as
the measured program, so that a benchmark can report its quiet figure and
its shared-cores figure side by side.
"""
import contextlib
import os
import subprocess
import sys
import time

BUSY_LOOP = "while True: pass"


@contextlib.contextmanager
def competing_process(enabled=True):
    """Run a CPU-bound process (`python -c "while True: pass"`) while inside."""
    if not enabled:
        yield None
        return
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        time.sleep(0.2)                 # let it reach its loop
        yield proc
    finally:
        proc.kill()
        proc.wait()


def load_averages():
    """'1.23 0.98 0.75': the 1, 5 and 15 minute load averages."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())
