// Elementwise activations (ReLU, Sigmoid, TanH); in place is allowed.
#include "common.cuh"

extern "C" __global__ void relu_forward(int n, const float* x, float* y, float negative_slope) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = x[i] > 0 ? x[i] : x[i] * negative_slope; }
}

// x is the bottom data (the top data when in place: same sign).
extern "C" __global__ void relu_backward(int n, const float* dy, const float* x, float* dx,
                                         float negative_slope) {
  CUDA_KERNEL_LOOP(i, n) { dx[i] = dy[i] * (x[i] > 0 ? 1.0f : negative_slope); }
}
