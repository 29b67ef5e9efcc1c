"""The CUDA kernel sources kept in ``kernels/`` and their signatures.

Every kernel is ``extern "C" __global__ void name(...)`` written as a
grid-stride loop (``CUDA_KERNEL_LOOP`` in common.cuh), with no
``__syncthreads``: then one source serves nvcc for the GPU and g++ for the
CPU build that tests it (host_shim.h).  The signature is read from the
source so launches on either device marshal their arguments the same way.

Results must not depend on the order a launch's indices run in (the tests
replay every kernel reversed, shuffled and in parallel, bit for bit),
except for kernels that sum floats with atomicAdd: the comment block right
above such a kernel says ``atomic-accumulating`` and why, and they are
compared with a tolerance instead.
"""
import functools
import re
from pathlib import Path

KERNEL_DIR = Path(__file__).parent / "kernels"
COMMON_HEADER = KERNEL_DIR / "common.cuh"
HOST_SHIM = KERNEL_DIR / "host_shim.h"

_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_KERNEL_LINE = re.compile(r'\s*extern\s+"C"\s+__global__\s+void\s+(\w+)')
ATOMIC_MARK = "atomic-accumulating"

# C parameter type (qualifiers dropped) -> the kind both devices marshal.
ARG_KINDS = {
    "float*": "ptr", "int*": "ptr", "unsignedint*": "ptr", "unsignedchar*": "ptr",
    "int": "i32", "float": "f32", "unsignedint": "u32", "unsignedlonglong": "u64",
}


class KernelSourceError(ValueError):
    pass


def kernel_files():
    return sorted(KERNEL_DIR.glob("*.cu"))


def _parse_param(param, kernel, path):
    text = " ".join(param.replace("*", " * ").split())
    words = [w for w in text.split(" ") if w not in ("const", "__restrict__")]
    if len(words) < 2:
        raise KernelSourceError(f"{path.name}: kernel '{kernel}': cannot read parameter '{param.strip()}'")
    ctype = "".join(words[:-1])
    kind = ARG_KINDS.get(ctype)
    if kind is None:
        raise KernelSourceError(f"{path.name}: kernel '{kernel}': parameter '{param.strip()}' has type "
                                f"'{ctype}'; expected one of {sorted(ARG_KINDS)}")
    return kind


def parse_signatures(path):
    """{kernel name: [arg kind, ...]} for one .cu file."""
    path = Path(path)
    text = _COMMENT.sub("", path.read_text())
    signatures = {}
    for name, params in _KERNEL.findall(text):
        params = [p for p in params.split(",") if p.strip()]
        signatures[name] = [_parse_param(p, name, path) for p in params]
    return signatures


def atomic_accumulating(path):
    """The kernels of one .cu file whose comment block (the ``//`` lines
    right above the definition) declares them ``atomic-accumulating``."""
    lines = Path(path).read_text().splitlines()
    names = set()
    for number, line in enumerate(lines):
        match = _KERNEL_LINE.match(line)
        above = number - 1
        while match and above >= 0 and lines[above].lstrip().startswith("//"):
            if ATOMIC_MARK in lines[above]:
                names.add(match.group(1))
                break
            above -= 1
    return names


@functools.lru_cache(maxsize=None)
def atomic_accumulating_kernels():
    """Every declared atomic-accumulating kernel in kernels/."""
    return frozenset(name for path in kernel_files() for name in atomic_accumulating(path))


@functools.lru_cache(maxsize=None)
def kernel_index():
    """{kernel name: (file, [arg kinds])} over every kernel file; a name
    defined twice is an error (launches find kernels by name alone)."""
    index = {}
    for path in kernel_files():
        for name, kinds in parse_signatures(path).items():
            if name in index:
                raise KernelSourceError(f"kernel '{name}' defined in both {index[name][0].name} "
                                        f"and {path.name}")
            index[name] = (path, kinds)
    return index


def find_kernel(name):
    try:
        return kernel_index()[name]
    except KeyError:
        raise KernelSourceError(f"no CUDA kernel named '{name}' in {KERNEL_DIR}") from None
