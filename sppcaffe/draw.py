"""A net's graph in Graphviz's dot language, drawn as pycaffe's caffe.draw
draws it: layers as boxes (coloured by type: convolutions red, pooling
orange, inner products purple, in-place layers green, the rest blue),
blobs as grey octagons, an edge from each bottom blob to its layer and
from the layer to each top, the tops of Data, Convolution, Deconvolution
and InnerProduct layers labelled with the batch size or num_output.

As in pycaffe, a layer is one node per (name, type) -- the TRAIN and TEST
data layers of a train_val net that share a name are drawn once, with an
edge per batch size -- and a blob is one node per name, so an in-place
layer (bottom == top, ReLU, Dropout, ...) sits beside the blob it rewrites
with an edge to it and one back, instead of adding a node for each version
of the blob.

The dot text is written here, with no pydot; pictures (png, svg, pdf, ...)
come from Graphviz's `dot` program where it is installed.
"""
import os
import shutil
import subprocess

from .net import filter_net
from .proto import caffe_pb2

LAYER_COLOUR = "#6495ED"
LAYER_COLOURS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
                 "InnerProduct": "#CC33FF"}
IN_PLACE_COLOUR = "#90EE90"
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
RANKDIRS = ("LR", "TB", "BT", "RL")
# Output formats that are the dot text itself rather than a picture.
TEXT_FORMATS = ("dot", "gv", "raw")
INSTALL_HINT = "install Graphviz: apt-get install graphviz (Debian, Ubuntu), brew install " \
               "graphviz (macOS) or conda install graphviz"


class GraphvizMissing(RuntimeError):
    """Graphviz's `dot` program is not on PATH."""


# ---------------------------------------------------------------------------
# Labels (pycaffe's get_layer_label and get_edge_label)
# ---------------------------------------------------------------------------
def first_or(values, default):
    return values[0] if len(values) else default


def layer_label(layer, rankdir="LR", display_lrm=False):
    """Name, type and, for convolution and pooling, kernel size, stride and
    pad; separated by spaces in a vertical graph (where width is free) and
    by line breaks in a horizontal one.  With `display_lrm`, the weight and
    bias lr_mult of learning layers."""
    separator = " " if rankdir in ("TB", "BT") else "\n"
    parts = [layer.name]
    spatial = None
    if layer.type == "Pooling":
        p = layer.pooling_param
        parts.append(f"(Pooling {caffe_pb2.PoolingParameter.PoolMethod.Name(p.pool)})")
        spatial = p.kernel_size, p.stride, p.pad
    else:
        parts.append(f"({layer.type})")
    if layer.type in ("Convolution", "Deconvolution"):
        p = layer.convolution_param
        spatial = first_or(p.kernel_size, 1), first_or(p.stride, 1), first_or(p.pad, 0)
    if spatial:
        parts.append(separator.join(f"{what}: {value}" for what, value in
                                    zip(("kernel size", "stride", "pad"), spatial)))
    if display_lrm and layer.type in ("Convolution", "Deconvolution", "InnerProduct"):
        weights_lr, bias_lr = learning_rate_multipliers(layer)
        if weights_lr or bias_lr:
            parts.append(f"lr mult: {weights_lr:.1f}, {bias_lr:.1f}")
    return separator.join(parts)


def learning_rate_multipliers(layer):
    """(weights, bias) lr_mult of a learning layer; 1 where no param gives it."""
    mults = [p.lr_mult for p in layer.param[:2]]
    return tuple(mults + [1.0] * (2 - len(mults)))


def edge_label(layer):
    """The label of the edges to a layer's tops ("" for none)."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return ""


def is_in_place(layer):
    return len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]


# ---------------------------------------------------------------------------
# The graph
# ---------------------------------------------------------------------------
class Graph:
    """Nodes (id -> attributes, in order of first appearance) and edges
    (source id, target id, label), each edge once."""

    def __init__(self, name, rankdir):
        self.name = name
        self.rankdir = rankdir
        self.nodes = {}
        self.edges = []

    def add_node(self, node_id, **attributes):
        self.nodes[node_id] = attributes        # a later layer of the same key redraws it

    def add_edge(self, source, target, label=""):
        edge = (source, target, label)
        if edge not in self.edges:
            self.edges.append(edge)

    def to_dot(self):
        lines = [f"digraph {quote(self.name)} {{", f"  graph [rankdir={self.rankdir}];"]
        for node_id, attributes in self.nodes.items():
            record = attributes.get("shape") == "record"
            text = ", ".join(f"{key}={quote(value, record and key == 'label')}"
                             for key, value in attributes.items())
            lines.append(f"  {quote(node_id)} [{text}];")
        for source, target, label in self.edges:
            attributes = f" [label={quote(label)}]" if label else ""
            lines.append(f"  {quote(source)} -> {quote(target)}{attributes};")
        lines.append("}")
        return "\n".join(lines) + "\n"


def quote(text, record_label=False):
    """A dot string literal of `text`: a newline becomes dot's centred line
    break; in a record-shaped node's label, the characters that would split
    it into fields ({}|<>) are escaped too."""
    text = str(text).replace("\\", "\\\\")
    if record_label:
        for char in "{}|<>":
            text = text.replace(char, "\\" + char)
    return '"' + text.replace('"', '\\"').replace("\n", "\\n") + '"'


def layer_node_id(layer):
    return f"layer {layer.name} ({layer.type})"


def blob_node_id(blob):
    return f"blob {blob}"


def layers_in_phase(param, phase):
    """The layers drawn: all of them (`phase` None), or those a net built
    in `phase` (caffe_pb2.TRAIN or TEST, level 0, no stages) keeps."""
    if phase is None:
        return list(param.layer)
    state_param = caffe_pb2.NetParameter()
    state_param.CopyFrom(param)
    state_param.state.Clear()
    state_param.state.phase = phase
    return list(filter_net(state_param).layer)


def net_graph(param, rankdir="LR", phase=None, display_lrm=False, label_edges=True):
    """The Graph of a NetParameter (pycaffe's get_pydot_graph)."""
    if rankdir not in RANKDIRS:
        raise ValueError(f"rankdir must be one of {', '.join(RANKDIRS)}, got '{rankdir}'")
    graph = Graph(param.name or "Net", rankdir)
    for layer in layers_in_phase(param, phase):
        colour = IN_PLACE_COLOUR if is_in_place(layer) else LAYER_COLOURS.get(layer.type,
                                                                                LAYER_COLOUR)
        node = layer_node_id(layer)
        graph.add_node(node, label=layer_label(layer, rankdir, display_lrm),
                       shape="record", style="filled", fillcolor=colour)
        for bottom in layer.bottom:
            graph.add_node(blob_node_id(bottom), label=bottom, **BLOB_STYLE)
            graph.add_edge(blob_node_id(bottom), node)
        for top in layer.top:
            graph.add_node(blob_node_id(top), label=top, **BLOB_STYLE)
            graph.add_edge(node, blob_node_id(top), edge_label(layer) if label_edges else "")
    return graph


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------
def output_format(path):
    """The format a file's extension names ('png', 'dot', ...)."""
    extension = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
    if not extension:
        raise ValueError(f"'{path}' has no extension to tell the format: give e.g. net.png, "
                         "net.svg, net.pdf or net.dot")
    return extension


def run_dot(dot_text, fmt):
    """The picture Graphviz's `dot` draws from dot text, in format `fmt`."""
    program = shutil.which("dot")
    if program is None:
        raise GraphvizMissing(f"Graphviz's 'dot' program is not installed; {INSTALL_HINT}")
    result = subprocess.run([program, f"-T{fmt}"], input=dot_text.encode(), capture_output=True)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip()
        raise ValueError(f"Graphviz could not draw the net as {fmt}: "
                         f"{message or f'dot exited with status {result.returncode}'}")
    return result.stdout


def draw_net(param, rankdir="LR", ext="png", phase=None, display_lrm=False):
    """pycaffe's draw_net: the net drawn in format `ext`, as bytes (for
    dot, gv and raw: the dot text).  `phase`: caffe_pb2.TRAIN or TEST to
    draw only the layers of that phase, None for all."""
    dot_text = net_graph(param, rankdir, phase, display_lrm).to_dot()
    return dot_text.encode() if ext in TEXT_FORMATS else run_dot(dot_text, ext)


def draw_net_to_file(param, path, rankdir="LR", phase=None, display_lrm=False):
    """pycaffe's draw_net_to_file: the net drawn into `path`, in the format
    its extension names (.dot, .gv, .raw: the dot text)."""
    data = draw_net(param, rankdir, output_format(path), phase, display_lrm)
    with open(path, "wb") as f:
        f.write(data)
