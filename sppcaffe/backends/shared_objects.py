"""Compile a C or C++ source into a shared object once, cache it on disk by
content hash, and load it with ctypes.

Two users: the CUDA kernels built for the CPU (gpu/host_device.py) and the
CPU's own loops (native.py).  The cache key covers every input file, the
generated source and the whole command line, so a stale build is never
reused; builds go to a temporary name and are renamed into place, so a
concurrent build (another test worker, another MPI rank) never sees half a
file.
"""
import ctypes
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path


class CompilerMissing(RuntimeError):
    """The compiler could not be run."""


def cache_dir():
    root = os.environ.get("SPPCAFFE_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sppcaffe", "kernels")
    return Path(root)


def load(compiler, flags, path, inputs=(), source=None, key=None):
    """ctypes.CDLL of `path` built with `compiler` and `flags`.  `inputs`:
    further files the build reads (headers); `source`: text compiled
    instead of `path` itself (read from standard input), hashed unless
    `key` stands for it."""
    path = Path(path)
    digest = hashlib.sha256()
    for part in (*inputs, path):
        digest.update(Path(part).read_bytes())
    digest.update(" ".join([compiler] + list(flags)).encode())
    # A home folder shared by machines of several kinds keeps a build per kind.
    digest.update(f"{sys.platform} {platform.machine()}".encode())
    if source is not None or key is not None:
        digest.update((source if key is None else key).encode())
    target = cache_dir() / f"{path.stem}-{digest.hexdigest()[:16]}.so"
    if not target.exists():
        _build(compiler, flags, path, source, target)
    return ctypes.CDLL(str(target))


def _build(compiler, flags, path, source, target):
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    command = [compiler, *flags, "-" if source is not None else str(path), "-o", tmp]
    try:
        result = subprocess.run(command, input=source, capture_output=True, text=True)
    except FileNotFoundError:
        os.unlink(tmp)
        raise CompilerMissing(f"'{compiler}' was not found") from None
    if result.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"{compiler} failed on {path.name}:\n{result.stderr}")
    os.replace(tmp, target)
