"""Layers that cut, repeat or pick parts of blobs: Slice, Tile, Filter,
BatchReindex.

Slice is Concat run backwards and shares its block layout and copy kernel
(structure.axis_blocks, kernels/copy.cu); the others' kernels are in
kernels/slicing.cu.
"""
import numpy as np

from ..backends import gpu
from ..layer import Layer, canonical_axis, register
from .structure import axis_blocks


def _refuse_in_place(layer, bottom, top):
    if any(t is b for t in top for b in bottom):
        raise layer.error("does not allow in-place computation")


@register("Slice")
class SliceLayer(Layer):
    """Cuts the bottom along an axis into the tops: at slice_point (one
    fewer than tops, increasing), or into equal parts without them."""
    exact_num_bottom = 1
    min_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.slice_param
        if p.HasField("axis") and p.HasField("slice_dim"):
            raise self.error("Either axis or slice_dim should be specified; not both.")
        self.points = [int(s) for s in p.slice_point]

    def _axis(self, shape):
        p = self.param.slice_param
        if p.HasField("slice_dim"):
            if p.slice_dim >= len(shape):
                raise self.error(f"slice_dim {p.slice_dim} out of range for {len(shape)}-D blob")
            return p.slice_dim
        return canonical_axis(self, p.axis, shape)

    def _sizes(self, length, num_top):
        if not self.points:
            if length % num_top:
                raise self.error(f"Number of top blobs ({num_top}) should evenly divide input "
                                 f"slice axis ({length})")
            return [length // num_top] * num_top
        if len(self.points) != num_top - 1:
            raise self.error(f"{len(self.points)} slice_point(s) given for {num_top} tops; "
                             f"expected {num_top - 1}")
        if num_top > length:
            raise self.error(f"{num_top} tops cannot slice an axis of length {length}")
        bounds = [0] + self.points + [length]
        for lo, hi in zip(bounds[:-2], bounds[1:-1]):
            if hi <= lo:
                raise self.error(f"slice_point values must increase from 1: {self.points}")
        if bounds[-1] < bounds[-2]:
            raise self.error(f"slice_point {bounds[-2]} is beyond the slice axis ({length})")
        return [hi - lo for lo, hi in zip(bounds[:-1], bounds[1:])]

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.axis = axis = self._axis(shape)
        sizes = self._sizes(shape[axis], len(top))
        if len(top) == 1:
            top[0].view_of(bottom[0], shape)        # Caffe's ShareData + ShareDiff
            return
        _refuse_in_place(self, bottom, top)
        for t, size in zip(top, sizes):
            t.reshape(shape[:axis] + (size,) + shape[axis + 1:])
        self._cuts = np.cumsum(sizes)[:-1]

    def forward(self, bottom, top):
        if len(top) > 1:
            for t, part in zip(top, np.split(bottom[0].data, self._cuts, axis=self.axis)):
                np.copyto(t.data, part)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0] and len(top) > 1:
            np.concatenate([t.diff for t in top], axis=self.axis, out=bottom[0].diff)

    def forward_gpu(self, bottom, top):
        if len(top) == 1:
            return
        x, copy = bottom[0].gpu_data, gpu.kernel("copy_blocks")
        for t, offset, block, row in axis_blocks(top, self.axis, bottom[0].shape):
            copy(t.count, t.count, block, x + 4 * offset, row, t.mutable_gpu_data, block)

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0] or len(top) == 1:
            return
        dx, copy = bottom[0].mutable_gpu_diff, gpu.kernel("copy_blocks")
        for t, offset, block, row in axis_blocks(top, self.axis, bottom[0].shape):
            copy(t.count, t.count, block, t.gpu_diff, block, dx + 4 * offset, row)


@register("Tile")
class TileLayer(Layer):
    """Repeats the bottom `tiles` times along an axis: every block of the
    axes from `axis` on is copied `tiles` times in a row."""
    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        _refuse_in_place(self, bottom, top)
        p = self.param.tile_param
        shape = bottom[0].shape
        axis = canonical_axis(self, p.axis, shape)
        if not p.HasField("tiles"):
            raise self.error("Number of tiles must be specified")
        if p.tiles <= 0:
            raise self.error(f"Number of tiles must be positive, got {p.tiles}")
        self.tiles = p.tiles
        self.outer = int(np.prod(shape[:axis]))
        self.inner = int(np.prod(shape[axis:]))
        top[0].reshape(shape[:axis] + (shape[axis] * p.tiles,) + shape[axis + 1:])

    def _tiled(self, array):
        return array.reshape(self.outer, self.tiles, self.inner)

    def forward(self, bottom, top):
        np.copyto(self._tiled(top[0].data), bottom[0].data.reshape(self.outer, 1, self.inner))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            np.sum(self._tiled(top[0].diff), axis=1,
                   out=bottom[0].diff.reshape(self.outer, self.inner))

    def forward_gpu(self, bottom, top):
        n = top[0].count
        gpu.kernel("tile_forward")(n, n, self.inner, self.tiles, bottom[0].gpu_data,
                                   top[0].mutable_gpu_data)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            n = bottom[0].count
            gpu.kernel("tile_backward")(n, n, self.inner, self.tiles, top[0].gpu_diff,
                                        bottom[0].mutable_gpu_diff)


class _RowPicks:
    """Rows of a bottom that make a top, in top order (Filter's kept items,
    BatchReindex's indices), and their gradient: bottom row b sums the top
    rows that picked it, in top order, on the host and on the device."""

    def __init__(self):
        self.rows = np.zeros(0, np.int32)
        self.num_bottom_rows = 0
        self._dev = gpu.Workspace()
        self._rows_on = None            # the device holding `rows` now

    def set(self, rows, num_bottom_rows):
        self.rows = np.ascontiguousarray(rows, np.int32)
        self.num_bottom_rows = num_bottom_rows
        self._rows_on = None

    def gather(self, x, y):
        """y's first len(rows) items from x."""
        np.take(x, self.rows, axis=0, out=y[:len(self.rows)])

    def scatter(self, dy, dx):
        dx[...] = 0
        np.add.at(dx, self.rows, dy[:len(self.rows)])

    def _upload(self, name, array):
        ptr = self._dev.get(name, array.nbytes)
        if array.nbytes:
            gpu.blas().upload(ptr, array)
        return ptr

    def gather_gpu(self, x, y, inner):
        n = len(self.rows) * inner
        if not n:
            return
        if self._rows_on is not gpu.blas():     # once per forward, not once per top
            self._upload("rows", self.rows)
            self._rows_on = gpu.blas()
        gpu.kernel("reindex_rows")(n, n, inner, self._dev.get("rows", self.rows.nbytes), x, y)

    def scatter_gpu(self, dy, dx, inner):
        n = self.num_bottom_rows * inner
        if not n:
            return
        # The device sums as a gather: per bottom row, the list of top rows
        # that picked it (a stable sort keeps them in top order).
        sources = np.argsort(self.rows, kind="stable").astype(np.int32)
        counts = np.bincount(self.rows, minlength=self.num_bottom_rows).astype(np.int32)
        begins = (np.cumsum(counts) - counts).astype(np.int32)
        gpu.kernel("reindex_rows_sum")(n, n, inner, self._upload("sources", sources),
                                       self._upload("begins", begins),
                                       self._upload("counts", counts), dy, dx)


def _row_size(blob):
    return blob.count // blob.shape[0] if blob.shape[0] else 0


@register("Filter")
class FilterLayer(Layer):
    """Keeps the items (first-axis rows) of bottoms 0..K-1 whose selector
    value, in the last bottom, is nonzero.  As Caffe's, the first reshape
    (at setup, before any data) gives the tops every item."""
    min_num_bottom = 2
    min_num_top = 1

    def layer_setup(self, bottom, top):
        if len(top) != len(bottom) - 1:
            raise self.error(f"needs one top per filtered bottom: {len(bottom) - 1} bottoms "
                             f"besides the selector, {len(top)} tops")
        self.picks = _RowPicks()
        self._first_reshape = True
        self._selector_index = len(bottom) - 1

    def allow_force_backward(self, bottom_index):
        return bottom_index != self._selector_index

    def reshape(self, bottom, top):
        _refuse_in_place(self, bottom, top)
        selector = bottom[-1]
        if selector.ndim == 0 or any(s != 1 for s in selector.shape[1:]):
            raise self.error(f"Selector blob dimensions must be singletons (1), except the "
                             f"first; got shape {selector.shape}")
        num = selector.shape[0]
        for i, b in enumerate(bottom[:-1]):
            if b.ndim == 0 or b.shape[0] != num:
                raise self.error(f"Each bottom should have the same 0th dimension as the "
                                 f"selector blob ({num}); bottom {i} has shape {b.shape}")
        # The selector is read on the host, as Caffe's Reshape does.
        self.picks.set(np.flatnonzero(selector.cpu_data.reshape(num)), num)
        kept = num if self._first_reshape else len(self.picks.rows)
        self._first_reshape = False
        for t, b in zip(top, bottom):
            t.reshape((kept,) + b.shape[1:])

    def forward(self, bottom, top):
        for t, b in zip(top, bottom):
            self.picks.gather(b.data, t.data)

    def _check_selector_not_asked(self, propagate_down):
        if propagate_down[-1]:
            raise self.error("cannot backpropagate to the selector (the last bottom)")

    def backward(self, top, propagate_down, bottom):
        # Caffe divides by the top's item count here, so an empty selection
        # crashes it; the gradient of that case is plainly zero.
        self._check_selector_not_asked(propagate_down)
        for t, b, down in zip(top, bottom, propagate_down):
            if down:
                self.picks.scatter(t.diff, b.diff)

    def forward_gpu(self, bottom, top):
        for t, b in zip(top, bottom):
            self.picks.gather_gpu(b.gpu_data, t.mutable_gpu_data, _row_size(b))

    def backward_gpu(self, top, propagate_down, bottom):
        self._check_selector_not_asked(propagate_down)
        for t, b, down in zip(top, bottom, propagate_down):
            if down:
                self.picks.scatter_gpu(t.gpu_diff, b.mutable_gpu_diff, _row_size(b))


@register("BatchReindex")
class BatchReindexLayer(Layer):
    """Top item j is bottom[0]'s item bottom[1][j] (indices may repeat or
    leave items out); the gradient of an item sums its copies'."""
    exact_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        self.picks = _RowPicks()

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0                  # never to the indices

    def reshape(self, bottom, top):
        _refuse_in_place(self, bottom, top)
        if bottom[1].ndim != 1:
            raise self.error(f"the indices (bottom 1) must be 1-D; got shape {bottom[1].shape}")
        if bottom[0].ndim == 0:
            raise self.error("bottom 0 needs a first axis to reindex")
        top[0].reshape(bottom[1].shape + bottom[0].shape[1:])

    def _read_indices(self, bottom):
        """Caffe's check_batch_reindex, then its cast to int (truncation)."""
        index = bottom[1].cpu_data
        num = bottom[0].shape[0]
        bad = np.flatnonzero(~((index >= 0) & (index < num)))
        if len(bad):
            j = bad[0]
            raise self.error(f"index {index[j]:g} at position {j} is outside the batch "
                             f"[0, {num}) (negative, or greater than batch size)")
        self.picks.set(index.astype(np.int32), num)

    def forward(self, bottom, top):
        self._read_indices(bottom)
        self.picks.gather(bottom[0].data, top[0].data)

    def _check_indices_not_asked(self, propagate_down):
        if propagate_down[1]:
            raise self.error("Cannot backprop to index (bottom 1).")

    def backward(self, top, propagate_down, bottom):
        self._check_indices_not_asked(propagate_down)
        if propagate_down[0]:
            self.picks.scatter(top[0].diff, bottom[0].diff)

    def forward_gpu(self, bottom, top):
        self._read_indices(bottom)
        self.picks.gather_gpu(bottom[0].gpu_data, top[0].mutable_gpu_data, _row_size(bottom[0]))

    def backward_gpu(self, top, propagate_down, bottom):
        self._check_indices_not_asked(propagate_down)
        if propagate_down[0]:
            self.picks.scatter_gpu(top[0].gpu_diff, bottom[0].mutable_gpu_diff,
                                   _row_size(bottom[0]))
