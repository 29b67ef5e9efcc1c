"""Net prototxts written for Caffe forks, read into BVLC's schema.

Two conventions that BVLC Caffe's parser rejects are read here, each
translated into what BVLC's schema says the same way:

* The SPP-net release's V0 dialect (ShaoqingRen/SPP_net, ``model-defs/``):
  V0 ``layers { layer { ... } bottom: top: }`` blocks whose ``layer`` holds
  BVLC's per-type messages under the names ``conv_param``, ``pool_param``,
  ``lrn_param``, ``dropout_param``, ``concat_param`` and
  ``inner_product_param`` (BVLC's V0 layer has flat fields instead:
  ``kernelsize``, ``num_output``, ...), and the type string
  "inner_product" (BVLC's V0: "innerproduct").  BVLC's V0 -> V1 upgrade runs
  on the rest of each layer, then every such message moves unchanged into
  the V1 layer's ``convolution_param``, ``pooling_param``, ... .
* Fields that Caffe forks added and published prototxts carry, where a BVLC
  field says the same: ``PoolingParameter.ceil_mode`` (BVLC/caffe PR #3057,
  never merged; DenseNet-Caffe's nets use it) becomes ``round_mode``, with a
  one-line note naming the convention.

Any other unknown field stays protobuf's parse error naming the file, line
and field.

How: the text is parsed against a *reading schema*, BVLC's schema as
compiled in caffe_pb2 plus exactly these fields, built at import into a
private descriptor pool.  Its messages keep BVLC's names, so parse errors
read as they would without it.  Once the added fields are translated and
cleared, the message converts to caffe_pb2 through its serialized form
(every field left has BVLC's number).

Why not add the fields to protos/caffe.proto: they would then be valid
wherever a NetParameter goes (written files, Net, every layer reading
pooling_param), while they mean something only while reading.  Why not
rewrite the text into BVLC's V0 form before parsing: the release's
``lrn_param { norm_region: WITHIN_CHANNEL }`` has no V0 field to become, so
the messages have to reach the V1 layer, which only the parsed message
makes simple.
"""
import logging
import os

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ..proto import caffe_pb2 as pb
from .text import parse_text, read_text
from .upgrade import UpgradeError, _label, upgrade_v0_net, upgrade_v0_padding_layers

__all__ = ["parse_net_text", "read_net_text", "RELEASE_PARAMS", "RELEASE_TYPES"]

_log = logging.getLogger(__name__)

# The release's V0 layer messages: field -> (its BVLC message, the V1 field it
# moves to, the BVLC V0 layer types it belongs to).
RELEASE_PARAMS = {
    "conv_param": ("ConvolutionParameter", "convolution_param", ("conv",)),
    "pool_param": ("PoolingParameter", "pooling_param", ("pool",)),
    "lrn_param": ("LRNParameter", "lrn_param", ("lrn",)),
    "dropout_param": ("DropoutParameter", "dropout_param", ("dropout",)),
    "concat_param": ("ConcatParameter", "concat_param", ("concat",)),
    "inner_product_param": ("InnerProductParameter", "inner_product_param", ("innerproduct",)),
}
# The release's V0 type strings that BVLC spells otherwise.
RELEASE_TYPES = {"inner_product": "innerproduct"}
RELEASE = "the SPP-net release's V0 dialect (ShaoqingRen/SPP_net model-defs)"

CEIL_MODE = ("pooling_param.ceil_mode, a Caffe-fork field (BVLC/caffe PR #3057, never "
             "merged; used e.g. by DenseNet-Caffe)")


def _reading_net_class():
    file = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(file)
    messages = {message.name: message for message in file.message_type}
    kind = descriptor_pb2.FieldDescriptorProto

    def add(message, name, **type_fields):
        fields = messages[message].field
        # Any free number will do: the field is cleared before the message is serialized.
        fields.add(name=name, number=max(f.number for f in fields) + 1,
                   label=kind.LABEL_OPTIONAL, **type_fields)

    for name, (message, _, _) in RELEASE_PARAMS.items():
        add("V0LayerParameter", name, type=kind.TYPE_MESSAGE, type_name=f".caffe.{message}")
    add("PoolingParameter", "ceil_mode", type=kind.TYPE_BOOL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe.NetParameter"))


_ReadingNet = _reading_net_class()


def parse_net_text(text, source="<string>"):
    """Net prototxt `text` as a caffe_pb2.NetParameter, the conventions above
    translated.  A net in the release's dialect comes back as V1 (BVLC's
    V0 -> V1 step has run); every other deprecated form is left to
    upgrade.upgrade_net."""
    return _to_bvlc(parse_text(text, _ReadingNet(), source), source)


def read_net_text(path):
    """parse_net_text of the file at `path`."""
    path = os.fspath(path)
    return _to_bvlc(read_text(path, _ReadingNet()), path)


def _to_bvlc(net, source):
    try:
        _translate_ceil_mode(net, source)
        taken = _take_release_params(net) if _uses_release_dialect(net) else None
        bvlc = pb.NetParameter.FromString(net.SerializeToString())
        if taken is not None:
            _log.info("%s: reading %s", source, RELEASE)
            upgrade_v0_net(bvlc)
            for index, (layer, params) in enumerate(zip(bvlc.layers, taken)):
                _merge_release_params(layer, index, params)
    except UpgradeError as err:
        raise UpgradeError(f"{source}: {err}") from None
    return bvlc


# ---------------------------------------------------------------------------
# The SPP-net release
# ---------------------------------------------------------------------------

def _uses_release_dialect(net):
    return any(conn.layer.type in RELEASE_TYPES
               or any(conn.layer.HasField(field) for field in RELEASE_PARAMS)
               for conn in net.layers)


def _take_release_params(net):
    """Clear the release's messages from the V0 layers (in place) and return
    them, per layer, as {V1 field: (release field, serialized message)}."""
    # Folded first, so that layer i here is layer i of the V1 net.
    upgrade_v0_padding_layers(net)
    taken = []
    for index, conn in enumerate(net.layers):
        v0 = conn.layer
        v0_type = RELEASE_TYPES.get(v0.type, v0.type)
        params = {}
        for field, (_, v1_field, types) in RELEASE_PARAMS.items():
            if not v0.HasField(field):
                continue
            if v0_type not in types:
                raise UpgradeError(f"{_label(v0.name, index)}: '{field}' has no meaning for "
                                   f"layer type '{v0.type}'")
            params[v1_field] = (field, getattr(v0, field).SerializeToString())
            v0.ClearField(field)
        if conn.HasField("layer"):
            v0.type = v0_type
        taken.append(params)
    return taken


def _merge_release_params(layer, index, params):
    for v1_field, (field, data) in params.items():
        target = getattr(layer, v1_field)
        given = type(target).FromString(data)
        for descriptor, _ in given.ListFields():
            name = descriptor.name
            if (len(getattr(target, name)) if descriptor.is_repeated
                    else target.HasField(name)):
                raise UpgradeError(f"{_label(layer.name, index)}: '{field}.{name}' is also given "
                                   "by a V0 field of the layer (or a padding layer before it); "
                                   "give it once")
        target.MergeFrom(given)


# ---------------------------------------------------------------------------
# Fork fields
# ---------------------------------------------------------------------------

def _pooling_params(net):
    """(layer label, PoolingParameter) of every layer form that has one."""
    for index, layer in enumerate(net.layer):
        if layer.HasField("pooling_param"):
            yield _label(layer.name, index), layer.pooling_param
    for index, conn in enumerate(net.layers):
        if conn.HasField("pooling_param"):
            yield _label(conn.name, index), conn.pooling_param
        if conn.layer.HasField("pool_param"):
            yield _label(conn.layer.name, index), conn.layer.pool_param


def _translate_ceil_mode(net, source):
    translated = []
    for label, pooling in _pooling_params(net):
        if not pooling.HasField("ceil_mode"):
            continue
        if pooling.HasField("round_mode"):
            raise UpgradeError(f"{label}: both 'ceil_mode' ({CEIL_MODE}) and BVLC's "
                               "'round_mode' are set; keep round_mode")
        pooling.round_mode = pb.PoolingParameter.CEIL if pooling.ceil_mode else \
            pb.PoolingParameter.FLOOR
        pooling.ClearField("ceil_mode")
        translated.append(label)
    if translated:
        _log.warning("%s: read %s as round_mode (ceil_mode: true -> CEIL, false -> FLOOR) in %s",
                     source, CEIL_MODE, ", ".join(translated))
