"""Upgrade deprecated Caffe net and solver definitions to the current schema.

A port of the semantics of BVLC Caffe's ``src/caffe/util/upgrade_proto.cpp``
(master): the same checks, the same steps in the same order, the same output
messages.  Where Caffe logs an error and carries on with a partly converted
net (or aborts), we raise :class:`UpgradeError` (a ``ValueError``) naming the
file, the layer and the field instead: a silently half-upgraded net would
only fail later, further from the cause.

``upgrade_net`` runs, as Caffe's ``UpgradeNetAsNeeded`` does, each step whose
``net_needs_*`` predicate holds, in this order:

1. V0 -> V1: ``layers { layer { type: "conv" ... } }`` (V0 padding layers are
   folded into the pad of the conv/pool layer that reads them first);
2. data transformation: legacy ``scale``/``mean_file``/``crop_size``/
   ``mirror`` of V1 data layers move into ``transform_param``;
3. V1 -> V2: ``layers`` (enum types) -> ``layer`` (string types), with
   ``blobs_lr``/``weight_decay``/``param``/``blob_share_mode`` -> ``param {}``;
4. net inputs: ``input`` + ``input_shape``/``input_dim`` -> an ``Input`` layer;
5. BatchNorm: old-style three ``param`` specs get lr_mult = decay_mult = 0.

The ``upgrade_*`` step functions work in place on a NetParameter; the two
entry points ``upgrade_net`` and ``upgrade_solver`` return upgraded copies.
"""
import logging

from google.protobuf.message import Message

from ..proto import caffe_pb2 as pb

__all__ = [
    "UpgradeError", "net_needs_upgrade", "upgrade_net", "solver_needs_upgrade", "upgrade_solver",
    "net_needs_v0_to_v1_upgrade", "upgrade_v0_padding_layers", "upgrade_v0_net",
    "net_needs_data_upgrade", "upgrade_net_data_transformation",
    "net_needs_v1_to_v2_upgrade", "upgrade_v1_net",
    "net_needs_input_upgrade", "upgrade_net_input",
    "net_needs_batch_norm_upgrade", "upgrade_net_batch_norm",
]

_log = logging.getLogger(__name__)

_V1 = pb.V1LayerParameter


class UpgradeError(ValueError):
    """A deprecated definition that cannot be converted faithfully."""


def _copy(msg):
    new = type(msg)()
    new.CopyFrom(msg)
    return new


def _label(name, index):
    return f"layer '{name}'" if name else f"layer #{index}"


def _store(msg, field, value):
    """Set ``msg.field`` to ``value`` whatever the field's kind; repeated
    fields (e.g. ConvolutionParameter.pad) receive one more entry."""
    current = getattr(msg, field)
    if isinstance(current, Message):
        current.CopyFrom(value)
    elif hasattr(current, "append"):
        current.append(value)
    else:
        setattr(msg, field, value)


# ---------------------------------------------------------------------------
# V0 -> V1
# ---------------------------------------------------------------------------

_V0_TO_V1_TYPE = {v0: _V1.LayerType.Value(v1) for v0, v1 in {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION",
    "data": "DATA", "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA", "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS", "pool": "POOLING",
    "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS", "split": "SPLIT", "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}.items()}

# Where each flat V0 field lands in a V1 layer: {V0 type: V1 sub-message}
# ("*": any type; "": the V1 layer itself) and the field inside it.  A V0
# field set on a layer type missing from its row has no V1 meaning.
_ANY_TRANSFORM = {"*": "transform_param"}
_CONV_IP = {"conv": "convolution_param", "innerproduct": "inner_product_param"}
_CONV_POOL = {"conv": "convolution_param", "pool": "pooling_param"}
_LRN = {"lrn": "lrn_param"}
_IMAGES = {"images": "image_data_param"}
_WINDOW = {"window_data": "window_data_param"}
_BATCHED = {"data": "data_param", "hdf5_data": "hdf5_data_param",
            "images": "image_data_param", "window_data": "window_data_param"}

_V0_FIELDS = (
    ("num_output", _CONV_IP, "num_output"),
    ("biasterm", _CONV_IP, "bias_term"),
    ("weight_filler", _CONV_IP, "weight_filler"),
    ("bias_filler", _CONV_IP, "bias_filler"),
    ("pad", _CONV_POOL, "pad"),
    ("kernelsize", _CONV_POOL, "kernel_size"),
    ("group", {"conv": "convolution_param"}, "group"),
    ("stride", _CONV_POOL, "stride"),
    ("pool", {"pool": "pooling_param"}, "pool"),
    ("dropout_ratio", {"dropout": "dropout_param"}, "dropout_ratio"),
    ("local_size", _LRN, "local_size"),
    ("alpha", _LRN, "alpha"),
    ("beta", _LRN, "beta"),
    ("k", _LRN, "k"),
    ("source", {**_BATCHED, "infogain_loss": "infogain_loss_param"}, "source"),
    ("scale", _ANY_TRANSFORM, "scale"),
    ("meanfile", _ANY_TRANSFORM, "mean_file"),
    ("batchsize", _BATCHED, "batch_size"),
    ("cropsize", _ANY_TRANSFORM, "crop_size"),
    ("mirror", _ANY_TRANSFORM, "mirror"),
    ("rand_skip", {"data": "data_param", "images": "image_data_param"}, "rand_skip"),
    ("shuffle_images", _IMAGES, "shuffle"),
    ("new_height", _IMAGES, "new_height"),
    ("new_width", _IMAGES, "new_width"),
    ("concat_dim", {"concat": "concat_param"}, "concat_dim"),
    ("det_fg_threshold", _WINDOW, "fg_threshold"),
    ("det_bg_threshold", _WINDOW, "bg_threshold"),
    ("det_fg_fraction", _WINDOW, "fg_fraction"),
    ("det_context_pad", _WINDOW, "context_pad"),
    ("det_crop_mode", _WINDOW, "crop_mode"),
    ("hdf5_output_param", {"hdf5_output": ""}, "hdf5_output_param"),
)

# V0 enums are converted by value name, as Caffe's switch does.
_V0_VALUE_CONVERTERS = {
    "pool": lambda v: pb.PoolingParameter.PoolMethod.Value(pb.V0LayerParameter.PoolMethod.Name(v)),
}


def net_needs_v0_to_v1_upgrade(net):
    """True iff some V1 ``layers`` entry still nests a V0 ``layer``."""
    return any(conn.HasField("layer") for conn in net.layers)


def upgrade_v0_padding_layers(net):
    """Drop V0 "padding" layers, moving their pad into the conv/pool layers
    that read their output (in place)."""
    producer = {blob: None for blob in net.input}  # blob -> last layer writing it
    kept = []
    for i, conn in enumerate(net.layers):
        new = _copy(conn)
        for j, blob in enumerate(conn.bottom):
            if blob not in producer:
                raise UpgradeError(f"{_label(conn.layer.name, i)}: bottom '{blob}' is neither "
                                   "a net input nor the top of an earlier layer")
            src = producer[blob]
            if src is None or net.layers[src].layer.type != "padding":
                continue
            _check_padding_consumer(conn, i, net.layers[src], src)
            new.layer.pad = net.layers[src].layer.pad
            new.bottom[j] = net.layers[src].bottom[0]
        if conn.layer.type != "padding":
            kept.append(new)
        for blob in conn.top:
            producer[blob] = i
    del net.layers[:]
    net.layers.extend(kept)


def _check_padding_consumer(conn, index, pad_conn, pad_index):
    # Other wirings had undefined behaviour in V0 Caffe, which CHECK-fails on them.
    label, pad_label = _label(conn.layer.name, index), _label(pad_conn.layer.name, pad_index)
    if conn.layer.type not in ("conv", "pool"):
        raise UpgradeError(f"{label}: reads padding {pad_label} but has type "
                           f"'{conn.layer.type}'; only 'conv' and 'pool' can absorb its 'pad'")
    if len(conn.bottom) != 1:
        raise UpgradeError(f"{label}: reads padding {pad_label} but has "
                           f"{len(conn.bottom)} bottoms, not 1")
    if len(pad_conn.bottom) != 1 or len(pad_conn.top) != 1:
        raise UpgradeError(f"padding {pad_label}: needs exactly one bottom and one top "
                           f"(has {len(pad_conn.bottom)} and {len(pad_conn.top)})")


def _v0_layer_to_v1(conn, index):
    out = _V1()
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    if not conn.HasField("layer"):
        return out
    v0 = conn.layer
    label = _label(v0.name, index)
    if v0.HasField("name"):
        out.name = v0.name
    if v0.HasField("type"):
        if v0.type not in _V0_TO_V1_TYPE:
            raise UpgradeError(f"{label}: unknown V0 layer type '{v0.type}' (field 'type')")
        out.type = _V0_TO_V1_TYPE[v0.type]
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for field, owners, target in _V0_FIELDS:
        if not v0.HasField(field):
            continue
        owner = owners.get(v0.type, owners.get("*"))
        if owner is None:
            raise UpgradeError(f"{label}: V0 field '{field}' has no meaning for layer "
                               f"type '{v0.type}'")
        value = _V0_VALUE_CONVERTERS.get(field, lambda v: v)(getattr(v0, field))
        _store(getattr(out, owner) if owner else out, target, value)
    return out


def upgrade_v0_net(net):
    """V0 -> V1 (in place).  As Caffe, only name, layers, input, input_dim and
    force_backward survive; other net-level fields did not exist in V0."""
    upgrade_v0_padding_layers(net)
    layers = [_v0_layer_to_v1(conn, i) for i, conn in enumerate(net.layers)]
    kept = pb.NetParameter(input=net.input, input_dim=net.input_dim, layers=layers)
    for field in ("name", "force_backward"):
        if net.HasField(field):
            setattr(kept, field, getattr(net, field))
    net.CopyFrom(kept)


# ---------------------------------------------------------------------------
# Legacy data transformation fields (V1 data layers)
# ---------------------------------------------------------------------------

_TRANSFORM_OWNERS = {_V1.DATA: "data_param", _V1.IMAGE_DATA: "image_data_param",
                     _V1.WINDOW_DATA: "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def net_needs_data_upgrade(net):
    """True iff a V1 data layer sets transformation fields in its own param."""
    return any(getattr(layer, _TRANSFORM_OWNERS[layer.type]).HasField(field)
               for layer in net.layers if layer.type in _TRANSFORM_OWNERS
               for field in _TRANSFORM_FIELDS)


def upgrade_net_data_transformation(net):
    """Move legacy scale/mean_file/crop_size/mirror into transform_param (in place)."""
    for layer in net.layers:
        if layer.type not in _TRANSFORM_OWNERS:
            continue
        owner = getattr(layer, _TRANSFORM_OWNERS[layer.type])
        # Caffe touches both messages of every such layer, leaving them present
        # even when empty; kept so our output equals upgrade_net_proto_text's.
        owner.SetInParent()
        layer.transform_param.SetInParent()
        for field in _TRANSFORM_FIELDS:
            if owner.HasField(field):
                setattr(layer.transform_param, field, getattr(owner, field))
                owner.ClearField(field)


# ---------------------------------------------------------------------------
# V1 -> V2
# ---------------------------------------------------------------------------

_V1_TO_V2_TYPE = {_V1.LayerType.Value(v1): v2 for v1, v2 in {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax",
    "BNLL": "BNLL", "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution", "DECONVOLUTION": "Deconvolution", "DATA": "Data",
    "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split",
    "SLICE": "Slice", "TANH": "TanH", "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}.items()}

# Per-blob V1 lists -> the matching ParamSpec field of param[i].
_PARAM_SPEC_FIELDS = (
    ("param", "name", lambda v: v),
    ("blob_share_mode", "share_mode",
     lambda v: pb.ParamSpec.DimCheckMode.Value(_V1.DimCheckMode.Name(v))),
    ("blobs_lr", "lr_mult", lambda v: v),
    ("weight_decay", "decay_mult", lambda v: v),
)

# Every type-specific V1 parameter message (all named *_param, transform_param
# and loss_param included) exists unchanged in LayerParameter and is copied.
_V1_LAYER_PARAMS = tuple(f.name for f in _V1.DESCRIPTOR.fields if f.name.endswith("_param"))


def net_needs_v1_to_v2_upgrade(net):
    return len(net.layers) > 0


def _fill_v2_layer(out, v1, index):
    label = _label(v1.name, index)
    if v1.HasField("layer"):
        raise UpgradeError(f"{label}: still holds a V0 definition (field 'layer')")
    for field in ("bottom", "top", "include", "exclude", "blobs", "loss_weight"):
        getattr(out, field).extend(getattr(v1, field))
    if v1.HasField("name"):
        out.name = v1.name
    if v1.HasField("type"):
        if v1.type not in _V1_TO_V2_TYPE:
            raise UpgradeError(f"{label}: unknown V1 layer type {v1.type} (field 'type')")
        out.type = _V1_TO_V2_TYPE[v1.type]
    for v1_field, spec_field, convert in _PARAM_SPEC_FIELDS:
        for i, value in enumerate(getattr(v1, v1_field)):
            while len(out.param) <= i:
                out.param.add()
            setattr(out.param[i], spec_field, convert(value))
    for field in _V1_LAYER_PARAMS:
        if v1.HasField(field):
            getattr(out, field).CopyFrom(getattr(v1, field))


def upgrade_v1_net(net):
    """V1 ``layers`` -> V2 ``layer`` (in place)."""
    if len(net.layer) > 0:
        # Caffe would silently drop these 'layer' entries.
        raise UpgradeError(f"net mixes {len(net.layer)} current 'layer' entries with "
                           f"deprecated 'layers' entries; use only one of the two fields")
    # Built in place: stored weights (.caffemodel) can be large, copy them once.
    for i, v1 in enumerate(net.layers):
        _fill_v2_layer(net.layer.add(), v1, i)
    del net.layers[:]


# ---------------------------------------------------------------------------
# Net inputs, BatchNorm
# ---------------------------------------------------------------------------

def net_needs_input_upgrade(net):
    return len(net.input) > 0


def upgrade_net_input(net):
    """Turn ``input`` + ``input_shape``/``input_dim`` into one leading Input
    layer named "input" (in place).  Inputs without any shape, as stored in
    old .caffemodel files, are simply dropped."""
    if net.input_shape or net.input_dim:
        layer = pb.LayerParameter(name="input", type="Input", top=net.input)
        layer.input_param.SetInParent()
        for i, blob in enumerate(net.input):
            layer.input_param.shape.add().CopyFrom(_input_shape(net, i, blob))
        layers = [layer, *net.layer]
        del net.layer[:]
        net.layer.extend(layers)
    for field in ("input", "input_shape", "input_dim"):
        net.ClearField(field)


def _input_shape(net, i, blob):
    if net.input_shape:
        if i >= len(net.input_shape):
            raise UpgradeError(f"input '{blob}': no 'input_shape' entry for it "
                               f"({len(net.input)} inputs, {len(net.input_shape)} shapes)")
        return net.input_shape[i]
    dims = net.input_dim[4 * i:4 * i + 4]
    if len(dims) < 4:
        raise UpgradeError(f"input '{blob}': 'input_dim' needs 4 values per input "
                           f"({len(net.input)} inputs, {len(net.input_dim)} values)")
    return pb.BlobShape(dim=dims)


def _is_old_batch_norm(layer):
    # The first BatchNorm definition asked users for three param specs (mean,
    # variance, bias correction); the layer now forces them unlearnable itself.
    return layer.type == "BatchNorm" and len(layer.param) == 3


def net_needs_batch_norm_upgrade(net):
    return any(_is_old_batch_norm(layer) for layer in net.layer)


def upgrade_net_batch_norm(net):
    """Zero lr_mult and decay_mult of old-style BatchNorm param specs (in
    place), keeping their names so that statistics can still be shared."""
    for layer in net.layer:
        if _is_old_batch_norm(layer):
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------

_NET_STEPS = (
    (net_needs_v0_to_v1_upgrade, upgrade_v0_net, "V0LayerParameter layers"),
    (net_needs_data_upgrade, upgrade_net_data_transformation, "data transformation fields"),
    (net_needs_v1_to_v2_upgrade, upgrade_v1_net, "V1LayerParameter layers"),
    (net_needs_input_upgrade, upgrade_net_input, "input fields"),
    (net_needs_batch_norm_upgrade, upgrade_net_batch_norm, "BatchNorm param specs"),
)


def net_needs_upgrade(net_param):
    """True iff ``upgrade_net`` would change ``net_param``."""
    return any(needs(net_param) for needs, _, _ in _NET_STEPS)


def upgrade_net(net_param, source="<string>"):
    """An upgraded copy of a NetParameter (``source`` names it in messages)."""
    net = _copy(net_param)
    for needs, upgrade, what in _NET_STEPS:
        if needs(net):
            _log.info("%s: upgrading deprecated %s", source, what)
            try:
                upgrade(net)
            except UpgradeError as err:
                raise UpgradeError(f"{source}: {err}") from None
    return net


_SOLVER_TYPES = {
    pb.SolverParameter.SGD: "SGD", pb.SolverParameter.NESTEROV: "Nesterov",
    pb.SolverParameter.ADAGRAD: "AdaGrad", pb.SolverParameter.RMSPROP: "RMSProp",
    pb.SolverParameter.ADADELTA: "AdaDelta", pb.SolverParameter.ADAM: "Adam",
}


def solver_needs_upgrade(solver_param):
    """True iff the deprecated ``solver_type`` enum is set."""
    return solver_param.HasField("solver_type")


def upgrade_solver(solver_param, source="<string>"):
    """An upgraded copy of a SolverParameter: ``solver_type`` -> ``type``."""
    solver = _copy(solver_param)
    if not solver_needs_upgrade(solver):
        return solver
    old = pb.SolverParameter.SolverType.Name(solver.solver_type)
    if solver.HasField("type"):
        raise UpgradeError(f"{source}: both the deprecated 'solver_type' ({old}) and 'type' "
                           f"('{solver.type}') are set; keep only 'type'")
    _log.info("%s: upgrading deprecated solver_type %s", source, old)
    solver.type = _SOLVER_TYPES[solver.solver_type]
    solver.ClearField("solver_type")
    return solver
