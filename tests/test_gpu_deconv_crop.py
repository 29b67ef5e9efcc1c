"""Device code of Deconvolution, Im2col (Convolution's kernels in
kernels/im2col.cu) and Crop (kernels/crop.cu) against their host code:
geometry options, groups, bias or none, the batch split into chunks,
which gradients backward computes, N-d crops, and the Im2col fixture."""
import numpy as np
import pytest

from gpu_check import compare_cpu_gpu
from gradient_check import layer_param
from sppcaffe.blob import Blob
from sppcaffe.layer import create_layer
from sppcaffe.proto import caffe_pb2
from test_deconv_layer import CASES as DECONV_CASES
from test_deconv_layer import IM2COL_CASES, check_fixture_layer, deconv_layer, im2col_layer


@pytest.mark.parametrize("chunked", [False, True], ids=["whole_batch", "one_image_chunks"])
@pytest.mark.parametrize("case", sorted(DECONV_CASES))
def test_deconvolution_device_matches_host(gpu_device, case, chunked):
    settings, shape = DECONV_CASES[case][:2]
    layer = deconv_layer(settings)
    if chunked:
        layer.gpu_column_bytes = 1          # one image per chunk
    compare_cpu_gpu(layer, [Blob(shape)], [Blob()])


def test_deconvolution_chunks_of_several_images_with_a_short_last_one(gpu_device):
    layer = deconv_layer("num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2")
    bottom = [Blob((5, 2, 3, 3))]
    layer.setup(bottom, [Blob()])
    k, c, p = 4 * 9, 2, 3 * 3
    layer.gpu_column_bytes = 4 * (k + c) * p * 2       # two images per chunk: 2 + 2 + 1
    assert layer._device_chunks()[1] == [(0, 2), (2, 4), (4, 5)]
    compare_cpu_gpu(layer, bottom, [Blob()], setup=False)


@pytest.mark.parametrize("propagate_down", [[True, False], [False, True], [False, False]])
@pytest.mark.parametrize("params", [[True, True], [False, True], [True, False], [False, False]],
                         ids=["w_b", "b_only", "w_only", "none"])
def test_deconvolution_backward_computes_only_what_is_wanted(gpu_device, propagate_down, params):
    settings, shape = DECONV_CASES["group2"][:2]
    layer = deconv_layer(settings)
    bottom, top = [Blob(shape), Blob(shape)], [Blob(), Blob()]
    layer.setup(bottom, top)
    layer.param_propagate_down = params             # what lr_mult 0 does in a net
    _, grads, param_grads = compare_cpu_gpu(layer, bottom, top, propagate_down=propagate_down,
                                            setup=False)
    for wanted, grad in zip(params, param_grads):
        assert np.any(grad != 0) == wanted          # skipped gradients stay untouched (0)
    for wanted, grad in zip(propagate_down, grads):
        assert (grad is not None) == wanted


def test_deconvolution_forward_only_and_new_input_shape(gpu_device):
    layer = deconv_layer(DECONV_CASES["dilation"][0])
    bottom, top = [Blob((2, 2, 3, 3))], [Blob()]
    compare_cpu_gpu(layer, bottom, top, propagate_down=None)
    bottom[0].reshape(3, 2, 4, 2)
    layer.reshape(bottom, top)
    compare_cpu_gpu(layer, bottom, top, setup=False, seed=1)


def test_deconvolution_bilinear_upsampling(gpu_device):
    layer = deconv_layer("num_output: 3 group: 3 kernel_size: 4 stride: 2 bias_term: false",
                         fillers='weight_filler { type: "bilinear" }')
    compare_cpu_gpu(layer, [Blob((2, 3, 4, 3))], [Blob()])


# ---- Im2col --------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(IM2COL_CASES))
def test_im2col_device_matches_host(gpu_device, case):
    settings, shape = IM2COL_CASES[case][:2]
    compare_cpu_gpu(im2col_layer(settings), [Blob(shape)], [Blob()], rtol=0, atol=1e-6)


def test_im2col_channel_axis_after_leading_axes_on_device(gpu_device):
    layer = create_layer(layer_param('name: "i" type: "Im2col" convolution_param '
                                     '{ kernel_size: 2 pad: 1 stride: 2 axis: 2 }'),
                         caffe_pb2.TEST)
    compare_cpu_gpu(layer, [Blob((2, 2, 3, 4, 3))], [Blob()])


def test_im2col_fixture_on_device(gpu_device):
    check_fixture_layer("structure_more", "i2c", [None], device=True)


def test_fcn_small_upscore_fixture_on_device(gpu_device):
    check_fixture_layer("fcn_small", "upscore", ["diff/score"], device=True)


# ---- Crop ------------------------------------------------------------------

CROPS = {
    "hw": ("offset: 1", (2, 3, 6, 5), (1, 1, 4, 3)),
    "hw_offsets": ("axis: 2 offset: 1 offset: 2", (2, 4, 5, 4), (2, 3, 4, 2)),
    "all_axes": ("axis: 0 offset: 0 offset: 1 offset: 1 offset: 2", (2, 4, 5, 4), (2, 3, 4, 2)),
    "channels": ("axis: 1 offset: 1 offset: 0 offset: 0", (2, 4, 3, 3), (1, 2, 3, 3)),
    "5d": ("axis: 2 offset: 1 offset: 2 offset: 0", (2, 3, 4, 5, 6), (2, 3, 3, 2, 4)),
    "1d": ("axis: 0 offset: 3", (9,), (4,)),
    "last_axis": ("axis: -1 offset: 2", (2, 3, 7), (1, 1, 4)),
    "nothing_cropped": ("axis: 1", (2, 3, 4), (5, 3, 4)),
}


def crop_layer(settings):
    return create_layer(layer_param(f'name: "crop" type: "Crop" crop_param {{ {settings} }}'),
                        caffe_pb2.TEST)


@pytest.mark.parametrize("propagate_down", [[True, False], [True, True]])
@pytest.mark.parametrize("case", sorted(CROPS))
def test_crop_device_matches_host(gpu_device, case, propagate_down):
    settings, shape, reference = CROPS[case]
    _, grads, _ = compare_cpu_gpu(crop_layer(settings), [Blob(shape), Blob(reference)],
                                  [Blob()], propagate_down=propagate_down, rtol=0, atol=0)
    if propagate_down[1]:
        assert not np.any(grads[1])


def test_crop_reuploads_its_table_when_the_shapes_change(gpu_device):
    layer = crop_layer("offset: 1")
    bottom, top = [Blob((2, 3, 6, 5)), Blob((1, 1, 4, 3))], [Blob()]
    compare_cpu_gpu(layer, bottom, top, propagate_down=[True, False], rtol=0, atol=0)
    bottom[0].reshape(1, 2, 7, 8)
    bottom[1].reshape(1, 1, 3, 5)
    layer.reshape(bottom, top)
    compare_cpu_gpu(layer, bottom, top, propagate_down=[True, False], setup=False, seed=2,
                    rtol=0, atol=0)
