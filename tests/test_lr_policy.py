"""Learning-rate policies against their closed forms (Caffe's GetLearningRate)."""
import logging
import math

import numpy as np
import pytest

from sppcaffe.proto import caffe_pb2
from sppcaffe.solvers import LRPolicyError, learning_rate


def solver_param(**fields):
    param = caffe_pb2.SolverParameter(base_lr=0.05, gamma=0.8, power=0.75, stepsize=7,
                                      max_iter=50)
    for name, value in fields.items():
        if isinstance(value, list):
            getattr(param, name).extend(value)
        else:
            setattr(param, name, value)
    return param


def f32(x):
    """A solver field as Caffe holds it (float)."""
    return float(np.float32(x))


BASE, GAMMA, POWER, STEPSIZE, MAX_ITER = f32(0.05), f32(0.8), f32(0.75), 7, 50

CLOSED_FORMS = {
    "fixed": lambda it: BASE,
    "step": lambda it: BASE * GAMMA ** (it // STEPSIZE),
    "exp": lambda it: BASE * GAMMA ** it,
    "inv": lambda it: BASE * (1 + GAMMA * it) ** -POWER,
    "poly": lambda it: BASE * (1 - it / MAX_ITER) ** POWER,
    "sigmoid": lambda it: BASE / (1 + math.exp(-GAMMA * (it - STEPSIZE))),
}


@pytest.mark.parametrize("policy", sorted(CLOSED_FORMS))
def test_policy_matches_closed_form(policy):
    param = solver_param(lr_policy=policy)
    for it in (0, 1, 6, 7, 8, 13, 14, 30, 49):
        rate, _ = learning_rate(param, it)
        assert isinstance(rate, np.float32)
        assert rate == pytest.approx(CLOSED_FORMS[policy](it), rel=1e-6), (policy, it)


def test_step_policy_sets_current_step():
    param = solver_param(lr_policy="step")
    assert learning_rate(param, 20, current_step=0)[1] == 20 // STEPSIZE
    assert learning_rate(param, 3, current_step=5)[1] == 0


def test_multistep_advances_one_step_per_call_at_each_stepvalue(caplog):
    param = solver_param(lr_policy="multistep", stepvalue=[3, 5, 9])
    caplog.set_level(logging.INFO, logger="sppcaffe")
    step, steps = 0, []
    for it in range(12):
        rate, step = learning_rate(param, it, step)
        steps.append(step)
        assert rate == pytest.approx(BASE * GAMMA ** step, rel=1e-6)
    assert steps == [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    assert "MultiStep Status: Iteration 3, step = 1" in caplog.messages
    assert "MultiStep Status: Iteration 9, step = 3" in caplog.messages
    # Jumping past several stepvalues still moves one step per call, as Caffe.
    assert learning_rate(param, 20, 0)[1] == 1


@pytest.mark.parametrize("fields, message", [
    ({"lr_policy": "cosine"}, "unknown learning rate policy 'cosine'"),
    ({"lr_policy": ""}, "unknown learning rate policy ''"),
    ({"lr_policy": "step", "stepsize": 0}, "stepsize > 0"),
    ({"lr_policy": "sigmoid", "stepsize": 0}, "stepsize > 0"),
    ({"lr_policy": "exp", "gamma": -1.0}, "gamma >= 0"),
])
def test_bad_policy_is_an_error_naming_the_source(fields, message):
    with pytest.raises(LRPolicyError, match=message) as err:
        learning_rate(solver_param(**fields), 1, source="my_solver.prototxt")
    assert "my_solver.prototxt" in str(err.value)
