"""The layer registry holds every type BVLC Caffe master registers (61),
Fast R-CNN's two and sppcaffe's WindowSPP; the GPU backend depends on
nothing above it."""
import ast
import pathlib

import sppcaffe

BVLC_TYPES = """
AbsVal Accuracy ArgMax BNLL BatchNorm BatchReindex Bias Clip Concat ContrastiveLoss Convolution
Crop Data Deconvolution Dropout DummyData ELU Eltwise Embed EuclideanLoss Exp Filter Flatten
HDF5Data HDF5Output HingeLoss Im2col ImageData InfogainLoss InnerProduct Input LRN LSTM LSTMUnit
Log MVN MemoryData MultinomialLogisticLoss PReLU Parameter Pooling Power Python RNN ReLU Reduction
Reshape SPP Scale Sigmoid SigmoidCrossEntropyLoss Silence Slice Softmax SoftmaxWithLoss Split
Swish TanH Threshold Tile WindowData
""".split()


def test_every_bvlc_layer_type_is_registered():
    assert len(BVLC_TYPES) == 61
    missing = sorted(set(BVLC_TYPES) - set(sppcaffe.LAYER_TYPES))
    assert not missing, f"missing layer types: {missing}"


def test_fast_rcnn_and_sppcaffe_types_are_registered():
    for name in ("ROIPooling", "SmoothL1Loss", "WindowSPP"):
        assert name in sppcaffe.LAYER_TYPES


def test_backends_import_nothing_above_them():
    root = pathlib.Path(sppcaffe.__file__).parent / "backends"
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                depth = len(path.relative_to(root).parts)     # 1: backends/x.py
                assert node.level <= depth, f"{path.name} imports from above backends/"
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                assert not node.module.startswith("sppcaffe") or \
                    node.module.startswith("sppcaffe.backends"), f"{path.name}: {node.module}"
