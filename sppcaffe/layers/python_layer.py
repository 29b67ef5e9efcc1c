"""Python layers (``type: "Python"``), as Caffe's PythonLayer.

``python_param { module layer param_str }`` names a class in a module that
is imported from sys.path / PYTHONPATH when the net is built (Caffe's
GetPythonLayer).  The class is written for pycaffe: it subclasses
``caffe.Layer`` and defines ``setup``, ``reshape``, ``forward`` and
``backward``; how ``import caffe`` resolves is described in
sppcaffe/pycaffe_compat.py.

The registered layer drives that object the way python_layer.hpp does:
``param_str`` and ``phase`` are set and ``setup`` called once (LayerSetUp),
``reshape`` before every forward, ``forward(bottom, top)`` and
``backward(top, propagate_down, bottom)`` with lists of Blobs.  Blobs the
object adds to ``self.blobs`` in setup are this layer's parameters: the net
registers them (solvers update them, caffemodels save and load them).  A
Python layer is a loss only through ``loss_weight`` in the prototxt, as in
Caffe.  In GPU mode it runs its host code; the blobs copy themselves
between host and device as the Python code reads and writes them.

Anything the object raises comes back as a LayerError naming the layer
(the original exception chained).  Attributes the driver does not have
are the Python object's: ``net.layers[i].set_roidb(...)`` reaches a
method of the user's class, as it does in pycaffe.
"""
import importlib
import sys

from .. import pycaffe_compat
from ..layer import Layer, register


@register("Python")
class PythonLayer(Layer):
    # Driver attributes set after the object exists (by the net, or in
    # layer_setup): declared here so __setattr__ keeps them on the driver.
    net_data_shapes = None
    share_in_parallel = False

    def __init__(self, param, phase):
        super().__init__(param, phase)
        self.impl = self._instantiate()
        self.blobs = self.impl.blobs

    def _instantiate(self):
        p = self.param.python_param
        if not p.module:
            raise self.error("python_param.module is not set")
        if not p.layer:
            raise self.error("python_param.layer is not set")
        pycaffe_compat.install()
        if p.module not in sys.modules:
            importlib.invalidate_caches()       # modules written since start-up
        try:
            module = importlib.import_module(p.module)
        except ImportError as err:
            raise self.error(f"cannot import module '{p.module}' (python_param.module): {err}; "
                             f"it is looked up on sys.path / PYTHONPATH") from err
        except Exception as err:
            raise self.error(f"importing module '{p.module}' raised "
                             f"{type(err).__name__}: {err}") from err
        cls = getattr(module, p.layer, None)
        where = getattr(module, "__file__", None) or p.module
        if cls is None:
            raise self.error(f"module '{p.module}' ({where}) has no class '{p.layer}' "
                             "(python_param.layer)")
        if not isinstance(cls, type):
            raise self.error(f"'{p.layer}' in module '{p.module}' is not a class")
        self._class_name = f"{p.module}.{p.layer}"
        try:
            return pycaffe_compat.pycaffe_layer_class(cls)(self.param)
        except Exception as err:
            raise self.error(f"{self._class_name}(param) raised "
                             f"{type(err).__name__}: {err}") from err

    def _call(self, method, *args):
        try:
            function = getattr(self.impl, method)
        except AttributeError:
            raise self.error(f"{self._class_name} has no method '{method}'") from None
        try:
            function(*args)
        except Exception as err:
            raise self.error(f"{self._class_name}.{method} raised "
                             f"{type(err).__name__}: {err}") from err

    # ---- life cycle (python_layer.hpp) --------------------------------------
    def layer_setup(self, bottom, top):
        p = self.param.python_param
        self.impl.param_str = p.param_str
        self.impl.param_str_ = p.param_str
        self.impl.phase = int(self.phase)
        self.share_in_parallel = p.share_in_parallel       # no effect: one process
        self._call("setup", bottom, top)

    def reshape(self, bottom, top):
        self._call("reshape", bottom, top)

    def forward(self, bottom, top):
        self._call("forward", bottom, top)

    def backward(self, top, propagate_down, bottom):
        self._call("backward", top, list(propagate_down), bottom)

    # Python code works on host arrays: its device code is its host code.
    def forward_gpu(self, bottom, top):
        self.forward(bottom, top)

    def backward_gpu(self, top, propagate_down, bottom):
        self.backward(top, propagate_down, bottom)

    # ---- the user's object seen through the driver ---------------------------
    def __getattr__(self, name):
        # Only reached for names the driver lacks.
        impl = self.__dict__.get("impl")
        if impl is None:
            raise AttributeError(name)
        return getattr(impl, name)

    def __setattr__(self, name, value):
        # The driver's own attributes stay here; anything else is the
        # Python object's, so reads and writes through the net agree.
        if "impl" in self.__dict__ and name not in self.__dict__ \
                and not hasattr(type(self), name):
            setattr(self.impl, name, value)
        else:
            object.__setattr__(self, name, value)
