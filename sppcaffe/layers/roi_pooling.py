"""ROIPooling, the Fast R-CNN fork's layer (rbgirshick/caffe-fast-rcnn,
roi_pooling_layer.cpp/.cu).

Bottoms: a feature map (N, C, H, W) and rois (R, 5), each row (batch
index, x1, y1, x2, y2) in image coordinates.  Top: (R, C, pooled_h,
pooled_w), the maximum of each bin of each roi.  The fork's geometry, in
float32 as it computes it: corners round(coordinate * spatial_scale) (half
away from zero), roi size max(end - start + 1, 1), bin (ph, pw) covering
rows [floor(ph * bin_h), ceil((ph + 1) * bin_h)) and columns likewise from
the roi's start, clipped to the map.  An empty bin outputs 0 (argmax -1).
Ties go to the first maximum in row-major order.

Backward: each input cell gets the sum of the gradients of the outputs
whose argmax it is; the rois get none (zeros where asked).  This is the
exact gradient of the forward; the fork's own backward differs in one
corner case: it gives nothing to the cell a malformed roi (x2 < x1 or
y2 < y1 after scaling) pools, since it only visits cells between the roi's
corners.
"""
import numpy as np

from ..backends import gpu
from ..layer import Layer, register

_F32 = np.float32


def _round_half_away(values):
    """C's round() of float32 values, as integers (exact in float64)."""
    v = values.astype(np.float64)
    return (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int64)


def roi_bins(rois, spatial_scale, pooled_h, pooled_w, height, width):
    """The fork's geometry for (R, 5) rois: batch indices (R,), and the
    clipped bin bounds hstart, hend (R, pooled_h), wstart, wend (R, pooled_w)."""
    rois = np.asarray(rois, _F32).reshape(-1, 5)
    batch = rois[:, 0].astype(np.int64)              # C's float -> int truncation
    x1, y1, x2, y2 = _round_half_away(rois[:, 1:] * _F32(spatial_scale)).T
    roi_w = np.maximum(x2 - x1 + 1, 1).astype(_F32)
    roi_h = np.maximum(y2 - y1 + 1, 1).astype(_F32)

    def axis(size, pooled, start, limit):
        bin_size = (size / _F32(pooled))[:, None]
        p = np.arange(pooled, dtype=_F32)[None]
        lo = np.floor(p * bin_size).astype(np.int64) + start[:, None]
        hi = np.ceil((p + 1) * bin_size).astype(np.int64) + start[:, None]
        return np.clip(lo, 0, limit), np.clip(hi, 0, limit)

    hstart, hend = axis(roi_h, pooled_h, y1, height)
    wstart, wend = axis(roi_w, pooled_w, x1, width)
    return batch, hstart, hend, wstart, wend


def _bin_table(start, end):
    """Cell indices of each bin padded to the widest one: (bins, k) indices
    (clipped into range) and a validity mask."""
    k = int((end - start).max(initial=0))
    idx = start[:, None] + np.arange(max(k, 1))
    valid = idx < end[:, None]
    return np.minimum(idx, np.maximum(end[:, None] - 1, 0)), valid


def _pool_roi(plane, hs, he, ws, we):
    """Max and argmax (plane index) of each bin of one roi over `plane`
    (C, H, W): columns first, then rows; np.argmax takes the first maximum
    each time, so the pair is the first maximum in row-major order."""
    channels, _, width = plane.shape
    empty = (he <= hs)[:, None] | (we <= ws)[None, :]                   # (PH, PW)
    if empty.all():                   # e.g. a roi outside the map
        shape = (channels,) + empty.shape
        return np.zeros(shape, plane.dtype), np.full(shape, -1)
    top, bottom = int(hs.min()), int(he.max())
    rows = plane[:, top:bottom, :]
    cols, col_ok = _bin_table(ws, we)
    g = np.where(col_ok, rows[:, :, cols], -np.inf)               # (C, rows, PW, kw)
    col_arg = g.argmax(axis=-1)
    col_max = np.take_along_axis(g, col_arg[..., None], axis=-1)[..., 0]
    ridx, row_ok = _bin_table(hs - top, he - top)
    g2 = np.where(row_ok[None, :, :, None], col_max[:, ridx, :], -np.inf)   # (C, PH, kh, PW)
    row_arg = g2.argmax(axis=2)
    value = np.take_along_axis(g2, row_arg[:, :, None, :], axis=2)[:, :, 0, :]
    row = np.take_along_axis(np.broadcast_to(ridx[None, :, :, None], g2.shape),
                             row_arg[:, :, None, :], axis=2)[:, :, 0, :]
    col_in_row = np.take_along_axis(col_arg, row, axis=1)               # (C, PH, PW)
    w = cols[np.arange(cols.shape[0])[None, None, :], col_in_row]
    h = row + top
    value = np.where(empty, 0.0, value)
    argmax = np.where(empty, -1, h * width + w)
    return value, argmax


@register("ROIPooling")
class ROIPoolingLayer(Layer):
    exact_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.roi_pooling_param
        if p.pooled_h <= 0:
            raise self.error("pooled_h must be > 0")
        if p.pooled_w <= 0:
            raise self.error("pooled_w must be > 0")
        self.pooled_h, self.pooled_w = int(p.pooled_h), int(p.pooled_w)
        self.spatial_scale = _F32(p.spatial_scale)
        self._argmax = None
        self._dev = gpu.Workspace()

    def reshape(self, bottom, top):
        if bottom[0].ndim != 4:
            raise self.error(f"the feature map must be 4-D (N, C, H, W), got shape "
                             f"{bottom[0].shape}")
        rois = bottom[1]
        if rois.channels * rois.height * rois.width != 5:
            raise self.error(f"rois must be (R, 5) = (batch index, x1, y1, x2, y2), got shape "
                             f"{rois.shape}")
        _, self.channels, self.height, self.width = bottom[0].shape
        self.num_rois = rois.num
        top[0].reshape(self.num_rois, self.channels, self.pooled_h, self.pooled_w)

    def _check_batch(self, bottom):
        # Decided in float: the int cast of NaN or a huge value is undefined
        # and differs between platforms (kernels/roi_pooling.cu).
        rois = bottom[1].cpu_data.reshape(-1, 5)
        bad = ~np.isfinite(rois).all(axis=1)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise self.error(f"roi {r} is not finite: {rois[r].tolist()}")
        batch = rois[:, 0]
        bad = ~((batch > -1) & (batch < bottom[0].num))      # truncated to [0, num)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise self.error(f"roi {r} has batch index {batch[r]:g}, outside the batch of "
                             f"{bottom[0].num} image(s)")

    def forward(self, bottom, top):
        self._check_batch(bottom)
        x = bottom[0].data
        batch, hs, he, ws, we = roi_bins(bottom[1].data, self.spatial_scale, self.pooled_h,
                                         self.pooled_w, self.height, self.width)
        y = top[0].data
        argmax = np.empty(y.shape, np.int64)
        for r in range(self.num_rois):
            y[r], argmax[r] = _pool_roi(x[batch[r]], hs[r], he[r], ws[r], we[r])
        self._argmax = argmax

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            bottom[1].diff[...] = 0          # piecewise constant in the rois
        if not propagate_down[0]:
            return
        argmax, dy = self._argmax, top[0].diff
        batch = bottom[1].data.reshape(-1, 5)[:, 0].astype(np.int64)
        plane = (batch[:, None] * self.channels + np.arange(self.channels)[None])   # (R, C)
        flat = plane[:, :, None, None] * (self.height * self.width) + argmax
        hit = argmax >= 0
        dx = np.bincount(flat[hit], weights=dy[hit], minlength=bottom[0].count)
        bottom[0].diff[...] = dx.reshape(bottom[0].shape)

    # ---- device code (kernels/roi_pooling.cu) --------------------------------
    def _argmax_dev(self, count):
        return self._dev.get("argmax", 4 * count)

    def forward_gpu(self, bottom, top):
        self._check_batch(bottom)        # rois are host data in practice: no copy
        count = top[0].count
        if count == 0:
            return
        gpu.kernel("roi_pooling_forward")(
            count, count, bottom[0].gpu_data, bottom[1].gpu_data, self.spatial_scale,
            bottom[0].num, self.channels, self.height, self.width, self.pooled_h,
            self.pooled_w, top[0].mutable_gpu_data, self._argmax_dev(count))

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[1]:
            gpu.blas().memset0(bottom[1].mutable_gpu_diff, 4 * bottom[1].count)
        if not propagate_down[0]:
            return
        count = bottom[0].count
        gpu.kernel("roi_pooling_backward")(
            count, count, top[0].gpu_diff, self._argmax_dev(top[0].count), bottom[1].gpu_data,
            self.num_rois, self.spatial_scale, self.channels, self.height, self.width,
            self.pooled_h, self.pooled_w, bottom[0].mutable_gpu_diff)

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0
