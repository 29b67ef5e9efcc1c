"""Checks on the Caffe-compatible protobuf schema (protos/caffe.proto).

* the committed sppcaffe/proto/caffe_pb2.py is what protoc makes of the schema;
* field numbers / types / defaults agree with BVLC Caffe (spot checks);
* the sppcaffe extension fields are present with their documented numbers;
* real BVLC files (prototxt model zoo, golden .caffemodel/.solverstate) parse.
"""

import glob
import importlib
import importlib.util
import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO_PKG_DIR = os.path.join(REPO_ROOT, "sppcaffe", "proto")
SHARED_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared")

if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def _load(modname, filename):
    """Import sppcaffe.proto.<modname>; if the package import is broken by
    unrelated code, load the module straight from its file."""
    try:
        return importlib.import_module("sppcaffe.proto." + modname)
    except Exception:  # noqa: BLE001 - fall back to a direct file import
        path = os.path.join(PROTO_PKG_DIR, filename)
        spec = importlib.util.spec_from_file_location("sppcaffe_proto_" + modname, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


pb = _load("caffe_pb2", "caffe_pb2.py")


def _field(message, name):
    fields = message.DESCRIPTOR.fields_by_name
    assert name in fields, "%s has no field %r" % (message.DESCRIPTOR.name, name)
    return fields[name]


# ---------------------------------------------------------------------------
# (1) generated module is up to date
# ---------------------------------------------------------------------------

def test_generated_module_matches_schema(tmp_path):
    pytest.importorskip("grpc_tools")
    regenerate = _load("regenerate", "regenerate.py")
    fresh = regenerate.generate(str(tmp_path))
    with open(fresh, "rb") as handle:
        fresh_bytes = handle.read()
    with open(os.path.join(PROTO_PKG_DIR, "caffe_pb2.py"), "rb") as handle:
        committed_bytes = handle.read()
    assert fresh_bytes == committed_bytes, (
        "sppcaffe/proto/caffe_pb2.py is stale or hand-edited relative to "
        "protos/caffe.proto; run `python -m sppcaffe.proto.regenerate` "
        "and commit the result")


# ---------------------------------------------------------------------------
# (2) BVLC field numbers, types and defaults
# ---------------------------------------------------------------------------

# (message, field, number) as in BVLC caffe.proto master.
BVLC_NUMBERS = [
    ("BlobShape", "dim", 1),
    ("BlobProto", "shape", 7),
    ("BlobProto", "data", 5),
    ("BlobProto", "diff", 6),
    ("BlobProto", "double_data", 8),
    ("BlobProto", "double_diff", 9),
    ("BlobProto", "num", 1),
    ("BlobProto", "channels", 2),
    ("BlobProto", "height", 3),
    ("BlobProto", "width", 4),
    ("Datum", "data", 4),
    ("Datum", "float_data", 6),
    ("Datum", "encoded", 7),
    ("NetParameter", "name", 1),
    ("NetParameter", "layers", 2),
    ("NetParameter", "input", 3),
    ("NetParameter", "input_dim", 4),
    ("NetParameter", "force_backward", 5),
    ("NetParameter", "state", 6),
    ("NetParameter", "debug_info", 7),
    ("NetParameter", "input_shape", 8),
    ("NetParameter", "layer", 100),
    ("SolverParameter", "net", 24),
    ("SolverParameter", "base_lr", 5),
    ("SolverParameter", "lr_policy", 8),
    ("SolverParameter", "momentum", 11),
    ("SolverParameter", "stepvalue", 34),
    ("SolverParameter", "solver_type", 30),
    ("SolverParameter", "delta", 31),
    ("SolverParameter", "momentum2", 39),
    ("SolverParameter", "rms_decay", 38),
    ("SolverParameter", "type", 40),
    ("SolverParameter", "layer_wise_reduce", 41),
    ("SolverParameter", "weights", 42),
    ("SolverState", "iter", 1),
    ("SolverState", "history", 3),
    ("SolverState", "current_step", 4),
    ("LayerParameter", "name", 1),
    ("LayerParameter", "type", 2),
    ("LayerParameter", "loss_weight", 5),
    ("LayerParameter", "param", 6),
    ("LayerParameter", "blobs", 7),
    ("LayerParameter", "phase", 10),
    ("LayerParameter", "propagate_down", 11),
    ("LayerParameter", "transform_param", 100),
    ("LayerParameter", "loss_param", 101),
    ("LayerParameter", "convolution_param", 106),
    ("LayerParameter", "inner_product_param", 117),
    ("LayerParameter", "lrn_param", 118),
    ("LayerParameter", "pooling_param", 121),
    ("LayerParameter", "relu_param", 123),
    ("LayerParameter", "softmax_param", 125),
    ("LayerParameter", "prelu_param", 131),
    ("LayerParameter", "spp_param", 132),
    ("LayerParameter", "batch_norm_param", 139),
    ("LayerParameter", "scale_param", 142),
    ("LayerParameter", "input_param", 143),
    ("LayerParameter", "crop_param", 144),
    ("LayerParameter", "parameter_param", 145),
    ("LayerParameter", "recurrent_param", 146),
    ("LayerParameter", "swish_param", 147),
    ("LayerParameter", "clip_param", 148),
    ("PoolingParameter", "pool", 1),
    ("PoolingParameter", "kernel_size", 2),
    ("PoolingParameter", "stride", 3),
    ("PoolingParameter", "pad", 4),
    ("PoolingParameter", "global_pooling", 12),
    ("PoolingParameter", "round_mode", 13),
    ("ConvolutionParameter", "stride", 6),
    ("ConvolutionParameter", "dilation", 18),
    ("SPPParameter", "pyramid_height", 1),
    ("SPPParameter", "pool", 2),
    ("SPPParameter", "engine", 6),
    ("V1LayerParameter", "layer", 1),
    ("V1LayerParameter", "type", 5),
    ("V1LayerParameter", "blobs", 6),
    ("V1LayerParameter", "blobs_lr", 7),
    ("V1LayerParameter", "convolution_param", 10),
    ("V1LayerParameter", "param", 1001),
    ("V1LayerParameter", "blob_share_mode", 1002),
    ("V0LayerParameter", "pad", 7),
    ("V0LayerParameter", "kernelsize", 8),
    ("V0LayerParameter", "k", 22),
    ("V0LayerParameter", "blobs", 50),
    ("V0LayerParameter", "concat_dim", 65),
    ("V0LayerParameter", "hdf5_output_param", 1001),
]


@pytest.mark.parametrize("message,name,number", BVLC_NUMBERS)
def test_bvlc_field_numbers(message, name, number):
    assert _field(getattr(pb, message), name).number == number


def test_blob_data_is_packed_float():
    for name in ("data", "diff"):
        field = _field(pb.BlobProto, name)
        assert field.type == field.TYPE_FLOAT
        assert field.is_repeated
        assert field.is_packed
    for name in ("double_data", "double_diff"):
        assert _field(pb.BlobProto, name).is_packed
    assert _field(pb.BlobShape, "dim").type == _field(pb.BlobShape, "dim").TYPE_INT64


def test_v1_layer_nests_v0_layer():
    assert _field(pb.V1LayerParameter, "layer").message_type is pb.V0LayerParameter.DESCRIPTOR
    assert _field(pb.NetParameter, "layers").message_type is pb.V1LayerParameter.DESCRIPTOR


def test_selected_defaults_and_enums():
    solver = pb.SolverParameter()
    assert solver.type == "SGD"
    assert solver.solver_type == pb.SolverParameter.SGD
    assert solver.solver_mode == pb.SolverParameter.GPU
    assert solver.snapshot_format == pb.SolverParameter.BINARYPROTO
    assert solver.random_seed == -1
    assert solver.regularization_type == "L2"
    assert solver.average_loss == 1 and solver.iter_size == 1
    pool = pb.PoolingParameter()
    assert pool.round_mode == pb.PoolingParameter.CEIL
    assert pb.PoolingParameter.FLOOR == 1
    assert pool.stride == 1
    assert pb.NetState().phase == pb.TEST
    assert (pb.TRAIN, pb.TEST) == (0, 1)
    assert pb.LossParameter().normalization == pb.LossParameter.VALID
    assert pb.FillerParameter().type == "constant"
    assert pb.ConvolutionParameter().bias_term is True
    assert pb.V1LayerParameter.CONVOLUTION == 4
    assert pb.V1LayerParameter.SOFTMAX_LOSS == 21
    assert pb.V1LayerParameter.DECONVOLUTION == 39
    assert _field(pb.ClipParameter, "min").is_required


# ---------------------------------------------------------------------------
# (3) sppcaffe extensions
# ---------------------------------------------------------------------------

def test_spp_extension_fields():
    method = _field(pb.SPPParameter, "method")
    levels = _field(pb.SPPParameter, "levels")
    assert method.number == 100
    assert levels.number == 101
    assert method.enum_type is pb.SPPMethod.DESCRIPTOR
    assert [(v.name, v.number) for v in pb.SPPMethod.DESCRIPTOR.values] == [
        ("CAFFE", 0), ("PAPER", 1), ("ADAPTIVE", 2)]
    assert levels.is_repeated and levels.type == levels.TYPE_UINT32
    spp = pb.SPPParameter()
    assert spp.method == pb.SPPMethod.Value("CAFFE") == 0
    assert not spp.HasField("method")
    assert list(spp.levels) == []
    # BVLC's own SPP fields are untouched.
    assert spp.pool == pb.SPPParameter.MAX
    assert spp.engine == pb.SPPParameter.DEFAULT


def test_spp_extension_text_format_round_trip():
    from google.protobuf import text_format

    text = """
      name: "spp5" type: "SPP" bottom: "conv5" top: "spp5"
      spp_param { pool: MAX method: PAPER levels: 6 levels: 3 levels: 2 levels: 1 }
    """
    layer = text_format.Parse(text, pb.LayerParameter())
    assert layer.spp_param.method == pb.SPPMethod.Value("PAPER")
    assert list(layer.spp_param.levels) == [6, 3, 2, 1]
    again = pb.LayerParameter.FromString(layer.SerializeToString())
    assert again == layer
    assert "method: PAPER" in text_format.MessageToString(again)


# ---------------------------------------------------------------------------
# (4) real BVLC files
# ---------------------------------------------------------------------------

def _shared(*parts):
    path = os.path.join(SHARED_DIR, *parts)
    if not glob.glob(path):
        pytest.skip("shared fixtures not available: %s" % path)
    return sorted(glob.glob(path))


def _count_unknown(message):
    from google.protobuf.unknown_fields import UnknownFieldSet

    count = len(UnknownFieldSet(message))
    for field, value in message.ListFields():
        if field.message_type is not None:
            for sub in (value if field.is_repeated else [value]):
                count += _count_unknown(sub)
    return count


def test_model_zoo_prototxts_parse():
    from google.protobuf import text_format

    for path in _shared("caffe_models", "*.prototxt"):
        if "solver" in os.path.basename(path):
            message = pb.SolverParameter()
        else:
            message = pb.NetParameter()
        with open(path) as handle:
            text_format.Parse(handle.read(), message)


def test_golden_binaries_parse_without_unknown_fields():
    paths = _shared("golden", "*", "*.caffemodel") + _shared("golden", "*", "*.solverstate")
    for path in paths:
        with open(path, "rb") as handle:
            raw = handle.read()
        message = pb.SolverState() if path.endswith(".solverstate") else pb.NetParameter()
        message.ParseFromString(raw)
        assert _count_unknown(message) == 0, path
        # Caffe writes fields in number order, as protobuf does: a schema that
        # agrees with BVLC reproduces the file exactly.
        assert message.SerializeToString() == raw, path
