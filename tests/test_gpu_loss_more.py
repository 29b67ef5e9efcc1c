"""Device code of SigmoidCrossEntropyLoss, HingeLoss, MultinomialLogisticLoss,
InfogainLoss, ContrastiveLoss and SmoothL1Loss (kernels/loss_more.cu)
against the host code, and the losses_more fixture in GPU mode."""
import numpy as np
import pytest

from gpu_check import compare_cpu_gpu
from gradient_check import layer_param
from sppcaffe.blob import Blob
from sppcaffe.layer import LayerError, create_layer
from sppcaffe.proto import caffe_pb2
from test_loss_layers_more import GOLDEN_LAYERS, run_golden_layer

NORMALIZATIONS = ["VALID", "FULL", "BATCH_SIZE", "NONE"]


def make_layer(text):
    return create_layer(layer_param(f'name: "L" {text}'), caffe_pb2.TEST)


def blobs(*arrays):
    out = []
    for a in arrays:
        a = np.asarray(a, np.float32)
        b = Blob(a.shape)
        b.data[...] = a
        out.append(b)
    return out


def compare(layer, bottom, propagate_down, num_top=1):
    # The random top diff compare_cpu_gpu sets is the loss weight.
    return compare_cpu_gpu(layer, bottom, [Blob() for _ in range(num_top)],
                           propagate_down=propagate_down, randomize=False, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", GOLDEN_LAYERS)
def test_layer_matches_caffe_on_device(gpu_device, name):
    run_golden_layer(name, on_device=True)


# ---- SigmoidCrossEntropyLoss ---------------------------------------------------------
def sce_inputs(shape, seed=0, ignore=None):
    rng = np.random.default_rng(seed)
    target = rng.uniform(0, 1, shape)
    if ignore is not None:
        target[rng.uniform(size=shape) < 0.3] = ignore
    return blobs(rng.uniform(-4, 4, shape), target)


@pytest.mark.parametrize("normalization", NORMALIZATIONS + ["normalize: true", "normalize: false",
                                                            None])
@pytest.mark.parametrize("ignore", [None, -1])
def test_sigmoid_cross_entropy_matches_host(gpu_device, normalization, ignore):
    fields = [] if normalization is None else \
        [normalization if ":" in normalization else f"normalization: {normalization}"]
    if ignore is not None:
        fields.append(f"ignore_label: {ignore}")
    layer = make_layer(f'type: "SigmoidCrossEntropyLoss" loss_param {{ {" ".join(fields)} }}')
    compare(layer, sce_inputs((3, 2, 4), ignore=ignore), [True, False])


def test_sigmoid_cross_entropy_all_ignored_is_zero(gpu_device):
    layer = make_layer('type: "SigmoidCrossEntropyLoss" '
                       'loss_param { ignore_label: -1 normalization: VALID }')
    bottom, top = sce_inputs((2, 3)), [Blob()]
    bottom[1].data[...] = -1
    layer.setup(bottom, top)
    layer.forward_gpu(bottom, top)
    assert top[0].data[()] == 0
    top[0].diff[...] = 1
    layer.backward_gpu(top, [True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 0)


# ---- HingeLoss -----------------------------------------------------------------------
def labelled(shape, seed=0, low=-2, high=2):
    rng = np.random.default_rng(seed)
    dim = int(np.prod(shape[1:]))
    return blobs(rng.uniform(low, high, shape), rng.integers(0, dim, shape[0]))


@pytest.mark.parametrize("norm", ["L1", "L2"])
@pytest.mark.parametrize("shape", [(5, 4), (3, 2, 2, 2)])
def test_hinge_loss_matches_host(gpu_device, norm, shape):
    layer = make_layer(f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}')
    compare(layer, labelled(shape), [True, False])


def test_hinge_loss_leaves_margins_in_the_bottom_diff(gpu_device):
    layer, bottom, top = make_layer('type: "HingeLoss"'), labelled((4, 3)), [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    host = bottom[0].diff.copy()
    bottom[0].diff[...] = 0
    layer.forward_gpu(bottom, top)
    np.testing.assert_allclose(bottom[0].diff, host, rtol=1e-6)


# ---- MultinomialLogisticLoss ---------------------------------------------------------
@pytest.mark.parametrize("shape", [(5, 4), (3, 6, 1, 1)])
def test_multinomial_logistic_matches_host(gpu_device, shape):
    bottom = labelled(shape, low=0.05, high=1)
    bottom[0].data[0, 0] = 0            # clamped to kLOG_THRESHOLD on both sides
    bottom[1].data[0] = 0
    compare(make_layer('type: "MultinomialLogisticLoss"'), bottom, [True, False])


@pytest.mark.parametrize("text", ['type: "MultinomialLogisticLoss"', 'type: "HingeLoss"'])
def test_out_of_range_label_gives_nan_not_a_crash(gpu_device, text):
    layer, bottom, top = make_layer(text), labelled((3, 4), low=0.1, high=1), [Blob()]
    layer.setup(bottom, top)
    bottom[1].data[1] = 4
    layer.forward_gpu(bottom, top)
    assert np.isnan(top[0].data[()])


# ---- InfogainLoss --------------------------------------------------------------------
def infogain_inputs(shape, axis, seed=0, ignore=None):
    rng = np.random.default_rng(seed)
    classes = shape[axis]
    label_shape = shape[:axis] + shape[axis + 1:]
    labels = rng.integers(0, classes, label_shape)
    if ignore is not None:
        labels[rng.uniform(size=label_shape) < 0.3] = ignore
    return blobs(rng.uniform(-3, 3, shape), labels, rng.uniform(0, 2, (1, 1, classes, classes)))


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("ignore", [None, 1])
@pytest.mark.parametrize("shape, axis", [((4, 5), 1), ((2, 3, 2, 2), 1), ((2, 3, 4), 2)])
def test_infogain_loss_matches_host(gpu_device, normalization, ignore, shape, axis):
    fields = f"normalization: {normalization}"
    if ignore is not None:
        fields += f" ignore_label: {ignore}"
    layer = make_layer(f'type: "InfogainLoss" loss_param {{ {fields} }} '
                       f'infogain_loss_param {{ axis: {axis} }}')
    compare(layer, infogain_inputs(shape, axis, ignore=ignore), [True, False, False], num_top=2)


def test_infogain_matrix_from_source_on_device(gpu_device, tmp_path):
    from sppcaffe import io
    x, labels, h = infogain_inputs((4, 3), 1)
    path = str(tmp_path / "H.binaryproto")
    io.write_blobproto(h.data, path)
    layer = make_layer(f'type: "InfogainLoss" infogain_loss_param {{ source: "{path}" }}')
    compare(layer, [x, labels], [True, False])


def test_infogain_refuses_label_and_matrix_gradients_on_device(gpu_device):
    layer, bottom, top = make_layer('type: "InfogainLoss"'), infogain_inputs((3, 4), 1), [Blob()]
    layer.setup(bottom, top)
    layer.forward_gpu(bottom, top)
    with pytest.raises(LayerError, match="cannot backpropagate to infogain inputs"):
        layer.backward_gpu(top, [True, False, True], bottom)
    with pytest.raises(LayerError, match="cannot backpropagate to label inputs"):
        layer.backward_gpu(top, [True, True, False], bottom)


# ---- ContrastiveLoss -----------------------------------------------------------------
@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("margin", [1.0, 4.0])
@pytest.mark.parametrize("down", [[True, True, False], [False, True, False], [True, False, True]])
def test_contrastive_loss_matches_host(gpu_device, legacy, margin, down):
    rng = np.random.default_rng(1)
    bottom = blobs(rng.normal(0, 0.7, (8, 5)), rng.normal(0, 0.7, (8, 5, 1, 1)),
                   rng.integers(0, 2, 8))
    layer = make_layer('type: "ContrastiveLoss" contrastive_loss_param '
                       f'{{ margin: {margin} legacy_version: {str(legacy).lower()} }}')
    compare(layer, bottom, down)


# ---- SmoothL1Loss --------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [1.0, 3.0, 0.5])
@pytest.mark.parametrize("weights", [0, 1, 2])          # none, inside only (Fast R-CNN), both
@pytest.mark.parametrize("down", [[True, True], [False, True]])
def test_smooth_l1_matches_host(gpu_device, sigma, weights, down):
    rng = np.random.default_rng(2)
    shape = (2, 8, 3, 2)
    bottom = blobs(rng.uniform(-3, 3, shape), rng.uniform(-3, 3, shape))
    bottom += blobs(*[rng.uniform(0, 2, shape) for _ in range(weights)])
    down = down + [False, True][:weights]
    layer = make_layer(f'type: "SmoothL1Loss" smooth_l1_loss_param {{ sigma: {sigma} }}')
    compare(layer, bottom, down)
