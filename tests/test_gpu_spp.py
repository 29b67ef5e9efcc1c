"""SPP device code (bin tables + kernels/pooling.cu) against the host code:
every method, MAX/AVE, odd sizes and rectangles, a = 13 with levels 6 3 2 1,
the one-level CAFFE layout, ties, and tables re-uploaded only on a new size."""
import warnings

import numpy as np
import pytest

from gpu_check import compare_cpu_gpu
from gradient_check import layer_param
from sppcaffe import spp_geometry as geometry
from sppcaffe.layers import window_pool_device as device_pool
from sppcaffe.blob import Blob
from sppcaffe.layer import create_layer
from sppcaffe.proto import caffe_pb2


def spp(settings):
    text = f'name: "spp" type: "SPP" spp_param {{ {settings} }}'
    return create_layer(layer_param(text), caffe_pb2.TRAIN)


CASES = [
    # (spp_param pyramid, input shape)
    ("method: CAFFE pyramid_height: 3", (2, 3, 13, 13)),
    ("method: CAFFE pyramid_height: 3", (1, 2, 10, 7)),        # rectangle, odd width
    ("method: CAFFE pyramid_height: 2", (2, 2, 5, 9)),
    ("method: PAPER levels: 6 levels: 3 levels: 2 levels: 1", (2, 3, 13, 13)),
    ("method: PAPER levels: 4 levels: 2 levels: 1", (1, 3, 10, 13)),    # rows 9 unread
    ("method: ADAPTIVE levels: 6 levels: 3 levels: 2 levels: 1", (2, 3, 13, 13)),
    ("method: ADAPTIVE levels: 6 levels: 3 levels: 2 levels: 1", (1, 2, 7, 11)),
    ("method: ADAPTIVE levels: 3 levels: 5", (2, 2, 4, 6)),             # map smaller than bins*2
    ("method: ADAPTIVE levels: 1", (2, 3, 5, 5)),
]


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("pyramid, shape", CASES)
def test_spp_device_code_matches_host(gpu_device, pool, pyramid, shape):
    layer = spp(f"pool: {pool} {pyramid}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # PAPER's uncovered rows: tested on the host
        compare_cpu_gpu(layer, [Blob(shape)], [Blob()])


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_one_level_caffe_keeps_bvlcs_pooling_top(gpu_device, pool):
    top = [Blob()]
    got = compare_cpu_gpu(spp(f"pool: {pool} pyramid_height: 1"), [Blob((2, 3, 5, 6))], top)
    assert top[0].shape == (2, 3, 1, 1) and got[0][0].shape == (2, 3, 1, 1)


@pytest.mark.parametrize("method", ["CAFFE", "PAPER", "ADAPTIVE"])
def test_ties_pick_the_hosts_argmax(gpu_device, method):
    pyramid = "pyramid_height: 3" if method == "CAFFE" else "levels: 4 levels: 2 levels: 1"
    layer = spp(f"pool: MAX method: {method} {pyramid}")
    bottom = [Blob((2, 2, 9, 8))]
    bottom[0].data[...] = np.random.default_rng(3).integers(0, 2, bottom[0].shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compare_cpu_gpu(layer, bottom, [Blob()], randomize=False, rtol=0, atol=0)


def test_new_input_size_new_tables_same_size_no_upload(gpu_device, monkeypatch):
    layer = spp("pool: MAX method: ADAPTIVE levels: 3 levels: 2 levels: 1")
    bottom, top = [Blob((1, 2, 9, 9))], [Blob()]
    compare_cpu_gpu(layer, bottom, top)
    bottom[0].reshape(2, 2, 6, 11)
    compare_cpu_gpu(layer, bottom, top, setup=False, seed=1)
    uploads = []
    original = gpu_device.upload
    monkeypatch.setattr(gpu_device, "upload", lambda ptr, a: (uploads.append(a.dtype),
                                                              original(ptr, a)))
    layer.reshape(bottom, top)
    layer.forward_gpu(bottom, top)
    layer.backward_gpu(top, [True], bottom)
    assert np.dtype(np.int32) not in uploads        # the tables stayed on the device


def test_tables_lay_out_levels_as_the_host():
    level_bins = [(geometry.bins("adaptive", 7, n), geometry.bins("adaptive", 9, n))
                  for n in (2, 1)]
    tables = device_pool.bin_tables(level_bins, channels=3)
    assert tables.row_length == 3 * (4 + 1) and tables.bins_per_box == 0
    assert tables.levels.tolist() == [[0, 2, 2, 0], [12, 1, 1, 12]]
    # level 0: row starts, ends, divisors, then the columns'
    assert tables.bins[:12].tolist() == [0, 3, 4, 7, 4, 4, 0, 4, 5, 9, 5, 5]


def test_backward_shared_refuses_per_window_tables(gpu_device):
    tables = device_pool.window_tables([[0, 0, 2, 2]], [2], (4, 4), 1)
    bins = device_pool.DeviceBins().load(tables)
    with pytest.raises(ValueError, match="pool_backward_windows"):
        device_pool.pool_backward_shared(bins, device_pool.MAX, 0, 0, (1, 1, 4, 4), 0)
