"""sppcaffe.onnx.export: an sppcaffe (Caffe) net as an ONNX model.

The graph computes what the net's forward computes, layer by layer, with
the weights as initializers; inputs and outputs carry the Caffe blob
names.  A layer without an exact ONNX form stops the export with an error
naming it: the graph is never silently different from the net.

Values: each time a layer writes a blob (in-place layers write the same
blob again) the result is a new ONNX value; the last value written to a
blob gets the blob's name, so any blob can be asked for as an output under
its Caffe name.  The tops of data layers (Input, Data, ...) become graph
inputs; they hold what the layer would hand to the net (transformed data).
"""
import json
import os
import warnings
from importlib import metadata

import onnx
from onnx import TensorProto, helper

from . import layers  # noqa: F401  (importing it fills the registry)
from .graph import Graph
from .layer_export import LayerExport
from .registry import CONVERTERS, ExportError
from .shapes import probe_dynamic_axes

DEFAULT_OPSET = 17
MIN_OPSET = 13          # Softmax over one axis, Reduce/Unsqueeze/Split forms used here
# Model metadata: {ONNX output name: blob} for outputs not named as their blob.
RENAMED_OUTPUTS = "sppcaffe.renamed_outputs"
# Protobuf cannot write a message over 2 GiB: larger models keep their
# weights in a file beside the model.
_EXTERNAL_DATA_BYTES = 1800 << 20


def export(net, path=None, *, inputs=None, outputs=None, opset=DEFAULT_OPSET,
           dynamic_batch=False, dynamic_size=False):
    """Export `net` (an sppcaffe.Net) to ONNX; write it to `path` if given.

    inputs: {blob: shape} for the graph's inputs (default: their current
        shapes); the net is reshaped to them, as a forward at that size would.
    outputs: blob names the graph returns (default: the net's outputs);
        any blob may be listed, layers that none of them needs are left out.
    opset: the ONNX opset (13 or later).
    dynamic_batch / dynamic_size: leave the first axis / the height and
        width of the inputs free in the graph (see shapes.py); a layer that
        cannot follow them is an error naming it.
    Returns the onnx.ModelProto (checked with onnx.checker).
    """
    max_opset = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= max_opset:
        raise ExportError(f"opset {opset} is not supported: use {MIN_OPSET} to {max_opset}")
    for name, shape in (inputs or {}).items():
        if name not in net.blobs:
            raise ExportError(f"net '{net.name}' has no blob '{name}' to take an input shape")
        net.blobs[name].reshape(tuple(int(d) for d in shape))
    if inputs:
        net.reshape()
    wanted = list(dict.fromkeys(net.outputs if outputs is None else outputs))
    unknown = [name for name in wanted if name not in net.blobs]
    if unknown:
        raise ExportError(f"net '{net.name}' has no blob(s) {', '.join(map(repr, unknown))} "
                          "to output")
    if not wanted:
        raise ExportError(f"net '{net.name}' has no outputs; name the blobs to export")
    return _Exporter(net, wanted, opset, dynamic_batch, dynamic_size).run(path)


def needed_layers(net, wanted):
    """Indices of the layers some wanted blob depends on, in net order."""
    needed, keep = set(wanted), []
    for i in range(len(net.layers) - 1, -1, -1):
        tops = [b.name for b in net.top_vecs[i]]
        if any(t in needed for t in tops):
            keep.append(i)
            needed.difference_update(tops)
            needed.update(b.name for b in net.bottom_vecs[i])
    return keep[::-1]


class _Exporter:
    def __init__(self, net, wanted, opset, dynamic_batch, dynamic_size):
        self.net = net
        self.wanted = wanted
        self.steps = needed_layers(net, wanted)
        self.g = Graph(opset)
        for name in net.blobs:          # Caffe names are never handed out as fresh names
            self.g.names.reserve(name)
        fed = [b.name for i in self.steps if net.layers[i].is_data for b in net.top_vecs[i]]
        self.dynamic, self.symbols = probe_dynamic_axes(net, fed, dynamic_batch, dynamic_size)
        self.value = {}                 # blob name -> its current ONNX value
        self.bound = set()              # Caffe names already naming a value
        self.graph_inputs = []
        self.weights = {}
        self.notes = []

    # ---- per layer -------------------------------------------------------------
    def _last_writes(self):
        last = {}
        for i in self.steps:
            for b in self.net.top_vecs[i]:
                last[b.name] = i
        return last

    def _shape_info(self, name):
        blob = self.net.blobs[name]
        dims = [self.symbols.get((name, a), d) if a in self.dynamic.get(name, ()) else d
                for a, d in enumerate(blob.shape)]
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)

    def _graph_input(self, x, top_index):
        name = self.net.top_vecs[x.index][top_index].name
        if name in self.bound:
            raise x.error(f"blob '{name}' is fed twice")
        self.bound.add(name)
        self.graph_inputs.append(self._shape_info(name))
        return name

    def _convert(self, i):
        net, g = self.net, self.g
        layer = net.layers[i]
        bottoms = [b.name for b in net.bottom_vecs[i]]
        tops = [b.name for b in net.top_vecs[i]]
        convert = CONVERTERS.get(layer.param.type)
        if convert is None:
            known = ", ".join(sorted(CONVERTERS))
            raise ExportError(f"layer '{layer.name}' ({layer.param.type}): no ONNX form for "
                              f"this layer type (exportable types: {known})")
        x = LayerExport(g, i, layer, [self.value[b] for b in bottoms],
                        [net.blobs[b].shape for b in bottoms], [net.blobs[t].shape for t in tops],
                        [self.dynamic.get(b, frozenset()) for b in bottoms],
                        [self.dynamic.get(t, frozenset()) for t in tops],
                        self.weights, self._graph_input, self.notes)
        g.scope = layer.name
        first_node = len(g.nodes)
        try:
            values = convert(x)
        except ExportError:
            raise
        except ValueError as err:           # the geometry helpers' refusals
            raise x.error(str(err)) from err
        finally:
            g.scope = ""
        values = [values] if isinstance(values, str) else list(values)
        if len(values) != len(tops):
            raise x.error(f"the converter made {len(values)} value(s) for {len(tops)} top(s)")
        for top, value in zip(tops, values):
            if self.last_write[top] == i and top not in self.bound \
                    and self._rename(first_node, value, top):
                value = top
                self.bound.add(top)
            self.value[top] = value

    def _rename(self, first_node, old, new):
        """Give value `old`, made by this layer's nodes, the name `new`;
        False if it was not made here (an alias of an input or constant)."""
        nodes = self.g.nodes[first_node:]
        if not any(old in n.output for n in nodes):
            return False
        if any(a.type == onnx.AttributeProto.GRAPH for n in nodes for a in n.attribute) \
                and any(old in n.input for n in nodes):
            return False            # it may also be read inside a subgraph: keep its name
        for n in nodes:
            for field in (n.input, n.output):
                for k, name in enumerate(field):
                    if name == old:
                        field[k] = new
        return True

    # ---- the model ---------------------------------------------------------------
    def run(self, path):
        self.last_write = self._last_writes()
        for i in self.steps:
            self._convert(i)
        outputs, renamed = [], {}
        for name in self.wanted:
            value = self.value[name]
            if value != name:
                target = name
                if name in self.bound:
                    # An input blob written in place: the input keeps the name.
                    target = renamed[name] = self.g.names.fresh(f"{name}_out")
                    self.notes.append(f"output '{name}' is named '{target}': the graph input "
                                      f"'{name}' holds its name")
                    warnings.warn(self.notes[-1], stacklevel=3)
                self.g.node("Identity", [value], [target])
                self.bound.add(target)
                value = target
            info = self._shape_info(name)
            info.name = value
            outputs.append(info)
        # Only what the outputs depend on: a data layer's top that nothing
        # reads (a label, when only the scores are exported) is no input, as
        # the runtime would demand it; helpers may leave unused values.
        read = self.g.keep_needed([o.name for o in outputs])
        inputs = [info for info in self.graph_inputs if info.name in read]
        graph = self.g.to_proto(self.net.name or "net", inputs, outputs)
        model = helper.make_model_gen_version(
            graph, opset_imports=[helper.make_opsetid("", self.g.opset)],
            producer_name="sppcaffe", producer_version=_version(),
            doc_string="\n".join([f"Exported by sppcaffe from net '{self.net.name}'."]
                                 + self.notes))
        if renamed:
            helper.set_model_props(model, {RENAMED_OUTPUTS: json.dumps(
                {onnx_name: blob for blob, onnx_name in renamed.items()})})
        large = self.g.initializer_bytes > _EXTERNAL_DATA_BYTES
        if large:
            if path is None:
                raise ExportError("the model's weights exceed 2 GiB: give a path to write it "
                                  "(its weights then go to a file beside it)")
            onnx.save_model(model, os.fspath(path), save_as_external_data=True,
                            all_tensors_to_one_file=True,
                            location=os.path.basename(os.fspath(path)) + ".data")
            onnx.checker.check_model(os.fspath(path))
            return model
        data = model.SerializeToString()        # once, for the checker and the file
        onnx.checker.check_model(data)
        if path is not None:
            with open(path, "wb") as f:
                f.write(data)
        return model


def _version():
    try:
        return metadata.version("sppcaffe")
    except metadata.PackageNotFoundError:       # a checkout that is not installed
        return "unknown"
