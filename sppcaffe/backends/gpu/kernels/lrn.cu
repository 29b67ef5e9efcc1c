// Local response normalisation (Caffe's lrn.cu), both regions:
//   scale = k + a * W(x^2),   y = x * scale^-beta,
//   dx = dy * scale^-beta - 2 a beta * x * W(dy * y / scale),
// W a zero-padded sum over a centred window of `size` cells (odd), taken
// directly, one thread per element, in the host code's order.
// ACROSS_CHANNELS: the window runs over channels.  Caffe keeps a running sum
// along the channels instead (add the square entering, subtract the one
// leaving): after a large value leaves, the float residual can be far from
// the small true sum, even negative (then powf gives NaN); a direct sum of
// squares is never negative and costs `size` reads per element.
// WITHIN_CHANNEL: the window is a size x size box in one plane; Caffe
// builds it from square, AVE pool, power and product layers, here one
// thread per output sums its box directly.
#include "common.cuh"

// Zero-padded sum of v (or v^2) over channels [c - half, c + half] of the
// (n, h, w) column of element i (`plane` = height * width).
static __device__ __forceinline__ float lrn_channel_sum(const float* v, long long i, int channels,
                                                        int plane, int size, bool squared) {
  const int half = (size - 1) / 2;
  const long long column = (i / ((long long)channels * plane)) * channels * plane + i % plane;
  const int c = (int)((i / plane) % channels);
  const int c0 = max(c - half, 0), c1 = min(c + half + 1, channels);
  float sum = 0.0f;
  for (int j = c0; j < c1; ++j) {
    const float value = v[column + (long long)j * plane];
    sum += squared ? value * value : value;
  }
  return sum;
}

extern "C" __global__ void lrn_across_fill_scale(int n, const float* x, int channels, int plane,
                                                 int size, float a, float k, float* scale) {
  CUDA_KERNEL_LOOP(i, n) { scale[i] = k + a * lrn_channel_sum(x, i, channels, plane, size, true); }
}

// Both regions: y = x * scale^-beta (elementwise).
extern "C" __global__ void lrn_compute_output(int n, const float* x, const float* scale,
                                              float negative_beta, float* y) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = x[i] * powf(scale[i], negative_beta); }
}

// Both regions: ratio = dy * y / scale, the operand of the backward window sum.
extern "C" __global__ void lrn_ratio(int n, const float* dy, const float* y, const float* scale,
                                     float* ratio) {
  CUDA_KERNEL_LOOP(i, n) { ratio[i] = dy[i] * y[i] / scale[i]; }
}

// cache_ratio = 2 a beta.
extern "C" __global__ void lrn_across_compute_diff(int n, const float* x, const float* scale,
                                                   const float* dy, const float* ratio,
                                                   int channels, int plane, int size,
                                                   float negative_beta, float cache_ratio,
                                                   float* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    dx[i] = dy[i] * powf(scale[i], negative_beta) -
            cache_ratio * x[i] * lrn_channel_sum(ratio, i, channels, plane, size, false);
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

extern "C" __global__ void lrn_within_compute_diff(int n, const float* x, const float* scale,
                                                   const float* dy, const float* ratio, int height,
                                                   int width, int size, float negative_beta,
                                                   float cache_ratio, float* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    dx[i] = dy[i] * powf(scale[i], negative_beta) -
            cache_ratio * x[i] * lrn_box_sum(ratio, i, height, width, size, false);
  }
}
