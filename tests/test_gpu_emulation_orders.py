"""Every kernel, run as a GPU would be free to run it: each layer's device
code runs once on the plain host build, capturing its real launches
(launch_replay.py), and every captured launch is replayed with its indices
reversed, shuffled, and in parallel on OpenMP workers (host_shim.h).  The
memory after must be the capture's bit for bit -- except for kernels
declared atomic-accumulating, which get the reordered sums' rounding.

A kernel no case launches fails ``test_every_kernel_is_captured``: add a
case to CASES (or SOLVERS, run_fills) with a new kernel.  The whole GPU
test suite can run in one of the orders too: SPPCAFFE_HOST_ORDER=parallel
(host_device.py)."""
from dataclasses import dataclass

import numpy as np
import pytest

from gpu_check import on_device
from gradient_check import layer_param
from launch_replay import CapturingDevice, differences, replay
from sppcaffe import fillers, io
from sppcaffe.blob import Blob
from sppcaffe.layer import create_layer
from sppcaffe.proto import caffe_pb2
from sppcaffe.solvers import get_solver
from sppcaffe.backends.gpu.host_device import HostDevice
from sppcaffe.backends.gpu.sources import kernel_index

REORDERED = ("reversed", "shuffled", "parallel")
FILLERS = 'weight_filler { type: "uniform" min: -0.5 max: 0.5 } ' \
          'bias_filler { type: "uniform" min: -0.5 max: 0.5 }'


# ---- bottoms ------------------------------------------------------------------------
def labels(shape, classes):
    return lambda rng: rng.integers(0, classes, shape)


def positive(shape):
    return lambda rng: rng.uniform(0.1, 1.0, shape)


def fixed(values):
    return lambda rng: np.asarray(values)


def rois(count, batch, height, width, scale=1.0):
    """(batch index, x1, y1, x2, y2) boxes in input pixels, some past the edges."""
    def make(rng):
        boxes = np.zeros((count, 5))
        boxes[:, 0] = rng.integers(0, batch, count)
        # Two corners sorted per coordinate: (x1, y1) then (x2, y2).
        corners = np.sort(rng.uniform(-2, max(height, width) + 2, (count, 2, 2)), axis=1) / scale
        boxes[:, 1:] = np.round(corners.reshape(count, 4))
        return boxes
    return make


@dataclass
class Case:
    name: str
    text: str                   # the LayerParameter, less its name
    bottoms: list               # shapes (uniform in [-1, 1]) or rng -> array
    tops: int = 1
    down: list = None           # propagate_down; every bottom by default
    phase: int = caffe_pb2.TRAIN

    def run(self, rng):
        layer = create_layer(layer_param(f'name: "{self.name}" {self.text}'), self.phase)
        bottom = []
        for spec in self.bottoms:
            values = rng.uniform(-1, 1, spec) if isinstance(spec, tuple) else spec(rng)
            blob = Blob(np.shape(values))
            blob.data[...] = values
            bottom.append(blob)
        top = [Blob() for _ in range(self.tops)]
        layer.setup(bottom, top)
        layer.reshape(bottom, top)
        layer.forward_gpu(bottom, top)
        for t in top:
            t.diff[...] = rng.uniform(-1, 1, t.shape)
        down = self.down if self.down is not None else [True] * len(bottom)
        layer.backward_gpu(top, down, bottom)


CONV = f"num_output: 4 {FILLERS}"
CASES = [
    # activations.cu, neuron.cu
    Case("relu", 'type: "ReLU" relu_param { negative_slope: 0.1 }', [(2, 3, 4)]),
    Case("sigmoid", 'type: "Sigmoid"', [(2, 3, 4)]),
    Case("tanh", 'type: "TanH"', [(2, 3, 4)]),
    Case("absval", 'type: "AbsVal"', [(2, 3, 4)]),
    Case("bnll", 'type: "BNLL"', [(2, 3, 4)]),
    Case("clip", 'type: "Clip" clip_param { min: -0.5 max: 0.5 }', [(2, 3, 4)]),
    Case("elu", 'type: "ELU" elu_param { alpha: 0.7 }', [(2, 3, 4)]),
    Case("exp", 'type: "Exp" exp_param { base: 2 scale: 0.5 shift: 0.1 }', [(2, 3, 4)]),
    Case("log", 'type: "Log" log_param { scale: 0.5 shift: 1 }', [(2, 3, 4)]),
    Case("power", 'type: "Power" power_param { power: 1.5 scale: 0.5 shift: 1 }', [(2, 3, 4)]),
    Case("prelu", 'type: "PReLU"', [(3, 4, 2, 5)]),
    Case("prelu_shared", 'type: "PReLU" prelu_param { channel_shared: true }', [(3, 4, 5)]),
    Case("swish", 'type: "Swish" swish_param { beta: 1.5 }', [(2, 3, 4)]),
    Case("threshold", 'type: "Threshold" threshold_param { threshold: 0.2 }', [(2, 3, 4)],
         down=[False]),
    Case("dropout", 'type: "Dropout" dropout_param { dropout_ratio: 0.3 }', [(4, 50)]),
    # copy.cu, eltwise.cu, crop.cu, slicing.cu
    Case("concat", 'type: "Concat"', [(2, 3, 4), (2, 5, 4)]),
    Case("slice", 'type: "Slice" slice_param { axis: 1 slice_point: 2 }', [(2, 5, 3)], tops=2),
    Case("prod", 'type: "Eltwise" eltwise_param { operation: PROD }', [(2, 3, 4)] * 3),
    Case("prod_unstable", 'type: "Eltwise" eltwise_param { operation: PROD '
         'stable_prod_grad: false }', [positive((2, 3, 4))] * 3),
    Case("sum", 'type: "Eltwise" eltwise_param { operation: SUM coeff: 1 coeff: -2 coeff: 0.5 }',
         [(2, 3, 4)] * 3),
    Case("max", 'type: "Eltwise" eltwise_param { operation: MAX }', [(2, 3, 4)] * 3),
    Case("crop", 'type: "Crop" crop_param { axis: 2 offset: 1 offset: 2 }',
         [(2, 3, 7, 8), (2, 3, 4, 4)], down=[True, False]),
    Case("tile", 'type: "Tile" tile_param { axis: 1 tiles: 3 }', [(2, 3, 4)]),
    Case("reindex", 'type: "BatchReindex"', [(4, 3, 2), fixed([3, 0, 3, 1, 3, 2])],
         down=[True, False]),
    Case("filter", 'type: "Filter"', [(5, 2, 3), (5, 4), fixed([[1], [0], [1], [1], [0]])],
         tops=2, down=[True, True, False]),
    # embed.cu, recurrent.cu
    Case("embed", f'type: "Embed" embed_param {{ num_output: 5 input_dim: 7 {FILLERS} }}',
         [labels((40, 3), 7)], down=[False]),      # repeated indices: contended atomics
    Case("lstm_unit", 'type: "LSTMUnit"', [(1, 3, 4), (1, 3, 16), fixed([[1, 0, 1]])], tops=2,
         down=[True, True, False]),
    Case("rnn", f'type: "RNN" recurrent_param {{ num_output: 4 {FILLERS} }}',
         [(3, 2, 3), fixed([[0, 0], [1, 0], [1, 1]])], down=[True, False]),
    Case("lstm", f'type: "LSTM" recurrent_param {{ num_output: 4 {FILLERS} }}',
         [(3, 2, 3), fixed([[0, 0], [1, 0], [1, 1]])], down=[True, False]),
    # im2col.cu
    Case("conv", f'type: "Convolution" convolution_param {{ {CONV} kernel_size: 3 pad: 1 '
         'stride: 2 }', [(2, 3, 7, 6)]),
    Case("conv_1x1", f'type: "Convolution" convolution_param {{ {CONV} kernel_size: 1 }}',
         [(2, 3, 4, 5)]),
    Case("deconv", f'type: "Deconvolution" convolution_param {{ {CONV} kernel_size: 3 '
         'stride: 2 }', [(2, 3, 4, 3)]),
    Case("deconv_1x1", f'type: "Deconvolution" convolution_param {{ {CONV} kernel_size: 1 }}',
         [(2, 3, 4, 3)]),
    Case("im2col", 'type: "Im2col" convolution_param { kernel_size: 3 pad: 1 }', [(2, 3, 5, 4)]),
    # softmax.cu, loss.cu, loss_more.cu
    Case("softmax", 'type: "Softmax"', [(2, 5, 3)]),
    Case("softmax_loss", 'type: "SoftmaxWithLoss" loss_param { ignore_label: 2 }',
         [(4, 5, 3), labels((4, 3), 5)], down=[True, False]),
    Case("euclidean", 'type: "EuclideanLoss"', [(4, 6), (4, 6)]),
    Case("accuracy", 'type: "Accuracy" accuracy_param { top_k: 2 }', [(6, 4, 2), labels((6, 2), 4)],
         tops=2, down=[False, False], phase=caffe_pb2.TEST),
    Case("sigmoid_xent", 'type: "SigmoidCrossEntropyLoss"', [(4, 5), positive((4, 5))],
         down=[True, False]),
    Case("hinge", 'type: "HingeLoss" hinge_loss_param { norm: L2 }', [(6, 4), labels((6,), 4)],
         down=[True, False]),
    Case("multinomial", 'type: "MultinomialLogisticLoss"', [positive((6, 4, 1, 1)),
                                                             labels((6,), 4)], down=[True, False]),
    Case("infogain", 'type: "InfogainLoss"', [(6, 4), labels((6,), 4), positive((1, 1, 4, 4))],
         tops=2, down=[True, False, False]),
    Case("contrastive", 'type: "ContrastiveLoss" contrastive_loss_param { margin: 2 }',
         [(8, 5), (8, 5), labels((8,), 2)], down=[True, True, False]),
    Case("smooth_l1", 'type: "SmoothL1Loss" smooth_l1_loss_param { sigma: 2 }',
         [(2, 8, 3), (2, 8, 3), positive((2, 8, 3)), positive((2, 8, 3))],
         down=[True, True, False, False]),
    # lrn.cu, normalization.cu, scale_bias.cu
    Case("lrn_across", 'type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 }',
         [(2, 5, 3, 4)]),
    Case("lrn_within", 'type: "LRN" lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL }',
         [(2, 3, 5, 4)]),
    Case("batchnorm", 'type: "BatchNorm"', [(4, 3, 2, 5)]),
    Case("batchnorm_global", 'type: "BatchNorm" batch_norm_param { use_global_stats: true }',
         [(4, 3, 2, 5)], phase=caffe_pb2.TEST),
    Case("mvn", 'type: "MVN"', [(3, 4, 2, 5)]),
    Case("scale", 'type: "Scale" scale_param { axis: 1 num_axes: 1 bias_term: true '
         'filler { type: "uniform" } bias_filler { type: "uniform" } }', [(2, 3, 4)]),
    Case("scale_2", 'type: "Scale"', [(2, 3, 4), (3,)]),
    Case("bias", 'type: "Bias" bias_param { axis: 1 num_axes: 1 filler { type: "uniform" } }',
         [(2, 3, 4)]),
    # pooling.cu, roi_pooling.cu, reduction.cu
    Case("pool_max", 'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }',
         [(2, 3, 7, 6)]),
    Case("pool_max_mask", 'type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }',
         [(2, 3, 6, 6)], tops=2),
    Case("pool_ave", 'type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }',
         [(2, 3, 7, 6)]),
    Case("spp_max", 'type: "SPP" spp_param { pyramid_height: 3 pool: MAX }', [(2, 3, 9, 7)]),
    Case("spp_ave", 'type: "SPP" spp_param { pyramid_height: 3 pool: AVE }', [(2, 3, 9, 7)]),
    Case("window_max", 'type: "WindowSPP" spp_param { pool: MAX method: ADAPTIVE levels: 3 '
         'levels: 1 }', [(2, 3, 5, 7), rois(9, 2, 80, 112)], down=[True, False]),
    Case("window_ave", 'type: "WindowSPP" spp_param { pool: AVE method: ADAPTIVE levels: 3 '
         'levels: 1 }', [(2, 3, 5, 7), rois(9, 2, 80, 112)], down=[True, False]),
    Case("roi_pool", 'type: "ROIPooling" roi_pooling_param { pooled_h: 3 pooled_w: 2 '
         'spatial_scale: 0.5 }', [(2, 3, 8, 7), rois(7, 2, 8, 7, 0.5)], down=[True, False]),
    Case("reduction_sum", 'type: "Reduction" reduction_param { operation: SUM axis: 1 }',
         [(2, 3, 4)]),
    Case("reduction_asum", 'type: "Reduction" reduction_param { operation: ASUM axis: 1 coeff: 2 }',
         [(2, 3, 4)]),
    Case("reduction_sumsq", 'type: "Reduction" reduction_param { operation: SUMSQ }', [(2, 3, 4)]),
    Case("reduction_mean", 'type: "Reduction" reduction_param { operation: MEAN axis: 2 }',
         [(2, 3, 4)]),
    Case("argmax", 'type: "ArgMax" argmax_param { top_k: 2 out_max_val: true axis: 1 }',
         [(3, 5, 2)], down=[False], phase=caffe_pb2.TEST),
]

SOLVER_NET = """
layer { name: "data" type: "DummyData" top: "x" top: "y"
        dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
                           data_filler { type: "gaussian" } data_filler { type: "gaussian" } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "p"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
"""
SOLVERS = {   # solver type: its fields (each rule's kernel, and the L1 decay one)
    "SGD": "momentum: 0.9 weight_decay: 0.01 regularization_type: 'L1'",
    "Nesterov": "momentum: 0.9",
    "AdaGrad": "delta: 1e-4",
    "RMSProp": "rms_decay: 0.9 delta: 1e-4",
    "AdaDelta": "momentum: 0.95 delta: 1e-4 base_lr: 1",
    "Adam": "momentum: 0.9 momentum2: 0.999 delta: 1e-4",
}


def run_solver(kind):
    text = (f"net_param {{ {SOLVER_NET} }} type: '{kind}' base_lr: 0.01 lr_policy: 'fixed' "
            f"max_iter: 2 display: 0 random_seed: 3 snapshot_after_train: false {SOLVERS[kind]}")
    solver = get_solver(io.parse_text(text, caffe_pb2.SolverParameter()))
    solver.step(2)


def run_fills():
    blob = Blob((300,))
    fillers.gpu_set(300, 0.5, blob.mutable_gpu_data)
    fillers.gpu_rng_uniform(300, -1.0, 2.0, blob.mutable_gpu_data, seed=1, offset=7)
    fillers.gpu_rng_gaussian(300, 0.0, 2.0, blob.mutable_gpu_data, seed=2)
    fillers.gpu_rng_bits(300, blob.mutable_gpu_data, seed=3)


@pytest.fixture(scope="module")
def captured():
    """Every case run once on a capturing device: {kernel name: [Capture]}."""
    device = CapturingDevice()
    rng = np.random.default_rng(0)
    with on_device(device):
        for case in CASES:
            device.origin = f"case '{case.name}'"
            case.run(rng)
        for kind in SOLVERS:
            device.origin = f"solver {kind}"
            run_solver(kind)
        device.origin = "fillers"
        run_fills()
    return device.captures


def test_every_kernel_is_captured(captured):
    missing = sorted(set(kernel_index()) - {name for name, taken in captured.items() if taken})
    assert not missing, (f"kernels no case in {__name__}.py launches, so their order "
                         f"independence is untested: {', '.join(missing)} (add a case)")


@pytest.mark.parametrize("order", REORDERED)
def test_every_captured_launch_gives_the_same_memory_in_any_order(captured, order):
    device = HostDevice(order=order, seed=11)
    problems = []
    for name in sorted(captured):
        for capture in captured[name]:
            problems += differences(capture, replay(capture, device), order)
    assert not problems, "\n".join(problems)


# ---- the emulation itself --------------------------------------------------------------
TOYS = r'''
#include "common.cuh"
// Which index each step of the launch ran, and which simulated thread ran it.
extern "C" __global__ void toy_visits(int n, int* counter, int* step_index, int* thread_of) {
  CUDA_KERNEL_LOOP(i, n) {
    step_index[atomicAdd(counter, 1)] = (int)i;
    thread_of[i] = (int)(blockIdx.x * blockDim.x + threadIdx.x);
  }
}
// Order-dependent: each index reads what an earlier one wrote.
extern "C" __global__ void toy_running_sum(int n, float* x) {
  CUDA_KERNEL_LOOP(i, n) {
    if (i > 0) x[i] += x[i - 1];
  }
}
// Racy: a plain read-modify-write of one float from every index.
extern "C" __global__ void toy_racy_total(int n, const float* x, float* total) {
  CUDA_KERNEL_LOOP(i, n) {
    *total += x[i];
  }
}
// The same with a real atomic: exact for integer values, in any order.
extern "C" __global__ void toy_atomic_total(int n, const float* x, float* total) {
  CUDA_KERNEL_LOOP(i, n) {
    atomicAdd(total, x[i]);
  }
}
// `break` ends the simulated thread's loop, as on a GPU.
extern "C" __global__ void toy_break(int n, int stop, float* x) {
  CUDA_KERNEL_LOOP(i, n) {
    if (i == stop) break;
    x[i] = 1.0f;
  }
}
'''


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    path = tmp_path_factory.mktemp("toys") / "toys.cu"
    path.write_text(TOYS)
    return path


def _ints(device, values):
    values = np.asarray(values, np.int32)
    memory = device.alloc(values.nbytes)
    device.upload(memory.ptr, values)
    return memory


def _read(device, memory, dtype, count):
    out = np.empty(count, dtype)
    device.download(memory.ptr, out)
    return out


def visits(device, toys, n):
    """(indices in the order they ran, simulated thread of each index)."""
    counter, steps, threads = _ints(device, [0]), _ints(device, [-1] * n), _ints(device, [-1] * n)
    device.kernels_in(toys)["toy_visits"](n, n, counter.ptr, steps.ptr, threads.ptr)
    return _read(device, steps, np.int32, n), _read(device, threads, np.int32, n)


def test_orders_visit_every_index_once(toys):
    n = 1000
    natural, reversed_, shuffled, other_seed = (
        visits(HostDevice(order=o, seed=s), toys, n)[0]
        for o, s in [("natural", 0), ("reversed", 0), ("shuffled", 1), ("shuffled", 2)])
    np.testing.assert_array_equal(natural, np.arange(n))
    np.testing.assert_array_equal(reversed_, np.arange(n)[::-1])
    for order in (shuffled, other_seed):
        np.testing.assert_array_equal(np.sort(order), np.arange(n))
        assert (order != np.arange(n)).mean() > 0.9
    assert (shuffled != other_seed).mean() > 0.9
    # Each launch of a device draws a new shuffle.
    device = HostDevice(order="shuffled", seed=1)
    assert not np.array_equal(visits(device, toys, n)[0], visits(device, toys, n)[0])


def test_parallel_order_runs_cudas_grid_of_simulated_threads(toys):
    n = 70_000                  # 274 blocks of 256 threads
    steps, threads = visits(HostDevice(order="parallel", workers=3), toys, n)
    np.testing.assert_array_equal(np.sort(steps), np.arange(n))     # each index once
    np.testing.assert_array_equal(threads, np.arange(n))            # by its own thread


def test_break_ends_the_loop_in_every_order(toys):
    for order in ("natural", "reversed"):
        device = HostDevice(order=order)
        x = device.alloc(40)
        device.memset0(x.ptr, 40)
        device.kernels_in(toys)["toy_break"](10, 10, 4, x.ptr)
        # Reversed runs 9, 8, ..., 5, then stops at 4.
        expected = [1] * 4 + [0] * 6 if order == "natural" else [0] * 5 + [1] * 5
        np.testing.assert_array_equal(_read(device, x, np.float32, 10), expected)


def _floats(device, values):
    values = np.asarray(values, np.float32)
    memory = device.alloc(values.nbytes)
    device.upload(memory.ptr, values)
    return memory


@pytest.mark.parametrize("toy", ["toy_running_sum", "toy_racy_total"])
def test_an_order_dependent_kernel_is_caught(toys, toy):
    """The replay test's own check, on kernels that are wrong on a GPU."""
    rng = np.random.default_rng(0)
    n = 50_000
    capturing = CapturingDevice()
    x = _floats(capturing, rng.uniform(-1, 1, n))
    total = _floats(capturing, [0.0])
    kernel = capturing.kernels_in(toys)[toy]
    args = (n, x.ptr) if toy == "toy_running_sum" else (n, x.ptr, total.ptr)
    kernel(n, *args)
    (capture,) = capturing.captures[toy]
    for order in REORDERED:
        device = HostDevice(order=order, seed=3)
        found = differences(capture, replay(capture, device, device.kernels_in(toys)[toy]), order)
        assert found and f"{toy} (from ?, count {n}), {order} order" in found[0]


def test_environment_picks_the_order(monkeypatch):
    from sppcaffe import GPUUnavailable
    monkeypatch.setenv("SPPCAFFE_HOST_ORDER", "Shuffled")
    assert HostDevice().order == "shuffled" and HostDevice(order="natural").order == "natural"
    monkeypatch.setenv("SPPCAFFE_HOST_ORDER", "backwards")
    with pytest.raises(GPUUnavailable, match="SPPCAFFE_HOST_ORDER='backwards': expected one of "
                                              "natural, reversed, shuffled, parallel"):
        HostDevice()
    with pytest.raises(ValueError, match="HostDevice order 'sideways'"):
        HostDevice(order="sideways")


def test_atomics_are_real_and_their_rounding_is_tolerated_when_declared(toys):
    n = 50_000
    ones = np.ones(n, np.float32)
    for workers in (2, 4):
        device = HostDevice(order="parallel", workers=workers)
        x, total = _floats(device, ones), _floats(device, [0.0])
        device.kernels_in(toys)["toy_atomic_total"](n, n, x.ptr, total.ptr)
        assert _read(device, total, np.float32, 1)[0] == n      # no update lost

    capturing = CapturingDevice()
    x = _floats(capturing, np.random.default_rng(1).uniform(0, 1, n))
    total = _floats(capturing, [0.0])
    capturing.kernels_in(toys)["toy_atomic_total"](n, n, x.ptr, total.ptr)
    (capture,) = capturing.captures["toy_atomic_total"]
    device = HostDevice(order="reversed")
    memory = replay(capture, device, device.kernels_in(toys)["toy_atomic_total"])
    assert differences(capture, memory, "reversed", atomic=False)     # other last bits
    assert not differences(capture, memory, "reversed", atomic=True)


def test_atomic_accumulating_is_read_from_the_comment_right_above(tmp_path):
    from sppcaffe.backends.gpu.sources import atomic_accumulating, atomic_accumulating_kernels
    path = tmp_path / "marks.cu"
    path.write_text('''// atomic-accumulating: not this one, code comes between
int unrelated;
extern "C" __global__ void plain(int n) {}
// Sums rows.
// atomic-accumulating: float adds in launch order.
//
extern "C" __global__ void summed(int n) {}
''')
    assert atomic_accumulating(path) == {"summed"}
    assert "embed_backward" in atomic_accumulating_kernels()
