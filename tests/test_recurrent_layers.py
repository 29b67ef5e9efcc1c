"""RNN, LSTM and LSTMUnit against Caffe's equations (an independent float64
reference), Caffe's own tests (step-at-a-time forward, gradients with cont
markers and a static input), the parameter layout of Caffe's unrolled net,
the hidden-state rules (carried state, expose_hidden) and the BVLC fixture."""
import numpy as np
import pytest

import sppcaffe
from gradient_check import check_gradient, layer_param
from golden_util import DATA_TOL, assert_close, golden_layers, load_expected
from sppcaffe.blob import Blob
from sppcaffe.layer import LayerError, create_layer
from sppcaffe.proto import caffe_pb2

T, N, D = 3, 2, 3
X_SHAPE = (T, N, 2, 2)             # 4 input values per step and stream
STATIC_SHAPE = (N, 3)
CONT = [[0, 0], [1, 0], [1, 1]]    # every stream starts a sequence at t = 0
FILLERS = ('weight_filler { type: "uniform" min: -0.5 max: 0.5 } '
           'bias_filler { type: "uniform" min: -0.5 max: 0.5 }')


def make_layer(kind, extra="", num_output=D):
    text = (f'name: "{kind.lower()}" type: "{kind}" '
            f'recurrent_param {{ num_output: {num_output} {FILLERS} {extra} }}')
    return create_layer(layer_param(text), caffe_pb2.TEST)


def blob(values):
    values = np.asarray(values, np.float32)
    b = Blob(values.shape)
    b.data[...] = values
    return b


def inputs(kind, static=False, expose=False, cont=CONT, seed=0, n=N):
    """Bottoms in Caffe's order: x, cont, [x_static], [h0, (c0)]."""
    rng = np.random.default_rng(seed)
    bottom = [blob(rng.uniform(-1, 1, (T, n) + X_SHAPE[2:])), blob(cont)]
    if static:
        bottom.append(blob(rng.uniform(-1, 1, (n,) + STATIC_SHAPE[1:])))
    if expose:
        for _ in range(2 if kind == "LSTM" else 1):
            bottom.append(blob(rng.uniform(-1, 1, (1, n, D))))
    return bottom


def tops(kind, expose=False):
    return [Blob() for _ in range(1 + (2 if kind == "LSTM" else 1) * expose)]


def setup(kind, static=False, expose=False, cont=CONT, seed=0):
    layer = make_layer(kind, "expose_hidden: true" if expose else "")
    bottom, top = inputs(kind, static, expose, cont, seed), tops(kind, expose)
    layer.setup(bottom, top)
    return layer, bottom, top


# ---- independent reference (float64, Caffe's documented equations) ----------------
def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def reference(kind, layer, bottom):
    """(top, final h, final c) from h0/c0 = the exposed bottoms or zeros."""
    p = [b.data.astype(np.float64) for b in layer.blobs]
    static = layer.static_input
    x = bottom[0].data.reshape(T, bottom[0].shape[1], -1).astype(np.float64)
    cont = bottom[1].data.astype(np.float64)[:, :, None]
    n = x.shape[1]
    first = 3 if static else 2
    h = bottom[first].data[0].astype(np.float64) if len(bottom) > first else np.zeros((n, D))
    c = bottom[first + 1].data[0].astype(np.float64) if len(bottom) > first + 1 \
        else np.zeros((n, D))
    xs = bottom[2].data.reshape(n, -1).astype(np.float64) if static else None
    out = []
    if kind == "RNN":
        w_xh, b_h = p[0], p[1]
        w_s = p[2] if static else None
        w_hh, w_ho, b_o = p[-3:]
        for t in range(T):
            a = (cont[t] * h) @ w_hh.T + x[t] @ w_xh.T + b_h
            if static:
                a += xs @ w_s.T
            h = np.tanh(a)
            out.append(np.tanh(h @ w_ho.T + b_o))
    else:
        w_xc, b_c, w_hc = p[0], p[1], p[-1]
        for t in range(T):
            a = (cont[t] * h) @ w_hc.T + x[t] @ w_xc.T + b_c
            if static:
                a += xs @ p[2].T
            i, f, o = (sigmoid(a[:, k * D:(k + 1) * D]) for k in range(3))
            g = np.tanh(a[:, 3 * D:])
            c = cont[t] * f * c + i * g
            h = o * np.tanh(c)
            out.append(h)
    return np.stack(out), h, c


# ---- parameters and shapes ---------------------------------------------------------
@pytest.mark.parametrize("static", [False, True])
def test_rnn_parameters_in_caffe_order(static):
    layer, bottom, top = setup("RNN", static)
    shapes = [(D, 4), (D,)] + [(D, 3)] * static + [(D, D), (D, D), (D,)]
    assert [b.shape for b in layer.blobs] == shapes
    assert top[0].shape == (T, N, D)


@pytest.mark.parametrize("static", [False, True])
def test_lstm_parameters_in_caffe_order(static):
    layer, bottom, top = setup("LSTM", static)
    shapes = [(4 * D, 4), (4 * D,)] + [(4 * D, 3)] * static + [(4 * D, D)]
    assert [b.shape for b in layer.blobs] == shapes
    assert top[0].shape == (T, N, D)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_fillers(kind):
    layer = create_layer(layer_param(
        f'name: "r" type: "{kind}" recurrent_param {{ num_output: 2 '
        'weight_filler { type: "constant" value: 0.25 } '
        'bias_filler { type: "constant" value: -1 } }'), caffe_pb2.TEST)
    layer.setup(inputs(kind), tops(kind))
    for blob, expect in zip(layer.blobs, [0.25, -1, 0.25, 0.25, -1] if kind == "RNN"
                            else [0.25, -1, 0.25]):
        np.testing.assert_array_equal(blob.data, expect)


# ---- forward -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("expose", [False, True])
def test_forward_matches_reference(kind, static, expose):
    cont = [[1, 1], [1, 0], [1, 1]] if expose else CONT     # h0/c0 count from the first step
    layer, bottom, top = setup(kind, static, expose, cont)
    layer.forward(bottom, top)
    out, h, c = reference(kind, layer, bottom)
    np.testing.assert_allclose(top[0].data, out, rtol=1e-5, atol=1e-6)
    if expose:
        np.testing.assert_allclose(top[1].data[0], h, rtol=1e-5, atol=1e-6)
        if kind == "LSTM":
            np.testing.assert_allclose(top[2].data[0], c, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_one_step_at_a_time_carries_the_state(kind):
    """Caffe's TestForward: the whole sequence at once equals T one-step
    forwards of a layer whose state carries over; with every cont 0 only
    the first step agrees."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(X_SHAPE).astype(np.float32)
    cont = np.array([[0, 0], [1, 1], [1, 1]], np.float32)
    full = make_layer(kind)
    bottom, top = [blob(x), blob(cont)], [Blob()]
    full.setup(bottom, top)
    full.forward(bottom, top)
    whole = top[0].data.copy()

    stepper = make_layer(kind)
    step_bottom, step_top = [blob(x[:1]), blob(cont[:1])], [Blob()]
    stepper.setup(step_bottom, step_top)
    for blob_, param in zip(stepper.blobs, full.blobs):
        blob_.data[...] = param.data
    for flush in (False, True):
        stepper.reset()
        for t in range(T):
            step_bottom[0].data[...] = x[t:t + 1]
            step_bottom[1].data[...] = 0 if flush else cont[t:t + 1]
            stepper.forward(step_bottom, step_top)
            if t == 0 or not flush:
                np.testing.assert_allclose(step_top[0].data[0], whole[t], rtol=1e-5, atol=1e-6)
            else:
                assert not np.allclose(step_top[0].data[0], whole[t])


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_state_carries_over_between_forwards_unless_cont_is_zero(kind):
    cont = [[1, 1], [1, 1], [1, 1]]
    layer, bottom, top = setup(kind, cont=cont)
    layer.forward(bottom, top)
    first = top[0].data.copy()
    np.testing.assert_allclose(first, reference(kind, layer, bottom)[0], rtol=1e-5, atol=1e-6)
    layer.forward(bottom, top)              # starts from the previous final state
    assert not np.allclose(top[0].data, first)
    layer.reset()
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, first, rtol=1e-6)
    bottom[1].data[0] = 0                   # a new sequence: the carried state is flushed
    layer.forward(bottom, top)
    expected = top[0].data.copy()
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-6)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_batch_size_may_change(kind):
    layer, bottom, top = setup(kind, static=True)
    for n in (4, 1):
        new_bottom = inputs(kind, static=True, n=n, cont=np.zeros((T, n)))
        layer.reshape(new_bottom, top)
        assert top[0].shape == (T, n, D)
        layer.forward(new_bottom, top)
        np.testing.assert_allclose(top[0].data, reference(kind, layer, new_bottom)[0],
                                   rtol=1e-5, atol=1e-6)


# ---- backward ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
@pytest.mark.parametrize("static", [False, True])
def test_gradients(kind, static):
    layer, bottom, top = make_layer(kind), inputs(kind, static), tops(kind)
    checked = check_gradient(layer, bottom, top, check_bottom=[0, 2] if static else [0])
    assert checked == sum(b.count for b in [bottom[0]] + bottom[2:] + layer.blobs)


class OutputOnly:
    """A layer seen through its first top: the objective of a gradient check
    then ignores hT/cT, whose diffs Caffe's backward does not use."""

    def __init__(self, layer, extra_tops):
        self.layer, self.extra = layer, extra_tops
        self.name, self.blobs = layer.name, layer.blobs

    def setup(self, bottom, top):
        self.layer.setup(bottom, top + self.extra)

    def reshape(self, bottom, top):
        self.layer.reshape(bottom, top + self.extra)

    def forward(self, bottom, top):
        self.layer.forward(bottom, top + self.extra)

    def backward(self, top, propagate_down, bottom):
        self.layer.backward(top + self.extra, propagate_down, bottom)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_gradients_with_exposed_hidden_state(kind):
    """h0/c0 as inputs that matter (cont 1 at the first step): the gradients
    for x, x_static and the parameters still hold."""
    layer = OutputOnly(make_layer(kind, "expose_hidden: true"), tops(kind, True)[1:])
    bottom = inputs(kind, static=True, expose=True, cont=[[1, 1], [0, 1], [1, 1]])
    assert check_gradient(layer, bottom, [Blob()], check_bottom=[0, 2]) > 0


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_no_gradient_reaches_h0_c0_and_final_state_diffs_are_unused(kind):
    """Caffe's inner net shares only the data of h0/c0 and hT/cT: nothing
    flows back to the initial state, nothing from the final one."""
    layer, bottom, top = setup(kind, expose=True, cont=[[1, 1], [1, 1], [1, 1]])
    rng = np.random.default_rng(2)
    layer.forward(bottom, top)
    results = []
    for final_diff in (0.0, 1.0):
        top[0].diff[...] = rng.uniform(-1, 1, top[0].shape) if not results else results[0][0]
        for t in top[1:]:
            t.diff[...] = final_diff * rng.uniform(-1, 1, t.shape)
        for b in bottom + layer.blobs:
            b.diff[...] = np.nan if b in bottom[2:] else 0
        layer.backward(top, [True, False] + [True] * (len(bottom) - 2), bottom)
        for b in bottom[2:]:
            np.testing.assert_array_equal(b.diff, 0)
        results.append([top[0].diff.copy(), bottom[0].diff.copy()] +
                       [p.diff.copy() for p in layer.blobs])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_backward_overwrites_inputs_and_accumulates_parameters(kind):
    layer, bottom, top = setup(kind, static=True)
    layer.forward(bottom, top)
    top[0].diff[...] = np.random.default_rng(4).uniform(-1, 1, top[0].shape)
    for p in layer.blobs:
        p.diff[...] = 0
    layer.backward(top, [True, False, True], bottom)
    once = [bottom[0].diff.copy(), bottom[2].diff.copy()] + [p.diff.copy() for p in layer.blobs]
    bottom[0].diff[...] = 7
    bottom[2].diff[...] = 7
    layer.backward(top, [True, False, True], bottom)
    np.testing.assert_allclose(bottom[0].diff, once[0], rtol=1e-6)
    np.testing.assert_allclose(bottom[2].diff, once[1], rtol=1e-6)
    for p, first in zip(layer.blobs, once[2:]):
        np.testing.assert_allclose(p.diff, 2 * first, rtol=1e-6)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_no_backward_to_cont(kind):
    layer, bottom, top = setup(kind)
    layer.forward(bottom, top)
    assert not layer.allow_force_backward(1) and layer.allow_force_backward(0)
    with pytest.raises(LayerError, match="sequence indicators"):
        layer.backward(top, [True, True], bottom)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_in_a_net_with_force_backward(kind, tmp_path):
    """force_backward reaches x but not cont; the net runs backward."""
    path = tmp_path / "net.prototxt"
    path.write_text(f"""force_backward: true
layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: 3 dim: 2 dim: 4 }} }} }}
layer {{ name: "cont" type: "Input" top: "cont" input_param {{ shape {{ dim: 3 dim: 2 }} }} }}
layer {{ name: "r" type: "{kind}" bottom: "x" bottom: "cont" top: "r"
        recurrent_param {{ num_output: 3 {FILLERS} }} }}""")
    net = sppcaffe.Net(str(path), sppcaffe.TEST)
    net.forward(x=np.ones((3, 2, 4), np.float32), cont=np.array(CONT, np.float32))
    net.blobs["r"].diff[...] = 1
    net.backward()
    assert np.abs(net.blobs["x"].diff).sum() > 0
    assert not net.blobs["cont"].diff.any()


# ---- shape and arity checks --------------------------------------------------------
@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_number_of_timesteps_is_fixed(kind):
    layer, bottom, top = setup(kind)
    with pytest.raises(LayerError, match="timesteps changed"):
        layer.reshape([blob(np.zeros((T + 1, N, 4))), blob(np.zeros((T + 1, N)))], top)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
@pytest.mark.parametrize("change", ["cont", "x_2d", "x_values", "static_streams", "hidden"])
def test_mismatched_inputs_are_errors(kind, change):
    expose = change == "hidden"
    layer, bottom, top = setup(kind, static=True, expose=expose)
    if change == "cont":
        bottom[1] = blob(np.zeros((T, N + 1)))
    elif change == "x_2d":
        bottom[0] = blob(np.zeros((T, N)))
    elif change == "x_values":
        bottom[0] = blob(np.zeros((T, N, 5)))
    elif change == "static_streams":
        bottom[2] = blob(np.zeros((N + 1, 3)))
    else:
        bottom[3] = blob(np.zeros((1, N, D + 1)))
    with pytest.raises(LayerError, match=kind.lower()):
        layer.reshape(bottom, top)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_expose_hidden_sets_the_number_of_blobs(kind):
    states = 2 if kind == "LSTM" else 1
    layer = make_layer(kind, "expose_hidden: true")
    with pytest.raises(LayerError, match="at least"):
        layer.setup(inputs(kind), tops(kind, True))
    layer = make_layer(kind, "expose_hidden: true")
    with pytest.raises(LayerError, match="exactly"):
        layer.setup(inputs(kind, expose=True), tops(kind))
    layer = make_layer(kind)
    with pytest.raises(LayerError, match="at most"):
        layer.setup(inputs(kind, static=True) + [blob(np.zeros((1, N, D)))] * states, tops(kind))


def test_num_output_must_be_positive():
    with pytest.raises(LayerError, match="positive"):
        make_layer("LSTM", num_output=0).setup(inputs("LSTM"), tops("LSTM"))


# ---- LSTMUnit ----------------------------------------------------------------------
def unit_inputs(cont, seed=0, dim=4):
    rng = np.random.default_rng(seed)
    n = len(cont)
    return [blob(rng.uniform(-1, 1, (1, n, dim))), blob(rng.uniform(-1, 1, (1, n, 4 * dim))),
            blob([cont])]


def unit_layer():
    return create_layer(layer_param('name: "unit" type: "LSTMUnit"'), caffe_pb2.TEST)


@pytest.mark.parametrize("cont", [[0, 0, 0], [1, 0, 1]])
def test_lstm_unit_forward(cont):
    layer, bottom, top = unit_layer(), unit_inputs(cont), [Blob(), Blob()]
    layer.setup(bottom, top)
    assert top[0].shape == top[1].shape == (1, 3, 4)
    layer.forward(bottom, top)
    c_prev, x = bottom[0].data[0].astype(np.float64), bottom[1].data[0].astype(np.float64)
    i, f, o = (sigmoid(x[:, k * 4:(k + 1) * 4]) for k in range(3))
    c = np.array(cont)[:, None] * f * c_prev + i * np.tanh(x[:, 12:])
    np.testing.assert_allclose(top[0].data[0], c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(top[1].data[0], o * np.tanh(c), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cont", [[0, 0, 0], [1, 0, 1]])
def test_lstm_unit_gradients(cont):
    """Caffe's TestLSTMUnitGradient and ...NonZeroCont."""
    layer, bottom, top = unit_layer(), unit_inputs(cont), [Blob(), Blob()]
    assert check_gradient(layer, bottom, top, check_bottom=[0, 1]) == 12 + 48


def test_lstm_unit_writes_both_diffs_and_none_for_cont():
    layer, bottom, top = unit_layer(), unit_inputs([1, 1, 0]), [Blob(), Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    for t in top:
        t.diff[...] = 1
    bottom[0].diff[...] = np.nan
    layer.backward(top, [False, True, False], bottom)   # Caffe computes both together
    assert np.isfinite(bottom[0].diff).all() and bottom[0].diff.any()
    assert not layer.allow_force_backward(2)
    with pytest.raises(LayerError, match="sequence indicators"):
        layer.backward(top, [True, True, True], bottom)


@pytest.mark.parametrize("shapes", [[(1, 3, 4), (1, 3, 15), (1, 3)],
                                    [(1, 3, 4), (1, 2, 16), (1, 3)],
                                    [(2, 3, 4), (2, 3, 16), (2, 3)],
                                    [(1, 3, 4), (1, 3, 16), (1, 3, 1)]])
def test_lstm_unit_shape_checks(shapes):
    with pytest.raises(LayerError, match="unit"):
        unit_layer().setup([Blob(s) for s in shapes], [Blob(), Blob()])


# ---- the BVLC fixture --------------------------------------------------------------
@pytest.mark.parametrize("name", ["rnn", "lstm"])
def test_caffe_parameters_load_and_reproduce_the_fixture(name):
    net, weights = golden_layers("embed_recurrent")
    expected = load_expected("embed_recurrent")
    param = next(p for p in net.layer if p.name == name)
    layer = create_layer(param, caffe_pb2.TEST)
    for array in weights[name]:
        layer.blobs.append(blob(array))
    bottom = [blob(expected[f"data/{b}"]) for b in param.bottom]
    top = [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    assert_close(top[0].data, expected[f"data/{param.top[0]}"], DATA_TOL, f"{name} forward")
