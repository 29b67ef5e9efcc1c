"""What a launch or a cuBLAS call can take, checked before anything runs:
element counts and int arguments in the kernels' 32-bit range (a real
GPU's PyCUDA refuses the rest, the host build would wrap them silently),
and cuBLAS's own argument rules, which the stand-in (fake_cuda.py) applies
with cuBLAS's status codes."""
import ctypes

import numpy as np
import pytest

import fake_cuda
from gpu_check import compare_cpu_gpu
from gradient_check import layer_param
from sppcaffe.backends.gpu import device as device_module
from sppcaffe.backends.gpu.device import Kernel, LaunchError
from sppcaffe.backends.gpu.host_device import HostDevice
from sppcaffe.blob import Blob
from sppcaffe.layer import create_layer
from sppcaffe.proto import caffe_pb2


@pytest.fixture
def fake_gpu(monkeypatch):
    from sppcaffe.backends.gpu.cuda_device import CudaDevice
    cublas = fake_cuda.install(monkeypatch)
    device = CudaDevice(0)
    yield device, cublas
    device.close()


# ---- kernel launches -----------------------------------------------------------------
@pytest.mark.parametrize("count", [2 ** 31, 2 ** 32 + 3])
def test_a_count_past_32_bits_is_refused_naming_the_kernel(count, fake_gpu):
    # Null pointers: nothing is allocated, and nothing may run.
    for device in (HostDevice(), fake_gpu[0]):
        with pytest.raises(LaunchError, match=rf"kernel 'relu_forward': {count} elements in one "
                                              r"launch.*2\^31 - 1"):
            device.kernel("relu_forward")(count, count, 0, 0, 0.0)


def test_the_largest_count_is_launched():
    launched = []
    kernel = Kernel("k", ["i32", "ptr"], lambda count, args: launched.append((count, args)))
    kernel(2 ** 31 - 1, 2 ** 31 - 1, 0)
    assert launched == [(2 ** 31 - 1, [2 ** 31 - 1, 0])]


@pytest.mark.parametrize("kinds, args, message", [
    (["i32"], [2 ** 31], r"argument 1 \(i32\) is 2147483648, outside \[-2147483648, 2147483647\]"),
    (["ptr", "i32"], [0, -2 ** 31 - 1], r"argument 2 \(i32\) is -2147483649"),
    (["u32"], [-1], r"argument 1 \(u32\) is -1"),
    (["u64"], [2 ** 64], r"argument 1 \(u64\) is 18446744073709551616"),
])
def test_int_arguments_outside_their_type_are_refused(kinds, args, message):
    kernel = Kernel("k", kinds, lambda count, args: pytest.fail("launched"))
    with pytest.raises(LaunchError, match=rf"kernel 'k': {message}"):
        kernel(1, *args)


def test_pointwise_convolution_adds_its_bias_in_launches_that_fit(gpu_device, monkeypatch):
    """1x1 convolution's bias add ran over the whole batch in one launch;
    with the limit lowered to 100 elements the batch (4 x 4 x 20) must come
    in chunks of images."""
    monkeypatch.setattr(device_module, "MAX_COUNT", 100)
    layer = create_layer(layer_param(
        'name: "c" type: "Convolution" convolution_param { num_output: 4 kernel_size: 1 '
        'weight_filler { type: "gaussian" } bias_filler { type: "uniform" } }'), caffe_pb2.TEST)
    layer.gpu_column_bytes = 1          # one image a chunk
    compare_cpu_gpu(layer, [Blob((4, 3, 4, 5))], [Blob()], propagate_down=None)


def test_cublas_sizes_past_32_bits_are_refused(fake_gpu):
    device, cublas = fake_gpu
    with pytest.raises(LaunchError, match="cuBLAS takes 32-bit sizes; got 4294967299"):
        device.gemm(False, False, 2 ** 32 + 3, 1, 1, 1.0, 0, 0, 0.0, 0)
    assert not [call for call in cublas.calls if call[0] == "gemm"]


# ---- cuBLAS's argument rules in the stand-in ------------------------------------------------
def _handle(cublas):
    handle = ctypes.c_void_p()
    assert cublas.cublasCreate_v2(ctypes.byref(handle)) == fake_cuda.SUCCESS
    return handle


def _gemv(cublas, handle, op, m, n, lda, incx=1, incy=1, a=None, x=None, y=None, beta=0.0):
    f, i, p = ctypes.c_float, ctypes.c_int, ctypes.c_void_p
    addr = [p(v.ctypes.data if v is not None else 0) for v in (a, x, y)]
    return cublas.cublasSgemv_v2(handle, i(op), i(m), i(n), ctypes.byref(f(1.0)), addr[0], i(lda),
                                 addr[1], i(incx), ctypes.byref(f(beta)), addr[2], i(incy))


@pytest.mark.parametrize("op, m, n, k, lda, ldb, ldc, status", [
    (0, 0, 0, 0, 1, 1, 1, 0),           # empty, with the smallest leading dimensions
    (0, 0, 3, 2, 0, 2, 1, 7),           # lda < max(1, m) even for m = 0
    (0, 4, 3, 2, 3, 2, 4, 7),           # A not transposed: lda >= m
    (1, 4, 3, 2, 2, 2, 4, 0),           # transposed A is k x m as stored: lda >= k
    (1, 4, 3, 5, 4, 5, 4, 7),
    (0, 4, 3, 2, 4, 1, 4, 7),           # ldb >= k
    (0, 4, 3, 2, 4, 2, 3, 7),           # ldc >= m
    (0, -1, 3, 2, 1, 2, 1, 7),
    (0, 4, 3, -2, 4, 1, 4, 7),
    (3, 4, 3, 2, 4, 2, 4, 7),           # no such operation
])
def test_gemm_argument_rules(op, m, n, k, lda, ldb, ldc, status):
    assert fake_cuda.gemm_status(op, 0, m, n, k, lda, ldb, ldc) == status


def test_gemm_batched_refuses_a_negative_batch():
    assert fake_cuda.gemm_status(0, 0, 2, 2, 2, 2, 2, 2, batch=-1) == fake_cuda.INVALID_VALUE
    assert fake_cuda.gemm_status(0, 0, 2, 2, 2, 2, 2, 2, batch=0) == fake_cuda.SUCCESS


@pytest.mark.parametrize("m, n, lda, incx, incy, status", [
    (0, 0, 0, 1, 1, 7),                 # the empty-batch call of issue 16: lda = 0
    (0, 0, 1, 1, 1, 0),
    (3, 2, 2, 1, 1, 7),                 # lda >= m, whatever the operation
    (3, 2, 3, 0, 1, 7),
    (3, 2, 3, 1, 0, 7),
    (-1, 2, 1, 1, 1, 7),
])
def test_gemv_argument_rules(m, n, lda, incx, incy, status):
    cublas = fake_cuda.FakeCublas()
    for op in (0, 1):
        assert _gemv(cublas, _handle(cublas), op, m, n, lda, incx, incy) == status


def test_gemv_of_an_empty_product_leaves_y_alone():
    """The reference BLAS's quick return: no columns, so y is not even
    scaled by beta (0 here) -- code that counts on zeros there is wrong."""
    cublas = fake_cuda.FakeCublas()
    y = np.full(3, 7.0, np.float32)
    assert _gemv(cublas, _handle(cublas), 0, 3, 0, 3, y=y, a=np.zeros(1, np.float32),
                 x=np.zeros(1, np.float32)) == fake_cuda.SUCCESS
    np.testing.assert_array_equal(y, 7.0)


def test_calls_need_a_live_handle():
    cublas = fake_cuda.FakeCublas()
    handle = _handle(cublas)
    assert _gemv(cublas, None, 0, 0, 0, 1) == fake_cuda.NOT_INITIALIZED
    assert cublas.cublasDestroy_v2(handle) == fake_cuda.SUCCESS
    assert _gemv(cublas, handle, 0, 0, 0, 1) == fake_cuda.NOT_INITIALIZED
    assert cublas.cublasDestroy_v2(handle) == fake_cuda.NOT_INITIALIZED


def test_the_cuda_device_reports_cublas_status(fake_gpu):
    device, _ = fake_gpu
    a = device.alloc(4)
    with pytest.raises(RuntimeError, match="cublasSgemm failed with cuBLAS status 7"):
        device.cublas.sgemm(0, 0, 2, 2, 2, 1.0, a.ptr, 1, a.ptr, 2, 0.0, a.ptr, 2)
