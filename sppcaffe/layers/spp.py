"""Spatial pyramid pooling (He et al., TPAMI 2015): a map of any size pooled
into a fixed-length vector.

Each level pools the (N, C, H, W) input into n x n bins (rows and columns
binned independently, so rectangles work) and is flattened in (channel,
row, column) order; the levels are concatenated in the order listed, giving
(N, C * sum n^2).  That is BVLC SPPLayer's Pooling -> Flatten -> Concat,
including its quirk that a one-level pyramid is the Pooling top itself,
(N, C, 1, 1), which method CAFFE reproduces.

``spp_param`` extensions (protos/caffe.proto): ``method`` picks the bin
layout (CAFFE, PAPER, ADAPTIVE: see sppcaffe.spp_geometry) and ``levels``
lists the bins per side, e.g. 6, 3, 2, 1.  Without ``levels``,
pyramid_height h gives BVLC's 1, 2, 4, ... 2^(h-1).  CAFFE accepts an
explicit list only when it is exactly that (BVLC can pool nothing else).

All methods run through the per-axis bin kernels of sppcaffe.layers.pooling
(one code path; the bins decide the method); on the GPU the same bins,
packed into tables (sppcaffe.layers.window_pool_device), drive one kernel.
"""
import logging

import numpy as np

from .. import spp_geometry as geometry
from ..backends import gpu
from . import window_pool_device as device_pool
from ..layer import register
from ..proto import caffe_pb2
from .pooling import (MapPoolingLayer, ave_pool_bins, ave_pool_bins_backward, max_pool_backward,
                      max_pool_bins)

_S = caffe_pb2.SPPParameter
_log = logging.getLogger(__name__)
_METHODS = {caffe_pb2.CAFFE: geometry.CAFFE, caffe_pb2.PAPER: geometry.PAPER,
            caffe_pb2.ADAPTIVE: geometry.ADAPTIVE}


def read_levels(layer, p, method):
    """The pyramid of an spp_param: bins per side of each level, in output
    order (explicit `levels`, else BVLC's 1, 2, 4, ... from pyramid_height)."""
    levels = list(p.levels)
    if not levels:
        if p.pyramid_height < 1:
            raise layer.error("give pyramid_height >= 1 or a list of levels")
        return geometry.pyramid_levels(p.pyramid_height)
    if p.HasField("pyramid_height") and p.pyramid_height != len(levels):
        raise layer.error(f"pyramid_height {p.pyramid_height} disagrees with the "
                          f"{len(levels)} levels {levels}")
    if min(levels) < 1:
        raise layer.error(f"every level needs at least 1 bin per side, got {levels}")
    if method == geometry.CAFFE and levels != geometry.pyramid_levels(len(levels)):
        raise layer.error(f"method CAFFE pools 1, 2, 4, ... bins per side, in that order "
                          f"(BVLC SPPLayer); got levels {levels}: use PAPER or ADAPTIVE")
    return levels


@register("SPP")
class SPPLayer(MapPoolingLayer):
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.spp_param
        if p.pool == _S.STOCHASTIC:
            raise self.error("STOCHASTIC pooling is not implemented (use MAX or AVE)")
        self.is_max = p.pool == _S.MAX
        self.method = _METHODS[p.method]
        self.levels = read_levels(self, p, self.method)
        self.bvlc_single_level = self.method == geometry.CAFFE and self.levels == [1]
        self._warned = False
        self._device_bins = device_pool.DeviceBins()
        self._dev = gpu.Workspace()

    def _plan(self, shape):
        n, c, h, w = shape
        self._bins = []
        for level, count in enumerate(self.levels):
            try:
                self._bins.append((geometry.bins(self.method, h, count),
                                   geometry.bins(self.method, w, count)))
            except ValueError as e:
                raise self.error(f"level {level} ({count}x{count} bins) cannot pool the "
                                 f"{h}x{w} input: {e}") from None
        if self.method == geometry.PAPER:
            self._warn_uncovered(h, w)
        sizes = [c * count * count for count in self.levels]
        ends = np.cumsum(sizes)
        self._columns = [slice(end - size, end) for end, size in zip(ends, sizes)]
        length = geometry.pyramid_output_length(self.levels, c)
        self._top_shape = (n, c, 1, 1) if self.bvlc_single_level else (n, length)
        self._argmax = [None] * len(self.levels)
        self._tables = None         # the device's bin tables, made when first needed

    def _warn_uncovered(self, h, w):
        if self._warned:
            return
        partial = [count for count in self.levels
                   if not (geometry.paper_covers(h, count) and geometry.paper_covers(w, count))]
        if partial:
            # Logged, not warnings.warn: a log line, once per layer, in the tools' log format.
            _log.warning("layer '%s' (SPP, method PAPER): on a %dx%d input the bins of "
                         "level(s) with %s bins per side leave the last rows/columns unpooled "
                         "(size mod bins is not 0 or 1)", self.name, h, w, partial)
            self._warned = True

    def forward(self, bottom, top):
        x = bottom[0].data
        out = top[0].data.reshape(x.shape[0], -1)       # a view: blob arrays are contiguous
        for level, ((rows, cols), columns) in enumerate(zip(self._bins, self._columns)):
            if self.is_max:
                y, self._argmax[level] = max_pool_bins(x, rows, cols)
            else:
                y = ave_pool_bins(x, rows, cols)
            out[:, columns] = y.reshape(x.shape[0], -1)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        dx[...] = 0
        n, c = dx.shape[:2]
        dy = top[0].diff.reshape(n, -1)
        for level, ((rows, cols), columns) in enumerate(zip(self._bins, self._columns)):
            g = dy[:, columns].reshape(n, c, len(rows.starts), len(cols.starts))
            if self.is_max:
                max_pool_backward(g, self._argmax[level], dx)
            else:
                ave_pool_bins_backward(g, rows, cols, dx)

    # ---- device code: one launch for all levels ----------------------------------
    def _device_bins_for(self, bottom):
        """The bins of _plan as device tables (uploaded when they change)."""
        if self._tables is None:
            self._tables = device_pool.bin_tables(self._bins, bottom[0].channels)
        return self._device_bins.load(self._tables)

    def _device_argmax(self, bottom):
        return self._dev.get("argmax", 4 * bottom[0].num * self._tables.row_length)

    def forward_gpu(self, bottom, top):
        _, c, h, w = bottom[0].shape
        bins = self._device_bins_for(bottom)
        pool = device_pool.MAX if self.is_max else device_pool.AVE
        argmax = self._device_argmax(bottom) if self.is_max else 0
        device_pool.pool_forward(bins, pool, bottom[0].gpu_data, (c, h, w), bottom[0].num,
                                 top[0].mutable_gpu_data, argmax)

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        bins = self._device_bins_for(bottom)
        pool = device_pool.MAX if self.is_max else device_pool.AVE
        argmax = self._device_argmax(bottom) if self.is_max else 0
        device_pool.pool_backward_shared(bins, pool, top[0].gpu_diff, argmax, bottom[0].shape,
                                         bottom[0].mutable_gpu_diff)
