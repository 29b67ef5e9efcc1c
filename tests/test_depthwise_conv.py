"""Depthwise convolution (group == channels) on the host: sppcaffe.depthwise
against the generic grouped-GEMM path, a direct loop convolution and
numerical gradients, over channel multipliers, strides, padding and
dilation."""
import numpy as np
import pytest

import sppcaffe.depthwise as depthwise_module
import sppcaffe.im2col as im2col_module
from gradient_check import check_gradient, check_overwrite_and_accumulate
from sppcaffe.blob import Blob
from test_conv_layer import conv_layer, direct_conv, random_blob

# settings (group = channels = C), input shape
CASES = {
    "3x3": ("kernel_size: 3 pad: 1", (2, 3, 6, 5)),
    "no_pad": ("kernel_size: 3", (2, 3, 6, 7)),
    "stride2": ("kernel_size: 3 stride: 2 pad: 1", (2, 3, 7, 6)),
    "stride3_k2": ("kernel_size: 2 stride: 3", (1, 2, 8, 7)),       # cells no window reads
    "dilation2": ("kernel_size: 3 dilation: 2 pad: 2", (2, 2, 7, 6)),
    "dilation_stride": ("kernel_size: 3 dilation: 2 stride: 2 pad: 1", (1, 3, 9, 8)),
    "rect": ("kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 0 stride_h: 1 stride_w: 2",
             (2, 2, 5, 7)),
    "5x5": ("kernel_size: 5 pad: 2 stride: 2", (1, 2, 9, 9)),
    "1x1": ("kernel_size: 1", (2, 3, 4, 3)),
    "no_bias": ("kernel_size: 3 pad: 1 bias_term: false", (2, 2, 4, 4)),
}


def depthwise_settings(case, multiplier):
    settings, shape = CASES[case]
    c = shape[1]
    return f"num_output: {c * multiplier} group: {c} {settings}", shape


def twin_layers(settings, shape):
    """The same layer twice, the second forced onto the grouped GEMM path."""
    fast, generic = conv_layer(settings), conv_layer(settings)
    bottom = [random_blob(shape, seed=3)]
    fast.setup(bottom, [Blob()])
    generic.setup(bottom, [Blob()])
    rng = np.random.default_rng(2)
    for mine, theirs in zip(generic.blobs, fast.blobs):
        theirs.data[...] = rng.uniform(-1, 1, theirs.shape)
        mine.data[...] = theirs.data
    assert fast._depthwise
    generic._depthwise = False
    return fast, generic


def run_both(fast, generic, shape, seed=4):
    results = []
    for layer in (fast, generic):
        bottom, top = [random_blob(shape, seed=3)], [Blob()]
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        top[0].diff[...] = np.random.default_rng(seed).uniform(-1, 1, top[0].shape)
        bottom[0].diff[...] = 7.0             # must be overwritten
        for p in layer.blobs:
            p.diff[...] = 0.5                 # must be accumulated into
        layer.backward(top, [True], bottom)
        results.append((top[0].data.copy(), bottom[0].diff.copy(),
                        [p.diff.copy() for p in layer.blobs]))
    return results


@pytest.fixture(params=["per_plane", "planes_last"])
def layout(request, monkeypatch):
    """Forward's two layouts (large maps per plane, small ones planes last)."""
    monkeypatch.setattr(depthwise_module, "_PLANES_LAST_LENGTH",
                        (0, 0) if request.param == "per_plane" else (0, 1 << 30))
    monkeypatch.setattr(depthwise_module, "_PLANES_LAST_STRIDED", True)
    return request.param


@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_grouped_gemm_path(case, multiplier, layout):
    settings, shape = depthwise_settings(case, multiplier)
    (y, dx, dparams), (y_ref, dx_ref, dparams_ref) = run_both(*twin_layers(settings, shape),
                                                              shape)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    for d, d_ref in zip(dparams, dparams_ref):
        np.testing.assert_allclose(d, d_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["stride2", "dilation_stride", "5x5"])
def test_matches_direct_convolution(case, layout):
    settings, shape = depthwise_settings(case, 2)
    layer = conv_layer(settings)
    bottom, top = [random_blob(shape, seed=5)], [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    p = layer.param.convolution_param
    geom = layer.geom
    expected = direct_conv(bottom[0].data.astype(np.float64), layer.blobs[0].data,
                           layer.blobs[1].data, geom.pad, geom.stride, geom.dilation, p.group)
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("case", ["3x3", "stride2", "dilation_stride", "stride3_k2"])
def test_gradient(case, multiplier):
    settings, shape = depthwise_settings(case, multiplier)
    layer = conv_layer(settings)
    assert check_gradient(layer, [random_blob(shape, seed=1)], [Blob()]) > 0
    assert layer._depthwise


def test_backward_overwrites_bottom_and_accumulates_parameters():
    settings, shape = depthwise_settings("stride2", 2)
    layer, bottom, top = conv_layer(settings), [random_blob(shape)], [Blob()]
    layer.setup(bottom, top)
    check_overwrite_and_accumulate(layer, bottom, top)


def test_blocks_and_threads_do_not_change_results(monkeypatch, layout):
    """Many small plane blocks on three threads give the one-block result."""
    settings, shape = depthwise_settings("dilation_stride", 2)
    shape = (3, 4) + shape[2:]
    settings = settings.replace("num_output: 6 group: 3", "num_output: 8 group: 4")
    reference = run_both(*twin_layers(settings, shape), shape)[0]
    monkeypatch.setattr(depthwise_module, "_BLOCK_BYTES", 1)
    monkeypatch.setattr(depthwise_module, "_PLANES_LAST_BLOCK", 2)
    monkeypatch.setattr(depthwise_module, "_TRANSPOSE_RUN", 1)
    monkeypatch.setattr(im2col_module, "_MIN_PARALLEL_ELEMENTS", 1)
    monkeypatch.setattr(im2col_module, "_WORKERS", 3)
    again = run_both(*twin_layers(settings, shape), shape)[0]
    np.testing.assert_array_equal(again[0], reference[0])
    np.testing.assert_array_equal(again[1], reference[1])
    for d, d_ref in zip(again[2], reference[2]):
        np.testing.assert_allclose(d, d_ref, rtol=1e-6)


def test_only_one_input_channel_per_group_takes_the_fast_path():
    layer = conv_layer("num_output: 4 group: 2 kernel_size: 3")
    layer.setup([random_blob((1, 4, 5, 5))], [Blob()])
    assert not layer._depthwise
