"""What a real GPU would do differently from the one-thread host build
(issue 16), checked without a GPU:

- float labels read the same on every platform (NaN is no class, never the
  ignore_label; checked with the host build's float -> int conversions
  under UBSan, where x86 and a GPU disagree);
- WindowSPP's backward gives the same bits in any launch order;
- LRN's window sums across channels stay exact after a large value leaves;
- empty batches never hand cuBLAS a zero size it refuses;
- per-class accuracy no longer walks every position per class;
- scratch buffers and frozen parameters' saved diffs are reused, not
  reallocated, from one pass to the next;
- CudaDevice.close() destroys the cuBLAS handle and releases the context.
"""
import time

import numpy as np
import pytest

import fake_cuda
from gpu_check import compare_cpu_gpu, on_device
from gradient_check import layer_param
from sppcaffe import backends, io
from sppcaffe.backends import gpu
from sppcaffe.backends.gpu import Workspace, cuda_device, host_device
from sppcaffe.backends.gpu.host_device import HostDevice
from sppcaffe.blob import Blob
from sppcaffe.layer import LayerError, create_layer
from sppcaffe.layers.loss import INVALID_LABEL, truncated_labels
from sppcaffe.net import Net
from sppcaffe.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
# Labels no class is named by; each float -> int conversion of them is
# undefined in C (NaN, infinities, beyond int's range) except 2.7 and -0.5.
BAD_LABELS = [np.nan, np.inf, -np.inf, 3e9, -3e9, 1e30]


def make(text, phase=TRAIN):
    return create_layer(layer_param(f'name: "L" {text}'), phase)


def blob(values):
    values = np.asarray(values, np.float32)
    b = Blob(values.shape)
    b.data[...] = values
    return b


# ---- row 2: labels read in float before the cast ---------------------------------
@pytest.fixture
def sanitized_device(monkeypatch):
    """The plain host build with UBSan checking every float -> int
    conversion: converting NaN or an out-of-range float is undefined, and
    that is exactly where x86 (INT_MIN) and a GPU (0, or saturation) differ.
    Its reports go to stderr."""
    monkeypatch.setattr(host_device, "CXX_FLAGS",
                        host_device.CXX_FLAGS + ["-fsanitize=float-cast-overflow"])
    with on_device(HostDevice()) as device:
        yield device


def _bad_labels(count):
    return (BAD_LABELS * count)[:count]


LABEL_CASES = {
    # name: (layer text, bottoms, propagate_down, the top that must be NaN)
    "softmax_loss": ('type: "SoftmaxWithLoss" loss_param { ignore_label: 0 }',
                     lambda: [np.zeros((6, 4)), _bad_labels(6)], [True, False], 0),
    "accuracy": ('type: "Accuracy" accuracy_param { ignore_label: 0 }',
                 lambda: [np.zeros((6, 4)), _bad_labels(6)], None, 0),
    "sigmoid_xent": ('type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: 0 }',
                     lambda: [np.zeros((2, 3)), np.reshape(_bad_labels(6), (2, 3))],
                     [True, False], 0),
    "hinge": ('type: "HingeLoss"', lambda: [np.zeros((6, 4)), _bad_labels(6)], [True, False], 0),
    "multinomial": ('type: "MultinomialLogisticLoss"',
                    lambda: [np.full((6, 4, 1, 1), 0.25), _bad_labels(6)], [True, False], 0),
    "infogain": ('type: "InfogainLoss" loss_param { ignore_label: 0 }',
                 lambda: [np.zeros((6, 4)), _bad_labels(6), np.ones((1, 1, 4, 4))],
                 [True, False, False], 0),
    "contrastive": ('type: "ContrastiveLoss"',
                    lambda: [np.ones((6, 3)), np.zeros((6, 3)), _bad_labels(6)],
                    [True, True, False], 0),
}


@pytest.mark.parametrize("case", sorted(LABEL_CASES))
def test_bad_labels_convert_the_same_on_every_platform(sanitized_device, capfd, case):
    """Before the fix: 'runtime error: nan is outside the range of
    representable values of type int' (and NaN labels passed for class 0
    on a GPU, or for ignore_label 0)."""
    text, bottoms, down, nan_top = LABEL_CASES[case]
    layer = make(text, TEST if case == "accuracy" else TRAIN)
    bottom = [blob(b) for b in bottoms()]
    top = [Blob() for _ in range(2 if case == "accuracy" else 1)]
    layer.setup(bottom, top)
    layer.forward_gpu(bottom, top)
    assert np.isnan(top[nan_top].data).all(), "a label naming no class gives a NaN loss"
    if down is not None:
        top[0].diff[...] = 1
        layer.backward_gpu(top, down, bottom)
        assert np.isnan(bottom[0].diff).any()
    assert "runtime error" not in capfd.readouterr().err


def test_embed_and_roi_kernels_convert_bad_indices_defined(sanitized_device, capfd):
    """The host code rejects these before launching; the kernels must still
    not depend on the platform for them."""
    indices = blob(BAD_LABELS)
    weight = blob(np.ones((4, 2)))
    top = Blob((len(BAD_LABELS), 2))
    n = top.count
    gpu.kernel("embed_forward")(n, n, 2, 4, indices.gpu_data, weight.gpu_data,
                                top.mutable_gpu_data)
    np.testing.assert_array_equal(top.data, 0)          # no row of the table
    gpu.kernel("embed_backward")(n, n, 2, 4, indices.gpu_data, top.gpu_diff,
                                 weight.mutable_gpu_diff)
    rois = blob([[np.nan, 0, 0, 3, 3], [0, np.nan, -np.inf, np.inf, 1e30], [3e9, 0, 0, 1, 1]])
    x = blob(np.ones((1, 1, 4, 4)))
    y, argmax = Blob((3, 1, 2, 2)), Blob((3, 1, 2, 2))      # argmax: int32 in float's room
    gpu.kernel("roi_pooling_forward")(y.count, y.count, x.gpu_data, rois.gpu_data, 1.0, 1, 1, 4,
                                      4, 2, 2, y.mutable_gpu_data, argmax.mutable_gpu_data)
    gpu.kernel("roi_pooling_backward")(x.count, x.count, y.gpu_diff, argmax.gpu_data,
                                       rois.gpu_data, 3, 1.0, 1, 4, 4, 2, 2, x.mutable_gpu_diff)
    assert "runtime error" not in capfd.readouterr().err


def test_truncated_labels_decide_in_float():
    labels = truncated_labels(np.array(BAD_LABELS + [2.7, -0.5, -1.0, 2.0 ** 31 - 128],
                                       np.float32))
    assert labels[:len(BAD_LABELS)].tolist() == [INVALID_LABEL] * len(BAD_LABELS)
    assert labels[len(BAD_LABELS):].tolist() == [2, 0, -1, 2 ** 31 - 128]   # Caffe's truncation


@pytest.mark.parametrize("text", ['type: "SoftmaxWithLoss" loss_param { ignore_label: 0 }',
                                  'type: "Accuracy" accuracy_param { ignore_label: 0 }'])
def test_host_code_names_a_nan_label(text):
    """Before: 'label value -9223372036854775808' on x86 (and on ARM, where
    NaN converts to 0, the NaN was silently ignored as label 0)."""
    layer = make(text)
    bottom, top = [blob(np.zeros((3, 4))), blob([1, np.nan, 2])], [Blob()]
    layer.setup(bottom, top)
    with pytest.raises(LayerError, match=r"label value nan out of range \[0, 4\)"):
        layer.forward(bottom, top)


def test_host_code_rejects_nan_similarity_and_rois():
    layer = make('type: "ContrastiveLoss"')
    bottom, top = [blob(np.ones((2, 3))), blob(np.zeros((2, 3))), blob([1, np.nan])], [Blob()]
    layer.setup(bottom, top)
    with pytest.raises(LayerError, match="similarity label nan at pair 1"):
        layer.forward(bottom, top)
    layer = make('type: "ROIPooling" roi_pooling_param { pooled_h: 2 pooled_w: 2 }')
    bottom, top = [blob(np.ones((1, 1, 4, 4))), blob([[np.nan, 0, 0, 3, 3]])], [Blob()]
    layer.setup(bottom, top)
    with pytest.raises(LayerError, match="roi 0 is not finite"):
        layer.forward(bottom, top)


# ---- row 3: WindowSPP's backward, the same bits in any order ----------------------
def _window_spp_inputs(rng):
    x = rng.uniform(-1, 1, (2, 3, 6, 8)).astype(np.float32)
    rois = np.zeros((40, 5), np.float32)          # input pixels of the 6x8 map, S = 16
    rois[:, 0] = rng.integers(0, 2, 40)
    rois[:, [1, 3]] = np.sort(rng.integers(0, 128, (40, 2)), axis=1)
    rois[:, [2, 4]] = np.sort(rng.integers(0, 96, (40, 2)), axis=1)
    rois[-5:] = rois[:5]                                                # duplicates
    return x, rois


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_window_spp_backward_is_the_same_in_any_launch_order(pool):
    """Before: the atomicAdd scatter summed in launch order, so reversed,
    shuffled and parallel runs changed the last bits of dx."""
    x, rois = _window_spp_inputs(np.random.default_rng(3))
    dy = None
    results = {}
    for order in ("natural", "reversed", "shuffled", "parallel"):
        layer = make(f'type: "WindowSPP" spp_param {{ pool: {pool} method: ADAPTIVE levels: 4 '
                     f'levels: 2 levels: 1 }}')
        bottom, top = [blob(x), blob(rois)], [Blob()]
        with on_device(HostDevice(order=order, seed=7)):
            layer.setup(bottom, top)
            layer.forward_gpu(bottom, top)
            if dy is None:
                dy = np.random.default_rng(4).uniform(-1, 1, top[0].shape).astype(np.float32)
            top[0].diff[...] = dy
            layer.backward_gpu(top, [True, False], bottom)
            results[order] = bottom[0].diff.copy()
    for order, dx in results.items():
        np.testing.assert_array_equal(dx, results["natural"], err_msg=order)
    layer.backward(top, [True, False], bottom)                  # the host code
    np.testing.assert_allclose(results["natural"], bottom[0].diff, rtol=1e-5, atol=1e-6)


def test_cell_windows_lists_each_cells_windows_in_order():
    from sppcaffe.layers.window_pool_device import cell_windows
    rng = np.random.default_rng(5)
    h, w, images = 7, 9, 3
    x1, y1 = rng.integers(0, w, 50), rng.integers(0, h, 50)
    windows = np.stack([x1, y1, np.minimum(w - 1, x1 + rng.integers(0, 5, 50)),
                        np.minimum(h - 1, y1 + rng.integers(0, 5, 50))], axis=1)
    image = rng.integers(0, images, 50)
    begins, listed = cell_windows(windows, image, images, (h, w))
    for i in range(images * h * w):
        n, rest = divmod(i, h * w)
        y, x = divmod(rest, w)
        inside = ((image == n) & (windows[:, 0] <= x) & (x <= windows[:, 2])
                  & (windows[:, 1] <= y) & (y <= windows[:, 3]))
        assert listed[begins[i]:begins[i + 1]].tolist() == np.flatnonzero(inside).tolist()


# ---- row 4: LRN across channels after a large value --------------------------------
@pytest.mark.parametrize("size", [3, 5])
def test_lrn_across_channels_after_a_large_value(gpu_device, size):
    """Before: the running sum kept ~ulp(1e8) of the large square after it
    left the window; with k small that residual is all of the scale
    (10x off, or negative and powf gives NaN)."""
    x = np.full((2, 9, 2, 3), 1e-2, np.float32)
    x[:, 0] = 1e4
    x[1, 4] = -3e3
    x[:, 7, 1] = 0
    layer = make(f'type: "LRN" lrn_param {{ local_size: {size} alpha: 1 beta: 0.75 k: 1e-6 }}')
    compare_cpu_gpu(layer, [blob(x)], [Blob()], randomize=False, rtol=1e-4, atol=1e-6)


# ---- row 5: empty batches and cuBLAS's argument rules -----------------------------
class StrictCublas(fake_cuda.FakeCublas):
    """The cuBLAS stand-in with real cuBLAS's rules for what the backend
    calls: a leading dimension below max(1, rows) is status 7 (invalid
    value); an empty product returns at once, leaving the output as it was
    (gemm with k = 0 scales C by beta, as the reference BLAS)."""
    INVALID = 7

    def cublasSgemv_v2(self, handle, op, m, n, alpha, a, lda, x, incx, beta, y, incy):
        m_, n_, lda_ = fake_cuda._value(m), fake_cuda._value(n), fake_cuda._value(lda)
        if m_ < 0 or n_ < 0 or lda_ < max(1, m_):
            return self.INVALID
        if m_ == 0 or n_ == 0:
            return 0
        return super().cublasSgemv_v2(handle, op, m, n, alpha, a, lda, x, incx, beta, y, incy)

    def cublasSgemm_v2(self, handle, op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        if self._gemm_status(op_a, op_b, m, n, k, lda, ldb, ldc):
            return self.INVALID
        if 0 in (fake_cuda._value(m), fake_cuda._value(n)):
            return 0
        return super().cublasSgemm_v2(handle, op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta,
                                      c, ldc)

    def cublasSgemmStridedBatched(self, handle, op_a, op_b, m, n, k, alpha, a, lda, stride_a, b,
                                  ldb, stride_b, beta, c, ldc, stride_c, batch):
        if self._gemm_status(op_a, op_b, m, n, k, lda, ldb, ldc):
            return self.INVALID
        if 0 in (fake_cuda._value(m), fake_cuda._value(n), fake_cuda._value(batch)):
            return 0
        return super().cublasSgemmStridedBatched(handle, op_a, op_b, m, n, k, alpha, a, lda,
                                                 stride_a, b, ldb, stride_b, beta, c, ldc,
                                                 stride_c, batch)

    @staticmethod
    def _gemm_status(op_a, op_b, m, n, k, lda, ldb, ldc):
        op_a, op_b, m, n, k, lda, ldb, ldc = [fake_cuda._value(v) for v in
                                              (op_a, op_b, m, n, k, lda, ldb, ldc)]
        rows_a, rows_b = (k if op_a else m), (n if op_b else k)
        return (min(m, n, k) < 0 or lda < max(1, rows_a) or ldb < max(1, rows_b)
                or ldc < max(1, m))


@pytest.fixture
def strict_cuda(monkeypatch):
    """CudaDevice's code over the PyCUDA stand-ins and StrictCublas."""
    fake_cuda.install(monkeypatch)
    monkeypatch.setattr(cuda_device.Cublas, "_load", lambda self: StrictCublas())
    with on_device(cuda_device.CudaDevice(0)) as device:
        yield device


@pytest.mark.parametrize("text, bottoms, down", [
    ('type: "SoftmaxWithLoss"', [(0, 5), (0,)], [True, False]),
    ('type: "SoftmaxWithLoss" softmax_param { axis: 2 }', [(2, 0, 4), (2, 0)], [True, False]),
    ('type: "EuclideanLoss"', [(0, 6), (0, 6)], [True, True]),
    ('type: "Accuracy" accuracy_param { top_k: 2 }', [(0, 5), (0,)], None),
    ('type: "SigmoidCrossEntropyLoss"', [(0, 3), (0, 3)], [True, False]),
    ('type: "HingeLoss"', [(0, 4), (0,)], [True, False]),
    ('type: "MultinomialLogisticLoss"', [(0, 4, 1, 1), (0,)], [True, False]),
    ('type: "InfogainLoss"', [(0, 4), (0,), (1, 1, 4, 4)], [True, False, False]),
    ('type: "ContrastiveLoss"', [(0, 3), (0, 3), (0,)], [True, True, False]),
    ('type: "SmoothL1Loss"', [(0, 4), (0, 4)], [True, True]),
    ('type: "InnerProduct" inner_product_param { num_output: 3 }', [(0, 4)], [True]),
])
def test_empty_batch_never_hands_cublas_a_zero_size(strict_cuda, text, bottoms, down):
    """Before: cublasSgemv(m = 0, lda = 0) -> 'cublasSgemv failed with cuBLAS
    status 7', an empty sum left the loss's scratch unwritten, and the host
    code divided by the batch size 0.  An empty batch's loss is 0."""
    layer = make(text, TEST if down is None else TRAIN)
    top = [Blob() for _ in range(2 if "Accuracy" in text else 1)]
    with np.errstate(all="raise"):
        got = compare_cpu_gpu(layer, [Blob(shape) for shape in bottoms], top, propagate_down=down)
    assert (got[0][0] == 0).all()         # a loss of 0; an empty product


@pytest.mark.parametrize("call", ["gemv", "gemv_t", "gemm", "gemm_k0", "batched_k0"])
def test_empty_blas_products_are_sums_over_nothing(strict_cuda, call):
    """Every device's contract (HostDevice's NumPy): out = beta out."""
    outputs = {}
    for device in (HostDevice(), strict_cuda):
        out = device.alloc(4 * 6)
        device.upload(out.ptr, np.arange(6, dtype=np.float32))
        operand = device.alloc(4 * 6).ptr
        beta = 0.0 if call == "gemv" else 0.5
        {"gemv": lambda: device.gemv(False, 3, 0, 1.0, operand, operand, beta, out.ptr),
         "gemv_t": lambda: device.gemv(True, 0, 3, 1.0, operand, operand, beta, out.ptr),
         "gemm": lambda: device.gemm(False, True, 0, 2, 3, 1.0, operand, operand, beta, out.ptr),
         "gemm_k0": lambda: device.gemm(True, False, 2, 3, 0, 1.0, operand, operand, beta, out.ptr),
         "batched_k0": lambda: device.gemm_strided_batched(False, False, 1, 3, 0, 1.0, operand, 0,
                                                           operand, 0, beta, out.ptr, 3, 2),
         }[call]()
        outputs[device] = np.empty(6, np.float32)
        device.download(out.ptr, outputs[device])
    host, strict = outputs.values()
    np.testing.assert_array_equal(strict, host)


# ---- row 6: per-class accuracy in parallel -----------------------------------------
def _accuracy_bottoms(rng, outer, classes, inner, ignore=None):
    scores = rng.uniform(-1, 1, (outer, classes, inner)).astype(np.float32)
    labels = rng.integers(0, classes, (outer, inner)).astype(np.float32)
    labels[:, ::7] = classes - 1                     # a common class
    if ignore is not None:
        labels[:, ::5] = ignore
    return [blob(scores), blob(labels)]


@pytest.mark.parametrize("outer, classes, inner, ignore", [
    (1, 3, 1, None), (2, 5, 37, None), (3, 21, 500, 0), (2, 4, 1000, 255)])
def test_per_class_accuracy_matches_host(gpu_device, outer, classes, inner, ignore):
    ignore_text = "" if ignore is None else f"ignore_label: {ignore}"
    layer = make(f'type: "Accuracy" accuracy_param {{ top_k: 2 {ignore_text} }}', TEST)
    bottom = _accuracy_bottoms(np.random.default_rng(inner), outer, classes, inner, ignore)
    compare_cpu_gpu(layer, bottom, [Blob(), Blob()], propagate_down=None, randomize=False,
                    rtol=0, atol=0)


class TimingDevice(HostDevice):
    """The host build, adding up the seconds each kernel's launches take."""

    def __init__(self):
        super().__init__()
        self.seconds = {}

    def _launcher(self, module, name, kinds):
        launch = super()._launcher(module, name, kinds)

        def timed(count, args):
            start = time.perf_counter()
            launch(count, args)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        return timed


def _per_class_seconds(classes, positions=16384, repeats=5):
    """The least time, over `repeats`, of the kernels that turn Accuracy's
    per-position hits into per-class accuracies."""
    layer = make('type: "Accuracy"', TEST)
    bottom = _accuracy_bottoms(np.random.default_rng(0), 1, classes, positions)
    top = [Blob(), Blob()]
    device = TimingDevice()
    best = np.inf
    with on_device(device):
        layer.setup(bottom, top)
        for _ in range(repeats):
            device.seconds.clear()
            layer.forward_gpu(bottom, top)
            best = min(best, sum(s for name, s in device.seconds.items()
                                 if name != "accuracy_forward"))
    return best


def test_per_class_accuracy_does_not_walk_every_position_per_class():
    """Before: one thread per class looped over every position: work (and,
    on a GPU, serial steps) classes x positions -- 64x more classes took 64x
    longer.  Now each thread walks about sqrt(positions) items."""
    few, many = _per_class_seconds(8), _per_class_seconds(512)
    assert many < 16 * few, (few, many)


# ---- row 7: buffers reused -------------------------------------------------------
class AllocCountingDevice(HostDevice):
    def __init__(self):
        super().__init__()
        self.allocations = 0

    def alloc(self, nbytes):
        self.allocations += 1
        return super().alloc(nbytes)


def test_workspace_reuses_a_large_enough_buffer():
    device = AllocCountingDevice()
    with on_device(device):
        scratch = Workspace()
        first = scratch.get("x", 400)
        assert scratch.get("x", 100) == first and scratch.floats("x", 100) == first
        assert device.allocations == 1          # before: a new buffer for every other size
        scratch.get("x", 404)
        assert device.allocations == 2


FROZEN_NET = """
layer { name: "data" type: "Input" top: "x" top: "y"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
        param { lr_mult: 0 } param { lr_mult: 0 }
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" } } }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "p"
        param { lr_mult: 1 } param { lr_mult: 0 }
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
"""


def test_frozen_parameters_take_no_device_memory_after_the_first_pass():
    """Before: each backward allocated (and freed: a device synchronisation)
    a copy of every lr_mult 0 parameter's diff."""
    net = Net(io.parse_text(FROZEN_NET, caffe_pb2.NetParameter()), TRAIN)
    rng = np.random.default_rng(0)
    device = AllocCountingDevice()
    with on_device(device):
        for p in net.layers[1].blobs:
            p.diff[...] = 7                      # frozen: backward must leave them
        for _ in range(2):
            net.blobs["x"].data[...] = rng.uniform(-1, 1, (4, 3))
            net.blobs["y"].data[...] = rng.uniform(-1, 1, (4, 2))
            before = device.allocations
            net.forward()
            net.backward()
        assert device.allocations == before
        for p in net.layers[1].blobs:
            np.testing.assert_array_equal(p.diff, 7)
        assert np.abs(net.layers[2].blobs[0].diff).sum() > 0


# ---- row 9: CudaDevice.close ------------------------------------------------------
@pytest.fixture
def recorded_cuda(monkeypatch):
    """CudaDevice over the stand-ins, recording what is done to the context."""
    cublas = fake_cuda.install(monkeypatch)
    events = []
    monkeypatch.setattr(fake_cuda._Context, "pop", staticmethod(lambda: events.append("pop")))
    monkeypatch.setattr(fake_cuda._Context, "detach", lambda self: events.append("detach"),
                        raising=False)
    return cublas, events


def test_close_destroys_the_handle_and_releases_the_context(recorded_cuda):
    cublas, events = recorded_cuda
    device = cuda_device.CudaDevice(0)
    device.ones(8)                               # a buffer of the device's own
    device.close()
    device.close()                               # idempotent
    assert [c for c, _ in cublas.calls if c == "destroy"] == ["destroy"]
    assert events == ["pop", "detach"]
    assert device._ones is None


def test_a_failed_start_releases_the_context(recorded_cuda, monkeypatch):
    _, events = recorded_cuda

    def no_cublas(self):
        raise backends.GPUUnavailable("cuBLAS (libcublas.so) was not found")
    monkeypatch.setattr(cuda_device.Cublas, "_load", no_cublas)
    with pytest.raises(backends.GPUUnavailable, match="cuBLAS"):
        cuda_device.CudaDevice(0)
    assert events == ["pop", "detach"]
