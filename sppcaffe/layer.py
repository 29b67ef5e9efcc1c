"""Layer base class and the registry keyed by the prototxt `type` string.

Life cycle (as Caffe's): ``setup`` once (arity check, ``layer_setup``,
``reshape``), then ``reshape`` whenever input shapes may have changed,
``forward`` and ``backward``.

Conventions every layer follows:
- forward writes into ``top[i].data`` and backward into ``bottom[i].diff``
  *in place* (``arr[...] = ...`` or ``out=``); arrays are never rebound,
  because Flatten/Reshape tops are views of their bottoms.
- backward *overwrites* bottom diffs (the net inserts Split layers where a
  blob has several readers) and *accumulates* into parameter diffs (the
  solver clears them), exactly as Caffe does.
- a layer may run in place (top is bottom); its backward must then be
  correct when ``top[0].diff is bottom[0].diff``.
- device code (``forward_gpu``/``backward_gpu``) follows the same rules on
  ``blob.gpu_data`` & co., launching kernels from backends/gpu/kernels.
"""
from .blob import Blob

LAYER_TYPES = {}


def register(*type_names):
    """Class decorator: make the layer available under prototxt type names."""
    def deco(cls):
        for name in type_names:
            if name in LAYER_TYPES:
                raise ValueError(f"layer type '{name}' registered twice")
            LAYER_TYPES[name] = cls
        cls.type = type_names[0]
        return cls
    return deco


class LayerError(ValueError):
    """A problem with one layer's definition or inputs; the message names it."""


def create_layer(param, phase):
    try:
        cls = LAYER_TYPES[param.type]
    except KeyError:
        known = ", ".join(sorted(LAYER_TYPES))
        raise LayerError(f"layer '{param.name}': unknown layer type '{param.type}' "
                         f"(known types: {known})") from None
    return cls(param, phase)


def canonical_axis(layer, axis, shape):
    """Caffe's Blob::CanonicalAxisIndex: a negative axis counts from the
    end; anything outside [-ndim, ndim) is an error naming the layer."""
    ndim = len(shape)
    if not -ndim <= axis < ndim:
        raise layer.error(f"axis {axis} out of range for {ndim}-D blob with shape {tuple(shape)}")
    return axis + ndim if axis < 0 else axis


class Layer:
    type = None
    # Arity: None means "no constraint".
    exact_num_bottom = None
    min_num_bottom = None
    max_num_bottom = None
    exact_num_top = None
    min_num_top = None
    max_num_top = None
    # Loss layers get loss_weight 1 on their first top by default.
    is_loss = False
    # Layers that may legally have no bottom but are not data sources
    # still need the net to know whether they produce data from nowhere.
    is_data = False
    # Set by the net when it never runs this layer's backward: forward may
    # then skip keeping what only backward reads (a backward called anyway
    # must recompute it, or raise).
    forward_only = False

    def __init__(self, param, phase):
        self.param = param
        self.name = param.name
        self.phase = phase
        self.blobs = []            # learnable parameters, as Caffe's blobs_
        self.param_propagate_down = []

    # ---- life cycle -------------------------------------------------
    def setup(self, bottom, top):
        self.check_arity(bottom, top)
        self.layer_setup(bottom, top)
        self.reshape(bottom, top)

    def layer_setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        raise NotImplementedError

    def forward(self, bottom, top):
        raise NotImplementedError

    def backward(self, top, propagate_down, bottom):
        # Layers without a gradient (data, accuracy, ...) simply ignore it.
        pass

    # In GPU mode the net calls these.  A layer without device code runs
    # its host code (as Caffe's default Forward_gpu does); the blobs copy
    # whatever it reads or writes between host and device.
    def forward_gpu(self, bottom, top):
        self.forward(bottom, top)

    def backward_gpu(self, top, propagate_down, bottom):
        self.backward(top, propagate_down, bottom)

    # ---- helpers -----------------------------------------------------
    def error(self, message):
        return LayerError(f"layer '{self.name}' ({self.type}): {message}")

    def check_arity(self, bottom, top):
        def check(what, n, exact, lo, hi):
            if exact is not None and n != exact:
                raise self.error(f"takes exactly {exact} {what} blob(s), got {n}")
            if lo is not None and n < lo:
                raise self.error(f"takes at least {lo} {what} blob(s), got {n}")
            if hi is not None and n > hi:
                raise self.error(f"takes at most {hi} {what} blob(s), got {n}")
        check("bottom", len(bottom), self.exact_num_bottom, self.min_num_bottom, self.max_num_bottom)
        check("top", len(top), self.exact_num_top, self.min_num_top, self.max_num_top)

    def new_param_blob(self, shape, index):
        blob = Blob(shape, name=f"{self.name}/{index}")
        return blob

    def setup_param_blobs(self, shapes, fillers):
        """Caffe's LayerSetUp pattern: blobs that already exist (given before
        setup) must have `shapes`; otherwise create them, each filled by its
        FillerParameter."""
        shapes = [tuple(s) for s in shapes]
        if self.blobs:
            if [b.shape for b in self.blobs] != shapes:
                raise self.error(f"parameter shapes {[b.shape for b in self.blobs]} "
                                 f"do not match the expected {shapes}")
            return
        from .fillers import fill       # fillers reach the GPU backend: imported late
        for i, (shape, filler) in enumerate(zip(shapes, fillers)):
            blob = self.new_param_blob(shape, i)
            fill(blob, filler)
            self.blobs.append(blob)

    def allow_force_backward(self, bottom_index):
        return True

    def __repr__(self):
        return f"<{type(self).__name__} '{self.name}'>"
