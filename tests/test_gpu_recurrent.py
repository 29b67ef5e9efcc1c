"""Device code of Embed (kernels/embed.cu), LSTMUnit, RNN and LSTM
(kernels/recurrent.cu with cuBLAS products) against their host code."""
import numpy as np
import pytest

from gpu_check import compare_cpu_gpu
from gradient_check import layer_param
from sppcaffe import backends
from sppcaffe.blob import Blob
from sppcaffe.layer import LayerError, create_layer
from sppcaffe.proto import caffe_pb2

FILLERS = ('weight_filler { type: "uniform" min: -0.5 max: 0.5 } '
           'bias_filler { type: "uniform" min: -0.5 max: 0.5 }')


def make_layer(text):
    return create_layer(layer_param(text), caffe_pb2.TEST)


def blob(values):
    values = np.asarray(values, np.float32)
    b = Blob(values.shape)
    b.data[...] = values
    return b


# ---- Embed -------------------------------------------------------------------------
@pytest.mark.parametrize("bias", ["true", "false"])
def test_embed_device_code_matches_host(gpu_device, bias):
    layer = make_layer(f'name: "embed" type: "Embed" embed_param {{ num_output: 5 input_dim: 7 '
                       f'bias_term: {bias} {FILLERS} }}')
    # Repeated indices: the device scatters their gradients onto one row.
    bottom = [blob([[1, 3, 1], [6, 1, 0]])]
    compare_cpu_gpu(layer, bottom, [Blob()], propagate_down=[False], randomize=False,
                    rtol=1e-5, atol=1e-6)


def test_embed_device_checks_indices(gpu_device):
    layer = make_layer('name: "embed" type: "Embed" embed_param { num_output: 2 input_dim: 3 }')
    bottom, top = [blob([0, 3])], [Blob()]
    layer.setup(bottom, top)
    with pytest.raises(LayerError, match="index"):
        layer.forward_gpu(bottom, top)


# ---- LSTMUnit ----------------------------------------------------------------------
@pytest.mark.parametrize("cont", [[0, 0, 0], [1, 0, 1]])
def test_lstm_unit_device_code_matches_host(gpu_device, cont):
    rng = np.random.default_rng(0)
    bottom = [blob(rng.uniform(-2, 2, (1, 3, 4))), blob(rng.uniform(-2, 2, (1, 3, 16))),
              blob([cont])]
    compare_cpu_gpu(make_layer('name: "unit" type: "LSTMUnit"'), bottom, [Blob(), Blob()],
                    propagate_down=[True, True, False], randomize=False)


# ---- RNN and LSTM ------------------------------------------------------------------
T, N, D = 3, 2, 4


def sequence_inputs(kind, static, expose, seed=0, cont=((0, 0), (1, 0), (1, 1))):
    rng = np.random.default_rng(seed)
    bottom = [blob(rng.uniform(-1, 1, (T, N, 3))), blob(cont)]
    if static:
        bottom.append(blob(rng.uniform(-1, 1, (N, 2, 2))))
    if expose:
        bottom += [blob(rng.uniform(-1, 1, (1, N, D))) for _ in range(2 if kind == "LSTM" else 1)]
    return bottom


def sequence_layer(kind, expose=False):
    extra = "expose_hidden: true" if expose else ""
    return make_layer(f'name: "{kind.lower()}" type: "{kind}" '
                      f'recurrent_param {{ num_output: {D} {FILLERS} {extra} }}')


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("expose", [False, True])
def test_sequence_device_code_matches_host(gpu_device, kind, static, expose):
    # A new sequence at t = 0 where the state carries over, so the host pass
    # (run first) leaves nothing the device pass depends on.
    cont = ((1, 1), (0, 1), (1, 1)) if expose else ((0, 0), (1, 0), (1, 1))
    bottom = sequence_inputs(kind, static, expose, cont=cont)
    top = [Blob() for _ in range(1 + (len(bottom) - 2 - static))]
    propagate = [True, False] + [True] * (len(bottom) - 2)
    compare_cpu_gpu(sequence_layer(kind, expose), bottom, top, propagate_down=propagate,
                    randomize=False, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_device_state_carries_over_like_the_host(gpu_device, kind):
    bottom = sequence_inputs(kind, False, False, cont=((1, 1), (1, 0), (1, 1)))
    layer, top = sequence_layer(kind), [Blob()]
    backends.set_mode_cpu()
    try:
        layer.setup(bottom, top)
        host = []
        for _ in range(2):
            layer.forward(bottom, top)
            host.append(top[0].data.copy())
        layer.reset()
    finally:
        backends.set_mode_gpu()
    for expected in host:
        layer.forward_gpu(bottom, top)
        np.testing.assert_allclose(top[0].data, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_device_backward_refuses_cont(gpu_device, kind):
    bottom, layer, top = sequence_inputs(kind, False, False), sequence_layer(kind), [Blob()]
    layer.setup(bottom, top)
    layer.forward_gpu(bottom, top)
    with pytest.raises(LayerError, match="sequence indicators"):
        layer.backward_gpu(top, [True, True], bottom)
