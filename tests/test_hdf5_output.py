"""HDF5Output (Caffe's hdf5_output_layer.cpp): datasets "data" and "label"
with the legacy 4-D shapes, the file truncated at setup, one batch per
file, no tops and no gradient, and the same file from GPU mode."""
import h5py
import numpy as np
import pytest

import sppcaffe
from sppcaffe.layer import LayerError


def net(tmp_path, path, data_shape=(2, 3, 2, 2), label_shape=(2,), extra=""):
    def input_layer(name, shape):
        dims = " ".join(f"dim: {d}" for d in shape)
        return (f'layer {{ name: "{name}" type: "Input" top: "{name}" '
                f'input_param {{ shape {{ {dims} }} }} }}')
    text = f"""
    {extra}
    {input_layer("data", data_shape)}
    {input_layer("label", label_shape)}
    layer {{ name: "relu" type: "ReLU" bottom: "data" top: "relu" }}
    layer {{ name: "out" type: "HDF5Output" bottom: "relu" bottom: "label"
             hdf5_output_param {{ file_name: "{path}" }} }}
    """
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(text)
    return sppcaffe.Net(str(prototxt), sppcaffe.TEST)


def read(path):
    with h5py.File(path, "r") as f:
        return {name: (f[name][()], f[name].dtype) for name in f}


def feed(rng, data_shape=(2, 3, 2, 2), label_shape=(2,)):
    data = rng.standard_normal(data_shape).astype(np.float32)
    label = rng.integers(0, 5, label_shape).astype(np.float32)
    return data, label


def test_writes_data_and_label_as_4d_float_datasets(tmp_path):
    path = tmp_path / "out.h5"
    n = net(tmp_path, path)
    data, label = feed(np.random.default_rng(0))
    n.forward(data=data, label=label)
    saved = read(path)
    assert set(saved) == {"data", "label"}
    assert saved["data"][1] == np.float32 and saved["label"][1] == np.float32
    np.testing.assert_array_equal(saved["data"][0], np.maximum(data, 0))
    # Caffe reshapes each bottom to (num, channels, height, width).
    assert saved["label"][0].shape == (2, 1, 1, 1)
    np.testing.assert_array_equal(saved["label"][0].ravel(), label)
    assert n.outputs == []          # no tops


def test_matrix_bottoms_get_trailing_unit_axes(tmp_path):
    path = tmp_path / "out.h5"
    n = net(tmp_path, path, data_shape=(3, 5), label_shape=(3, 2))
    data, label = feed(np.random.default_rng(1), (3, 5), (3, 2))
    n.forward(data=data, label=label)
    saved = read(path)
    assert saved["data"][0].shape == (3, 5, 1, 1) and saved["label"][0].shape == (3, 2, 1, 1)
    np.testing.assert_array_equal(saved["label"][0][..., 0, 0], label)


def test_setup_truncates_an_existing_file(tmp_path):
    path = tmp_path / "out.h5"
    with h5py.File(path, "w") as f:
        f["old"] = np.ones(3)
    net(tmp_path, path)
    assert read(path) == {}


def test_one_batch_per_file_as_in_caffe(tmp_path):
    path = tmp_path / "out.h5"
    n = net(tmp_path, path)
    rng = np.random.default_rng(2)
    first, label = feed(rng)
    n.forward(data=first, label=label)
    with pytest.raises(LayerError, match="layer 'out' \\(HDF5Output\\).*one batch per file"):
        n.forward(data=-first, label=label)
    np.testing.assert_array_equal(read(path)["data"][0], np.maximum(first, 0))


def test_errors_name_the_layer(tmp_path):
    n = net(tmp_path, tmp_path / "out.h5", label_shape=(3,))
    with pytest.raises(LayerError, match="'out'.*same batch size"):
        n.forward()
    with pytest.raises(LayerError, match="'out'.*file_name"):
        net(tmp_path, "")
    with pytest.raises(LayerError, match="'out'.*failed to open"):
        net(tmp_path, tmp_path / "no" / "such" / "dir.h5")


def test_backward_passes_nothing(tmp_path):
    path = tmp_path / "out.h5"
    n = net(tmp_path, path, extra="force_backward: true")
    data, label = feed(np.random.default_rng(3))
    n.forward(data=data, label=label)
    n.blobs["relu"].diff[...] = 5
    n.backward()
    assert (n.blobs["relu"].diff == 5).all()          # untouched, as in Caffe


def test_gpu_mode_writes_the_device_results(tmp_path, gpu_device):
    path = tmp_path / "out.h5"
    n = net(tmp_path, path)
    data, label = feed(np.random.default_rng(4))
    n.forward(data=data, label=label)
    saved = read(path)
    np.testing.assert_array_equal(saved["data"][0], np.maximum(data, 0))
    np.testing.assert_array_equal(saved["label"][0].ravel(), label)
