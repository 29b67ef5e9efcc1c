"""InnerProduct's device code (cuBLAS products) against its host code:
axis handling, transposed weights, bias, and which gradients backward
computes."""
import numpy as np
import pytest

from gpu_check import compare_cpu_gpu
from gradient_check import layer_param
from sppcaffe.blob import Blob
from sppcaffe.layer import create_layer
from sppcaffe.proto import caffe_pb2

FILLERS = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'

# settings, input shape
CASES = {
    "axis1": ("num_output: 5", (3, 2, 3, 2)),
    "axis2": ("num_output: 4 axis: 2", (2, 3, 2, 2)),
    "axis_neg": ("num_output: 4 axis: -1", (2, 3, 5)),
    "axis0": ("num_output: 3 axis: 0", (2, 3)),
    "one_row": ("num_output: 6", (1, 7)),
    "transpose": ("num_output: 5 transpose: true", (3, 4, 2)),
    "transpose_no_bias": ("num_output: 3 transpose: true bias_term: false", (4, 6)),
    "no_bias": ("num_output: 2 bias_term: false", (4, 3)),
}


def ip_layer(settings):
    text = f'name: "ip" type: "InnerProduct" inner_product_param {{ {settings} {FILLERS} }}'
    return create_layer(layer_param(text), caffe_pb2.TRAIN)


@pytest.mark.parametrize("case", sorted(CASES))
def test_device_matches_host(gpu_device, case):
    settings, shape = CASES[case]
    compare_cpu_gpu(ip_layer(settings), [Blob(shape)], [Blob()])


@pytest.mark.parametrize("propagate_down", [True, False])
@pytest.mark.parametrize("params", [[True, True], [False, True], [True, False], [False, False]],
                         ids=["w_b", "b_only", "w_only", "none"])
@pytest.mark.parametrize("case", ["axis1", "transpose"])
def test_backward_computes_only_what_is_wanted(gpu_device, case, propagate_down, params):
    settings, shape = CASES[case]
    layer = ip_layer(settings)
    bottom, top = [Blob(shape)], [Blob()]
    layer.setup(bottom, top)
    layer.param_propagate_down = params             # what lr_mult 0 does in a net
    _, grads, param_grads = compare_cpu_gpu(layer, bottom, top, propagate_down=[propagate_down],
                                            setup=False)
    for wanted, grad in zip(params, param_grads):
        assert np.any(grad != 0) == wanted          # skipped gradients stay untouched (0)
    assert (grads[0] is not None) == propagate_down


def test_rows_change_between_calls(gpu_device):
    # The ones vector behind the bias grows with the number of rows.
    layer = ip_layer("num_output: 3")
    bottom, top = [Blob((2, 4))], [Blob()]
    compare_cpu_gpu(layer, bottom, top)
    bottom[0].reshape(5, 4)
    layer.reshape(bottom, top)
    compare_cpu_gpu(layer, bottom, top, setup=False, seed=1)
