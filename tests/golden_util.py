"""Comparison against the BVLC Caffe fixtures in tests/golden (format and
tolerances: tests/golden/README.md)."""
import os

import numpy as np

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
DATA_TOL = 1e-5      # forward data
DIFF_TOL = 1e-4      # diffs, gradients, solver trajectories


def case_path(case, name=""):
    return os.path.join(GOLDEN, case, name)


def load_expected(case, name="expected.npz"):
    with np.load(case_path(case, name)) as f:
        return {k: f[k] for k in f.files}


def relative_error(ours, ref):
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference {ref.shape}"
    norm = np.linalg.norm(ref)
    diff = np.linalg.norm(ours - ref)
    return diff / norm if norm > 0 else diff


def assert_close(ours, ref, tol, what):
    err = relative_error(ours, ref)
    assert err < tol, f"{what}: relative error {err:.3g} >= {tol:g}"
