"""AbsVal, BNLL, Clip, ELU, Exp, Log, Power, PReLU, Swish and Threshold:
closed forms, numerical gradients, in-place use, Caffe's CHECKs, and BVLC
Caffe's output (activations_more and losses_more fixtures)."""
import numpy as np
import pytest
from google.protobuf import text_format

import sppcaffe
from golden_util import DATA_TOL, DIFF_TOL, assert_close, golden_layers, load_expected
from gradient_check import check_gradient, check_overwrite_and_accumulate, layer_param
from sppcaffe.blob import Blob
from sppcaffe.layer import LayerError, create_layer
from sppcaffe.proto import caffe_pb2


def make_layer(text):
    return create_layer(layer_param(f'name: "neuron" {text}'), caffe_pb2.TEST)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def prelu(slopes):
    """Reference PReLU over (N, C, ...) with one slope per channel (or a scalar)."""
    def f(x):
        a = np.reshape(slopes, (1, -1) + (1,) * (x.ndim - 2)) if np.ndim(slopes) else slopes
        return np.where(x > 0, x, a * x)
    return f


class Case:
    """A layer definition, its closed form (float64), the input range it is
    defined on, and points where it is not differentiable."""

    def __init__(self, text, reference, low=-2.0, high=2.0, kinks=()):
        self.text, self.reference = text, reference
        self.low, self.high, self.kinks = low, high, kinks

    def layer(self):
        return make_layer(self.text)

    def inputs(self, shape, seed):
        """Random inputs in range, kept 0.05 away from the kinks, so finite
        differences (step 0.01) never straddle one."""
        x = np.random.default_rng(seed).uniform(self.low, self.high, shape)
        for k in self.kinks:
            near = np.abs(x - k) < 0.05
            x[near] = k + np.where(x[near] >= k, 0.05, -0.05)
        return x.astype(np.float32)


CASES = {
    "absval": Case('type: "AbsVal"', np.abs, kinks=(0,)),
    "bnll": Case('type: "BNLL"', lambda x: np.logaddexp(0, x), -5, 5),
    "clip": Case('type: "Clip" clip_param { min: -0.5 max: 0.7 }',
                 lambda x: np.clip(x, -0.5, 0.7), kinks=(-0.5, 0.7)),
    "elu": Case('type: "ELU"', lambda x: np.where(x > 0, x, np.expm1(x))),
    "elu_0.7": Case('type: "ELU" elu_param { alpha: 0.7 }',
                    lambda x: np.where(x > 0, x, 0.7 * np.expm1(x)), kinks=(0,)),
    "elu_negative": Case('type: "ELU" elu_param { alpha: -0.4 }',
                         lambda x: np.where(x > 0, x, -0.4 * np.expm1(x)), kinks=(0,)),
    "exp": Case('type: "Exp"', np.exp),
    "exp_base2": Case('type: "Exp" exp_param { base: 2 }', lambda x: 2.0 ** x),
    "exp_scale_shift": Case('type: "Exp" exp_param { scale: 0.5 shift: -0.2 }',
                            lambda x: np.exp(0.5 * x - 0.2)),
    "exp_all": Case('type: "Exp" exp_param { base: 3 scale: -0.7 shift: 0.4 }',
                    lambda x: 3.0 ** (0.4 - 0.7 * x)),
    "log": Case('type: "Log"', np.log, 0.3, 3),
    "log_base10": Case('type: "Log" log_param { base: 10 scale: 2 shift: 0.5 }',
                       lambda x: np.log10(2 * x + 0.5), 0.1, 3),
    "log_negative_scale": Case('type: "Log" log_param { base: 2 scale: -1 shift: 4 }',
                               lambda x: np.log2(4 - x), -2, 3),
    "power_identity": Case('type: "Power"', lambda x: x),
    "power_affine": Case('type: "Power" power_param { scale: -2 shift: 3 }', lambda x: 3 - 2 * x),
    "power_square": Case('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }',
                         lambda x: (0.5 * x + 1) ** 2),
    "power_cube_unshifted": Case('type: "Power" power_param { power: 3 scale: 2 }',
                                 lambda x: (2 * x) ** 3),
    "power_fractional": Case('type: "Power" power_param { power: 1.5 scale: 2 shift: 0.1 }',
                             lambda x: (2 * x + 0.1) ** 1.5, 0.1, 2),
    "power_negative": Case('type: "Power" power_param { power: -0.5 shift: 2 }',
                           lambda x: (x + 2) ** -0.5, -1, 2),
    "power_zero": Case('type: "Power" power_param { power: 0 scale: 3 shift: 2 }',
                       lambda x: np.ones_like(x)),
    "power_zero_scale": Case('type: "Power" power_param { power: 3 scale: 0 shift: 2 }',
                             lambda x: np.full_like(x, 8.0)),
    "prelu": Case('type: "PReLU"', prelu(0.25), kinks=(0,)),
    "prelu_shared": Case('type: "PReLU" prelu_param { channel_shared: true }', prelu(0.25),
                         kinks=(0,)),
    "prelu_filler": Case('type: "PReLU" prelu_param { filler { type: "constant" value: -0.6 } }',
                         prelu(-0.6), kinks=(0,)),
    "swish": Case('type: "Swish"', lambda x: x * sigmoid(x), -4, 4),
    "swish_1.5": Case('type: "Swish" swish_param { beta: 1.5 }', lambda x: x * sigmoid(1.5 * x),
                      -4, 4),
    "swish_0": Case('type: "Swish" swish_param { beta: 0 }', lambda x: x / 2),
    "threshold": Case('type: "Threshold" threshold_param { threshold: 0.3 }',
                      lambda x: (x > 0.3).astype(np.float64)),
    "threshold_default": Case('type: "Threshold"', lambda x: (x > 0).astype(np.float64)),
}
WITH_BACKWARD = [name for name in CASES if not name.startswith("threshold")]
IN_PLACE = [name for name in CASES if name != "absval"]     # Caffe's AbsVal forbids it
SHAPES = [(2, 3, 4), (3, 5)]


def blob_of(values):
    b = Blob(values.shape)
    b.data[...] = values
    return b


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 6)])
def test_forward_matches_closed_form(name, shape):
    case = CASES[name]
    bottom, top = blob_of(case.inputs(shape, seed=1)), Blob()
    layer = case.layer()
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    assert top.shape == shape
    expected = case.reference(bottom.data.astype(np.float64))
    np.testing.assert_allclose(top.data, expected, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("name", WITH_BACKWARD)
@pytest.mark.parametrize("shape", SHAPES)
def test_gradient(name, shape):
    case = CASES[name]
    bottom = [blob_of(case.inputs(shape, seed=2))]
    checked = check_gradient(case.layer(), bottom, [Blob()])
    assert checked >= bottom[0].count


@pytest.mark.parametrize("name", WITH_BACKWARD)
def test_backward_overwrites_bottom_diff_and_accumulates_params(name):
    case = CASES[name]
    layer, bottom, top = case.layer(), [blob_of(case.inputs((2, 3, 4), seed=3))], [Blob()]
    layer.setup(bottom, top)
    check_overwrite_and_accumulate(layer, bottom, top)


def run_twice(case, x, dy, in_place):
    """Forward and backward once, with top == bottom or not: (top data,
    bottom diff, param diffs)."""
    layer = case.layer()
    bottom = blob_of(x)
    top = bottom if in_place else Blob()
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    y = top.data.copy()
    top.diff[...] = dy
    for p in layer.blobs:
        p.diff[...] = 0
    layer.backward([top], [True], [bottom])
    return y, bottom.diff.copy(), [p.diff.copy() for p in layer.blobs]


@pytest.mark.parametrize("name", [n for n in IN_PLACE if n in WITH_BACKWARD])
@pytest.mark.parametrize("shape", SHAPES)
def test_in_place_equals_out_of_place(name, shape):
    """Also the layers whose backward reads the input (they keep a copy of
    it when in place; Caffe's BNLL, Clip, Log and Power read the output)."""
    case = CASES[name]
    x = case.inputs(shape, seed=4)
    dy = np.random.default_rng(5).uniform(-1, 1, shape).astype(np.float32)
    separate, in_place = run_twice(case, x, dy, False), run_twice(case, x, dy, True)
    np.testing.assert_array_equal(in_place[0], separate[0])
    np.testing.assert_array_equal(in_place[1], separate[1])
    for a, b in zip(in_place[2], separate[2]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["threshold", "threshold_default"])
def test_threshold_in_place(name):
    case = CASES[name]
    x = case.inputs((3, 4), seed=6)
    blob = blob_of(x)
    layer = case.layer()
    layer.setup([blob], [blob])
    layer.forward([blob], [blob])
    np.testing.assert_array_equal(blob.data, case.reference(x.astype(np.float64)))


@pytest.mark.parametrize("name", WITH_BACKWARD)
def test_backward_respects_propagate_down(name):
    case = CASES[name]
    layer, bottom, top = case.layer(), blob_of(case.inputs((3, 2), seed=7)), Blob()
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    bottom.diff[...] = 5
    top.diff[...] = 1
    layer.backward([top], [False], [bottom])
    assert np.all(bottom.diff == 5)


# ---- Caffe's CHECKs and special cases ------------------------------------------------
def test_absval_refuses_in_place():
    blob = Blob((2, 3))
    with pytest.raises(LayerError, match="'neuron'.*in-place"):
        make_layer('type: "AbsVal"').setup([blob], [blob])


def test_absval_gradient_is_zero_at_zero():
    bottom, top = blob_of(np.array([-2, 0, 3], np.float32)), Blob()
    layer = make_layer('type: "AbsVal"')
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    top.diff[...] = 1
    layer.backward([top], [True], [bottom])
    np.testing.assert_array_equal(bottom.diff, [-1, 0, 1])


@pytest.mark.parametrize("kind", ["Exp", "Log"])
@pytest.mark.parametrize("base", [0, -2, -0.5])
def test_base_must_be_positive_or_minus_one(kind, base):
    layer = make_layer(f'type: "{kind}" {kind.lower()}_param {{ base: {base} }}')
    with pytest.raises(LayerError, match="'neuron'.*base must be strictly positive"):
        layer.setup([Blob((2, 2))], [Blob()])


def test_log_base_one_has_no_finite_scale():
    layer = make_layer('type: "Log" log_param { base: 1 }')
    with pytest.raises(LayerError, match="'neuron'.*infinite"):
        layer.setup([Blob((2, 2))], [Blob()])


def test_exp_base_one_is_the_constant_base_to_the_shift():
    case = Case('type: "Exp" exp_param { base: 1 scale: 3 shift: 2 }', np.ones_like)
    bottom, top = blob_of(case.inputs((5,), 0)), Blob()
    layer = case.layer()
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    np.testing.assert_array_equal(top.data, 1)
    top.diff[...] = 1
    layer.backward([top], [True], [bottom])
    np.testing.assert_array_equal(bottom.diff, 0)


@pytest.mark.parametrize("text", ['power: 0 scale: 3', 'power: 2 scale: 0 shift: 1'])
def test_power_constant_gradient_is_zero_even_for_nonfinite_top_diff(text):
    layer, bottom, top = make_layer(f'type: "Power" power_param {{ {text} }}'), Blob((4,)), Blob()
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    top.diff[...] = [np.inf, np.nan, 1, -1]
    layer.backward([top], [True], [bottom])
    np.testing.assert_array_equal(bottom.diff, 0)


def test_power_unshifted_gradient_is_power_y_over_x():
    """Caffe's shift-0 form, power * y / x: undefined at x = 0, as in Caffe."""
    layer = make_layer('type: "Power" power_param { power: 3 scale: 2 }')
    bottom, top = blob_of(np.array([0.0, 1.0, -2.0], np.float32)), Blob()
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    top.diff[...] = 1
    layer.backward([top], [True], [bottom])
    assert np.isnan(bottom.diff[0])
    np.testing.assert_allclose(bottom.diff[1:], [24, 96])


def test_bnll_is_finite_for_large_inputs():
    layer, top = make_layer('type: "BNLL"'), Blob()
    bottom = blob_of(np.float32([-200, -60, 60, 200]))
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    np.testing.assert_allclose(top.data, [0, np.exp(-60), 60, 200], rtol=1e-6)
    top.diff[...] = 1
    layer.backward([top], [True], [bottom])
    # kBNLL_THRESHOLD caps the exponent at 50: e^50 / (e^50 + 1) is 1 in float.
    np.testing.assert_allclose(bottom.diff, [0, np.exp(-60), 1, 1], rtol=1e-6, atol=0)


def test_clip_gradient_passes_at_both_bounds():
    layer = make_layer('type: "Clip" clip_param { min: -0.5 max: 0.7 }')
    bottom, top = blob_of(np.float32([-0.6, -0.5, 0.0, 0.7, 0.8])), Blob()
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    np.testing.assert_array_equal(top.data, np.float32([-0.5, -0.5, 0, 0.7, 0.7]))
    top.diff[...] = 2
    layer.backward([top], [True], [bottom])
    np.testing.assert_array_equal(bottom.diff, [0, 2, 2, 2, 0])


def test_threshold_has_no_backward():
    layer, bottom, top = make_layer('type: "Threshold"'), Blob((2, 3)), Blob()
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    bottom.diff[...] = 4
    layer.backward([top], [False], [bottom])         # nothing asked: nothing done
    assert np.all(bottom.diff == 4)
    with pytest.raises(LayerError, match="'neuron'.*no backward"):
        layer.backward([top], [True], [bottom])


def test_threshold_in_a_net_that_needs_no_gradient_through_it():
    net_text = """
      layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
      layer { name: "thr" type: "Threshold" bottom: "x" top: "thr" }
    """
    net = sppcaffe.Net(text_format.Parse(net_text, caffe_pb2.NetParameter()), sppcaffe.TEST)
    out = net.forward(x=np.float32([[-1, 0, 1], [2, -3, 0.5]]))
    np.testing.assert_array_equal(out["thr"], [[0, 0, 1], [1, 0, 1]])
    net.backward()


# ---- PReLU ---------------------------------------------------------------------------
def prelu_layer(text=""):
    return make_layer(f'type: "PReLU" {text}')


@pytest.mark.parametrize("shared, shape", [(False, (3,)), (True, ())])
def test_prelu_slopes_default_to_a_quarter(shared, shape):
    layer = prelu_layer(f'prelu_param {{ channel_shared: {str(shared).lower()} }}')
    layer.setup([Blob((2, 3, 4))], [Blob()])
    assert len(layer.blobs) == 1 and layer.blobs[0].shape == shape
    np.testing.assert_array_equal(layer.blobs[0].data, np.float32(0.25))


def test_prelu_filler_fills_the_slopes():
    layer = prelu_layer('prelu_param { filler { type: "uniform" min: 0.5 max: 0.6 } }')
    layer.setup([Blob((2, 7, 3))], [Blob()])
    slopes = layer.blobs[0].data
    assert slopes.shape == (7,) and np.all((slopes >= 0.5) & (slopes <= 0.6))
    assert len(np.unique(slopes)) > 1


def test_prelu_uses_per_channel_slopes_on_axis_1():
    layer = prelu_layer()
    x = -np.ones((2, 3, 2, 2), np.float32)
    bottom, top = blob_of(x), Blob()
    layer.setup([bottom], [top])
    layer.blobs[0].data[...] = [0.1, 0.2, 0.3]
    layer.forward([bottom], [top])
    np.testing.assert_allclose(top.data[:, :, 0, 0], [[-0.1, -0.2, -0.3]] * 2)
    top.diff[...] = 2
    layer.blobs[0].diff[...] = 0
    layer.backward([top], [True], [bottom])
    np.testing.assert_allclose(bottom.diff[:, :, 1, 1], [[0.2, 0.4, 0.6]] * 2)
    # d/da = sum over batch and space of dy * min(x, 0): 2 * 4 * (2 * -1).
    np.testing.assert_allclose(layer.blobs[0].diff, [-16, -16, -16])


@pytest.mark.parametrize("text", ["", "prelu_param { channel_shared: true }"])
def test_prelu_slope_gradient_on_random_slopes(text):
    layer, bottom = prelu_layer(text), [blob_of(CASES["prelu"].inputs((2, 3, 2, 2), seed=8))]
    layer.setup(bottom, [Blob()])
    layer.blobs[0].data[...] = np.random.default_rng(9).uniform(-0.5, 0.5, layer.blobs[0].shape)
    assert check_gradient(layer, bottom, [Blob()], setup=False) > 0


def test_prelu_respects_param_propagate_down():
    layer, bottom, top = prelu_layer(), blob_of(CASES["prelu"].inputs((2, 3, 4), 1)), Blob()
    layer.setup([bottom], [top])
    layer.param_propagate_down = [False]
    layer.forward([bottom], [top])
    layer.blobs[0].diff[...] = 7
    top.diff[...] = 1
    layer.backward([top], [True], [bottom])
    np.testing.assert_array_equal(layer.blobs[0].diff, 7)
    assert np.all(np.isfinite(bottom.diff))


@pytest.mark.parametrize("shape", [(5,), ()])
def test_prelu_needs_two_axes(shape):
    with pytest.raises(LayerError, match="'neuron'.*at least 2 axes"):
        prelu_layer().setup([Blob(shape)], [Blob()])


@pytest.mark.parametrize("text, slopes", [("", (4,)), ("", ()),
                                          ("prelu_param { channel_shared: true }", (3,))])
def test_prelu_slope_count_must_match(text, slopes):
    layer = prelu_layer(text)
    layer.blobs.append(Blob(slopes))
    with pytest.raises(LayerError, match="'neuron'.*inconsistent"):
        layer.setup([Blob((2, 3, 4))], [Blob()])


def test_prelu_keeps_given_slopes():
    layer = prelu_layer()
    layer.blobs.append(blob_of(np.float32([1, 2, 3])))
    layer.setup([Blob((2, 3))], [Blob()])
    np.testing.assert_array_equal(layer.blobs[0].data, [1, 2, 3])


def test_prelu_reshape_to_other_channels_is_an_error():
    layer, bottom, top = prelu_layer(), Blob((2, 3, 4)), Blob()
    layer.setup([bottom], [top])
    bottom.reshape(2, 5, 4)
    with pytest.raises(LayerError, match="'neuron'.*channels"):
        layer.reshape([bottom], [top])


@pytest.mark.parametrize("force_backward", [False, True])
def test_prelu_learns_in_a_net(force_backward):
    """lr_mult 0 freezes a slope, unless force_backward, which (as in Caffe)
    makes every layer compute every gradient."""
    net_text = f"""
      force_backward: {str(force_backward).lower()}
      layer {{ name: "x" type: "Input" top: "x"
              input_param {{ shape {{ dim: 2 dim: 3 dim: 2 }} }} }}
      layer {{ name: "a" type: "PReLU" bottom: "x" top: "a" }}
      layer {{ name: "b" type: "PReLU" bottom: "a" top: "b" param {{ lr_mult: 0 }}
              loss_weight: 1 }}
    """
    net = sppcaffe.Net(text_format.Parse(net_text, caffe_pb2.NetParameter()), sppcaffe.TEST)
    assert [b.shape for b in net.learnable_params] == [(3,), (3,)]
    net.forward(x=-np.ones((2, 3, 2), np.float32))
    net.blobs["x"].diff[...] = 9
    net.backward()                  # the loss weight 1 is b's top diff
    # d/da of layer a: the top diff 0.25 (b's slope) times x = -1 over 2 x 2 values.
    np.testing.assert_allclose(net.params["a"][0].diff, 0.25 * -4)
    # d/db: the top diff 1 times b's input -0.25 over 4 values.
    np.testing.assert_allclose(net.params["b"][0].diff, -1.0 if force_backward else 0.0)
    np.testing.assert_allclose(net.blobs["x"].diff, 0.25 * 0.25 if force_backward else 9)


# ---- BVLC Caffe ----------------------------------------------------------------------
def golden_neuron_layers(case, names=None):
    """(layer parameter, weights, bottom name, name of its bottom-diff share) for
    each neuron layer of a fixture."""
    net, weights = golden_layers(case)
    readers = {}
    found = []
    for p in net.layer:
        for b in p.bottom:
            readers.setdefault(b, []).append(p.name)
        if p.type in ("Input", "Eltwise") or (names and p.name not in names):
            continue
        b = p.bottom[0]
        found.append((p, weights.get(p.name, []), b, readers[b]))
    return found, readers


ACTIVATIONS_MORE = ["prelu", "prelu_s", "elu", "abs", "pow", "pow3", "exp", "exp2", "log", "bnll",
                    "swish", "clip"]


@pytest.mark.parametrize("name", ACTIVATIONS_MORE)
def test_matches_caffe(name):
    expected = load_expected("activations_more")
    found, readers = golden_neuron_layers("activations_more", [name])
    (p, weights, source, _), = found
    layer = create_layer(p, caffe_pb2.TEST)
    bottom, top = blob_of(expected[f"input/{source}"]), Blob()
    layer.setup([bottom], [top])
    for blob, array in zip(layer.blobs, weights, strict=True):
        blob.data[...] = array.reshape(blob.shape)      # the shared slope: 0 axes
    layer.forward([bottom], [top])
    assert_close(top.data, expected[f"data/{name}"], DATA_TOL, f"{name} forward")
    top.diff[...] = expected[f"diff/{name}"]
    layer.backward([top], [True], [bottom])
    share = f"diff/{source}_{source}_0_split_{readers[source].index(name)}"
    assert_close(bottom.diff, expected[share], DIFF_TOL, f"{name} bottom diff")
    for i, blob in enumerate(layer.blobs):
        assert_close(blob.data, expected[f"param/{name}/{i}"], DATA_TOL, f"{name} param {i}")
        assert_close(blob.diff, expected[f"grad/{name}/{i}"], DIFF_TOL, f"{name} gradient {i}")


def test_threshold_matches_caffe():
    expected = load_expected("losses_more")
    (p, _, source, _), = golden_neuron_layers("losses_more", ["thr"])[0]
    layer = create_layer(p, caffe_pb2.TEST)
    bottom, top = blob_of(expected[f"input/{source}"]), Blob()
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    np.testing.assert_array_equal(top.data, expected["data/thr"])


def test_prelu_shared_slope_round_trips_through_a_caffemodel():
    """A 0-axis shared slope is read back as 0-axis, also from a proto with
    no shape at all, which is how Caffe writes it."""
    net_text = """
      layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
      layer { name: "a" type: "PReLU" bottom: "x" top: "a" prelu_param { channel_shared: true } }
    """
    param = text_format.Parse(net_text, caffe_pb2.NetParameter())
    net = sppcaffe.Net(param, sppcaffe.TEST)
    net.params["a"][0].data[...] = -0.75
    saved = net.to_proto()
    shapeless = caffe_pb2.NetParameter()
    shapeless.CopyFrom(saved)
    shapeless.layer[1].blobs[0].ClearField("shape")
    for weights in (saved, shapeless):
        other = sppcaffe.Net(param, sppcaffe.TEST)
        other.copy_from(weights)
        assert other.params["a"][0].shape == ()
        np.testing.assert_array_equal(other.params["a"][0].data, np.float32(-0.75))
