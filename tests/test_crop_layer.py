"""Crop (sppcaffe/layers/crop.py): Caffe's axis and offset rules, N-d
windows against an index loop, the gradient (bottom[0] only, zeros outside
the window), errors naming the layer, and the BVLC fixture deconv_crop."""
import itertools

import numpy as np
import pytest

from golden_util import DATA_TOL, DIFF_TOL, assert_close, golden_layers, load_expected
from gradient_check import check_gradient, layer_param
from sppcaffe.blob import Blob
from sppcaffe.layer import LayerError, create_layer
from sppcaffe.proto import caffe_pb2


def crop_layer(settings="", name="crop"):
    return create_layer(layer_param(f'name: "{name}" type: "Crop" crop_param {{ {settings} }}'),
                        caffe_pb2.TEST)


def blobs(*shapes, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        b = Blob(shape)
        b.data[...] = rng.uniform(-1, 1, shape)
        out.append(b)
    return out


def loop_crop(x, top_shape, offsets):
    """Reference: top[i] = x[i + offsets], element by element."""
    out = np.empty(top_shape, x.dtype)
    for index in itertools.product(*map(range, top_shape)):
        out[index] = x[tuple(i + o for i, o in zip(index, offsets))]
    return out


# settings, bottom[0] shape, bottom[1] shape, top shape, offsets
CASES = {
    # Caffe's CropLayerTest blobs: bottom 2x4x5x4, reference 2x3x4x2.
    "default_axis": ("", (2, 4, 5, 4), (2, 3, 4, 2), (2, 4, 4, 2), (0, 0, 0, 0)),
    "all_axes": ("axis: 0", (2, 4, 5, 4), (2, 3, 4, 2), (2, 3, 4, 2), (0, 0, 0, 0)),
    "negative_axis": ("axis: -3 offset: 1", (2, 4, 5, 4), (2, 3, 4, 2), (2, 3, 4, 2),
                      (0, 1, 1, 1)),
    "all_offsets": ("axis: 0 offset: 0 offset: 1 offset: 1 offset: 2", (2, 4, 5, 4),
                    (2, 3, 4, 2), (2, 3, 4, 2), (0, 1, 1, 2)),
    "hw": ("axis: 2 offset: 1 offset: 2", (2, 4, 5, 4), (2, 3, 4, 2), (2, 4, 4, 2),
           (0, 0, 1, 2)),
    "one_offset_hw": ("offset: 1", (2, 3, 6, 5), (1, 1, 4, 3), (2, 3, 4, 3), (0, 0, 1, 1)),
    "5d": ("axis: 2 offset: 1 offset: 2 offset: 0", (2, 3, 4, 5, 6), (2, 3, 3, 2, 4),
           (2, 3, 3, 2, 4), (0, 0, 1, 2, 0)),
    "1d": ("axis: 0 offset: 3", (9,), (4,), (4,), (3,)),
    "last_axis_only": ("axis: -1 offset: 2", (2, 3, 7), (1, 1, 4), (2, 3, 4), (0, 0, 2)),
    "reference_with_more_axes": ("axis: 1 offset: 1", (3, 5), (1, 2, 7), (3, 2), (0, 1)),
    "nothing_cropped": ("axis: 1", (2, 3, 4), (5, 3, 4), (2, 3, 4), (0, 0, 0)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_takes_the_window(case):
    settings, shape, reference, top_shape, offsets = CASES[case]
    layer, bottom, top = crop_layer(settings), blobs(shape, reference), [Blob()]
    layer.setup(bottom, top)
    assert top[0].shape == top_shape
    assert layer.offsets == offsets
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, loop_crop(bottom[0].data, top_shape, offsets))


@pytest.mark.parametrize("case", sorted(CASES))
def test_backward_puts_the_diff_back_and_zeros_elsewhere(case):
    settings, shape, reference, top_shape, offsets = CASES[case]
    layer, bottom, top = crop_layer(settings), blobs(shape, reference), [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = np.random.default_rng(3).uniform(1, 2, top_shape)
    for b in bottom:
        b.diff[...] = np.nan
    layer.backward(top, [True, True], bottom)
    window = tuple(slice(o, o + k) for o, k in zip(offsets, top_shape))
    np.testing.assert_array_equal(bottom[0].diff[window], top[0].diff)
    assert np.count_nonzero(bottom[0].diff) == top[0].count
    # bottom[1] only gives a shape: no gradient reaches it.
    assert not np.any(bottom[1].diff)


@pytest.mark.parametrize("case", ["all_offsets", "hw", "5d", "1d"])
def test_gradient(case):
    settings, shape, reference = CASES[case][:3]
    if case == "5d":
        shape, reference = (1, 2, 3, 4, 3), (1, 2, 2, 2, 2)
    layer, bottom, top = crop_layer(settings), blobs(shape, reference), [Blob()]
    assert check_gradient(layer, bottom, top, check_bottom=[0]) > 0


def test_backward_to_bottom0_only_leaves_bottom1_alone():
    layer, bottom, top = crop_layer("offset: 1"), blobs((1, 2, 4, 4), (1, 2, 2, 2)), [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    bottom[1].diff[...] = 7
    layer.backward(top, [True, False], bottom)
    assert np.all(bottom[1].diff == 7) and bottom[0].diff.sum() == 8
    bottom[0].diff[...] = 5
    layer.backward(top, [False, False], bottom)
    assert np.all(bottom[0].diff == 5)


def test_reshape_follows_new_input_sizes():
    layer, bottom, top = crop_layer("offset: 2"), blobs((1, 2, 8, 8), (1, 1, 3, 4)), [Blob()]
    layer.setup(bottom, top)
    bottom[0].reshape(2, 3, 6, 9)
    bottom[1].reshape(1, 1, 4, 5)
    bottom[0].data[...] = np.arange(bottom[0].count).reshape(bottom[0].shape)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    assert top[0].shape == (2, 3, 4, 5)
    np.testing.assert_array_equal(top[0].data, bottom[0].data[:, :, 2:6, 2:7])


@pytest.mark.parametrize("settings, shapes, message", [
    # Caffe's CHECK_GE(bottom[0]->shape(i) - offset, bottom[1]->shape(i)).
    ("", ((2, 3, 4, 5), (2, 3, 5, 5)), "crop for axis 2 is out of bounds"),
    ("offset: 2", ((2, 3, 5, 5), (2, 3, 4, 4)), "crop for axis 2 is out of bounds"),
    ("axis: 1 offset: 0 offset: 0 offset: 3", ((1, 2, 4, 5), (1, 2, 4, 3)),
     "crop for axis 3 is out of bounds"),
    # One offset, or one per cropped axis.
    ("axis: 1 offset: 0 offset: 1", ((2, 3, 4, 5), (2, 3, 2, 2)), "2 offsets given for the 3"),
    ("offset: 0 offset: 1 offset: 1", ((2, 3, 4, 5), (2, 3, 2, 2)), "3 offsets given for the 2"),
    ("axis: 4", ((2, 3, 4, 5), (2, 3, 2, 2)), "axis 4 out of range"),
    ("axis: -5", ((2, 3, 4, 5), (2, 3, 2, 2)), "axis -5 out of range"),
    ("axis: 1", ((2, 3, 4, 5), (2, 3, 2)), "fewer axes"),
])
def test_invalid_crops_name_the_layer(settings, shapes, message):
    with pytest.raises(LayerError, match=f"'crop' \\(Crop\\).*{message}"):
        crop_layer(settings).setup([Blob(s) for s in shapes], [Blob()])


def test_takes_two_bottoms():
    with pytest.raises(LayerError, match="exactly 2 bottom"):
        crop_layer().setup([Blob((1, 1, 2, 2))], [Blob()])


def test_crops_match_the_caffe_fixture():
    net, _ = golden_layers("deconv_crop")
    expected = load_expected("deconv_crop")
    checked = 0
    for p in net.layer:
        if p.type != "Crop":
            continue
        layer, top = create_layer(p, caffe_pb2.TEST), [Blob()]
        bottom = [Blob(expected[f"data/{name}"].shape) for name in p.bottom]
        for b, name in zip(bottom, p.bottom):
            b.data[...] = expected[f"data/{name}"]
        layer.setup(bottom, top)
        layer.forward(bottom, top)
        assert_close(top[0].data, expected[f"data/{p.top[0]}"], DATA_TOL, p.name)
        top[0].diff[...] = expected[f"topdiff/{p.top[0]}"]
        layer.backward(top, [True, True], bottom)
        assert_close(bottom[0].diff, expected[f"diff/{p.bottom[0]}"], DIFF_TOL, p.name)
        # The reference's split copy of Caffe's run has a zero diff too.
        split = f"diff/ref_ref_0_split_{checked}"
        np.testing.assert_array_equal(bottom[1].diff, expected[split])
        checked += 1
    assert checked == 2
