// Local response normalisation (Caffe's lrn.cu), both regions:
//   scale = k + a * W(x^2),   y = x * scale^-beta,
//   dx = dy * scale^-beta - 2 a beta * x * W(dy * y / scale),
// W a zero-padded sum over a centred window of `size` cells (odd).
// ACROSS_CHANNELS: the window runs over channels, and one thread walks
// the channels of one (n, h, w) with a running sum, as Caffe's
// LRNFillScale/LRNComputeDiff do: O(1) work per channel whatever the size.
// WITHIN_CHANNEL: the window is a size x size box in one plane; Caffe
// builds it from square, AVE pool, power and product layers, here one
// thread per output sums its box directly.
#include "common.cuh"

// Channel c of the (n, h, w) column that thread `index` owns lives at
// base + c * plane.
static __device__ __forceinline__ long long lrn_column_base(long long index, int channels,
                                                             int plane) {
  const long long n = index / plane;
  return n * channels * plane + index % plane;
}

extern "C" __global__ void lrn_across_fill_scale(int columns, const float* x, int channels,
                                                 int plane, int size, float a, float k,
                                                 float* scale) {
  CUDA_KERNEL_LOOP(index, columns) {
    const long long base = lrn_column_base(index, channels, plane);
    const float* in = x + base;
    float* out = scale + base;
    const int half = (size - 1) / 2;
    // The window of channel c is [c - half, c + half]; start with c = 0's.
    float window = 0.0f;
    for (int j = 0; j <= half && j < channels; ++j) window += in[j * plane] * in[j * plane];
    for (int c = 0; c < channels; ++c) {
      out[c * plane] = k + a * window;
      const int enter = c + half + 1, leave = c - half;
      if (enter < channels) window += in[enter * plane] * in[enter * plane];
      if (leave >= 0) window -= in[leave * plane] * in[leave * plane];
    }
  }
}

// Both regions: y = x * scale^-beta (elementwise).
extern "C" __global__ void lrn_compute_output(int n, const float* x, const float* scale,
                                              float negative_beta, float* y) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = x[i] * powf(scale[i], negative_beta); }
}

// cache_ratio = 2 a beta.  Not in place: the running window reads dy
// ahead of and behind the channel it writes.
extern "C" __global__ void lrn_across_compute_diff(int columns, const float* x, const float* y,
                                                   const float* scale, const float* dy,
                                                   int channels, int plane, int size,
                                                   float negative_beta, float cache_ratio,
                                                   float* dx) {
  CUDA_KERNEL_LOOP(index, columns) {
    const long long base = lrn_column_base(index, channels, plane);
    const float *x_c = x + base, *y_c = y + base, *s_c = scale + base, *dy_c = dy + base;
    float* dx_c = dx + base;
    const int half = (size - 1) / 2;
    float window = 0.0f;
    for (int j = 0; j <= half && j < channels; ++j) {
      const long long o = (long long)j * plane;
      window += dy_c[o] * y_c[o] / s_c[o];
    }
    for (int c = 0; c < channels; ++c) {
      const long long o = (long long)c * plane;
      dx_c[o] = dy_c[o] * powf(s_c[o], negative_beta) - cache_ratio * x_c[o] * window;
      const int enter = c + half + 1, leave = c - half;
      if (enter < channels) {
        const long long e = (long long)enter * plane;
        window += dy_c[e] * y_c[e] / s_c[e];
      }
      if (leave >= 0) {
        const long long l = (long long)leave * plane;
        window -= dy_c[l] * y_c[l] / s_c[l];
      }
    }
  }
}

// Zero-padded sum of v (or v^2) over the size x size box centred on
// element i of its height x width plane.
static __device__ __forceinline__ float lrn_box_sum(const float* v, long long i, int height,
                                                    int width, int size, bool squared) {
  const int half = (size - 1) / 2;
  const long long plane = (long long)height * width;
  const float* p = v + (i / plane) * plane;
  const int h = (int)((i / width) % height), w = (int)(i % width);
  const int h0 = max(h - half, 0), h1 = min(h + half + 1, height);
  const int w0 = max(w - half, 0), w1 = min(w + half + 1, width);
  float sum = 0.0f;
  for (int hh = h0; hh < h1; ++hh) {
    for (int ww = w0; ww < w1; ++ww) {
      const float value = p[hh * width + ww];
      sum += squared ? value * value : value;
    }
  }
  return sum;
}

extern "C" __global__ void lrn_within_fill_scale(int n, const float* x, int height, int width,
                                                 int size, float a, float k, float* scale) {
  CUDA_KERNEL_LOOP(i, n) { scale[i] = k + a * lrn_box_sum(x, i, height, width, size, true); }
}

// ratio = dy * y / scale, the operand of the backward window sum.
extern "C" __global__ void lrn_within_ratio(int n, const float* dy, const float* y,
                                            const float* scale, float* ratio) {
  CUDA_KERNEL_LOOP(i, n) { ratio[i] = dy[i] * y[i] / scale[i]; }
}

extern "C" __global__ void lrn_within_compute_diff(int n, const float* x, const float* scale,
                                                   const float* dy, const float* ratio, int height,
                                                   int width, int size, float negative_beta,
                                                   float cache_ratio, float* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    dx[i] = dy[i] * powf(scale[i], negative_beta) -
            cache_ratio * x[i] * lrn_box_sum(ratio, i, height, width, size, false);
  }
}
