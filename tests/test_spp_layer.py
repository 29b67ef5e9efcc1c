"""SPP: the bin layouts of sppcaffe.spp_geometry (tables worked out by hand
from the formulas), the layer's output layout and errors, gradients, and the
BVLC fixture tests/golden/spp_caffe."""
import logging
import warnings

import numpy as np
import pytest
from google.protobuf import text_format

from golden_util import DATA_TOL, DIFF_TOL, assert_close, case_path, load_expected
from gradient_check import check_gradient, layer_param
from sppcaffe import spp_geometry as geometry
from sppcaffe.blob import Blob
from sppcaffe.layer import LayerError, create_layer
from sppcaffe.layers.pooling import (ave_pool_bins, ave_pool_forward, max_pool_bins,
                                     max_pool_forward)
from sppcaffe.proto import caffe_pb2

# (method, map size, bins) -> [(start, end), ...]; for caffe also the pad.
#   caffe: kernel = ceil(a/n), pad = (kernel*n - a + 1)//2, windows
#          [i*kernel - pad, +kernel) clipped to the map
#   paper: window ceil(a/n) every floor(a/n) cells from 0
#   adaptive: [floor(i*a/n), ceil((i+1)*a/n))
BIN_TABLES = {
    ("caffe", 13, 1): [(0, 13)],                                       # k 13, pad 0
    ("caffe", 13, 2): [(0, 6), (6, 13)],                               # k 7, pad 1
    ("caffe", 13, 3): [(0, 4), (4, 9), (9, 13)],                       # k 5, pad 1
    ("caffe", 13, 4): [(0, 2), (2, 6), (6, 10), (10, 13)],             # k 4, pad 2
    ("caffe", 10, 1): [(0, 10)],                                       # k 10, pad 0
    ("caffe", 10, 2): [(0, 5), (5, 10)],                               # k 5, pad 0
    ("caffe", 10, 3): [(0, 3), (3, 7), (7, 10)],                       # k 4, pad 1
    ("caffe", 10, 4): [(0, 2), (2, 5), (5, 8), (8, 10)],               # k 3, pad 1
    ("caffe", 10, 6): [(0, 1), (1, 3), (3, 5), (5, 7), (7, 9), (9, 10)],  # k 2, pad 1
    ("paper", 13, 1): [(0, 13)],
    ("paper", 13, 2): [(0, 7), (6, 13)],                               # window 7, stride 6
    ("paper", 13, 3): [(0, 5), (4, 9), (8, 13)],                       # 5, 4
    ("paper", 13, 4): [(0, 4), (3, 7), (6, 10), (9, 13)],              # 4, 3
    ("paper", 13, 6): [(0, 3), (2, 5), (4, 7), (6, 9), (8, 11), (10, 13)],  # 3, 2
    ("paper", 10, 1): [(0, 10)],
    ("paper", 10, 2): [(0, 5), (5, 10)],                               # 5, 5
    ("paper", 10, 3): [(0, 4), (3, 7), (6, 10)],                       # 4, 3
    ("paper", 10, 4): [(0, 3), (2, 5), (4, 7), (6, 9)],                # 3, 2: row 9 unread
    ("paper", 10, 6): [(0, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7)],  # 2, 1: rows 7-9 unread
    ("adaptive", 13, 1): [(0, 13)],
    ("adaptive", 13, 2): [(0, 7), (6, 13)],
    ("adaptive", 13, 3): [(0, 5), (4, 9), (8, 13)],
    ("adaptive", 13, 4): [(0, 4), (3, 7), (6, 10), (9, 13)],
    ("adaptive", 13, 6): [(0, 3), (2, 5), (4, 7), (6, 9), (8, 11), (10, 13)],
    ("adaptive", 10, 1): [(0, 10)],
    ("adaptive", 10, 2): [(0, 5), (5, 10)],
    ("adaptive", 10, 3): [(0, 4), (3, 7), (6, 10)],
    ("adaptive", 10, 4): [(0, 3), (2, 5), (5, 8), (7, 10)],
    ("adaptive", 10, 6): [(0, 2), (1, 4), (3, 5), (5, 7), (6, 9), (8, 10)],
}
CAFFE_PADS = {(13, 1): 0, (13, 2): 1, (13, 3): 1, (13, 4): 2,
              (10, 1): 0, (10, 2): 0, (10, 3): 1, (10, 4): 1, (10, 6): 1}


@pytest.mark.parametrize("method, size, n", sorted(BIN_TABLES))
def test_bin_table(method, size, n):
    bins = geometry.bins(method, size, n)
    assert list(zip(bins.starts.tolist(), bins.ends.tolist())) == BIN_TABLES[method, size, n]
    if method == "caffe":
        kernel, pad = geometry.caffe_kernel_pad(size, n)
        assert pad == CAFFE_PADS[size, n]
        assert bins.divisors.tolist() == [kernel] * n   # AVE counts the padding
    else:
        assert (bins.divisors == bins.ends - bins.starts).all()


@pytest.mark.parametrize("size, n", [(13, 6), (13, 8)])
def test_caffe_layout_needs_pad_below_kernel(size, n):
    # a=13, n=6: kernel 3, pad (18 - 13 + 1)//2 = 3; n=8: kernel 2, pad 2.
    with pytest.raises(ValueError, match="pad < kernel"):
        geometry.bins("caffe", size, n)


def test_caffe_layout_always_gives_n_bins_covering_the_map():
    for size in range(1, 60):
        for n in range(1, 17):
            try:
                kernel, pad = geometry.caffe_kernel_pad(size, n)
            except ValueError:
                continue
            assert geometry.pooled_size(size, kernel, kernel, pad) == n
            bins = geometry.bins("caffe", size, n)
            assert (bins.ends > bins.starts).all()
            assert bins.starts[0] == 0 and bins.ends[-1] == size
            assert (bins.starts[1:] == bins.ends[:-1]).all()


def test_paper_coverage():
    assert [geometry.paper_covers(13, n) for n in (1, 2, 3, 4, 6)] == [True] * 5
    assert [geometry.paper_covers(10, n) for n in (1, 2, 3, 4, 6)] == [True] * 3 + [False] * 2
    for size in range(6, 40):
        assert geometry.paper_covers(size, 6) == (size % 6 in (0, 1))


def test_paper_layout_rejects_maps_smaller_than_the_bin_count():
    with pytest.raises(ValueError, match="ADAPTIVE"):
        geometry.bins("paper", 5, 6)


def test_adaptive_layout_covers_every_map():
    for size in range(1, 40):
        for n in range(1, 9):
            bins = geometry.bins("adaptive", size, n)
            assert len(bins.starts) == n and (bins.ends > bins.starts).all()
            covered = np.zeros(size, bool)
            for start, end in zip(bins.starts, bins.ends):
                covered[start:end] = True
            assert covered.all()


def test_pyramid_levels_and_length():
    assert geometry.pyramid_levels(3) == [1, 2, 4]
    assert geometry.pyramid_output_length([6, 3, 2, 1], 256) == 256 * 50
    assert geometry.pyramid_output_length(geometry.pyramid_levels(3), 4) == 4 * 21


# ---- the layer ------------------------------------------------------------

def spp(settings, name="spp"):
    return create_layer(layer_param(f'name: "{name}" type: "SPP" spp_param {{ {settings} }}'),
                        caffe_pb2.TRAIN)


def blobs(x):
    bottom = Blob(x.shape)
    bottom.data[...] = x
    return [bottom], [Blob()]


def distinct(shape, seed=0):
    """Values 0.05 apart, so a finite-difference step cannot change an argmax."""
    values = np.random.default_rng(seed).permutation(int(np.prod(shape))) * 0.05
    return (values - values.mean()).reshape(shape).astype(np.float32)


METHOD_SETTINGS = {
    "caffe": "pyramid_height: 3",
    "paper": "method: PAPER levels: 6 levels: 3 levels: 2 levels: 1",
    "adaptive": "method: ADAPTIVE levels: 6 levels: 3 levels: 2 levels: 1",
}


def test_output_is_each_level_flattened_then_concatenated():
    x = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    layer = spp("method: ADAPTIVE pool: MAX levels: 2 levels: 1")
    bottom, top = blobs(x)
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    # level 2 on a 2x2 map is the map itself, (channel, row, column) order
    np.testing.assert_array_equal(top[0].data, [[0, 1, 2, 3, 4, 5, 6, 7, 3, 7]])


@pytest.mark.parametrize("method", sorted(METHOD_SETTINGS))
def test_output_length_is_fixed_across_input_sizes(method):
    layer = spp(METHOD_SETTINGS[method])
    bottom, top = blobs(np.zeros((2, 3, 13, 13), np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # PAPER on 10x10 and 7x9
        layer.setup(bottom, top)
        length = top[0].shape
        for h, w in [(10, 10), (7, 9), (13, 13)]:
            bottom[0].reshape(2, 3, h, w)
            bottom[0].data[...] = distinct(bottom[0].shape)
            layer.reshape(bottom, top)
            layer.forward(bottom, top)
            assert top[0].shape == length
            assert np.isfinite(top[0].data).all()
    levels = [1, 2, 4] if method == "caffe" else [6, 3, 2, 1]
    assert length == (2, geometry.pyramid_output_length(levels, 3))


@pytest.mark.parametrize("method", sorted(METHOD_SETTINGS))
@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_levels_are_bin_pooling_of_the_geometry(method, pool):
    x = distinct((2, 3, 9, 11), seed=4)
    layer = spp(f"pool: {pool} {METHOD_SETTINGS[method]}")
    bottom, top = blobs(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer.setup(bottom, top)
    layer.forward(bottom, top)
    pieces = []
    for n in layer.levels:
        rows, cols = geometry.bins(method, 9, n), geometry.bins(method, 11, n)
        y = np.empty((2, 3, n, n), np.float32)
        for i in range(n):                         # the oracle: one bin at a time
            for j in range(n):
                cell = x[:, :, rows.starts[i]:rows.ends[i], cols.starts[j]:cols.ends[j]]
                y[:, :, i, j] = (cell.max(axis=(2, 3)) if pool == "MAX" else
                                 cell.sum(axis=(2, 3)) / (rows.divisors[i] * cols.divisors[j]))
        pieces.append(y.reshape(2, -1))
    np.testing.assert_allclose(top[0].data, np.concatenate(pieces, axis=1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_caffe_bins_reproduce_caffe_pooling(pool):
    # The bin kernels on the caffe layout == Pooling with SPP's kernel/pad.
    x = np.round(np.random.default_rng(2).standard_normal((2, 3, 13, 10)), 1).astype(np.float32)
    for n in (1, 2, 3, 4):
        (kh, ph), (kw, pw) = geometry.caffe_kernel_pad(13, n), geometry.caffe_kernel_pad(10, n)
        rows, cols = geometry.bins("caffe", 13, n), geometry.bins("caffe", 10, n)
        args = ((kh, kw), (kh, kw), (ph, pw), (n, n))
        if pool == "MAX":
            y, argmax = max_pool_bins(x, rows, cols)
            y_ref, argmax_ref = max_pool_forward(x, *args)
            np.testing.assert_array_equal(argmax, argmax_ref)
        else:
            y, y_ref = ave_pool_bins(x, rows, cols), ave_pool_forward(x, *args)
        np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", sorted(METHOD_SETTINGS))
@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_gradient(method, pool):
    settings = {"caffe": "pyramid_height: 3",
                "paper": "method: PAPER levels: 4 levels: 2 levels: 1",
                "adaptive": "method: ADAPTIVE levels: 4 levels: 3 levels: 1"}[method]
    bottom, top = blobs(distinct((2, 2, 7, 9), seed=3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # PAPER: 7 rows in 4 bins leave one unread
        checked = check_gradient(spp(f"pool: {pool} {settings}"), bottom, top)
    assert checked == bottom[0].count


def test_paper_gradient_is_zero_on_unread_cells():
    layer = spp("method: PAPER levels: 4")
    bottom, top = blobs(distinct((1, 1, 10, 10)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer.setup(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    assert not bottom[0].diff[0, 0, 9, :].any() and not bottom[0].diff[0, 0, :, 9].any()


def test_paper_warns_once_about_unread_cells(caplog):
    layer = spp("method: PAPER levels: 4 levels: 1", name="spp_paper")
    bottom, top = blobs(np.zeros((1, 2, 10, 10), np.float32))
    # A log line (the tools' format), not a Python warning printed with its source line.
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="sppcaffe"):
        warnings.simplefilter("error")
        layer.setup(bottom, top)
        for h in (10, 11, 10):
            bottom[0].reshape(1, 2, h, h)
            layer.reshape(bottom, top)
            layer.forward(bottom, top)
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "spp_paper" in message and "10x10" in message and "[4]" in message


def test_paper_does_not_warn_when_every_cell_is_read(caplog):
    layer = spp("method: PAPER levels: 6 levels: 4 levels: 1")
    bottom, top = blobs(np.zeros((1, 2, 13, 13), np.float32))
    with caplog.at_level(logging.WARNING, logger="sppcaffe"):
        layer.setup(bottom, top)
    assert not caplog.records


def test_caffe_error_names_layer_size_and_level():
    bottom, top = blobs(np.zeros((1, 2, 13, 13), np.float32))
    with pytest.raises(LayerError) as info:
        spp("pyramid_height: 4", name="spp4").setup(bottom, top)
    message = str(info.value)
    assert "'spp4'" in message and "13x13" in message and "level 3" in message


def test_single_level_caffe_top_is_bvlc_pooling_shape():
    bottom, top = blobs(distinct((2, 3, 5, 4)))
    layer = spp("pyramid_height: 1")
    layer.setup(bottom, top)
    assert top[0].shape == (2, 3, 1, 1)          # BVLC: the Pooling top, not flattened
    layer = spp("method: ADAPTIVE levels: 1")
    layer.setup(bottom, top)
    assert top[0].shape == (2, 3)


def test_caffe_accepts_its_own_levels_listed():
    bottom, top = blobs(distinct((2, 3, 13, 13)))
    explicit, implicit = spp("levels: 1 levels: 2 levels: 4"), spp("pyramid_height: 3")
    explicit.setup(bottom, top)
    explicit.forward(bottom, top)
    first = top[0].data.copy()
    implicit.setup(bottom, top)
    implicit.forward(bottom, top)
    np.testing.assert_array_equal(first, top[0].data)


@pytest.mark.parametrize("settings, message", [
    ("levels: 6 levels: 3 levels: 2 levels: 1", "CAFFE"),
    ("levels: 4 levels: 2 levels: 1", "CAFFE"),
    ("method: PAPER pyramid_height: 2 levels: 3", "disagrees"),
    ("method: ADAPTIVE", "pyramid_height"),
    ("method: ADAPTIVE levels: 0", "at least 1"),
    ("pool: STOCHASTIC pyramid_height: 2", "STOCHASTIC"),
])
def test_bad_settings(settings, message):
    bottom, top = blobs(np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(LayerError, match=message):
        spp(settings).setup(bottom, top)


def test_paper_map_smaller_than_bins_is_an_error():
    bottom, top = blobs(np.zeros((1, 1, 5, 8), np.float32))
    with pytest.raises(LayerError, match="5x8"):
        spp("method: PAPER levels: 6").setup(bottom, top)


# ---- BVLC fixture -------------------------------------------------------------

def test_caffe_method_matches_bvlc_fixture():
    expected = load_expected("spp_caffe")
    with open(case_path("spp_caffe", "net.prototxt")) as f:
        net = text_format.Parse(f.read(), caffe_pb2.NetParameter())
    layers = [lp for lp in net.layer if lp.type == "SPP"]
    assert len(layers) == 3
    for consumer, lp in enumerate(layers):
        bottom, top = blobs(expected["input/data"])
        layer = create_layer(lp, caffe_pb2.TEST)
        layer.setup(bottom, top)
        layer.forward(bottom, top)
        assert_close(top[0].data, expected[f"data/{lp.top[0]}"], DATA_TOL, f"data of {lp.name}")
        top[0].diff[...] = expected[f"topdiff/{lp.top[0]}"]
        bottom[0].diff[...] = 5.0                # backward overwrites
        layer.backward(top, [True], bottom)
        assert_close(bottom[0].diff, expected[f"diff/data_data_0_split_{consumer}"], DIFF_TOL,
                     f"bottom diff of {lp.name}")
