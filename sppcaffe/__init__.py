"""sppcaffe: Caffe-compatible nets and SPP-net in Python.

The public names follow pycaffe: ``sppcaffe.Net(prototxt, sppcaffe.TEST,
weights=...)``, ``net.blobs``, ``net.params``, ``net.forward()``.
"""
import os as _os
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("sppcaffe")
except _metadata.PackageNotFoundError:      # run from a checkout without installing
    __version__ = "0+unknown"

# OpenBLAS keeps its worker threads spinning after each GEMM, stealing the
# second core from the threaded im2col/col2im that follow; a short timeout
# stops that.  It only takes effect if NumPy is not imported yet.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

# Imports follow the environment setting above on purpose.
from . import io, layers  # noqa: E402,F401  (importing layers fills the registry)
from .backends import GPUUnavailable, set_device, set_mode_cpu, set_mode_gpu  # noqa: E402
from .blob import Blob  # noqa: E402
from .layer import LAYER_TYPES, Layer, LayerError, register  # noqa: E402
from .net import TEST, TRAIN, Net  # noqa: E402
from .random import set_random_seed  # noqa: E402
from . import solvers  # noqa: E402
# pycaffe's NetSpec (`sppcaffe.layers` doubles as its L: see net_spec.py), Classifier, Detector.
from .net_spec import NetSpec, params, to_proto  # noqa: E402
from .classifier import Classifier  # noqa: E402
from .detector import Detector  # noqa: E402
from .solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver,  # noqa: E402
                      RMSPropSolver, SGDSolver, Solver, get_solver)
# pycaffe's module-level functions, and the opt-in `import caffe` (see pycaffe_compat.py).
from .pycaffe_compat import init_log, install_as_caffe, layer_type_list, log  # noqa: E402

__all__ = ["Blob", "Layer", "LayerError", "LAYER_TYPES", "Net", "TEST", "TRAIN", "io",
           "register", "set_random_seed", "set_mode_cpu", "set_mode_gpu", "set_device",
           "GPUUnavailable", "solvers", "get_solver", "Solver",
           "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver",
           "AdamSolver", "NetSpec", "layers", "params", "to_proto", "Classifier", "Detector"]
__all__ += ["layer_type_list", "init_log", "log", "install_as_caffe"]
