// ROIPooling (the Fast R-CNN fork's layer): max pooling of each region of
// interest into a fixed pooled_h x pooled_w grid.
//
// A roi is (batch index, x1, y1, x2, y2) in image coordinates.  Its corners
// are round(coordinate * spatial_scale) (half away from zero), its size
// max(end - start + 1, 1), and bin (ph, pw) covers rows
// [floor(ph * bin_h), ceil((ph + 1) * bin_h)) from the roi's start, clipped
// to the map; all in float arithmetic, as the fork computes it, so the host
// code (NumPy, float32) picks the same cells.
//
// Converting NaN or an out-of-range float to int is undefined (x86 and GPUs
// disagree), so the batch index is read by labels.cuh (invalid: no image)
// and corners are clamped in float before their cast.  The host rejects such
// rois before the device sees them; this only keeps every platform alike.
#include "common.cuh"
#include "labels.cuh"

struct RoiPoolingBox {
  int batch, x1, y1, width, height;
  float bin_h, bin_w;
};

// round(coordinate * scale), clamped to +-2^29 (NaN goes to a bound) so that
// the cast, and the width x2 - x1 + 1, are defined.
static __device__ __forceinline__ int roi_pooling_corner(float coordinate, float scale) {
  return (int)fminf(fmaxf(roundf(coordinate * scale), -536870912.0f), 536870912.0f);
}

static __device__ __forceinline__ RoiPoolingBox roi_pooling_box(const float* roi, float scale,
                                                               int pooled_h, int pooled_w) {
  RoiPoolingBox box;
  box.batch = label_class(roi[0], 2147483647, 0, 0);     // LABEL_INVALID: no image
  box.x1 = roi_pooling_corner(roi[1], scale);
  box.y1 = roi_pooling_corner(roi[2], scale);
  const int x2 = roi_pooling_corner(roi[3], scale);
  const int y2 = roi_pooling_corner(roi[4], scale);
  box.width = max(x2 - box.x1 + 1, 1);        // malformed rois pool one cell
  box.height = max(y2 - box.y1 + 1, 1);
  box.bin_h = (float)box.height / (float)pooled_h;
  box.bin_w = (float)box.width / (float)pooled_w;
  return box;
}

// The bins of one axis that may contain cell `offset` (cell minus the roi's
// start): one more on each side than the exact inverse, so float rounding
// can never drop a bin; callers test the argmax, which is exact.
static __device__ __forceinline__ void roi_pooling_bins(int offset, float bin, int pooled,
                                                       int* first, int* last) {
  const float lo = fminf(fmaxf(floorf((float)offset / bin), -2.0f), (float)pooled + 2.0f);
  const float hi = fminf(fmaxf(ceilf((float)(offset + 1) / bin), -2.0f), (float)pooled + 2.0f);
  *first = max((int)lo - 1, 0);
  *last = min((int)hi + 1, pooled);
}

// One output (roi, c, ph, pw) per index.  The argmax is the plane index
// h * width + w of the FIRST maximum in row-major order (strict >); an
// empty bin, or a roi whose batch index is outside the batch, outputs 0
// with argmax -1.
extern "C" __global__ void roi_pooling_forward(int count, const float* x, const float* rois,
                                              float spatial_scale, int batch_size, int channels,
                                              int height, int width, int pooled_h, int pooled_w,
                                              float* y, int* argmax) {
  CUDA_KERNEL_LOOP(index, count) {
    const int i = (int)index;
    const int pw = i % pooled_w;
    const int ph = (i / pooled_w) % pooled_h;
    const int c = (i / (pooled_w * pooled_h)) % channels;
    const int n = i / (pooled_w * pooled_h * channels);
    const RoiPoolingBox box = roi_pooling_box(rois + 5 * n, spatial_scale, pooled_h, pooled_w);
    int hstart = (int)floorf((float)ph * box.bin_h);
    int hend = (int)ceilf((float)(ph + 1) * box.bin_h);
    int wstart = (int)floorf((float)pw * box.bin_w);
    int wend = (int)ceilf((float)(pw + 1) * box.bin_w);
    hstart = min(max(hstart + box.y1, 0), height);
    hend = min(max(hend + box.y1, 0), height);
    wstart = min(max(wstart + box.x1, 0), width);
    wend = min(max(wend + box.x1, 0), width);
    int best = -1;
    float best_value = 0.0f;
    if (box.batch >= 0 && box.batch < batch_size && hend > hstart && wend > wstart) {
      const float* plane = x + ((long long)box.batch * channels + c) * height * width;
      best = hstart * width + wstart;
      best_value = plane[best];
      for (int h = hstart; h < hend; ++h) {
        for (int w = wstart; w < wend; ++w) {
          if (plane[h * width + w] > best_value) {
            best = h * width + w;
            best_value = plane[best];
          }
        }
      }
    }
    y[i] = best_value;
    argmax[i] = best;
  }
}

// A gather over the rois: each input cell (n, c, h, w) sums the gradients
// of the outputs whose argmax it is, rois in order (deterministic, no
// atomics).  Overwrites dx.
extern "C" __global__ void roi_pooling_backward(int count, const float* dy, const int* argmax,
                                               const float* rois, int num_rois,
                                               float spatial_scale, int channels, int height,
                                               int width, int pooled_h, int pooled_w,
                                               float* dx) {
  CUDA_KERNEL_LOOP(index, count) {
    const int i = (int)index;
    const int w = i % width;
    const int h = (i / width) % height;
    const int c = (i / (width * height)) % channels;
    const int n = i / (width * height * channels);
    const int cell = h * width + w;
    float gradient = 0.0f;
    for (int r = 0; r < num_rois; ++r) {
      const RoiPoolingBox box = roi_pooling_box(rois + 5 * r, spatial_scale, pooled_h, pooled_w);
      if (box.batch != n) {
        continue;
      }
      int ph0, ph1, pw0, pw1;
      roi_pooling_bins(h - box.y1, box.bin_h, pooled_h, &ph0, &ph1);
      roi_pooling_bins(w - box.x1, box.bin_w, pooled_w, &pw0, &pw1);
      const long long offset = ((long long)r * channels + c) * pooled_h * pooled_w;
      for (int ph = ph0; ph < ph1; ++ph) {
        for (int pw = pw0; pw < pw1; ++pw) {
          const long long out = offset + ph * pooled_w + pw;
          if (argmax[out] == cell) {
            gradient += dy[out];
          }
        }
      }
    }
    dx[i] = gradient;
  }
}
