"""SGD on a net with BatchNorm against BVLC Caffe (tests/golden/solver_bn):
the loss at every step and the final weights, BatchNorm's running
statistics included -- they change in every TRAIN forward while the solver
leaves them alone (Caffe's lr_mult 0)."""
import numpy as np
import pytest

import sppcaffe
from test_solvers import golden_solver, golden_steps, run_golden

CASE = "solver_bn"

# The case's net also has a PReLU, another family's layer.
pytestmark = pytest.mark.skipif("PReLU" not in sppcaffe.LAYER_TYPES,
                                reason="solver_bn needs the PReLU layer")


def test_trajectory_and_running_statistics_match_caffe():
    solver = golden_solver(CASE)
    initial = [b.data.copy() for b in solver.net.params["bn"]]
    run_golden(solver, CASE, 0, golden_steps(CASE))
    # The statistics moved (forward), and not by gradient steps.
    assert all(not np.array_equal(b.data, i) for b, i in zip(solver.net.params["bn"], initial))
    bn_lr = [solver.net.params_lr[solver.net.learnable_params.index(b)]
             for b in solver.net.params["bn"]]
    assert bn_lr == [0, 0, 0]


def test_trajectory_on_the_device(gpu_device):
    solver = golden_solver(CASE)
    run_golden(solver, CASE, 0, golden_steps(CASE))
