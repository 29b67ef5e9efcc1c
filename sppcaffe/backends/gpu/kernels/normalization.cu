// BatchNorm and MVN: the per-channel (per-row) pieces.  Sums over channels
// or rows are gemv's against gpu.ones, so no kernel here reduces; the
// broadcasts are in scale_bias.cu.
#include "common.cuh"

// Caffe's moving averages: blob = maf * blob + statistic, the variance with
// its m / (m - 1) bias correction, and the scale factor f = maf * f + 1.
extern "C" __global__ void batchnorm_update_stats(int channels, const float* mean,
                                                  const float* variance, float* mean_blob,
                                                  float* variance_blob, float* factor_blob,
                                                  float maf, float correction) {
  CUDA_KERNEL_LOOP(c, channels) {
    mean_blob[c] = maf * mean_blob[c] + mean[c];
    variance_blob[c] = maf * variance_blob[c] + correction * variance[c];
    if (c == 0) factor_blob[0] = factor_blob[0] * maf + 1.0f;
  }
}

// The stored statistics divided by the scale factor (a zero factor gives
// zeros, as in Caffe); the factor is read here so it never leaves the device.
extern "C" __global__ void batchnorm_global_stats(int channels, const float* mean_blob,
                                                  const float* variance_blob,
                                                  const float* factor_blob, float eps,
                                                  float* mean, float* stddev) {
  CUDA_KERNEL_LOOP(c, channels) {
    const float f = factor_blob[0] == 0.0f ? 0.0f : 1.0f / factor_blob[0];
    mean[c] = mean_blob[c] * f;
    stddev[c] = sqrtf(variance_blob[c] * f + eps);
  }
}

// BatchNorm adds eps to the variance.
extern "C" __global__ void batchnorm_stddev(int channels, const float* variance, float eps,
                                            float* stddev) {
  CUDA_KERNEL_LOOP(c, channels) { stddev[c] = sqrtf(variance[c] + eps); }
}

// MVN adds eps to the standard deviation.
extern "C" __global__ void mvn_stddev(int rows, const float* variance, float eps, float* stddev) {
  CUDA_KERNEL_LOOP(r, rows) { stddev[r] = sqrtf(variance[r]) + eps; }
}

// dx = (dy - inv_m * (sum_dy + y * sum_dy_y)) / stddev for y = (x - mean) / stddev
// with batch statistics; group g = (i / inner) % groups (BatchNorm's channel,
// MVN's row with groups = rows, inner = row length).  dx may be dy.
extern "C" __global__ void batchnorm_backward(int n, const float* dy, const float* y,
                                              const float* sum_dy, const float* sum_dy_y,
                                              const float* stddev, float inv_m, int groups,
                                              int inner, float* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    const int g = (int)((i / inner) % groups);
    dx[i] = (dy[i] - inv_m * (y[i] * sum_dy_y[g] + sum_dy[g])) / stddev[g];
  }
}
