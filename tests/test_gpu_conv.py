"""Convolution's device code (kernels/im2col.cu, ConvolutionLayer.*_gpu)
against its host code: geometry options, groups, the 1x1 path, the batch
split into im2col chunks, and which gradients backward computes."""
import numpy as np
import pytest

from gpu_check import compare_cpu_gpu
from gradient_check import layer_param
from sppcaffe import backends
from sppcaffe.backends import gpu
from sppcaffe.blob import Blob
from sppcaffe.im2col import Geometry, col2im, column_shape, im2col
from sppcaffe.layer import create_layer
from sppcaffe.proto import caffe_pb2

FILLERS = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'

# settings, input shape
CASES = {
    "plain": ("num_output: 3 kernel_size: 3", (2, 3, 6, 5)),
    "pad": ("num_output: 3 kernel_size: 3 pad: 1", (2, 3, 5, 6)),
    "stride_pad": ("num_output: 2 kernel_size: 3 stride: 2 pad: 1", (3, 2, 7, 6)),
    "stride_over_kernel": ("num_output: 2 kernel_size: 2 stride: 3", (2, 2, 8, 7)),
    "rect": ("num_output: 2 kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 2 stride_h: 1 stride_w: 3",
             (2, 2, 5, 7)),
    "dilation": ("num_output: 2 kernel_size: 3 dilation: 2 pad: 1", (2, 2, 7, 7)),
    "dilation_hw_stride": ("num_output: 2 kernel_size: 2 dilation: 1 dilation: 3 stride: 2",
                           (2, 2, 6, 9)),
    "group2": ("num_output: 4 kernel_size: 3 group: 2 pad: 1", (2, 4, 5, 5)),
    "group3_no_bias": ("num_output: 6 kernel_size: 2 group: 3 bias_term: false", (2, 3, 4, 5)),
    "1x1": ("num_output: 4 kernel_size: 1", (2, 3, 4, 5)),
    "1x1_group": ("num_output: 4 kernel_size: 1 group: 2", (3, 4, 3, 3)),
    "1x1_stride2": ("num_output: 2 kernel_size: 1 stride: 2", (2, 3, 5, 5)),
    "1x1_pad": ("num_output: 2 kernel_size: 1 pad: 1", (2, 2, 3, 4)),
}


def conv_layer(settings):
    text = f'name: "conv" type: "Convolution" convolution_param {{ {settings} {FILLERS} }}'
    return create_layer(layer_param(text), caffe_pb2.TRAIN)


@pytest.mark.parametrize("chunked", [False, True], ids=["whole_batch", "one_image_chunks"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_device_matches_host(gpu_device, case, chunked):
    settings, shape = CASES[case]
    layer = conv_layer(settings)
    if chunked:
        layer.gpu_column_bytes = 1          # one image per im2col chunk
    compare_cpu_gpu(layer, [Blob(shape)], [Blob()])


def test_chunks_of_several_images_with_a_short_last_one(gpu_device):
    layer = conv_layer("num_output: 3 kernel_size: 3 pad: 1 stride: 2 group: 1")
    bottom = [Blob((5, 2, 6, 6))]
    layer.setup(bottom, [Blob()])
    k, p, o = 2 * 9, 3 * 3, 3
    layer.gpu_column_bytes = 4 * (k + o) * p * 2       # two images per chunk: 2 + 2 + 1
    assert layer._chunks(layer._chunk()) == [(0, 2), (2, 4), (4, 5)]
    compare_cpu_gpu(layer, bottom, [Blob()], setup=False)


@pytest.mark.parametrize("propagate_down", [[True, False], [False, True], [False, False]])
@pytest.mark.parametrize("params", [[True, True], [False, True], [True, False], [False, False]],
                         ids=["w_b", "b_only", "w_only", "none"])
@pytest.mark.parametrize("case", ["group2", "1x1"])
def test_backward_computes_only_what_is_wanted(gpu_device, case, propagate_down, params):
    settings, shape = CASES[case]
    layer = conv_layer(settings)
    bottom, top = [Blob(shape), Blob(shape)], [Blob(), Blob()]
    layer.setup(bottom, top)
    layer.param_propagate_down = params             # what lr_mult 0 does in a net
    _, grads, param_grads = compare_cpu_gpu(layer, bottom, top, propagate_down=propagate_down,
                                            setup=False)
    for wanted, grad in zip(params, param_grads):
        assert np.any(grad != 0) == wanted          # skipped gradients stay untouched (0)
    for wanted, grad in zip(propagate_down, grads):
        assert (grad is not None) == wanted


def test_forward_only(gpu_device):
    compare_cpu_gpu(conv_layer(CASES["dilation"][0]), [Blob(CASES["dilation"][1])], [Blob()],
                    propagate_down=None)


@pytest.mark.parametrize("case", ["pad", "1x1_group"])
def test_two_backward_passes_accumulate_parameter_gradients(gpu_device, case):
    # The second pass must redo im2col: the first one's column gradient
    # overwrote the columns forward left behind.
    settings, shape = CASES[case]
    layer = conv_layer(settings)
    bottom, top = [Blob(shape)], [Blob()]
    layer.setup(bottom, top)
    rng = np.random.default_rng(3)
    bottom[0].data[...] = rng.uniform(-1, 1, shape)
    top[0].diff[...] = rng.uniform(-1, 1, top[0].shape)
    expected = []
    for mode in ("cpu", "gpu"):
        getattr(backends, f"set_mode_{mode}")()
        for p in layer.blobs:
            p.diff[...] = 0
        forward, backward = ((layer.forward, layer.backward) if mode == "cpu"
                             else (layer.forward_gpu, layer.backward_gpu))
        forward(bottom, top)
        backward(top, [True], bottom)
        backward(top, [True], bottom)
        expected.append([p.diff.copy() for p in layer.blobs] + [bottom[0].diff.copy()])
    for host, device in zip(*expected):
        np.testing.assert_allclose(device, host, rtol=1e-4, atol=1e-5)


def test_new_input_shape_is_planned_again(gpu_device):
    layer = conv_layer(CASES["stride_pad"][0])
    bottom, top = [Blob((2, 2, 7, 6))], [Blob()]
    compare_cpu_gpu(layer, bottom, top)
    bottom[0].reshape(4, 2, 9, 5)
    layer.reshape(bottom, top)
    compare_cpu_gpu(layer, bottom, top, setup=False, seed=1)


# ---- the kernels on their own ----------------------------------------------------
GEOMETRIES = [
    Geometry(kernel=(3, 3)),
    Geometry(kernel=(3, 2), pad=(1, 2), stride=(2, 3)),
    Geometry(kernel=(2, 3), pad=(1, 0), stride=(1, 2), dilation=(2, 1)),
    Geometry(kernel=(1, 1), stride=(3, 2)),            # pixels no window reaches
]


def _launch(name, geom, x_shape, src, dst, lo, hi):
    n, c, h, w = x_shape
    ho, wo = geom.output_size(h, w)
    count = (c * (hi - lo) * ho * wo) if name == "im2col_batch" else (hi - lo) * c * h * w
    image = c * h * w
    offset = 4 * lo * image
    args = (hi - lo, c, h, w, *geom.kernel, *geom.pad, *geom.stride, *geom.dilation, ho, wo)
    if name == "im2col_batch":
        gpu.kernel(name)(count, count, src + offset, *args, dst)
    else:
        gpu.kernel(name)(count, count, src, *args, dst + offset)


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_im2col_and_col2im_kernels_match_the_host_layout(gpu_device, geom):
    shape = (3, 2, 6, 7)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    workspace = gpu.Workspace()
    image = workspace.floats("x", x.size)
    gpu_device.upload(image, x)
    # Images 1..2 only: the kernels see a chunk starting inside the batch.
    expected = im2col(x[1:], geom)
    col = workspace.floats("col", expected.size)
    _launch("im2col_batch", geom, shape, image, col, 1, 3)
    got = np.empty(expected.shape, np.float32)
    gpu_device.download(col, got)
    np.testing.assert_array_equal(got, expected)

    columns = rng.uniform(-1, 1, expected.shape).astype(np.float32)
    gpu_device.upload(col, columns)
    gpu_device.upload(image, np.full(x.shape, np.nan, np.float32))
    _launch("col2im_batch", geom, shape, col, image, 1, 3)
    back = np.empty(shape, np.float32)
    gpu_device.download(image, back)
    assert np.isnan(back[0]).all()                      # outside the chunk: untouched
    np.testing.assert_allclose(back[1:], col2im(columns, geom, np.empty_like(x[1:])),
                               rtol=1e-5, atol=1e-6)
    assert column_shape(x[1:].shape, geom) == expected.shape
