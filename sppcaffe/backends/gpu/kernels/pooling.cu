// Pooling: Caffe's uniform windows (Pooling layer, MAX and AVE), and bins
// given by tables (SPP levels of every method, window pooling).
//
// MAX keeps an argmax per output: the plane index h * W + w of the FIRST
// maximum in row-major order (strict >, starting from the first cell read),
// the host code's tie rule, so argmax-routed gradients agree.
#include "common.cuh"

// ---- uniform windows (Caffe's PoolingLayer) --------------------------------
// Window (ph, pw) covers rows [ph * stride_h - pad_h, + kernel_h) of the
// padded map; the cells inside the map are read.

// `mask` (int) or, where the layer has a second top, `top_mask` (float, as
// Caffe writes it); the other one is null.
extern "C" __global__ void pool_max_forward(int count, const float* x, int channels, int height,
                                           int width, int pooled_h, int pooled_w, int kernel_h,
                                           int kernel_w, int stride_h, int stride_w, int pad_h,
                                           int pad_w, float* y, int* mask, float* top_mask) {
  CUDA_KERNEL_LOOP(index, count) {
    const int i = (int)index;
    const int pw = i % pooled_w;
    const int ph = (i / pooled_w) % pooled_h;
    const int plane = i / (pooled_w * pooled_h);            // n * channels + c
    int hstart = ph * stride_h - pad_h;
    int wstart = pw * stride_w - pad_w;
    const int hend = min(hstart + kernel_h, height);
    const int wend = min(wstart + kernel_w, width);
    hstart = max(hstart, 0);
    wstart = max(wstart, 0);
    const float* slice = x + (long long)plane * height * width;
    int best = hstart * width + wstart;
    float best_value = slice[best];
    for (int h = hstart; h < hend; ++h) {
      for (int w = wstart; w < wend; ++w) {
        if (slice[h * width + w] > best_value) {
          best = h * width + w;
          best_value = slice[best];
        }
      }
    }
    y[i] = best_value;
    if (mask) {
      mask[i] = best;
    } else {
      top_mask[i] = (float)best;
    }
  }
}

// A gather: each bottom cell sums the gradients of the windows covering it
// whose argmax is that cell (deterministic, no atomics).  Overwrites dx.
extern "C" __global__ void pool_max_backward(int count, const float* dy, const int* mask,
                                            const float* top_mask, int channels, int height,
                                            int width, int pooled_h, int pooled_w, int kernel_h,
                                            int kernel_w, int stride_h, int stride_w, int pad_h,
                                            int pad_w, float* dx) {
  CUDA_KERNEL_LOOP(index, count) {
    const int i = (int)index;
    const int w = i % width;
    const int h = (i / width) % height;
    const int plane = i / (width * height);
    const int phstart = (h + pad_h < kernel_h) ? 0 : (h + pad_h - kernel_h) / stride_h + 1;
    const int phend = min((h + pad_h) / stride_h + 1, pooled_h);
    const int pwstart = (w + pad_w < kernel_w) ? 0 : (w + pad_w - kernel_w) / stride_w + 1;
    const int pwend = min((w + pad_w) / stride_w + 1, pooled_w);
    const int cell = h * width + w;
    const long long offset = (long long)plane * pooled_h * pooled_w;
    float gradient = 0;
    for (int ph = phstart; ph < phend; ++ph) {
      for (int pw = pwstart; pw < pwend; ++pw) {
        const long long q = offset + ph * pooled_w + pw;
        const bool routed = mask ? mask[q] == cell : top_mask[q] == (float)cell;
        if (routed) gradient += dy[q];
      }
    }
    dx[i] = gradient;
  }
}

// Caffe's divisor: the window clipped to the padded map (padding counts).
static __device__ __forceinline__ int pool_window_size(int ph, int pw, int height, int width,
                                                       int kernel_h, int kernel_w, int stride_h,
                                                       int stride_w, int pad_h, int pad_w) {
  const int hstart = ph * stride_h - pad_h;
  const int wstart = pw * stride_w - pad_w;
  const int hend = min(hstart + kernel_h, height + pad_h);
  const int wend = min(wstart + kernel_w, width + pad_w);
  return (hend - hstart) * (wend - wstart);
}

extern "C" __global__ void pool_ave_forward(int count, const float* x, int channels, int height,
                                           int width, int pooled_h, int pooled_w, int kernel_h,
                                           int kernel_w, int stride_h, int stride_w, int pad_h,
                                           int pad_w, float* y) {
  CUDA_KERNEL_LOOP(index, count) {
    const int i = (int)index;
    const int pw = i % pooled_w;
    const int ph = (i / pooled_w) % pooled_h;
    const int plane = i / (pooled_w * pooled_h);
    const int size = pool_window_size(ph, pw, height, width, kernel_h, kernel_w, stride_h,
                                      stride_w, pad_h, pad_w);
    const int hstart = max(ph * stride_h - pad_h, 0);
    const int wstart = max(pw * stride_w - pad_w, 0);
    const int hend = min(ph * stride_h - pad_h + kernel_h, height);
    const int wend = min(pw * stride_w - pad_w + kernel_w, width);
    const float* slice = x + (long long)plane * height * width;
    float sum = 0;
    for (int h = hstart; h < hend; ++h) {
      for (int w = wstart; w < wend; ++w) sum += slice[h * width + w];
    }
    y[i] = sum / size;
  }
}

// A gather over the windows covering each bottom cell.  Overwrites dx.
extern "C" __global__ void pool_ave_backward(int count, const float* dy, int channels, int height,
                                            int width, int pooled_h, int pooled_w, int kernel_h,
                                            int kernel_w, int stride_h, int stride_w, int pad_h,
                                            int pad_w, float* dx) {
  CUDA_KERNEL_LOOP(index, count) {
    const int i = (int)index;
    const int w = i % width + pad_w;                // in the padded map
    const int h = (i / width) % height + pad_h;
    const int plane = i / (width * height);
    const int phstart = (h < kernel_h) ? 0 : (h - kernel_h) / stride_h + 1;
    const int phend = min(h / stride_h + 1, pooled_h);
    const int pwstart = (w < kernel_w) ? 0 : (w - kernel_w) / stride_w + 1;
    const int pwend = min(w / stride_w + 1, pooled_w);
    const float* slice = dy + (long long)plane * pooled_h * pooled_w;
    float gradient = 0;
    for (int ph = phstart; ph < phend; ++ph) {
      for (int pw = pwstart; pw < pwend; ++pw) {
        gradient += slice[ph * pooled_w + pw] /
                    pool_window_size(ph, pw, height, width, kernel_h, kernel_w, stride_h,
                                     stride_w, pad_h, pad_w);
      }
    }
    dx[i] = gradient;
  }
}

// ---- bins given by tables (SPP, window pooling) ----------------------------
// Output: one row of `row_length` = C * sum(nh * nw) values per box (an image
// for SPP, a window for window pooling): each level flattened (channel, row,
// column), levels concatenated.  Tables (see sppcaffe/layers/window_pool_device.py):
//   levels[4 * l ..]: the level's first column in the row, nh, nw, and the
//                     offset of its bins within the box's bin table;
//   bins + box * bins_per_box + offset: row starts[nh], row ends[nh], row
//                     divisors[nh], column starts[nw], ends[nw], divisors[nw]
//                     (ends exclusive; bins_per_box 0: one table for all boxes).
//   box_image[box]:   the image of the batch a box reads (null: box itself).

// The level holding column q of a row.
static __device__ __forceinline__ int pool_find_level(const int* levels, int num_levels, int q) {
  int l = 0;
  while (l + 1 < num_levels && q >= levels[4 * (l + 1)]) ++l;
  return l;
}

// Decodes output `index` into the box, the image plane it reads, and its
// bin: [hstart, hend) x [wstart, wend) and divisor.
struct PoolBin {
  int box, plane, hstart, hend, wstart, wend, divisor;
};

static __device__ __forceinline__ PoolBin pool_decode_bin(int index, int channels,
                                                           int num_levels, const int* levels,
                                                           const int* bins, int bins_per_box,
                                                           const int* box_image, int row_length) {
  PoolBin bin;
  bin.box = index / row_length;
  int q = index % row_length;
  const int* level = levels + 4 * pool_find_level(levels, num_levels, q);
  const int nh = level[1], nw = level[2];
  q -= level[0];
  const int j = q % nw;
  const int i = (q / nw) % nh;
  const int c = q / (nw * nh);
  const int* rows = bins + (long long)bin.box * bins_per_box + level[3];
  const int* cols = rows + 3 * nh;
  bin.hstart = rows[i];
  bin.hend = rows[nh + i];
  bin.wstart = cols[j];
  bin.wend = cols[nw + j];
  bin.divisor = rows[2 * nh + i] * cols[2 * nw + j];
  const int image = box_image ? box_image[bin.box] : bin.box;
  bin.plane = image * channels + c;
  return bin;
}

// `argmax` may be null (inference needs no backward).
extern "C" __global__ void pool_bins_max_forward(int count, const float* x, int channels,
                                                int height, int width, int num_levels,
                                                const int* levels, const int* bins,
                                                int bins_per_box, const int* box_image,
                                                int row_length, float* y, int* argmax) {
  CUDA_KERNEL_LOOP(index, count) {
    const int i = (int)index;
    const PoolBin bin = pool_decode_bin(i, channels, num_levels, levels, bins, bins_per_box,
                                        box_image, row_length);
    const float* slice = x + (long long)bin.plane * height * width;
    int best = bin.hstart * width + bin.wstart;
    float best_value = slice[best];
    for (int h = bin.hstart; h < bin.hend; ++h) {
      for (int w = bin.wstart; w < bin.wend; ++w) {
        if (slice[h * width + w] > best_value) {
          best = h * width + w;
          best_value = slice[best];
        }
      }
    }
    y[i] = best_value;
    if (argmax) argmax[i] = best;
  }
}

extern "C" __global__ void pool_bins_ave_forward(int count, const float* x, int channels,
                                                int height, int width, int num_levels,
                                                const int* levels, const int* bins,
                                                int bins_per_box, const int* box_image,
                                                int row_length, float* y) {
  CUDA_KERNEL_LOOP(index, count) {
    const int i = (int)index;
    const PoolBin bin = pool_decode_bin(i, channels, num_levels, levels, bins, bins_per_box,
                                        box_image, row_length);
    const float* slice = x + (long long)bin.plane * height * width;
    float sum = 0;
    for (int h = bin.hstart; h < bin.hend; ++h) {
      for (int w = bin.wstart; w < bin.wend; ++w) sum += slice[h * width + w];
    }
    y[i] = sum / (float)bin.divisor;
  }
}

// The gradient one box sends to cell (h, w) of channel c, added to
// `gradient` bin by bin, levels and bins in output order: every bin of the
// box (its table at `table`, its output row from `row`) that contains the
// cell; a MAX bin only where the cell is its argmax (`argmax` null means
// AVE: each bin spreads gradient / divisor over its cells).
static __device__ __forceinline__ float pool_box_gradient(float gradient, const float* dy,
                                                         const int* argmax, long long row,
                                                         const int* table, int num_levels,
                                                         const int* levels, int c, int h, int w,
                                                         int cell) {
  for (int l = 0; l < num_levels; ++l) {
    const int* level = levels + 4 * l;
    const int nh = level[1], nw = level[2];
    const int* rows = table + level[3];
    const int* cols = rows + 3 * nh;
    const long long base = row + level[0] + c * nh * nw;
    for (int i = 0; i < nh; ++i) {
      if (h < rows[i] || h >= rows[nh + i]) continue;
      for (int j = 0; j < nw; ++j) {
        if (w < cols[j] || w >= cols[nw + j]) continue;
        const long long q = base + i * nw + j;
        if (argmax) {
          if (argmax[q] == cell) gradient += dy[q];
        } else {
          gradient += dy[q] / (float)(rows[2 * nh + i] * cols[2 * nw + j]);
        }
      }
    }
  }
  return gradient;
}

// Backward for one bin table shared by all boxes, box n reading image n
// (SPP): a deterministic gather, each bottom cell visiting the bins of its
// image's box.  Overwrites dx.
static __device__ __forceinline__ float pool_bins_gather(int index, const float* dy,
                                                        const int* argmax, int channels,
                                                        int height, int width, int num_levels,
                                                        const int* levels, const int* bins,
                                                        int row_length) {
  const int w = index % width;
  const int h = (index / width) % height;
  const int c = (index / (width * height)) % channels;
  const int n = index / (width * height * channels);
  return pool_box_gradient(0.0f, dy, argmax, (long long)n * row_length, bins, num_levels, levels,
                           c, h, w, h * width + w);
}

extern "C" __global__ void pool_bins_max_backward(int count, const float* dy, const int* argmax,
                                                 int channels, int height, int width,
                                                 int num_levels, const int* levels,
                                                 const int* bins, int row_length, float* dx) {
  CUDA_KERNEL_LOOP(index, count) {
    dx[index] = pool_bins_gather((int)index, dy, argmax, channels, height, width, num_levels,
                                 levels, bins, row_length);
  }
}

extern "C" __global__ void pool_bins_ave_backward(int count, const float* dy, int channels,
                                                 int height, int width, int num_levels,
                                                 const int* levels, const int* bins,
                                                 int row_length, float* dx) {
  CUDA_KERNEL_LOOP(index, count) {
    dx[index] = pool_bins_gather((int)index, dy, 0, channels, height, width, num_levels, levels,
                                 bins, row_length);
  }
}

// Backward for per-box tables (window pooling), where windows overlap
// arbitrarily: each bottom cell gathers from the windows containing it,
// listed by the host per cell in ascending order (window_pool_device.py,
// cell_windows): cell i = (image * H + h) * W + w has the windows
// cell_windows[cell_begins[i] .. cell_begins[i + 1]).  The order of the
// additions is fixed, so every run gives the same bits (float atomicAdd
// gave a different order, and different last bits, run to run).
// Overwrites dx.
static __device__ __forceinline__ float pool_windows_gather(int index, const float* dy,
                                                           const int* argmax, int channels,
                                                           int height, int width, int num_levels,
                                                           const int* levels, const int* bins,
                                                           int bins_per_box,
                                                           const int* cell_begins,
                                                           const int* cell_windows,
                                                           int row_length) {
  const int w = index % width;
  const int h = (index / width) % height;
  const int c = (index / (width * height)) % channels;
  const int n = index / (width * height * channels);
  const int cell = h * width + w;
  const long long at = (long long)n * height * width + cell;
  float gradient = 0;
  for (int k = cell_begins[at]; k < cell_begins[at + 1]; ++k) {
    const int box = cell_windows[k];
    gradient = pool_box_gradient(gradient, dy, argmax, (long long)box * row_length,
                                 bins + (long long)box * bins_per_box, num_levels, levels, c, h,
                                 w, cell);
  }
  return gradient;
}

extern "C" __global__ void pool_bins_max_backward_windows(int count, const float* dy,
                                                         const int* argmax, int channels,
                                                         int height, int width, int num_levels,
                                                         const int* levels, const int* bins,
                                                         int bins_per_box, const int* cell_begins,
                                                         const int* cell_windows, int row_length,
                                                         float* dx) {
  CUDA_KERNEL_LOOP(index, count) {
    dx[index] = pool_windows_gather((int)index, dy, argmax, channels, height, width, num_levels,
                                    levels, bins, bins_per_box, cell_begins, cell_windows,
                                    row_length);
  }
}

extern "C" __global__ void pool_bins_ave_backward_windows(int count, const float* dy,
                                                         int channels, int height, int width,
                                                         int num_levels, const int* levels,
                                                         const int* bins, int bins_per_box,
                                                         const int* cell_begins,
                                                         const int* cell_windows, int row_length,
                                                         float* dx) {
  CUDA_KERNEL_LOOP(index, count) {
    dx[index] = pool_windows_gather((int)index, dy, 0, channels, height, width, num_levels,
                                    levels, bins, bins_per_box, cell_begins, cell_windows,
                                    row_length);
  }
}
