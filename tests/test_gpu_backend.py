"""The GPU backend's plumbing: kernel sources, devices, mirrored memory,
mode selection; and the first layer's device code (ReLU)."""
import shutil
import subprocess

import numpy as np
import pytest

import sppcaffe
from sppcaffe import backends
from sppcaffe.backends.gpu import Workspace, sources
from sppcaffe.backends.gpu.host_device import HostDevice
from sppcaffe.backends.memory import DEVICE, HOST, SYNCED, SyncedMemory
from sppcaffe.blob import Blob
from sppcaffe.layers.activations import ReLULayer
from sppcaffe.proto import caffe_pb2

from gpu_check import CountingDevice, compare_cpu_gpu


# ---- kernel sources -------------------------------------------------------
def test_every_kernel_file_parses_and_names_are_unique():
    index = sources.kernel_index()
    assert "relu_forward" in index
    path, kinds = index["relu_forward"]
    assert path.name == "activations.cu" and kinds == ["i32", "ptr", "ptr", "f32"]


def test_signature_errors_name_the_file_and_kernel(tmp_path):
    bad = tmp_path / "bad.cu"
    bad.write_text('extern "C" __global__ void k(int n, double* x) {}\n')
    with pytest.raises(sources.KernelSourceError, match=r"bad.cu: kernel 'k'.*double\*"):
        sources.parse_signatures(bad)


def test_comments_do_not_hide_or_invent_kernels(tmp_path):
    f = tmp_path / "c.cu"
    f.write_text('// extern "C" __global__ void ghost(int n) {}\n'
                 'extern "C" __global__ void real(const int n, const float* __restrict__ x,\n'
                 '                                unsigned long long seed) {}\n')
    assert sources.parse_signatures(f) == {"real": ["i32", "ptr", "u64"]}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("path", sources.kernel_files(), ids=lambda p: p.name)
def test_kernel_source_compiles_with_nvcc(path, tmp_path):
    result = subprocess.run(["nvcc", "--ptx", "-I", str(sources.KERNEL_DIR), str(path),
                             "-o", str(tmp_path / "k.ptx")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for name in sources.parse_signatures(path):
        assert f".entry {name}(" in (tmp_path / "k.ptx").read_text()   # extern "C": unmangled


# ---- the host device ---------------------------------------------------------
@pytest.fixture(scope="module")
def host():
    return HostDevice()


def test_host_device_memory_round_trip(host):
    x = np.arange(10, dtype=np.float32)
    a, b = host.alloc(40), host.alloc(40)
    host.upload(a.ptr, x)
    host.copy(b.ptr, a.ptr, 40)
    out = np.empty(10, np.float32)
    host.download(b.ptr, out)
    np.testing.assert_array_equal(out, x)
    host.memset0(b.ptr, 40)
    host.download(b.ptr, out)
    assert not out.any()


def test_kernel_argument_count_is_checked(host):
    with pytest.raises(TypeError, match="relu_forward' takes 4 arguments"):
        host.kernel("relu_forward")(3, 3, 0, 0)


def test_unknown_kernel(host):
    with pytest.raises(sources.KernelSourceError, match="no CUDA kernel named 'nope'"):
        host.kernel("nope")


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_host_gemm_follows_caffe_row_major_convention(host, trans_a, trans_b, beta):
    rng = np.random.default_rng(0)
    m, n, k = 3, 4, 5
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    c = rng.standard_normal((m, n)).astype(np.float32)
    mem = [host.alloc(x.nbytes) for x in (a, b, c)]
    for x, d in zip((a, b, c), mem):
        host.upload(d.ptr, x)
    host.gemm(trans_a, trans_b, m, n, k, 2.0, mem[0].ptr, mem[1].ptr, beta, mem[2].ptr)
    out = np.empty_like(c)
    host.download(mem[2].ptr, out)
    expected = 2.0 * (a.T if trans_a else a) @ (b.T if trans_b else b) + beta * c
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_host_blas_level1_and_gemv(host):
    x = np.array([1, -2, 3], np.float32)
    y = np.array([4, 5, 6], np.float32)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    dx, dy, da, dz = host.alloc(12), host.alloc(12), host.alloc(24), host.alloc(8)
    host.upload(dx.ptr, x), host.upload(dy.ptr, y), host.upload(da.ptr, a)
    assert host.dot(3, dx.ptr, dy.ptr) == 12.0 and host.asum(3, dx.ptr) == 6.0
    host.axpy(3, 2.0, dx.ptr, dy.ptr)
    host.scal(3, 0.5, dy.ptr)
    out = np.empty(3, np.float32)
    host.download(dy.ptr, out)
    np.testing.assert_array_equal(out, (y + 2 * x) / 2)
    host.gemv(False, 2, 3, 1.0, da.ptr, dx.ptr, 0.0, dz.ptr)
    z = np.empty(2, np.float32)
    host.download(dz.ptr, z)
    np.testing.assert_array_equal(z, a @ x)
    host.gemv(True, 2, 3, 1.0, da.ptr, dz.ptr, 0.0, dy.ptr)
    host.download(dy.ptr, out)
    np.testing.assert_array_equal(out, a.T @ z)


# ---- mirrored memory -----------------------------------------------------------
def test_synced_memory_copies_only_when_the_other_side_is_asked_for():
    device = CountingDevice()
    mem = SyncedMemory(4)
    mem.host_view((4,))[...] = 3
    ptr = mem.device_ptr(device)
    assert (device.uploads, mem.head) == (1, SYNCED)
    mem.device_ptr(device)
    assert device.uploads == 1                      # still current: no copy
    assert mem.mutable_device_ptr(device) == ptr and mem.head == DEVICE
    device.kernel("relu_forward")(4, 4, ptr, ptr, -1.0)   # |x| on the device: 3 -> 3
    assert (mem.host_view((2, 2)) == 3).all() and device.downloads == 1 and mem.head == HOST


def test_fresh_memory_is_zero_on_either_side_without_copies():
    device = CountingDevice()
    mem = SyncedMemory(5)
    ptr = mem.device_ptr(device)
    out = np.ones(5, np.float32)
    device.download(ptr, out)
    assert not out.any() and device.uploads == 0


def test_blob_sharing_shares_the_mirrored_memory(gpu_device):
    a = Blob((2, 3))
    b = Blob((6,))
    b.view_of(a, (6,))
    gpu_device.upload(a.mutable_gpu_data, np.arange(6, dtype=np.float32))
    np.testing.assert_array_equal(b.data, np.arange(6))
    assert a.data.base is b.data.base
    c = Blob((2, 3))
    c.share_data(a)
    assert c.data is a.data
    with pytest.raises(ValueError, match="cannot share"):
        Blob((5,)).share_data(a)


def test_workspace_reuses_buffers(gpu_device):
    ws = Workspace()
    first = ws.floats("col", 10)
    assert ws.floats("col", 10) == first
    assert ws.get("col", 4000) and ws.floats("other", 10) != ws.floats("col", 1000)


# ---- mode selection ----------------------------------------------------------
def test_gpu_mode_without_pycuda_is_a_clear_error(monkeypatch):
    try:
        import pycuda  # noqa: F401
        pytest.skip("PyCUDA is installed here")
    except ImportError:
        pass
    monkeypatch.delenv("SPPCAFFE_GPU", raising=False)
    backends.use_device(None)
    with pytest.raises(sppcaffe.GPUUnavailable, match=r"PyCUDA.*pip install '\.\[gpu\]'"):
        sppcaffe.set_mode_gpu()
    assert not backends.gpu_mode()


def test_environment_selects_the_host_build(monkeypatch):
    monkeypatch.setenv("SPPCAFFE_GPU", "host")
    backends.use_device(None)
    try:
        sppcaffe.set_mode_gpu()
        assert isinstance(backends.current_device(), HostDevice)
    finally:
        sppcaffe.set_mode_cpu()
        backends.use_device(None)
    monkeypatch.setenv("SPPCAFFE_GPU", "tpu")
    with pytest.raises(sppcaffe.GPUUnavailable, match="SPPCAFFE_GPU='tpu'"):
        sppcaffe.set_mode_gpu()


def test_set_device_rejects_negative_ids():
    with pytest.raises(ValueError, match=">= 0"):
        sppcaffe.set_device(-1)


# ---- ReLU on the device --------------------------------------------------------
def _relu(slope):
    p = caffe_pb2.LayerParameter(name="relu", type="ReLU")
    p.relu_param.negative_slope = slope
    return ReLULayer(p, caffe_pb2.TEST)


@pytest.mark.parametrize("slope", [0.0, 0.1])
@pytest.mark.parametrize("in_place", [False, True])
def test_relu_device_code_matches_host(gpu_device, slope, in_place):
    bottom = [Blob((2, 3, 4, 5))]
    top = bottom if in_place else [Blob()]
    compare_cpu_gpu(_relu(slope), bottom, top)


# ---- the stand-ins the CUDA device is tested over -------------------------------
def test_fake_cublas_follows_the_column_major_definition():
    """fake_cuda's sgemm on hand-laid column-major data: C = A B with
    A = [[1, 2, 3], [4, 5, 6]] stored by columns, B = I3 plus a ones column."""
    import ctypes

    import fake_cuda
    a = np.array([1, 4, 2, 5, 3, 6], np.float32)            # 2 x 3, columns one after another
    b = np.array([1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1], np.float32)   # 3 x 4
    c = np.zeros(8, np.float32)                              # 2 x 4
    f, i, p = ctypes.c_float, ctypes.c_int, ctypes.c_void_p
    cublas, handle = fake_cuda.FakeCublas(), p()
    cublas.cublasCreate_v2(ctypes.byref(handle))
    assert cublas.cublasSgemm_v2(
        handle, i(0), i(0), i(2), i(4), i(3), ctypes.byref(f(1.0)), p(a.ctypes.data), i(2),
        p(b.ctypes.data), i(3), ctypes.byref(f(0.0)), p(c.ctypes.data), i(2)) == 0
    # Columns of C: A's three columns, then their sum.
    np.testing.assert_array_equal(c, [1, 4, 2, 5, 3, 6, 6, 15])


def test_cuda_device_launches_through_pycuda_prepared_calls(monkeypatch):
    import fake_cuda
    from sppcaffe.backends.gpu.cuda_device import THREADS, CudaDevice
    fake_cuda.install(monkeypatch)
    device = CudaDevice(0)
    x = device.alloc(4 * 1000)
    device.upload(x.ptr, np.linspace(-1, 1, 1000, dtype=np.float32))
    kernel = device.kernel("relu_forward")
    kernel(1000, 1000, x.ptr, x.ptr, 0.0)
    out = np.empty(1000, np.float32)
    device.download(x.ptr, out)
    assert out.min() == 0 and out.max() == 1
    assert fake_cuda.LAUNCHES[-1] == ("relu_forward", "iPPf", (-(-1000 // THREADS), 1), (THREADS, 1, 1))
