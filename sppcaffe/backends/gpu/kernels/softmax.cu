// Softmax along the channel axis of an (outer, channels, inner) array, in
// the steps of Caffe's softmax_layer.cu: per-(outer, inner) channel max,
// exp of the shifted values, per-position channel sum, divide.  The
// per-position kernels take one thread per (outer, inner) pair, so
// consecutive threads read consecutive inner addresses.
#include "common.cuh"

extern "C" __global__ void softmax_channel_max(int positions, int channels, int inner,
                                               const float* x, float* peak) {
  CUDA_KERNEL_LOOP(index, positions) {
    const long long base = (index / inner) * channels * inner + index % inner;
    float m = -FLT_MAX;
    for (int c = 0; c < channels; ++c) m = fmaxf(m, x[base + (long long)c * inner]);
    peak[index] = m;
  }
}

// y = exp(x - peak of its position); y may be x.
extern "C" __global__ void softmax_subtract_exp(int count, int channels, int inner,
                                                const float* x, const float* peak, float* y) {
  CUDA_KERNEL_LOOP(i, count) {
    const long long position = (i / ((long long)channels * inner)) * inner + i % inner;
    y[i] = expf(x[i] - peak[position]);
  }
}

extern "C" __global__ void softmax_channel_sum(int positions, int channels, int inner,
                                               const float* y, float* sum) {
  CUDA_KERNEL_LOOP(index, positions) {
    const long long base = (index / inner) * channels * inner + index % inner;
    float s = 0.0f;
    for (int c = 0; c < channels; ++c) s += y[base + (long long)c * inner];
    sum[index] = s;
  }
}

extern "C" __global__ void softmax_channel_div(int count, int channels, int inner,
                                               const float* sum, float* y) {
  CUDA_KERNEL_LOOP(i, count) {
    y[i] /= sum[(i / ((long long)channels * inner)) * inner + i % inner];
  }
}

// <dy, y> over the channels of each position (Caffe's kernel_channel_dot).
extern "C" __global__ void softmax_channel_dot(int positions, int channels, int inner,
                                               const float* dy, const float* y, float* dot) {
  CUDA_KERNEL_LOOP(index, positions) {
    const long long base = (index / inner) * channels * inner + index % inner;
    float s = 0.0f;
    for (int c = 0; c < channels; ++c) {
      const long long o = base + (long long)c * inner;
      s += dy[o] * y[o];
    }
    dot[index] = s;
  }
}

// dx = (dy - <dy, y>) * y; dx may be dy (the dot was taken first).
extern "C" __global__ void softmax_backward_apply(int count, int channels, int inner,
                                                  const float* dy, const float* y,
                                                  const float* dot, float* dx) {
  CUDA_KERNEL_LOOP(i, count) {
    const long long position = (i / ((long long)channels * inner)) * inner + i % inner;
    dx[i] = (dy[i] - dot[position]) * y[i];
  }
}
