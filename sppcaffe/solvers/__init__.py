"""Caffe's solvers with pycaffe's API.

    solver = sppcaffe.get_solver("solver.prototxt")   # class chosen by `type`
    solver.net.blobs["data"].data[...] = batch       # feed Input blobs, then
    solver.step(1)                                   # one training iteration
    solver.solve()                                   # or train to max_iter

Modules: solver.py (the training loop, tests, snapshots), updates.py (the
six update rules), lr_policy.py, state.py and hdf5.py (snapshot files),
resume_state.py (the .rng sidecar: generators and data positions for an
exact resume), signals.py (SIGINT/SIGHUP).
"""
import os

from .. import io
from ..proto import caffe_pb2
from .lr_policy import LRPolicyError, learning_rate
from .solver import Solver, SolverError, TrainingDiverged
from .state import SolverStateError
from .updates import (SOLVER_TYPES, AdaDeltaSolver, AdaGradSolver, AdamSolver,
                      NesterovSolver, RMSPropSolver, SGDSolver)

__all__ = ["AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "LRPolicyError", "NesterovSolver",
           "RMSPropSolver", "SGDSolver", "SOLVER_TYPES", "Solver", "SolverError",
           "SolverStateError", "TrainingDiverged", "get_solver", "learning_rate"]


def get_solver(solver, **kwargs):
    """A solver of the class its `type` names (pycaffe's get_solver), from
    a solver prototxt path or a SolverParameter; keywords go to the class."""
    if isinstance(solver, caffe_pb2.SolverParameter):
        source = kwargs.get("source") or "<SolverParameter>"
        solver_type = io.upgrade_solver(solver).type
    else:
        source = os.fspath(solver)
        solver_type = io.read_solver(source).type
    try:
        cls = SOLVER_TYPES[solver_type]
    except KeyError:
        raise SolverError(f"{source}: unknown solver type '{solver_type}' (known: "
                          f"{', '.join(SOLVER_TYPES)})") from None
    return cls(solver, **kwargs)
