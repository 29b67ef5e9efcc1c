"""Deconvolution and Im2col (sppcaffe/layers/deconv.py): Caffe's shape and
parameter rules, forward against direct scatter loops, gradients, frozen
(lr_mult 0) bilinear upsampling, the bilinear filler bit for bit, and the
BVLC fixtures deconv_crop, fcn_small (upscore) and structure_more (i2c)."""
import itertools

import numpy as np
import pytest

import sppcaffe
from golden_util import (DATA_TOL, DIFF_TOL, assert_close, check_golden_layers, golden_layers,
                         load_expected)
from gradient_check import check_gradient, check_overwrite_and_accumulate, layer_param
from sppcaffe.blob import Blob
from sppcaffe.fillers import fill
from sppcaffe.layer import LayerError, create_layer
from sppcaffe.proto import caffe_pb2

FILLERS = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'


def make_layer(kind, settings, name="layer", fillers=FILLERS):
    text = f'name: "{name}" type: "{kind}" convolution_param {{ {settings} {fillers} }}'
    return create_layer(layer_param(text), caffe_pb2.TRAIN)


def deconv_layer(settings, **kwargs):
    return make_layer("Deconvolution", settings, **kwargs)


def random_blob(shape, seed=0):
    blob = Blob(shape)
    blob.data[...] = np.random.default_rng(seed).uniform(-1, 1, size=shape)
    return blob


def direct_deconv(x, w, b, pad, stride, dilation, group):
    """Reference: every input pixel scatters its kernel, scaled, onto the
    output at stride steps; then the padding is cut off each side."""
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    (ph, pw), (sh, sw), (dh, dw) = pad, stride, dilation
    full = np.zeros((n, og * group, sh * (h - 1) + dh * (kh - 1) + 1,
                     sw * (wd - 1) + dw * (kw - 1) + 1))
    cg = c // group
    for g, i, j in itertools.product(range(group), range(kh), range(kw)):
        ins, outs = slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)
        full[:, outs, i * dh:i * dh + sh * (h - 1) + 1:sh, j * dw:j * dw + sw * (wd - 1) + 1:sw] \
            += np.einsum("nchw,co->nohw", x[:, ins], w[ins, :, i, j])
    y = full[:, :, ph:full.shape[2] - ph, pw:full.shape[3] - pw]
    return y if b is None else y + b[None, :, None, None]


# settings, input shape, pad, stride, dilation, group
CASES = {
    "plain": ("num_output: 3 kernel_size: 3", (2, 2, 3, 4), (0, 0), (1, 1), (1, 1), 1),
    "stride2": ("num_output: 2 kernel_size: 3 stride: 2", (2, 3, 3, 3), (0, 0), (2, 2), (1, 1), 1),
    "stride_pad": ("num_output: 2 kernel_size: 4 stride: 2 pad: 1", (2, 2, 3, 4),
                   (1, 1), (2, 2), (1, 1), 1),
    "stride_over_kernel": ("num_output: 2 kernel_size: 2 stride: 3", (2, 2, 3, 2),
                           (0, 0), (3, 3), (1, 1), 1),
    "rect": ("num_output: 2 kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride_h: 1 stride_w: 3",
             (2, 2, 3, 3), (1, 0), (1, 3), (1, 1), 1),
    "dilation": ("num_output: 2 kernel_size: 3 dilation: 2 pad: 1", (2, 2, 3, 3),
                 (1, 1), (1, 1), (2, 2), 1),
    "dilation_hw_stride": ("num_output: 2 kernel_size: 2 dilation: 1 dilation: 3 stride: 2",
                           (1, 2, 3, 2), (0, 0), (2, 2), (1, 3), 1),
    "group2": ("num_output: 4 kernel_size: 3 stride: 2 group: 2", (2, 4, 2, 3),
               (0, 0), (2, 2), (1, 1), 2),
    "depthwise_no_bias": ("num_output: 3 kernel_size: 4 stride: 2 pad: 1 group: 3 "
                          "bias_term: false", (2, 3, 3, 2), (1, 1), (2, 2), (1, 1), 3),
    "1x1": ("num_output: 3 kernel_size: 1", (2, 2, 3, 3), (0, 0), (1, 1), (1, 1), 1),
    "1x1_stride2": ("num_output: 2 kernel_size: 1 stride: 2", (1, 3, 3, 2),
                    (0, 0), (2, 2), (1, 1), 1),
    "one_image": ("num_output: 2 kernel_size: 3 stride: 2 pad: 1 group: 2", (1, 2, 3, 3),
                  (1, 1), (2, 2), (1, 1), 2),
}


def setup_case(case, seed=0):
    settings, shape = CASES[case][:2]
    layer = deconv_layer(settings)
    bottom, top = [random_blob(shape, seed)], [Blob()]
    layer.setup(bottom, top)
    return layer, bottom, top


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_matches_direct_scatter(case):
    _, _, pad, stride, dilation, group = CASES[case]
    layer, bottom, top = setup_case(case)
    layer.forward(bottom, top)
    bias = layer.blobs[1].data if len(layer.blobs) > 1 else None
    expected = direct_deconv(bottom[0].data.astype(np.float64), layer.blobs[0].data, bias,
                             pad, stride, dilation, group)
    assert top[0].shape == expected.shape
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient(case):
    settings, shape = CASES[case][:2]
    layer = deconv_layer(settings)
    assert check_gradient(layer, [random_blob(shape, seed=1)], [Blob()]) > 0


@pytest.mark.parametrize("case", ["stride_pad", "group2", "one_image"])
def test_backward_overwrites_bottom_and_accumulates_params(case):
    layer, bottom, top = setup_case(case)
    check_overwrite_and_accumulate(layer, bottom, top)


def test_one_hot_input_places_the_kernel_at_stride_positions():
    layer = deconv_layer("num_output: 2 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 "
                         "bias_term: false")
    bottom, top = [Blob((1, 3, 3, 4))], [Blob()]
    layer.setup(bottom, top)
    w = layer.blobs[0].data
    for c, i, j in [(0, 0, 0), (1, 2, 3), (2, 1, 2)]:
        bottom[0].data[...] = 0
        bottom[0].data[0, c, i, j] = 1
        layer.forward(bottom, top)
        expected = np.zeros(top[0].shape[1:], np.float32)
        expected[:, 2 * i:2 * i + 3, 3 * j:3 * j + 2] = w[c]
        np.testing.assert_array_equal(top[0].data[0], expected)
    # Two neighbours: their kernels overlap where the stride is below the kernel.
    bottom[0].data[...] = 0
    bottom[0].data[0, 0, 0, 0] = bottom[0].data[0, 0, 1, 0] = 1
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data[0, :, 2, :2], w[0, :, 2] + w[0, :, 0], rtol=1e-6)


def test_caffe_simple_deconvolution():
    # Caffe's TestSimpleDeconvolution: ones through a constant kernel, two bottoms.
    layer = deconv_layer("num_output: 4 kernel_size: 3 stride: 2",
                         fillers='weight_filler { type: "constant" value: 1 } '
                                 'bias_filler { type: "constant" value: 0.1 }')
    bottom, top = [Blob((2, 3, 6, 4)), Blob((2, 3, 6, 4))], [Blob(), Blob()]
    for b in bottom:
        b.data[...] = 1
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    assert top[0].shape == top[1].shape == (2, 4, 13, 9)
    h, w = np.arange(13)[:, None], np.arange(9)[None, :]
    h_overlap = (h % 2 == 0) & (h > 0) & (h < 12)
    w_overlap = (w % 2 == 0) & (w > 0) & (w < 8)
    expected = 3.1 + 9 * (h_overlap & w_overlap) + 3 * (h_overlap ^ w_overlap)
    for t in top:
        np.testing.assert_allclose(t.data, np.broadcast_to(expected, t.shape), rtol=1e-6)


# ---- shapes, parameters, errors ---------------------------------------------

@pytest.mark.parametrize("settings, shape, top_shape", [
    # stride (in - 1) + dilation (k - 1) + 1 - 2 pad
    ("num_output: 4 kernel_size: 3 stride: 2", (2, 3, 6, 4), (2, 4, 13, 9)),
    ("num_output: 3 kernel_size: 3 stride: 2 group: 3", (2, 3, 6, 4), (2, 3, 13, 9)),
    ("num_output: 21 kernel_size: 64 stride: 32 bias_term: false", (1, 21, 3, 4),
     (1, 21, 128, 160)),
    ("num_output: 2 kernel_size: 3 dilation: 3 pad: 2", (1, 1, 4, 5), (1, 2, 6, 7)),
    ("num_output: 2 kernel_h: 2 kernel_w: 5 stride_h: 3 stride_w: 1 pad_h: 1",
     (1, 1, 4, 2), (1, 2, 9, 6)),
])
def test_output_shape(settings, shape, top_shape):
    layer = deconv_layer(settings)
    top = [Blob()]
    layer.setup([Blob(shape)], top)
    assert top[0].shape == top_shape


def test_weight_shape_is_the_reverse_of_convolution():
    layer = deconv_layer("num_output: 6 kernel_h: 3 kernel_w: 2 group: 3",
                         fillers='weight_filler { type: "constant" value: 0.5 } '
                                 'bias_filler { type: "constant" value: -2 }')
    layer.setup([Blob((1, 9, 4, 4))], [Blob()])
    assert [b.shape for b in layer.blobs] == [(9, 2, 3, 2), (6,)]
    assert np.all(layer.blobs[0].data == 0.5) and np.all(layer.blobs[1].data == -2)
    layer = deconv_layer("num_output: 2 kernel_size: 3 bias_term: false")
    layer.setup([Blob((1, 5, 3, 3))], [Blob()])
    assert [b.shape for b in layer.blobs] == [(5, 2, 3, 3)]


def test_preset_parameters_are_kept_and_checked():
    layer = deconv_layer("num_output: 2 kernel_size: 2")
    weights, bias = Blob((3, 2, 2, 2)), Blob((2,))
    weights.data[...] = 3.0
    layer.blobs = [weights, bias]
    layer.setup([Blob((1, 3, 2, 2))], [Blob()])
    assert layer.blobs[0] is weights and np.all(weights.data == 3.0)
    layer = deconv_layer("num_output: 2 kernel_size: 2")
    layer.blobs = [Blob((2, 3, 2, 2)), Blob((2,))]        # Convolution's shape: wrong here
    with pytest.raises(LayerError, match="'layer'.*parameter shapes"):
        layer.setup([Blob((1, 3, 2, 2))], [Blob()])


@pytest.mark.parametrize("settings, shape, message", [
    ("num_output: 3 kernel_size: 2 group: 2", (1, 4, 3, 3), "group 2 must divide"),
    ("num_output: 4 kernel_size: 2 group: 2", (1, 3, 3, 3), "group 2 must divide"),
    ("num_output: 0 kernel_size: 2", (1, 2, 3, 3), "num_output must be positive"),
    ("num_output: 2 kernel_size: 2 pad: 1", (1, 2, 1, 1), "empty"),
    ("num_output: 2 kernel_size: 2", (1, 2, 3, 3, 3), "2-D"),
    ("num_output: 2", (1, 2, 3, 3), "kernel_size"),
    ("num_output: 2 kernel_size: 2 stride: 0", (1, 2, 3, 3), "stride must be positive"),
])
def test_invalid_settings_name_the_layer(settings, shape, message):
    with pytest.raises(LayerError, match=f"'layer' \\(Deconvolution\\).*{message}"):
        deconv_layer(settings).setup([Blob(shape)], [Blob()])


def test_new_input_size_reshapes_the_top():
    layer, bottom, top = setup_case("stride_pad")
    bottom[0].reshape(3, 2, 5, 2)
    bottom[0].data[...] = np.random.default_rng(4).uniform(-1, 1, bottom[0].shape)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    assert top[0].shape == (3, 2, 10, 4)
    expected = direct_deconv(bottom[0].data.astype(np.float64), layer.blobs[0].data,
                             layer.blobs[1].data, (1, 1), (2, 2), (1, 1), 1)
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(LayerError, match="channels"):
        bottom[0].reshape(3, 3, 5, 2)
        layer.reshape(bottom, top)


@pytest.mark.parametrize("params", [[False, True], [True, False], [False, False]])
def test_frozen_parameters_get_no_gradient(params):
    # What lr_mult 0 sets: the bottom diff still flows, skipped gradients stay 0.
    layer, bottom, top = setup_case("stride_pad")
    layer.param_propagate_down = params
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    for p in layer.blobs:
        p.diff[...] = 0
    layer.backward(top, [True], bottom)
    assert np.any(bottom[0].diff != 0)
    for wanted, blob in zip(params, layer.blobs):
        assert np.any(blob.diff != 0) == wanted


# ---- the bilinear filler and FCN's frozen upsampling -------------------------

def caffe_bilinear(k):
    """Caffe's BilinearFiller loop, in its float arithmetic."""
    f32 = np.float32
    f = int(np.ceil(k / 2.0))
    c = f32((2 * f - 1 - f % 2) / (2.0 * f))
    out = np.empty(k * k, f32)
    for i in range(k * k):
        x, y = f32(i % k), f32((i // k) % k)
        out[i] = (f32(1) - abs(x / f32(f) - c)) * (f32(1) - abs(y / f32(f) - c))
    return out.reshape(k, k)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7, 11, 16, 39, 64])
def test_bilinear_filler_is_caffes_bit_for_bit(k):
    blob = Blob((3, 2, k, k))
    fill(blob, caffe_pb2.FillerParameter(type="bilinear"))
    for kernel in blob.data.reshape(-1, k, k):
        np.testing.assert_array_equal(kernel, caffe_bilinear(k))


def test_bilinear_filler_matches_the_fixtures_weights():
    for case, layer in [("deconv_crop", "bil"), ("fcn_small", "upscore")]:
        caffe_weights = golden_layers(case)[1][layer][0]
        blob = Blob(caffe_weights.shape)
        fill(blob, caffe_pb2.FillerParameter(type="bilinear"))
        np.testing.assert_array_equal(blob.data, caffe_weights)


def test_bilinear_deconvolution_upsamples_a_constant_to_a_constant():
    layer = deconv_layer("num_output: 2 group: 2 kernel_size: 4 stride: 2 pad: 1 "
                         "bias_term: false", fillers='weight_filler { type: "bilinear" }')
    bottom, top = [Blob((1, 2, 4, 5))], [Blob()]
    bottom[0].data[...] = 3.0
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    assert top[0].shape == (1, 2, 8, 10)
    np.testing.assert_allclose(top[0].data[:, :, 1:-1, 1:-1], 3.0, rtol=1e-6)


FROZEN_UPSAMPLING = """
name: "fcn_tail"
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 2 dim: 3 dim: 4 dim: 3 } } }
layer { name: "label" type: "Input" top: "label"
  input_param { shape { dim: 2 dim: 1 dim: 6 dim: 4 } } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
  convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "up" type: "Deconvolution" bottom: "score" top: "up" param { lr_mult: 0 }
  convolution_param { num_output: 2 group: 2 kernel_size: 4 stride: 2 bias_term: false
                      weight_filler { type: "bilinear" } } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "label" top: "crop"
  crop_param { offset: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "crop" bottom: "label" top: "loss" }
"""


@pytest.mark.parametrize("force_backward", [False, True])
def test_frozen_bilinear_upsampling_in_a_net(tmp_path, force_backward):
    path = tmp_path / "net.prototxt"
    path.write_text(("force_backward: true\n" if force_backward else "") + FROZEN_UPSAMPLING)
    net = sppcaffe.Net(str(path), sppcaffe.TRAIN)
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.uniform(-1, 1, net.blobs["data"].shape)
    net.blobs["label"].data[...] = rng.integers(0, 2, net.blobs["label"].shape)
    up = net.layer_dict["up"]
    assert up.param_propagate_down == [force_backward]     # Caffe: force_backward sets it
    net.forward()
    for p in net.learnable_params:
        p.diff[...] = 0
    net.backward()
    assert np.any(net.params["score"][0].diff != 0)       # the gradient went through
    assert np.any(net.params["up"][0].diff != 0) == force_backward
    np.testing.assert_array_equal(net.params["up"][0].data[0, 0], caffe_bilinear(4))
    assert net.blobs["crop"].shape == (2, 2, 6, 4)


# ---- BVLC fixtures ----------------------------------------------------------

def check_fixture_layer(case, name, bottom_diff_keys, device=False):
    """Run one layer of a fixture net alone from the blobs around it:
    forward from its bottoms' data, backward from its top's diff; compare
    its top, bottom diffs (keys given, for split copies) and gradients.
    device: run its device code (in GPU mode)."""
    net, blobs = golden_layers(case)
    expected = load_expected(case)
    p = next(lp for lp in net.layer if lp.name == name)
    layer = create_layer(p, caffe_pb2.TEST)
    for array in blobs.get(name, []):
        layer.blobs.append(Blob(array.shape))
        layer.blobs[-1].data[...] = array
    bottom = []
    for blob_name in p.bottom:
        bottom.append(Blob(expected[f"data/{blob_name}"].shape))
        bottom[-1].data[...] = expected[f"data/{blob_name}"]
    top = [Blob()]
    layer.setup(bottom, top)
    forward, backward = ((layer.forward_gpu, layer.backward_gpu) if device
                         else (layer.forward, layer.backward))
    forward(bottom, top)
    assert_close(top[0].data, expected[f"data/{p.top[0]}"], DATA_TOL, f"{name} forward")
    key = f"topdiff/{p.top[0]}"
    top[0].diff[...] = expected[key if key in expected else f"diff/{p.top[0]}"]
    for b in bottom:
        b.diff[...] = np.nan
    backward(top, [True] * len(bottom), bottom)
    for b, key in zip(bottom, bottom_diff_keys):
        if key is not None:
            assert_close(b.diff, expected[key], DIFF_TOL, f"{name} bottom diff ({key})")
    for i, blob in enumerate(layer.blobs):
        assert_close(blob.diff, expected[f"grad/{name}/{i}"], DIFF_TOL, f"{name} gradient {i}")
    return layer


def test_deconvolutions_match_the_caffe_fixture():
    assert check_golden_layers("deconv_crop", "Deconvolution") == 3


def test_fcn_small_upscore_matches_the_caffe_fixture():
    check_fixture_layer("fcn_small", "upscore", ["diff/score"])


def test_im2col_matches_the_caffe_fixture():
    # That net has no loss and no force_backward: Caffe ran no backward, so
    # only the forward is Caffe's (backward: the gradient checks here).
    check_fixture_layer("structure_more", "i2c", [None])


# ---- Im2col -----------------------------------------------------------------

def im2col_layer(settings, name="layer"):
    return make_layer("Im2col", settings, name=name, fillers="")


def direct_im2col(x, kernel, pad, stride, dilation):
    """Reference: top[n, (c*kh + i)*kw + j, y, x] = x[n, c, y*s + i*d - p, x*s + j*d - p]."""
    n, c, h, w = x.shape
    (kh, kw), (ph, pw), (sh, sw), (dh, dw) = kernel, pad, stride, dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, c * kh * kw, ho, wo), x.dtype)
    for ch, i, j, y, xx in itertools.product(range(c), range(kh), range(kw), range(ho), range(wo)):
        r, q = y * sh + i * dh - ph, xx * sw + j * dw - pw
        if 0 <= r < h and 0 <= q < w:
            out[:, (ch * kh + i) * kw + j, y, xx] = x[:, ch, r, q]
    return out


IM2COL_CASES = {
    # settings, input shape, kernel, pad, stride, dilation
    "plain": ("kernel_size: 3 stride: 2", (2, 3, 6, 5), (3, 3), (0, 0), (2, 2), (1, 1)),
    "pad": ("kernel_size: 2 pad: 1", (2, 2, 3, 4), (2, 2), (1, 1), (1, 1), (1, 1)),
    "rect_dilation": ("kernel_h: 2 kernel_w: 3 pad_h: 0 pad_w: 1 dilation: 2 "
                      "stride_h: 1 stride_w: 2", (3, 2, 5, 6), (2, 3), (0, 1), (1, 2), (2, 2)),
    "one_image": ("kernel_size: 2 stride: 1 pad: 1", (1, 3, 3, 3), (2, 2), (1, 1), (1, 1), (1, 1)),
}


@pytest.mark.parametrize("case", sorted(IM2COL_CASES))
def test_im2col_forward_and_gradient(case):
    settings, shape, *geometry = IM2COL_CASES[case]
    layer = im2col_layer(settings)
    bottom, top = [random_blob(shape)], [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, direct_im2col(bottom[0].data, *geometry))
    if shape[0] * shape[1] * shape[2] * shape[3] <= 60:
        assert check_gradient(layer, bottom, top, setup=False) > 0
    else:       # im2col is linear: backward is the adjoint, <dy, im2col x> = <col2im dy, x>
        dy = np.random.default_rng(1).uniform(-1, 1, top[0].shape).astype(np.float32)
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        np.testing.assert_allclose(np.vdot(dy, top[0].data), np.vdot(bottom[0].diff,
                                                                      bottom[0].data), rtol=1e-4)


def test_im2col_caffe_setup_shape():
    # Caffe's Im2colLayerTest.TestSetup: dilation 3 widens the 3x3 window to 7x7.
    layer, top = im2col_layer("kernel_size: 3 stride: 2 dilation: 3"), [Blob()]
    layer.setup([Blob((2, 3, 10, 9))], top)
    assert top[0].shape == (2, 27, 2, 2)


def test_im2col_channel_axis_after_leading_axes():
    # axis 2: axes 0 and 1 both count images.
    layer = create_layer(layer_param('name: "i" type: "Im2col" convolution_param '
                                     '{ kernel_size: 2 pad: 1 axis: 2 }'), caffe_pb2.TEST)
    bottom, top = [random_blob((2, 3, 2, 3, 2))], [Blob()]
    layer.setup(bottom, top)
    assert top[0].shape == (2, 3, 8, 4, 3)
    layer.forward(bottom, top)
    expected = direct_im2col(bottom[0].data.reshape(6, 2, 3, 2), (2, 2), (1, 1), (1, 1), (1, 1))
    np.testing.assert_array_equal(top[0].data.reshape(expected.shape), expected)
    assert check_gradient(layer, bottom, top, setup=False) > 0


@pytest.mark.parametrize("settings, shape, message", [
    ("kernel_size: 4", (1, 1, 3, 3), "kernel extent"),
    ("kernel_size: 2", (2, 3, 4), "2 spatial axes"),
    ("kernel_size: 2 axis: 4", (2, 3, 4, 4), "axis 4 out of range"),
])
def test_im2col_errors_name_the_layer(settings, shape, message):
    with pytest.raises(LayerError, match=f"'layer' \\(Im2col\\).*{message}"):
        im2col_layer(settings).setup([Blob(shape)], [Blob()])
