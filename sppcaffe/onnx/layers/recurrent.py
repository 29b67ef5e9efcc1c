"""LSTM, RNN and LSTMUnit, unrolled over their (fixed) number of timesteps
as Caffe unrolls them into an inner net: the input transform for every
step at once, then per step the recurrent product of the previous state
gated by cont_t, and the cell.  Gate blocks are ordered i, f, o, g; the
forget gate and the previous cell state are multiplied by cont_t, as in
Caffe's LSTMUnit.

Without expose_hidden Caffe carries the final state of one forward into the
next; a graph has no memory, so it starts every run from zero state, as a
net's first forward (or any sequence whose first cont is 0).  The export
says so in a warning and the model's doc_string.
"""
import numpy as np
from onnx import TensorProto, helper

from ..registry import converter


def _state_note(x):
    if not x.layer.expose_hidden:
        x.note("Caffe carries the hidden state from one forward to the next; the graph starts "
               "every run from zero state, as a new net's first forward (identical whenever "
               "a sequence starts with cont = 0). Set recurrent_param.expose_hidden to pass "
               "the state in and out explicitly.")


def _input_transform(x, w_name, b_name, static_name):
    """(T, N, G) = x W^T + b for every step, and the static term (N, G) or None."""
    layer, g = x.layer, x.g
    w = x.weight(layer._index[w_name], "transposed", lambda a: a.T)
    pre = g.node("Add", [g.node("MatMul", [g.reshape(x.inputs[0], [0, 0, -1]), w]),
                         x.weight(layer._index[b_name])])
    static = None
    if layer.static_input:
        ws = x.weight(layer._index[static_name], "transposed", lambda a: a.T)
        static = g.node("MatMul", [g.reshape(x.inputs[2], [0, -1]), ws])
    return pre, static


def _initial_states(x):
    """(N, D) starting values of the layer's states."""
    layer, g = x.layer, x.g
    if layer.expose_hidden:
        first = layer._hidden_bottom
        return [g.squeeze(x.inputs[first + k], [0]) for k in range(len(layer.states))]
    d = layer.num_output
    if x.is_dynamic(0, [1]):
        value = helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0])
        zeros = g.node("ConstantOfShape", [g.vector(x.dims(0, [1]) + [d])], value=value)
    else:
        zeros = g.floats(np.zeros((x.bottom_shapes[0][1], d), np.float32), "zero_state")
    return [zeros] * len(layer.states)


def _step_inputs(x, pre, t):
    """pre[t] (N, G) and cont[t] as an (N, 1) column."""
    g = x.g
    index = g.initializer(np.asarray(t, np.int64), "t")
    cont = g.unsqueeze(g.node("Gather", [x.inputs[1], index], axis=0), [1])
    return g.node("Gather", [pre, index], axis=0), cont


def lstm_cell(g, c_prev, gates, cont, d, axis):
    """Caffe's LSTMUnit: c = cont*f*c_prev + i*g and h = o*tanh(c), gates
    (.., 4d) along `axis` ordered i, f, o, g."""
    i, f, o, cand = (g.slice(gates, [k * d], [(k + 1) * d], [axis]) for k in range(4))
    i, o = g.node("Sigmoid", [i]), g.node("Sigmoid", [o])
    f = g.node("Mul", [g.node("Sigmoid", [f]), cont])
    c = g.node("Add", [g.node("Mul", [f, c_prev]), g.node("Mul", [i, g.node("Tanh", [cand])])])
    return c, g.node("Mul", [o, g.node("Tanh", [c])])


def _stack(g, steps):
    """(T, N, D) from T values (N, D)."""
    parts = [g.unsqueeze(s, [0]) for s in steps]
    return parts[0] if len(parts) == 1 else g.node("Concat", parts, axis=0)


@converter("LSTM")
def lstm(x):
    layer, g = x.layer, x.g
    _state_note(x)
    d = layer.num_output
    pre, static = _input_transform(x, "W_xc", "b_c", "W_xc_static")
    w_hc = x.weight(layer._index["W_hc"], "transposed", lambda a: a.T)
    h, c = _initial_states(x)
    hs = []
    for t in range(layer.T):
        pre_t, cont = _step_inputs(x, pre, t)
        gates = g.node("Add", [g.node("MatMul", [g.node("Mul", [h, cont]), w_hc]), pre_t])
        if static is not None:
            gates = g.node("Add", [gates, static])
        c, h = lstm_cell(g, c, gates, cont, d, 1)
        hs.append(h)
    outputs = [_stack(g, hs)]
    if layer.expose_hidden:
        outputs += [g.unsqueeze(h, [0]), g.unsqueeze(c, [0])]
    return outputs


@converter("RNN")
def rnn(x):
    layer, g = x.layer, x.g
    _state_note(x)
    pre, static = _input_transform(x, "W_xh", "b_h", "W_xh_static")
    w_hh = x.weight(layer._index["W_hh"], "transposed", lambda a: a.T)
    (h,) = _initial_states(x)
    hs = []
    for t in range(layer.T):
        pre_t, cont = _step_inputs(x, pre, t)
        total = g.node("Add", [g.node("MatMul", [g.node("Mul", [h, cont]), w_hh]), pre_t])
        if static is not None:
            total = g.node("Add", [total, static])
        h = g.node("Tanh", [total])
        hs.append(h)
    w_ho = x.weight(layer._index["W_ho"], "transposed", lambda a: a.T)
    o = g.node("Tanh", [g.node("Add", [g.node("MatMul", [_stack(g, hs), w_ho]),
                                       x.weight(layer._index["b_o"])])])
    return [o, g.unsqueeze(h, [0])] if layer.expose_hidden else o


@converter("LSTMUnit")
def lstm_unit(x):
    """Bottoms c_prev (1, N, D), gate inputs (1, N, 4D), cont (1, N)."""
    d = x.bottom_shapes[0][2]
    cont = x.g.unsqueeze(x.inputs[2], [2])
    return list(lstm_cell(x.g, x.inputs[0], x.inputs[1], cont, d, 2))
