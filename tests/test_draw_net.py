"""draw_net and sppcaffe.draw: the dot graph of every shipped and test
prototxt matches its net (read back from the dot text), the conventions
match pycaffe's graphs (tests/data/draw, made by pycaffe), and pictures
come from Graphviz where it is installed."""
import glob
import os
import re
import shutil

import pytest

import sppcaffe
from sppcaffe import draw, io
from sppcaffe.cli import draw_net
from sppcaffe.proto import caffe_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data", "draw")
LENET = os.path.join(ROOT, "tests", "caffe_models", "examples_mnist_lenet_train_test.prototxt")
ALEXNET = os.path.join(ROOT, "tests", "caffe_models", "models_bvlc_alexnet_train_val.prototxt")
NETS = sorted(p for folder in ("models", os.path.join("tests", "caffe_models"))
              for p in glob.glob(os.path.join(ROOT, folder, "**", "*.prototxt"), recursive=True)
              if "solver" not in os.path.basename(p))
HAS_DOT = shutil.which("dot") is not None


# ---------------------------------------------------------------------------
# Reading dot text back (the subset draw.py and pydot write)
# ---------------------------------------------------------------------------
DOT_ID = r'"(?:[^"\\]|\\.)*"|[\w.]+'
NODE = re.compile(rf"^\s*({DOT_ID})\s*(?:\[(.*)\])?\s*;\s*$")
EDGE = re.compile(rf"^\s*({DOT_ID})\s*->\s*({DOT_ID})\s*(?:\[(.*)\])?\s*;\s*$")
ATTRIBUTE = re.compile(rf"(\w+)=({DOT_ID}|#\w+)")


def unquote(token):
    """The text of a dot ID: quotes off, escapes (also a record label's) resolved."""
    if not token.startswith('"'):
        return token
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), token[1:-1])


def attributes(text):
    return {key: unquote(value) for key, value in ATTRIBUTE.findall(text or "")}


def parse_dot(text):
    """(nodes: id -> attributes, edges: [(source, target, label)])."""
    nodes, edges = {}, []
    for line in text.splitlines():
        edge = EDGE.match(line)
        if edge:
            edges.append((unquote(edge.group(1)), unquote(edge.group(2)),
                          attributes(edge.group(3)).get("label", "")))
            continue
        node = NODE.match(line)
        if node and unquote(node.group(1)) not in ("graph", "node", "edge"):
            nodes[unquote(node.group(1))] = attributes(node.group(2))
    return nodes, edges


def labelled(nodes, edges):
    """Nodes and edges named by their labels (a node without one: its id),
    the form in which two writers' graphs compare."""
    label = {node: attrs.get("label", node) for node, attrs in nodes.items()}
    return ({label[n] for n in nodes},
            {(label.get(s, s), label.get(t, t), lab) for s, t, lab in edges})


def drawn(tmp_path, *argv):
    """parse_dot of the .dot that `draw_net NET OUT.dot [argv]` writes."""
    net, *rest = argv
    out = tmp_path / "net.dot"
    assert draw_net.main([net, str(out)] + list(rest)) == 0
    return parse_dot(out.read_text())


def expected_graph(layers):
    """{(layer name, type)}, {blob}, {(from, to)} of layers, by names."""
    layer_keys = {(lp.name, lp.type) for lp in layers}
    blobs = {b for lp in layers for b in list(lp.bottom) + list(lp.top)}
    edges = {(("blob", b), ("layer", lp.name, lp.type)) for lp in layers for b in lp.bottom}
    edges |= {(("layer", lp.name, lp.type), ("blob", t)) for lp in layers for t in lp.top}
    return layer_keys, blobs, edges


def graph_by_names(nodes, edges):
    """The same three sets, read from the dot text's node labels and shapes."""
    key = {}
    for node, attrs in nodes.items():
        if attrs["shape"] == "record":
            name, kind = re.match(r"^(.*)\n\(([^\s)]+)", attrs["label"], re.S).groups()
            key[node] = ("layer", name, kind)
        else:
            assert attrs["shape"] == "octagon", (node, attrs)
            key[node] = ("blob", attrs["label"])
    layer_keys = {k[1:] for k in key.values() if k[0] == "layer"}
    blobs = {k[1] for k in key.values() if k[0] == "blob"}
    return layer_keys, blobs, {(key[s], key[t]) for s, t, _ in edges}


# ---------------------------------------------------------------------------
# Every net
# ---------------------------------------------------------------------------
def test_the_nets_are_found():
    assert len(NETS) >= 40
    assert any("community" in p for p in NETS) and any("zf5_spp" in p for p in NETS)


@pytest.mark.parametrize("path", NETS, ids=lambda p: os.path.relpath(p, ROOT))
def test_graph_matches_net(tmp_path, path):
    nodes, edges = drawn(tmp_path, path)
    layers = list(io.read_net(path).layer)
    assert layers
    assert graph_by_names(nodes, edges) == expected_graph(layers)
    assert len(nodes) == len(expected_graph(layers)[0]) + len(expected_graph(layers)[1])


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_phase_draws_the_layers_of_that_net(tmp_path, phase):
    nodes, edges = drawn(tmp_path, LENET, "--phase", phase)
    net = sppcaffe.Net(LENET, getattr(sppcaffe, phase),
                       data_shapes={"data": (2, 1, 28, 28), "label": (2,)})
    built = [layer.param for layer in net.layers if layer.param.type != "Split"]
    layer_keys, blobs, _ = graph_by_names(nodes, edges)
    assert layer_keys == {(lp.name, lp.type) for lp in built}
    assert (("accuracy", "Accuracy") in layer_keys) == (phase == "TEST")
    batch = {"TRAIN": "Batch 64", "TEST": "Batch 100"}[phase]
    assert {label for _, _, label in edges if label.startswith("Batch")} == {batch}


# ---------------------------------------------------------------------------
# pycaffe's conventions
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("fixture, net, argv", [
    ("pycaffe_lenet_LR.dot", LENET, []),
    ("pycaffe_lenet_LR_lrm.dot", LENET, ["--display_lrm"]),
    ("pycaffe_alexnet_TB_TRAIN.dot", ALEXNET, ["--rankdir", "TB", "--phase", "TRAIN"]),
])
def test_same_nodes_labels_and_edges_as_pycaffe(tmp_path, fixture, net, argv):
    with open(os.path.join(DATA, fixture)) as f:
        theirs = labelled(*parse_dot(f.read()))
    ours = labelled(*drawn(tmp_path, net, *argv))
    # pycaffe writes an empty edge label as "" and numbers bare.
    theirs = (theirs[0], {(s, t, label.strip('"')) for s, t, label in theirs[1]})
    assert ours == theirs
    assert len(ours[0]) > 10


def test_styles(tmp_path):
    nodes, edges = drawn(tmp_path, LENET)
    assert nodes["layer conv1 (Convolution)"]["fillcolor"] == "#FF5050"
    assert nodes["layer pool1 (Pooling)"]["fillcolor"] == "#FF9900"
    assert nodes["layer ip1 (InnerProduct)"]["fillcolor"] == "#CC33FF"
    assert nodes["layer loss (SoftmaxWithLoss)"]["fillcolor"] == "#6495ED"
    # In place: green, beside the one node of its blob, with an edge each way.
    assert nodes["layer relu1 (ReLU)"]["fillcolor"] == "#90EE90"
    assert ("blob ip1", "layer relu1 (ReLU)", "") in edges
    assert ("layer relu1 (ReLU)", "blob ip1", "") in edges
    blobs = [n for n, a in nodes.items() if a["shape"] == "octagon"]
    assert sorted(nodes[b]["label"] for b in blobs) == sorted(
        ["data", "label", "conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "accuracy", "loss"])
    assert all(nodes[b]["fillcolor"] == "#E0E0E0" for b in blobs)
    # The TRAIN and TEST data layers share a node, with an edge per batch size.
    assert ("layer mnist (Data)", "blob data", "Batch 64") in edges
    assert ("layer mnist (Data)", "blob data", "Batch 100") in edges
    assert ("layer conv1 (Convolution)", "blob conv1", "20") in edges


def test_labels_follow_the_layout_direction():
    layer = io.parse_text(
        'name: "c" type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 '
        'stride: 2 pad: 1 } param { lr_mult: 0 } param { lr_mult: 0 }',
        caffe_pb2.LayerParameter())
    assert draw.layer_label(layer, "LR") == "c\n(Convolution)\nkernel size: 3\nstride: 2\npad: 1"
    assert draw.layer_label(layer, "TB") == "c (Convolution) kernel size: 3 stride: 2 pad: 1"
    # display_lrm shows the multipliers only where one is not zero, as pycaffe.
    assert "lr mult" not in draw.layer_label(layer, "TB", display_lrm=True)
    del layer.param[:]
    assert draw.layer_label(layer, "TB", display_lrm=True).endswith("lr mult: 1.0, 1.0")


def test_names_that_dot_would_misread(tmp_path):
    net = tmp_path / "odd.prototxt"
    net.write_text('name: "odd \\"net\\""\n'
                   'layer { name: "in|put" type: "Input" top: "a{b}" '
                   'input_param { shape { dim: 1 dim: 2 } } }\n'
                   'layer { name: "back\\\\slash <x>" type: "ReLU" bottom: "a{b}" top: "c\\"d" }\n')
    nodes, edges = drawn(tmp_path, str(net))
    assert nodes["layer in|put (Input)"]["label"] == "in|put\n(Input)"
    assert nodes["layer back\\slash <x> (ReLU)"]["label"] == "back\\slash <x>\n(ReLU)"
    assert nodes['blob c"d']["label"] == 'c"d'
    assert ("blob a{b}", "layer back\\slash <x> (ReLU)", "") in edges
    if HAS_DOT:     # and Graphviz reads it, each record label one field
        svg = tmp_path / "odd.svg"
        assert draw_net.main([str(net), str(svg)]) == 0
        text = svg.read_text()
        assert "in|put" in text and "back\\slash &lt;x&gt;" in text


# ---------------------------------------------------------------------------
# Pictures and the command line
# ---------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_DOT, reason="Graphviz's dot is not installed")
@pytest.mark.parametrize("extension, magic", [("png", b"\x89PNG"), ("svg", b"<?xml"),
                                              ("pdf", b"%PDF")])
def test_pictures_with_graphviz(tmp_path, capsys, extension, magic):
    out = tmp_path / f"lenet.{extension}"
    assert draw_net.main([LENET, str(out), "--rankdir", "TB"]) == 0
    assert out.read_bytes().startswith(magic)
    assert f"Drawing net to {out}" in capsys.readouterr().out
    assert not (tmp_path / "lenet.dot").exists()


def test_without_graphviz_the_dot_text_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(draw.shutil, "which", lambda program: None)
    out = tmp_path / "lenet.png"
    assert draw_net.main([LENET, str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("draw_net: error: ") and "apt-get install graphviz" in err
    assert f"dot -Tpng {tmp_path / 'lenet.dot'} -o {out}" in err
    assert not out.exists()
    nodes, _ = parse_dot((tmp_path / "lenet.dot").read_text())
    assert "layer conv1 (Convolution)" in nodes


def test_draw_net_to_bytes_as_pycaffe():
    param = io.read_net(LENET)
    text = draw.draw_net(param, "LR", ext="dot").decode()
    assert text.startswith('digraph "LeNet" {') and "rankdir=LR" in text
    assert draw.draw_net(param, "BT", ext="raw").decode() != text


@pytest.mark.parametrize("argv, message", [
    (["missing.prototxt", "out.png"], "cannot read net 'missing.prototxt': no such file"),
    ([LENET, "out"], "has no extension"),
])
def test_errors(tmp_path, capsys, argv, message):
    argv = [a if a.startswith("/") or a.endswith(".prototxt") else str(tmp_path / a)
            for a in argv]
    assert draw_net.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("draw_net: error: ") and message in err


def test_bad_rankdir_and_phase(capsys):
    for argv in ([LENET, "x.dot", "--rankdir", "XY"], [LENET, "x.dot", "--phase", "DEPLOY"]):
        with pytest.raises(SystemExit) as exit_:
            draw_net.main(argv)
        assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_v1_net_is_upgraded(tmp_path):
    v1 = os.path.join(ROOT, "tests", "data", "upgrade", "v1_lenet.prototxt")
    layer_keys, _, _ = graph_by_names(*drawn(tmp_path, v1))
    assert ("conv1", "Convolution") in layer_keys
