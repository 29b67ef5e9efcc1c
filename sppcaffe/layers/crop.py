"""Crop, as Caffe's CropLayer: a window of bottom[0] the shape of bottom[1].

Axes from `axis` on take bottom[1]'s size, starting at `offset` (none: 0;
one: the same for every cropped axis; else one per cropped axis); the
axes before keep bottom[0]'s.  bottom[1] only supplies a shape: it gets no
gradient.  Device code: kernels/crop.cu.
"""
import numpy as np

from ..backends import current_device, gpu
from ..layer import Layer, canonical_axis, register


def _merge_whole_axes(kept, size, offset):
    """The same window over fewer axes: an axis kept whole folds into the
    one before it (the kernels' index arithmetic is per axis)."""
    axes = [[kept[0], size[0], offset[0]]]
    for k, s, o in zip(kept[1:], size[1:], offset[1:]):
        if k == s:
            last = axes[-1]
            axes[-1] = [last[0] * s, last[1] * s, last[2] * s]
        else:
            axes.append([k, s, o])
    return np.array(axes, np.int32).T.reshape(-1)


@register("Crop")
class CropLayer(Layer):
    exact_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        self._table = None
        self._dev = gpu.Workspace()
        self._dev_table = None       # (table bytes, device, address) uploaded last

    def reshape(self, bottom, top):
        p = self.param.crop_param
        shape, reference = bottom[0].shape, bottom[1].shape
        ndim = len(shape)
        start = canonical_axis(self, p.axis, shape)
        offsets = list(p.offset)
        if len(offsets) > 1 and start + len(offsets) != ndim:
            raise self.error(f"{len(offsets)} offsets given for the {ndim - start} axes from "
                             f"axis {start} of the {ndim}-D input: give one, or one per axis")
        if len(reference) < ndim:
            raise self.error(f"bottom[1] {reference} has fewer axes than the {ndim}-D "
                             f"bottom[0] {shape}")
        window = [0] * ndim
        new_shape = list(shape)
        for i in range(start, ndim):
            window[i] = offsets[0] if len(offsets) == 1 else \
                offsets[i - start] if offsets else 0
            new_shape[i] = reference[i]
            if shape[i] - window[i] < reference[i]:
                raise self.error(f"the crop for axis {i} is out of bounds: size "
                                 f"{reference[i]} at offset {window[i]} in an axis of "
                                 f"{shape[i]} (input {shape}, reference {reference})")
        self.offsets = tuple(window)
        self._window = tuple(slice(o, o + k) for o, k in zip(window, new_shape))
        top[0].reshape(new_shape)
        self._table = _merge_whole_axes(new_shape, shape, window)

    def forward(self, bottom, top):
        np.copyto(top[0].data, bottom[0].data[self._window])

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            bottom[1].diff[...] = 0
        if propagate_down[0]:
            diff = bottom[0].diff
            diff[...] = 0
            diff[self._window] = top[0].diff

    # ---- device code ------------------------------------------------------
    def _device_table(self):
        """The window table on the current device, uploaded when it changed."""
        data = self._table.tobytes()
        device = current_device()
        held = self._dev_table
        if held is None or held[0] != data or held[1] is not device:
            ptr = self._dev.get("table", self._table.nbytes)
            gpu.blas().upload(ptr, self._table)
            held = self._dev_table = (data, device, ptr)
        return len(self._table) // 3, held[2]

    def _check_device_size(self, bottom):
        if bottom[0].count > 2 ** 31 - 1:
            raise self.error(f"input of {bottom[0].count} elements is too large for the "
                             f"device kernels (2^31 elements)")

    def forward_gpu(self, bottom, top):
        self._check_device_size(bottom)
        axes, table = self._device_table()
        count = top[0].count
        gpu.kernel("crop_forward")(count, count, bottom[0].gpu_data, axes, table,
                                   top[0].mutable_gpu_data)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[1]:
            gpu.blas().memset0(bottom[1].mutable_gpu_diff, 4 * bottom[1].count)
        if not propagate_down[0]:
            return
        self._check_device_size(bottom)
        axes, table = self._device_table()
        count = bottom[0].count
        gpu.kernel("crop_backward")(count, count, top[0].gpu_diff, axes, table,
                                    bottom[0].mutable_gpu_diff)
