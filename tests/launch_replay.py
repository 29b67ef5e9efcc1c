"""Capture real kernel launches, then replay them in other orders.

A GPU runs a launch's indices in no promised order, and truly in parallel;
the plain host build runs them one after another, in order.  To see what
that hides, ``CapturingDevice`` (the plain host build) records launches as
layers make them -- arguments, and a copy of every allocation a pointer
argument points into, before and after the kernel ran -- and ``replay``
runs one again, on fresh copies of the memory it started from, on a
``HostDevice`` of another order.  ``differences`` then says where the
memory after the replay differs from the capture: bit for bit, or within a
tolerance for kernels declared atomic-accumulating (kernels/*.cu, see
sources.py).
"""
import bisect
from dataclasses import dataclass

import numpy as np

from sppcaffe.backends.gpu.host_device import HostDevice
from sppcaffe.backends.gpu.sources import atomic_accumulating_kernels


@dataclass
class Region:
    """One allocation a launch touched: its address then, and its bytes."""
    base: int
    before: np.ndarray          # uint8
    after: np.ndarray


@dataclass
class Capture:
    name: str                   # the kernel
    origin: str                 # what launched it (a corpus case)
    count: int
    kinds: list
    args: list                  # as the launcher took them (pointers as ints)
    regions: list


class CapturingDevice(HostDevice):
    """The plain host build, capturing the first `per_origin` launches of
    each kernel from each origin (set ``origin`` before running something)."""

    def __init__(self, per_origin=1, max_bytes=16 << 20):
        super().__init__(order="natural")
        self.per_origin, self.max_bytes = per_origin, max_bytes
        self.origin = "?"
        self.captures = {}          # kernel name -> [Capture]
        self._bases, self._buffers = [], []     # sorted allocation addresses, their memory

    def alloc(self, nbytes):
        allocation = super().alloc(nbytes)
        # Kept for the device's life: a freed address reused by a later
        # allocation would make an old capture's regions ambiguous.
        at = bisect.bisect(self._bases, allocation.ptr)
        self._bases.insert(at, allocation.ptr)
        self._buffers.insert(at, allocation._handle)
        return allocation

    def allocation_of(self, ptr):
        """(base address, uint8 array) of the allocation holding `ptr` (its
        end included: an empty range may start there)."""
        at = bisect.bisect(self._bases, ptr) - 1
        if at >= 0 and ptr <= self._bases[at] + self._buffers[at].nbytes:
            return self._bases[at], self._buffers[at]
        raise ValueError(f"address {ptr:#x} is in no allocation of this device")

    def _launcher(self, module, name, kinds):
        run = super()._launcher(module, name, kinds)

        def launch(count, args):
            taken = self.captures.setdefault(name, [])
            if sum(c.origin == self.origin for c in taken) >= self.per_origin:
                return run(count, args)
            touched = {}
            for kind, value in zip(kinds, args):
                if kind == "ptr" and value:
                    base, buffer = self.allocation_of(value)
                    touched[base] = buffer
            if sum(b.nbytes for b in touched.values()) > self.max_bytes:
                return run(count, args)
            before = {base: buffer.copy() for base, buffer in touched.items()}
            run(count, args)
            regions = [Region(base, before[base], buffer.copy())
                       for base, buffer in touched.items()]
            taken.append(Capture(name, self.origin, count, list(kinds), list(args), regions))
        return launch


def replay(capture, device, kernel=None):
    """Run `capture` again on `device` (any HostDevice) from the memory it
    started from; returns the memory after, region by region.  `kernel`:
    the device's Kernel to run, for one outside kernels/ (``kernels_in``)."""
    memory = [region.before.copy() for region in capture.regions]

    def moved(ptr):
        # The allocation with the highest base at or below ptr, as on capture.
        held = [(r.base, b) for r, b in zip(capture.regions, memory) if r.base <= ptr]
        base, buffer = max(held, key=lambda held: held[0])
        return buffer.ctypes.data + (ptr - base)

    args = [moved(a) if kind == "ptr" and a else a for kind, a in zip(capture.kinds, capture.args)]
    (kernel or device.kernel(capture.name))(capture.count, *args)
    return memory


def differences(capture, memory, order, atomic=None):
    """Lines describing where `memory` (a replay) differs from what the
    captured launch left: empty when it matches, bit for bit, or for an
    atomic-accumulating kernel within the reordered sums' rounding.
    `atomic`: whether the kernel is one (by default, as kernels/ declares)."""
    if atomic is None:
        atomic = capture.name in atomic_accumulating_kernels()
    lines = []
    for number, (region, got) in enumerate(zip(capture.regions, memory)):
        if np.array_equal(got, region.after):
            continue
        expected_f = region.after[:region.after.nbytes // 4 * 4].view(np.float32)
        got_f = got[:got.nbytes // 4 * 4].view(np.float32)
        if atomic:
            # Reordered float sums: within 1e-5 of the allocation's largest
            # magnitude (a sum with heavy cancellation can be further off).
            scale = float(np.nanmax(np.abs(expected_f), initial=0.0))
            if np.allclose(got_f, expected_f, rtol=1e-5, atol=1e-5 * max(scale, 1.0),
                           equal_nan=True):
                continue
        changed = np.flatnonzero(got_f.view(np.uint32) != expected_f.view(np.uint32))
        first = changed[0] if len(changed) else 0
        lines.append(f"{capture.name} (from {capture.origin}, count {capture.count}), {order} "
                     f"order: {len(changed)} of {expected_f.size} words of allocation {number} "
                     f"differ{' beyond the atomic tolerance' if atomic else ''}; first at word "
                     f"{first}: {expected_f[first]!r} in order, {got_f[first]!r} {order}")
    return lines
