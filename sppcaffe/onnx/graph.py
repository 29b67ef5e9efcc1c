"""Writing an ONNX graph: nodes, constants, unique names, and the operator
forms that changed between opsets (reductions take their axes as an input
from opset 18 on, Shape its start/end from 15).

Values are named by strings; a `Graph` appends nodes and returns the names
of their outputs.  Constants are initializers of the main graph, shared
by every subgraph (ONNX lets a Loop body read outer-scope values), and
small ones are made once per value.
"""
import numpy as np
from onnx import AttributeProto, TensorProto, helper

INT64_MAX = np.iinfo(np.int64).max
# Constants at most this size are made once per distinct value.
_SHARED_CONSTANT_BYTES = 1024


class Names:
    """One namespace for every value and node of a model (subgraphs included)."""

    def __init__(self):
        self._used = set()

    def reserve(self, name):
        self._used.add(name)

    def taken(self, name):
        return name in self._used

    def fresh(self, hint):
        """`hint`, or `hint_1`, `hint_2`, ... if that is taken; reserved."""
        name, k = hint, 0
        while name in self._used:
            k += 1
            name = f"{hint}_{k}"
        self._used.add(name)
        return name


class Graph:
    """Nodes being written, in order.  `scope` (the layer being converted)
    prefixes the names made here, so a node says where it comes from."""

    def __init__(self, opset, names=None, parent=None):
        self.opset = opset
        self.names = names if names is not None else Names()
        self.parent = parent
        self.nodes = []
        self.scope = parent.scope if parent else ""
        self.initializers = []              # main graph only: (name, array)
        self.initializer_bytes = 0
        self._shared = {}                   # small constant key -> name

    @property
    def root(self):
        return self if self.parent is None else self.parent.root

    def fresh(self, hint):
        return self.names.fresh(f"{self.scope}/{hint}" if self.scope else hint)

    def node(self, op, inputs, outputs=1, **attrs):
        """Append an `op` node; `outputs` is a count (names are made) or a list
        of names.  Returns the output name, or the list of them."""
        outs = [self.fresh(op) for _ in range(outputs)] if isinstance(outputs, int) \
            else list(outputs)
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.fresh(op + "_node"),
                                           **attrs))
        return outs[0] if len(outs) == 1 else outs

    # ---- constants -------------------------------------------------------
    def initializer(self, array, hint):
        """A main-graph initializer holding `array` (its dtype kept)."""
        root = self.root
        array = np.asarray(array)
        key = None
        if array.nbytes <= _SHARED_CONSTANT_BYTES:
            key = (array.dtype.str, array.shape, array.tobytes())
            if key in root._shared:
                return root._shared[key]
        name = self.fresh(hint)
        root.initializers.append((name, array))
        root.initializer_bytes += array.nbytes
        if key is not None:
            root._shared[key] = name
        return name

    def floats(self, values, hint="const"):
        return self.initializer(np.asarray(values, np.float32), hint)

    def ints(self, values, hint="ints"):
        """A 1-D int64 constant."""
        return self.initializer(np.asarray(values, np.int64).reshape(-1), hint)

    def scalar_int(self, value, hint="int"):
        return self.initializer(np.asarray(value, np.int64), hint)

    def vector(self, parts, hint="dims"):
        """A 1-D int64 tensor from parts that are ints or 1-D int64 tensors
        (names): a constant when every part is an int."""
        if all(isinstance(p, (int, np.integer)) for p in parts):
            return self.ints([int(p) for p in parts], hint)
        pieces, run = [], []
        for p in parts:
            if isinstance(p, (int, np.integer)):
                run.append(int(p))
                continue
            if run:
                pieces.append(self.ints(run, hint))
                run = []
            pieces.append(p)
        if run:
            pieces.append(self.ints(run, hint))
        return pieces[0] if len(pieces) == 1 else self.node("Concat", pieces, axis=0)

    # ---- operator forms --------------------------------------------------
    def reduce(self, op, x, axes, keepdims=True):
        """Reduce* over `axes` (ints)."""
        keep = int(bool(keepdims))
        if op == "ReduceSum" or self.opset >= 18:
            return self.node(op, [x, self.ints(axes, "axes")], keepdims=keep)
        return self.node(op, [x], axes=list(axes), keepdims=keep)

    def slice(self, x, starts, ends, axes, steps=None):
        """Slice with starts/ends given as int lists or 1-D int64 tensors."""
        def tensor(v, hint):
            return v if isinstance(v, str) else self.ints(v, hint)
        inputs = [x, tensor(starts, "starts"), tensor(ends, "ends"), self.ints(axes, "axes")]
        if steps is not None:
            inputs.append(self.ints(steps, "steps"))
        return self.node("Slice", inputs)

    def shape(self, x, start=None, end=None):
        """The 1-D int64 shape of `x`, or its dims [start, end)."""
        if start is None and end is None:
            return self.node("Shape", [x])
        if self.opset >= 15:
            attrs = {"start": start or 0}
            if end is not None:
                attrs["end"] = end
            return self.node("Shape", [x], **attrs)
        full = self.node("Shape", [x])
        return self.slice(full, [start or 0], [INT64_MAX if end is None else end], [0])

    def unsqueeze(self, x, axes):
        return self.node("Unsqueeze", [x, self.ints(axes, "axes")])

    def squeeze(self, x, axes):
        return self.node("Squeeze", [x, self.ints(axes, "axes")])

    def reshape(self, x, dims):
        """Reshape to `dims`: ints (0 copies the input's dim, -1 is inferred,
        as ONNX's Reshape) or 1-D tensors."""
        return self.node("Reshape", [x, self.vector(dims, "shape")])

    def cast(self, x, to):
        return self.node("Cast", [x], to=to)

    def to_float(self, x):
        return self.cast(x, TensorProto.FLOAT)

    # ---- finishing -------------------------------------------------------
    def keep_needed(self, outputs):
        """Drop the nodes and constants that `outputs` do not depend on;
        returns every name still read (or output)."""
        needed, kept = set(outputs), []
        for node in reversed(self.nodes):
            if any(o in needed for o in node.output):
                kept.append(node)
                needed |= _read_names([node])
        self.nodes[:] = kept[::-1]
        self.initializers = [(n, a) for n, a in self.initializers if n in needed]
        self.initializer_bytes = sum(a.nbytes for _, a in self.initializers)
        return needed

    # ---- subgraphs -------------------------------------------------------
    def subgraph(self):
        """A graph for a Loop body: same namespace, constants in the main graph."""
        return Graph(self.opset, self.names, parent=self)

    def to_proto(self, name, inputs, outputs):
        graph = helper.make_graph(self.nodes, name, inputs, outputs)
        for value_name, array in self.initializers:
            # Written in place: weights can be hundreds of MB, a copy costs seconds.
            tensor = graph.initializer.add()
            tensor.name = value_name
            tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
            tensor.dims.extend(array.shape)
            tensor.raw_data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"),
                                                                 copy=False).tobytes()
        return graph


def _read_names(nodes):
    """Every value name the nodes (and their subgraphs) read."""
    names = set()
    for node in nodes:
        names.update(node.input)
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                names |= _read_names(attr.g.node)
    return names
