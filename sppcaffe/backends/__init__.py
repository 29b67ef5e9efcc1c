"""Where layers and solvers run: the CPU (NumPy, the default) or a GPU.

Caffe's mode is process-wide and so is this one: ``set_mode_gpu()`` makes
every net run its layers' ``forward_gpu``/``backward_gpu`` and every solver
update on the current device; ``set_mode_cpu()`` goes back.  Blobs follow
on their own (their memory is mirrored, see ``gpu/memory.py``), so a net
built in one mode runs in the other.

The GPU device is PyCUDA + cuBLAS on a real NVIDIA GPU, or, when the
environment says ``SPPCAFFE_GPU=host``, the same CUDA kernels compiled for
the CPU with g++ (``gpu/host_device.py``): slow, but it runs the whole GPU
code path on machines without a GPU, which is how CI tests it.
"""
import os

_state = {"mode": "cpu", "device_id": 0, "device": None}


class GPUUnavailable(RuntimeError):
    """GPU mode was asked for where it cannot run; the message says why
    and what to install."""


def set_mode_cpu():
    _state["mode"] = "cpu"


def set_mode_gpu():
    """Run on the GPU from now on (the device of ``set_device``, 0 by
    default).  Raises GPUUnavailable, with the reason, where there is none."""
    current_device()
    _state["mode"] = "gpu"


def set_device(device_id):
    """Choose the GPU by its CUDA ordinal (Caffe's ``set_device``)."""
    device_id = int(device_id)
    if device_id < 0:
        raise ValueError(f"GPU device id must be >= 0, got {device_id}")
    if _state["device"] is not None and device_id != _state["device_id"]:
        _state["device"] = None
    _state["device_id"] = device_id


def gpu_mode():
    return _state["mode"] == "gpu"


def current_device():
    """The device GPU work goes to, opened on first use."""
    device = _state["device"]
    if device is None:
        device = _state["device"] = _open_device(_state["device_id"])
    return device


def use_device(device):
    """Make `device` the current one (tests hand in a HostDevice)."""
    _state["device"] = device


def _open_device(device_id):
    choice = os.environ.get("SPPCAFFE_GPU", "cuda").strip().lower()
    if choice == "host":
        from .gpu.host_device import HostDevice
        return HostDevice()
    if choice != "cuda":
        raise GPUUnavailable(f"SPPCAFFE_GPU={choice!r}: expected 'cuda' (a real GPU, the default) "
                             "or 'host' (the CUDA kernels compiled for the CPU, for tests)")
    from .gpu.cuda_device import CudaDevice
    return CudaDevice(device_id)
