"""Learning-rate policies, as Caffe's SGDSolver::GetLearningRate.

    fixed      base_lr
    step       base_lr * gamma ^ floor(iter / stepsize)
    exp        base_lr * gamma ^ iter
    inv        base_lr * (1 + gamma * iter) ^ (-power)
    multistep  base_lr * gamma ^ current_step, current_step advancing by at
               most one per call when iter reaches stepvalue[current_step]
    poly       base_lr * (1 - iter / max_iter) ^ power
    sigmoid    base_lr / (1 + exp(-gamma * (iter - stepsize)))

Caffe computes the powers in double and keeps the rate as a float; so do we.
"""
import logging
import math

import numpy as np

log = logging.getLogger("sppcaffe")

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


class LRPolicyError(ValueError):
    """A learning-rate policy that is unknown or misconfigured."""


def _require(condition, policy, what, source):
    if not condition:
        raise LRPolicyError(f"{source}: lr_policy '{policy}' needs {what}")


def check_policy(param, source="<SolverParameter>"):
    """LRPolicyError unless SolverParameter `param` names a known policy
    with the fields it needs (run when a solver is built, and per rate)."""
    policy, gamma = param.lr_policy, param.gamma
    if policy not in POLICIES:
        raise LRPolicyError(f"{source}: unknown learning rate policy '{policy}' "
                            f"(known: {', '.join(POLICIES)})")
    if policy in ("step", "sigmoid"):
        _require(param.stepsize > 0, policy, "stepsize > 0", source)
    if policy in ("step", "exp", "inv", "multistep", "sigmoid"):
        _require(gamma >= 0, policy, "gamma >= 0", source)
    if policy == "poly":
        _require(param.max_iter > 0, policy, "max_iter > 0", source)


def learning_rate(param, iteration, current_step=0, source="<SolverParameter>"):
    """The rate at `iteration` for SolverParameter `param`, and the new
    `current_step` (Caffe's current_step_: the step policies update it and
    it is saved in snapshots)."""
    check_policy(param, source)
    policy = param.lr_policy
    base_lr = param.base_lr
    gamma = param.gamma
    if policy == "fixed":
        rate = base_lr
    elif policy == "step":
        current_step = iteration // param.stepsize
        rate = base_lr * math.pow(gamma, current_step)
    elif policy == "exp":
        rate = base_lr * math.pow(gamma, iteration)
    elif policy == "inv":
        base = np.float32(1) + np.float32(gamma) * np.float32(iteration)
        rate = base_lr * math.pow(float(base), -param.power)
    elif policy == "multistep":
        if current_step < len(param.stepvalue) and iteration >= param.stepvalue[current_step]:
            current_step += 1
            log.info("MultiStep Status: Iteration %d, step = %d", iteration, current_step)
        rate = base_lr * math.pow(gamma, current_step)
    elif policy == "poly":
        remaining = np.float32(1) - np.float32(iteration) / np.float32(param.max_iter)
        with np.errstate(invalid="ignore"):      # past max_iter: NaN, as Caffe's pow
            rate = base_lr * np.power(np.float64(remaining), param.power)
    else:       # sigmoid
        rate = base_lr / (1.0 + math.exp(-gamma * (iteration - param.stepsize)))
    return np.float32(rate), current_step
