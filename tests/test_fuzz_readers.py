"""Every reader of a file sppcaffe is given, fed mutated and truncated
files: prototxt nets and solvers, caffemodels, solver states and their
.rng sidecars, binaryprotos, LMDB Datum values, image lists, images and
window files, read by the readers themselves and through Net and Solver
construction.  Each ends in a correct result or a clear sppcaffe error
naming the file; never another exception, a hang or a crash (the corpus,
the property and why a worker process: fuzz_corpus.py).

The default run takes a few dozen examples per reader (deterministic);
`pytest -m slow` takes 2,000 per reader with random seeds (set
SPPCAFFE_FUZZ_SEED=N to repeat one run)."""
import contextlib
import json
import os
import random
import select
import subprocess
import sys
import time

import pytest

from fuzz_corpus import TARGETS

TESTS = os.path.dirname(os.path.abspath(__file__))
# Examples per reader in the default run: about 30 s for all of them on 2 cores.
DEFAULT_EXAMPLES = {"net_prototxt": 250, "solver_prototxt": 200, "caffemodel": 250,
                    "solverstate": 200, "rng_sidecar": 160, "binaryproto": 250, "lmdb_datum": 120,
                    "image_list": 160, "image_file": 200, "window_file": 200}
SLOW_EXAMPLES = 2000
START_SECONDS = 120           # the worker's import and seed files
SECONDS_PER_EXAMPLE = 1.0     # generous: the worker's own alarm catches a hang first


class FuzzWorker:
    """The worker process of fuzz_corpus.py, started again after it dies."""

    def __init__(self, work):
        self.work = str(work)
        self.log = os.path.join(self.work, "worker.log")
        self.process = None

    def _start(self):
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1",
                   # OpenCV refuses images above this many pixels (a corrupt header
                   # must not make it allocate gigabytes).
                   OPENCV_IO_MAX_IMAGE_PIXELS=str(1 << 22))
        env["PYTHONPATH"] = os.pathsep.join([TESTS, os.path.dirname(TESTS),
                                             env.get("PYTHONPATH", "")])
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, os.path.join(TESTS, "fuzz_corpus.py"), self.work],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                cwd=self.work)
        reply = self._reply(START_SECONDS)
        assert reply and reply.get("ready"), f"the fuzz worker did not start:\n{self.log_tail()}"

    def log_tail(self):
        """The end of the worker's stderr (OpenCV's warnings, a crash's last words)."""
        with open(self.log, "rb") as f:
            return f.read()[-3000:].decode(errors="replace")

    def _reply(self, timeout):
        """The worker's next reply; None when it died (end of its output)
        or sent nothing for `timeout` seconds (then it is still running)."""
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(30)           # its output ended: it is exiting
            return None
        return json.loads(line)

    def run(self, target, examples, seed, example_seconds=20):
        """(passed, report) of `examples` examples of `target`."""
        if self.process is None or self.process.poll() is not None:
            self._start()
        self.process.stdin.write(json.dumps({"target": target, "examples": examples,
                                             "seed": seed,
                                             "example_seconds": example_seconds}) + "\n")
        self.process.stdin.flush()
        timeout = 60 + examples * SECONDS_PER_EXAMPLE
        reply = self._reply(timeout)
        if reply is not None:
            return reply["passed"], reply["report"]
        # Died (a crash) or still running (a hang): say so, with the example.
        if self.process.poll() is None:
            what = f"did not finish within {timeout:.0f} s (a hang)"
            self.process.kill()
        else:
            what = f"died with exit status {self.process.returncode} (a crash)"
        self.process.wait()
        self.process = None
        example = b"?"
        with contextlib.suppress(FileNotFoundError):
            with open(os.path.join(self.work, f"{target}.current"), "rb") as f:
                example = f.read()
        return False, (f"the worker {what} on the example {example!r}; its stderr ends:\n"
                       f"{self.log_tail()}")

    def close(self):
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def fuzz_worker(tmp_path_factory):
    worker = FuzzWorker(tmp_path_factory.mktemp("fuzz"))
    yield worker
    worker.close()


def test_every_target_has_a_default_size():
    assert set(DEFAULT_EXAMPLES) == set(TARGETS)


@pytest.mark.parametrize("check, said", [
    ("harness_unclear_error", "not a clear error naming []: builtins.KeyError"),
    ("harness_hang", "the example ran for more than 1 s"),
    ("harness_crash", "died with exit status -11 (a crash) on the example"),
])
def test_the_harness_reports_unclear_errors_hangs_and_crashes(fuzz_worker, check, said):
    passed, report = fuzz_worker.run(check, 3, seed=None, example_seconds=1)
    assert not passed
    assert said in report


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_reader_survives_fuzzing(fuzz_worker, target):
    passed, report = fuzz_worker.run(target, DEFAULT_EXAMPLES[target], seed=None)
    assert passed, report


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_reader_survives_heavy_fuzzing(fuzz_worker, target):
    seed = int(os.environ.get("SPPCAFFE_FUZZ_SEED") or random.randrange(1 << 32))
    start = time.perf_counter()
    passed, report = fuzz_worker.run(target, SLOW_EXAMPLES, seed=seed)
    print(f"{target}: {SLOW_EXAMPLES} examples in {time.perf_counter() - start:.0f} s "
          f"(SPPCAFFE_FUZZ_SEED={seed})")
    assert passed, f"SPPCAFFE_FUZZ_SEED={seed}\n{report}"
