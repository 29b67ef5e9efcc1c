"""Recurrent layers: RNN, LSTM and the LSTMUnit cell, as Caffe's.

Caffe's RecurrentLayer unrolls the recurrence into an inner Net of
InnerProduct / Scale / Eltwise / TanH / LSTMUnit layers.  Here the same
arithmetic runs directly: one GEMM for the input transform of every
timestep, a loop over T with whole-batch GEMMs for the recurrent term, and
one GEMM for RNN's output.  What the inner net implies and is kept:

- inputs x (T, N, ...), cont (T, N), optionally x_static (N, ...); with
  ``expose_hidden`` also h0 (and c0 for LSTM), each (1, N, num_output),
  and extra tops hT (and cT);
- h_conted_{t-1} = cont_t * h_{t-1} feeds the recurrent product, and the
  LSTM cell additionally gates c_{t-1} by cont_t;
- parameters in the order the inner net owns them (so Caffe's .caffemodel
  files load): RNN [W_xh, b_h, (W_xh_static), W_hh, W_ho, b_o], LSTM
  [W_xc, b_c, (W_xc_static), W_hc], gate blocks ordered i, f, o, g;
- without ``expose_hidden`` the state carries over: each forward starts
  from the final state of the previous one (zero at first), as Caffe copies
  the inner net's h_T (and c_T) into h_0 (and c_0);
- backward runs through the full sequence to x, x_static and every
  parameter; as in Caffe, no gradient reaches h0/c0 (the inner net shares
  only their data) and the diffs of the hT/cT tops are not used; cont gets
  none (an error, as Caffe's CHECK).
"""
import numpy as np

from ..backends import gpu
from ..blob import Blob
from ..fillers import fill, gpu_set
from ..im2col import add_matmul
from ..layer import Layer, register
from ..workspace import Workspace

F32 = np.float32


def _at(ptr, elements):
    """A device address `elements` floats past `ptr`."""
    return ptr + 4 * int(elements)


def _prod(shape):
    return int(np.prod(shape, dtype=np.int64))


# ---- the LSTM cell (Caffe's LSTMUnitLayer, CPU version) ------------------------
def _sigmoid(x):
    """1 / (1 + exp(-x)) as Caffe's LSTMUnit evaluates it: in double precision,
    rounded to float."""
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(F32)


def _tanh(x):
    """Caffe's LSTMUnit tanh: 2 sigmoid(2x) - 1."""
    return (2.0 * _sigmoid(x * F32(2)).astype(np.float64) - 1.0).astype(F32)


def _lstm_gates(x, cont):
    """i, f, o, g for gate inputs x (N, 4D); the forget gate is 0 where cont
    is 0 and cont * sigmoid elsewhere (Caffe's CPU LSTMUnit)."""
    dim = x.shape[1] // 4
    sig = _sigmoid(x[:, :3 * dim])
    cont = cont.reshape(-1, 1)
    f = np.where(cont == 0, F32(0), cont * sig[:, dim:2 * dim])
    return sig[:, :dim], f, sig[:, 2 * dim:], _tanh(x[:, 3 * dim:])


def lstm_unit_forward(c_prev, x, cont, c, h):
    """c = f * c_prev + i * g and h = o * tanh(c), for (N, D) states."""
    i, f, o, g = _lstm_gates(x, cont)
    ig = i * g
    np.multiply(f, c_prev, out=c)
    c += ig
    np.multiply(o, _tanh(c), out=h)


def lstm_unit_backward(c_prev, x, cont, c, dc, dh, dc_prev, dx):
    """Gradients of c_prev and x from those of c (None: zero) and h.
    dc_prev may be dc."""
    dim = c.shape[1]
    i, f, o, g = _lstm_gates(x, cont)
    tanh_c = _tanh(c)
    c_term = dh * o * (F32(1) - tanh_c * tanh_c)
    if dc is not None:
        c_term = dc + c_term
    dx[:, :dim] = c_term * g * i * (F32(1) - i)
    dx[:, dim:2 * dim] = c_term * c_prev * f * (F32(1) - f)
    dx[:, 2 * dim:3 * dim] = dh * tanh_c * o * (F32(1) - o)
    dx[:, 3 * dim:] = c_term * i * (F32(1) - g * g)
    np.multiply(c_term, f, out=dc_prev)


@register("LSTMUnit")
class LSTMUnitLayer(Layer):
    """One LSTM step.  Bottoms c_prev (1, N, D), x (1, N, 4D) gate inputs
    (i, f, o, g), cont (1, N); tops c and h (1, N, D)."""
    exact_num_bottom = 3
    exact_num_top = 2

    def reshape(self, bottom, top):
        streams = bottom[0].shape[1] if bottom[0].ndim > 1 else None
        for i, b in enumerate(bottom):
            axes = 2 if i == 2 else 3
            if b.ndim != axes or b.shape[0] != 1 or b.shape[1] != streams:
                raise self.error(f"bottom[{i}] has shape {b.shape}; expected {axes} axes "
                                 f"(1, #streams{', ...' if axes == 3 else ''}) with the "
                                 f"#streams of bottom[0] {bottom[0].shape}")
        self.num, self.dim = streams, bottom[0].shape[2]
        if bottom[1].shape[2] != 4 * self.dim:
            raise self.error(f"bottom[1] has {bottom[1].shape[2]} gate inputs per stream; "
                             f"expected 4 * {self.dim}")
        top[0].reshape(bottom[0].shape)
        top[1].reshape(bottom[0].shape)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def _states(self, blob, attr="data"):
        return getattr(blob, attr).reshape(self.num, -1)

    def forward(self, bottom, top):
        lstm_unit_forward(self._states(bottom[0]), self._states(bottom[1]), bottom[2].data,
                          self._states(top[0]), self._states(top[1]))

    def _check_backward(self, propagate_down):
        if propagate_down[2]:
            raise self.error("cannot backpropagate to sequence indicators")
        # Caffe writes both bottom diffs whenever either is wanted.
        return propagate_down[0] or propagate_down[1]

    def backward(self, top, propagate_down, bottom):
        if not self._check_backward(propagate_down):
            return
        d = lambda blob: self._states(blob, "diff")
        lstm_unit_backward(self._states(bottom[0]), self._states(bottom[1]), bottom[2].data,
                           self._states(top[0]), d(top[0]), d(top[1]), d(bottom[0]),
                           d(bottom[1]))

    def forward_gpu(self, bottom, top):
        n = self.num * self.dim
        gpu.kernel("lstm_unit_forward")(n, n, self.dim, bottom[0].gpu_data, bottom[1].gpu_data,
                                        bottom[2].gpu_data, top[0].mutable_gpu_data,
                                        top[1].mutable_gpu_data)

    def backward_gpu(self, top, propagate_down, bottom):
        if not self._check_backward(propagate_down):
            return
        n = self.num * self.dim
        gpu.kernel("lstm_unit_backward")(
            n, n, self.dim, bottom[0].gpu_data, bottom[1].gpu_data, bottom[2].gpu_data,
            top[0].gpu_data, top[0].gpu_diff, top[1].gpu_diff, bottom[0].mutable_gpu_diff,
            bottom[1].mutable_gpu_diff)


# ---- the sequence layers -----------------------------------------------------------
class _RecurrentLayer(Layer):
    """What RNN and LSTM share: bottoms, shapes, parameters, carried state.

    Subclasses name their recurrent states (`states`), the width of the
    recurrent pre-activation (`gates` * num_output) and their parameters
    (`_param_specs`), and compute the recurrence.
    """
    states = ()
    gates = 1

    def __init__(self, param, phase):
        super().__init__(param, phase)
        exposed = len(self.states) if param.recurrent_param.expose_hidden else 0
        self.min_num_bottom = 2 + exposed
        self.max_num_bottom = 3 + exposed
        self.exact_num_top = 1 + exposed

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def layer_setup(self, bottom, top):
        p = self.param.recurrent_param
        self.num_output = int(p.num_output)
        if self.num_output < 1:
            raise self.error("num_output must be positive")
        self.expose_hidden = p.expose_hidden
        x = self._sequence_shape(bottom)
        self.T = x[0]
        self.static_input = len(bottom) > 2 + (len(self.states) if self.expose_hidden else 0)
        self.x_dim = _prod(x[2:])
        self.static_dim = None
        if self.static_input:
            s = bottom[2].shape
            if len(s) < 2:
                raise self.error(f"the static input has shape {s}; it needs at least 2 axes "
                                 "(#streams, input ...)")
            self.static_dim = _prod(s[1:])
        specs = self._param_specs()
        self._index = {name: i for i, (name, _, _) in enumerate(specs)}
        shapes = [shape for _, shape, _ in specs]
        if self.blobs:
            if [b.shape for b in self.blobs] != shapes:
                raise self.error(f"parameter shapes {[b.shape for b in self.blobs]} "
                                 f"do not match the expected {shapes}")
        else:
            fillers = {"weight": p.weight_filler, "bias": p.bias_filler}
            for i, (_, shape, kind) in enumerate(specs):
                blob = self.new_param_blob(shape, i)
                fill(blob, fillers[kind])
                self.blobs.append(blob)
        self.param_propagate_down = [True] * len(self.blobs)
        self._state_blobs, self._state_capacity = [], 0
        self._host = Workspace()
        self._dev = gpu.Workspace()

    def _sequence_shape(self, bottom):
        # Caffe's inner InnerProduct transforms x from axis 2 on.
        x = bottom[0].shape
        if len(x) < 3:
            raise self.error(f"bottom[0] has shape {x}; it needs at least 3 axes "
                             "(#timesteps, #streams, input ...)")
        return x

    def _param_specs(self):
        """[(name, shape, "weight" | "bias")] in Caffe's blob order."""
        raise NotImplementedError

    def _param(self, name):
        return self.blobs[self._index[name]]

    def _learns(self, name):
        return self.param_propagate_down[self._index[name]]

    @property
    def _hidden_bottom(self):
        """Index of the first exposed state among the bottoms."""
        return 3 if self.static_input else 2

    def reshape(self, bottom, top):
        x = self._sequence_shape(bottom)
        if x[0] != self.T:
            raise self.error(f"input number of timesteps changed from {self.T} to {x[0]}")
        if _prod(x[2:]) != self.x_dim:
            raise self.error(f"input {x} has {_prod(x[2:])} values per step and stream; "
                             f"the weights expect {self.x_dim}")
        self.N = n = x[1]
        if bottom[1].shape != (self.T, n):
            raise self.error(f"bottom[1] (cont) has shape {bottom[1].shape}; expected "
                             f"(#timesteps, #streams) = {(self.T, n)}")
        if self.static_input:
            s = bottom[2].shape
            if len(s) < 2 or s[0] != n or _prod(s[1:]) != self.static_dim:
                raise self.error(f"the static input has shape {s}; expected {n} streams of "
                                 f"{self.static_dim} values")
        state_shape = (1, n, self.num_output)
        if self.expose_hidden:
            for j, name in enumerate(self.states):
                b = bottom[self._hidden_bottom + j]
                if b.shape != state_shape:
                    raise self.error(f"bottom[{self._hidden_bottom + j}] ({name}0) has shape "
                                     f"{b.shape}; the hidden state input shape is {state_shape}")
            for t in top[1:]:
                t.reshape(state_shape)
        top[0].reshape((self.T, n, self.num_output))
        self._grow_states(n * self.num_output)

    def _grow_states(self, count):
        """The carried state keeps its memory while it fits, like the Caffe
        blob it mirrors; outgrowing it starts again from zero."""
        if count > self._state_capacity:
            self._state_blobs = [Blob((count,), name=f"{self.name}/{s}_T") for s in self.states]
            self._state_capacity = count

    def reset(self):
        """Zero the carried state (Caffe's RecurrentLayer::Reset)."""
        for blob in self._state_blobs:
            blob.data[...] = 0

    def _check_backward(self, propagate_down):
        if propagate_down[1]:
            raise self.error("cannot backpropagate to sequence indicators")

    # ---- host helpers ----------------------------------------------------
    def _initial_state(self, bottom, k):
        """The state the sequence starts from, (N, num_output)."""
        n, d = self.N, self.num_output
        if self.expose_hidden:
            return bottom[self._hidden_bottom + k].data.reshape(n, d)
        return self._state_blobs[k].data[:n * d].reshape(n, d)

    def _final_state(self, top, k, value):
        if self.expose_hidden:
            top[1 + k].data[...] = value.reshape(top[1 + k].shape)
        else:
            self._state_blobs[k].data[:value.size] = value.reshape(-1)

    def _input_transform(self, bottom, out, w, b, s=None):
        """out (T, N, G) = x W^T + b; returns the static term x_static W_s^T
        (N, G) when there is one, else None."""
        rows = self.T * self.N
        flat = out.reshape(rows, -1)
        np.matmul(bottom[0].data.reshape(rows, self.x_dim), self._param(w).data.T, out=flat)
        flat += self._param(b).data
        if s is None:
            return None
        static = self._host.get("static", (self.N, flat.shape[1]))
        np.matmul(bottom[2].data.reshape(self.N, self.static_dim), self._param(s).data.T,
                  out=static)
        return static

    def _input_backward(self, bottom, dpre, w, b, s=None):
        """Gradients of the input transform from dpre (T, N, G): W, b, x and
        the static path (the static term is added at every timestep)."""
        rows = self.T * self.N
        flat = dpre.reshape(rows, -1)
        x = bottom[0].data.reshape(rows, self.x_dim)
        if self._learns(w):
            add_matmul(flat.T, x, self._param(w).diff)
        if self._learns(b):
            self._param(b).diff += flat.sum(axis=0, dtype=F32)
        # Caffe's inner net always backpropagates to x and x_static.
        np.matmul(flat, self._param(w).data, out=bottom[0].diff.reshape(rows, self.x_dim))
        if s is not None:
            ds = dpre.sum(axis=0, dtype=F32)
            xs = bottom[2].data.reshape(self.N, self.static_dim)
            if self._learns(s):
                add_matmul(ds.T, xs, self._param(s).diff)
            np.matmul(ds, self._param(s).data,
                      out=bottom[2].diff.reshape(self.N, self.static_dim))

    def _zero_state_diffs(self, propagate_down, bottom, on_gpu=False):
        """h0/c0 get no gradient in Caffe; one asked for is zero."""
        if not self.expose_hidden:
            return
        for j in range(len(self.states)):
            i = self._hidden_bottom + j
            if propagate_down[i]:
                if on_gpu:
                    gpu_set(bottom[i].count, 0.0, bottom[i].mutable_gpu_diff)
                else:
                    bottom[i].diff[...] = 0

    # ---- device helpers --------------------------------------------------
    def _initial_state_gpu(self, bottom, k):
        if self.expose_hidden:
            return bottom[self._hidden_bottom + k].gpu_data
        return self._state_blobs[k].gpu_data

    def _final_state_gpu(self, top, k, ptr):
        count = self.N * self.num_output
        dst = (top[1 + k].mutable_gpu_data if self.expose_hidden
               else self._state_blobs[k].mutable_gpu_data)
        gpu.blas().copy(dst, ptr, 4 * count)

    def _input_transform_gpu(self, bottom, out, w, b, s=None):
        blas = gpu.blas()
        rows, g = self.T * self.N, self.gates * self.num_output
        blas.gemm(False, True, rows, g, self.x_dim, 1.0, bottom[0].gpu_data,
                  self._param(w).gpu_data, 0.0, out)
        blas.gemm(False, False, rows, g, 1, 1.0, gpu.ones(rows), self._param(b).gpu_data,
                  1.0, out)
        if s is None:
            return None
        static = self._dev.floats("static", self.N * g)
        blas.gemm(False, True, self.N, g, self.static_dim, 1.0, bottom[2].gpu_data,
                  self._param(s).gpu_data, 0.0, static)
        return static

    def _input_backward_gpu(self, bottom, dpre, w, b, s=None):
        blas = gpu.blas()
        rows, g = self.T * self.N, self.gates * self.num_output
        if self._learns(w):
            blas.gemm(True, False, g, self.x_dim, rows, 1.0, dpre, bottom[0].gpu_data, 1.0,
                      self._param(w).mutable_gpu_diff)
        if self._learns(b):
            blas.gemv(True, rows, g, 1.0, dpre, gpu.ones(rows), 1.0,
                      self._param(b).mutable_gpu_diff)
        blas.gemm(False, False, rows, self.x_dim, g, 1.0, dpre, self._param(w).gpu_data, 0.0,
                  bottom[0].mutable_gpu_diff)
        if s is None:
            return
        ds = self._dev.floats("dstatic", self.N * g)
        blas.gemv(True, self.T, self.N * g, 1.0, dpre, gpu.ones(self.T), 0.0, ds)
        if self._learns(s):
            blas.gemm(True, False, g, self.static_dim, self.N, 1.0, ds, bottom[2].gpu_data, 1.0,
                      self._param(s).mutable_gpu_diff)
        blas.gemm(False, False, self.N, self.static_dim, g, 1.0, ds, self._param(s).gpu_data,
                  0.0, bottom[2].mutable_gpu_diff)


@register("RNN")
class RNNLayer(_RecurrentLayer):
    """h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static]),
    o_t = tanh(W_ho h_t + b_o); the top is o."""
    states = ("h",)
    gates = 1

    def _param_specs(self):
        d = self.num_output
        specs = [("W_xh", (d, self.x_dim), "weight"), ("b_h", (d,), "bias")]
        if self.static_input:
            specs.append(("W_xh_static", (d, self.static_dim), "weight"))
        return specs + [("W_hh", (d, d), "weight"), ("W_ho", (d, d), "weight"),
                        ("b_o", (d,), "bias")]

    def _static_name(self):
        return "W_xh_static" if self.static_input else None

    def forward(self, bottom, top):
        T, n, d = self.T, self.N, self.num_output
        ws = self._host
        pre = ws.get("pre", (T, n, d))
        static = self._input_transform(bottom, pre, "W_xh", "b_h", self._static_name())
        hc, h = ws.get("hc", (T, n, d)), ws.get("h", (T, n, d))
        recur = ws.get("recur", (n, d))
        w_hh = self._param("W_hh").data
        cont = bottom[1].data
        h_prev = self._initial_state(bottom, 0)
        for t in range(T):
            np.multiply(h_prev, cont[t][:, None], out=hc[t])
            np.matmul(hc[t], w_hh.T, out=recur)
            # Caffe's Eltwise sum: W_hh h + W_xh x_t (+ static), in that order.
            np.add(recur, pre[t], out=pre[t])
            if static is not None:
                pre[t] += static
            np.tanh(pre[t], out=h[t])
            h_prev = h[t]
        o = top[0].data.reshape(T * n, d)
        np.matmul(h.reshape(T * n, d), self._param("W_ho").data.T, out=o)
        o += self._param("b_o").data
        np.tanh(o, out=o)
        self._final_state(top, 0, h[T - 1])

    def backward(self, top, propagate_down, bottom):
        self._check_backward(propagate_down)
        T, n, d = self.T, self.N, self.num_output
        ws = self._host
        hc, h = ws.get("hc", (T, n, d)), ws.get("h", (T, n, d))
        o = top[0].data.reshape(T * n, d)
        do = top[0].diff.reshape(T * n, d) * (F32(1) - o * o)
        if self._learns("W_ho"):
            add_matmul(do.T, h.reshape(T * n, d), self._param("W_ho").diff)
        if self._learns("b_o"):
            self._param("b_o").diff += do.sum(axis=0, dtype=F32)
        dh = ws.get("dh", (T, n, d))
        np.matmul(do, self._param("W_ho").data, out=dh.reshape(T * n, d))
        dpre = ws.get("dpre", (T, n, d))
        w_hh = self._param("W_hh").data
        cont = bottom[1].data
        for t in range(T - 1, -1, -1):
            if t < T - 1:
                carry = dpre[t + 1] @ w_hh
                carry *= cont[t + 1][:, None]
                dh[t] += carry
            np.multiply(dh[t], F32(1) - h[t] * h[t], out=dpre[t])
        if self._learns("W_hh"):
            add_matmul(dpre.reshape(T * n, d).T, hc.reshape(T * n, d), self._param("W_hh").diff)
        self._input_backward(bottom, dpre, "W_xh", "b_h", self._static_name())
        self._zero_state_diffs(propagate_down, bottom)

    # ---- device code: cuBLAS products, the activations.cu tanh kernels ----
    def forward_gpu(self, bottom, top):
        T, n, d = self.T, self.N, self.num_output
        blas, dev = gpu.blas(), self._dev
        step = n * d
        pre = dev.floats("pre", T * step)
        static = self._input_transform_gpu(bottom, pre, "W_xh", "b_h", self._static_name())
        hc, h = dev.floats("hc", T * step), dev.floats("h", T * step)
        w_hh, cont = self._param("W_hh").gpu_data, bottom[1].gpu_data
        scale, tanh = gpu.kernel("recurrent_scale_rows"), gpu.kernel("tanh_forward")
        h_prev = self._initial_state_gpu(bottom, 0)
        for t in range(T):
            hc_t, pre_t, h_t = _at(hc, t * step), _at(pre, t * step), _at(h, t * step)
            scale(step, step, d, h_prev, _at(cont, t * n), hc_t)
            blas.gemm(False, True, n, d, d, 1.0, hc_t, w_hh, 1.0, pre_t)
            if static is not None:
                blas.axpy(step, 1.0, static, pre_t)
            tanh(step, step, pre_t, h_t)
            h_prev = h_t
        o = top[0].mutable_gpu_data
        blas.gemm(False, True, T * n, d, d, 1.0, h, self._param("W_ho").gpu_data, 0.0, o)
        blas.gemm(False, False, T * n, d, 1, 1.0, gpu.ones(T * n), self._param("b_o").gpu_data,
                  1.0, o)
        tanh(T * step, T * step, o, o)
        self._final_state_gpu(top, 0, _at(h, (T - 1) * step))

    def backward_gpu(self, top, propagate_down, bottom):
        self._check_backward(propagate_down)
        T, n, d = self.T, self.N, self.num_output
        blas, dev = gpu.blas(), self._dev
        step, rows = n * d, T * n
        hc, h = dev.floats("hc", T * step), dev.floats("h", T * step)
        tanh_backward = gpu.kernel("tanh_backward")
        do = dev.floats("do", T * step)
        tanh_backward(T * step, T * step, top[0].gpu_diff, top[0].gpu_data, do)
        if self._learns("W_ho"):
            blas.gemm(True, False, d, d, rows, 1.0, do, h, 1.0,
                      self._param("W_ho").mutable_gpu_diff)
        if self._learns("b_o"):
            blas.gemv(True, rows, d, 1.0, do, gpu.ones(rows), 1.0,
                      self._param("b_o").mutable_gpu_diff)
        dh = dev.floats("dh", T * step)
        blas.gemm(False, False, rows, d, d, 1.0, do, self._param("W_ho").gpu_data, 0.0, dh)
        dpre, carry = dev.floats("dpre", T * step), dev.floats("carry", step)
        w_hh, cont = self._param("W_hh").gpu_data, bottom[1].gpu_data
        hidden_diff = gpu.kernel("recurrent_hidden_diff")
        for t in range(T - 1, -1, -1):
            dh_t = _at(dh, t * step)
            if t < T - 1:
                blas.gemm(False, False, n, d, d, 1.0, _at(dpre, (t + 1) * step), w_hh, 0.0, carry)
                hidden_diff(step, step, d, dh_t, carry, _at(cont, (t + 1) * n), dh_t)
            tanh_backward(step, step, dh_t, _at(h, t * step), _at(dpre, t * step))
        if self._learns("W_hh"):
            blas.gemm(True, False, d, d, rows, 1.0, dpre, hc, 1.0,
                      self._param("W_hh").mutable_gpu_diff)
        self._input_backward_gpu(bottom, dpre, "W_xh", "b_h", self._static_name())
        self._zero_state_diffs(propagate_down, bottom, on_gpu=True)


@register("LSTM")
class LSTMLayer(_RecurrentLayer):
    """gates_t = W_hc (cont_t h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static],
    then LSTMUnit(c_{t-1}, gates_t, cont_t) -> c_t, h_t; the top is h."""
    states = ("h", "c")
    gates = 4

    def _param_specs(self):
        g = 4 * self.num_output
        specs = [("W_xc", (g, self.x_dim), "weight"), ("b_c", (g,), "bias")]
        if self.static_input:
            specs.append(("W_xc_static", (g, self.static_dim), "weight"))
        return specs + [("W_hc", (g, self.num_output), "weight")]

    def _static_name(self):
        return "W_xc_static" if self.static_input else None

    def forward(self, bottom, top):
        T, n, d = self.T, self.N, self.num_output
        ws = self._host
        # gates[t] ends up holding LSTMUnit's input x at step t.
        gates = ws.get("gates", (T, n, 4 * d))
        static = self._input_transform(bottom, gates, "W_xc", "b_c", self._static_name())
        hc = ws.get("hc", (T, n, d))
        c = ws.get("c", (T + 1, n, d))          # c[0] = c_0, kept for backward
        recur = ws.get("recur", (n, 4 * d))
        h = top[0].data.reshape(T, n, d)
        w_hc = self._param("W_hc").data
        cont = bottom[1].data
        c[0] = self._initial_state(bottom, 1)
        h_prev = self._initial_state(bottom, 0)
        for t in range(T):
            np.multiply(h_prev, cont[t][:, None], out=hc[t])
            np.matmul(hc[t], w_hc.T, out=recur)
            np.add(recur, gates[t], out=gates[t])
            if static is not None:
                gates[t] += static
            lstm_unit_forward(c[t], gates[t], cont[t], c[t + 1], h[t])
            h_prev = h[t]
        self._final_state(top, 0, h[T - 1])
        self._final_state(top, 1, c[T])

    def backward(self, top, propagate_down, bottom):
        self._check_backward(propagate_down)
        T, n, d = self.T, self.N, self.num_output
        ws = self._host
        gates, hc, c = ws.get("gates", (T, n, 4 * d)), ws.get("hc", (T, n, d)), \
            ws.get("c", (T + 1, n, d))
        dgates = ws.get("dgates", (T, n, 4 * d))
        dc, dh = ws.get("dc", (n, d)), ws.get("dh", (n, d))
        top_diff = top[0].diff.reshape(T, n, d)
        w_hc = self._param("W_hc").data
        cont = bottom[1].data
        for t in range(T - 1, -1, -1):
            if t == T - 1:
                dh[...] = top_diff[t]
            else:
                carry = dgates[t + 1] @ w_hc
                carry *= cont[t + 1][:, None]
                np.add(carry, top_diff[t], out=dh)
            # The last cell state's gradient is zero: c_T's diff is not used.
            lstm_unit_backward(c[t], gates[t], cont[t], c[t + 1], dc if t < T - 1 else None,
                               dh, dc, dgates[t])
        if self._learns("W_hc"):
            add_matmul(dgates.reshape(T * n, 4 * d).T, hc.reshape(T * n, d),
                       self._param("W_hc").diff)
        self._input_backward(bottom, dgates, "W_xc", "b_c", self._static_name())
        self._zero_state_diffs(propagate_down, bottom)

    # ---- device code: cuBLAS products, recurrent.cu's cell kernels --------
    def forward_gpu(self, bottom, top):
        T, n, d = self.T, self.N, self.num_output
        blas, dev = gpu.blas(), self._dev
        step, gstep = n * d, n * 4 * d
        gates = dev.floats("gates", T * gstep)
        static = self._input_transform_gpu(bottom, gates, "W_xc", "b_c", self._static_name())
        hc, c = dev.floats("hc", T * step), dev.floats("c", (T + 1) * step)
        h = top[0].mutable_gpu_data
        w_hc, cont = self._param("W_hc").gpu_data, bottom[1].gpu_data
        scale, unit = gpu.kernel("recurrent_scale_rows"), gpu.kernel("lstm_unit_forward")
        blas.copy(c, self._initial_state_gpu(bottom, 1), 4 * step)
        h_prev = self._initial_state_gpu(bottom, 0)
        for t in range(T):
            hc_t, gates_t, h_t = _at(hc, t * step), _at(gates, t * gstep), _at(h, t * step)
            cont_t = _at(cont, t * n)
            scale(step, step, d, h_prev, cont_t, hc_t)
            blas.gemm(False, True, n, 4 * d, d, 1.0, hc_t, w_hc, 1.0, gates_t)
            if static is not None:
                blas.axpy(gstep, 1.0, static, gates_t)
            unit(step, step, d, _at(c, t * step), gates_t, cont_t, _at(c, (t + 1) * step), h_t)
            h_prev = h_t
        self._final_state_gpu(top, 0, _at(h, (T - 1) * step))
        self._final_state_gpu(top, 1, _at(c, T * step))

    def backward_gpu(self, top, propagate_down, bottom):
        self._check_backward(propagate_down)
        T, n, d = self.T, self.N, self.num_output
        blas, dev = gpu.blas(), self._dev
        step, gstep = n * d, n * 4 * d
        gates, hc = dev.floats("gates", T * gstep), dev.floats("hc", T * step)
        c = dev.floats("c", (T + 1) * step)
        dgates = dev.floats("dgates", T * gstep)
        dc, dh, carry = dev.floats("dc", step), dev.floats("dh", step), dev.floats("carry", step)
        gpu_set(step, 0.0, dc)
        top_diff = top[0].gpu_diff
        w_hc, cont = self._param("W_hc").gpu_data, bottom[1].gpu_data
        hidden_diff, unit = gpu.kernel("recurrent_hidden_diff"), gpu.kernel("lstm_unit_backward")
        for t in range(T - 1, -1, -1):
            dh_t = _at(top_diff, t * step)
            if t < T - 1:
                blas.gemm(False, False, n, d, 4 * d, 1.0, _at(dgates, (t + 1) * gstep), w_hc,
                          0.0, carry)
                hidden_diff(step, step, d, dh_t, carry, _at(cont, (t + 1) * n), dh)
                dh_t = dh
            unit(step, step, d, _at(c, t * step), _at(gates, t * gstep), _at(cont, t * n),
                 _at(c, (t + 1) * step), dc, dh_t, dc, _at(dgates, t * gstep))
        if self._learns("W_hc"):
            blas.gemm(True, False, 4 * d, d, T * n, 1.0, dgates, hc, 1.0,
                      self._param("W_hc").mutable_gpu_diff)
        self._input_backward_gpu(bottom, dgates, "W_xc", "b_c", self._static_name())
        self._zero_state_diffs(propagate_down, bottom, on_gpu=True)
