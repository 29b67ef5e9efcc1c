"""pycaffe's NetSpec: write a net in Python and get its NetParameter.

    from sppcaffe import layers as L, params as P
    n = sppcaffe.NetSpec()
    n.data, n.label = L.Data(source="train_lmdb", batch_size=64, backend=P.Data.LMDB, ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20)
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    print(n.to_proto())

The rules are pycaffe's (python/caffe/net_spec.py), so that a script
written for ``caffe.NetSpec`` prints the same prototxt:

- ``L.<Type>(*bottoms, **fields)`` makes a layer of type ``<Type>``; it
  returns its top, a tuple of tops when ``ntop`` > 1, or the layer itself
  when ``ntop=0``.  ``in_place=True`` makes the tops the bottoms.
- A keyword goes to the layer's own ``<type>_param`` message when that
  message has the field (``kernel_size`` -> ``convolution_param``), else to
  LayerParameter itself (``loss_weight``, ``include``, ``param``); keywords
  ending in ``param`` always go to LayerParameter.  Dicts fill messages,
  lists fill repeated fields (a single value is a one-element list).
- ``NetSpec.to_proto()`` emits every layer needed by the assigned tops, in
  assignment order with each layer's inputs before it.  A top (and a
  layer) is named by the attribute it was assigned to; a layer is named
  after its first top; anything unnamed gets ``<Type><count>``
  (``Convolution1``), counted per type in the order names are handed out.
- ``P.<Type>.<VALUE>`` is an enum value of ``<Type>Parameter``
  (``P.Pooling.MAX``, ``P.Data.LMDB``).

`sppcaffe.layers` is both the package of layer implementations and this
``L``: its attributes that are not modules (``sppcaffe.layers.Convolution``)
come from `layers` below.
"""
from collections import Counter, OrderedDict

from .proto import caffe_pb2


class NetSpecError(ValueError):
    """A layer whose keywords do not fit Caffe's schema; the message names
    the layer, its type and the field."""


def _param_field_names():
    """Layer type -> its LayerParameter field, from the schema: the field
    `convolution_param` holds a ConvolutionParameter, so type "Convolution"
    keeps its keywords there (pycaffe's param_name_dict)."""
    names = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.message_type is not None:
            type_name = field.message_type.name
            if type_name.endswith("Parameter"):
                names[type_name[:-len("Parameter")]] = field.name
    return names


_PARAM_FIELDS = _param_field_names()


def _has_field(message, name):
    return name in message.DESCRIPTOR.fields_by_name


def assign_proto(message, name, value):
    """Set field `name` of `message` from a Python value: a dict fills a
    message, a list a repeated field (a lone value is a one-element list,
    a list of dicts adds one message per dict)."""
    if not _has_field(message, name):
        raise AttributeError(f"{message.DESCRIPTOR.name} has no field '{name}'")
    field = getattr(message, name)
    repeated = hasattr(field, "extend")
    if repeated and not isinstance(value, list):
        value = [value]
    if isinstance(value, list):
        if value and isinstance(value[0], dict):
            for item in value:
                entry = field.add()
                for key, sub in item.items():
                    assign_proto(entry, key, sub)
        else:
            field.extend(value)
    elif isinstance(value, dict):
        for key, sub in value.items():
            assign_proto(field, key, sub)
    else:
        setattr(message, name, value)


class Top:
    """One output blob of a layer (the `n`-th top of Function `fn`)."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def to_proto(self):
        """A NetParameter with every layer needed to compute this top."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)

    def _update(self, params):
        self.fn._update(params)


class Function:
    """A layer: its type, its input Tops and its keyword fields."""

    def __init__(self, type_name, inputs, params):
        for index, bottom in enumerate(inputs):
            if not isinstance(bottom, Top):
                raise TypeError(f"{type_name} input {index} is not a Top "
                                f"(type is {type(bottom).__name__})")
        self.type_name = type_name
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _update(self, params):
        self.params.update(params)

    def _auto_name(self, autonames):
        autonames[self.type_name] += 1
        return f"{self.type_name}{autonames[self.type_name]}"

    def _top_name(self, top, names, autonames):
        if top not in names:
            names[top] = self._auto_name(autonames)
        return names[top]

    def _layer_name(self, names, autonames):
        if self not in names:
            names[self] = (self._top_name(self.tops[0], names, autonames) if self.ntop > 0
                           else self._auto_name(autonames))
        return names[self]

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottoms = []
        for bottom in self.inputs:
            bottom._to_proto(layers, names, autonames)
            bottoms.append(layers[bottom.fn].top[bottom.n])
        layer = caffe_pb2.LayerParameter(type=self.type_name, bottom=bottoms)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            layer.top.extend(self._top_name(top, names, autonames) for top in self.tops)
        layer.name = self._layer_name(names, autonames)
        for key, value in self.params.items():
            self._assign(layer, key, value)
        layers[self] = layer

    def _assign(self, layer, key, value):
        try:
            param_field = _PARAM_FIELDS.get(self.type_name)
            if (not key.endswith("param") and param_field is not None
                    and _has_field(getattr(layer, param_field), key)):
                assign_proto(getattr(layer, param_field), key, value)
            else:
                assign_proto(layer, key, value)
        except (AttributeError, TypeError, ValueError) as err:
            where = "LayerParameter" if param_field is None else f"LayerParameter or {param_field}"
            raise NetSpecError(f"layer '{layer.name}' ({self.type_name}): cannot set "
                               f"{key}={value!r} in {where}: {err}") from None


def to_proto(*tops):
    """A NetParameter with every layer needed to compute `tops` (names of
    tops and layers are generated: ``<Type><count>``)."""
    layers = OrderedDict()
    autonames = Counter()
    for top in tops:
        top._to_proto(layers, {}, autonames)
    return caffe_pb2.NetParameter(layer=list(layers.values()))


class NetSpec:
    """Named tops, assigned as attributes (``n.conv1 = L.Convolution(...)``)
    or items; `to_proto` emits the layers that make them, named after them."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top '{name}'") from None

    def __setitem__(self, name, value):
        self.tops[name] = value

    def __getitem__(self, name):
        return self.tops[name]

    def __delitem__(self, name):
        del self.tops[name]

    def keys(self):
        return list(self.tops)

    def vals(self):
        return list(self.tops.values())

    def update(self, name, params):
        """Add or replace keyword fields of the layer that makes top `name`."""
        self.tops[name]._update(params)

    def to_proto(self):
        names = {top: name for name, top in self.tops.items()}
        autonames = Counter()
        layers = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        return caffe_pb2.NetParameter(layer=list(layers.values()))


class Layers:
    """``L``: ``L.Convolution(bottom, kernel_size=3)`` specifies a layer."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def layer_fn(*bottoms, **params):
            fn = Function(type_name, bottoms, params)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops
        layer_fn.__name__ = type_name
        return layer_fn


class _EnumValues:
    """The enum values of one ``<Type>Parameter`` message."""

    def __init__(self, type_name):
        self._message = getattr(caffe_pb2, type_name + "Parameter", None)
        self._type_name = type_name

    def __getattr__(self, value_name):
        if self._message is None:
            raise AttributeError(f"Caffe's schema has no message {self._type_name}Parameter")
        try:
            return getattr(self._message, value_name)
        except AttributeError:
            raise AttributeError(
                f"{self._type_name}Parameter has no value '{value_name}'") from None


class Parameters:
    """``P``: ``P.Pooling.MAX`` is PoolingParameter's MAX."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)
        return _EnumValues(type_name)


layers = Layers()
params = Parameters()
