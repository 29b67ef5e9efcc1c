"""Sliding windows over blocks of (H, W) planes as contiguous ranges: the
layout that depthwise convolution and pooling sum or compare over.

A window op (depthwise convolution, max/average pooling) combines, for
every kernel tap (i, j), the input cell the tap sees from each output.  On
a plain (H, W) plane a tap's cells form a strided rectangle, and NumPy
pays per row of it.  Here the padded plane is split into stride phases
(padded rows a, a + sh, ... and columns b, b + sw, ...; only the phases
some tap reads) and each phase is stored flat with row length
Wq = Wo + (kw-1)*dw // sw.  Output (y, x) is position y*Wq + x of a flat
(Ho, Wq) grid, and tap (i, j) reads phase ((i*dh) % sh, (j*dw) % sw) from
flat offset (i*dh // sh)*Wq + (j*dw // sw): one contiguous range per plane,
which for x < Wo stays in the tap's row.  The last Wq - Wo columns of the
grid are junk, dropped when the grid is cropped to the output.

Scratch arrays are per thread (workspace.thread_scratch), so blocks of
planes can run on several.
"""
import numpy as np

from .workspace import thread_scratch


def _axis_phase(phase, pad, size, length, stride):
    """Positions r in [0, length) of a phase that hold input, i.e. with
    phase + r*stride - pad in [0, size): (first r, count, its input index)."""
    first = max(0, -(-(pad - phase) // stride))
    end = min(length, -(-(size + pad - phase) // stride))
    return first, max(0, end - first), phase + first * stride - pad


class FlatWindows:
    """The flat phase layout of windows with `kernel`, `stride`, `pad`,
    `dilation` ((h, w) pairs) over (H, W) = `in_hw` planes, for an output of
    `out_hw` (which may run past the padded input, as ceil-mode pooling's)."""

    def __init__(self, in_hw, kernel, stride, pad, dilation, out_hw):
        (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
        self.in_hw, self.out_hw, self.stride = tuple(in_hw), tuple(out_hw), (sh, sw)
        ho, wo = out_hw
        self.wq = wq = wo + (kw - 1) * dw // sw
        # One spare row: the junk columns of the last output row read past
        # the rows any window needs.
        self.rows = ho + (kh - 1) * dh // sh + 1
        self.length = ho * wq
        phases, self.taps = {}, []
        rows_of, cols_of = {}, {}                  # phase -> its kernel rows, columns
        for i in range(kh):
            for j in range(kw):
                key = ((i * dh) % sh, (j * dw) % sw)
                index = phases.setdefault(key, len(phases))
                self.taps.append((index, (i * dh // sh) * wq + j * dw // sw))
                for seen, k in ((rows_of.setdefault(index, []), i),
                                (cols_of.setdefault(index, []), j)):
                    if k not in seen:
                        seen.append(k)
        # A phase's taps are the kernel rows i with (i*dh) % sh == a times the
        # columns j with (j*dw) % sw == b; their offsets i*dh // sh (and
        # j*dw // sw) step evenly, so the taps of a phase are one strided
        # grid of offsets: (phase, kernel rows, kernel columns, first
        # offset, row step, column step).
        self.tap_grids = []
        for index in range(len(phases)):
            ii, jj = rows_of[index], cols_of[index]
            oi, oj = [i * dh // sh for i in ii], [j * dw // sw for j in jj]
            self.tap_grids.append((index, ii, jj, oi[0] * wq + oj[0],
                                   (oi[1] - oi[0] if len(oi) > 1 else 1) * wq,
                                   oj[1] - oj[0] if len(oj) > 1 else 1))
        self.phases = [(_axis_phase(a, pad[0], in_hw[0], self.rows, sh),
                        _axis_phase(b, pad[1], in_hw[1], wq, sw)) for a, b in phases]
        # Each input cell lies in exactly one phase; cells outside the
        # stored ones are read by no window.
        self.covers_input = sum(r[1] * q[1] for r, q in self.phases) == in_hw[0] * in_hw[1]

    @property
    def phase_size(self):
        """Floats of one plane's phases."""
        return len(self.phases) * self.rows * self.wq

    def split(self, planes, fill=0.0, name="phases"):
        """(phases, B, rows*Wq) scratch: the phases of (B, H, W) planes,
        `fill` outside the input."""
        count = planes.shape[0]
        out = thread_scratch(name, (len(self.phases), count, self.rows, self.wq))
        sh, sw = self.stride
        for phase, ((r0, nr, y0), (q0, nq, x0)) in zip(out, self.phases):
            phase[:, :r0] = fill
            phase[:, r0 + nr:] = fill
            phase[:, r0:r0 + nr, :q0] = fill
            phase[:, r0:r0 + nr, q0 + nq:] = fill
            phase[:, r0:r0 + nr, q0:q0 + nq] = \
                planes[:, y0:y0 + (nr - 1) * sh + 1:sh, x0:x0 + (nq - 1) * sw + 1:sw]
        return out.reshape(len(self.phases), count, -1)

    def split_last(self, planes, fill=0.0, name="phases_last"):
        """(phases, rows*Wq, B) scratch: split's phases with the planes as
        the last axis (the layout in which a sum over taps runs as one
        einsum per phase, `grid_view`)."""
        count = planes.shape[0]
        out = thread_scratch(name, (len(self.phases), self.rows, self.wq, count))
        sh, sw = self.stride
        for phase, ((r0, nr, y0), (q0, nq, x0)) in zip(out, self.phases):
            phase[:r0] = fill
            phase[r0 + nr:] = fill
            phase[r0:r0 + nr, :q0] = fill
            phase[r0:r0 + nr, q0 + nq:] = fill
            phase[r0:r0 + nr, q0:q0 + nq] = planes[
                :, y0:y0 + (nr - 1) * sh + 1:sh, x0:x0 + (nq - 1) * sw + 1:sw].transpose(1, 2, 0)
        return out.reshape(len(self.phases), -1, count)

    def grid_view(self, phases_last, grid):
        """(kernel rows, kernel columns, Ho*Wq, B) view of what the taps of
        `grid` (an entry of tap_grids) read, from split_last's phases."""
        index, ii, jj, offset, row_step, col_step = grid
        src = phases_last[index, offset:]
        b = src.shape[-1]
        item = src.itemsize
        return np.lib.stride_tricks.as_strided(
            src, (len(ii), len(jj), self.length, b),
            (row_step * b * item, col_step * b * item, b * item, item), writeable=False)

    def merge(self, phases, planes):
        """Write the input cells of phase gradients (phases, B, rows*Wq) into
        (B, H, W) planes, overwriting them (cells no window reads get 0):
        the adjoint of split."""
        if not self.covers_input:
            planes[...] = 0
        sh, sw = self.stride
        grids = phases.reshape(len(self.phases), -1, self.rows, self.wq)
        for phase, ((r0, nr, y0), (q0, nq, x0)) in zip(grids, self.phases):
            planes[:, y0:y0 + (nr - 1) * sh + 1:sh, x0:x0 + (nq - 1) * sw + 1:sw] = \
                phase[:, r0:r0 + nr, q0:q0 + nq]

    def view(self, phases, tap):
        """(B, Ho*Wq): what tap number `tap` reads for every output."""
        phase, offset = self.taps[tap]
        return phases[phase, :, offset:offset + self.length]

    def crop(self, grid):
        """(B, Ho, Wo) view of a flat (B, Ho*Wq) grid, junk dropped."""
        return grid.reshape(-1, self.out_hw[0], self.wq)[:, :, :self.out_hw[1]]

    def grid(self, planes):
        """(B, Ho, Wo) planes as a flat (B, Ho*Wq) scratch grid, junk zero."""
        grid = thread_scratch("grid", (planes.shape[0], self.out_hw[0], self.wq))
        grid[:, :, self.out_hw[1]:] = 0
        grid[:, :, :self.out_hw[1]] = planes
        return grid.reshape(planes.shape[0], -1)


def blocks(lo, hi, block):
    """[start, stop) blocks of at most `block` planes covering [lo, hi)."""
    return [(start, min(hi, start + block)) for start in range(lo, hi, block)]
