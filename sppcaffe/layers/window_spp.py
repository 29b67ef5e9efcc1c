"""WindowSPP: spatial pyramid pooling of image windows on a feature map
(SPP-net detection, Sec. 4), the layer through which detection fine-tunes.

bottom[0]: the feature map (N, C, H, W), e.g. conv5.
bottom[1]: R windows, rows [batch_index, x1, y1, x2, y2] in 0-based, inclusive
           pixels of the network's input image (any shape with 5 values per
           row).  It gets no gradient.
top[0]:    (R, C * sum n^2), each level flattened (channel, row, column) and
           the levels concatenated: the SPP layer's layout.

Windows are mapped to map cells by sppcaffe.detection.mapping (the paper's
appendix mapping by default, stride S = 16) and pooled with adaptive bins by
sppcaffe.detection.window_pool.  Windows of one image that land on the same
cells are pooled once.  MAX's argmax is not kept: backward recomputes it
from bottom[0], which no layer changes between forward and backward.

On the GPU the windows are mapped on the host as above (bottom[1] is a small
table read from the host), every window is pooled by one kernel launch over
the whole batch (no deduplication: a duplicate costs a little work, not a
host round trip), MAX keeps its argmax from forward for backward, and
backward is a gather: each map cell sums, in window order, what the windows
containing it send (listed per cell on the host), so GPU training is
reproducible bit for bit (sppcaffe.layers.window_pool_device).

``spp_param``: ``levels`` (bins per side, e.g. 6 3 2 1, or pyramid_height),
``pool`` (MAX or AVE), ``method`` must be ADAPTIVE.  The stride and the
mapping come from ``window_stride`` and ``window_mapping`` (and the released
mapping's offsets from ``window_offset0``, ``window_offset``) when the schema
has them (sppcaffe extensions), else 16, the paper's mapping and ZF-5's
offsets 21 and 6.5.
"""
import numpy as np

from .. import spp_geometry as geometry
from ..backends import gpu
from . import window_pool_device as device_pool
from ..detection import mapping, window_pool
from ..layer import Layer, register
from ..proto import caffe_pb2
from .spp import read_levels

_S = caffe_pb2.SPPParameter
# window_mapping enum value names -> sppcaffe.detection.mapping names
_MAPPING_NAMES = {"APPENDIX_MAPPING": mapping.PAPER, "RELEASED_MAPPING": mapping.RELEASED}


def _window_mapping(p):
    """The detection.mapping name of spp_param.window_mapping."""
    return _MAPPING_NAMES[caffe_pb2.SPPWindowMapping.Name(p.window_mapping)]


@register("WindowSPP")
class WindowSPPLayer(Layer):
    exact_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.spp_param
        if p.method != caffe_pb2.ADAPTIVE:
            raise self.error(f"spp_param.method must be ADAPTIVE (bins adapt to each window), "
                             f"got {caffe_pb2.SPPMethod.Name(p.method)}")
        if p.pool == _S.STOCHASTIC:
            raise self.error("STOCHASTIC pooling is not implemented (use MAX or AVE)")
        self.pool = window_pool.MAX if p.pool == _S.MAX else window_pool.AVE
        self.levels = read_levels(self, p, geometry.ADAPTIVE)
        self.stride = p.window_stride
        if self.stride < 1:
            raise self.error(f"window_stride must be at least 1, got {self.stride}")
        self.mapping = _window_mapping(p)
        self.released = mapping.ReleasedGeometry(p.window_offset0, p.window_offset)
        self._device_bins = device_pool.DeviceBins()
        self._dev = gpu.Workspace()
        self._device_pass = None         # (rows, argmax pointer) of the last forward_gpu

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.error(f"bottom[0] must be a (N, C, H, W) map, got shape {shape}")
        rois = bottom[1].shape
        count = rois[0] if rois else 1
        if bottom[1].count != 5 * count:
            raise self.error(f"bottom[1] must hold rows [batch_index, x1, y1, x2, y2], "
                             f"got shape {rois}")
        top[0].reshape(count, geometry.pyramid_output_length(self.levels, shape[1]))

    def _cells(self, bottom):
        """(batch index, inclusive map cells (R, 4)) of every window, checked."""
        n, _, h, w = bottom[0].shape
        rois = bottom[1].data.reshape(-1, 5).astype(np.float64)
        batch = rois[:, 0]
        bad = (batch != np.round(batch)) | (batch < 0) | (batch >= n)
        if bad.any():
            raise self.error(f"window {int(np.flatnonzero(bad)[0])} has batch index "
                             f"{batch[bad][0]:g}, not an image of the batch of {n}")
        if (rois[:, 3] < rois[:, 1]).any() or (rois[:, 4] < rois[:, 2]).any():
            raise self.error("every window needs x2 >= x1 and y2 >= y1")
        cells = mapping.boxes_to_cells(rois[:, 1:], (h, w), self.mapping, self.stride,
                                       self.released)
        return batch.astype(np.int64), cells

    def _windows(self, bottom):
        """Per image in the batch: (rows of the top, unique cells, inverse)."""
        batch, cells = self._cells(bottom)
        groups = []
        for image in range(bottom[0].num):
            rows = np.flatnonzero(batch == image)
            if rows.size:
                unique, inverse = window_pool.unique_windows(cells[rows])
                groups.append((image, rows, unique, inverse))
        return groups

    def forward(self, bottom, top):
        self._device_pass = None
        x = bottom[0].data
        out = top[0].data
        for image, rows, unique, inverse in self._windows(bottom):
            pooled = window_pool.pool_windows(x[image], unique, self.levels, self.pool)
            out[rows] = pooled[inverse]

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        dx[...] = 0
        dy = top[0].diff
        for image, rows, unique, inverse in self._windows(bottom):
            # Duplicates were pooled once: their gradients add up.
            grad = window_pool.sum_duplicates(dy[rows], inverse)
            dx[image] = window_pool.pool_windows_backward(bottom[0].data[image], unique,
                                                          self.levels, grad, self.pool)

    # ---- device code ---------------------------------------------------------------
    def _pool_gpu(self, bottom, out):
        """Pool every window into the device rows at `out`; returns the rows
        and the argmax pointer (0 for AVE)."""
        _, c, h, w = bottom[0].shape
        batch, cells = self._cells(bottom)
        tables = device_pool.window_tables(cells, self.levels, (h, w), c, batch)
        rows = len(cells)
        argmax = 0
        if self.pool == window_pool.MAX:
            argmax = self._dev.get("argmax", 4 * rows * tables.row_length)
        device_pool.pool_forward(self._device_bins.load(tables), self.pool, bottom[0].gpu_data,
                                 (c, h, w), rows, out, argmax)
        return rows, argmax

    def forward_gpu(self, bottom, top):
        self._device_pass = self._pool_gpu(bottom, top[0].mutable_gpu_data)

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self._device_pass is None:
            # No device forward since the host one: pool again for the tables and argmax.
            self._device_pass = self._pool_gpu(bottom, self._dev.floats("pooled", top[0].count))
        _, argmax = self._device_pass
        device_pool.pool_backward_windows(self._device_bins, self.pool, top[0].gpu_diff, argmax,
                                          bottom[0].shape, bottom[0].mutable_gpu_diff)
