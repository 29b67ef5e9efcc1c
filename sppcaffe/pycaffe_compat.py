"""What code written for pycaffe finds when it does ``import caffe``: the
one place that decides whether a real Caffe is installed, the stand-in
module ``caffe`` used where none is, and pycaffe's module-level functions
that have no other home (``layer_type_list``, ``init_log``, ``log``).

Two kinds of code get the stand-in:

- Python layers.  Caffe's ``type: "Python"`` layers live in ordinary
  modules that start with ``import caffe`` and subclass ``caffe.Layer``;
  sppcaffe runs them unchanged, registering the stand-in (rule 3 below)
  on its own before importing the first one.
- Whole scripts, by opt-in only: ``python -m sppcaffe.as_caffe script.py``
  or ``import sppcaffe.as_caffe`` (or ``sppcaffe.install_as_caffe()``)
  before ``import caffe``.  The opt-in refuses (``RealCaffeInstalled``,
  naming where that Caffe is) where rule 1 or 2 finds a real Caffe, so
  asking for sppcaffe never silently gives, nor hides, another Caffe.

How ``import caffe`` resolves, exactly:

1. If a module named ``caffe`` is already imported, it is used as it is.
2. Otherwise, if a real Caffe is importable (``importlib.util.find_spec``
   finds a ``caffe`` module or regular package on sys.path / PYTHONPATH),
   nothing is registered: a real Caffe is never shadowed.  The layer's
   module then gets the real pycaffe, and sppcaffe rebuilds the layer's
   class on its own base (the class's methods and attributes, minus the
   real ``caffe.Layer``; see ``pycaffe_layer_class``).
3. Otherwise sppcaffe registers a small stand-in module as ``caffe`` in
   ``sys.modules`` (once, before importing the first Python layer's
   module; ``install()`` does it on demand).  It has ``Layer`` (pycaffe's
   layer base, below), ``TRAIN``/``TEST`` (the same ints as sppcaffe's),
   ``caffe.proto.caffe_pb2`` (sppcaffe's generated schema), pycaffe's
   submodules that sppcaffe has (``caffe.io``, ``caffe.net_spec``,
   ``caffe.classifier``, ``caffe.detector``, ``caffe.draw``, and
   ``caffe.pycaffe`` for ``from caffe.pycaffe import Net``), registered in
   sys.modules so that ``import caffe.io`` works too, and every other
   name is looked up on the ``sppcaffe`` package (``Net``, ``SGDSolver``,
   ``get_solver``, ``set_mode_gpu``, ``set_random_seed``, ...).  It is
   marked ``__sppcaffe_standin__ = True``: code that needs to know whether
   the real Caffe is loaded can check that attribute.

A directory named ``caffe`` without ``__init__.py`` (a namespace package,
such as a source checkout's folder) is not a Caffe installation and does
not count as one.

The layer base behaves as pycaffe's (python/caffe/_caffe.cpp, and
include/caffe/layers/python_layer.hpp for the calls): the class is called
with the LayerParameter; before ``setup`` the object gets ``param_str``
(also as ``param_str_``, the name the Fast R-CNN fork's pycaffe uses) and
``phase`` (an int, ``caffe.TRAIN`` or ``caffe.TEST``); ``self.blobs`` is the
layer's learnable blobs, a list that ``self.blobs.add_blob(*shape)`` grows
(zero-filled blobs); ``self.type`` is ``"Python"``.
"""
import functools
import importlib
import importlib.util
import logging
import os
import sys
import types

from .blob import Blob

STANDIN_FLAG = "__sppcaffe_standin__"
# pycaffe's submodules that sppcaffe has: `caffe.<key>` is sppcaffe's module.
SUBMODULES = {"io": "sppcaffe.io", "net_spec": "sppcaffe.net_spec",
              "classifier": "sppcaffe.classifier", "detector": "sppcaffe.detector",
              "draw": "sppcaffe.draw"}


class RealCaffeInstalled(ImportError):
    """sppcaffe was asked to be ``caffe`` where a real Caffe is importable."""


class BlobVec(list):
    """pycaffe's BlobVec: a layer's parameter blobs, grown by add_blob."""

    def __init__(self, owner):
        super().__init__()
        self._owner = owner

    def add_blob(self, *shape):
        """Append a new zero-filled blob of `shape` (pycaffe: add_blob(2, 3))."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        self.append(Blob(shape, name=f"{self._owner}/{len(self)}"))


class Layer:
    """pycaffe's ``caffe.Layer``: subclass it and define ``setup``,
    ``reshape``, ``forward`` and ``backward`` (Caffe calls them; sppcaffe's
    "Python" layer type does here)."""

    def __init__(self, param=None):
        self._blobs = BlobVec(param.name if param is not None else type(self).__name__)

    @property
    def blobs(self):
        # Read-only, as pycaffe's; made here too when a subclass's __init__
        # did not call this one.
        blobs = self.__dict__.get("_blobs")
        if blobs is None:
            blobs = self._blobs = BlobVec(type(self).__name__)
        return blobs

    @property
    def type(self):
        return "Python"

    def setup(self, bottom, top):
        # pycaffe's base has nothing useful here either (its setup calls
        # back into the Python object); a layer without setup needs none.
        pass


def pycaffe_layer_class(cls):
    """`cls` itself when it derives from this module's Layer; otherwise
    (a class written against a real pycaffe, or a plain class) a class with
    the same name, methods and attributes built on this module's Layer.
    Methods using zero-argument ``super()`` still point at the original
    class; those are the one thing such a class cannot do here."""
    if isinstance(cls, type) and issubclass(cls, Layer):
        return cls
    return _rebased(cls)


@functools.lru_cache(maxsize=None)
def _rebased(cls):
    from .layer import Layer as FrameworkLayer
    foreign = set(FrameworkLayer.__mro__)
    real = sys.modules.get("caffe")
    real_base = getattr(real, "Layer", None)
    if isinstance(real_base, type) and not getattr(real, STANDIN_FLAG, False):
        foreign.update(real_base.__mro__)
    namespace = {}
    for klass in reversed(cls.__mro__):
        if klass in foreign or klass is object:
            continue
        namespace.update((k, v) for k, v in vars(klass).items()
                         if k not in ("__dict__", "__weakref__"))
    return type(cls.__name__, (Layer,), namespace)


def real_caffe_location():
    """Where the Caffe is that ``import caffe`` would give instead of the
    stand-in (a module already imported as ``caffe``, or one on sys.path):
    its file, or None where there is none."""
    module = sys.modules.get("caffe")
    if module is not None:
        if getattr(module, STANDIN_FLAG, False):
            return None
        return getattr(module, "__file__", None) or repr(module)
    try:
        spec = importlib.util.find_spec("caffe")
    except (ImportError, ValueError):
        return None
    # Namespace packages (a bare `caffe` folder) have no origin.
    if spec is None or spec.origin in (None, "namespace"):
        return None
    return spec.origin


def real_caffe_available():
    """Whether ``import caffe`` would give something other than the stand-in."""
    return real_caffe_location() is not None


def install():
    """The module ``import caffe`` gives Python layers: the real one where
    it is importable (imported only by the layer modules themselves; None
    is returned then), else the stand-in, registered in sys.modules."""
    if real_caffe_available():
        return sys.modules.get("caffe")
    module = _standin()
    sys.modules["caffe"] = module
    sys.modules["caffe.proto"] = module.proto
    sys.modules["caffe.proto.caffe_pb2"] = module.proto.caffe_pb2
    for name in list(SUBMODULES) + ["pycaffe"]:
        sys.modules[f"caffe.{name}"] = getattr(module, name)
    return module


def install_as_caffe():
    """The opt-in: make ``import caffe`` give sppcaffe (the stand-in) in
    this process, and return that module.  Raises RealCaffeInstalled where
    a real Caffe is importable: it is never shadowed."""
    where = real_caffe_location()
    if where is not None:
        raise RealCaffeInstalled(
            f"a real Caffe is importable as 'caffe' ({where}); sppcaffe does not shadow it. "
            "To run on sppcaffe, take that Caffe off sys.path / PYTHONPATH, or write "
            "'import sppcaffe as caffe'")
    return install()


@functools.lru_cache(maxsize=None)
def _standin():
    import sppcaffe
    from .proto import caffe_pb2

    module = types.ModuleType("caffe", "sppcaffe's stand-in for pycaffe (see "
                              "sppcaffe/pycaffe_compat.py); other names come from sppcaffe.")
    module.__path__ = []                     # a package: `caffe.proto.caffe_pb2` imports
    setattr(module, STANDIN_FLAG, True)
    module.Layer = Layer
    module.TRAIN, module.TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
    proto = types.ModuleType("caffe.proto")
    proto.__path__ = []
    proto.caffe_pb2 = caffe_pb2
    module.proto = proto
    for name, target in SUBMODULES.items():
        setattr(module, name, importlib.import_module(target))
    module.pycaffe = module           # pycaffe.py's names (Net, SGDSolver, ...) are the module's

    def __getattr__(name):
        try:
            return getattr(sppcaffe, name)
        except AttributeError:
            raise AttributeError(f"sppcaffe's stand-in module 'caffe' has no attribute "
                                 f"'{name}' (sppcaffe has none by that name)") from None

    module.__getattr__ = __getattr__
    return module


# ---------------------------------------------------------------------------
# pycaffe's module-level functions
# ---------------------------------------------------------------------------
def layer_type_list():
    """pycaffe's layer_type_list(): every registered layer type, sorted as
    Caffe's registry (a std::map keyed by the type name) lists them."""
    from .layer import LAYER_TYPES
    return sorted(LAYER_TYPES)


# glog's severities 0-3 (INFO, WARNING, ERROR, FATAL) as logging levels.
GLOG_LEVELS = (logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
_undo_console_log = None


def glog_level(severity):
    """The logging level of glog severity `severity` (an int or a string
    of one, as GLOG_minloglevel holds it); clamped to 0-3."""
    try:
        value = int(severity)
    except (TypeError, ValueError):
        raise ValueError(f"a glog severity is 0 (INFO), 1 (WARNING), 2 (ERROR) or 3 (FATAL), "
                         f"got {severity!r}") from None
    return GLOG_LEVELS[min(max(value, 0), 3)]


class GlogMinLevelFilter(logging.Filter):
    """Drops the records below GLOG_minloglevel, read as each is logged:
    pycaffe scripts set os.environ["GLOG_minloglevel"] before `import caffe`."""

    def filter(self, record):
        value = os.environ.get("GLOG_minloglevel")
        try:
            return value is None or record.levelno >= glog_level(value)
        except ValueError:
            return True


def _console_log(level, record_filter=None):
    """Framework log lines in Caffe's format on stderr from `level` up,
    replacing what an earlier call set."""
    global _undo_console_log
    from .cli.progress import configure_logging
    if _undo_console_log is not None:
        _undo_console_log()
    _undo_console_log = configure_logging(level=level, record_filter=record_filter)


def log_like_pycaffe():
    """What pycaffe shows before init_log: every log line on stderr, down
    to GLOG_minloglevel (glog logs to stderr until it is initialised)."""
    _console_log(logging.INFO, GlogMinLevelFilter())


def init_log(level=0, stderr=False):
    """pycaffe's init_log([level[, stderr]]): log lines from glog severity
    `level` up (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL) on stderr when
    `stderr` is true; otherwise only ERROR and FATAL reach stderr, as with
    glog, which writes the rest into log files under /tmp (sppcaffe writes
    no log files)."""
    threshold = glog_level(level)
    _console_log(threshold if stderr else max(threshold, logging.ERROR))


def log(message):
    """pycaffe's log(s): `message` as an INFO line of the framework's log."""
    logging.getLogger("sppcaffe").info("%s", message)
