"""ROIPooling's device code (kernels/roi_pooling.cu) against the host code:
rois over edges and outside the map, scales, batch indices, malformed
rois, ties (the same argmax, bit for bit) and the gather backward."""
import numpy as np
import pytest

from gpu_check import compare_cpu_gpu
from gradient_check import layer_param
from sppcaffe.blob import Blob
from sppcaffe.layer import LayerError, create_layer
from sppcaffe.proto import caffe_pb2


def roi_pooling(pooled_h, pooled_w, scale):
    text = (f'name: "roi_pool" type: "ROIPooling" roi_pooling_param {{ pooled_h: {pooled_h} '
            f'pooled_w: {pooled_w} spatial_scale: {scale} }}')
    return create_layer(layer_param(text), caffe_pb2.TRAIN)


def blobs(x, rois):
    bottom = [Blob(x.shape), Blob(np.shape(rois))]
    bottom[0].data[...] = x
    bottom[1].data[...] = rois
    return bottom


def random_rois(rng, count, batch, height, width, scale):
    rois = np.zeros((count, 5), np.float32)
    rois[:, 0] = rng.integers(0, batch, count)
    # Corners from a bit outside the map to past its far edge, in image
    # coordinates, on half units so some land exactly on .5 after scaling.
    corners = rng.uniform(-3, max(height, width) + 3, (count, 4)) / scale
    rois[:, 1:] = np.round(corners * 2) / 2
    return rois


CASES = [  # (map shape, pooled, scale)
    ((2, 3, 9, 11), (3, 3), 1.0),
    ((2, 2, 8, 6), (2, 4), 0.0625),
    ((1, 4, 5, 7), (6, 6), 0.5),            # more bins than cells
    ((3, 2, 7, 7), (1, 1), 0.3),
]


@pytest.mark.parametrize("shape, pooled, scale", CASES)
def test_device_code_matches_host(gpu_device, shape, pooled, scale):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    rois = random_rois(rng, 9, shape[0], shape[2], shape[3], scale)
    rois[0] = [shape[0] - 1, 0, 0, (shape[3] - 1) / scale, (shape[2] - 1) / scale]   # whole map
    rois[1, 3:] = rois[1, 1:3] - 2 / scale                                           # malformed
    rois[2, 1:] = [-40 / scale, -40 / scale, -20 / scale, -20 / scale]               # outside
    bottom = blobs(x, rois)
    layer = roi_pooling(*pooled, scale)
    compare_cpu_gpu(layer, bottom, [Blob()], propagate_down=[True, False], randomize=False)


def test_ties_pick_the_hosts_argmax(gpu_device):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 3, (2, 3, 8, 9)).astype(np.float32)
    rois = random_rois(rng, 8, 2, 8, 9, 0.5)
    layer = roi_pooling(3, 2, 0.5)
    bottom, top = blobs(x, rois), [Blob()]
    compare_cpu_gpu(layer, bottom, top, propagate_down=[True, False], randomize=False,
                    rtol=0, atol=1e-6)
    argmax = np.empty(top[0].shape, np.int32)
    gpu_device.download(layer._argmax_dev(top[0].count), argmax)
    np.testing.assert_array_equal(argmax, layer._argmax)


def test_overlapping_rois_sum_on_the_device(gpu_device):
    # The same roi three times and nested ones: one input cell collects the
    # gradient of many outputs (a gather, no atomics).
    x = np.zeros((1, 1, 6, 6), np.float32)
    x[0, 0, 2, 3] = 5
    rois = np.array([[0, 0, 0, 5, 5]] * 3 + [[0, 1, 1, 4, 4], [0, 2, 3, 2, 3]], np.float32)
    layer = roi_pooling(3, 3, 1.0)
    bottom, top = blobs(x, rois), [Blob()]
    got = compare_cpu_gpu(layer, bottom, top, propagate_down=[True, False], randomize=False)
    assert got[1][0][0, 0, 2, 3] != 0


def test_rois_diff_is_zeroed_on_the_device(gpu_device):
    layer = roi_pooling(2, 2, 1.0)
    bottom, top = blobs(np.ones((1, 1, 4, 4), np.float32), [[0, 0, 0, 3, 3]]), [Blob()]
    layer.setup(bottom, top)
    layer.forward_gpu(bottom, top)
    bottom[1].diff[...] = 7
    layer.backward_gpu(top, [False, True], bottom)
    assert not bottom[1].diff.any()


def test_bad_batch_index_is_an_error_on_the_device_too(gpu_device):
    layer = roi_pooling(2, 2, 1.0)
    bottom, top = blobs(np.ones((1, 1, 4, 4), np.float32), [[1, 0, 0, 3, 3]]), [Blob()]
    layer.setup(bottom, top)
    with pytest.raises(LayerError, match="batch index 1"):
        layer.forward_gpu(bottom, top)
