import os
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
if ROOT not in sys.path:        # run from a checkout without installing
    sys.path.insert(0, ROOT)
if TESTS not in sys.path:       # shared helpers such as gradient_check
    sys.path.insert(0, TESTS)

GOLDEN = os.path.join(TESTS, "golden")


@pytest.fixture
def golden_dir():
    return GOLDEN


def _gpu_devices():
    """The devices GPU tests run on: the host build of the kernels; the
    CUDA device's code over stand-ins for PyCUDA and cuBLAS (fake_cuda.py);
    and the real GPU where one opens (the lent GPU machine)."""
    return ["host", "fakecuda", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(params=_gpu_devices())
def gpu_device(request):
    """GPU mode on one device for the test, CPU mode again after it."""
    from gpu_check import on_device
    from sppcaffe import backends
    from sppcaffe.backends.gpu.host_device import HostDevice
    if request.param == "host":
        device = HostDevice()
    elif request.param == "fakecuda":
        import fake_cuda
        from sppcaffe.backends.gpu.cuda_device import CudaDevice
        fake_cuda.install(request.getfixturevalue("monkeypatch"))
        device = CudaDevice(0)
    else:
        from sppcaffe.backends.gpu.cuda_device import CudaDevice
        try:
            device = CudaDevice(0)
        except backends.GPUUnavailable as exc:
            pytest.skip(f"no GPU: {exc}")
    device.kind = request.param         # tests size their work by it
    with on_device(device):
        yield device


@pytest.fixture
def counting_device():
    """GPU mode on the host build, counting its uploads and downloads."""
    from gpu_check import CountingDevice, on_device
    with on_device(CountingDevice()) as device:
        yield device


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory):
    """A generated 4-image VOC-format set (80-120 px images): its root."""
    from sppcaffe.detection.synthetic import make_synthetic_voc
    return make_synthetic_voc(tmp_path_factory.mktemp("voc") / "tiny", num_images=4,
                              size_range=(80, 120))


@pytest.fixture(scope="module")
def tiny_voc_set(tiny_voc):
    """tiny_voc's trainval split."""
    from sppcaffe.detection import voc
    from sppcaffe.detection.synthetic import SYNTHETIC_CLASSES
    return voc.VOCDataset(tiny_voc, "trainval", SYNTHETIC_CLASSES)
