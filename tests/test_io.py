"""Files: prototxt errors with file:line:column, caffemodel round trips,
legacy blob shapes, truncated files, large models."""
import os
import time

import numpy as np
import pytest

import sppcaffe
from sppcaffe import io
from sppcaffe.io.caffemodel import array_to_blob, blob_matches, blob_to_array
from sppcaffe.proto import caffe_pb2

TINY = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_syntax_error_names_file_line_column(tmp_path):
    path = write(tmp_path, "bad.prototxt", 'name: "x"\nlayer {\n  name: "a"\n  type "Input"\n}\n')
    with pytest.raises(io.PrototxtError) as err:
        io.read_net(path)
    assert f"{path}:4:" in str(err.value)


def test_unknown_field_is_named(tmp_path):
    path = write(tmp_path, "bad.prototxt", 'layer {\n  name: "a"\n  kernel_sise: 3\n}\n')
    with pytest.raises(io.PrototxtError, match=r"bad.prototxt:3:.*kernel_sise"):
        io.read_net(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.prototxt"):
        io.read_net(str(tmp_path / "nope.prototxt"))


def test_unknown_layer_type_names_layer(tmp_path):
    path = write(tmp_path, "net.prototxt", TINY.replace('type: "InnerProduct"', 'type: "Fancy"'))
    with pytest.raises(sppcaffe.LayerError, match="layer 'fc'.*unknown layer type 'Fancy'"):
        sppcaffe.Net(path, sppcaffe.TEST)


def test_missing_bottom_names_layer(tmp_path):
    path = write(tmp_path, "net.prototxt", TINY.replace('bottom: "conv"', 'bottom: "cnv"'))
    with pytest.raises(sppcaffe.LayerError, match="layer 'fc'.*unknown bottom blob 'cnv'"):
        sppcaffe.Net(path, sppcaffe.TEST)


def test_caffemodel_round_trip(tmp_path):
    path = write(tmp_path, "net.prototxt", TINY)
    net = sppcaffe.Net(path, sppcaffe.TEST)
    model = str(tmp_path / "tiny.caffemodel")
    net.save(model)
    other = sppcaffe.Net(path, sppcaffe.TEST, weights=model)
    for name in net.params:
        for a, b in zip(net.params[name], other.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
    # The file is a plain NetParameter with modern shapes, as Caffe writes it.
    saved = io.read_binary(model, caffe_pb2.NetParameter())
    assert [lp.name for lp in saved.layer] == ["data", "conv", "fc"]
    assert list(saved.layer[1].blobs[0].shape.dim) == [4, 3, 3, 3]


def test_pycaffe_argument_order(tmp_path):
    path = write(tmp_path, "net.prototxt", TINY)
    net = sppcaffe.Net(path, sppcaffe.TEST)
    model = str(tmp_path / "tiny.caffemodel")
    net.save(model)
    old_style = sppcaffe.Net(path, model, sppcaffe.TEST)
    np.testing.assert_array_equal(old_style.params["fc"][0].data, net.params["fc"][0].data)


def test_shape_mismatch_names_layer_and_shapes(tmp_path):
    path = write(tmp_path, "net.prototxt", TINY)
    model = str(tmp_path / "tiny.caffemodel")
    sppcaffe.Net(path, sppcaffe.TEST).save(model)
    bigger = write(tmp_path, "big.prototxt", TINY.replace("num_output: 4", "num_output: 5"))
    with pytest.raises(sppcaffe.LayerError) as err:
        sppcaffe.Net(bigger, sppcaffe.TEST, weights=model)
    message = str(err.value)
    assert "layer 'conv'" in message and "(4, 3, 3, 3)" in message and "(5, 3, 3, 3)" in message


def test_truncated_caffemodel_is_a_clear_error(tmp_path):
    path = write(tmp_path, "net.prototxt", TINY)
    model = tmp_path / "tiny.caffemodel"
    sppcaffe.Net(path, sppcaffe.TEST).save(str(model))
    raw = model.read_bytes()
    model.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(io.CaffemodelError, match="tiny.caffemodel.*truncated"):
        sppcaffe.Net(path, sppcaffe.TEST, weights=str(model))


def test_legacy_4d_blob_matches_by_last_axes():
    blob = caffe_pb2.BlobProto(num=1, channels=1, height=3, width=4)
    blob.data.extend(range(12))
    assert blob_matches(blob, (3, 4))
    assert not blob_matches(blob, (4, 3))
    np.testing.assert_array_equal(blob_to_array(blob, shape=(3, 4)), np.arange(12).reshape(3, 4))


def test_double_data_is_read():
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([2, 2])
    blob.double_data.extend([1.5, 2.5, 3.5, 4.5])
    np.testing.assert_array_equal(blob_to_array(blob), [[1.5, 2.5], [3.5, 4.5]])


def test_large_blob_round_trip_is_fast():
    # ZF-5 SPP's fc6 is 4096 x 12800 floats (210 MB); a fifth of it here.
    array = np.random.default_rng(0).standard_normal((4096, 2560)).astype(np.float32)
    start = time.perf_counter()
    net = caffe_pb2.NetParameter()
    array_to_blob(array, net.layer.add().blobs.add())
    parsed = caffe_pb2.NetParameter.FromString(net.SerializeToString())
    back = blob_to_array(parsed.layer[0].blobs[0])
    elapsed = time.perf_counter() - start
    np.testing.assert_array_equal(back, array)
    assert elapsed < 5.0, f"42 MB took {elapsed:.1f} s"


def test_save_is_atomic(tmp_path, monkeypatch):
    path = write(tmp_path, "net.prototxt", TINY)
    net = sppcaffe.Net(path, sppcaffe.TEST)
    model = tmp_path / "tiny.caffemodel"
    net.save(str(model))
    before = model.read_bytes()

    def explode(self):
        raise KeyboardInterrupt
    monkeypatch.setattr(caffe_pb2.NetParameter, "SerializeToString", explode)
    with pytest.raises(KeyboardInterrupt):
        net.save(str(model))
    assert model.read_bytes() == before
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


def test_zf5_spp_model_over_64mb_saves_and_loads(tmp_path):
    # ZF-5 SPP's weights are 308 MB (fc6 alone 210 MB): protobuf's old 64 MB cap must not bite.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    deploy = os.path.join(root, "models", "zf5_spp", "deploy.prototxt")
    net = sppcaffe.Net(deploy, sppcaffe.TEST)
    model = str(tmp_path / "zf5_spp.caffemodel")
    start = time.perf_counter()
    net.save(model)
    loaded = sppcaffe.Net(deploy, sppcaffe.TEST, weights=model)
    elapsed = time.perf_counter() - start
    assert os.path.getsize(model) > 300e6
    np.testing.assert_array_equal(loaded.params["fc6"][0].data, net.params["fc6"][0].data)
    assert elapsed < 30, f"saving and loading 308 MB took {elapsed:.1f} s"
