"""Convolution layer and the im2col helpers: Caffe's parameter and shape
rules, forward against a direct loop convolution, gradients, and the BVLC
fixture tests/golden/conv."""
import numpy as np
import pytest

import sppcaffe.im2col as im2col_module
from golden_util import check_golden_layers
from gradient_check import check_gradient, check_overwrite_and_accumulate, layer_param
from sppcaffe.blob import Blob
from sppcaffe.im2col import Geometry, col2im, im2col
from sppcaffe.layer import LayerError, create_layer
from sppcaffe.proto import caffe_pb2

FILLERS = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'


def conv_layer(settings, name="conv"):
    text = f'name: "{name}" type: "Convolution" convolution_param {{ {settings} {FILLERS} }}'
    return create_layer(layer_param(text), caffe_pb2.TRAIN)


def random_blob(shape, seed=0):
    blob = Blob(shape)
    blob.data[...] = np.random.default_rng(seed).uniform(-1, 1, size=shape)
    return blob


def setup(settings, shape, seed=0):
    layer = conv_layer(settings)
    bottom, top = [random_blob(shape, seed)], [Blob()]
    layer.setup(bottom, top)
    return layer, bottom, top


def direct_conv(x, w, b, pad, stride, dilation, group):
    """Reference: Caffe's definition written as plain loops over outputs."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (ph, pw), (sh, sw), (dh, dw) = pad, stride, dilation
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (wd + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    y = np.zeros((n, o, ho, wo))
    og = o // group
    for oc in range(o):
        g = oc // og
        for yy in range(ho):
            for xx in range(wo):
                patch = xp[:, g * cg:(g + 1) * cg,
                           yy * sh:yy * sh + dh * (kh - 1) + 1:dh,
                           xx * sw:xx * sw + dw * (kw - 1) + 1:dw]
                y[:, oc, yy, xx] = np.sum(patch * w[oc], axis=(1, 2, 3))
        if b is not None:
            y[:, oc] += b[oc]
    return y


# (settings, input shape, pad, stride, dilation, group)
CASES = {
    "plain": ("num_output: 3 kernel_size: 3", (2, 3, 6, 5), (0, 0), (1, 1), (1, 1), 1),
    "pad": ("num_output: 3 kernel_size: 3 pad: 1", (2, 3, 5, 6), (1, 1), (1, 1), (1, 1), 1),
    "stride": ("num_output: 2 kernel_size: 3 stride: 2 pad: 1", (2, 2, 7, 6),
               (1, 1), (2, 2), (1, 1), 1),
    "rect": ("num_output: 2 kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 2 stride_h: 1 stride_w: 3",
             (2, 2, 5, 7), (1, 2), (1, 3), (1, 1), 1),
    "repeated_hw": ("num_output: 2 kernel_size: 2 kernel_size: 3 pad: 0 pad: 1 "
                    "stride: 2 stride: 1", (1, 3, 6, 5), (0, 1), (2, 1), (1, 1), 1),
    "dilation2": ("num_output: 2 kernel_size: 3 dilation: 2 pad: 1", (2, 2, 7, 7),
                  (1, 1), (1, 1), (2, 2), 1),
    "dilation_hw": ("num_output: 2 kernel_size: 2 dilation: 1 dilation: 3", (1, 2, 5, 8),
                    (0, 0), (1, 1), (1, 3), 1),
    "group2": ("num_output: 4 kernel_size: 3 group: 2 pad: 1", (2, 4, 5, 5),
               (1, 1), (1, 1), (1, 1), 2),
    "no_bias": ("num_output: 3 kernel_size: 2 bias_term: false", (2, 3, 4, 5),
                (0, 0), (1, 1), (1, 1), 1),
    "1x1": ("num_output: 4 kernel_size: 1", (2, 3, 4, 5), (0, 0), (1, 1), (1, 1), 1),
    "1x1_group": ("num_output: 4 kernel_size: 1 group: 2 bias_term: false", (2, 4, 3, 3),
                  (0, 0), (1, 1), (1, 1), 2),
    "1x1_stride2": ("num_output: 2 kernel_size: 1 stride: 2", (2, 3, 5, 5),
                    (0, 0), (2, 2), (1, 1), 1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_matches_direct_convolution(case):
    settings, shape, pad, stride, dilation, group = CASES[case]
    layer, bottom, top = setup(settings, shape)
    layer.forward(bottom, top)
    bias = layer.blobs[1].data if len(layer.blobs) > 1 else None
    expected = direct_conv(bottom[0].data.astype(np.float64), layer.blobs[0].data, bias,
                           pad, stride, dilation, group)
    assert top[0].shape == expected.shape
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient(case):
    settings, shape = CASES[case][:2]
    layer = conv_layer(settings)
    bottom, top = [random_blob(shape, seed=1)], [Blob()]
    assert check_gradient(layer, bottom, top) > 0


# ---- shapes and parameters -----------------------------------------------

@pytest.mark.parametrize("settings, shape, top_shape", [
    # (in + 2 pad - (dilation (k - 1) + 1)) / stride + 1, rounded down.
    ("num_output: 96 kernel_size: 7 stride: 2 pad: 1", (1, 3, 224, 224), (1, 96, 110, 110)),
    ("num_output: 8 kernel_size: 5 stride: 2", (2, 4, 55, 55), (2, 8, 26, 26)),
    ("num_output: 8 kernel_size: 3 stride: 2", (1, 4, 8, 8), (1, 8, 3, 3)),
    ("num_output: 5 kernel_size: 3 dilation: 3 pad: 1 stride: 2", (1, 2, 9, 10), (1, 5, 3, 3)),
    ("num_output: 2 kernel_h: 1 kernel_w: 4 stride_h: 3 stride_w: 1", (3, 1, 7, 4),
     (3, 2, 3, 1)),
])
def test_output_shape(settings, shape, top_shape):
    layer, _, top = setup(settings, shape)
    assert top[0].shape == top_shape


def test_parameter_shapes_and_fillers():
    layer = create_layer(layer_param(
        'name: "c" type: "Convolution" convolution_param { num_output: 6 kernel_h: 3 kernel_w: 2 '
        'group: 3 weight_filler { type: "constant" value: 0.5 } '
        'bias_filler { type: "constant" value: -2 } }'), caffe_pb2.TRAIN)
    layer.setup([Blob((1, 9, 5, 5))], [Blob()])
    assert [b.shape for b in layer.blobs] == [(6, 3, 3, 2), (6,)]
    assert np.all(layer.blobs[0].data == 0.5) and np.all(layer.blobs[1].data == -2)
    layer, _, _ = setup("num_output: 2 kernel_size: 3 bias_term: false", (1, 1, 3, 3))
    assert [b.shape for b in layer.blobs] == [(2, 1, 3, 3)]


def test_preset_parameters_are_kept_and_checked():
    layer = conv_layer("num_output: 2 kernel_size: 1")
    weights, bias = Blob((2, 3, 1, 1)), Blob((2,))
    weights.data[...] = 3.0
    layer.blobs = [weights, bias]
    layer.setup([Blob((1, 3, 2, 2))], [Blob()])
    assert layer.blobs[0] is weights and np.all(weights.data == 3.0)
    bad = conv_layer("num_output: 2 kernel_size: 3", name="preset")
    bad.blobs = [Blob((2, 3, 1, 1)), Blob((2,))]
    with pytest.raises(LayerError, match="preset"):
        bad.setup([Blob((1, 3, 4, 4))], [Blob()])


def test_reshape_follows_batch_and_spatial_size():
    layer, bottom, top = setup("num_output: 3 kernel_size: 3 stride: 2 pad: 1", (2, 2, 9, 9))
    data = top[0].data
    layer.reshape(bottom, top)
    assert top[0].data is data          # unchanged shape: nothing reallocated
    for shape in [(5, 2, 4, 11), (1, 2, 9, 9)]:
        bottom[0].reshape(shape)
        bottom[0].data[...] = np.random.default_rng(3).uniform(-1, 1, size=shape)
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        expected = direct_conv(bottom[0].data.astype(np.float64), layer.blobs[0].data,
                               layer.blobs[1].data, (1, 1), (2, 2), (1, 1), 1)
        np.testing.assert_allclose(top[0].data, expected, rtol=1e-5, atol=1e-5)


def test_backward_overwrites_bottom_and_accumulates_parameters():
    # The second backward (no forward) must recompute the columns that the
    # first one overwrote with the column gradient.
    layer, bottom, top = setup("num_output: 3 kernel_size: 3 pad: 1 stride: 2", (2, 2, 6, 6))
    check_overwrite_and_accumulate(layer, bottom, top)


def test_backward_skips_what_is_not_wanted():
    layer, bottom, top = setup("num_output: 3 kernel_size: 2", (2, 2, 4, 4))
    layer.forward(bottom, top)
    top[0].diff[...] = 1.0
    bottom[0].diff[...] = 7.0
    layer.param_propagate_down = [False, True]
    layer.backward(top, [False], bottom)
    assert np.all(bottom[0].diff == 7.0)
    assert np.all(layer.blobs[0].diff == 0)
    np.testing.assert_allclose(layer.blobs[1].diff, np.full(3, 2 * 3 * 3))


def test_several_bottoms_share_the_weights():
    layer = conv_layer("num_output: 2 kernel_size: 3 pad: 1")
    bottom = [random_blob((2, 3, 5, 4), seed) for seed in (1, 2)]
    top = [Blob(), Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    for b, t in zip(bottom, top):
        expected = direct_conv(b.data.astype(np.float64), layer.blobs[0].data,
                               layer.blobs[1].data, (1, 1), (1, 1), (1, 1), 1)
        np.testing.assert_allclose(t.data, expected, rtol=1e-5, atol=1e-5)
    assert check_gradient(layer, bottom, top, setup=False) > 0


# ---- errors ---------------------------------------------------------------

@pytest.mark.parametrize("settings, shape, message", [
    ("num_output: 4 kernel_size: 3 group: 2", (1, 3, 5, 5), "group"),
    ("num_output: 3 kernel_size: 3 group: 2", (1, 4, 5, 5), "group"),
    ("num_output: 4 kernel_size: 5", (1, 3, 4, 6), "larger than the padded input"),
    ("num_output: 4 kernel_size: 3 dilation: 3", (1, 3, 6, 9), "larger than the padded input"),
    ("num_output: 4 kernel_size: 3 axis: 2", (1, 3, 6, 6), "axis"),
    ("num_output: 4 kernel_size: 3", (1, 3, 6, 6, 6), "2-D"),
    ("num_output: 4 kernel_size: 3", (3, 6, 6), "2-D"),
    ("num_output: 4 kernel_size: 3 kernel_h: 3 kernel_w: 3", (1, 3, 6, 6), "not both"),
    ("num_output: 4", (1, 3, 6, 6), "kernel_size"),
    ("num_output: 4 kernel_size: 1 kernel_size: 2 kernel_size: 3", (1, 3, 6, 6), "once"),
    ("num_output: 4 kernel_h: 3", (1, 3, 6, 6), "kernel must be positive"),
    ("num_output: 4 kernel_size: 3 stride: 0", (1, 3, 6, 6), "stride"),
    ("num_output: 0 kernel_size: 3", (1, 3, 6, 6), "num_output"),
])
def test_bad_definition_is_reported_with_the_layer_name(settings, shape, message):
    layer = conv_layer(settings, name="bad_conv")
    with pytest.raises(LayerError, match=message) as info:
        layer.setup([Blob(shape)], [Blob()])
    assert "bad_conv" in str(info.value)


@pytest.mark.parametrize("shape, message", [
    ((1, 3, 2, 8), "larger than the padded input"),
    ((1, 4, 8, 8), "channels"),
])
def test_bad_input_on_reshape_names_the_layer(shape, message):
    layer = conv_layer("num_output: 2 kernel_size: 3", name="late")
    bottom, top = [Blob((1, 3, 8, 8))], [Blob()]
    layer.setup(bottom, top)
    bottom[0].reshape(shape)
    with pytest.raises(LayerError, match=message) as info:
        layer.reshape(bottom, top)
    assert "late" in str(info.value)


# ---- im2col / col2im --------------------------------------------------------

GEOMETRIES = [
    Geometry((3, 3)),
    Geometry((3, 2), pad=(1, 2), stride=(2, 1)),
    Geometry((2, 3), pad=(1, 0), stride=(1, 2), dilation=(2, 2)),
    Geometry((1, 1)),
]


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_im2col_layout(geom):
    x = np.random.default_rng(0).uniform(-1, 1, size=(2, 3, 6, 7)).astype(np.float32)
    col = im2col(x, geom)
    (kh, kw), (ph, pw), (sh, sw), (dh, dw) = geom
    ho, wo = geom.output_size(6, 7)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    assert col.shape == (3 * kh * kw, 2 * ho * wo)
    for c, i, j, n, y, z in [(0, 0, 0, 0, 0, 0), (2, kh - 1, kw - 1, 1, ho - 1, wo - 1),
                             (1, kh // 2, 0, 1, ho // 2, wo - 1)]:
        row = (c * kh + i) * kw + j
        column = (n * ho + y) * wo + z
        assert col[row, column] == xp[n, c, y * sh + i * dh, z * sw + j * dw]


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_col2im_is_the_adjoint_of_im2col(geom):
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(2, 3, 6, 7)).astype(np.float32)
    col = im2col(x, geom)
    c = rng.uniform(-1, 1, size=col.shape).astype(np.float32)
    back = col2im(c, geom, np.full(x.shape, 9.0, np.float32))
    np.testing.assert_allclose(np.vdot(col.astype(np.float64), c),
                               np.vdot(x.astype(np.float64), back), rtol=1e-5)


@pytest.mark.parametrize("shape", [(4, 2, 40, 40), (1, 6, 40, 40)])   # split by image / channel
def test_threaded_split_matches_one_thread(monkeypatch, shape):
    geom = Geometry((3, 3), pad=(1, 1), stride=(2, 2))
    x = np.random.default_rng(2).uniform(-1, 1, size=shape).astype(np.float32)
    monkeypatch.setattr(im2col_module, "_MIN_PARALLEL_ELEMENTS", 1)
    monkeypatch.setattr(im2col_module, "_WORKERS", 3)
    col = im2col(x, geom)
    back = col2im(col, geom, np.empty_like(x))
    monkeypatch.setattr(im2col_module, "_WORKERS", 1)
    np.testing.assert_array_equal(col, im2col(x, geom))
    np.testing.assert_array_equal(back, col2im(col, geom, np.empty_like(x)))


def test_buffers_are_reused():
    geom = Geometry((3, 3), pad=(1, 1))
    x = np.ones((2, 2, 5, 5), np.float32)
    col = im2col(x, geom)
    padded = np.full((2, 2, 7, 7), 5.0, np.float32)     # stale contents must not leak
    assert im2col(x, geom, col, padded) is col
    np.testing.assert_array_equal(col, im2col(x, geom))


# ---- BVLC fixture -----------------------------------------------------------

def test_golden_conv():
    assert check_golden_layers("conv", "Convolution") == 4


# ---- training in chunks of images -----------------------------------------------

WIDE_CASES = [                         # more than stack_rows column rows: the batch-wide way
    "num_output: 6 kernel_size: 3 pad: 1",
    "num_output: 4 kernel_size: 3 stride: 2 dilation: 2 pad: 2",
    "num_output: 6 kernel_h: 3 kernel_w: 4 group: 2 pad_h: 1",
]


def images_of_columns(layer, images):
    """cache_column_bytes that hold `images` images' columns, not one more."""
    n, k, p, _ = layer._sizes()
    return 4 * k * p * images + 1


def chunk_in_training(monkeypatch, layer, images):
    """Chunks of `images` images in training, however narrow."""
    monkeypatch.setattr(layer, "cache_column_bytes", images_of_columns(layer, images))
    monkeypatch.setattr(layer, "min_chunk_columns", 1)


def train_pass(layer, bottom, top, seed=4):
    layer.forward(bottom, top)
    top[0].diff[...] = np.random.default_rng(seed).uniform(-1, 1, top[0].shape)
    for p in layer.blobs:
        p.diff[...] = 0
    layer.backward(top, [True], bottom)
    return top[0].data.copy(), bottom[0].diff.copy(), [p.diff.copy() for p in layer.blobs]


@pytest.mark.parametrize("images", [1, 2])        # 5 images: chunks 1,1,1,1,1 or 2,2,1
@pytest.mark.parametrize("settings", WIDE_CASES)
def test_training_in_chunks_matches_the_batch_wide_way(monkeypatch, settings, images):
    """Where an image's columns fit the cache, forward and backward run a
    chunk of images at a time, on threads: the same results as the
    batch-wide way (the weight gradient summed chunk by chunk), and the
    columns kept from forward stay valid through backward."""
    shape = (5, 16, 9, 7)
    results, weights = [], None
    for chunked in (True, False):
        layer, bottom, top = setup(settings, shape, seed=3)
        assert layer._col_groups[0].stop > layer.stack_rows
        weights = weights or [p.data.copy() for p in layer.blobs]
        for p, value in zip(layer.blobs, weights):
            p.data[...] = value
        monkeypatch.setattr(layer, "chunked_training", chunked)
        chunk_in_training(monkeypatch, layer, images)
        assert bool(layer._kept_step()) == chunked
        results.append(train_pass(layer, bottom, top))
        assert layer._col_valid[0] == chunked
    (y, dx, dp), (y2, dx2, dp2) = results
    np.testing.assert_allclose(y, y2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx2, rtol=1e-5, atol=1e-5)
    for a, b in zip(dp, dp2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("settings", WIDE_CASES[:2])
def test_training_in_chunks_gives_the_same_bits_on_any_thread_count(monkeypatch, settings):
    """The chunks are fixed by the shape and the weight-gradient terms are
    added in chunk order: one thread or two, the same bits, also when
    backward has to redo the columns (something else ran forward)."""
    from threadpoolctl import threadpool_limits

    def arrays(result):
        return [a for part in result for a in (part if isinstance(part, list) else [part])]
    passes, redone, weights = [], [], None
    for limit in (1, 2, 2):
        layer, bottom, top = setup(settings, (7, 16, 9, 7), seed=5)
        weights = weights or [p.data.copy() for p in layer.blobs]
        for p, value in zip(layer.blobs, weights):
            p.data[...] = value
        chunk_in_training(monkeypatch, layer, 2)
        with threadpool_limits(limit):
            for _ in range(6):                     # past the chooser's trials: both ways run
                passes.append(arrays(train_pass(layer, bottom, top)))
            layer._col_valid[0] = False            # backward recomputes the columns
            layer.backward(top, [True], bottom)
            redone.append(arrays((bottom[0].diff.copy(), [p.diff.copy() for p in layer.blobs])))
    for result in passes + redone:
        expected = passes[0] if len(result) == len(passes[0]) else redone[0]
        assert all(np.array_equal(a, b) for a, b in zip(result, expected))
    # The redone backward added to the gradients of the pass before it.
    assert not np.array_equal(redone[0][1], passes[0][2])


@pytest.mark.parametrize("bottoms", [1, 2])          # two bottoms: columns kept for each
@pytest.mark.parametrize("settings", WIDE_CASES)
def test_gradient_when_training_in_chunks(monkeypatch, settings, bottoms):
    layer = conv_layer(settings)
    bottom = [random_blob((3, 16, 6, 5), seed=1 + k) for k in range(bottoms)]
    top = [Blob() for _ in range(bottoms)]
    layer.setup(bottom, top)
    chunk_in_training(monkeypatch, layer, 1)
    assert layer._kept_step() == 1
    assert check_gradient(layer, bottom, top) > 0


def test_narrow_chunks_train_batch_wide():
    """Chunks of fewer output columns than min_chunk_columns (products too
    narrow for the BLAS) leave training to the batch-wide way; LeNet's conv2
    (8 images of 64 columns a chunk) runs in chunks."""
    for settings, shape, step in (("num_output: 32 kernel_size: 5 pad: 2", (100, 32, 16, 16), 0),
                                  ("num_output: 50 kernel_size: 5", (64, 20, 12, 12), 8)):
        layer, bottom, top = setup(settings, shape)
        assert layer._kept_step() == step
